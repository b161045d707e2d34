"""Per-partition state: profiles, objections, published and deferred items, offsets.

Stores, never decides. One store per input partition number: the inputs are
co-partitioned, so partition p of the content topic needs exactly the profiles and
objections of partition p. The worker rebuilds a store from the compacted topics
when it has none, and resumes from the stored offsets when it has one.

Key scheme (bytes, so RocksDB orders them and an author's items share a prefix):
  p:<account>                 what the rule reads of a profile, packed (`pack_profile`)
  o:<account>                 the objection's status, packed (`pack_objection`)
  i:<item>                    a published item: what a re-evaluation needs
  d:<due ms, 8 bytes><item>   a deferred item, ordered by when it is due: raw content value
  D:<item>                    the due time of a deferred item (to find and cancel it)
  v:<item>                    the item's latest applied event and when to forget it (`pack_version`)
  \\0offset:<kind>             next offset of each topic the store is restored from
  \\0count:<kind>              number of entries of each kind (for the state gauge)
  \\0format                     the layout version of the values above (`STORE_FORMAT`)
where <item> is the author's UTF-8 length in 2 bytes, the author, then the content
id: length-prefixed, so no id (NUL included) can forge another author's prefix.
"""

from __future__ import annotations

import datetime as dt
import shutil
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple, Protocol, cast

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

from stream.models import ObjectionStatus, Profile


class StateKind(StrEnum):
    """The compacted topics a partition store is restored from."""

    PROFILES = "profiles"
    OBJECTIONS = "objections"
    PUBLISHED = "published"
    DEFERRED = "deferred"
    ITEMS = "items"


class EntryKind(StrEnum):
    """What the store counts, for the `eligibility_state_entries` gauge."""

    PROFILES = "profiles"
    OBJECTIONS = "objections"
    PUBLISHED = "published"
    DEFERRED = "deferred"
    ITEMS = "items"


def profile_key(account_id: str) -> bytes:
    return b"p:" + account_id.encode()


def objection_key(account_id: str) -> bytes:
    return b"o:" + account_id.encode()


def item_id(author_id: str, content_id: str = "") -> bytes:
    author = author_id.encode()
    return len(author).to_bytes(2, "big") + author + content_id.encode()


def split_item_id(item: bytes) -> tuple[str, str]:
    n = int.from_bytes(item[:2], "big")
    return item[2 : 2 + n].decode(), item[2 + n :].decode()


def published_prefix(author_id: str) -> bytes:
    return PUBLISHED_PREFIX + item_id(author_id)


def published_key(author_id: str, content_id: str) -> bytes:
    return PUBLISHED_PREFIX + item_id(author_id, content_id)


DEFERRED_PREFIX = b"d:"
PUBLISHED_PREFIX = b"i:"
# Set while a recovery replay's published items still await judgement by the final
# state; a worker that finds it set (it crashed meanwhile) judges them all again.
REEVALUATE_KEY = b"\x00reevaluate"


def deferred_key(due_ms: int, item: bytes) -> bytes:
    return DEFERRED_PREFIX + due_ms.to_bytes(8, "big") + item


DEFERRED_DUE_PREFIX = b"D:"


def deferred_due_key(item: bytes) -> bytes:
    return DEFERRED_DUE_PREFIX + item


def split_deferred_key(key: bytes) -> tuple[int, bytes]:
    return int.from_bytes(key[2:10], "big"), key[10:]


def deferred_due_prefix(author_id: str) -> bytes:
    """The prefix of every `D:` key of one author's held items."""
    return DEFERRED_DUE_PREFIX + item_id(author_id)


VERSION_PREFIX = b"v:"


class ItemVersion(NamedTuple):
    """The latest event applied to an item (contract: "Order per item"), and when to forget it.

    `partition` and `offset` place that event in `content.events`: a replayed record
    the worker cannot read, found before it in the log, was handled before it and must
    not undo it (see `engine._fail_item_closed`).
    """

    event_time_us: int
    event_id: str
    deleted: bool
    expires_ms: int
    partition: int
    offset: int


# event_time µs since the epoch, expires ms, deleted, content partition and offset; then the event id
_VERSION = struct.Struct(">qq?iq")


def pack_version(version: ItemVersion) -> bytes:
    v = version
    return _VERSION.pack(v.event_time_us, v.expires_ms, v.deleted, v.partition, v.offset) + v.event_id.encode()


def unpack_version(raw: bytes) -> ItemVersion:
    event_time_us, expires_ms, deleted, partition, offset = _VERSION.unpack_from(raw)
    return ItemVersion(event_time_us, raw[_VERSION.size :].decode(), deleted, expires_ms, partition, offset)


