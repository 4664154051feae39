"""QLoRA end to end on the tiny SFT recipe: `policy.quantization` (bitsandbytes NF4 on CPU)
trains LoRA on the 4-bit base (the loss falls), the PEFT export loaded by `peft` on the same
quantized base gives lora-rl's logits, and the merged export is the dequantized base plus the
adapter's delta. Needs the `quant` extra; skipped without."""

import pytest
import torch

from tests.training.conftest import QUIET

pytest.importorskip("bitsandbytes", reason="the quant extra (bitsandbytes) is not installed")

QLORA = ["policy.quantization.load_in_4bit=true",
         "policy.dtensor_cfg.lora_cfg.lora_dtype=float32"]
CKPT = "results/sft-tiny-dtensor-lora/step_20"
TOKENS = torch.tensor([[1, 9, 4, 10, 5, 13], [1, 7, 4, 8, 5, 11]])


@pytest.fixture
def trained(runner):
    runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", *QLORA, "sft.max_num_steps=20",
               "sft.val_period=0", "sft.val_at_start=false", "checkpointing.save_period=20",
               *QUIET)
    return runner


def _trained_model(base_dir, adapter_file):
    """lora-rl's model as the run trained it: the NF4 base with the checkpoint's adapter."""
    from safetensors.torch import load_file

    from lora_rl.backends.dtensor.model import load_hf_model
    from lora_rl.config.lora import DTensorLoraConfig
    from lora_rl.config.quantization import QuantizationConfig
    from lora_rl.lora import apply_lora, load_lora_state_dict

    model = load_hf_model(base_dir, "float32", False, QuantizationConfig(load_in_4bit=True))
    apply_lora(model, DTensorLoraConfig(enabled=True, dim=8, alpha=16, lora_dtype="float32"))
    load_lora_state_dict(model, load_file(str(adapter_file)))
    return model.eval()


def test_qlora_learns_and_exports(trained, model_cache):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_rl.backends.dtensor.model import bnb_config, keep_fp_compute
    from lora_rl.config.quantization import QuantizationConfig
    from lora_rl.interop.quantized_export import dequantized_weight
    from lora_rl.lora import iter_lora_layers

    runner = trained
    train = [r for r in runner.metrics("logs/sft-tiny-dtensor-lora") if "loss" in r]
    assert sum(r["loss"] for r in train[-5:]) / 5 < train[0]["loss"] / 2, train
    runner.run("export", "--checkpoint", CKPT, "--format", "peft", "--out", "out/peft")
    runner.run("export", "--checkpoint", CKPT, "--format", "merged", "--out", "out/merged")
    base_dir = model_cache / "tiny-llama-v1"
    ours = _trained_model(base_dir, runner.workdir / CKPT / "adapter.safetensors")
    quant = bnb_config(QuantizationConfig(load_in_4bit=True), "float32")
    with torch.no_grad():
        ours_logits = ours(TOKENS).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                    quantization_config=quant).eval()
        # bitsandbytes' own choice, not PEFT's: without this its bf16 CPU inference kernel
        # computes no-grad eval logits ~1e-2 away (docs/lora-guide.md, keep_fp_compute).
        keep_fp_compute(base)
        peft_logits = PeftModel.from_pretrained(base, runner.workdir / "out/peft")(TOKENS).logits
        merged = AutoModelForCausalLM.from_pretrained(runner.workdir / "out/merged").eval()
        merged_logits = merged(TOKENS).logits
        plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    # PEFT on the same quantized base: the trained model.
    assert (peft_logits - ours_logits).abs().max() < 1e-5
    # The merged export is plain fp32: every adapted weight is dequantized(W) + scale * B A.
    assert getattr(merged.config, "quantization_config", None) is None
    merged_modules = dict(merged.named_modules())
    for name, layer in iter_lora_layers(ours):
        weight = merged_modules[name].weight
        assert weight.dtype == torch.float32
        expected = dequantized_weight(layer.base) + layer.delta_weight()
        assert torch.equal(weight, expected), name
        # ... which is not the original weight: the quantization error is kept.
        assert not torch.allclose(weight, plain.get_submodule(name).weight + layer.delta_weight())
    # 4-bit dequantizes and multiplies in fp32: the merged model computes the trained one.
    assert (merged_logits - ours_logits).abs().max() < 1e-4
