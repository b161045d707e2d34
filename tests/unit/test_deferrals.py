"""The deferral timer (stream/runtime/deferrals.py): due held items decided again, the items' memory swept."""

from __future__ import annotations

import datetime as dt

from stream.core.engine import BatchResult, OutputTopic, Produce
from stream.core.state import deferred_key, item_id
from stream.runtime.deferrals import DUE_PERIOD_SECONDS, EXPIRY_PERIOD_SECONDS, DeferralTimer
from stream.runtime.store import MemoryPartitionStore

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
NOW_MS = int(NOW.timestamp() * 1000)


class _Engine:
    """Records what the timer asks of the engine; every answer is one record to perform."""

    def __init__(self) -> None:
        self.due: list[int] = []
        self.swept: list[tuple[int, bytes | None]] = []

    def process_due(self, store: object, partition: int, now: dt.datetime, limit: int) -> BatchResult:
        self.due.append(partition)
        return BatchResult(produce=[Produce(OutputTopic.DECISIONS, b"k", b"v", partition)])

    def expire_items(
        self, store: object, partition: int, now: dt.datetime, after: bytes | None, limit: int
    ) -> tuple[BatchResult, bytes | None]:
        self.swept.append((partition, after))
        return BatchResult(last=[Produce(OutputTopic.ITEMS, b"k", None, partition)]), b"cursor-%d" % partition


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _timer(stores: dict[int, MemoryPartitionStore]) -> tuple[DeferralTimer, _Engine, list[BatchResult], _Clock]:
    engine, performed, clock = _Engine(), [], _Clock()
    settled: list[None] = []

    async def settle() -> None:
        settled.append(None)

    async def perform(result: BatchResult) -> None:
        performed.append(result)

    timer = DeferralTimer(engine, stores, settle=settle, perform=perform, clock=clock, now=lambda: NOW)
    return timer, engine, performed, clock


def _holding(due_ms: int) -> MemoryPartitionStore:
    store = MemoryPartitionStore()
    store.apply([(deferred_key(due_ms, item_id("a-1", "c-1")), b"{}")])
    return store


async def test_tick_decides_only_partitions_with_a_held_item_due() -> None:
    timer, engine, performed, _ = _timer(
        {0: _holding(NOW_MS - 1), 1: _holding(NOW_MS + 60_000), 2: MemoryPartitionStore()}
    )

    await timer.tick()

    assert engine.due == [0]
    assert len(performed) == 1 + 3  # partition 0's due items, then a sweep step of every partition


async def test_tick_within_the_period_does_nothing() -> None:
    timer, engine, _, clock = _timer({0: _holding(NOW_MS - 1)})
    await timer.tick()

    clock.now += DUE_PERIOD_SECONDS / 2
    await timer.tick()

    assert engine.due == [0]


async def test_tick_sweeps_every_expiry_period_from_where_the_last_step_ended() -> None:
    timer, engine, _, clock = _timer({0: MemoryPartitionStore()})
    await timer.tick()
    clock.now += DUE_PERIOD_SECONDS
    await timer.tick()  # due items looked for, but the sweep's period has not passed

    clock.now += EXPIRY_PERIOD_SECONDS
    await timer.tick()

    assert engine.swept == [(0, None), (0, b"cursor-0")]
