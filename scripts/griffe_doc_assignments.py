"""Griffe extension: a class whose docstring is assigned (``__doc__ = SOME_DOC``) gets
that string as its docstring in the API reference.

The two public Lightning callback classes of each namespace share one docstring
(``lightning_callbacks._callback.CALLBACK_DOC``, ``lightning_callbacks._dp.DPSGD_DOC``);
static analysis sees only the assignment. Loaded by mkdocstrings (``mkdocs.yml``).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from typing import Any

import griffe


def _classes(module: griffe.Module) -> Iterator[griffe.Class]:
    for member in module.members.values():
        if member.is_alias:
            continue
        if isinstance(member, griffe.Module):
            yield from _classes(member)
        elif isinstance(member, griffe.Class):
            yield member


class DocAssignments(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **_: Any) -> None:
        for cls in _classes(pkg):
            assigned = cls.members.get("__doc__")
            if cls.docstring is not None or not isinstance(assigned, griffe.Attribute):
                continue
            value = assigned.value
            if not isinstance(value, griffe.ExprName):
                continue
            target = loader.modules_collection.get_member(value.canonical_path)
            if not isinstance(target, griffe.Attribute) or not isinstance(target.value, str):
                continue
            text = ast.literal_eval(target.value)
            if isinstance(text, str):
                cls.docstring = griffe.Docstring(
                    inspect.cleandoc(text),
                    lineno=target.lineno,
                    endlineno=target.endlineno,
                    parent=cls,
                )
