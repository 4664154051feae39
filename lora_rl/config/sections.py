"""The recipe sections around the policy: data, loss, reward env, logging, checkpoints, cluster."""


import re
from typing import Any, Literal

from pydantic import Field, field_validator

from lora_rl.config.base import NonNegativeInt, PositiveInt, Section, compat

BUILTIN_DATASETS = ("tiny-arithmetic",)
BUILTIN_REWARDS = ("exact_match", "format", "exact_match_and_format")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class DataConfig(Section):
    """Training and validation data: a built-in data set or local JSONL files."""

    dataset_name: str | None = None
    """`tiny-arithmetic` (built in, made locally) or a name for your own records; with
    `train_data_path` set, only a label."""
    train_data_path: str | None = None
    """JSONL file of training records (path relative to the working directory)."""
    val_data_path: str | None = None
    """JSONL file of validation records."""
    prompt_key: str = "prompt"
    """Record field holding the prompt."""
    response_key: str = "response"
    """Record field holding the SFT response."""
    chosen_key: str = "chosen"
    """Record field holding the preferred DPO response."""
    rejected_key: str = "rejected"
    """Record field holding the dispreferred DPO response."""
    answer_key: str = "answer"
    """Record field holding the GRPO reference answer."""
    max_input_seq_length: PositiveInt | None = None
    """Longest tokenized prompt; null means `policy.max_total_sequence_length`."""
    on_overlong: Literal["error", "skip", "truncate"] = "error"
    """What to do with a record longer than the limits: stop with its file:line, skip it (the
    count is reported), or truncate it."""
    add_bos: bool = True
    """Prepend the BOS token."""
    add_eos: bool = True
    """Append EOS to responses, so the model learns to stop."""
    shuffle: bool = True
    """Shuffle training records each epoch (seeded)."""
    add_generation_prompt: bool = compat(False)
    """Chat-template generation prompt."""
    num_workers: NonNegativeInt = compat(1)
    """Data-loader worker processes."""
    prompt_file: str | None = compat(None)
    """NeMo RL prompt template file."""
    system_prompt_file: str | None = compat(None)
    """NeMo RL system prompt file."""
    use_multiple_dataloader: bool = compat(False)
    """One data loader per training data set."""
    train: dict[str, Any] | list[dict[str, Any]] | None = compat(None)
    """NeMo RL's newer data layout (`dataset_name`, `split`, ...); lora-rl reads
    `train_data_path`."""
    validation: dict[str, Any] | list[dict[str, Any]] | None = compat(None)
    """NeMo RL's validation data set(s); lora-rl reads `val_data_path`."""
    default: dict[str, Any] | None = compat(None)
    """NeMo RL's per-dataset defaults (prompt file, processor, env name)."""


class LossFnConfig(Section):
    """GRPO policy loss (NeMo RL's ClippedPGLossFn names)."""

    reference_policy_kl_penalty: float = Field(0.01, ge=0)
    """Weight of the KL(policy || reference) penalty; 0 disables it."""
    ratio_clip_min: float = Field(0.2, ge=0)
    """Lower clip epsilon of the importance ratio: clip at 1 - ratio_clip_min."""
    ratio_clip_max: float = Field(0.2, ge=0)
    """Upper clip epsilon: clip at 1 + ratio_clip_max."""
    ratio_clip_c: float | None = Field(None, gt=1)
    """Dual-clip constant c > 1 for negative advantages; null disables."""
    token_level_loss: bool = True
    """Average the loss over all tokens of the batch (true) or per sequence then over
    sequences (false)."""
    use_on_policy_kl_approximation: bool = compat(False)
    """Importance-weighted KL estimate."""
    use_importance_sampling_correction: bool = compat(False)
    """Correct for generator/trainer mismatch."""
    sequence_level_importance_ratios: bool = compat(False)
    """GSPO-style sequence ratios."""
    reference_policy_kl_type: Literal["k1", "k2", "k3"] = compat("k3")
    """KL estimator; lora-rl always uses k3."""
    kl_input_clamp_value: float | None = compat(20.0)
    """Clamp of the log-ratio entering the KL (lora-rl does not clamp)."""
    kl_output_clamp_value: float | None = compat(10.0)
    """Clamp of the per-token KL (lora-rl does not clamp)."""
    truncated_importance_sampling_type: Literal["tis", "icepop", "seq-mask-tis"] | None = \
        compat(None)
    """Truncated importance sampling variant."""
    truncated_importance_sampling_ratio: float | None = compat(None)
    """Upper truncation of the importance ratio."""
    truncated_importance_sampling_ratio_min: float | None = compat(None)
    """Lower truncation of the importance ratio."""
    force_on_policy_ratio: bool = compat(False)
    """Treat every step as on-policy (ratio 1)."""
    use_kl_in_reward: bool = compat(False)
    """Fold the KL penalty into the reward instead of the loss."""
    use_cispo: bool = compat(False)
    """CISPO clipped importance-sampling loss."""
    disable_ppo_ratio: bool = compat(False)
    """Drop the PPO ratio (REINFORCE-style loss)."""
    positive_example_nll_weight: float = compat(0.0)
    """Weight of an NLL term on positive-advantage samples."""


