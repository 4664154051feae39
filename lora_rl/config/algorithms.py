"""The algorithm sections: a recipe has exactly one of `sft`, `dpo`, `grpo`.

Compatibility-only keys (`compat(...)`) take NeMo RL's YAML default, so a NeMo RL recipe warns
(LR901) only about the knobs it moved away from NeMo RL's own defaults.
"""


from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from lora_rl.config.base import (
    NonNegativeInt,
    PeriodSteps,
    PositiveInt,
    Section,
    compat,
    section_default,
)


class _LoopConfig(Section):
    """Settings every training loop shares."""

    max_num_epochs: PositiveInt = 1
    """Passes over the training data (the run stops at whichever limit comes first)."""
    max_num_steps: PositiveInt = 100
    """Optimizer steps."""
    val_period: PeriodSteps = 10
    """Validate every this many steps; 0 (or NeMo RL's -1) disables periodic validation."""
    val_at_start: bool = False
    """Validate before the first step."""
    val_at_end: bool = compat(False)
    """Validate after the last step (lora-rl validates on `val_period` only)."""
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Seed of model init, data order, dropout and sampling (0 to 2**32 - 1: torch, numpy and
    Megatron's RNG trackers all take it, and a larger one used to fail mid-start with
    "Overflow when unpacking long long")."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss or gradient: `stop` the run (naming the step; the last good checkpoint is
    kept) or `skip` that step's update and go on (counted in `skipped_step`)."""


class _SupervisedLoopConfig(_LoopConfig):
    """Validation batching shared by SFT and DPO."""

    val_batches: PositiveInt | None = 8
    """Validation batches per validation; null means the whole validation set."""
    val_global_batch_size: PositiveInt = 32
    """Samples per validation batch."""
    val_micro_batch_size: PositiveInt = 1
    """Samples per validation forward."""


class SFTConfig(_SupervisedLoopConfig):
    """Supervised fine-tuning: cross-entropy on response tokens."""

    only_unmask_final: bool = compat(False)
    """Train only on the final assistant turn of multi-turn chats."""


class DPOConfig(_SupervisedLoopConfig):
    """Direct Preference Optimization (sigmoid loss), reference = the base model with the
    adapter disabled."""

    reference_policy_kl_penalty: float = Field(0.05, gt=0)
    """DPO beta: strength of the implicit KL to the reference policy."""
    preference_loss: Literal["dpo"] = "dpo"
    """Preference loss; lora-rl implements the DPO sigmoid loss only."""
    preference_loss_weight: float = Field(1.0, ge=0)
    """Weight of the preference (sigmoid) loss."""
    sft_loss_weight: float = Field(0.0, ge=0)
    """Weight of an SFT loss on the chosen response (0 disables)."""
    preference_average_log_probs: bool = False
    """Average instead of sum token log-probs in the preference loss."""
    sft_average_log_probs: bool = False
    """Average instead of sum token log-probs in the SFT loss."""
    gt_reward_scale: float = compat(1.0)
    """Scale of ground-truth rewards in NeMo RL's reward-aware preference losses."""


class AsyncGRPOConfig(Section):
    """NeMo RL's asynchronous GRPO."""

    enabled: bool = compat(False)
    """Overlap generation and training."""
    max_trajectory_age_steps: PositiveInt = compat(1)
    """Staleness bound of trajectories."""
    max_generation_failures: NonNegativeInt = compat(0)
    """Generation failures tolerated before the run stops."""
    in_flight_weight_updates: bool = compat(False)
    """Update generator weights while requests are in flight."""
    recompute_kv_cache_after_weight_updates: bool = compat(False)
    """Rebuild the KV cache after an in-flight weight update."""


class AdvantageEstimatorConfig(Section):
    """NeMo RL's advantage estimator. lora-rl reads the group baseline settings from
    `grpo.normalize_rewards` and `grpo.use_leave_one_out_baseline`; copies here must agree."""

    name: Literal["grpo"] = "grpo"
    """Estimator; lora-rl implements the GRPO group baseline only (not reinforce_plus_plus)."""
    normalize_rewards: bool | None = None
    """Must equal `grpo.normalize_rewards` when set (NeMo RL interpolates it from there)."""
    use_leave_one_out_baseline: bool | None = None
    """Must equal `grpo.use_leave_one_out_baseline` when set (NeMo RL interpolates it)."""
    minus_baseline: bool = compat(True)
    """Subtract the baseline (reinforce_plus_plus)."""


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
    """Validation prompts per generation batch (greedy generation for val_accuracy)."""
    val_start_at: int = compat(-1)
    """First step at which periodic validation runs."""
    val_num_generations_per_prompt: PositiveInt = compat(1)
    """Responses sampled per validation prompt (lora-rl samples one)."""
    advantage_clip_low: float | None = compat(None)
    """Lower clip of advantages."""
    advantage_clip_high: float | None = compat(None)
    """Upper clip of advantages."""
    stop_at_validation_metric: str | None = compat(None)
    """Validation metric that ends the run early."""
    stop_at_validation_threshold: float | None = compat(None)
    """Threshold of `stop_at_validation_metric`."""
    use_dynamic_sampling: bool = compat(False)
    """DAPO dynamic sampling: drop groups whose rewards are all equal."""
    dynamic_sampling_max_gen_batches: PositiveInt = compat(10)
    """Generation batches dynamic sampling may draw per step."""
    batch_multiplier: float = compat(1.0, gt=0)
    """Over-sampling factor of dynamic sampling."""
    seq_logprob_error_threshold: float | None = compat(None)
    """Drop sequences whose trainer/generator log-prob error exceeds this."""
    invalid_tool_call_advantage: float | None = compat(None)
    """Advantage assigned to invalid tool calls (multi-turn)."""
    malformed_thinking_advantage: float | None = compat(None)
    """Advantage assigned to malformed thinking blocks."""
    reward_shaping: dict[str, Any] | None = compat(None)
    """DAPO overlong reward shaping."""
    reward_scaling: dict[str, Any] | None = compat(None)
    """Linear rescaling of rewards."""
    adv_estimator: AdvantageEstimatorConfig = Field(
        default_factory=section_default(AdvantageEstimatorConfig))
    """Advantage estimator."""
    async_grpo: AsyncGRPOConfig = Field(default_factory=section_default(AsyncGRPOConfig))
    """Asynchronous GRPO."""

    @field_validator("adv_estimator")
    @classmethod
    def _estimator_agrees(cls, estimator: AdvantageEstimatorConfig,
                          info: ValidationInfo) -> AdvantageEstimatorConfig:
        # NeMo RL reads these from adv_estimator, lora-rl from grpo: a disagreement would
        # silently change the advantages of a NeMo RL recipe.
        for key in ("normalize_rewards", "use_leave_one_out_baseline"):
            value, ours = getattr(estimator, key), info.data.get(key)
            if value is not None and ours is not None and value != ours:
                raise ValueError(f"adv_estimator.{key} is {str(value).lower()} but grpo.{key} "
                                 f"is {str(ours).lower()}; "
                                 f"lora-rl reads grpo.{key}: make them agree, e.g. "
                                 f"{key}: ${{grpo.{key}}}")
        return estimator
