"""Hugging Face decoders <-> Megatron Core GPTModel: architecture and weight names.

The families it maps (Llama, Mistral, Qwen2 with its q/k/v biases, Qwen3 with its per-head q/k
norms) and their HF modules behind each Megatron module come from `lora_rl.architecture`.

lora-rl's own small bridge (installing Megatron-Bridge on CPU needs a faked Transformer Engine).
Megatron-side names are megatron-core's own (`decoder.layers.3.self_attention.linear_qkv.weight`),
the names Megatron-Bridge maps to, so checkpoints line up with it. Layer indices are *global*
(pipeline stage 1 of 2 holds layers N/2..N-1), and tensors are whole (tensor-parallel sharding
is `sharding.py`'s business), so a mapping never depends on the parallel layout.

MoE families (Mixtral, Qwen3-MoE) map to Megatron's MoE layer with SequentialMLP local experts:
`mlp.router.weight` is HF's `mlp.gate.weight`, and expert e's `linear_fc1` / `linear_fc2` are
slice [e] of HF's fused 3-D `mlp.experts.gate_up_proj` / `down_proj` (both [gate; up]). An
expert adapter maps to PEFT's `target_parameters` layout of that 3-D parameter (one adapter per
expert, `lora_rl/lora/experts.py`): expert e's A is rows e*r..e*r+r-1 of the fused A, its B
columns e, E+e, 2E+e, ... of the fused B.

Two HF tensors groups are fused on the Megatron side:
- q/k/v -> `linear_qkv`, interleaved per query group: [q heads of group 0, k0, v0, q group 1, ...]
  (so that a row split over tensor-parallel ranks hands each rank whole groups);
- gate/up -> `linear_fc1` = [gate; up] (SwiGLU's first half is the gate).
A LoRA adapter on a fused module has one A shared by its HF parts and a B (and a DoRA magnitude,
one per output row) split like the weight: `q_proj.lora_A == k_proj.lora_A == v_proj.lora_A`.
That is the exact HF PEFT form of the fused adapter, so exported adapters load in PEFT and vLLM
unchanged. Canonical LoRA's per-projection adapters (`linear_qkv.adapter_q`,
`linear_fc1.adapter_gate`, ...) are already in HF row order and map one to one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from lora_rl.architecture import (
    FAMILIES,
    MEGATRON_EXPERT_PREFIX,
    MEGATRON_EXPERTS,
    UnsupportedArchitecture,
    architecture_of,
)
from lora_rl.backends.megatron.canonical_lora import adapter_module_name
from lora_rl.errors import LoraRlError
from lora_rl.interop.peft_format import AdapterFormatError
from lora_rl.lora.matching import CANONICAL_PARTS

_TOP = {
    "embedding.word_embeddings": "model.embed_tokens",
    "decoder.final_layernorm": "model.norm",
    "output_layer": "lm_head",
}


def layer_map(model_type: str) -> dict[str, tuple[str, ...]]:
    """Megatron module (under decoder.layers.N.) -> HF modules (under model.layers.N.), with
    canonical LoRA's per-projection adapters (`self_attention.linear_qkv.adapter_q` ->
    `self_attn.q_proj`)."""
    out = dict(FAMILIES[model_type].megatron_layer)
    for module in ("self_attention.linear_qkv", "mlp.linear_fc1"):
        if module not in out:
            continue  # a MoE layer has experts in place of mlp.linear_fc1
        for part, hf in zip(CANONICAL_PARTS[module.rpartition(".")[2]], out[module],
                            strict=True):
            out[f"{module}.{adapter_module_name(part)}"] = (hf,)
    return out


_MEGATRON_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<param>weight|bias|lora_A\.weight|lora_B\.weight"
    r"|lora_magnitude_vector)$")
_LAYER_MODULE = re.compile(r"^decoder\.layers\.(?P<index>\d+)\.(?P<rest>.+)$")
_EXPERT_MODULE = re.compile(
    rf"^decoder\.layers\.(?P<index>\d+)\.{re.escape(MEGATRON_EXPERT_PREFIX)}\."
    r"(?P<expert>\d+)\.(?P<linear>linear_fc[12])$")


class UnsupportedModelError(LoraRlError, ValueError):
    pass


@dataclass(frozen=True)
class LlamaShape:
    """The architecture numbers both sides need (every mapped family, not only Llama)."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_positions: int
    attention_dropout: float
    model_type: str = "llama"
    qkv_bias: bool = False
    """q/k/v biases (Qwen2): Megatron's `add_qkv_bias`, fused into linear_qkv's bias."""
    qk_norm: bool = False
    """Per-head q/k RMSNorm (Qwen3): Megatron's `qk_layernorm`."""
    num_experts: int = 0
    """MoE experts per layer (0: a dense model); every layer is a MoE layer."""
    moe_ffn_hidden_size: int = 0
    moe_topk: int = 0
    moe_pre_softmax: bool = False
    """Softmax over all experts, then top-k, no renormalisation (Qwen3-MoE's
    `norm_topk_prob: false`); otherwise softmax over the top-k logits, which equals Mixtral's
    renormalised top-k probabilities."""

    @classmethod
    def from_hf(cls, config: Any) -> LlamaShape:
        """Reject, by name, every model this mapping would get wrong."""
        try:
            arch = architecture_of(config)
        except UnsupportedArchitecture as exc:
            raise UnsupportedModelError(f"the Megatron backend cannot map this model: {exc}") \
                from None
        problem = arch.unsupported("megatron")
        if problem:
            raise UnsupportedModelError(f"the Megatron backend cannot map this model: {problem}")
        problems = []
        if getattr(config, "hidden_act", "silu") != "silu":
            problems.append(f"hidden_act {config.hidden_act!r} (SwiGLU needs silu)")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            problems.append("linear biases (attention_bias / mlp_bias)")
        window = getattr(config, "sliding_window", None)
        if window is not None and getattr(config, "use_sliding_window", True) \
                and window < config.max_position_embeddings:
            problems.append(f"sliding-window attention (sliding_window {window} < "
                            f"max_position_embeddings {config.max_position_embeddings})")
        if config.tie_word_embeddings:
            problems.append("tied input/output embeddings")
        rope = _rope_parameters(config)
        if rope.get("rope_type", "default") != "default":
            problems.append(f"rope_type {rope['rope_type']!r} (supported: default)")
        if arch.is_moe:
            problems += _moe_problems(config, arch.moe_layers)
        if problems:
            raise UnsupportedModelError("the Megatron backend cannot map this model: "
                                        + "; ".join(problems))
        heads = config.num_attention_heads
        return cls(
            num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
            ffn_hidden_size=config.intermediate_size, num_heads=heads,
            num_kv_heads=config.num_key_value_heads or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab_size=config.vocab_size, rms_norm_eps=config.rms_norm_eps,
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            max_positions=config.max_position_embeddings,
            attention_dropout=float(getattr(config, "attention_dropout", 0.0)),
            model_type=arch.model_type, qkv_bias=arch.family.qkv_bias, qk_norm=arch.qk_norm,
            num_experts=arch.dims.experts if arch.is_moe else 0,
            moe_ffn_hidden_size=arch.dims.expert_intermediate if arch.is_moe else 0,
            moe_topk=int(getattr(config, "num_experts_per_tok", 0) or 0) if arch.is_moe else 0,
            moe_pre_softmax=arch.is_moe and not getattr(config, "norm_topk_prob", True),
        )

    def linear_module_names(self) -> list[str]:
        """Every linear module of the whole model, Megatron names, global layer indices."""
        return architecture_of({"model_type": self.model_type,
                                "num_hidden_layers": self.num_layers,
                                "num_experts": self.num_experts}).megatron_linear_names()


