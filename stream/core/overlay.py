"""The partition's store as it will be once a batch's writes are applied: reads see them, the store does not.

Owns the batch's pending writes, its changes to the published index and to held
items per author, and `settle`: splitting those writes into the updates the shell
applies before sending (index entries of items about to be published) and after
the broker acknowledged (everything else), with the count deltas of the state gauge.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from stream.core.batch import BatchResult, OutputTopic, Produce
from stream.core.state import (
    EntryKind,
    PartitionStore,
    Update,
    deferred_due_key,
    deferred_due_prefix,
    deferred_key,
    entry_kind,
    item_id,
    pack_due,
    published_key,
    published_prefix,
    unpack_due,
)

_V = TypeVar("_V")


class Overlay:
    """The partition's store as it will be once this batch's writes are applied."""

    def __init__(self, store: PartitionStore, partition: int) -> None:
        self.store = store
        self.partition = partition
        self.writes: dict[bytes, bytes | None] = {}
        self.published: dict[str, dict[str, bytes | None]] = {}
        # This batch's changes to held items, per author: content id -> due ms (None: released).
        self.held: dict[str, dict[str, int | None]] = {}
        # Values of the store read ahead for this batch (the store does not change
        # while a batch is decided: the worker writes only after `process` returns).
        self.read: dict[bytes, bytes | None] = {}

    def prefetch(self, keys: Iterable[bytes]) -> None:
        """Read `keys` from the store in one call: a batched lookup costs a fraction of one each."""
        wanted = [key for key in dict.fromkeys(keys) if key not in self.read]
        self.read.update(zip(wanted, self.store.get_many(wanted), strict=True))

    def stored(self, key: bytes) -> bytes | None:
        """The store's value, before this batch's writes."""
        if key in self.read:
            return self.read[key]
        return self.store.get(key)

    def get(self, key: bytes) -> bytes | None:
        """The value as it will be: this batch's write if there is one, else the store's."""
        if key in self.writes:
            return self.writes[key]
        return self.stored(key)

    def put(self, key: bytes, value: bytes | None) -> None:
        """Write `value` (None deletes) once the batch is performed."""
        self.writes[key] = value

    def is_published(self, author_id: str, content_id: str) -> bool:
        """Whether the item will be in the published index (on the feed)."""
        mine = self.published.get(author_id)
        if mine is not None and content_id in mine:
            return mine[content_id] is not None
        return self.stored(published_key(author_id, content_id)) is not None

    def set_published(self, author_id: str, content_id: str, value: bytes | None) -> None:
        """Put the item in the published index with `value`, or (None) take it out."""
        self.published.setdefault(author_id, {})[content_id] = value

    def published_items(self, author_id: str) -> Iterator[tuple[str, bytes]]:
        """The author's published items as they will be: (content id, index value)."""
        return self._merged(published_prefix(author_id), self.published.get(author_id, {}), bytes)

    def due_of(self, author_id: str, content_id: str, item: bytes) -> int | None:
        """When the item's held copy is due (ms), or None if none is held."""
        mine = self.held.get(author_id)
        if mine is not None and content_id in mine:
            return mine[content_id]
        raw = self.stored(deferred_due_key(item))
        return unpack_due(raw) if raw is not None else None

    def set_held(self, author_id: str, content_id: str, item: bytes, due_ms: int | None, raw: bytes | None) -> None:
        """Hold the item's copy `raw` until `due_ms`, or (None) release the copy held now."""
        previous = self.due_of(author_id, content_id, item)
        if previous is not None:
            self.put(deferred_key(previous, item), None)
        if due_ms is None:
            self.put(deferred_due_key(item), None)
        else:
            assert raw is not None
            self.put(deferred_key(due_ms, item), raw)
            self.put(deferred_due_key(item), pack_due(due_ms))
        self.held.setdefault(author_id, {})[content_id] = due_ms

    def held_items(self, author_id: str) -> Iterator[tuple[str, int]]:
        """The author's held items as they will be: (content id, due ms)."""
        return self._merged(deferred_due_prefix(author_id), self.held.get(author_id, {}), unpack_due)

    def _merged(
        self, prefix: bytes, mine: Mapping[str, _V | None], decode: Callable[[bytes], _V]
    ) -> Iterator[tuple[str, _V]]:
        """One author's entries under `prefix`: the store's, with this batch's changes (`mine`) over them."""
        for key, value in self.store.scan(prefix):
            content_id = key[len(prefix) :].decode()
            if content_id not in mine:
                yield content_id, decode(value)
        for content_id, maybe in mine.items():
            if maybe is not None:
                yield content_id, maybe

    def settle(self, result: BatchResult) -> None:
        """Split this batch's writes into the before-send and after-ack updates, with count deltas."""
        pre: list[Update] = []
        post: list[Update] = list(self.writes.items())
        for author_id, items in self.published.items():
            for content_id, value in items.items():
                # The index's changelog, so the partition's next owner can restore it:
                # an entry is durable before its feed record is sent, and removed only
                # once its tombstone is (see the engine's module docstring).
                record = Produce(OutputTopic.PUBLISHED, item_id(author_id, content_id), value, self.partition)
                if value is not None:
                    pre.append((published_key(author_id, content_id), value))
                    result.first.append(record)
                else:
                    post.append((published_key(author_id, content_id), None))
                    result.last.append(record)
        p = self.partition
        if pre:
            result.pre_updates[p] = pre
            result.pre_counts[p] = self._count_deltas(pre)
        if post:
            result.post_updates[p] = post
            result.post_counts[p] = self._count_deltas(post)

    def _count_deltas(self, updates: list[Update]) -> Counter[EntryKind]:
        """How `updates` change the number of entries of each counted kind."""
        # Summed in a plain dict, which the compiled core updates in C; a Counter is a
        # Python subclass of dict, each `+=` a lookup and a store through Python's protocol.
        deltas: dict[EntryKind, int] = {}
        for key, value in updates:
            kind = entry_kind(key)
            if kind is not None:
                delta = (value is not None) - (self.stored(key) is not None)
                if delta:
                    deltas[kind] = deltas.get(kind, 0) + delta
        return Counter(deltas)
