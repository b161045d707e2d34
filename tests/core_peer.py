"""Decide fuzzed batches line by line and print a digest of each: the other side of a differential test.

`python -m tests.core_peer` reads one batch a line on standard input, a JSON list of
`[topic, key, value]` (key and value hex, or null), decides it in the fuzz tests'
seeded world (tests/unit/test_fuzz.py: accounts, a published and a held item) and
prints the SHA-256 of `batch_digest` for it. With `STREAM_PURE_CORE=1` the core is
its Python sources; tests/integration/test_core_build.py feeds the same hostile
batches to the compiled core in its own process and compares the digests.
"""

from __future__ import annotations

import hashlib
import os
import sys

from tests.pure_core import PURE_ENV, compiled, source_first

if os.environ.get(PURE_ENV) == "1":
    source_first()

import orjson

import stream.core.engine
from tests.core_digest import _fields
from tests.unit.test_fuzz import decide_batch

Batch = list[tuple[str, bytes | None, bytes | None]]


def batch_digest(inputs: Batch) -> str:
    """The SHA-256 of deciding `inputs` (and a control upsert) in a fresh seeded world.

    It covers every field of the result and the compacted feed and held items after it.
    """
    world, _, _, result = decide_batch(inputs)
    seen = repr([_fields(result), sorted(world.feed.items()), sorted(world.held.items())])
    return hashlib.sha256(seen.encode()).hexdigest()


def encode(inputs: Batch) -> bytes:
    """One line of this module's input."""
    rows = [[t, None if k is None else k.hex(), None if v is None else v.hex()] for t, k, v in inputs]
    return orjson.dumps(rows) + b"\n"


def decode(line: bytes) -> Batch:
    return [
        (t, None if k is None else bytes.fromhex(k), None if v is None else bytes.fromhex(v))
        for t, k, v in orjson.loads(line)
    ]


def main() -> None:
    print("compiled" if compiled(stream.core.engine) else "sources", flush=True)
    for line in sys.stdin.buffer:
        print(batch_digest(decode(line)), flush=True)


if __name__ == "__main__":
    main()