def _moe_problems(config: Any, moe_layers: tuple[int, ...]) -> list[str]:
    problems = []
    if len(moe_layers) != config.num_hidden_layers:
        problems.append("dense MLP layers between the MoE layers (mlp_only_layers / "
                        "decoder_sparse_step): every layer must be a MoE layer")
    if getattr(config, "router_jitter_noise", 0.0):
        problems.append("router_jitter_noise (Megatron's router has no input jitter)")
    if getattr(config, "output_router_logits", False):
        problems.append("output_router_logits (the router's load-balancing loss is not mapped)")
    return problems


def _rope_parameters(config: Any) -> dict[str, Any]:
    # transformers 5 keeps RoPE settings in `rope_parameters`; 4.x in rope_theta/rope_scaling.
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    return {"rope_theta": getattr(config, "rope_theta", 10000.0),
            **(getattr(config, "rope_scaling", None) or {})}


def expert_of(module: str) -> tuple[str, int] | None:
    """(HF fused expert parameter, expert index) behind a Megatron expert linear, else None:
    `decoder.layers.1.mlp.experts.local_experts.3.linear_fc2` ->
    (`model.layers.1.mlp.experts.down_proj`, 3)."""
    match = _EXPERT_MODULE.match(module)
    if match is None:
        return None
    return f"model.layers.{match['index']}.{MEGATRON_EXPERTS[match['linear']]}", \
        int(match["expert"])


def hf_modules(module: str, model_type: str = "llama") -> tuple[str, ...]:
    """HF module path(s) behind a Megatron module path."""
    if module in _TOP:
        return (_TOP[module],)
    match = _LAYER_MODULE.match(module)
    layers = layer_map(model_type)
    if match is None or match["rest"] not in layers:
        raise KeyError(f"no Hugging Face counterpart for Megatron module {module!r}")
    return tuple(f"model.layers.{match['index']}.{hf}" for hf in layers[match["rest"]])


def _split(fused: torch.Tensor, parts: int, shape: LlamaShape) -> list[torch.Tensor]:
    if parts == 2:
        return list(fused.chunk(2, dim=0))
    groups, d = shape.num_kv_heads, shape.head_dim
    per_group = fused.reshape(groups, -1, *fused.shape[1:])
    q_rows = shape.num_heads // groups * d
    q, k, v = per_group.split([q_rows, d, d], dim=1)
    return [t.reshape(-1, *fused.shape[1:]) for t in (q, k, v)]


