"""Per-partition state: profiles, objections, published items, and applied offsets.

Stores, never decides. One store per input partition number: the inputs are
co-partitioned, so partition p of the content topic needs exactly the profiles and
objections of partition p. The worker rebuilds a store from the compacted topics
when it has none, and resumes from the stored offsets when it has one.

Key scheme (bytes, so RocksDB orders them and an author's items share a prefix):
  p:<account>               raw profile value, as validated from the topic
  o:<account>               raw objection value
  i:<len><author><content>  a published item (what a re-evaluation needs); <len> is
                            the author's UTF-8 length in 2 bytes, so no id can
                            forge another author's prefix
  \\0offset:<kind>           next offset of profiles/objections to apply
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
    """The compacted inputs whose latest value per account the store keeps."""

    PROFILES = "profiles"
    OBJECTIONS = "objections"


def profile_key(account_id: str) -> bytes:
    return b"p:" + account_id.encode()


def objection_key(account_id: str) -> bytes:
    return b"o:" + account_id.encode()


def published_prefix(author_id: str) -> bytes:
    # Length-prefixed, not separator-terminated: ids may contain any character
    # (NUL included), and one author's prefix must never be another's.
    author = author_id.encode()
    return b"i:" + len(author).to_bytes(2, "big") + author


def published_key(author_id: str, content_id: str) -> bytes:
    return published_prefix(author_id) + content_id.encode()


_OFFSET_KEY = {kind: b"\x00offset:" + kind.value.encode() for kind in StateKind}
# Wall-clock time of the last write: a store untouched for longer than the topics'
# tombstone retention may have missed a deletion and must be rebuilt.
_TOUCHED_KEY = b"\x00touched_at"

Update = tuple[bytes, bytes | None]


class PartitionStore(Protocol):
    """What the engine needs from the state of one partition."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with `prefix`, in key order."""

    def apply(self, updates: Iterable[Update], offsets: Mapping[StateKind, int] | None = None) -> None:
        """Write `updates` (a None value deletes) and the new next-offsets atomically."""

    def next_offset(self, kind: StateKind) -> int:
        """The offset to resume `kind` from: 0 for a new store."""

    def touched_at(self) -> float | None: ...

    def close(self) -> None: ...


class MemoryPartitionStore:
    """A dict-backed store for tests and the benchmarks' baseline; lost on exit."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self._data if k.startswith(prefix)):
            yield key, self._data[key]

    def apply(self, updates: Iterable[Update], offsets: Mapping[StateKind, int] | None = None) -> None:
        for key, value in updates:
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        for kind, offset in (offsets or {}).items():
            self._data[_OFFSET_KEY[kind]] = str(offset).encode()
        self._data[_TOUCHED_KEY] = repr(time.time()).encode()

    def next_offset(self, kind: StateKind) -> int:
        raw = self._data.get(_OFFSET_KEY[kind])
        return int(raw) if raw is not None else 0

    def touched_at(self) -> float | None:
        raw = self._data.get(_TOUCHED_KEY)
        return float(raw) if raw is not None else None

    def close(self) -> None:
        pass


class RocksPartitionStore:
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

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key: bytes = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()

    def apply(self, updates: Iterable[Update], offsets: Mapping[StateKind, int] | None = None) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in updates:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for kind, offset in (offsets or {}).items():
            batch.put(_OFFSET_KEY[kind], str(offset).encode())
        batch.put(_TOUCHED_KEY, repr(time.time()).encode())
        self._db.write(batch)

    def next_offset(self, kind: StateKind) -> int:
        raw = self._db.get(_OFFSET_KEY[kind])
        return int(raw) if raw is not None else 0

    def touched_at(self) -> float | None:
        raw = self._db.get(_TOUCHED_KEY)
        return float(raw) if raw is not None else None

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
