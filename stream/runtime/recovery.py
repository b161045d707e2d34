"""Recovery: the state of newly assigned partitions brought up to date before any of their content is decided.

Three steps, in order (docs/design.md, "Recovery and rebalances"): our changelogs
(published index, held items, the items' latest events) restored from each store's
offset to their end; the profile and objection history replayed from the store's
offsets to the end offsets as of now, applying state only; then one pass judging
every held and published item by the final state (the re-evaluation), repeated if a
crash interrupted it (a durable flag, `REEVALUATE_KEY`). Gives up (`GiveUp`) at its
next read, or in the read in hand, when a stop or a rebalance begins; each step keeps
what it applied with its offsets, so the next recovery resumes there.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.config import (
    LAGGING_READ_WAIT_MS,
    REEVALUATE_STEP_ITEMS,
    REPLAY_READ_RECORDS,
    RESTORE_READ_RECORDS,
    Settings,
)
from stream.connection import client_options
from stream.core.engine import BatchResult, Engine, InputRecord
from stream.core.state import REEVALUATE_KEY, PartitionStore, StateKind
from stream.runtime.fetches import fetch
from stream.runtime.intake import Intake
from stream.runtime.interrupt import Interruption
from stream.runtime.metrics import Metrics
from stream.runtime.writer import StoreWriter

log = logging.getLogger(__name__)

# Applies state records as a recovering batch (decided, performed to the end).
ApplyState = Callable[[Sequence[InputRecord]], Awaitable[None]]
# Performs a result decided outside a batch, to the end.
Perform = Callable[[BatchResult], Awaitable[None]]


class Recovery:
    """Recovers the stores of `stores` (the worker's live mapping), reading through a started consumer."""

    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        stores: Mapping[int, PartitionStore],
        engine: Engine,
        *,
        apply_state: ApplyState,
        perform: Perform,
        writer: StoreWriter,
        intake: Intake,
        interruption: Interruption,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._consumer = consumer
        self._stores = stores
        self._engine = engine
        self._apply_state = apply_state
        self._perform = perform
        self._writer = writer
        self._intake = intake
        self._interruption = interruption
        self._metrics = metrics
        topics = settings.topics
        self._state_topics = (topics.profiles, topics.objections)
        self._changelog_kinds = {
            topics.published: StateKind.PUBLISHED,
            topics.deferred: StateKind.DEFERRED,
            topics.items: StateKind.ITEMS,
        }
        self._needed = True

    @property
    def needed(self) -> bool:
        """Partitions were assigned since the last recovery finished (or none ever did)."""
        return self._needed

    def request(self) -> None:
        """Partitions were assigned: recover before their next batch is decided."""
        self._needed = True

    async def recover(self, partitions: Iterable[int], state: Sequence[InputRecord]) -> None:
        """All three steps for `partitions`; `state` is the fetch's own state records, applied before the replay."""
        partitions = sorted(partitions)
        # Published items and deferrals first: applying state may retract or re-decide them.
        self._metrics.recovering.set(1)
        started = time.monotonic()
        await self.restore_changelogs(partitions)
        if state:  # before the replay, which reads the records after these
            await self._apply_state(state)
        await self.replay(partitions)
        await self.reevaluate()
        self._needed = False
        # What start-up and recovery built stays for the process's life: out of the
        # collector's sight, a full collection no longer walks it mid-batch.
        gc.freeze()
        self._metrics.recovering.set(0)
        log.info(
            "state of partitions %s restored and caught up in %.1fs; ready", partitions, time.monotonic() - started
        )

    async def restore_changelogs(self, partitions: Iterable[int]) -> None:
        """Replay our changelogs from each store's offset to their end, with a reader of their own."""
        tps = {TopicPartition(topic, p): p for topic in self._changelog_kinds for p in partitions}
        reader = AIOKafkaConsumer(
            **client_options(self._settings),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id=f"{self._settings.group_id}-restore",
        )
        await reader.start()
        try:
            reader.assign(list(tps))
            ends = await reader.end_offsets(list(tps))
            for tp, p in tps.items():
                reader.seek(tp, self._stores[p].next_offset(self._changelog_kinds[tp.topic]))
            pending = [tp for tp in tps if await reader.position(tp) < ends[tp]]
            while pending:
                # A stop or a rebalance waits for no whole restore (minutes on a large
                # partition): what was applied stays with its offsets, and the next
                # recovery resumes there.
                fetched = await self._interruption.read(
                    fetch, reader, *pending, timeout_ms=LAGGING_READ_WAIT_MS, max_records=RESTORE_READ_RECORDS
                )
                for tp, records in fetched.items():
                    kind = self._changelog_kinds[tp.topic]
                    store = self._stores[tps[tp]]
                    updates, counts = self._engine.restore(kind, store, records)
                    await self._writer.call(store.apply, updates, {kind: records[-1].offset + 1}, counts)
                pending = [tp for tp in pending if await reader.position(tp) < ends[tp]]
            for tp, p in tps.items():  # compaction may leave the end past the last record
                self._stores[p].apply((), {self._changelog_kinds[tp.topic]: ends[tp]})
        finally:
            await reader.stop()

    async def replay(self, partitions: Iterable[int]) -> None:
        """Apply the profiles and objections of `partitions` up to their end offsets as of now."""
        consumer = self._consumer
        tps = [TopicPartition(topic, p) for p in partitions for topic in self._state_topics]
        if not tps:
            return
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        while True:
            self._interruption.check()
            lagging = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not lagging:
                return
            fetched = await self._interruption.read(
                fetch, consumer, *lagging, timeout_ms=LAGGING_READ_WAIT_MS, max_records=REPLAY_READ_RECORDS
            )
            records: list[InputRecord] = []
            for tp in lagging:
                got = fetched.get(tp, [])
                records.extend(got)
                self._intake.count(tp, len(got))
            if records:
                await self._apply_state(records)

    async def reevaluate(self, *, step: int = REEVALUATE_STEP_ITEMS) -> None:
        """After a replay: judge every held and published item of a flagged store by the final state, in steps."""
        for partition, store in self._stores.items():
            if store.get(REEVALUATE_KEY) is None:
                continue
            after: bytes | None = None
            while True:
                self._interruption.check()
                now = dt.datetime.now(dt.UTC)
                result, after = self._engine.reevaluate_published(store, partition, now, after, step)
                await self._perform(result)
                if after is None:
                    break
            await self._writer.call(store.apply, [(REEVALUATE_KEY, None)])
