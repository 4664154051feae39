"""LoRA variants on the Megatron backend (DoRA, LoRA+), one gloo run at tp=2 (two processes:
~20 s here, against ~11 s for one process at tp=1; tp=2 is what exercises the row-parallel
modules' row norms summed over ranks and the magnitude's sharding) against the HF + LoRA-core
reference of test_parity: the same DoRA layer on HF's modules (with q/k/v and gate/up sharing A
as Megatron's fused modules do) and PEFT's LoRA+ optimizer groups built by hand. The trained
adapter then goes through the PEFT and merged exports and `peft` itself."""

import json
import shutil

import pytest
import torch

from lora_rl.checkpoint import save_checkpoint
from lora_rl.interop.export import export_checkpoint
from tests.megatron._worker import fixed_batch
from tests.megatron.conftest import MEGATRON_MISSING, megatron_available
from tests.megatron.test_parity import (
    _assert_same_training,
    _fused_lora,
    _hf_model,
    _logprobs,
    _train_five_steps,
)
from tests.training.conftest import model_cache  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not megatron_available(), reason=MEGATRON_MISSING)

RATIO = 4.0
VARIANT = (("use_dora", True), ("lora_plus_lr_ratio", RATIO))


@pytest.fixture(scope="module")
def dora_run(megatron_run):
    return megatron_run(2, 1, 2, peft=VARIANT)


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
    from peft import PeftModel

    batch = fixed_batch(128)
    real = batch.attention_mask[:, 1:].bool()
    trained = dora_run["logprobs"]
    assert (dora_run["generation_logprobs"] - trained)[real].abs().max() < 1e-5
    with torch.no_grad():
        base = _logprobs(_hf_model(tiny_llama_dir), batch)
    assert (dora_run["reference_logprobs"] - base)[real].abs().max() < 1e-5
    assert (trained - base)[real].abs().max() > 1e-3

    # The export writes the base's tokenizer too: the tiny Llama plus the tiny model's.
    base_dir = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base_dir)
    for tokenizer_file in (model_cache / "tiny-llama-v1").glob("*token*"):
        shutil.copy(tokenizer_file, base_dir)
    state = {"run": {"algorithm": "sft", "backend": "megatron", "model_name": str(base_dir),
                     "lora": {"enabled": True, "dim": 4, "alpha": 8, **dict(VARIANT)}},
             "algorithm": {}, "optimizer_meta": {}}
    save_checkpoint(tmp_path / "ckpt", 5, {"adapter": dora_run["adapter5"]}, state)
    export_checkpoint(tmp_path / "ckpt", "peft", tmp_path / "peft", None, force=False)
    assert json.loads((tmp_path / "peft/adapter_config.json").read_text())["use_dora"] is True
    with torch.no_grad():
        via_peft = _logprobs(PeftModel.from_pretrained(_hf_model(tiny_llama_dir),
                                                       tmp_path / "peft").eval(), batch)
    assert (via_peft - trained)[real].abs().max() < 1e-5
    # The merged export folds the magnitudes in too (PEFT's DoRA merge).
    export_checkpoint(tmp_path / "ckpt", "merged", tmp_path / "merged", None, force=False)
    with torch.no_grad():
        merged = _logprobs(_hf_model(tmp_path / "merged"), batch)
    assert (merged - trained)[real].abs().max() < 1e-4
