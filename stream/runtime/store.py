"""The partition stores: RocksDB for the worker, a dict for tests and the benchmarks' baseline.

Both implement `stream.core.state.PartitionStore` over its key scheme; this module
owns only storage: atomic batches, bookkeeping keys, RocksDB's tuning and memory.
"""

from __future__ import annotations

import bisect
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import cast

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from stream.core.state import (
    COUNT_KEY,
    FORMAT_KEY,
    OFFSET_KEY,
    STORE_FORMAT,
    TOUCHED_KEY,
    EntryKind,
    StateKind,
    Update,
)


class _Base:
    """The bookkeeping both stores share, over `get` and a batch writer."""

    # The entry counts as stored, read once and then kept in step by `apply`. Read
    # back on every write they were about a third of a small batch's write cost (in
    # process at batches of 70 events: ~10 -> ~6.5 µs an event).
    _counts: dict[EntryKind, int] | None = None

    def get(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    def next_offset(self, kind: StateKind) -> int:
        raw = self.get(OFFSET_KEY[kind])
        return int(raw) if raw is not None else 0

    def counts(self) -> dict[EntryKind, int]:
        if self._counts is None:
            self._counts = {kind: int(self.get(COUNT_KEY[kind]) or b"0") for kind in EntryKind}
        return dict(self._counts)

    def touched_at(self) -> float | None:
        raw = self.get(TOUCHED_KEY)
        return float(raw) if raw is not None else None

    def compatible(self) -> bool:
        found = self.get(FORMAT_KEY)
        # A store that never recorded its format is new (nothing written yet) or older than the key.
        return found == STORE_FORMAT or (found is None and self.get(TOUCHED_KEY) is None)

    def _bookkeeping(
        self, offsets: Mapping[StateKind, int] | None, counts: Mapping[EntryKind, int] | None
    ) -> tuple[list[tuple[bytes, bytes]], dict[EntryKind, int] | None]:
        """The bookkeeping keys of a write, and the counts after it (None: unchanged).

        The caller keeps the new counts only once the write succeeded.
        """
        writes = [(OFFSET_KEY[kind], str(offset).encode()) for kind, offset in (offsets or {}).items()]
        after = None
        if counts and any(counts.values()):
            after = self.counts()
            for k, d in counts.items():
                if d:
                    after[k] = max(0, after[k] + d)
                    writes.append((COUNT_KEY[k], str(after[k]).encode()))
        writes.append((TOUCHED_KEY, repr(time.time()).encode()))
        writes.append((FORMAT_KEY, STORE_FORMAT))
        return writes, after


class MemoryPartitionStore(_Base):
    """A dict-backed store for tests and the benchmarks' baseline; lost on exit.

    Its keys are also kept in a sorted list, so a `scan` costs what a RocksDB
    iterator's does (a bisection, then the keys under the prefix), not a sort of the
    whole store: the engine scans an author's items on every account change.
    """

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None."""
        return self._data.get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of `keys`, in their order (None where absent)."""
        return [self._data.get(key) for key in keys]

    def scan(self, prefix: bytes, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under `prefix` (after `after`), in key order."""
        keys = self._keys
        i = bisect.bisect_left(keys, prefix)
        if after is not None:
            i = max(i, bisect.bisect_right(keys, after))
        while i < len(keys) and keys[i].startswith(prefix):
            key = keys[i]
            yield key, self._data[key]
            i += 1

    def apply(
        self,
        updates: Iterable[Update],
        offsets: Mapping[StateKind, int] | None = None,
        counts: Mapping[EntryKind, int] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        """Write updates, offsets and count deltas at once (see PartitionStore.apply)."""
        bookkeeping, after = self._bookkeeping(offsets, counts)
        for key, value in (*updates, *bookkeeping):
            if value is None:
                if self._data.pop(key, None) is not None:
                    del self._keys[bisect.bisect_left(self._keys, key)]
            else:
                if key not in self._data:
                    bisect.insort(self._keys, key)
                self._data[key] = value
        if after is not None:
            self._counts = after
        return True

    def close(self) -> None:
        """Nothing to release: the data lives in this object."""
        pass


# One memory budget for every partition store of the process: the block cache, with
# the memtables charged to it (RocksDB's WriteBufferManager). RocksDB's memory is then
# bounded by the budget however many partitions the worker holds and however large
# their state grows, and it reaches that bound early in a worker's life instead of
# creeping up as each partition's memtables first fill (docs/benchmarks.md, "Memory").
# MEMORY_BUDGET_BYTES is the default; STREAM_STORE_MEMORY_MIB sets another
# (`configure_memory`, from the composition root).
MEMORY_BUDGET_BYTES = 96 << 20
# Of the default budget, the memtables of all stores together: past it the store being
# written to flushes its memtable. The rest (40 MiB) caches blocks. Memtables this
# large (~14 MiB a store at four partitions) flush seldom, so there are few small L0
# files for every lookup to consult and for compaction to merge into the bottom level
# (bench/notes.md, "The memtable budget", compares it with a smaller share). A budget
# of another size keeps this share.
MEMTABLE_BUDGET_BYTES = 56 << 20
# Per partition store, at most two memtables of this size (the shared budget usually
# flushes them sooner).
WRITE_BUFFER_BYTES = 16 << 20
# Index and filter blocks are partitioned into blocks of this size: a lookup loads
# one partition of each, not the whole index and bloom filter of a 64 MiB file
# (~1 MiB). Unpartitioned, a budget this size could not keep them cached once the
# published index had grown, and every lookup that reached a large file re-read them
# (the worker slowed from ~8,000 to ~3,500 events/s over 3M events).
METADATA_BLOCK_BYTES = 4096
# The memtable bloom filter's size as a share of WRITE_BUFFER_BYTES (~330 KiB, over
# ten bits per key for the ~200,000 entries a full memtable holds).
MEMTABLE_BLOOM_RATIO = 0.02
_block_cache: Cache | None = None
_write_buffers: WriteBufferManager | None = None


def memory_budget(
    memory_bytes: int = MEMORY_BUDGET_BYTES, memtable_bytes: int = MEMTABLE_BUDGET_BYTES
) -> tuple[Cache, WriteBufferManager]:
    """A block cache of `memory_bytes` with a WriteBufferManager charging up to `memtable_bytes` of memtables to it.

    The worker has one, shared by all its stores; `bench.store_reads` builds others to compare budgets.
    """
    cache = Cache(memory_bytes)
    # allow_stall=False: over budget the writer flushes, it does not block (a
    # stalled write would hold the store-writer thread and with it every batch).
    return cache, WriteBufferManager.new_write_buffer_manager_with_cache(memtable_bytes, False, cache)


def memtable_share(memory_bytes: int) -> int:
    """The memtables' part of a budget of `memory_bytes`: the default budget's share of it."""
    return memory_bytes * MEMTABLE_BUDGET_BYTES // MEMORY_BUDGET_BYTES


def configure_memory(memory_bytes: int) -> None:
    """Size the process's shared budget to `memory_bytes` (STREAM_STORE_MEMORY_MIB), memtables at their share.

    Before any store opened, the budget is made at that size; after, the stores'
    cache and memtable limit are resized in place (RocksDB applies both at once), so
    no store keeps an old budget.
    """
    global _block_cache, _write_buffers
    memtables = memtable_share(memory_bytes)
    if _block_cache is None or _write_buffers is None:
        _block_cache, _write_buffers = memory_budget(memory_bytes, memtables)
        return
    _block_cache.set_capacity(memory_bytes)
    _write_buffers.set_buffer_size(memtables)


def _shared() -> tuple[Cache, WriteBufferManager]:
    global _block_cache, _write_buffers
    if _block_cache is None or _write_buffers is None:
        _block_cache, _write_buffers = memory_budget()
    return _block_cache, _write_buffers


def memtable_limit() -> int:
    """The memtables' limit of the process's shared budget (bytes)."""
    return int(_shared()[1].get_buffer_size())


def memory_usage() -> dict[str, int]:
    """Bytes RocksDB holds for this process's stores: memtables and cached blocks."""
    if _block_cache is None or _write_buffers is None:
        return {"memtables": 0, "block_cache": 0}
    memtables = int(_write_buffers.get_usage())
    # The cache's usage includes the memtables' reservations (they are charged to it).
    return {"memtables": memtables, "block_cache": max(0, int(_block_cache.get_usage()) - memtables)}


def store_options(
    *, memtable_bloom_ratio: float = MEMTABLE_BLOOM_RATIO, budget: tuple[Cache, WriteBufferManager] | None = None
) -> Options:
    """The options every partition store opens with.

    `memtable_bloom_ratio` 0 turns the memtable filter off; `budget` (from `memory_budget`)
    replaces the process's shared one. Both exist for the benchmarks' comparisons.
    """
    cache, write_buffers = budget if budget is not None else _shared()
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    # Most lookups miss (few authors object, few items are deferred or were
    # published): a bloom filter answers those without reading any block.
    table.set_bloom_filter(10, False)
    # Index and filter blocks live in the bounded cache, not beside it, so memory
    # does not grow with the number of SST files; partitioned, with their top level
    # pinned, so a lookup needs only small pieces of them (METADATA_BLOCK_BYTES).
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_metadata_block_size(METADATA_BLOCK_BYTES)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_top_level_index_and_filter(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_manager(write_buffers)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    # A bloom filter over each memtable's whole keys: most lookups miss (see above),
    # and without it a miss walks both memtables' skiplists before the files' filters
    # (about half of a MultiGet's cost per key, bench/notes.md "RocksDB reads").
    # Its bits come out of the memtables' own budget.
    options.set_memtable_prefix_bloom_ratio(memtable_bloom_ratio)
    options.set_memtable_whole_key_filtering(True)
    return options


# A write that would have to wait for RocksDB (a stall) fails at once instead.
_NO_STALL = WriteOptions()
_NO_STALL.no_slowdown = True


class RocksPartitionStore(_Base):
    """A RocksDB store (rocksdict, raw bytes) in the worker's data directory."""

    def __init__(self, path: Path, options: Options | None = None) -> None:
        options = options if options is not None else store_options()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = Rdict(str(path), options)

    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None (through the shared block cache)."""
        value: bytes | None = self._db.get(key)
        return value

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of `keys` in one MultiGet, in their order (None where absent)."""
        # One RocksDB MultiGet: its lookups share the walk through memtables, filters
        # and blocks and one crossing into rocksdict (~30 % cheaper per key than `get`
        # in a loop, several times cheaper than gets between the engine's other work).
        if not keys:
            return []
        return cast("list[bytes | None]", self._db.get(list(keys)))  # a list of keys: a list of values

    def scan(self, prefix: bytes, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under `prefix` (after `after`), in key order, from one iterator."""
        it = self._db.iter()
        it.seek(prefix if after is None else max(prefix, after))
        while it.valid():
            key: bytes = it.key()
            if not key.startswith(prefix):
                break
            if key != after:
                yield key, it.value()
            it.next()

    def apply(
        self,
        updates: Iterable[Update],
        offsets: Mapping[StateKind, int] | None = None,
        counts: Mapping[EntryKind, int] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        """Write updates, offsets and count deltas in one WriteBatch (see PartitionStore.apply)."""
        batch = WriteBatch(raw_mode=True)
        for key, value in updates:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        bookkeeping, after = self._bookkeeping(offsets, counts)
        for key, value in bookkeeping:
            batch.put(key, value)
        if wait:
            self._db.write(batch)
        else:
            try:
                self._db.write(batch, _NO_STALL)
            except Exception as exc:  # rocksdict raises a bare Exception with RocksDB's status
                if "incomplete" not in str(exc).lower():  # "Result incomplete: Write stall"
                    raise
                return False  # RocksDB refused to stall: the batch was not written
        if after is not None:
            self._counts = after
        return True

    def close(self) -> None:
        """Close the database; its files stay for the next open."""
        self._db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        """Delete a store's files (a rebuild starts from nothing)."""
        shutil.rmtree(path, ignore_errors=True)
