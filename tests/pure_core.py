"""The core from its Python sources, although mypyc's extensions of it sit beside them (setup.py).

Python imports an extension module before a `.py` of the same name. With
`STREAM_PURE_CORE=1`, `tests/conftest.py` puts `source_first` ahead of the import
system, so `stream.core` is the plain Python the extensions were compiled from. The
tests that monkeypatch the core's functions (marker `pure_core`) run so: a compiled
module calls its neighbours directly, past any patch. Imports nothing of `stream`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

CORE = Path(__file__).resolve().parents[1] / "stream" / "core"
PURE_ENV = "STREAM_PURE_CORE"


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds `stream.core` and its modules as their `.py` files."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "stream.core":
            return importlib.util.spec_from_file_location(
                fullname, CORE / "__init__.py", submodule_search_locations=[str(CORE)]
            )
        if fullname.startswith("stream.core."):
            source = CORE / f"{fullname.rpartition('.')[2]}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def source_first() -> None:
    """Import `stream.core` from its sources from now on (before anything imported it); once is enough."""
    if any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
        return
    if any(name == "stream.core" or name.startswith("stream.core.") for name in sys.modules):
        raise RuntimeError("stream.core was imported before source_first()")
    sys.meta_path.insert(0, _SourceFirst())


def compiled(module: ModuleType) -> bool:
    """Whether `module` was loaded from a compiled extension."""
    return str(module.__file__).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
