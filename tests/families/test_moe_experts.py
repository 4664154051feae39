"""LoRA on MoE experts (transformers 5's fused 3-D `experts.gate_up_proj` / `down_proj`):
one adapter per expert, equal to PEFT's `target_parameters` adapter (logits and gradients),
trained by SFT, exported as a PEFT adapter that `peft` loads, and merged."""

from __future__ import annotations

import copy

import pytest
import torch

from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.lora import apply_lora, iter_lora_layers
from tests.families.conftest import run_two_ranks
from tests.megatron.conftest import MEGATRON_MISSING, megatron_available
from tests.training.conftest import QUIET, Runner

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def _base(family_models, family="qwen3_moe"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(family_models[family]).eval()


def _peft_twin(peft_modules, name):
    """PEFT nests one ParamWrapper per adapted parameter: gate_up_proj is the inner one."""
    parent, _, param = name.rpartition(".")
    if param == "gate_up_proj" and parent.endswith("experts"):
        return peft_modules[f"base_model.model.{parent}.base_layer"]
    if param == "down_proj" and parent.endswith("experts"):
        return peft_modules[f"base_model.model.{parent}"]
    return peft_modules[f"base_model.model.{name}"]


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_match_all_linear_adapts_experts_not_the_router(family_models, family):
    model = _base(family_models, family)
    report = apply_lora(model, DTensorLoraConfig(enabled=True, dim=4, alpha=8))
    experts = [n for n in report.patched if ".experts." in n]
    assert experts == [f"model.layers.{i}.mlp.experts.{p}" for i in range(2)
                       for p in ("gate_up_proj", "down_proj")]
    assert not [n for n in report.patched if n.endswith(".gate")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert "model.layers.0.mlp.experts.gate_up_proj.lora_A.weight" in trainable


def test_expert_lora_equals_peft_target_parameters(family_models):
    from peft import LoraConfig, get_peft_model

    base = _base(family_models)
    ours = copy.deepcopy(base)
    report = apply_lora(ours, DTensorLoraConfig(enabled=True, dim=4, alpha=8))
    theirs = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=ATTENTION,
                                             target_parameters=EXPERTS))
    assert report.trainable_params == sum(p.numel() for p in theirs.parameters()
                                          if p.requires_grad)
    modules = dict(theirs.named_modules())
    torch.manual_seed(1)
    pairs = []
    for name, layer in iter_lora_layers(ours):
        layer.lora_B.weight.data.normal_()  # non-zero B, so the adapters matter
        twin = _peft_twin(modules, name)
        twin.lora_A["default"].weight.data.copy_(layer.lora_A.weight)
        twin.lora_B["default"].weight.data.copy_(layer.lora_B.weight)
        pairs.append((layer, twin))
    tokens = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(2))
    a, b = ours(tokens).logits, theirs(tokens).logits
    assert (a - b).abs().max() < 1e-5
    a.square().mean().backward()
    b.square().mean().backward()
    for layer, twin in pairs:
        for ours_w, theirs_w in ((layer.lora_A, twin.lora_A["default"]),
                                 (layer.lora_B, twin.lora_B["default"])):
            assert torch.allclose(ours_w.weight.grad, theirs_w.weight.grad, atol=1e-5, rtol=0)