def micros(moment: dt.datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


_OFFSET_KEY = {kind: b"\x00offset:" + kind.value.encode() for kind in StateKind}
_COUNT_KEY = {kind: b"\x00count:" + kind.value.encode() for kind in EntryKind}
# Wall-clock time of the last write: a store untouched for longer than the topics'
# tombstone retention may have missed a deletion and must be rebuilt.
_TOUCHED_KEY = b"\x00touched_at"

_FORMAT_KEY = b"\x00format"
# Bumped whenever a stored value's layout changes: a store of another format is
# rebuilt from the compacted topics rather than misread.
STORE_FORMAT = b"4"

Update = tuple[bytes, bytes | None]

# -- stored values -------------------------------------------------------------------
#
# Profiles and objections are validated once, when they are applied, and stored as
# the few fields the rule reads, packed: reading one back for every content event
# is then a struct unpack, not a JSON parse and a schema check (docs/design.md).

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PROFILE = struct.Struct(">iqq2s")  # birth date ordinal, notified_at µs, updated_at µs, country
_NO_DATE = 0
_NO_TIME = -(1 << 63)
_NO_COUNTRY = b"\x00\x00"
_OBJECTION_BYTE = {ObjectionStatus.OBJECTED: b"O", ObjectionStatus.WITHDRAWN: b"W"}


def pack_profile(profile: Profile) -> bytes:
    return _PROFILE.pack(
        profile.birth_date.toordinal() if profile.birth_date is not None else _NO_DATE,
        micros(profile.notified_at) if profile.notified_at is not None else _NO_TIME,
        micros(profile.updated_at),
        profile.country.encode("ascii") if profile.country is not None else _NO_COUNTRY,
    )


def unpack_profile(account_id: str, raw: bytes) -> Profile:
    birth, notified, updated, country = _PROFILE.unpack(raw)
    return Profile(
        account_id=account_id,
        birth_date=dt.date.fromordinal(birth) if birth != _NO_DATE else None,
        country=country.decode("ascii") if country != _NO_COUNTRY else None,
        notified_at=_EPOCH + dt.timedelta(microseconds=notified) if notified != _NO_TIME else None,
        updated_at=_EPOCH + dt.timedelta(microseconds=updated),
    )


def pack_objection(status: ObjectionStatus) -> bytes:
    return _OBJECTION_BYTE[status]


def unpack_objection(raw: bytes) -> ObjectionStatus:
    """The stored status; anything but a withdrawal reads as objected (fail closed)."""
    return ObjectionStatus.WITHDRAWN if raw == b"W" else ObjectionStatus.OBJECTED


class PartitionStore(Protocol):
    """What the engine and the worker need from the state of one partition."""

    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of `keys`, in their order (None where absent)."""

    def scan(self, prefix: bytes, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with `prefix` (and sorts after `after`), in key order."""

    def apply(
        self,
        updates: Iterable[Update],
        offsets: Mapping[StateKind, int] | None = None,
        counts: Mapping[EntryKind, int] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        """Write `updates` (None deletes), new next-offsets and count deltas atomically.

        With `wait=False` a write that would have to wait (a RocksDB write stall) is
        refused whole: nothing is written and the result is False.
        """

    def next_offset(self, kind: StateKind) -> int:
        """The offset to resume `kind` from: 0 for a new store."""

    def counts(self) -> dict[EntryKind, int]: ...

    def touched_at(self) -> float | None: ...

    def compatible(self) -> bool:
        """False for a store written in another layout (`STORE_FORMAT`): rebuild it."""

    def close(self) -> None: ...


class _Base:
    """The bookkeeping both stores share, over `get` and a batch writer."""

    # The entry counts as stored, read once and then kept in step by `apply`. Read
    # back on every write they were about a third of a small batch's write cost (in
    # process at batches of 70 events: ~10 -> ~6.5 µs an event).
    _counts: dict[EntryKind, int] | None = None

    def get(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    def next_offset(self, kind: StateKind) -> int:
        raw = self.get(_OFFSET_KEY[kind])
        return int(raw) if raw is not None else 0

    def counts(self) -> dict[EntryKind, int]:
        if self._counts is None:
            self._counts = {kind: int(self.get(_COUNT_KEY[kind]) or b"0") for kind in EntryKind}
        return dict(self._counts)

    def touched_at(self) -> float | None:
        raw = self.get(_TOUCHED_KEY)
        return float(raw) if raw is not None else None

    def compatible(self) -> bool:
        found = self.get(_FORMAT_KEY)
        # A store that never recorded its format is new (nothing written yet) or older than the key.
        return found == STORE_FORMAT or (found is None and self.get(_TOUCHED_KEY) is None)

    def _bookkeeping(
        self, offsets: Mapping[StateKind, int] | None, counts: Mapping[EntryKind, int] | None
    ) -> tuple[list[tuple[bytes, bytes]], dict[EntryKind, int] | None]:
        """The bookkeeping keys of a write, and the counts after it (None: unchanged).

        The caller keeps the new counts only once the write succeeded.
        """
        writes = [(_OFFSET_KEY[kind], str(offset).encode()) for kind, offset in (offsets or {}).items()]
        after = None
        if counts and any(counts.values()):
            after = self.counts()
            for k, d in counts.items():
                if d:
                    after[k] = max(0, after[k] + d)
                    writes.append((_COUNT_KEY[k], str(after[k]).encode()))
        writes.append((_TOUCHED_KEY, repr(time.time()).encode()))
        writes.append((_FORMAT_KEY, STORE_FORMAT))
        return writes, after


class MemoryPartitionStore(_Base):
    """A dict-backed store for tests and the benchmarks' baseline; lost on exit."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self._data.get(key) for key in keys]

    def scan(self, prefix: bytes, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self._data if k.startswith(prefix) and (after is None or k > after)):
            yield key, self._data[key]

    def apply(
        self,
        updates: Iterable[Update],
        offsets: Mapping[StateKind, int] | None = None,
        counts: Mapping[EntryKind, int] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        bookkeeping, after = self._bookkeeping(offsets, counts)
        for key, value in updates:
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        self._data.update(bookkeeping)
        if after is not None:
            self._counts = after
        return True

    def close(self) -> None:
        pass


# One memory budget for every partition store of the process: the block cache, with
# the memtables charged to it (RocksDB's WriteBufferManager). RocksDB's memory is then
# bounded by MEMORY_BUDGET_BYTES however many partitions the worker holds and however
# large their state grows, and it reaches that bound early in a worker's life instead
# of creeping up as each partition's memtables first fill (docs/benchmarks.md, "Memory").
MEMORY_BUDGET_BYTES = 64 << 20
# Of that budget, the memtables of all stores together: past it the store being
# written to flushes its memtable.
MEMTABLE_BUDGET_BYTES = 24 << 20
# Per partition store, at most two memtables of this size (the shared budget usually
# flushes them sooner).
WRITE_BUFFER_BYTES = 16 << 20
# Index and filter blocks are partitioned into blocks of this size: a lookup loads
# one partition of each, not the whole index and bloom filter of a 64 MiB file
# (~1 MiB). Unpartitioned, a budget this size could not keep them cached once the
# published index had grown, and every lookup that reached a large file re-read them
# (the worker slowed from ~8,000 to ~3,500 events/s over 3M events).
METADATA_BLOCK_BYTES = 4096
_block_cache: Cache | None = None
_write_buffers: WriteBufferManager | None = None


def _shared() -> tuple[Cache, WriteBufferManager]:
    global _block_cache, _write_buffers
    if _block_cache is None or _write_buffers is None:
        _block_cache = Cache(MEMORY_BUDGET_BYTES)
        # allow_stall=False: over budget the writer flushes, it does not block (a
        # stalled write would hold the store-writer thread and with it every batch).
        _write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            MEMTABLE_BUDGET_BYTES, False, _block_cache
        )
    return _block_cache, _write_buffers


def memory_usage() -> dict[str, int]:
    """Bytes RocksDB holds for this process's stores: memtables and cached blocks."""
    if _block_cache is None or _write_buffers is None:
        return {"memtables": 0, "block_cache": 0}
    memtables = int(_write_buffers.get_usage())
    # The cache's usage includes the memtables' reservations (they are charged to it).
    return {"memtables": memtables, "block_cache": max(0, int(_block_cache.get_usage()) - memtables)}


def _options() -> Options:
    cache, write_buffers = _shared()
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
    return options


# A write that would have to wait for RocksDB (a stall) fails at once instead.
_NO_STALL = WriteOptions()
_NO_STALL.no_slowdown = True


class RocksPartitionStore(_Base):
    """A RocksDB store (rocksdict, raw bytes) in the worker's data directory."""

    def __init__(self, path: Path) -> None:
        options = _options()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = Rdict(str(path), options)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        # One RocksDB MultiGet: its lookups share the walk through memtables, filters
        # and blocks and one crossing into rocksdict (~30 % cheaper per key than `get`
        # in a loop, several times cheaper than gets between the engine's other work).
        if not keys:
            return []
        return cast("list[bytes | None]", self._db.get(list(keys)))  # a list of keys: a list of values

    def scan(self, prefix: bytes, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(prefix if after is None else after)
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
        self._db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
