"""PiSSA and OLoRA (`init_lora_weights`): the init, forward and backward equal PEFT's; merge,
the reference policy and both exports account for the rewritten base weights."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.errors import SetupError
from lora_rl.interop.export import _write_merged, _write_peft
from lora_rl.interop.peft_format import AdapterFormatError
from lora_rl.interop.peft_import import load_peft_adapter
from lora_rl.lora import (
    LoraSpec,
    apply_lora,
    disable_lora,
    iter_lora_layers,
    lora_state_dict,
    merge_lora,
    unmerge_lora,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
INITS = ["pissa", "olora"]
TOKENS = torch.tensor([[1, 9, 4, 10, 5, 13], [1, 7, 4, 8, 5, 11]])


def _lora(init, **kwargs):
    return DTensorLoraConfig(enabled=True, dim=4, alpha=8, use_triton=False,
                             dropout_position="pre", init_lora_weights=init, **kwargs)


def _paired(model, init, rslora=False):
    ours = copy.deepcopy(model)
    apply_lora(ours, _lora(init, use_rslora=rslora))
    theirs = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=init,
        use_rslora=rslora))
    modules = dict(theirs.named_modules())
    pairs = [(layer, modules[f"base_model.model.{name}"]) for name, layer in
             iter_lora_layers(ours)]
    assert len(pairs) == 14
    return ours, theirs, pairs


@pytest.mark.parametrize("rslora", [False, True], ids=["plain", "rslora"])
@pytest.mark.parametrize("init", INITS)
def test_init_forward_and_backward_equal_peft(tiny_llama, init, rslora):
    original = copy.deepcopy(tiny_llama)
    ours, theirs, pairs = _paired(tiny_llama, init, rslora)
    for layer, twin in pairs:
        base_changed = (layer.base.weight - twin.base_layer.weight).abs().max()
        assert base_changed <= 1e-5
        assert torch.allclose(layer.lora_A.weight, twin.lora_A["default"].weight, atol=1e-5)
        assert torch.allclose(layer.lora_B.weight, twin.lora_B["default"].weight, atol=1e-5)
        assert layer.lora_B.weight.abs().max() > 1e-3  # B is not zero: the init matters
    original_weight = original.model.layers[0].self_attn.q_proj.weight
    assert (pairs[0][0].base.weight - original_weight).abs().max() > 1e-3  # base rewritten
    with torch.no_grad():
        plain = original(TOKENS).logits
    ours_logits = ours(TOKENS).logits
    peft_logits = theirs(TOKENS).logits
    assert (ours_logits - peft_logits).abs().max() <= 1e-5
    assert (ours_logits - plain).abs().max() <= 1e-5  # step 0 is the base model
    ours_logits.square().mean().backward()
    peft_logits.square().mean().backward()
    for layer, twin in pairs:
        for ab in ("lora_A", "lora_B"):
            grad = getattr(layer, ab).weight.grad
            peft_grad = getattr(twin, ab)["default"].weight.grad
            assert grad.abs().max() > 0
            assert torch.allclose(grad, peft_grad, atol=1e-5, rtol=0)


def _train(model, steps=3):
    """A few AdamW steps on a fixed next-token loss: the adapters move away from the init."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        logits = model(TOKENS).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 TOKENS[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("init", INITS)
def test_merge_unmerge_and_reference_policy(tiny_llama, init):
    original = copy.deepcopy(tiny_llama)
    model = _train(_paired(tiny_llama, init)[0]).eval()
    residual = {name: layer.base.weight.clone() for name, layer in iter_lora_layers(model)}
    with torch.no_grad():
        trained = model(TOKENS).logits
        plain = original(TOKENS).logits
        with disable_lora(model):  # the reference policy is the original model, not the residual
            assert (model(TOKENS).logits - plain).abs().max() <= 1e-5
        assert (trained - plain).abs().max() > 1e-3
        merge_lora(model)
        assert (model(TOKENS).logits - trained).abs().max() <= 1e-5
        unmerge_lora(model)
    for name, layer in iter_lora_layers(model):
        assert torch.equal(layer.base.weight, residual[name])


@pytest.fixture
def base_dir(tiny_llama_base, tmp_path):
    directory = tmp_path / "base"
    tiny_llama_base.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.mark.parametrize("rslora", [False, True], ids=["plain", "rslora"])
@pytest.mark.parametrize("init", INITS)
def test_exports_reproduce_the_trained_model_on_the_original_base(base_dir, tmp_path, init,
                                                                   rslora):
    lora = _lora(init, use_rslora=rslora)
    ours = AutoModelForCausalLM.from_pretrained(base_dir)
    apply_lora(ours, lora)
    _train(ours).eval()
    adapter = {k: v.detach().clone() for k, v in lora_state_dict(ours).items()}
    (tmp_path / "peft").mkdir()
    (tmp_path / "merged").mkdir()
    _write_peft(tmp_path / "peft", adapter, lora, str(base_dir))
    _write_merged(tmp_path / "merged", adapter, lora, str(base_dir))
    config = json.loads((tmp_path / "peft/adapter_config.json").read_text())
    assert config["r"] == 8
    assert config["lora_alpha"] == pytest.approx(8 * (2 ** 0.5 if rslora else 2))
    with torch.no_grad():
        trained = ours(TOKENS).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()  # the ORIGINAL base
        plain = base(TOKENS).logits
        peft_logits = PeftModel.from_pretrained(base, tmp_path / "peft").eval()(TOKENS).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        merged_logits = merged(TOKENS).logits
    assert (trained - plain).abs().max() > 1e-3  # training moved the model
    assert (peft_logits - trained).abs().max() <= 1e-4
    assert (merged_logits - trained).abs().max() <= 1e-4


