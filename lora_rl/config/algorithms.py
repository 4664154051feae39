"""The algorithm sections: a recipe has exactly one of `sft`, `dpo`, `grpo`."""


from typing import Literal

from pydantic import Field

from lora_rl.config.base import NonNegativeInt, PositiveInt, Section, compat


class _LoopConfig(Section):
    """Settings every training loop shares."""

    max_num_epochs: PositiveInt = 1
    """Passes over the training data (the run stops at whichever limit comes first)."""
    max_num_steps: PositiveInt = 100
    """Optimizer steps."""
    val_period: NonNegativeInt = 10
    """Validate every this many steps; 0 disables periodic validation."""
    val_at_start: bool = False
    """Validate before the first step."""
    seed: int = 42
    """Seed of model init, data order, dropout and sampling."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss or gradient: `stop` the run (naming the step; the last good checkpoint is
    kept) or `skip` that step's update and go on (counted in `skipped_step`)."""


class SFTConfig(_LoopConfig):
    """Supervised fine-tuning: cross-entropy on response tokens."""

    val_batches: PositiveInt | None = 8
    """Validation batches per validation; null means the whole validation set."""
    val_global_batch_size: PositiveInt = 32
    """Samples per validation batch."""
    val_micro_batch_size: PositiveInt = 1
    """Samples per validation forward."""


class DPOConfig(SFTConfig):
    """Direct Preference Optimization (sigmoid loss), reference = the base model with the
    adapter disabled."""

    reference_policy_kl_penalty: float = Field(0.05, gt=0)
    """DPO beta: strength of the implicit KL to the reference policy."""
    preference_loss_weight: float = Field(1.0, ge=0)
    """Weight of the preference (sigmoid) loss."""
    sft_loss_weight: float = Field(0.0, ge=0)
    """Weight of an SFT loss on the chosen response (0 disables)."""
    preference_average_log_probs: bool = False
    """Average instead of sum token log-probs in the preference loss."""
    sft_average_log_probs: bool = False
    """Average instead of sum token log-probs in the SFT loss."""


class AsyncGRPOConfig(Section):
    """NeMo RL's asynchronous GRPO."""

    enabled: bool = compat(False)
    """Overlap generation and training."""
    max_trajectory_age_steps: PositiveInt = compat(1)
    """Staleness bound of trajectories."""


class GRPOConfig(_LoopConfig):
    """Group Relative Policy Optimization with a KL penalty to the reference (adapter off)."""

    num_prompts_per_step: PositiveInt = 32
    """Prompts sampled per step."""
    num_generations_per_prompt: PositiveInt = 16
    """Responses per prompt (the group); at least 2 for a group baseline."""
    max_rollout_turns: PositiveInt = 1
    """Turns per rollout; lora-rl implements single-turn."""
    normalize_rewards: bool = True
    """Divide advantages by the group's reward std."""
    use_leave_one_out_baseline: bool = True
    """Baseline each sample by the mean of the *other* samples of its group."""
    overlong_filtering: bool = False
    """Exclude responses that hit `max_new_tokens` without stopping from the loss."""
    max_val_samples: PositiveInt = 256
    """Validation prompts per validation."""
    val_batch_size: PositiveInt = 256
    """Validation prompts per generation batch."""
    async_grpo: AsyncGRPOConfig = Field(default_factory=AsyncGRPOConfig)
    """Asynchronous GRPO."""
