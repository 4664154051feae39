"""The whole recipe: one algorithm section plus the shared sections."""


from typing import Literal

from pydantic import Field

from lora_rl.config.algorithms import DPOConfig, GRPOConfig, SFTConfig
from lora_rl.config.base import Section
from lora_rl.config.policy import PolicyConfig
from lora_rl.config.sections import (
    CheckpointingConfig,
    ClusterConfig,
    DataConfig,
    EnvConfig,
    LoggerConfig,
    LossFnConfig,
)

AlgorithmName = Literal["sft", "dpo", "grpo"]
ALGORITHMS: tuple[AlgorithmName, ...] = ("sft", "dpo", "grpo")


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
    data: DataConfig = Field(default_factory=DataConfig)
    """Training and validation data."""
    loss_fn: LossFnConfig = Field(default_factory=LossFnConfig)
    """GRPO policy loss."""
    env: EnvConfig = Field(default_factory=EnvConfig)
    """GRPO reward."""
    logger: LoggerConfig = Field(default_factory=LoggerConfig)
    """Metrics output."""
    checkpointing: CheckpointingConfig = Field(default_factory=CheckpointingConfig)
    """Checkpoints and resume."""
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    """Processes / devices."""

    @property
    def present_algorithms(self) -> list[AlgorithmName]:
        return [name for name in ALGORITHMS if getattr(self, name) is not None]

    @property
    def algorithm(self) -> AlgorithmName:
        """The algorithm that runs (valid recipes have exactly one)."""
        (name,) = self.present_algorithms
        return name

    @property
    def algorithm_config(self) -> SFTConfig | DPOConfig | GRPOConfig:
        return getattr(self, self.algorithm)
