"""Content records: decode, read ahead, order per item, decide; an unreadable one fails its item closed.

Owns the path of one `content.events` record through the engine. A record that does
not decode is dead-lettered and, if it still names an item (its key and
`content_id`), that item leaves the feed and is no longer held: the update may have
been the one that refuses it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from stream.core.batch import BatchResult, InputRecord, OutputTopic, Produce, broker_time, state_event_id, where
from stream.core.codec import Rejected, decode_content, item_named_by
from stream.core.items import ItemDecider, dead_letter
from stream.core.models import ContentEvent, DeadLetterReason, Op, RetractCause
from stream.core.order import ItemOrder
from stream.core.overlay import Overlay
from stream.core.policy import refuse_content
from stream.core.records import skip_value
from stream.core.state import deferred_due_key, item_id, objection_key, profile_key, published_item_key, version_key


class ContentSteps:
    """Decides content records against the batch's overlays."""

    def __init__(self, decider: ItemDecider, order: ItemOrder) -> None:
        self._decider = decider
        self._order = order
        self._policy = decider.policy

    @staticmethod
    def decode(record: InputRecord, failed: Mapping[tuple[str, int, int], str]) -> ContentEvent | Rejected:
        """The record's event, or why it is a dead letter (a record isolated earlier is one)."""
        error = failed.get(where(record)) if failed else None
        if error is not None:
            return Rejected(DeadLetterReason.PROCESSING_ERROR, f"handling it raised {error}")
        return decode_content(record.key, record.value)

    def lookups(
        self, records: Sequence[InputRecord], events: Sequence[ContentEvent | Rejected], items: Sequence[bytes]
    ) -> dict[int, list[bytes]]:
        """Per partition, every key deciding these events will read: one batched lookup instead of many.

        Every event's latest applied version, deferral (a newer event releases it) and
        published-index entry (a retraction or the index count needs it), and the
        profile and objection of each author whose event the content steps let through.
        """
        wanted: dict[int, list[bytes]] = {}
        for record, event, item in zip(records, events, items, strict=True):
            if isinstance(event, ContentEvent):
                keys = wanted.setdefault(record.partition, [])
                keys += (version_key(item), deferred_due_key(item), published_item_key(item))
                if event.op is Op.UPSERT and refuse_content(event, self._policy) is None:
                    keys += (profile_key(event.author_id), objection_key(event.author_id))
        return wanted

    def decide(
        self,
        ov: Overlay,
        record: InputRecord,
        event: ContentEvent | Rejected,
        item: bytes,
        now: dt.datetime,
        expires_ms: int,
        result: BatchResult,
    ) -> None:
        """Decide one content record: dead letter, skip (order per item), or the rule's decision.

        `expires_ms`: when an event applied now is forgotten (`ItemOrder.expires_ms`).
        """
        if isinstance(event, Rejected):
            dead_letter(record, event, now, result)
            self._fail_item_closed(ov, record, now, result)
            return
        assert record.value is not None  # decode_content rejects a null value
        skip = self._order.advance(ov, record, event, item, expires_ms, result)
        if skip is not None:
            result.skips[skip] += 1
            value = skip_value(event, skip, policy_version=self._policy.version, decided_at=now)
            result.produce.append(Produce(OutputTopic.DECISIONS, event.content_id.encode(), value, ov.partition))
            return
        # A newer event supersedes a held one: it is decided (or held) on its own.
        self._decider.release(ov, event.author_id, event.content_id, item, result)
        self._decider.decide_event(ov, event, item, now, result)

    def _fail_item_closed(self, ov: Overlay, record: InputRecord, now: dt.datetime, result: BatchResult) -> None:
        """An unreadable content record: the item it names leaves the feed and is no longer held."""
        named = item_named_by(record.key, record.value)
        if named is None:
            return
        author_id, content_id = named
        item = item_id(author_id, content_id)
        if self._order.applied_after(ov, record, item):
            # Replayed after a crash: the item's latest event came after this record in
            # the log, so this record was handled before it, and must not undo it.
            return
        if self._decider.release(ov, author_id, content_id, item, result):
            result.released += 1
        if ov.is_published(author_id, content_id):
            cause = RetractCause.UNREADABLE_UPDATE
            event_id, event_time = state_event_id(record), broker_time(record)
            self._decider.retract(ov, author_id, content_id, event_id, event_time, cause, now, result)


def item_of(event: ContentEvent | Rejected) -> bytes:
    """The item id an event is decided under (b"" for a dead letter): built once per event."""
    return item_id(event.author_id, event.content_id) if isinstance(event, ContentEvent) else b""
