"""Order per item: each item's latest applied event, which later events it supersedes, and when it is forgotten.

Owns the `v:` entries (`state.ItemVersion`) and their changelog (`OutputTopic.ITEMS`):
an event older than the item's latest applied one, that event again, or anything
after a delete is skipped and changes nothing (contract: "Order per item"). A
latest event is remembered for `item_memory` after it was applied, then forgotten
by a sweep in steps (`expire`).
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Final

from stream.core.batch import BatchResult, InputRecord, OutputTopic, Produce, epoch_ms
from stream.core.models import ContentEvent, Op, SkipReason
from stream.core.overlay import Overlay
from stream.core.state import (
    VERSION_PREFIX,
    ItemVersion,
    PartitionStore,
    item_of_key,
    micros,
    pack_version,
    unpack_version,
    version_key,
)

# How long an item's latest applied event is remembered after it was applied, by
# default (`STREAM_ITEM_MEMORY_DAYS`): at least as long as `content.events` retains
# records (7 days, `topics.py`), so that no duplicate or late copy still on the topic
# can find the item forgotten.
ITEM_MEMORY: Final = dt.timedelta(days=8)


class ItemOrder:
    """Keeps each item's latest applied event; says which events it supersedes."""

    def __init__(self, item_memory: dt.timedelta = ITEM_MEMORY) -> None:
        self._item_memory_ms = int(item_memory.total_seconds() * 1000)

    def advance(
        self,
        ov: Overlay,
        record: InputRecord,
        event: ContentEvent,
        item: bytes,
        expires_ms: int,
        result: BatchResult,
    ) -> SkipReason | None:
        """Skip an event the item's latest applied event supersedes; else make it the latest.

        `expires_ms`: when an event applied now is forgotten (`expires_ms(now)`, once a batch).
        """
        event_time_us = micros(event.event_time)
        raw = ov.get(version_key(item))
        if raw is not None:
            latest = unpack_version(raw)
            if latest.event_id == event.event_id:
                return SkipReason.SUPERSEDED
            if latest.deleted:
                return SkipReason.DELETED
            if event_time_us < latest.event_time_us:
                return SkipReason.SUPERSEDED
        packed = pack_version(
            ItemVersion(
                event_time_us,
                event.event_id,
                event.op is Op.DELETE,
                expires_ms,
                record.partition,
                record.offset,
            )
        )
        ov.put(version_key(item), packed)
        result.last.append(Produce(OutputTopic.ITEMS, item, packed, ov.partition))
        return None

    def expires_ms(self, now: dt.datetime) -> int:
        """When an event applied at `now` is forgotten (epoch ms): computed once a batch, not per event."""
        return epoch_ms(now) + self._item_memory_ms

    @staticmethod
    def applied_after(ov: Overlay, record: InputRecord, item: bytes) -> bool:
        """Whether the item's latest applied event comes after `record` in the same partition's log.

        A replayed record was then handled before that event, and must not undo it.
        """
        raw = ov.get(version_key(item))
        if raw is None:
            return False
        latest = unpack_version(raw)
        return latest.partition == record.partition and latest.offset > record.offset

    @staticmethod
    def expire(
        store: PartitionStore, partition: int, now: dt.datetime, after: bytes | None, limit: int
    ) -> tuple[BatchResult, bytes | None]:
        """Look at up to `limit` items' latest events after key `after`; forget those past their memory.

        Returns the result and the key to go on after, or None when the sweep reached the end.
        """
        result = BatchResult()
        ov = Overlay(store, partition)
        now_ms = epoch_ms(now)
        last: bytes | None = None
        seen = 0
        for key, raw in itertools.islice(store.scan(VERSION_PREFIX, after=after), limit):
            last, seen = key, seen + 1
            if unpack_version(raw).expires_ms <= now_ms:
                ov.put(key, None)
                result.last.append(Produce(OutputTopic.ITEMS, item_of_key(VERSION_PREFIX, key), None, partition))
        ov.settle(result)
        return result, (last if seen == limit else None)

    @staticmethod
    def restore(ov: Overlay, item: bytes, value: bytes | None) -> None:
        """Replay one record of the items changelog: it carries the stored value itself (`state.pack_version`)."""
        ov.put(version_key(item), value)