def test_merge_and_disable_cover_experts(family_models):
    from lora_rl.lora import disable_lora, merge_lora, unmerge_lora

    model = _base(family_models)
    plain = copy.deepcopy(model)
    apply_lora(model, DTensorLoraConfig(enabled=True, dim=4, alpha=8))
    for _, layer in iter_lora_layers(model):
        torch.nn.init.normal_(layer.lora_B.weight)
    tokens = torch.randint(0, 40, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        adapted = model(tokens).logits
        with disable_lora(model):
            assert torch.equal(model(tokens).logits, plain(tokens).logits)
        merge_lora(model)
        assert (model(tokens).logits - adapted).abs().max() < 1e-4
        unmerge_lora(model)
        assert torch.equal(model(tokens).logits, adapted)


def test_expert_tensor_parallel_equals_one_process(family_models):
    """tp=2 (gloo): experts split on their intermediate size (gate_up packed column-parallel,
    down row-parallel), expert adapters split to match; logits, every adapter's gradient and
    the disabled-adapter logits equal the unsharded model's (`_experts_tp_worker`). The 5-step
    SFT losses of both MoE families at tp=2 are in the slow family matrix."""
    output = run_two_ranks("tests.families._experts_tp_worker",
                           [f"qwen3_moe={family_models['qwen3_moe']}"],
                           {"LORA_RL_THREADS": "1"}, timeout=300)
    assert "qwen3_moe: tp=2 equals one process" in output


BACKENDS = {
    "dtensor": [],
    # MoE layers run tp=1 on Megatron: the recipe's two processes are two data-parallel ranks.
    "megatron": ["policy.megatron_cfg.tensor_model_parallel_size=1"],
}


@pytest.mark.parametrize("backend", [
    "dtensor",
    pytest.param("megatron", marks=[
        pytest.mark.slow, pytest.mark.skipif(not megatron_available(), reason=MEGATRON_MISSING)]),
])
def test_sft_trains_experts_and_the_peft_export_loads(backend, family_models, tiny_cache,
                                                      tmp_path):
    """Both backends train expert adapters and export the same PEFT layout: PEFT loads it on
    the HF MoE model with lora-rl's logits, and the merged export equals it within 1e-4."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    runner = Runner(tmp_path, tiny_cache)
    model_dir = family_models["qwen3_moe"]
    recipe = f"sft-tiny-{backend}-lora"
    runner.run("run", f"recipes/{recipe}.yaml", f"policy.model_name={model_dir}",
               "sft.max_num_steps=4", "sft.val_period=0", "sft.val_at_start=false",
               "checkpointing.save_period=4", *BACKENDS[backend], *QUIET)
    ckpt = runner.workdir / f"results/{recipe}/step_4"
    adapter = load_file(str(ckpt / "adapter.safetensors"))
    assert adapter["model.layers.1.mlp.experts.down_proj.lora_B.weight"].abs().max() > 0
    runner.run("export", "--checkpoint", str(ckpt), "--format", "peft", "--out", "out/peft")
    runner.run("export", "--checkpoint", str(ckpt), "--format", "merged", "--out", "out/merged")
    tokens = torch.tensor([[1, 9, 4, 10, 5, 13], [1, 7, 4, 8, 5, 11]])
    with torch.no_grad():
        peft_model = PeftModel.from_pretrained(_base(family_models), runner.workdir / "out/peft")
        peft_logits = peft_model(tokens).logits
        merged = AutoModelForCausalLM.from_pretrained(runner.workdir / "out/merged").eval()
        ours = _base(family_models)
        apply_lora(ours, DTensorLoraConfig(enabled=True, dim=8, alpha=16))
        from lora_rl.lora import load_lora_state_dict

        load_lora_state_dict(ours, adapter)
        ours_logits = ours(tokens).logits
        assert (peft_logits - ours_logits).abs().max() < 1e-5
        assert (merged(tokens).logits - ours_logits).abs().max() < 1e-4
    # PEFT's own adapters on the expert parameters are the ones the export names
    peft_state = {k for k, v in peft_model.named_parameters() if "lora_" in k}
    assert any("experts.base_layer.lora_A" in k for k in peft_state)


@pytest.mark.parametrize("family", ["qwen3_moe", "llama", "phi3"])
def test_explain_groups_count_the_adapters_the_run_builds(family_models, family):
    """`explain --model` (torch-free, from config.json) lists each adapted group with the
    trainable parameters apply_lora then really creates."""
    from pathlib import Path

    from lora_rl.config.model_facts import read_model_facts
    from lora_rl.config.validate import load_config
    from lora_rl.explain import adapted_group_rows

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "sft-tiny-dtensor-lora.yaml"
    cfg = load_config(recipe)
    rows = dict(adapted_group_rows(cfg, read_model_facts(family_models[family])))
    model = _base(family_models, family)
    report = apply_lora(model, cfg.policy.dtensor_cfg.lora_cfg)
    assert rows["trainable (LoRA)"] == f"{report.trainable_params:,} parameters"
    experts = sum(p.numel() for n, p in model.named_parameters()
                  if p.requires_grad and ".experts." in n)
    if family == "qwen3_moe":
        assert rows["adapted: experts"].startswith("4 expert parameter(s)")
        assert f"{experts:,} trainable" in rows["adapted: experts"]
        assert rows["adapted: mlp"] == rows["adapted: router"] == "none"
    else:
        assert rows["adapted: experts"] == "none" and experts == 0
