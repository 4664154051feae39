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
    return vars(model).get(_SWITCHES.get(name, f"{name}_enabled")) is False


def set_compat_fields(model: BaseModel, prefix: str = "") -> Iterator[str]:
    """Dotted YAML paths of compat fields written in the recipe with a non-default value.

    Values are read from each section's own `vars()`: this scan is about which keys are
    written, so a value that another rule rejected (the rule engine stops a rule that reads
    one, see `cascade`) must not cut it short. Values a schema error rejected are not in the
    recipe it sees at all."""
    for name, info in type(model).model_fields.items():
        if name not in model.model_fields_set or _switched_off(model, name):
            continue
        key = info.alias or name
        path = f"{prefix}.{key}" if prefix else key
        value = vars(model)[name]
        if is_compat_field(info):
            if not _is_inert(value, info.get_default(call_default_factory=True)):
                yield path
        elif isinstance(value, BaseModel) and vars(value).get("enabled") is not False:
            # Nothing inside a disabled section (the backend not in use, ...) takes effect.
            yield from set_compat_fields(value, path)
        elif isinstance(value, list):  # a list of sections (NeMo RL's data blocks)
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from set_compat_fields(item, f"{path}.{index}")
