"""Attribute docstrings of the recipe models, read from source only when documentation is made.

Field docs are written once, as the docstring under each field. pydantic can read them at class
creation (`use_attribute_docstrings`), but that costs ~40 ms on every `lora-rl validate`; the
schema export and the docs generator are the only readers, so they read them here instead.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from functools import cache

from pydantic import BaseModel


@cache
def attribute_docs(cls: type[BaseModel]) -> dict[str, str]:
    """Field name -> docstring for `cls` and its model base classes (own docs win)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is BaseModel or not (isinstance(base, type) and issubclass(base, BaseModel)):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(base)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for field, doc in itertools.pairwise(body):
            if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                    and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)):
                docs[field.target.id] = inspect.cleandoc(doc.value.value)
    return docs
