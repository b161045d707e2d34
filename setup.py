"""The build: the pure core (`stream/core`) compiled to C extensions by mypyc.

The core is strictly typed and does no I/O, so mypyc compiles it as it is; compiled,
it decides an event in about two thirds of the CPU time of its sources interpreted
(bench/notes.md, "The compiled core against its sources"). Its Python sources ship beside the extensions and
stay the reference: `STREAM_COMPILE=0` builds without compiling (and removes earlier
extensions from an editable tree), so the same code runs as plain Python.

`stream/core/COMPILED` records the SHA-256 of every source compiled: `stream/__init__.py`
refuses to run extensions built from other sources than the ones beside them (an
edit after an editable install), which would otherwise run silently in their place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from setuptools import setup

CORE = Path("stream") / "core"
MANIFEST = CORE / "COMPILED"


def _ext_modules() -> list[Any]:
    sources = sorted(CORE.glob("*.py"))
    if os.environ.get("STREAM_COMPILE", "1").strip() == "0":
        MANIFEST.unlink(missing_ok=True)
        for built in [*CORE.glob("*.so"), *Path().glob("stream_core__mypyc*.so")]:
            built.unlink()
        return []
    from mypyc.build import mypycify

    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sources]
    MANIFEST.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list(mypycify([str(p) for p in sources], opt_level="3", group_name="stream_core"))


setup(ext_modules=_ext_modules())
