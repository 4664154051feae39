"""QLoRA on the DTensor backend's model loading: a tiny Llama loaded by `load_hf_model` with
`policy.quantization` (bitsandbytes NF4 / FP4 / int8 on CPU), LoRA in `lora_dtype` on top,
equals PEFT's LoRA on the same quantized base (loaded independently through transformers):
logits and adapter gradients within 1e-5 in fp32. Needs the `quant` extra; skipped without."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lora_rl.backends.dtensor.model import load_hf_model
from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.config.quantization import QuantizationConfig
from lora_rl.lora import apply_lora, iter_lora_layers
from tests.peft_twins import assert_logits_and_lora_grads_equal, pair_with_peft

pytest.importorskip("bitsandbytes", reason="the quant extra (bitsandbytes) is not installed")

KINDS = {
    "nf4": {"load_in_4bit": True},
    "fp4": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
    "nf4-double-quant": {"load_in_4bit": True, "bnb_4bit_use_double_quant": True},
    "nf4-float32-storage": {"load_in_4bit": True, "bnb_4bit_quant_storage": "float32"},
    "int8": {"load_in_8bit": True},
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, request):
    base = request.getfixturevalue("tiny_llama_base")
    directory = tmp_path_factory.mktemp("tiny-llama")
    base.save_pretrained(directory)
    return directory


def _peft_model(directory, quant: QuantizationConfig):
    from transformers import AutoModelForCausalLM

    from lora_rl.backends.dtensor.model import bnb_config, keep_fp_compute

    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, quantization_config=bnb_config(quant, "float32"))
    # bitsandbytes' kernel choice, as lora-rl makes it: from_pretrained returns an eval-mode
    # model, and the first layer's input needs no grad, which would pick its bf16 CPU kernel.
    keep_fp_compute(model)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))


@pytest.mark.parametrize("kind", list(KINDS))
def test_logits_and_grads_equal_peft_on_the_quantized_base(base_dir, kind):
    quant = QuantizationConfig(**KINDS[kind])
    ours = load_hf_model(base_dir, "float32", False, quant)
    report = apply_lora(ours, DTensorLoraConfig(enabled=True, dim=4, alpha=8,
                                                lora_dtype="float32"))
    theirs = _peft_model(base_dir, quant)
    for _, layer in iter_lora_layers(ours):
        assert layer.lora_A.weight.dtype == torch.float32
        assert type(layer.base).__name__ == ("Linear8bitLt" if quant.load_in_8bit
                                             else "Linear4bit")
    pairs = pair_with_peft(ours, theirs)
    assert len(pairs) == len(report.patched) == 14
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    assert_logits_and_lora_grads_equal(ours, theirs, pairs, tokens)
    # The base stays frozen: only the adapters train.
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        f"{name}.{part}.weight" for name, _ in iter_lora_layers(ours)
        for part in ("lora_A", "lora_B")}


def test_the_quantized_base_differs_from_the_full_precision_one(base_dir, tiny_llama_base):
    """The comparison above is about a really quantized model (not a silently full-precision
    load): its logits move away from the fp32 model's, a little."""
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    quantized = load_hf_model(base_dir, "float32", False, QuantizationConfig(load_in_4bit=True))
    with torch.no_grad():
        gap = (quantized(tokens).logits - tiny_llama_base(tokens).logits).abs().max()
    assert 1e-4 < gap < 1.0


def test_inference_computes_what_training_computes(base_dir):
    """bitsandbytes' bf16 CPU inference kernel stays off (`keep_fp_compute`): eval-mode,
    no-grad logits (log-probs, the reference policy) equal the training forward's."""
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    model = load_hf_model(base_dir, "float32", False, QuantizationConfig(load_in_4bit=True))
    apply_lora(model, DTensorLoraConfig(enabled=True, dim=4, alpha=8, lora_dtype="float32"))
    train_logits = model(tokens).logits
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, train_logits)
