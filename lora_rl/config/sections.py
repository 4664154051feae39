"""The recipe sections around the policy: data, loss, reward env, logging, checkpoints, cluster."""


import re
from typing import Any, Literal

from pydantic import Field, field_validator

from lora_rl.config.base import NonNegativeInt, PositiveInt, Section, compat
from lora_rl.rewards import BUILTIN

BUILTIN_DATASETS = ("tiny-arithmetic",)
BUILTIN_REWARDS = tuple(BUILTIN)
"""The names `env.reward` accepts without an import path (rewards.BUILTIN's keys)."""
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


DATASET_KINDS = ("openai_format", "ResponseDataset", "BinaryPreferenceDataset",
                 "PreferenceDataset")


class DataBlock(Section):
    """One data set in NeMo RL's layout (`data.train`, `data.validation`, `data.default`): a
    local file or directory read with the Hugging Face `datasets` library."""

    dataset_name: str | None = None
    """What the records are: `openai_format` (chat `messages`), `ResponseDataset`
    (input/output strings), `BinaryPreferenceDataset` (prompt/chosen/rejected),
    `PreferenceDataset` (context + ranked completions); any other name with `data_path` reads
    the recipe algorithm's plain records (input/output keys; DPO prompt/chosen/rejected). A
    hub name without `data_path` is not downloaded."""
    data_path: str | None = None
    """Local .jsonl/.json/.parquet/.arrow/.csv file, or a `save_to_disk` directory (path
    relative to the working directory)."""
    split: str | None = None
    """Split to read from a `save_to_disk` DatasetDict (default `train`)."""
    input_key: str | None = None
    """Record field with the prompt (default `input`; GRPO: the problem)."""
    output_key: str | None = None
    """Record field with the response (default `output`; GRPO: the reference answer)."""
    chat_key: str | None = None
    """Field holding the conversation of `openai_format` records (default `messages`)."""
    tool_key: str | None = None
    """Field holding the record's tool definitions, passed to the chat template (default
    `tools`; absent is fine)."""
    system_key: str | None = None
    """Field holding a per-record system prompt (openai_format; absent is fine)."""
    system_prompt: str | None = None
    """System message put before every conversation that has none."""
    system_prompt_file: str | None = None
    """File whose text is the system prompt."""
    prompt_file: str | None = None
    """File with a prompt template; `{}` in it is replaced by the record's prompt."""
    prompt_key: str | None = None
    """Preference records: field with the prompt (default `prompt`)."""
    chosen_key: str | None = None
    """Preference records: field with the preferred response (default `chosen`)."""
    rejected_key: str | None = None
    """Preference records: field with the dispreferred response (default `rejected`)."""
    split_validation_size: float | None = Field(None, ge=0, lt=1)
    """Share of the training records held out for validation when no `validation` is given."""
    seed: int | None = None
    """Seed of the `split_validation_size` hold-out."""
    subset: str | None = compat(None)
    """Hub configuration name (lora-rl reads local files only)."""
    env_name: str | None = compat(None)
    """NeMo RL environment the records are routed to (lora-rl: `env.reward`)."""
    processor: str | None = compat(None)
    """NeMo RL data processor name."""
    download_dir: str | None = compat(None)
    """Hub download directory (lora-rl downloads nothing)."""


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
    max_line_bytes: PositiveInt = 1024 * 1024
    """Longest line of a JSON-lines data file, in bytes (1 MiB). A longer line is an error at
    its file:line, found after reading this many bytes of it."""
    max_file_bytes: PositiveInt = 2 * 1024 ** 3
    """Largest data file, in bytes (2 GiB): a data set is held in memory while it is read."""
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
    prompt_file: str | None = None
    """File with a prompt template; `{}` in it is replaced by each record's prompt (data blocks
    may set their own)."""
    system_prompt_file: str | None = None
    """File whose text is the system prompt of every record (data blocks may set their
    own)."""
    use_multiple_dataloader: bool = compat(False)
    """One data loader per training data set."""
    train: DataBlock | list[DataBlock] | None = None
    """NeMo RL's data layout: one data block or a list of them (concatenated). Takes the place
    of `train_data_path`."""
    validation: DataBlock | list[DataBlock] | None = None
    """Validation data block(s), in the layout of `train`."""
    default: DataBlock | None = None
    """Values every `train` / `validation` block takes unless it sets its own."""


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
    preemption_grace_s: float = Field(20.0, ge=0)
    """Seconds a rank may take, after SIGTERM, SIGINT or SIGHUP (a scheduler's preemption or
    time limit, Ctrl-C, a closed terminal), to finish its step and checkpoint it before it
    exits without one; keep it below the scheduler's kill delay (Slurm KillWait, Kubernetes
    terminationGracePeriodSeconds: 30 s by default). 0 exits at once."""
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
