"""Decide a fetched batch: decode, look up, apply the rule, build the records. No I/O.

The shell (`worker.py`) fetches a batch, hands it here, then performs the result in
the order that keeps the feed safe across a crash at any point:

1. write `pre_updates` (items about to be published join the published index, so a
   crash after sending can never leave a feed item the index does not know);
2. send `first` (the published index's changelog entries of items about to be
   published) and wait for the broker's acknowledgement: a partition's next owner,
   restoring the index from its changelog, then knows every item on the feed;
3. send `produce` (feed records and tombstones, each tombstone's record for
   trainers on `training.retractions`, decisions, dead letters, held items) and
   wait until the broker acknowledged every record;
4. send `last` (index removals, and each item's latest applied event) and wait:
   an item leaves the index, and an event counts as applied, only once the
   tombstones and decisions it caused are durable;
5. write `post_updates` with the new state offsets (profiles, objections, index
   removals, deferrals, item versions), so state that caused a retraction is never
   marked applied before the tombstone is durable;
6. commit the content offsets.

A crash anywhere replays the batch: records may be duplicated, never lost.

Order per item: each item's latest applied event (`state.ItemVersion`) is kept; an
event older than it, that event again, or anything after a delete is skipped with
an audit record and changes nothing.

Isolation: a record whose handling raises anything unexpected is dead-lettered
(`processing_error`) and fails closed (its item is retracted and released, or its
account is treated as unknown or objecting); the batch is decided again without
it, so one record can never stop a partition.

Deferred decisions: an upsert refused only because the author's notice period is
still running is held until the period ends (`process_due` decides it again with
the state of that moment). A deferral lives in the partition store and, so that it
survives a partition moving to another worker, on the compacted deferred topic.
Any change of the author's account decides their held items again at once: an
item now refused for another reason is released (removed from the store and
tombstoned on the changelog), one now eligible is published.

The parts, each a module of `stream.core`: `content` (a content record's path),
`order` (order per item), `items` (deciding one item: publish, hold, retract,
release), `accounts` (state records and what they change), `held` (held items
falling due), `recovery` (judging every item by the final state after a replay),
`overlay` (the store as the batch will leave it), `isolation` (a record that raises),
`shadow` (a second policy's differences, shadow mode) and `batch` (the result
types). This module wires them into the engine's entry points.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from stream.config import TopicNames
from stream.core.accounts import AccountChanges
from stream.core.batch import CHANGELOGS, BatchResult, InputRecord, Isolated, OutputTopic, Produce, where
from stream.core.content import ContentSteps, item_of
from stream.core.held import HeldItems
from stream.core.isolation import Failed, isolating
from stream.core.items import ItemDecider
from stream.core.order import ITEM_MEMORY, ItemOrder
from stream.core.overlay import Overlay
from stream.core.policy import Policy
from stream.core.recovery import Recovery
from stream.core.shadow import ShadowDecider
from stream.core.state import REEVALUATE_KEY, EntryKind, PartitionStore, StateKind, Update, published_item_key

# The engine's vocabulary, importable from here as before the parts had modules of their own.
__all__ = [
    "CHANGELOGS",
    "ITEM_MEMORY",
    "BatchResult",
    "Engine",
    "InputRecord",
    "Isolated",
    "OutputTopic",
    "Produce",
]

_Where = tuple[str, int, int]


class Engine:
    """Applies the rule to batches of input records; holds only immutable configuration."""

    def __init__(
        self,
        policy: Policy,
        pseudonym_key: bytes,
        topics: TopicNames,
        *,
        item_memory: dt.timedelta = ITEM_MEMORY,
        shadow: Policy | None = None,
    ) -> None:
        self.policy = policy
        # Shadow mode (`shadow`): decided beside `policy`, recorded where it differs, never in force.
        self.shadow = shadow
        self._kind_of_topic = {topics.profiles: StateKind.PROFILES, topics.objections: StateKind.OBJECTIONS}
        decider = ItemDecider(policy, pseudonym_key, ShadowDecider(shadow) if shadow is not None else None)
        self._order = ItemOrder(item_memory)
        self._content = ContentSteps(decider, self._order)
        self._accounts = AccountChanges(decider)
        self._held = HeldItems(decider)
        self._recovery = Recovery(decider)

    def process(
        self,
        stores: Mapping[int, PartitionStore],
        state_records: Sequence[InputRecord],
        content_records: Sequence[InputRecord],
        now: dt.datetime,
        *,
        recovering: bool = False,
    ) -> BatchResult:
        """Apply state records first (in offset order per partition), then decide content.

        `recovering`: the state records replay history into a restored store whose
        published index is already current, so judging items by each intermediate
        state would retract items that a later state allowed. State is only applied;
        `reevaluate_published` then judges every published item by the final state.

        A record whose handling raises is isolated: the batch is decided again from
        the unchanged store with that record dead-lettered and failed closed.
        """

        def attempt(failed: Mapping[_Where, str]) -> BatchResult:
            return self._process(stores, state_records, content_records, now, recovering, failed)

        result, failed = isolating(attempt)
        result.isolated = [Isolated(*place, error) for place, error in failed.items()]
        return result

    def _process(
        self,
        stores: Mapping[int, PartitionStore],
        state_records: Sequence[InputRecord],
        content_records: Sequence[InputRecord],
        now: dt.datetime,
        recovering: bool,
        failed: Mapping[_Where, str],
    ) -> BatchResult:
        result = BatchResult()
        overlays: dict[int, Overlay] = {}

        def overlay(partition: int) -> Overlay:
            if partition not in overlays:
                overlays[partition] = Overlay(stores[partition], partition)
            return overlays[partition]

        for record in state_records:
            kind = self._kind_of_topic[record.topic]
            ov = overlay(record.partition)
            if recovering:
                # Written with the replayed state itself: until the pass over the published
                # index ends, a restarted worker knows it still has to judge them.
                ov.put(REEVALUATE_KEY, b"1")
            try:
                error = failed.get(where(record)) if failed else None
                self._accounts.apply(ov, kind, record, now, result, recovering=recovering, failed_with=error)
            except Exception as exc:
                raise Failed(where(record), type(exc).__name__) from exc
            result.state_offsets.setdefault(record.partition, {})[kind] = record.offset + 1
        events = []
        for record in content_records:
            try:
                events.append(self._content.decode(record, failed))
            except Exception as exc:
                raise Failed(where(record), type(exc).__name__) from exc
        # What deciding them will read, in one batched lookup per partition. Each
        # event's item id is built once here, for the lookup and the decision.
        items = [item_of(event) for event in events]
        for partition, keys in self._content.lookups(content_records, events, items).items():
            overlay(partition).prefetch(keys)
        expires_ms = self._order.expires_ms(now)
        for record, event, item in zip(content_records, events, items, strict=True):
            try:
                self._content.decide(overlay(record.partition), record, event, item, now, expires_ms, result)
            except Exception as exc:
                raise Failed(where(record), type(exc).__name__) from exc
        for ov in overlays.values():
            ov.settle(result)
        return result

    def process_due(self, store: PartitionStore, partition: int, now: dt.datetime, limit: int) -> BatchResult:
        """Decide again, with the state of now, up to `limit` deferred items whose time has come.

        A held item whose decision raises is released (fail closed) and reported in `isolated`.
        """
        return self._held.process_due(store, partition, now, limit)

    def reevaluate_published(
        self, store: PartitionStore, partition: int, now: dt.datetime, after: bytes | None, limit: int
    ) -> tuple[BatchResult, bytes | None]:
        """Judge up to `limit` held and published items after key `after` by the current state.

        One pass over the held items and the published index after a recovery replay
        (`recovery`). Returns the result and the key to continue after, or None when
        the pass is complete.
        """
        return self._recovery.reevaluate_published(store, partition, now, after, limit)

    def expire_items(
        self, store: PartitionStore, partition: int, now: dt.datetime, after: bytes | None, limit: int
    ) -> tuple[BatchResult, bytes | None]:
        """Look at up to `limit` items' latest events after key `after`; forget those past their memory (`item_memory`).

        A sweep in steps over the items, off the path of every event (which then writes
        one key, not an expiry index beside it). Returns the result and the key to go on
        after, or None when the sweep reached the end.
        """
        return self._order.expire(store, partition, now, after, limit)

    def restore(
        self, kind: StateKind, store: PartitionStore, records: Iterable[InputRecord]
    ) -> tuple[list[Update], Counter[EntryKind]]:
        """Local writes that replay one of our changelogs (published, deferred, items) into a store."""
        ov = Overlay(store, -1)
        for record in records:
            if record.key is None:
                continue
            item = record.key
            if kind is StateKind.PUBLISHED:
                ov.put(published_item_key(item), record.value)
            elif kind is StateKind.ITEMS:
                self._order.restore(ov, item, record.value)
            else:
                self._held.restore(ov, item, record.value)
        result = BatchResult()
        ov.settle(result)
        return result.post_updates.get(-1, []), result.post_counts.get(-1, Counter())
