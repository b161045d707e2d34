"""After a recovery replay: judge every held and published item once, by the final state.

While a restored store catches up on the account topics, state is only applied
(`Engine.process(recovering=True)`): judging the items by each intermediate state
would retract items that a later state allowed. This pass then judges them, in
steps, held items first (`D:` sorts before `i:`), then the published index.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from stream.core.batch import BatchResult, Isolated
from stream.core.codec import decode_index
from stream.core.isolation import Failed, isolating
from stream.core.items import ItemDecider
from stream.core.models import Objection, Profile, RetractCause
from stream.core.overlay import Overlay
from stream.core.policy import decide
from stream.core.records import RETRACT_CAUSE_OF_REASON
from stream.core.state import (
    DEFERRED_DUE_PREFIX,
    PUBLISHED_PREFIX,
    PartitionStore,
    item_of_key,
    split_item_id,
    unpack_due,
)


class Recovery:
    """Judges a partition's held and published items by the current state, in steps."""

    def __init__(self, decider: ItemDecider) -> None:
        self._decider = decider

    def reevaluate_published(
        self, store: PartitionStore, partition: int, now: dt.datetime, after: bytes | None, limit: int
    ) -> tuple[BatchResult, bytes | None]:
        """Judge up to `limit` held and published items after key `after` by the current state.

        Each published item the rule now refuses is retracted, each held item is
        decided again (released, published or still held). Returns the result and the
        key to continue after, or None when the pass is complete. An item whose
        judgement raises fails closed: retracted, or released.
        """

        def attempt(failed: Mapping[bytes, str]) -> tuple[BatchResult, bytes | None]:
            result = BatchResult()
            ov = Overlay(store, partition)
            last = _Pass(self._decider, ov, now, result, failed).run(after, limit)
            ov.settle(result)
            return result, last

        (result, last), failed = isolating(attempt)
        result.isolated = [Isolated("published or held items", partition, -1, e) for e in failed.values()]
        return result, last


class _Pass:
    """One step of the pass: the overlay, the result and the author whose account is read now."""

    def __init__(
        self, decider: ItemDecider, ov: Overlay, now: dt.datetime, result: BatchResult, failed: Mapping[bytes, str]
    ) -> None:
        self._decider = decider
        self._ov = ov
        self._now = now
        self._result = result
        self._failed = failed
        self._accounts: dict[str, tuple[Profile | None, Objection | None]] = {}

    def run(self, after: bytes | None, limit: int) -> bytes | None:
        """Judge up to `limit` items after key `after`; the last key judged, or None at the end."""
        last: bytes | None = None
        for prefix in (DEFERRED_DUE_PREFIX, PUBLISHED_PREFIX):
            # A key `after` before this prefix's keys scans them all; past them, none.
            for key, value in self._ov.store.scan(prefix, after=after):
                if limit <= 0:
                    return last
                limit -= 1
                last = key
                item = item_of_key(prefix, key)
                try:
                    if prefix == DEFERRED_DUE_PREFIX:
                        self._held(item, value)
                    else:
                        self._published(item, value)
                except Exception as exc:
                    raise Failed(item, type(exc).__name__) from exc
        return None

    def _held(self, item: bytes, value: bytes) -> None:
        author_id, content_id = split_item_id(item)
        due_ms = unpack_due(value)
        release_only = item in self._failed
        self._decider.rejudge_held(self._ov, author_id, content_id, item, due_ms, self._now, self._result, release_only)

    def _published(self, item: bytes, value: bytes) -> None:
        author_id, content_id = split_item_id(item)
        profile, objection = self._account(author_id)
        event = decode_index(author_id, content_id, value)
        decision = decide(event, profile, objection, self._decider.policy, self._now)
        if not decision.eligible or item in self._failed:
            cause = RETRACT_CAUSE_OF_REASON.get(decision.reason, RetractCause.ACCOUNT_CHANGED)
            now, partition = self._now, self._ov.partition
            self._decider.retract(
                self._ov, author_id, content_id, f"recovery:{partition}", now, cause, now, self._result
            )

    def _account(self, author_id: str) -> tuple[Profile | None, Objection | None]:
        if author_id not in self._accounts:
            self._accounts.clear()  # keys come in author order: one author's state at a time
            self._accounts[author_id] = (
                self._decider.profile(self._ov, author_id),
                self._decider.objection(self._ov, author_id),
            )
        return self._accounts[author_id]
