"""The deferral timer: held items decided again when their time comes, and the sweep that forgets old items.

Both are work on a timer, off the path of every batch: at most once a
`DUE_PERIOD_SECONDS` the stores are looked at for due held items, and every
`EXPIRY_PERIOD_SECONDS` a step of the sweep over the items' latest events forgets
those past their memory (`engine.expire_items`). The results are performed by the
batch cycle, after the tail of the batch before (`settle`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from stream.config import DUE_STEP_ITEMS
from stream.core.engine import BatchResult, Engine
from stream.core.state import PartitionStore, earliest_due_ms

log = logging.getLogger(__name__)

# Deferred items (held for days) are looked for at most this often.
DUE_PERIOD_SECONDS = 1.0
# The items' latest events are swept for expired ones this often, this many keys a
# partition at a time: a full sweep of 10M items takes under 3 hours, against 8 days
# of memory (STREAM_ITEM_MEMORY_DAYS), at well under a millisecond of the loop a second.
EXPIRY_PERIOD_SECONDS = 10.0
EXPIRY_SCAN_KEYS = 2000


class DeferralTimer:
    """Looks after held items and the items' memory in the stores of `stores` (the worker's live mapping)."""

    def __init__(
        self,
        engine: Engine,
        stores: Mapping[int, PartitionStore],
        *,
        settle: Callable[[], Awaitable[None]],
        perform: Callable[[BatchResult], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._engine = engine
        self._stores = stores
        self._settle = settle
        self._perform = perform
        self._clock = clock
        self._now = now
        self._due_at = 0.0
        self._expired_at = 0.0
        # Where each partition's sweep over the items' latest events goes on.
        self._expiry_cursor: dict[int, bytes | None] = {}

    async def tick(self) -> None:
        """Decide due held items, and take a step of the sweep when its period passed; at most once a period."""
        if self._clock() - self._due_at < DUE_PERIOD_SECONDS:
            return
        self._due_at = self._clock()
        await self._settle()  # the store as every batch before left it
        now = self._now()
        now_ms = int(now.timestamp() * 1000)
        for partition, store in self._stores.items():
            due = earliest_due_ms(store)
            if due is None or due > now_ms:
                continue
            result = self._engine.process_due(store, partition, now, DUE_STEP_ITEMS)
            await self._perform(result)
            log.info("decided %d deferred items of partition %d again", sum(result.decisions.values()), partition)
        if self._clock() - self._expired_at >= EXPIRY_PERIOD_SECONDS:
            self._expired_at = self._clock()
            await self._sweep(now)

    async def _sweep(self, now: dt.datetime) -> None:
        for partition, store in self._stores.items():
            after = self._expiry_cursor.get(partition)
            result, self._expiry_cursor[partition] = self._engine.expire_items(
                store, partition, now, after, EXPIRY_SCAN_KEYS
            )
            if result.last:
                await self._perform(result)
