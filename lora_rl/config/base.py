"""Base class and small shared types for every recipe section.

Every section is strict (unknown keys are errors), frozen (recipes receive a typed object that
nothing mutates after validation) and documented by attribute docstrings, which pydantic carries
into the JSON Schema as `description` — one source of truth for editors and the reference docs.
"""


import copy
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

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
        # Built on first use: `validate` then compiles the one RecipeConfig tree instead of every
        # section's own validator at import as well (0.04-0.10 s of its start-up, A/B).
        defer_build=True,
    )

    @model_validator(mode="wrap")
    @classmethod
    def _plain_yaml_values(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        """Two readings of YAML values, checked once per section rather than by a validator on
        each of its ~530 fields (whose schema pydantic builds at every `validate` start):

        - `None`, `null`, `~` ... as text mean null where the field admits null: NeMo RL
          writes `lora_dtype: None`, which YAML reads as the *string* "None".
        - No silent scalar coercion: pydantic's lax mode turns `dim: true` into 1, `dim: "8"`
          into 8 and `enabled: 1` or `enabled: "no"` into booleans (also inside lists and
          mappings). A recipe is YAML, which has real booleans and numbers: those values are
          type errors (LR002), as the JSON Schema says too. They are reported with the
          section's other errors, as a failing field validator would be."""
        if not isinstance(data, dict):
            return handler(data)
        data = _nulls_as_none(cls, data)
        coerced = _coerced_values(cls, data)
        if not coerced:
            return handler(data)
        keys = {detail["loc"][0] for detail in coerced}
        try:
            handler(data)
            others: list[InitErrorDetails] = []
        except ValidationError as error:
            # Field errors stop pydantic before a model's own checks (empty loc); so here.
            others = [_reraisable(detail) for detail in error.errors()
                      if detail["loc"] and detail["loc"][0] not in keys]
        order = {key: index for index, key in enumerate(data)}
        details = sorted(coerced + others, key=lambda d: order.get(d["loc"][0], len(order)))
        raise ValidationError.from_exception_data(cls.__name__, details)


def _field(cls: type[BaseModel], key: str) -> Any:
    return cls.model_fields.get(key) or _field_by_alias(cls, key)


def _nulls_as_none(cls: type[BaseModel], data: dict) -> dict:
    fixed = None
    for key, value in data.items():
        if isinstance(value, str) and value in NULL_SPELLINGS:
            field = _field(cls, key)
            if field is not None and _admits_none(field.annotation):
                fixed = fixed if fixed is not None else dict(data)
                fixed[key] = None
    return data if fixed is None else fixed


def _coerced_values(cls: type[BaseModel], data: dict) -> list[InitErrorDetails]:
    details: list[InitErrorDetails] = []
    for key, value in data.items():
        field = _field(cls, key) if value is not None else None
        if field is None:
            continue
        problem = _coerced_scalar(field.annotation, value)
        if problem is not None:
            details.append({"type": PydanticCustomError(*problem), "loc": (key,), "input": value})
    return details


def _reraisable(detail: ErrorDetails) -> InitErrorDetails:
    """An error pydantic reported, as one to raise again: same type, message, place and context
    (a custom error, because rule-specific types are unknown to `from_exception_data`)."""
    return {"type": PydanticCustomError(detail["type"], detail["msg"], detail.get("ctx")),
            "loc": detail["loc"], "input": detail["input"]}


_SCALAR_WORDS = {bool: ("bool_type", "true or false", "true/false values"),
                 int: ("int_type", "a valid integer", "integers"),
                 float: ("float_type", "a valid number", "numbers")}


def _coerced_scalar(annotation: Any, value: Any) -> tuple[str, str] | None:
    """(error type, message) when lax validation would coerce `value` for `annotation`."""
    kind = _scalar_of(annotation)
    if kind is not None:
        wrong = not isinstance(value, bool) if kind is bool else isinstance(value, (bool, str))
        return (_SCALAR_WORDS[kind][0], f"Input should be {_SCALAR_WORDS[kind][1]}") \
            if wrong else None
    items = _items_of(annotation, value)
    for where, item_kind, item in items:
        if item is None or _coerced_scalar(item_kind, item) is None:
            continue
        scalar = _scalar_of(item_kind)
        words = _SCALAR_WORDS[scalar][2] if scalar else "the right type"
        container = "a list" if isinstance(value, (list, tuple)) else "a mapping"
        return ("list_item_type" if isinstance(value, (list, tuple)) else "mapping_value_type",
                f"Input should be {container} of {words} only, but {where} is {item!r}")
    return None


def _scalar_of(annotation: Any) -> type | None:
    """bool, int or float when `annotation` is exactly that scalar (or it or null)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _scalar_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = {arg for arg in typing.get_args(annotation) if arg is not type(None)}
        if members == {float, int}:
            return float  # a number: int or float, not bool or text
        return _scalar_of(next(iter(members))) if len(members) == 1 else None
    return annotation if annotation in (bool, int, float) else None


def _items_of(annotation: Any, value: Any) -> list[tuple[str, Any, Any]]:
    """(where, annotation, item) for the items of a list/tuple/dict field value."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _items_of(args[0], value)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in args if arg is not type(None)]
        return _items_of(members[0], value) if len(members) == 1 else []
    if origin in (list, tuple) and isinstance(value, (list, tuple)) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return [(f"item [{i}]", arg, item)
                    for i, (arg, item) in enumerate(zip(args, value, strict=False))]
        return [(f"item [{i}]", args[0], item) for i, item in enumerate(value)]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return [(f"key '{key}'", args[1], item) for key, item in value.items()]
    return []


def _field_by_alias(cls: type[BaseModel], key: str):
    for field in cls.model_fields.values():
        if field.alias == key:
            return field
    return None


SectionT = typing.TypeVar("SectionT", bound=BaseModel)


class section_default(typing.Generic[SectionT]):  # noqa: N801 - used like a function
    """`default_factory` of a section-typed field: the section with all its defaults.

    `Field(default_factory=SomeSection)` calls `SomeSection()`, which compiles SomeSection's
    own validator the first time a recipe leaves the section out, although the recipe's
    validator already holds it (~0.03 s of `validate` start-up for the sections a small recipe
    omits). Defaults need no validation (tests/config/test_section_defaults.py checks that the
    result equals `SomeSection()` for every such field), so the section is assembled from them
    directly, as `model_construct` does, once; each call returns a deep copy of that (5x
    faster than `model_construct` or validating). A class rather than a closure: the recipe's
    compiled validator holds it and is pickled (`validator_cache`)."""

    def __init__(self, section: type[SectionT]) -> None:
        self.section = section
        self._prototype: SectionT | None = None

    def __call__(self) -> SectionT:
        if self._prototype is None:
            self._prototype = self.section.model_construct()
        return copy.deepcopy(self._prototype)

    def __reduce__(self) -> tuple[type, tuple[type[SectionT]]]:
        return (section_default, (self.section,))

    def __repr__(self) -> str:
        return f"section_default({self.section.__name__})"


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


_DTYPES = ("float32", "bfloat16", "float16")
DType = Annotated[
    Literal["float32", "bfloat16", "float16"],
    BeforeValidator(_strip_torch_prefix),
    # The JSON Schema accepts what validation accepts: `torch.bfloat16` too.
    WithJsonSchema({"type": "string", "enum": [*_DTYPES, *(f"torch.{d}" for d in _DTYPES)]}),
]
"""A floating dtype by name; `torch.bfloat16` is accepted and means `bfloat16`."""

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]


def _minus_one_is_off(value: Any) -> Any:
    # NeMo RL validates periodically only when `val_period > 0`; its recipes write -1 for "off"
    # (grpo_smoke.yaml). lora-rl spells that 0; any other negative is still an error.
    return 0 if type(value) is int and value == -1 else value


PeriodSteps = Annotated[
    NonNegativeInt,
    BeforeValidator(_minus_one_is_off),
    WithJsonSchema({"type": "integer", "minimum": -1}),
]
"""A step period; 0 (or NeMo RL's -1) turns it off."""
