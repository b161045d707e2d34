"""Streaming eligibility filter: which public content may go to AI training."""

from __future__ import annotations

import hashlib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

__version__ = "0.1.0"


class StaleBuildError(ImportError):
    """The core's compiled extensions were built from other sources than the ones beside them."""


def check_core_build(core: Path = Path(__file__).parent / "core") -> None:
    """Refuse to run `stream.core`'s mypyc extensions (setup.py) unless built from the sources beside them.

    Python imports an extension before the `.py` of the same name, so after an edit
    of the core in an editable tree the old compiled code would run in its place,
    silently. `COMPILED` lists the SHA-256 of every source the build compiled.
    """
    built = [p for p in core.iterdir() if p.name.endswith(tuple(EXTENSION_SUFFIXES))]
    if not built:
        return  # plain Python (STREAM_COMPILE=0 or a tree never built)
    manifest = core / "COMPILED"
    recorded: dict[str, str] = {}
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            digest, _, name = line.partition("  ")
            recorded[name] = digest
    sources = {p.name: p for p in core.glob("*.py")}
    stale = sorted(
        name
        for name in sources.keys() | recorded.keys()
        if name not in sources
        or name not in recorded
        or hashlib.sha256(sources[name].read_bytes()).hexdigest() != recorded[name]
    )
    if stale:
        raise StaleBuildError(
            f"stream/core's compiled extensions were not built from its sources ({', '.join(stale)} differ): "
            "rebuild them with `make install` (or `make compile`), or build plain Python with "
            "`STREAM_COMPILE=0 make compile`"
        )


check_core_build()
