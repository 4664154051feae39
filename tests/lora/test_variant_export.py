"""LoRA variants survive export: the PEFT adapter_config says which variant it is, and `peft`
loads the adapter with lora-rl's logits; the merged export and init_adapter_path agree."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.interop.export import _write_merged, _write_peft
from lora_rl.interop.peft_format import AdapterFormatError
from lora_rl.interop.peft_import import load_peft_adapter
from lora_rl.lora import apply_lora, iter_lora_layers, lora_state_dict

VARIANTS = [
    # (id, config kwargs, adapter_config entries it must write)
    ("plain", {}, {"use_rslora": False, "use_dora": False}),
    ("rslora", {"use_rslora": True}, {"use_rslora": True, "use_dora": False}),
    ("dora", {"use_dora": True}, {"use_rslora": False, "use_dora": True}),
]
TOKENS = torch.tensor([[1, 9, 4, 10, 5, 13], [1, 7, 4, 8, 5, 11]])


@pytest.fixture
def base_dir(tiny_llama_base, tmp_path):
    directory = tmp_path / "base"
    tiny_llama_base.save_pretrained(directory, safe_serialization=True)
    return directory


def _trained(base_dir, lora):
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    apply_lora(model, lora)
    torch.manual_seed(3)
    for _, layer in iter_lora_layers(model):
        layer.lora_B.weight.data.normal_(std=0.05)
        if layer.use_dora:  # a trained magnitude, away from ||W||
            layer.lora_magnitude_vector.data.mul_(1 + 0.1 * torch.randn_like(
                layer.lora_magnitude_vector))
    return model


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_peft_and_merged_exports_reproduce_the_model(base_dir, tmp_path, variant):
    from peft import PeftModel

    _, kwargs, expected = variant
    lora = DTensorLoraConfig(enabled=True, dim=4, alpha=8, use_triton=False, **kwargs)
    ours = _trained(base_dir, lora)
    adapter = {k: v.clone() for k, v in lora_state_dict(ours).items()}
    (tmp_path / "peft").mkdir()
    (tmp_path / "merged").mkdir()
    _write_peft(tmp_path / "peft", adapter, lora, str(base_dir))
    _write_merged(tmp_path / "merged", adapter, lora, str(base_dir))
    config = json.loads((tmp_path / "peft/adapter_config.json").read_text())
    assert {k: config[k] for k in expected} == expected
    with torch.no_grad():
        ours_logits = ours(TOKENS).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        plain = base(TOKENS).logits
        peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
        peft_logits = peft_model(TOKENS).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        merged_logits = merged(TOKENS).logits
    assert (ours_logits - plain).abs().max() > 1e-3  # the adapter matters
    assert (peft_logits - ours_logits).abs().max() < 1e-5
    assert (merged_logits - ours_logits).abs().max() < 1e-4
    # init_adapter_path: the same adapter loads into a recipe of the same variant...
    again = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    apply_lora(again, lora)
    load_peft_adapter(again, tmp_path / "peft")
    with torch.no_grad():
        assert (again(TOKENS).logits - ours_logits).abs().max() < 1e-6


def test_export_checks_dora_magnitudes():
    from lora_rl.tensor_guard import check_adapter

    pair = {"m.lora_A.weight": torch.zeros(2, 6), "m.lora_B.weight": torch.zeros(5, 2)}
    check_adapter({**pair, "m.lora_magnitude_vector": torch.ones(5)}, 2, {"m": (5, 6)})
    with pytest.raises(ValueError, match="magnitude of length 4"):
        check_adapter({**pair, "m.lora_magnitude_vector": torch.ones(4)}, 2, {"m": (5, 6)})
    with pytest.raises(ValueError, match="no lora_A/lora_B"):
        check_adapter({**pair, "x.lora_magnitude_vector": torch.ones(5)}, 2, {"m": (5, 6)})
    with pytest.raises(ValueError, match="NaN"):
        check_adapter({**pair, "m.lora_magnitude_vector": torch.full((5,), float("nan"))}, 2,
                      None)


def test_a_variant_adapter_is_refused_by_a_plain_recipe(base_dir, tmp_path):
    lora = DTensorLoraConfig(enabled=True, dim=4, alpha=8, use_triton=False, use_rslora=True)
    adapter = lora_state_dict(_trained(base_dir, lora))
    (tmp_path / "peft").mkdir()
    _write_peft(tmp_path / "peft", adapter, lora, str(base_dir))
    plain = AutoModelForCausalLM.from_pretrained(base_dir)
    apply_lora(plain, DTensorLoraConfig(enabled=True, dim=4, alpha=8, use_triton=False))
    with pytest.raises(AdapterFormatError, match="use_rslora to true"):
        load_peft_adapter(plain, tmp_path / "peft")
    lora = DTensorLoraConfig(enabled=True, dim=4, alpha=8, use_triton=False, use_dora=True)
    adapter = lora_state_dict(_trained(base_dir, lora))
    (tmp_path / "dora").mkdir()
    _write_peft(tmp_path / "dora", adapter, lora, str(base_dir))
    with pytest.raises(AdapterFormatError, match="use_dora: true"):
        load_peft_adapter(plain, tmp_path / "dora")