def _fuse(parts: list[torch.Tensor], shape: LlamaShape) -> torch.Tensor:
    if len(parts) == 2:
        return torch.cat(parts, dim=0)
    groups = shape.num_kv_heads
    grouped = [t.reshape(groups, -1, *t.shape[1:]) for t in parts]
    return torch.cat(grouped, dim=1).reshape(-1, *parts[0].shape[1:])


def megatron_to_hf(tensors: dict[str, torch.Tensor], shape: LlamaShape) -> dict[str, torch.Tensor]:
    """Whole Megatron tensors (weights or LoRA A/B) -> HF names; fused modules are split."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _MEGATRON_KEY.match(key)
        if match is None:
            raise KeyError(f"unexpected Megatron tensor name {key!r}")
        expert = expert_of(match["module"])
        if expert is not None:
            experts.setdefault(_hf_expert_key(expert[0], match["param"]), {})[expert[1]] = value
            continue
        targets = hf_modules(match["module"], shape.model_type)
        if len(targets) == 1 or match["param"] == "lora_A.weight":
            # A fused adapter's A is shared by its parts; separate copies, since safetensors
            # refuses tensors that share memory.
            pieces = [value.clone() for _ in targets]
        else:
            pieces = _split(value, len(targets), shape)
        for target, piece in zip(targets, pieces, strict=True):
            out[f"{target}.{match['param']}"] = piece.contiguous()
    for key, per_expert in experts.items():
        out[key] = _fuse_experts(key, per_expert, shape.num_experts)
    return out


def _hf_expert_key(parameter: str, param: str) -> str:
    """The HF tensor of an expert linear's `weight` / `lora_A.weight` / `lora_B.weight`: the
    3-D parameter itself, or its adapter (`...experts.down_proj.lora_A.weight`)."""
    return parameter if param == "weight" else f"{parameter}.{param}"


def _fuse_experts(key: str, per_expert: dict[int, torch.Tensor], experts: int) -> torch.Tensor:
    """Every expert's tensor -> the HF fused one: weights stacked to [E, out, in]; LoRA A
    stacked to [E*r, in]; LoRA B to [out, r*E] with expert e in columns e, E+e, ..."""
    if sorted(per_expert) != list(range(experts)):
        raise KeyError(f"{key}: tensors of experts {sorted(per_expert)}, expected 0..{experts - 1}")
    parts = [per_expert[e] for e in range(experts)]
    if key.endswith("lora_B.weight"):
        return torch.stack(parts, dim=-1).reshape(parts[0].shape[0], -1).contiguous()
    if key.endswith("lora_A.weight"):
        return torch.cat(parts, dim=0).contiguous()
    return torch.stack(parts).contiguous()


def _expert_slice(fused: torch.Tensor, param: str, expert: int, experts: int) -> torch.Tensor:
    """Expert `expert`'s part of a fused HF tensor (the inverse of `_fuse_experts`)."""
    if param == "lora_B.weight":
        return fused.reshape(fused.shape[0], -1, experts)[:, :, expert].contiguous()
    if param == "lora_A.weight":
        return fused.reshape(experts, -1, fused.shape[1])[expert].contiguous()
    return fused[expert]


def hf_to_megatron(tensors: dict[str, torch.Tensor], keys: list[str],
                   shape: LlamaShape) -> dict[str, torch.Tensor]:
    """The Megatron tensors `keys` (whole, global names) from HF-named tensors."""
    out = {}
    for key in keys:
        match = _MEGATRON_KEY.match(key)
        if match is None:
            raise KeyError(f"unexpected Megatron tensor name {key!r}")
        expert = expert_of(match["module"])
        if expert is not None:
            source = _hf_expert_key(expert[0], match["param"])
            if source not in tensors:
                raise KeyError(f"{key} needs {source}, which the source does not have")
            out[key] = _expert_slice(tensors[source], match["param"], expert[1],
                                     shape.num_experts)
            continue
        sources = [f"{m}.{match['param']}" for m in hf_modules(match["module"], shape.model_type)]
        missing = [s for s in sources if s not in tensors]
        if missing:
            raise KeyError(f"{key} needs {', '.join(missing)}, which the source does not have")
        parts = [tensors[s] for s in sources]
        if len(parts) == 1:
            out[key] = parts[0]
        elif match["param"] == "lora_A.weight":
            if any(not torch.equal(parts[0], p) for p in parts[1:]):
                raise AdapterFormatError(
                    f"{', '.join(sources)} differ: the fused Megatron module {match['module']} "
                    "has one LoRA A for all of them; an adapter with separate q/k/v or gate/up "
                    "A matrices (e.g. from the DTensor backend or PEFT) needs canonical LoRA: "
                    "target linear_q, linear_k, linear_v / linear_fc1_gate, linear_fc1_up")
            out[key] = parts[0]
        else:
            out[key] = _fuse(parts, shape)
    return out
