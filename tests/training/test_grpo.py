"""GRPO: advantages and loss pieces, merge- vs split-weight generation parity, and rewards that
rise over training from the SFT adapter (3 seeds)."""


import pytest
import torch

from lora_rl.algorithms.grpo_loss import clipped_policy_loss, group_advantages, k3_kl
from tests.training.conftest import QUIET, reward_gain, run_grpo_seeds


def test_group_advantages_leave_one_out_and_normalised():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    plain = group_advantages(rewards, 3, leave_one_out=False, normalize=False)
    assert plain.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])
    loo = group_advantages(rewards, 3, leave_one_out=True, normalize=False)
    assert loo.tolist() == pytest.approx([1.0, -0.5, -0.5, 0, 0, 0])
    normed = group_advantages(rewards, 3, leave_one_out=False, normalize=True)
    std = torch.tensor([1.0, 0.0, 0.0]).std().item()
    assert normed[0].item() == pytest.approx((2 / 3) / (std + 1e-6), rel=1e-5)


def test_clipped_loss_and_kl():
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([1.0]), 0.2, 0.2, None)
    assert loss.tolist()[0] == pytest.approx([-1.2, -0.5], abs=1e-6)
    assert clipped.tolist() == [[True, False]]
    neg, _ = clipped_policy_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.2, dual_clip=1.4)
    assert neg.tolist()[0] == pytest.approx([1.4, 0.8], abs=1e-6)
    assert k3_kl(torch.zeros(3), torch.zeros(3)).abs().max() == 0
    assert (k3_kl(torch.tensor([-1.0]), torch.tensor([-2.0])) > 0).all()


def test_merge_weight_generation_equals_split_weight(model_cache):
    from transformers import AutoModelForCausalLM

    from lora_rl.config.lora import DTensorLoraConfig
    from lora_rl.generation.torch_generator import SamplingParams, generate
    from lora_rl.lora import apply_lora, iter_lora_layers, merge_lora, unmerge_lora

    model = AutoModelForCausalLM.from_pretrained(model_cache / "tiny-llama-v1").eval()
    apply_lora(model, DTensorLoraConfig(enabled=True, dim=8, alpha=16))
    torch.manual_seed(0)
    for _, layer in iter_lora_layers(model):
        layer.lora_B.weight.data.normal_(std=0.2)
    prompts = [[1, 9, 4, 10, 5], [1, 7, 4, 8, 5], [1, 6, 4, 12, 5]]
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    split = generate(model, prompts, params, pad_id=0, generator=torch.Generator().manual_seed(3))
    merge_lora(model)
    merged = generate(model, prompts, params, pad_id=0,
                      generator=torch.Generator().manual_seed(3))
    unmerge_lora(model)
    assert merged.tokens == split.tokens
    for a, b in zip(merged.logprobs, split.logprobs, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


@pytest.mark.slow
def test_grpo_raises_reward_from_the_sft_adapter_over_three_seeds(runner):
    runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", "sft.max_num_steps=100",
               "sft.val_period=0", "sft.val_at_start=false", *QUIET)
    runner.run("export", "--checkpoint", "results/sft-tiny-dtensor-lora", "--format", "peft",
               "--out", "results/sft-tiny-peft")
    runs = run_grpo_seeds(runner, "recipes/grpo-tiny-dtensor-lora.yaml")
    assert all("gen_kl_error" in r and r["gen_kl_error"] < 1e-3 for rows in runs for r in rows)
    gains = [reward_gain(rows) for rows in runs]
    # Stated margin: mean reward of the last 10 steps beats the first 5 by >= 0.1 on average.
    assert sum(gains) / 3 >= 0.1, gains
    assert min(gains) > 0, gains
