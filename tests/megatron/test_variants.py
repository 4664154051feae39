"""LoRA variants on the Megatron backend (DoRA, LoRA+), one gloo run at tp=2 under sequence
parallelism (two processes: ~20 s here, against ~11 s for one process at tp=1; tp=2 is what
exercises the row-parallel modules' row norms summed over ranks, the magnitude's sharding and,
with the sequence split, the row-parallel magnitude's gradient summed over ranks; the test
passed without sequence parallelism before it was switched on) against the HF + LoRA-core
reference of test_parity: the same DoRA layer on HF's modules (with q/k/v and gate/up sharing A
as Megatron's fused modules do) and PEFT's LoRA+ optimizer groups built by hand. The trained
adapter then goes through the PEFT and merged exports and `peft` itself."""

import json
import shutil

import pytest
import torch

from lora_rl.checkpoint import save_checkpoint
from lora_rl.config.lora import MegatronPeftConfig
from lora_rl.interop.export import export_checkpoint
from tests.megatron._worker import fixed_batch
from tests.megatron.conftest import MEGATRON_MISSING, megatron_available
from tests.megatron.test_parity import (
    _assert_same_training,
    _fused_lora,
    _hf_model,
    _logprobs,
    _train_five_steps,
    five_sft_steps,
)
from tests.training.conftest import model_cache  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not megatron_available(), reason=MEGATRON_MISSING)

RATIO = 4.0
VARIANT = (("use_dora", True), ("lora_plus_lr_ratio", RATIO))


@pytest.fixture(scope="module")
def dora_run(megatron_run):
    return megatron_run(2, 1, 2, peft=VARIANT, sp=True)


def test_megatron_dora_with_lora_plus_trains_like_the_hf_reference(dora_run, tiny_llama_dir):
    """Five steps: losses, gradient norms, A, B and magnitudes of HF + the DoRA layer with B and
    the magnitudes at RATIO x lr (the groups: test_runtime_pieces)."""
    adapter0 = dora_run["adapter0"]
    hf = _hf_model(tiny_llama_dir)
    for module in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"):
        # B starts at zero: the magnitude is the base weight's row norms (HF's q/k/v rows).
        weight = hf.get_submodule(f"model.layers.2.{module}").weight
        got = adapter0[f"model.layers.2.{module}.lora_magnitude_vector"]
        assert torch.allclose(got, torch.linalg.norm(weight, dim=1), atol=1e-6)
    assert sum(k.endswith("lora_magnitude_vector") for k in adapter0) == 4 * 7
    reference = _train_five_steps(_fused_lora(hf, use_dora=True), adapter0, RATIO)
    _assert_same_training(dora_run, reference)
    # Two optimizer groups go through the checkpoint and come back in place.
    assert dora_run["resumed_losses"] == dora_run["losses"][3:]


def test_megatron_dora_generation_copy_reference_and_peft_export(dora_run, tiny_llama_dir,
                                                                 model_cache, tmp_path):  # noqa: F811
    """The HF generation copy carries the magnitudes; the reference policy is the base; the
    exported PEFT adapter (use_dora) reproduces the trained Megatron model in `peft`, and so
    does the merged export."""
    batch = fixed_batch(128)
    real = batch.attention_mask[:, 1:].bool()
    trained = dora_run["logprobs"]
    assert (dora_run["generation_logprobs"] - trained)[real].abs().max() < 1e-5
    with torch.no_grad():
        base = _logprobs(_hf_model(tiny_llama_dir), batch)
    assert (dora_run["reference_logprobs"] - base)[real].abs().max() < 1e-5
    assert (trained - base)[real].abs().max() > 1e-3

    _export_checkpoint_of(dora_run["adapter5"], dict(VARIANT), tiny_llama_dir, model_cache,
                          tmp_path)
    assert json.loads((tmp_path / "peft/adapter_config.json").read_text())["use_dora"] is True
    # The merged export folds the magnitudes in too (PEFT's DoRA merge).
    _assert_exports_reproduce(trained, tiny_llama_dir, tmp_path)


