"""What every algorithm holds and how it ends: the validated recipe, its algorithm section, the
backend, the runtime and the training session (resume, checkpoints, metrics)."""

from __future__ import annotations

from lora_rl.backends.base import TrainingBackend
from lora_rl.config.recipe import RecipeConfig
from lora_rl.training.runtime import Runtime
from lora_rl.training.session import TrainingSession


class Algorithm:
    def __init__(self, cfg: RecipeConfig, backend: TrainingBackend, runtime: Runtime) -> None:
        self.cfg = cfg
        self.algo = cfg.algorithm_config
        self.backend = backend
        self.runtime = runtime
        self.session = TrainingSession(cfg, backend, runtime)

    def cleanup(self) -> None:
        self.session.close()
