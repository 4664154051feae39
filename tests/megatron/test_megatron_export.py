"""Export of Megatron-backend adapters to the HF PEFT format (and merged HF checkpoints).

- fast (no megatron-core needed): an adapter in Megatron Core names — or Megatron-Bridge's
  `adapter.linear_in/linear_out` — exports to a PEFT adapter that `peft` loads with the logits of
  the HF model whose weights are the Megatron weights plus scale * B @ A, mapped back to HF by
  the bridge. That checks the q/k/v split per query group and the gate/up split independently of
  the adapter mapping itself.
- slow: an adapter trained by `lora-rl run` on the Megatron backend (tp=2) exports, and `peft`
  reproduces the Megatron model's own logits (restored from the same checkpoint, tp=2).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_rl.backends.megatron.bridge import LlamaShape, hf_to_megatron, megatron_to_hf
from lora_rl.checkpoint import save_checkpoint
from lora_rl.interop.export import ExportError, export_checkpoint
from lora_rl.lora import to_megatron_bridge
from tests.megatron.conftest import MEGATRON_MISSING, megatron_available, run_ranks
from tests.training.conftest import QUIET, Runner, model_cache  # noqa: F401  (fixture)

TOKENS = torch.tensor([[1, 9, 4, 10, 5, 13], [1, 7, 4, 8, 5, 11], [1, 12, 4, 3, 5, 14]])
RANK, ALPHA = 4, 8.0
FUSED = ("self_attention.linear_qkv", "mlp.linear_fc1")
SINGLE = ("self_attention.linear_proj", "mlp.linear_fc2")


def _hf(model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()


def _megatron_adapter(shape: LlamaShape, megatron_weights: dict) -> dict[str, torch.Tensor]:
    """Random A and B (B non-zero) on every decoder linear, Megatron names, whole tensors."""
    generator = torch.Generator().manual_seed(5)
    adapter = {}
    for i in range(shape.num_layers):
        for module in FUSED + SINGLE:
            base = f"decoder.layers.{i}.{module}"
            out_features, in_features = megatron_weights[f"{base}.weight"].shape
            adapter[f"{base}.lora_A.weight"] = torch.randn(RANK, in_features, generator=generator,
                                                           dtype=torch.float64)
            adapter[f"{base}.lora_B.weight"] = 0.05 * torch.randn(
                out_features, RANK, generator=generator, dtype=torch.float64)
    return adapter


def _checkpoint(root, model_dir, adapter) -> None:
    state = {"run": {"algorithm": "sft", "backend": "megatron", "model_name": str(model_dir),
                     "lora": {"enabled": True, "dim": RANK, "alpha": ALPHA}},
             "algorithm": {}, "optimizer_meta": {}}
    save_checkpoint(root, 3, {"adapter": adapter}, state)


@pytest.mark.parametrize("naming", ["megatron-core", "megatron-bridge"])
def test_megatron_named_adapter_exports_to_peft_with_the_merged_megatron_weights(
        naming, model_cache, tmp_path):  # noqa: F811
    from peft import PeftModel

    tiny_llama_dir = model_cache / "tiny-llama-v1"  # with a tokenizer, for the merged export
    # float64 here: the check is about the mapping, not float32 rounding of a large adapter
    hf = _hf(tiny_llama_dir, torch.float64)
    shape = LlamaShape.from_hf(hf.config)
    names = [f"decoder.layers.{i}.{m}.weight" for i in range(shape.num_layers)
             for m in FUSED + SINGLE]
    megatron_weights = hf_to_megatron(hf.state_dict(), names, shape)
    adapter = _megatron_adapter(shape, megatron_weights)
    # The expected model: Megatron weights + scale * B @ A, brought back to HF by the bridge.
    merged = dict(megatron_weights)
    for name in names:
        base = name.removesuffix(".weight")
        merged[name] = merged[name] + (ALPHA / RANK) * (
            adapter[f"{base}.lora_B.weight"] @ adapter[f"{base}.lora_A.weight"])
    expected_model = _hf(tiny_llama_dir, torch.float64)
    expected_model.load_state_dict(megatron_to_hf(merged, shape), strict=False)

    stored = to_megatron_bridge(adapter) if naming == "megatron-bridge" else adapter
    if naming == "megatron-bridge":
        assert any(".adapter.linear_in." in k for k in stored)
    _checkpoint(tmp_path / "ckpt", tiny_llama_dir, stored)
    export_checkpoint(tmp_path / "ckpt", "peft", tmp_path / "peft", None, force=False)
    export_checkpoint(tmp_path / "ckpt", "merged", tmp_path / "merged", None, force=False)

    config = json.loads((tmp_path / "peft/adapter_config.json").read_text())
    assert config["r"] == RANK and config["lora_alpha"] == ALPHA
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj",
                                               "gate_proj", "up_proj", "down_proj"])
    keys = load_file(str(tmp_path / "peft/adapter_model.safetensors"))
    assert len(keys) == shape.num_layers * 7 * 2
    assert all(k.startswith("base_model.model.model.layers.") for k in keys)
    q_a, v_a = (keys[f"base_model.model.model.layers.1.self_attn.{p}_proj.lora_A.weight"]
                for p in "qv")
    assert torch.equal(q_a, v_a)  # the fused module's one A, once per HF part
    with torch.no_grad():
        expected = expected_model(TOKENS).logits
        peft_model = PeftModel.from_pretrained(_hf(tiny_llama_dir, torch.float64),
                                               tmp_path / "peft")
        peft_logits = peft_model(TOKENS).logits
        merged_logits = _hf(tmp_path / "merged", torch.float64)(TOKENS).logits
        base_logits = hf(TOKENS).logits
    assert (peft_logits - base_logits).abs().max() > 1e-1  # the adapter matters
    assert (peft_logits - expected).abs().max() < 1e-9
    # the merged export is float32 (the base model's dtype)
    assert (merged_logits - expected).abs().max() < 1e-4


def test_megatron_adapter_that_does_not_fit_the_base_is_refused(tiny_llama_dir, tmp_path):
    adapter = {"decoder.layers.9.mlp.linear_fc2.lora_A.weight": torch.zeros(RANK, 128),
               "decoder.layers.9.mlp.linear_fc2.lora_B.weight": torch.zeros(64, RANK)}
    _checkpoint(tmp_path / "ckpt", tiny_llama_dir, adapter)
    with pytest.raises(ExportError, match="layers.9"):
        export_checkpoint(tmp_path / "ckpt", "merged", tmp_path / "out", None, force=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not megatron_available(), reason=MEGATRON_MISSING)
def test_adapter_trained_on_megatron_loads_in_peft_with_the_megatron_logits(
        tmp_path, model_cache):  # noqa: F811
    from peft import PeftModel

    runner = Runner(tmp_path, model_cache)
    runner.run("run", "recipes/sft-tiny-megatron-lora.yaml", "sft.max_num_steps=20",
               "sft.val_period=0", "sft.val_at_start=false", "checkpointing.save_period=20",
               *QUIET)
    ckpt = tmp_path / "results/sft-tiny-megatron-lora/step_20"
    runner.run("export", "--checkpoint", str(ckpt), "--format", "peft", "--out", "out/peft")
    runner.run("export", "--checkpoint", str(ckpt), "--format", "merged", "--out", "out/merged")
    base_dir = model_cache / "tiny-llama-v1"
    megatron_file = tmp_path / "megatron_logits.pt"
    worker = Path(__file__).with_name("_export_worker.py")
    run_ranks(2, [str(base_dir), str(ckpt), "2", "1", str(megatron_file)], worker=worker)
    megatron_logits = torch.load(megatron_file)
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(_hf(base_dir), tmp_path / "out/peft")(
            TOKENS).logits
        merged_logits = _hf(tmp_path / "out/merged")(TOKENS).logits
        base_logits = _hf(base_dir)(TOKENS).logits
    assert megatron_logits.shape == peft_logits.shape
    assert (megatron_logits - base_logits).abs().max() > 1e-1  # it trained
    assert (peft_logits - megatron_logits).abs().max() < 1e-5
    assert (merged_logits - peft_logits).abs().max() < 1e-4
    stamp = json.loads((tmp_path / "out/peft/lora_rl_export.json").read_text())
    assert stamp["backend"] == "megatron"
