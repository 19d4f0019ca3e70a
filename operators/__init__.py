"""The operators, one per file; the workflow key of each is its ``name`` (= its file name).

Adding an operator: write operators/NAME.py with one Operator subclass (its ``name`` and
``summary``), add tests/operators/test_NAME.py, and use it as a step in a workflow. ``REGISTRY``
finds it: every module of this package is imported and its Operator subclasses with a ``name``
are registered (in the order of the modules' names, then of the classes in a module).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from curation.operator import Operator


def _discover() -> dict[str, type[Operator]]:
    found: dict[str, type[Operator]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.ispkg or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in list(vars(module).values()):       # in the order they are defined
            if not (inspect.isclass(cls) and issubclass(cls, Operator)
                    and cls.__module__ == module.__name__ and cls.name):
                continue
            if cls.name in found and found[cls.name] is not cls:
                raise RuntimeError(f"two operators named {cls.name!r}: {found[cls.name].__module__} "
                                   f"and {cls.__module__}")
            found[cls.name] = cls
    return found


REGISTRY: dict[str, type[Operator]] = _discover()
