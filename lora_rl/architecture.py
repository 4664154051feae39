"""One description per model family, from which every backend's layout is derived.

Torch-free: `lora-rl validate` builds it from a model's config.json. A family is transformers'
own `base_model_tp_plan` for it (the module names of one decoder layer with their tensor-parallel
style) plus what that plan cannot say (which backends lora-rl runs it on, the Megatron names).
transformers keeps the plan on the config *class*, not in config.json, so it is copied here;
`tests/lora/test_architecture.py` checks the copy against the installed transformers.

Derived from it:
- the linear module names LoRA can adapt (validate's target checks, PEFT export names);
- the DTensor tensor-parallel plan, and each adapter's sharding (`LORA_SHARDING`);
- the Megatron layer mapping (HF modules behind each fused Megatron module, and each MoE
  expert's linears behind the fused 3-D expert parameters), for the families the Megatron
  backend maps;
- the module groups `explain` reports (attention, mlp, experts, router).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Backend = Literal["dtensor", "megatron"]
Group = Literal["attention", "mlp", "experts", "router"]

LORA_SHARDING: dict[str, tuple[str, str]] = {
    "colwise": ("replicate", "colwise"),
    "colwise_gather_output": ("replicate", "colwise_gather_output"),
    "packed_colwise": ("replicate", "packed_colwise"),
    "rowwise": ("rowwise", "replicate"),
    "rowwise_split_input": ("rowwise_split_input", "replicate"),
}
"""Base style -> (lora_A style, lora_B style). A column-parallel base splits its output, so A
sees the whole input (replicated) and B is split like the base's output rows; a row-parallel
base splits its input, so A is split like it (its rank-sized output all-reduced) and B is
replicated. A packed base ([gate; up], each rank a slice of both halves) splits B the same
way. `_gather_output` / `_split_input` variants keep whole activations between the two
(fused projections whose parts are split by size after the matmul, e.g. Phi-3's qkv_proj)."""

_ATTN = {"self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise",
         "self_attn.v_proj": "colwise", "self_attn.o_proj": "rowwise"}
_QK_NORM = {"self_attn.q_norm": "replicated_with_grad_allreduce",
            "self_attn.k_norm": "replicated_with_grad_allreduce"}
_MLP = {"mlp.gate_proj": "colwise", "mlp.up_proj": "colwise", "mlp.down_proj": "rowwise"}
_EXPERTS = {"mlp.experts.gate_up_proj": "packed_colwise", "mlp.experts.down_proj": "rowwise",
            "mlp.experts": "moe_tp_experts"}


def _plan(*parts: Mapping[str, str]) -> dict[str, str]:
    return {f"layers.*.{k}": v for part in parts for k, v in part.items()}


_LLAMA_MEGATRON = {
    "input_layernorm": ("input_layernorm",),
    "self_attention.linear_qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attention.linear_proj": ("self_attn.o_proj",),
    "pre_mlp_layernorm": ("post_attention_layernorm",),
    "mlp.linear_fc1": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.linear_fc2": ("mlp.down_proj",),
}
"""Megatron module (under decoder.layers.N.) -> HF modules (under model.layers.N.)."""
_QK_NORM_MEGATRON = {"self_attention.q_layernorm": ("self_attn.q_norm",),
                     "self_attention.k_layernorm": ("self_attn.k_norm",)}
_MOE_MEGATRON_LAYER = {**{k: v for k, v in _LLAMA_MEGATRON.items() if not k.startswith("mlp.")},
                       "mlp.router": ("mlp.gate",)}
"""A MoE layer: attention as Llama's, the router's [experts, hidden] weight, and the experts
(`MEGATRON_EXPERTS`)."""
MEGATRON_EXPERTS = {"linear_fc1": "mlp.experts.gate_up_proj",
                    "linear_fc2": "mlp.experts.down_proj"}
"""Expert e's Megatron linear (`mlp.experts.local_experts.<e>.linear_fc1`, SequentialMLP) ->
the HF fused 3-D parameter whose slice [e] it is. Both keep fc1 as [gate; up]."""
MEGATRON_EXPERT_PREFIX = "mlp.experts.local_experts"


@dataclass(frozen=True)
class Family:
    model_type: str
    tp_plan: Mapping[str, str]
    """transformers' `base_model_tp_plan` for the family (keys under the base model)."""
    backends: frozenset[Backend]
    megatron_layer: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Megatron layer module -> HF layer modules; empty when Megatron cannot map the family."""
    tensor_parallel: bool = True
    """Whether the DTensor backend can shard it over tensor-parallel ranks."""
    note: str = ""
    """Why the Megatron backend cannot run it, for the validate message."""
    tp_note: str = ""
    """Why DTensor tensor parallelism cannot shard it."""
    qkv_bias: bool = False
    """q/k/v projections always carry a bias (Qwen2), whatever `attention_bias` says."""

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", _plan(_ATTN, _MLP), frozenset({"dtensor", "megatron"}), _LLAMA_MEGATRON),
    Family("mistral", _plan(_ATTN, _MLP), frozenset({"dtensor", "megatron"}), _LLAMA_MEGATRON),
    Family("qwen2", _plan(_ATTN, _MLP), frozenset({"dtensor", "megatron"}), _LLAMA_MEGATRON,
           qkv_bias=True),
    Family("qwen3", _plan(_ATTN, _QK_NORM, _MLP), frozenset({"dtensor", "megatron"}),
           {**_LLAMA_MEGATRON, **_QK_NORM_MEGATRON}),
    Family("gemma2", {**_plan(_ATTN, _MLP), "embed_tokens": "embedding_rowwise"},
           frozenset({"dtensor"}),
           note="Gemma's (1 + weight) norms, extra post-norms and logit soft-capping have no "
                "Megatron Core local-spec counterpart"),
    Family("gemma3_text", {**_plan(_ATTN, _QK_NORM, _MLP), "embed_tokens": "embedding_rowwise"},
           frozenset({"dtensor"}),
           note="Gemma's (1 + weight) norms and extra post-norms have no Megatron Core "
                "local-spec counterpart"),
    Family("phi3", _plan({"self_attn.qkv_proj": "colwise_gather_output",
                          "self_attn.o_proj": "rowwise_split_input",
                          "mlp.gate_up_proj": "colwise_gather_output",
                          "mlp.down_proj": "rowwise_split_input"}),
           frozenset({"dtensor"}),
           note="Phi-3's fused qkv_proj/gate_up_proj are not mapped to Megatron"),
    Family("qwen3_moe", _plan(_ATTN, _QK_NORM, _EXPERTS, _MLP),
           frozenset({"dtensor", "megatron"}),
           {**_MOE_MEGATRON_LAYER, **_QK_NORM_MEGATRON}),
    Family("mixtral", _plan(_ATTN, _EXPERTS), frozenset({"dtensor", "megatron"}),
           _MOE_MEGATRON_LAYER),
)}

EXPERT_PARAMETERS = ("gate_up_proj", "down_proj")
"""The fused 3-D expert parameters, in the order transformers registers them (PEFT nests one
`ParamWrapper` per adapted parameter in this order, which fixes its export names)."""

LINEAR_STYLES = frozenset(LORA_SHARDING)
_EXPERT_STYLES = frozenset({"packed_colwise", "rowwise"})


def _group(path: str) -> Group:
    if ".experts." in f".{path}.":
        return "experts"
    if path.endswith("mlp.gate"):
        return "router"
    return "attention" if path.startswith("self_attn.") else "mlp"


@dataclass(frozen=True)
class LayerModule:
    """One module (or 3-D expert parameter) of a decoder layer, relative to the layer."""

    path: str
    style: str
    group: Group

    @property
    def short(self) -> str:
        return self.path.rsplit(".", 1)[-1]


class UnsupportedArchitecture(ValueError):
    """A model family (or family x backend) lora-rl does not run."""


@dataclass(frozen=True)
class Dims:
    """The sizes that fix every adapted module's shape."""

    hidden: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    intermediate: int = 0
    expert_intermediate: int = 0
    experts: int = 0
    vocab: int = 0

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Dims:
        def num(*keys: str) -> int:
            for key in keys:
                value = raw.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
            return 0

        hidden, heads = num("hidden_size"), num("num_attention_heads")
        return cls(hidden, heads, num("num_key_value_heads") or heads,
                   num("head_dim") or (hidden // heads if heads else 0),
                   num("intermediate_size"),
                   num("moe_intermediate_size", "intermediate_size"),
                   num("num_experts", "num_local_experts"), num("vocab_size"))


@dataclass(frozen=True)
class Architecture:
    family: Family
    num_layers: int
    tied_embeddings: bool = False
    moe_layers: tuple[int, ...] = ()
    """Layers whose MLP is the MoE block (all of them unless the config says otherwise)."""
    dims: Dims = field(default_factory=Dims)

    @property
    def model_type(self) -> str:
        return self.family.model_type

    def layer_plan(self) -> dict[str, str]:
        """Decoder-layer module path -> tensor-parallel style (transformers' names)."""
        return {k.removeprefix("layers.*."): v for k, v in self.family.tp_plan.items()
                if k.startswith("layers.*.")}

    def linears(self, layer: int = 0) -> list[LayerModule]:
        """The nn.Linear modules of a decoder layer, in plan order; experts excluded."""
        plan = self.layer_plan()
        moe = layer in self.moe_layers
        out = []
        for path, style in plan.items():
            if style not in LINEAR_STYLES or ".experts." in f".{path}.":
                continue
            if self.is_moe and path.startswith("mlp.") and moe:
                continue  # the dense MLP entries apply to non-MoE layers only
            out.append(LayerModule(path, style, _group(path)))
        return out

    @property
    def qk_norm(self) -> bool:
        """Per-head RMSNorm on queries and keys (Qwen3, Gemma3)."""
        return "self_attn.q_norm" in self.layer_plan()

    @property
    def is_moe(self) -> bool:
        return any(v == "moe_tp_experts" for v in self.family.tp_plan.values())

    def expert_params(self) -> list[LayerModule]:
        """The fused 3-D expert parameters of a MoE layer (`mlp.experts.gate_up_proj`, ...)."""
        return [LayerModule(p, s, "experts") for p, s in self.layer_plan().items()
                if ".experts." in f".{p}." and s in _EXPERT_STYLES]

    def experts_module(self) -> str:
        """The MoE layer's experts module (`mlp.experts`), relative to the layer."""
        return next(p for p, s in self.layer_plan().items() if s == "moe_tp_experts")

    def replicated(self) -> list[str]:
        """Layer modules the plan keeps whole on every rank (Qwen3's q_norm/k_norm)."""
        return [p for p, s in self.layer_plan().items() if s.startswith("replicated")]

    def expert_names(self) -> list[str]:
        """Full names of the fused expert parameters LoRA can adapt (DTensor backend)."""
        return [f"model.layers.{i}.{p.path}" for i in self.moe_layers
                for p in self.expert_params()]

    def group_of(self, name: str) -> Group | Literal["output"]:
        """Which module group a full HF or Megatron name belongs to (explain's summary)."""
        if name.startswith("decoder.layers."):
            rest = name.split(".", 3)[3]
            if rest.startswith("mlp.experts."):
                return "experts"
            if rest.startswith("mlp.router"):
                return "router"
            return "attention" if rest.startswith("self_attention.") else "mlp"
        if not name.startswith("model.layers."):
            return "output"
        return _group(name.split(".", 3)[3])

    def adapter_parameters(self, name: str, rank: int) -> int:
        """Trainable parameters of a rank-`rank` adapter on the module (or expert parameter)
        with this full HF name; 0 when the sizes are unknown."""
        d = self.dims
        attn, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
        shapes = {"q_proj": (d.hidden, attn), "k_proj": (d.hidden, kv), "v_proj": (d.hidden, kv),
                  "o_proj": (attn, d.hidden), "qkv_proj": (d.hidden, attn + 2 * kv),
                  "gate_proj": (d.hidden, d.intermediate), "up_proj": (d.hidden, d.intermediate),
                  "gate_up_proj": (d.hidden, 2 * d.intermediate),
                  "down_proj": (d.intermediate, d.hidden), "lm_head": (d.hidden, d.vocab)}
        short = name.rpartition(".")[2]
        if name.startswith("decoder.") or name == "output_layer":
            return rank * sum(self._megatron_shape(name, short))
        if ".experts." in name:
            expert = {"gate_up_proj": (d.hidden, 2 * d.expert_intermediate),
                      "down_proj": (d.expert_intermediate, d.hidden)}.get(short, (0, 0))
            return rank * d.experts * sum(expert)
        return rank * sum(shapes.get(short, (0, 0)))

    def _megatron_shape(self, name: str, short: str) -> tuple[int, int]:
        """(in, out) of a Megatron linear (or a canonical projection inside linear_qkv /
        linear_fc1); an expert's linears are one expert's, not the fused parameter's."""
        d = self.dims
        attn, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
        ffn = d.expert_intermediate if f".{MEGATRON_EXPERT_PREFIX}." in name else d.intermediate
        return {"linear_qkv": (d.hidden, attn + 2 * kv), "linear_proj": (attn, d.hidden),
                "linear_q": (d.hidden, attn), "linear_k": (d.hidden, kv),
                "linear_v": (d.hidden, kv), "linear_fc1": (d.hidden, 2 * ffn),
                "linear_fc1_gate": (d.hidden, ffn), "linear_fc1_up": (d.hidden, ffn),
                "linear_fc2": (ffn, d.hidden),
                "output_layer": (d.hidden, d.vocab)}.get(short, (0, 0))

    def hf_linear_names(self) -> list[str]:
        names = [f"model.layers.{i}.{m.path}" for i in range(self.num_layers)
                 for m in self.linears(i)]
        return [*names, "lm_head"]

    def megatron_linear_names(self) -> list[str]:
        """Every linear module of the Megatron model, in model order: each MoE layer's experts
        (`decoder.layers.N.mlp.experts.local_experts.E.linear_fc1`, global expert index) after
        its attention."""
        names = []
        for i in range(self.num_layers):
            names += [f"decoder.layers.{i}.{m}" for m in self.family.megatron_layer
                      if m.rsplit(".", 1)[-1].startswith("linear")]
            if i in self.moe_layers:
                names += [f"decoder.layers.{i}.{MEGATRON_EXPERT_PREFIX}.{e}.{m}"
                          for e in range(self.dims.experts) for m in MEGATRON_EXPERTS]
        return [*names, "output_layer"]

    def linear_names(self, backend: Backend) -> list[str]:
        """Full names of what LoRA can adapt as the backend sees them: linear modules, and on
        DTensor the MoE expert parameters too."""
        if backend == "megatron":
            return self.megatron_linear_names()
        return [*self.hf_linear_names(), *self.expert_names()]

    def unsupported(self, backend: Backend, tensor_parallel: int = 1) -> str | None:
        """Why lora-rl cannot run this family on `backend` (with this tensor-parallel size),
        or None."""
        if backend not in self.family.backends:
            return (f"model_type {self.model_type!r} is not supported on the {backend} backend "
                    f"({self.family.note}); {backend} supports: "
                    f"{', '.join(supported_families(backend))}")
        if backend == "dtensor" and tensor_parallel > 1 and not self.family.tensor_parallel:
            return (f"model_type {self.model_type!r} cannot use DTensor tensor parallelism "
                    f"({self.family.tp_note}); tensor_parallel_size > 1 supports: "
                    f"{', '.join(supported_families('dtensor', tensor_parallel=True))}")
        return None


def supported_families(backend: Backend, tensor_parallel: bool = False) -> list[str]:
    """The families `backend` runs (with `tensor_parallel`: those it also shards over
    tensor-parallel ranks; Megatron shards every family it runs)."""
    return sorted(t for t, f in FAMILIES.items() if backend in f.backends
                  and (f.tensor_parallel or backend == "megatron" or not tensor_parallel))


def _moe_layers(raw: Mapping[str, Any], layers: int) -> tuple[int, ...]:
    dense = set(raw.get("mlp_only_layers") or ())
    step = int(raw.get("decoder_sparse_step") or 1)
    return tuple(i for i in range(layers) if i not in dense and (i + 1) % step == 0)


def architecture_from_config(raw: Mapping[str, Any]) -> Architecture:
    """The architecture of a HF config (a config.json dict). Raises UnsupportedArchitecture
    naming the supported families."""
    model_type = str(raw.get("model_type", "unknown"))
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} has no lora-rl architecture description; supported: "
            f"{', '.join(sorted(FAMILIES))}")
    plan = raw.get("base_model_tp_plan")
    if isinstance(plan, dict) and plan:
        family = replace(family, tp_plan=dict(plan))
    layers = int(raw["num_hidden_layers"])
    arch = Architecture(family, layers, bool(raw.get("tie_word_embeddings", False)),
                        dims=Dims.from_config(raw))
    if arch.is_moe:
        arch = replace(arch, moe_layers=_moe_layers(raw, layers))
    return arch


def architecture_of(config: Any) -> Architecture:
    """The architecture of a transformers config object (or a config.json dict)."""
    raw = config if isinstance(config, Mapping) else config.to_dict()
    return architecture_from_config(raw)