def test_an_adapter_cannot_be_loaded_onto_a_residual_base(base_dir, tmp_path):
    plain_lora = DTensorLoraConfig(enabled=True, dim=4, alpha=8, use_triton=False)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    apply_lora(model, plain_lora)
    (tmp_path / "peft").mkdir()
    _write_peft(tmp_path / "peft", lora_state_dict(model), plain_lora, str(base_dir))
    pissa = AutoModelForCausalLM.from_pretrained(base_dir)
    apply_lora(pissa, _lora("pissa"))
    with pytest.raises(AdapterFormatError, match="LR156"):
        load_peft_adapter(pissa, tmp_path / "peft")


def test_what_a_residual_init_cannot_do_is_refused():
    with pytest.raises(ValueError, match="use_dora"):
        LoraSpec(rank=2, alpha=4, weight_init="pissa", use_dora=True)
    with pytest.raises(ValueError, match="weight_init"):
        LoraSpec(rank=2, alpha=4, weight_init="pissa_niter_4")
    small = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(SetupError, match="rank <= min"):
        apply_lora(small, LoraSpec(rank=4, alpha=4, weight_init="olora"))
    from lora_rl.lora.experts import ExpertsLora

    experts = torch.nn.Module()
    experts.down_proj = torch.nn.Parameter(torch.zeros(2, 6, 4))
    with pytest.raises(SetupError, match="MoE expert"):
        ExpertsLora(experts, ["down_proj"], LoraSpec(rank=2, alpha=4, weight_init="pissa"))
    quantized = torch.nn.Sequential(torch.nn.Linear(4, 4))
    quantized[0].weight = torch.nn.Parameter(torch.ones(4, 4, dtype=torch.int8),
                                             requires_grad=False)
    with pytest.raises(SetupError, match="quantized bases are not supported"):
        apply_lora(quantized, LoraSpec(rank=2, alpha=4, weight_init="pissa", dtype="float32"))


@pytest.mark.parametrize("init", INITS)
def test_generation_paths_use_the_residual_base(base_dir, init):
    """vLLM's merge-weight sync sends residual + delta (the original weight at step 0), and the
    multi-process generation copy, rebuilt from the original weights, recomputes the same
    residual before it receives the trained adapters."""

    from lora_rl.backends.dtensor.generation_copy import GenerationCopy
    from lora_rl.generation.vllm_engine import merged_weights

    lora = _lora(init)
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    original = dict(AutoModelForCausalLM.from_pretrained(base_dir).named_parameters())
    apply_lora(model, lora)
    sent = dict(merged_weights(model, {}))
    for name, _ in iter_lora_layers(model):
        assert (sent[f"{name}.weight"] - original[f"{name}.weight"]).abs().max() <= 1e-5
    _train(model).eval()
    sent = dict(merged_weights(model, {}))
    copy_ = GenerationCopy(model, base_dir, "float32", False, lora)
    with copy_.synced() as generator, torch.no_grad():
        assert (generator(TOKENS).logits - model(TOKENS).logits).abs().max() <= 1e-5
    merge_lora(model)
    for name, layer in iter_lora_layers(model):
        assert torch.allclose(sent[f"{name}.weight"], layer.base.weight, atol=1e-6, rtol=0)
        assert (layer.base.weight - original[f"{name}.weight"]).abs().max() > 1e-4  # trained


def test_a_peft_saved_pissa_adapter_loads_as_peft_loads_it(base_dir, tmp_path):
    """peft saves a PiSSA adapter (no conversion) with init_lora_weights "pissa" and rebuilds
    the residual when loading it; lora-rl's loader does the same, and init_adapter_path (which
    continues on the original base) refuses it."""
    from lora_rl.interop.peft_format import adapter_spec, read_adapter, wrap_adapter_modules
    from lora_rl.lora import load_lora_state_dict

    theirs = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="pissa"))
    _train(theirs).eval()
    theirs.save_pretrained(tmp_path / "pissa")
    config, tensors = read_adapter(tmp_path / "pissa")
    assert config["init_lora_weights"] == "pissa"
    ours = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    wrap_adapter_modules(ours, tensors, adapter_spec(config))
    load_lora_state_dict(ours, tensors)
    with torch.no_grad():
        assert (ours(TOKENS).logits - theirs(TOKENS).logits).abs().max() <= 1e-5
    plain = AutoModelForCausalLM.from_pretrained(base_dir)
    apply_lora(plain, DTensorLoraConfig(enabled=True, dim=4, alpha=8, use_triton=False))
    with pytest.raises(AdapterFormatError, match="rewrote its base weights"):
        load_peft_adapter(plain, tmp_path / "pissa")
    with pytest.raises(AdapterFormatError, match="cannot recompute"):
        adapter_spec({**config, "init_lora_weights": "pissa_niter_4"})