def _export_checkpoint_of(adapter, lora: dict, tiny_llama_dir, cache, tmp_path) -> None:
    """A Megatron SFT checkpoint of `adapter` (rank 4, alpha 8, `lora`'s other fields) at
    tmp_path/ckpt, exported to tmp_path/peft and tmp_path/merged. The export writes the base's
    tokenizer too: the base is the tiny Llama plus the tiny model's tokenizer files."""
    base_dir = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base_dir)
    for tokenizer_file in (cache / "tiny-llama-v1").glob("*token*"):
        shutil.copy(tokenizer_file, base_dir)
    state = {"run": {"algorithm": "sft", "backend": "megatron", "model_name": str(base_dir),
                     "lora": {"enabled": True, "dim": 4, "alpha": 8, **lora}},
             "algorithm": {}, "optimizer_meta": {}}
    save_checkpoint(tmp_path / "ckpt", 5, {"adapter": adapter}, state)
    for form in ("peft", "merged"):
        export_checkpoint(tmp_path / "ckpt", form, tmp_path / form, None, force=False)


def _assert_exports_reproduce(trained, tiny_llama_dir, tmp_path) -> None:
    """The PEFT export, loaded by `peft` on the base, gives the trained log-probs (1e-5); the
    merged export, loaded by plain transformers, too (1e-4)."""
    from peft import PeftModel

    batch = fixed_batch(128)
    real = batch.attention_mask[:, 1:].bool()
    with torch.no_grad():
        via_peft = _logprobs(PeftModel.from_pretrained(_hf_model(tiny_llama_dir),
                                                       tmp_path / "peft").eval(), batch)
        merged = _logprobs(_hf_model(tmp_path / "merged"), batch)
    assert (via_peft - trained)[real].abs().max() < 1e-5
    assert (merged - trained)[real].abs().max() < 1e-4


# PiSSA on canonical targets, k and up left out: their rows of the fused weights stay the base's.
PISSA = (("init_lora_weights", "pissa"),)
RESIDUAL_TARGETS = ("linear_q", "linear_v", "linear_proj", "linear_fc1_gate", "linear_fc2")
RESIDUAL_HF = ("q_proj", "v_proj", "o_proj", "gate_proj", "down_proj")


def _peft_adapter(model) -> dict[str, torch.Tensor]:
    """A PEFT model's LoRA A/B in lora-rl's HF names."""
    return {k.removeprefix("base_model.model.").replace(".default", ""): v.detach().clone()
            for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def test_megatron_pissa_on_canonical_targets_is_peft_pissa(megatron_run, tiny_llama_dir,
                                                           model_cache, tmp_path):  # noqa: F811
    """One tp=1 process: the initial adapter is PEFT's PiSSA init of q/v/o/gate/down (each
    projection factorised from its own rows of the fused linear_qkv/linear_fc1), step 0 is the
    base model, five steps train as PEFT's PiSSA model does, the reference policy and the HF
    generation copy see the original base (resp. the trained model), a resume replays the same
    steps, and the PEFT (plain LoRA of rank 2r) and merged exports reproduce the trained model."""
    from peft import LoraConfig, get_peft_model

    run = megatron_run(1, 1, 1, targets=RESIDUAL_TARGETS, peft=PISSA)
    batch = fixed_batch(128)
    real = batch.attention_mask[:, 1:].bool()
    hf = _hf_model(tiny_llama_dir)
    with torch.no_grad():
        base_logits = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        base = _logprobs(hf, batch)
    peft_model = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa",
                                               target_modules=list(RESIDUAL_HF)))
    init = _peft_adapter(peft_model)
    assert run["adapter0"].keys() == init.keys()
    for key, value in init.items():
        assert (run["adapter0"][key] - value).abs().max() < 1e-5, key
    # Residual + init = the base model.
    assert (run["logits"] - base_logits).abs().max() < 1e-5
    _assert_same_training(run, {**five_sft_steps(peft_model),
                                 "adapter": _peft_adapter(peft_model)})
    assert run["resumed_losses"] == run["losses"][3:]
    trained = run["logprobs"]
    assert (run["reference_logprobs"] - base)[real].abs().max() < 1e-5
    assert (run["generation_logprobs"] - trained)[real].abs().max() < 1e-5
    assert (trained - base)[real].abs().max() > 1e-3

    _export_checkpoint_of(run["adapter5"], {"target_modules": list(RESIDUAL_TARGETS),
                                            **dict(PISSA)}, tiny_llama_dir, model_cache,
                          tmp_path)
    config = json.loads((tmp_path / "peft/adapter_config.json").read_text())
    assert config["r"] == 8 and config.get("init_lora_weights", True) is True
    _assert_exports_reproduce(trained, tiny_llama_dir, tmp_path)