class EnvConfig(Section):
    """Reward for GRPO rollouts."""

    reward: str = "exact_match"
    """Built-in (`exact_match`, `format`, `exact_match_and_format`) or a function of yours by
    import path `package.module:function`: defined with `def` in that module (not imported into
    it, not from the standard library) and called as
    fn(prompts, responses, answers, **reward_kwargs) -> list[float]. `validate` checks this from
    the module's source without importing it (LR802/LR803); `run` imports it and checks it again
    before loading the model."""
    reward_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to the reward function."""
    math: dict[str, Any] | None = compat(None)
    """NeMo RL's math environment workers."""

    @field_validator("reward")
    @classmethod
    def _known_or_import_path(cls, value: str) -> str:
        if value in BUILTIN_REWARDS or _IMPORT_PATH.match(value):
            return value
        raise ValueError(
            f"'{value}' is neither a built-in reward ({', '.join(BUILTIN_REWARDS)}) nor an "
            "import path like 'my_pkg.rewards:score'"
        )


class LoggerConfig(Section):
    """Where metrics go."""

    log_dir: str = "logs"
    """Run directory for metrics.jsonl (and TensorBoard events)."""
    tensorboard_enabled: bool = False
    """Also write TensorBoard events (needs the tensorboard package)."""
    progress_bar: bool = True
    """Show a progress bar with loss and ETA on the terminal."""
    wandb_enabled: bool = compat(False)
    """Weights & Biases logging."""
    mlflow_enabled: bool = compat(False)
    """MLflow logging."""
    swanlab_enabled: bool = compat(False)
    """SwanLab logging."""
    monitor_gpus: bool = compat(False)
    """GPU utilisation monitoring."""
    num_val_samples_to_print: NonNegativeInt = compat(0)
    """Validation samples printed to the terminal."""
    wandb: dict[str, Any] | None = compat(None)
    """Weights & Biases settings."""
    tensorboard: dict[str, Any] | None = compat(None)
    """TensorBoard settings (events go to `log_dir`)."""
    mlflow: dict[str, Any] | None = compat(None)
    """MLflow settings."""
    swanlab: dict[str, Any] | None = compat(None)
    """SwanLab settings."""
    gpu_monitoring: dict[str, Any] | None = compat(None)
    """GPU monitoring settings."""


class CheckpointingConfig(Section):
    """Adapter (or full) checkpoints with optimizer, scheduler, RNG and data position."""

    enabled: bool = True
    """Write checkpoints (and resume from the latest one)."""
    checkpoint_dir: str = "results/run"
    """Directory of `step_N/` checkpoints."""
    save_period: PositiveInt = 10
    """Checkpoint every this many steps (and at the end)."""
    keep_top_k: PositiveInt | None = 3
    """Checkpoints kept; ranked by `metric_name` when it is logged, else the newest. Null keeps
    all."""
    metric_name: str | None = None
    """Metric ranking the checkpoints, e.g. `val_loss`; null keeps the newest."""
    higher_is_better: bool = False
    """Rank direction of `metric_name`."""
    checkpoint_must_save_by: str | None = compat(None)
    """Wall-clock deadline for a final save."""
    model_save_format: str | None = compat("safetensors")
    """Weights format (always safetensors in lora-rl)."""
    save_consolidated: bool = compat(False)
    """Write a consolidated HF checkpoint too (use `lora-rl export`)."""
    save_optimizer: bool = compat(True)
    """Include optimizer state; lora-rl always does, so resume is exact."""
    pretrained_checkpoint: dict[str, Any] | None = compat(None)
    """Megatron checkpoint to start from (`path`, `format`); lora-rl starts from
    `policy.model_name` and `policy.init_adapter_path`."""


class ClusterConfig(Section):
    """Processes to start: num_nodes x gpus_per_node ranks (one per device; CPU runs use one
    process per 'device')."""

    num_nodes: PositiveInt = 1
    """Nodes."""
    gpus_per_node: PositiveInt = 1
    """Devices (on CPU: processes) per node."""
    segment_size: PositiveInt | None = compat(None)
    """Ray placement-group segment size."""
    master_port_range_low: PositiveInt = compat(1400)
    """Lowest rendezvous port NeMo RL tries (lora-rl picks a free port)."""
    master_port_range_high: PositiveInt = compat(1999)
    """Highest rendezvous port NeMo RL tries."""

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.gpus_per_node


class RewardPenaltiesConfig(Section):
    """NeMo RL's GRPO reward penalties (top-level `reward_penalties:`)."""

    penalize_duplicated_reasoning: bool = compat(False)
    """Penalise repeated reasoning."""
    penalize_empty_final_answer: bool = compat(False)
    """Penalise responses without a final answer."""
    penalize_unwanted_tokens: bool = compat(False)
    """Penalise the tokens in `token_ids`."""
    penalize_malformed_think_tag: bool = compat(False)
    """Penalise malformed `<think>` tags."""
    token_ids: list[int] | None = compat(None)
    """Token ids `penalize_unwanted_tokens` penalises."""
