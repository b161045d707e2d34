"""The in-memory store (tests, the engine-cost benchmark) answers as the RocksDB store does.

Hypothesis writes the same random updates (puts, deletes, bookkeeping) to both and
compares every read: `get_many` and `scan` with prefixes and `after` bounds that
fall on, between and past the keys. The in-memory store keeps its keys in a sorted
list beside the dict; a key missed on a delete or listed twice would show here.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.state import TOUCHED_KEY, EntryKind, PartitionStore, StateKind
from stream.runtime.store import MemoryPartitionStore, RocksPartitionStore

_KEY = st.binary(min_size=0, max_size=4).map(lambda b: b"k" + bytes(c % 4 + 97 for c in b))
_UPDATE = st.tuples(_KEY, st.one_of(st.none(), st.binary(max_size=3)))
_BATCHES = st.lists(st.lists(_UPDATE, max_size=12), min_size=1, max_size=6)
_PROBE = st.tuples(_KEY, st.one_of(st.none(), _KEY))


def _scanned(store: PartitionStore, prefix: bytes, after: bytes | None) -> list[tuple[bytes, bytes | None]]:
    # The write time differs between two stores written a moment apart: its key is kept, its value not.
    return [(k, None if k == TOUCHED_KEY else v) for k, v in store.scan(prefix, after)]


@settings(max_examples=60, deadline=None)
@given(_BATCHES, st.lists(_PROBE, min_size=1, max_size=8))
def test_memory_store_reads_as_rocksdb_after_any_writes(
    batches: list[list[tuple[bytes, bytes | None]]], probes: list[tuple[bytes, bytes | None]]
) -> None:
    root = Path(tempfile.mkdtemp(prefix="memory-store-"))
    rocks = RocksPartitionStore(root / "p0")
    memory = MemoryPartitionStore()
    try:
        for i, updates in enumerate(batches):
            for store in (rocks, memory):
                store.apply(updates, {StateKind.PROFILES: i}, {EntryKind.PUBLISHED: 1})
        keys = sorted({k for updates in batches for k, _ in updates} | {p for p, _ in probes})
        assert memory.get_many(keys) == rocks.get_many(keys)
        for prefix, after in [(b"k", None), (b"", None), *probes]:
            assert _scanned(memory, prefix, after) == _scanned(rocks, prefix, after)
        assert memory.counts() == rocks.counts()
    finally:
        rocks.close()
        shutil.rmtree(root, ignore_errors=True)