class _FusedQkv(torch.nn.Module):
    """A stand-in for Megatron's linear_qkv: one weight, rows [q heads of group 0, k0, v0, q
    heads of group 1, ...], returning (output, bias) as the parallel linears do."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> None:
        super().__init__()
        rows = [part for g in range(groups)
                for part in (q.chunk(groups)[g], k.chunk(groups)[g], v.chunk(groups)[g])]
        self.weight = torch.nn.Parameter(torch.cat(rows), requires_grad=False)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight), None


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_canonical_residual_init_is_peft_init_on_each_projection(init):
    """PiSSA and OLoRA on canonical q and v inside a fused linear_qkv (4 heads, 2 query groups):
    A, B, the output and A/B's gradients equal PEFT's on separate q/k/v Linears (k not
    targeted, its rows untouched), and the disabled layer is the original fused linear."""
    from peft import LoraConfig, inject_adapter_in_model

    from lora_rl.backends.megatron.canonical_lora import SplitLoraLinear
    from lora_rl.lora import lora_spec_from_config

    torch.manual_seed(0)
    hidden, d, groups = 32, 8, 2
    q, k, v = torch.randn(4 * d, hidden), torch.randn(groups * d, hidden), \
        torch.randn(groups * d, hidden)
    fused = _FusedQkv(q, k, v, groups)
    original = fused.weight.detach().clone()
    spec = lora_spec_from_config(MegatronPeftConfig(enabled=True, dim=4, alpha=8,
                                                    init_lora_weights=init))
    layer = SplitLoraLinear(fused, "linear_qkv", ["linear_q", "linear_v"], spec,
                            {"linear_q": 4 * d, "linear_k": groups * d, "linear_v": groups * d},
                            groups, torch.nn.Linear, torch.nn.Linear)
    layer.start_from_residual(init)

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, weight in (("q", q), ("k", k), ("v", v)):
                linear = torch.nn.Linear(hidden, weight.shape[0], bias=False)
                linear.weight.data.copy_(weight)
                setattr(self, name, linear)

    peft = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"],
                                              init_lora_weights=init), Attention())
    adapters = layer.adapters()
    for name, projection in (("q", "linear_q"), ("v", "linear_v")):
        for part in ("lora_A", "lora_B"):
            theirs = getattr(getattr(peft, name), part)["default"].weight
            ours = getattr(adapters[projection], part).weight
            assert (ours - theirs).abs().max() < 1e-5, (name, part)
    k_rows = layer.projection_rows()["linear_k"]
    assert torch.equal(fused.weight[k_rows], k)

    x = torch.randn(3, 5, hidden)
    cotangent = torch.randn(3, 5, 8 * d)
    out = layer(x)[0]
    expected_out = torch.cat([c for g in range(groups) for c in
                              (peft.q(x).chunk(groups, -1)[g], peft.k(x).chunk(groups, -1)[g],
                               peft.v(x).chunk(groups, -1)[g])], dim=-1)
    assert (out - expected_out).abs().max() < 1e-5
    assert (out - x @ original.T).abs().max() < 1e-4  # step 0 is the base
    (out * cotangent).sum().backward()
    (expected_out * cotangent).sum().backward()
    for name, projection in (("q", "linear_q"), ("v", "linear_v")):
        for part in ("lora_A", "lora_B"):
            theirs = getattr(getattr(peft, name), part)["default"].weight.grad
            ours = getattr(adapters[projection], part).weight.grad
            # float32 rounding of gradients of size ~25: 1e-5 relative to their largest entry
            assert (ours - theirs).abs().max() < 1e-5 * theirs.abs().max(), (name, part)
    layer.disabled = True
    with torch.no_grad():
        assert (layer(x)[0] - x @ original.T).abs().max() < 1e-4
