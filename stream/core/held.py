"""Held items: deciding again, with the state of that moment, each deferred item whose time has come.

An upsert refused only because the author's notice period is still running is held
until the period ends (`items.ItemDecider` holds it). A held item lives in the
partition store (`d:` and `D:` keys) and, so that it survives a partition moving to
another worker, on the compacted deferred topic, which `restore` replays.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping

from stream.core.batch import BatchResult, Isolated, OutputTopic, Produce, epoch_ms
from stream.core.codec import decode_content, decode_deferred
from stream.core.isolation import Failed, isolating
from stream.core.items import ItemDecider
from stream.core.models import ContentEvent
from stream.core.overlay import Overlay
from stream.core.state import (
    DEFERRED_PREFIX,
    PartitionStore,
    deferred_due_key,
    deferred_key,
    pack_due,
    split_deferred_key,
    split_item_id,
    unpack_due,
)


class HeldItems:
    """Decides held items that fall due; replays the deferred changelog into a store."""

    def __init__(self, decider: ItemDecider) -> None:
        self._decider = decider

    def process_due(self, store: PartitionStore, partition: int, now: dt.datetime, limit: int) -> BatchResult:
        """Decide again, with the state of now, up to `limit` deferred items whose time has come.

        A held item whose decision raises is released (fail closed) and reported in `isolated`.
        """
        now_ms = epoch_ms(now)

        def attempt(failed: Mapping[bytes, str]) -> BatchResult:
            result = BatchResult()
            ov = Overlay(store, partition)
            for key, raw in itertools.islice(store.scan(DEFERRED_PREFIX), limit):
                due_ms, item = split_deferred_key(key)
                if due_ms > now_ms:
                    break
                self._decide_due(ov, item, raw, now, result, release_only=item in failed)
            ov.settle(result)
            return result

        result, failed = isolating(attempt)
        result.isolated = [Isolated("held items", partition, -1, error) for error in failed.values()]
        return result

    def _decide_due(
        self, ov: Overlay, item: bytes, raw: bytes, now: dt.datetime, result: BatchResult, *, release_only: bool
    ) -> None:
        try:
            author_id, content_id = split_item_id(item)
            ov.set_held(author_id, content_id, item, None, None)
            result.produce.append(Produce(OutputTopic.DEFERRED, item, None, ov.partition))
            if release_only:
                result.released += 1
                return
            event = decode_content(author_id.encode(), raw)
            if isinstance(event, ContentEvent):
                self._decider.decide_event(ov, event, item, now, result)
        except Exception as exc:
            raise Failed(item, type(exc).__name__) from exc

    @staticmethod
    def restore(ov: Overlay, item: bytes, value: bytes | None) -> None:
        """Replay one record of the deferred changelog: replace the item's held copy, or (None) remove it."""
        previous = ov.get(deferred_due_key(item))
        if previous is not None:
            ov.put(deferred_key(unpack_due(previous), item), None)
            ov.put(deferred_due_key(item), None)
        if value is not None:
            due_ms, content = decode_deferred(value)
            ov.put(deferred_key(due_ms, item), content)
            ov.put(deferred_due_key(item), pack_due(due_ms))
