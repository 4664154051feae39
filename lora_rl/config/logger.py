"""The `logger:` section: metrics.jsonl (always), the console, and optional experiment trackers
(TensorBoard, Weights & Biases, MLflow) with NeMo RL's key names."""

from typing import Any, Literal

from pydantic import Field

from lora_rl.config.base import NonNegativeInt, PositiveInt, Section, compat, section_default

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""Tracker -> the module its client library installs (checked at validate and run time)."""
INSTALL_HINTS = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb",
                 "mlflow": "pip install mlflow-skinny"}


class TensorboardConfig(Section):
    """TensorBoard event files (tags namespaced `train/...`, `val/...`)."""

    log_dir: str = "tensorboard"
    """Event directory, relative to `logger.log_dir` (or absolute)."""


class WandbConfig(Section):
    """Weights & Biases run settings. Offline runs need no network: set `mode: offline` or the
    environment variable `WANDB_MODE=offline`, then `wandb sync` the run directory later."""

    project: str = "lora-rl"
    """W&B project."""
    name: str | None = None
    """Run name; null lets W&B pick one."""
    entity: str | None = None
    """Team or user that owns the project; null means your default entity."""
    group: str | None = None
    """Group several runs (e.g. seeds of one recipe) together."""
    tags: list[str] = Field(default_factory=list)
    """Run tags."""
    mode: Literal["online", "offline", "disabled"] | None = None
    """null follows `WANDB_MODE` (online when unset); `offline` writes the run under
    `logger.log_dir/wandb` only."""
    log_nemo_gym_full_result_tables: bool = compat(False)
    """NeMo Gym result tables."""


class MlflowConfig(Section):
    """MLflow run settings."""

    experiment_name: str = "lora-rl"
    """Experiment the run is filed under (created when missing)."""
    run_name: str | None = None
    """Run name; null lets MLflow pick one."""
    tracking_uri: str | None = None
    """Tracking server or store, e.g. `http://localhost:5000`; null keeps a local file store in
    `logger.log_dir/mlruns` (read it with `mlflow ui --backend-store-uri file:...`)."""


class LoggerConfig(Section):
    """Where metrics go: `log_dir/metrics.jsonl` always (the source of truth `plot` reads),
    the console, and the trackers switched on here."""

    log_dir: str = "logs"
    """Run directory for metrics.jsonl (and tracker files)."""
    tensorboard_enabled: bool = False
    """Also write TensorBoard events (needs `pip install tensorboard`)."""
    wandb_enabled: bool = False
    """Also log to Weights & Biases (needs `pip install wandb`)."""
    mlflow_enabled: bool = False
    """Also log to MLflow (needs `pip install mlflow-skinny` or `mlflow`)."""
    progress_bar: bool = True
    """On a terminal, a live progress bar with loss and ETA; off a terminal (CI, nohup, Slurm)
    one plain line per logged step is printed either way."""
    log_every: PositiveInt = 1
    """Print one console line every this many steps when not on a terminal (metrics.jsonl and
    the trackers get every step)."""
    tensorboard: TensorboardConfig = Field(default_factory=section_default(TensorboardConfig))
    """TensorBoard settings."""
    wandb: WandbConfig = Field(default_factory=section_default(WandbConfig))
    """Weights & Biases settings."""
    mlflow: MlflowConfig = Field(default_factory=section_default(MlflowConfig))
    """MLflow settings."""
    swanlab_enabled: bool = compat(False)
    """SwanLab logging."""
    monitor_gpus: bool = compat(False)
    """GPU utilisation monitoring."""
    num_val_samples_to_print: NonNegativeInt = compat(0)
    """Validation samples printed to the terminal."""
    swanlab: dict[str, Any] | None = compat(None)
    """SwanLab settings."""
    gpu_monitoring: dict[str, Any] | None = compat(None)
    """GPU monitoring settings."""

    @property
    def trackers(self) -> tuple[str, ...]:
        """The trackers switched on, in TRACKER_PACKAGES order."""
        return tuple(name for name in TRACKER_PACKAGES if getattr(self, f"{name}_enabled"))
