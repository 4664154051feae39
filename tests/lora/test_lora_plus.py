"""LoRA+ (`lora_plus_lr_ratio`): the optimizer's parameter groups are PEFT's
`create_loraplus_optimizer` groups, and a training step equals PEFT's with that optimizer."""

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer

from lora_rl.backends.dtensor.backend import lora_plus_groups
from lora_rl.config.validate import load_config
from lora_rl.lora import apply_lora, iter_lora_layers
from lora_rl.training.optim import build_optimizer

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-tiny-dtensor-lora.yaml"
LORA = "policy.dtensor_cfg.lora_cfg"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOKENS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(4))


def _recipe(ratio, wd=0.01):
    return load_config(RECIPE, [f"{LORA}.dim=4", f"{LORA}.alpha=8", f"{LORA}.use_triton=false",
                                f"{LORA}.lora_plus_lr_ratio={ratio}",
                                f"policy.optimizer.kwargs.weight_decay={wd}"])


def _key(name):
    return name.removeprefix("base_model.model.").replace(".default", "")


def _groups(optimizer, model):
    names = {id(p): _key(n) for n, p in model.named_parameters()}
    return {names[id(p)]: (group["lr"], group["weight_decay"])
            for group in optimizer.param_groups for p in group["params"]}


def _paired(model, cfg):
    ours = copy.deepcopy(model)
    apply_lora(ours, cfg.policy.dtensor_cfg.lora_cfg)
    theirs = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8,
                                                             target_modules=TARGETS))
    peft_modules = dict(theirs.named_modules())
    torch.manual_seed(1)
    for name, layer in iter_lora_layers(ours):
        layer.lora_B.weight.data.normal_(std=0.1)
        twin = peft_modules[f"base_model.model.{name}"]
        twin.lora_A["default"].weight.data.copy_(layer.lora_A.weight)
        twin.lora_B["default"].weight.data.copy_(layer.lora_B.weight)
    return ours, theirs


def _optimizers(ours, theirs, cfg):
    kw = cfg.policy.optimizer.kwargs
    mine = build_optimizer(ours.parameters(), cfg.policy.optimizer,
                           **lora_plus_groups(ours, cfg.policy))
    peft_opt = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=kw.lr,
                                         loraplus_lr_ratio=cfg.policy.dtensor_cfg.lora_cfg
                                         .lora_plus_lr_ratio,
                                         loraplus_weight_decay=kw.weight_decay, betas=kw.betas,
                                         eps=kw.eps, weight_decay=kw.weight_decay)
    return mine, peft_opt


def test_param_groups_equal_peft(tiny_llama):
    cfg = _recipe(16)
    ours, theirs = _paired(tiny_llama, cfg)
    mine, peft_opt = _optimizers(ours, theirs, cfg)
    groups = _groups(mine, ours)
    assert groups == _groups(peft_opt, theirs)
    lr = cfg.policy.optimizer.kwargs.lr
    assert {v for k, v in groups.items() if ".lora_B." in k} == {(lr * 16, 0.01)}
    assert {v for k, v in groups.items() if ".lora_A." in k} == {(lr, 0.01)}
    assert len(groups) == 2 * 14


def test_without_a_ratio_there_is_one_group(tiny_llama):
    cfg = load_config(RECIPE, [f"{LORA}.dim=4"])
    apply_lora(tiny_llama, cfg.policy.dtensor_cfg.lora_cfg)
    assert lora_plus_groups(tiny_llama, cfg.policy) == {}
    optimizer = build_optimizer(tiny_llama.parameters(), cfg.policy.optimizer)
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("ratio", [4, 16])
def test_training_steps_equal_peft_with_its_optimizer(tiny_llama, ratio):
    cfg = _recipe(ratio)
    ours, theirs = _paired(tiny_llama, cfg)
    mine, peft_opt = _optimizers(ours, theirs, cfg)
    before = {n: layer.lora_B.weight.detach().clone() for n, layer in iter_lora_layers(ours)}
    for _ in range(2):
        for model, optimizer in ((ours, mine), (theirs, peft_opt)):
            optimizer.zero_grad()
            model(TOKENS).logits.float().log_softmax(-1).mean().neg().backward()
            optimizer.step()
    peft_modules = dict(theirs.named_modules())
    # Adam moves each weight by about its group's lr whatever the gradient's size, so float32
    # rounding (1e-10) in a near-zero gradient entry can show as ~1e-4 of B's lr (0.02-0.08) in
    # single entries (measured: 1.8e-5 with peft 0.21.2, transformers 5.19). A wrong group would
    # be off by (ratio - 1) * lr, about 1e-2, in every entry.
    for name, layer in iter_lora_layers(ours):
        twin = peft_modules[f"base_model.model.{name}"]
        for ab in ("lora_A", "lora_B"):
            mine_w = getattr(layer, ab).weight
            assert torch.allclose(mine_w, getattr(twin, ab)["default"].weight, atol=1e-4, rtol=0)
        assert (layer.lora_B.weight - before[name]).abs().max() > 1e-3  # the steps did move B
    with torch.no_grad():
        assert torch.allclose(ours(TOKENS).logits, theirs(TOKENS).logits, atol=1e-5, rtol=0)
