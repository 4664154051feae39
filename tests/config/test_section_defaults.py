"""Section-typed fields build their default without the section's own validator
(`section_default`), and that default is exactly what validating the section from `{}` gives."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel

from lora_rl.config.base import section_default
from lora_rl.config.recipe import RecipeConfig


def _section_fields(model: type[BaseModel], seen: set[type]) -> list[tuple[str, type, object]]:
    found = []
    for name, info in model.model_fields.items():
        factory = info.default_factory
        if isinstance(factory, section_default):
            section = type(factory())
            found.append((f"{model.__name__}.{name}", section, factory))
        for candidate in _models_in(info.annotation):
            if candidate not in seen:
                seen.add(candidate)
                found += _section_fields(candidate, seen)
    return found


def _models_in(annotation: object) -> list[type[BaseModel]]:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


SECTION_FIELDS = _section_fields(RecipeConfig, {RecipeConfig})


def test_every_section_default_is_found():
    # policy, data, logger, ... and the nested megatron/tensorboard/... blocks
    assert len(SECTION_FIELDS) >= 20


@pytest.mark.parametrize(("where", "section", "factory"), SECTION_FIELDS,
                         ids=[f[0] for f in SECTION_FIELDS])
def test_section_default_equals_validated_empty_section(where, section, factory):
    built = factory()
    validated = section.model_validate({})
    assert type(built) is section
    assert built == validated
    assert built.model_fields_set == validated.model_fields_set == set()
    assert built.model_dump() == validated.model_dump()


def test_omitted_sections_compile_no_validator_of_their_own():
    """Validating a recipe that leaves most sections out compiles one validator (the
    recipe's), not one more per omitted section."""
    code = (
        "from lora_rl.config.recipe import RecipeConfig\n"
        "from lora_rl.config import megatron, logger\n"
        "RecipeConfig.model_validate({'sft': {}, 'policy': {'model_name': 'x'}})\n"
        "built = [c.__name__ for c in (megatron.MegatronConfig, megatron.MegatronOptimizerConfig,"
        " logger.TensorboardConfig) if c.__pydantic_complete__]\n"
        "print(built)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
