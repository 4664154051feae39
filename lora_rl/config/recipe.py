"""The whole recipe: one algorithm section plus the shared sections."""


from typing import Any, Literal

from pydantic import Field

from lora_rl.config.algorithms import DPOConfig, GRPOConfig, SFTConfig
from lora_rl.config.base import Section, compat, section_default
from lora_rl.config.logger import LoggerConfig
from lora_rl.config.policy import PolicyConfig
from lora_rl.config.sections import (
    CheckpointingConfig,
    ClusterConfig,
    DataConfig,
    EnvConfig,
    LossFnConfig,
    RewardPenaltiesConfig,
)

AlgorithmName = Literal["sft", "dpo", "grpo"]
ALGORITHMS: tuple[AlgorithmName, ...] = ("sft", "dpo", "grpo")



class NoSingleAlgorithm(ValueError):
    """`RecipeConfig.algorithm` read on a recipe with no algorithm section or several (rule
    LR100 reports that; a rule that needs the algorithm is skipped, see `cascade`)."""


class RecipeConfig(Section):
    """A lora-rl recipe. Exactly one of `sft`, `dpo`, `grpo` is present."""

    sft: SFTConfig | None = None
    """Supervised fine-tuning."""
    dpo: DPOConfig | None = None
    """Direct Preference Optimization."""
    grpo: GRPOConfig | None = None
    """Group Relative Policy Optimization."""
    policy: PolicyConfig
    """The model being trained and its backend."""
    data: DataConfig = Field(default_factory=section_default(DataConfig))
    """Training and validation data."""
    loss_fn: LossFnConfig = Field(default_factory=section_default(LossFnConfig))
    """GRPO policy loss."""
    env: EnvConfig = Field(default_factory=section_default(EnvConfig))
    """GRPO reward."""
    logger: LoggerConfig = Field(default_factory=section_default(LoggerConfig))
    """Metrics output."""
    checkpointing: CheckpointingConfig = Field(default_factory=section_default(CheckpointingConfig))
    """Checkpoints and resume."""
    cluster: ClusterConfig = Field(default_factory=section_default(ClusterConfig))
    """Processes / devices."""
    reward_penalties: RewardPenaltiesConfig = Field(
        default_factory=section_default(RewardPenaltiesConfig))
    """NeMo RL's GRPO reward penalties."""
    data_plane: dict[str, Any] | None = compat(None)
    """NeMo RL's transfer-queue data plane between generation and training."""
    on_policy_distillation: dict[str, Any] | None = compat(None)
    """NeMo RL's on-policy distillation from a teacher."""

    @property
    def present_algorithms(self) -> list[AlgorithmName]:
        return [name for name in ALGORITHMS if getattr(self, name) is not None]

    @property
    def algorithm(self) -> AlgorithmName:
        """The algorithm that runs (valid recipes have exactly one)."""
        present = self.present_algorithms
        if len(present) != 1:
            raise NoSingleAlgorithm(f"the recipe has {len(present)} algorithm sections, not 1")
        return present[0]

    @property
    def algorithm_config(self) -> SFTConfig | DPOConfig | GRPOConfig:
        return getattr(self, self.algorithm)

    @property
    def needs_reference_policy(self) -> bool:
        """DPO, and GRPO with a KL penalty, compare the policy against a frozen reference."""
        return self.dpo is not None or (self.grpo is not None
                                         and self.loss_fn.reference_policy_kl_penalty > 0)
