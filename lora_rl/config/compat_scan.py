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


def set_compat_fields(model: BaseModel, prefix: str = "") -> Iterator[str]:
    """Dotted YAML paths of compat fields written in the recipe with a non-default value."""
    for name, info in type(model).model_fields.items():
        if name not in model.model_fields_set:
            continue
        key = info.alias or name
        path = f"{prefix}.{key}" if prefix else key
        value = getattr(model, name)
        if is_compat_field(info):
            if not _is_inert(value, info.get_default(call_default_factory=True)):
                yield path
        elif isinstance(value, BaseModel):
            yield from set_compat_fields(value, path)
