"""The per-micro-batch loss functions the algorithms hand to the backend, against values worked
out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from lora_rl.algorithms.dpo_loss import PreferenceBatch, dpo_loss, pair_logprobs
from lora_rl.algorithms.grpo_loss import PolicyBatch, grpo_loss
from lora_rl.algorithms.sft_loss import sft_loss
from lora_rl.backends.base import TokenBatch
from lora_rl.config.algorithms import DPOConfig
from lora_rl.config.sections import LossFnConfig

LN2 = math.log(2)


def _batch(loss_mask: list[list[int]], cls=TokenBatch, **fields):
    mask = torch.tensor(loss_mask)
    return cls(torch.zeros_like(mask), torch.ones_like(mask), mask, **fields)


def test_sft_loss_is_the_masked_nll_over_the_global_token_count():
    batch = _batch([[0, 1, 0, 1], [0, 1, 1, 1]])  # targets [1, 0, 1] and [1, 1, 1]
    logprobs = torch.tensor([[-1.0, -9.0, -3.0], [-0.5, -0.25, -0.25]], requires_grad=True)
    loss, sums = sft_loss(logprobs, batch, global_tokens=10)
    # nll = 1 + 3 + 0.5 + 0.25 + 0.25 = 5; this micro-batch's share of a 10-token step: 0.5
    assert sums == {"nll_sum": 5.0}
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    expected = [[-0.1, 0.0, -0.1], [-0.1, -0.1, -0.1]]  # -mask / 10
    assert torch.allclose(logprobs.grad, torch.tensor(expected))


def _two_pairs() -> tuple[torch.Tensor, PreferenceBatch]:
    # Rows: chosen 0, chosen 1, rejected 0, rejected 1; the last token is padding.
    batch = _batch([[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]], PreferenceBatch,
                   reference_chosen=torch.tensor([-2.5, -1.0]),
                   reference_rejected=torch.tensor([-2.5, -1.5]))
    logprobs = torch.tensor([[-1.0, -1.0, -5.0],     # chosen 0:   sum -2.0, mean -1.0
                             [-0.5, -7.0, -7.0],     # chosen 1:   sum -0.5, mean -0.5
                             [-2.0, -1.0, -9.0],     # rejected 0: sum -3.0
                             [-0.25, -0.25, -9.0]],  # rejected 1: sum -0.5
                            requires_grad=True)
    return logprobs, batch


def test_pair_logprobs_split_chosen_over_rejected():
    logprobs, batch = _two_pairs()
    chosen, rejected = pair_logprobs(logprobs, batch.target_mask, average=False)
    assert chosen.tolist() == [-2.0, -0.5] and rejected.tolist() == [-3.0, -0.5]
    chosen, _ = pair_logprobs(logprobs, batch.target_mask, average=True)
    assert chosen.tolist() == [-1.0, -0.5]


def test_dpo_loss_on_two_pairs_with_an_sft_term():
    logprobs, batch = _two_pairs()
    cfg = DPOConfig(reference_policy_kl_penalty=0.1, preference_loss_weight=1.0,
                    sft_loss_weight=0.5, sft_average_log_probs=True)
    loss, sums = dpo_loss(logprobs, batch, cfg=cfg, n_pairs=4)
    # rewards beta * (policy - reference): chosen 0.1*(-2+2.5) = 0.05, 0.1*(-0.5+1) = 0.05;
    # rejected 0.1*(-3+2.5) = -0.05, 0.1*(-0.5+1.5) = 0.1; margins 0.1 and -0.05.
    # sigmoid losses log(1 + e^-margin); SFT term -0.5 * (mean chosen -1.0 + -0.5) = +0.75;
    # this micro-batch holds 2 of the step's 4 pairs: its share is the sum over 4.
    pref = math.log1p(math.exp(-0.1)) + math.log1p(math.exp(0.05))
    assert loss.item() == pytest.approx((pref + 0.75) / 4, abs=1e-7)
    assert sums["loss_sum"] == pytest.approx(pref + 0.75, abs=1e-6)
    assert sums["chosen_reward_sum"] == pytest.approx(0.1, abs=1e-7)
    assert sums["rejected_reward_sum"] == pytest.approx(0.05, abs=1e-7)
    assert sums["correct"] == 1.0  # pair 0 only
    assert sums["margin_sum"] == pytest.approx(0.05, abs=1e-7)
    loss.backward()
    # d/d(chosen 0, token 0): [-beta * sigmoid(-margin 0) (preference) - 0.5 / 2 (SFT mean)] / 4
    sigmoid = 1 / (1 + math.exp(0.1))
    assert logprobs.grad[0, 0].item() == pytest.approx((-0.1 * sigmoid - 0.25) / 4, abs=1e-7)
    # rejected 1 (wrong way round) is pushed down: +beta * sigmoid(-margin 1) / 4
    assert logprobs.grad[3, 1].item() == pytest.approx(0.1 / (1 + math.exp(-0.05)) / 4,
                                                       abs=1e-7)
    assert logprobs.grad[:, 2].abs().sum() == 0  # padding
    assert logprobs.grad[1, 1] == 0  # chosen 1's second token is not a target


def _policy_batch(kl_penalty: float = 0.1) -> tuple[torch.Tensor, PolicyBatch]:
    # 2 sequences, 3 token positions; sequence 0's last position is not a target.
    old = torch.zeros(2, 3)
    ratios = torch.tensor([[1.5, 0.9, 1.0], [0.5, 1.1, 1.0]])
    logprobs = ratios.log().requires_grad_()
    # reference - policy: ln 2 at (0, 0) and -ln 2 at (1, 2): k3 KL 1 - ln 2 and ln 2 - 1/2
    ref = ratios.log() + torch.tensor([[LN2, 0.0, 0.0], [0.0, 0.0, -LN2]])
    gen = torch.tensor([[-LN2, 0.0, -5.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    batch = _batch([[0, 1, 1, 0], [0, 1, 1, 1]], PolicyBatch,
                   advantages=torch.tensor([1.0, -2.0]), old=old, ref=ref, gen=gen)
    return logprobs, batch


def test_grpo_token_level_loss_clips_and_adds_the_kl_term():
    logprobs, batch = _policy_batch()
    cfg = LossFnConfig(reference_policy_kl_penalty=0.1, ratio_clip_min=0.2, ratio_clip_max=0.2,
                       token_level_loss=True)
    loss, sums = grpo_loss(logprobs, batch, cfg=cfg, token_count=10.0, seq_count=4.0)
    # advantage +1: ratio 1.5 -> max(-1.5, -1.2) = -1.2 (clipped); ratio 0.9 -> -0.9.
    # advantage -2: ratio 0.5 -> max(1.0, 1.6) = 1.6 (clipped); 1.1 -> 2.2; 1.0 -> 2.0.
    # KL: 0.1 * (1 - ln 2) + 0.1 * (ln 2 - 1/2) = 0.05. Sum 3.7 + 0.05 over 10 tokens.
    assert loss.item() == pytest.approx(0.375, abs=1e-6)
    assert sums["loss"] == pytest.approx(0.375, abs=1e-6)
    assert sums["kl"] == pytest.approx(0.5, abs=1e-6)
    assert sums["clipped"] == 2.0
    assert sums["tokens"] == 5.0
    # generator vs trainer (float64): k3 of ln 2 at (0, 0); the -5 at (0, 2) is not a target
    assert sums["gen_kl_error"] == pytest.approx(1 - LN2, abs=1e-12)
    loss.backward()
    # clipped tokens carry only the KL gradient: d k3/d logp = 1 - exp(ref - logp) = 1 - 2
    assert logprobs.grad[0, 0].item() == pytest.approx(0.1 * (1 - 2) / 10, abs=1e-7)
    # unclipped, no KL: -advantage * ratio / 10
    assert logprobs.grad[1, 1].item() == pytest.approx(2 * 1.1 / 10, abs=1e-6)
    assert logprobs.grad[0, 2] == 0


def test_grpo_sequence_level_loss_averages_each_sequence_first():
    logprobs, batch = _policy_batch()
    cfg = LossFnConfig(reference_policy_kl_penalty=0.1, ratio_clip_min=0.2, ratio_clip_max=0.2,
                       token_level_loss=False)
    loss, _ = grpo_loss(logprobs, batch, cfg=cfg, token_count=10.0, seq_count=4.0)
    seq0 = (-1.2 - 0.9 + 0.1 * (1 - LN2)) / 2
    seq1 = (1.6 + 2.2 + 2.0 + 0.1 * (LN2 - 0.5)) / 3
    assert loss.item() == pytest.approx((seq0 + seq1) / 4, abs=1e-6)
