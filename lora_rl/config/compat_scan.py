"""Find compatibility-only keys (declared with `compat()`) that a recipe sets to a value."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

from lora_rl.config.base import is_compat_field


def _is_inert(value: object, default: object) -> bool:
    # NeMo RL recipes spell out disabled features ({enabled: false, ...}): nothing to warn about.
    if value == default:
        return True
    return isinstance(value, dict) and value.get("enabled") is False


_SWITCHES = {"gpu_monitoring": "monitor_gpus"}
"""Settings blocks whose on/off switch is not named `<block>_enabled`."""


def _switched_off(model: BaseModel, name: str) -> bool:
    # `logger.wandb: {...}` next to `wandb_enabled: false` configures a feature that is off.
    return getattr(model, _SWITCHES.get(name, f"{name}_enabled"), None) is False


def set_compat_fields(model: BaseModel, prefix: str = "") -> Iterator[str]:
    """Dotted YAML paths of compat fields written in the recipe with a non-default value."""
    for name, info in type(model).model_fields.items():
        if name not in model.model_fields_set or _switched_off(model, name):
            continue
        key = info.alias or name
        path = f"{prefix}.{key}" if prefix else key
        value = getattr(model, name)
        if is_compat_field(info):
            if not _is_inert(value, info.get_default(call_default_factory=True)):
                yield path
        elif isinstance(value, BaseModel) and getattr(value, "enabled", None) is not False:
            # Nothing inside a disabled section (the backend not in use, ...) takes effect.
            yield from set_compat_fields(value, path)
        elif isinstance(value, list):  # a list of sections (NeMo RL's data blocks)
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from set_compat_fields(item, f"{path}.{index}")
