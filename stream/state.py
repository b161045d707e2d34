"""Per-partition state: profiles, objections, published and deferred items, offsets.

Stores, never decides. One store per input partition number: the inputs are
co-partitioned, so partition p of the content topic needs exactly the profiles and
objections of partition p. The worker rebuilds a store from the compacted topics
when it has none, and resumes from the stored offsets when it has one.

Key scheme (bytes, so RocksDB orders them and an author's items share a prefix):
  p:<account>                 raw profile value, as validated from the topic
  o:<account>                 raw objection value
  i:<item>                    a published item: what a re-evaluation needs
  d:<due ms, 8 bytes><item>   a deferred item, ordered by when it is due: raw content value
  D:<item>                    the due time of a deferred item (to find and cancel it)
  \\0offset:<kind>             next offset of each topic the store is restored from
  \\0count:<kind>              number of entries of each kind (for the state gauge)
where <item> is the author's UTF-8 length in 2 bytes, the author, then the content
id: length-prefixed, so no id (NUL included) can forge another author's prefix.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from rocksdict import Options, Rdict, WriteBatch


class StateKind(StrEnum):
    """The compacted topics a partition store is restored from."""

    PROFILES = "profiles"
    OBJECTIONS = "objections"
    PUBLISHED = "published"
    DEFERRED = "deferred"


class EntryKind(StrEnum):
    """What the store counts, for the `eligibility_state_entries` gauge."""

    PROFILES = "profiles"
    OBJECTIONS = "objections"
    PUBLISHED = "published"
    DEFERRED = "deferred"


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


_OFFSET_KEY = {kind: b"\x00offset:" + kind.value.encode() for kind in StateKind}
_COUNT_KEY = {kind: b"\x00count:" + kind.value.encode() for kind in EntryKind}
# Wall-clock time of the last write: a store untouched for longer than the topics'
# tombstone retention may have missed a deletion and must be rebuilt.
_TOUCHED_KEY = b"\x00touched_at"

Update = tuple[bytes, bytes | None]


class PartitionStore(Protocol):
    """What the engine and the worker need from the state of one partition."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with `prefix` (and sorts after `after`), in key order."""

    def apply(
        self,
        updates: Iterable[Update],
        offsets: Mapping[StateKind, int] | None = None,
        counts: Mapping[EntryKind, int] | None = None,
    ) -> None:
        """Write `updates` (None deletes), new next-offsets and count deltas atomically."""

    def next_offset(self, kind: StateKind) -> int:
        """The offset to resume `kind` from: 0 for a new store."""

    def counts(self) -> dict[EntryKind, int]: ...

    def touched_at(self) -> float | None: ...

    def close(self) -> None: ...


class _Base:
    """The bookkeeping both stores share, over `get` and a batch writer."""

    def get(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    def next_offset(self, kind: StateKind) -> int:
        raw = self.get(_OFFSET_KEY[kind])
        return int(raw) if raw is not None else 0

    def counts(self) -> dict[EntryKind, int]:
        return {kind: int(self.get(_COUNT_KEY[kind]) or b"0") for kind in EntryKind}

    def touched_at(self) -> float | None:
        raw = self.get(_TOUCHED_KEY)
        return float(raw) if raw is not None else None

    def _bookkeeping(
        self, offsets: Mapping[StateKind, int] | None, counts: Mapping[EntryKind, int] | None
    ) -> list[tuple[bytes, bytes]]:
        writes = [(_OFFSET_KEY[kind], str(offset).encode()) for kind, offset in (offsets or {}).items()]
        if counts:
            current = self.counts()
            writes += [(_COUNT_KEY[k], str(max(0, current[k] + d)).encode()) for k, d in counts.items() if d]
        writes.append((_TOUCHED_KEY, repr(time.time()).encode()))
        return writes


class MemoryPartitionStore(_Base):
    """A dict-backed store for tests and the benchmarks' baseline; lost on exit."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, prefix: bytes, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self._data if k.startswith(prefix) and (after is None or k > after)):
            yield key, self._data[key]

    def apply(
        self,
        updates: Iterable[Update],
        offsets: Mapping[StateKind, int] | None = None,
        counts: Mapping[EntryKind, int] | None = None,
    ) -> None:
        bookkeeping = self._bookkeeping(offsets, counts)
        for key, value in updates:
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        self._data.update(bookkeeping)

    def close(self) -> None:
        pass


class RocksPartitionStore(_Base):
    """A RocksDB store (rocksdict, raw bytes) in the worker's data directory."""

    def __init__(self, path: Path) -> None:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # One DB per partition: keep each small so many partitions fit a modest pod.
        options.set_write_buffer_size(16 << 20)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = Rdict(str(path), options)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

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
    ) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in updates:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for key, value in self._bookkeeping(offsets, counts):
            batch.put(key, value)
        self._db.write(batch)

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
