"""Griffe extension for the docs build (the source docstrings stay as they are).

* Google style allows both ``Example:`` and ``Examples:``; griffe renders only the plural
  as code, so the singular is renamed before parsing.
* griffe gives every ``@dataclass(init=False)`` class an empty synthetic ``__init__``,
  hiding the ``__init__`` it inherits (``LinearRegression`` from ``LinearModel``); such
  classes are shown without the decorator, so the documented arguments match the real
  signature.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class DoctestExamples(griffe.Extension):
    """See the module docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)

    def on_class_instance(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        # Without the decorator griffe synthesises no __init__, and the real one shows.
        cls.decorators = [d for d in cls.decorators if not _no_init_dataclass(d)]


def _no_init_dataclass(decorator: griffe.Decorator) -> bool:
    text = str(decorator.value)
    return text.startswith("dataclass(") and "init=False" in text
