"""Base class and small shared types for every recipe section.

Every section is strict (unknown keys are errors), frozen (recipes receive a typed object that
nothing mutates after validation) and documented by attribute docstrings, which pydantic carries
into the JSON Schema as `description` — one source of truth for editors and the reference docs.
"""


import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# NeMo RL writes `lora_dtype: None`, which YAML reads as the *string* "None".
NULL_SPELLINGS = frozenset({"None", "none", "null", "Null", "NULL", "~"})

COMPAT_MARK = "x-lora-rl-compat"
COMPAT_NOTE = "Accepted for NeMo RL compatibility; lora-rl does not act on it."


def _admits_none(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _admits_none(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(arg is type(None) for arg in typing.get_args(annotation))
    return annotation is type(None) or annotation is Any


class Section(BaseModel):
    """A strict, frozen recipe section."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=False,
        validate_default=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_spellings_mean_null(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fixed = None
        for key, value in data.items():
            field = cls.model_fields.get(key) or _field_by_alias(cls, key)
            if (
                field is not None
                and isinstance(value, str)
                and value in NULL_SPELLINGS
                and _admits_none(field.annotation)
            ):
                fixed = fixed if fixed is not None else dict(data)
                fixed[key] = None
        return data if fixed is None else fixed


def _field_by_alias(cls: type[BaseModel], key: str):
    for field in cls.model_fields.values():
        if field.alias == key:
            return field
    return None


def compat(default: Any = None, **kwargs: Any) -> Any:
    """A key NeMo RL recipes carry that lora-rl accepts but does not act on.

    Setting one to a non-default value produces an "accepted, no effect" warning (rule LR901)
    instead of being silently dropped.
    """
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[COMPAT_MARK] = True
    return Field(default, json_schema_extra=extra, **kwargs)


def is_compat_field(field_info: Any) -> bool:
    extra = field_info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(COMPAT_MARK))


def _strip_torch_prefix(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("torch."):
        return value[len("torch.") :]
    return value


DType = Annotated[Literal["float32", "bfloat16", "float16"], BeforeValidator(_strip_torch_prefix)]
"""A floating dtype by name; `torch.bfloat16` is accepted and means `bfloat16`."""

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
