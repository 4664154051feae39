"""The embedded tiny model and task (built locally, deterministically, on first use)."""

from lora_rl.tiny.model import build_tiny_model, ensure_tiny_model
from lora_rl.tiny.tasks import write_task_data

__all__ = ["build_tiny_model", "ensure_tiny_model", "write_task_data"]
