"""The worker's bookkeeping that needs no broker: which changelog offsets a batch may record, what the gate reads."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from aiokafka import TopicPartition

import stream.runtime.worker
from stream.config import Settings
from stream.core.engine import Engine
from stream.core.policy import load_policy
from stream.core.state import StateKind
from stream.errors import GateStallError
from stream.runtime.metrics import Metrics
from stream.runtime.store import MemoryPartitionStore, RocksPartitionStore
from stream.runtime.worker import TOP_UP_AFTER_MS, TOP_UP_WAIT_MS, FilterWorker, _GiveUp

PUBLISHED = Settings().topics.published
DEFERRED = Settings().topics.deferred


def _worker(stored_offset: int) -> FilterWorker:
    settings = Settings()
    worker = FilterWorker(settings, Engine(load_policy(None), b"k", settings.topics), Metrics.create())
    store = MemoryPartitionStore()
    store.apply((), {StateKind.PUBLISHED: stored_offset, StateKind.DEFERRED: stored_offset})
    worker._stores = {0: store}
    return worker


def test_changelog_batches_that_follow_the_stored_offset_advance_it() -> None:
    worker = _worker(10)

    # Acknowledged out of order, two batches of 3 and 2 records from offset 10, on one partition.
    offsets = worker._changelog_offsets([(PUBLISHED, 0, 2, 13), (PUBLISHED, 0, 3, 10), (DEFERRED, 0, 1, 10)])

    assert offsets == {0: {StateKind.PUBLISHED: 15, StateKind.DEFERRED: 11}}


def test_a_gap_before_or_between_batches_leaves_the_offset_for_the_next_restore() -> None:
    worker = _worker(10)

    # Offset 10..11 was written by someone else (a previous owner): they must be read back.
    assert worker._changelog_offsets([(PUBLISHED, 0, 3, 12)]) == {}
    # The first batch follows on, the second does not: nothing moves.
    assert worker._changelog_offsets([(PUBLISHED, 0, 3, 10), (PUBLISHED, 0, 2, 14)]) == {}


def test_outputs_other_than_changelogs_and_partitions_not_held_record_nothing() -> None:
    worker = _worker(10)

    assert worker._changelog_offsets([(Settings().topics.feed, 0, 5, 10), (PUBLISHED, 3, 2, 10)]) == {}


def test_a_store_of_an_older_layout_is_rebuilt_not_misread(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    worker = FilterWorker(settings, Engine(load_policy(None), b"k", settings.topics), Metrics.create())
    path = tmp_path / "state" / "partition-0"
    old = RocksPartitionStore(path)
    old.apply([(b"p:a-1", b'{"account_id": "a-1"}')], {StateKind.PROFILES: 7})
    old._db.delete(b"\x00format")  # as written before the layout was recorded
    old.close()

    store = worker._open_store(0)
    try:
        assert store.compatible()
        assert store.get(b"p:a-1") is None and store.next_offset(StateKind.PROFILES) == 0  # rebuilt from scratch
    finally:
        store.close()


# -- the freshness gate and the content top-up ------------------------------------------


class _Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def _now_ms() -> int:
    return int(time.time() * 1000)


def _just_fetched() -> int:
    """A fetch stamp that stays "just now" however slowly the test runs (no top-up for it)."""
    return _now_ms() + 60_000


# Every partition of the workers below: a fetch response carries all of them.
_ASSIGNED = [TopicPartition(t, p) for t in (Settings().topics.content, *Settings().topics.inputs()[1:]) for p in (0, 1)]


class _FakeConsumer:
    """The consumer calls the gate makes, over in-memory logs; a fetch returns at most 2 records per partition.

    A `getmany()` of every partition stands for a fetch response: like aiokafka, it
    stamps each partition with the response's arrival time and the stable offset the
    broker read (`stamps`, `stable`). `getmany(*tps)` returns records of those
    partitions only, as aiokafka's does from its buffer.
    """

    def __init__(
        self,
        logs: dict[TopicPartition, int],
        positions: dict[TopicPartition, int],
        *,
        stamps: dict[TopicPartition, int] | None = None,
        stable: dict[TopicPartition, int] | None = None,
        leaders: dict[TopicPartition, int] | None = None,
    ) -> None:
        self.logs = {
            tp: [_Record(tp.topic, tp.partition, o, b"k", b"{}", 0) for o in range(n)] for tp, n in logs.items()
        }
        self.positions = dict(positions)
        self.stamps = dict(stamps or {})
        self.stable = dict(stable or {})
        self.leaders = dict(leaders or {})
        self._client = SimpleNamespace(cluster=SimpleNamespace(leader_for_partition=lambda tp: self.leaders.get(tp, 1)))
        self.listed: list[list[TopicPartition]] = []
        self.calls: list[tuple[tuple[TopicPartition, ...], int]] = []

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.listed.append(list(tps))
        return {tp: len(self.logs.get(tp, [])) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.stamps.get(tp)

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.stable.get(tp)

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[_Record]]:
        self.calls.append((tps, timeout_ms))
        if not tps:  # a fetch response for every partition
            for tp in _ASSIGNED:
                self.stamps[tp] = _now_ms()
                self.stable[tp] = len(self.logs.get(tp, []))
        out: dict[TopicPartition, list[_Record]] = {}
        for tp in tps or self.logs:
            at = self.positions.get(tp, 0)
            got = self.logs.get(tp, [])[at : at + min(2, max_records - sum(map(len, out.values())))]
            if got:
                out[tp] = got
                self.positions[tp] = at + len(got)
        return out


def _gating_worker(consumer: _FakeConsumer, max_batch: int = 100) -> FilterWorker:
    settings = Settings(max_batch=max_batch)
    worker = FilterWorker(settings, Engine(load_policy(None), b"k", settings.topics), Metrics.create())
    worker._stores = {0: MemoryPartitionStore(), 1: MemoryPartitionStore()}
    worker.consumer = consumer  # type: ignore[assignment]
    return worker


T = Settings().topics
C0, C1 = TopicPartition(T.content, 0), TopicPartition(T.content, 1)
P0, P1 = TopicPartition(T.profiles, 0), TopicPartition(T.profiles, 1)
O0, O1 = TopicPartition(T.objections, 0), TopicPartition(T.objections, 1)


def _offsets(records: list[Any], topic: str, partition: int) -> list[int]:
    return [r.offset for r in records if r.topic == topic and r.partition == partition]


def _listings(worker: FilterWorker) -> float:
    return worker.metrics.registry.get_sample_value("eligibility_gate_listings_total") or 0.0


async def test_gate_reads_state_up_to_the_stable_offsets_of_the_contents_fetch_without_asking_the_broker() -> None:
    # One fetch response brought content 0-2 of partition 0 and stamped its state:
    # profiles stable at 3 (one record read so far), objections at 1 (read). Two more
    # profiles were appended after that fetch: the gate need not wait for them.
    now = _just_fetched()
    consumer = _FakeConsumer(
        {C0: 3, P0: 5, O0: 1},
        {C0: 3, P0: 1, O0: 1},
        stamps={C0: now, P0: now, O0: now},
        stable={C0: 3, P0: 3, O0: 1},
    )
    worker = _gating_worker(consumer)

    state, content = await worker._gate({0}, taken=3)

    assert content == []  # fresh content: no top-up
    assert _offsets(state, T.profiles, 0) == [1, 2]  # up to the stable offset 3
    assert await consumer.position(P0) >= 3
    assert consumer.listed == [] and _listings(worker) == 0
    assert all(tps for tps, _ in consumer.calls)  # only reads of the lagging state, no fetch awaited


async def test_gate_lists_the_end_of_a_state_partition_left_out_of_the_contents_fetch() -> None:
    # The profiles of partition 0 were last stamped by an older response than the
    # content's (they had records waiting when the content was fetched): their stable
    # offset proves nothing about the content's time, so their end is listed now.
    now = _just_fetched()
    consumer = _FakeConsumer(
        {C0: 1, P0: 3, O0: 2},
        {C0: 1, P0: 1, O0: 2},
        stamps={C0: now, P0: now - 50, O0: now},
        stable={C0: 1, P0: 1, O0: 2},
    )
    worker = _gating_worker(consumer)

    state, _ = await worker._gate({0}, taken=1)

    assert consumer.listed == [[P0]]
    assert _offsets(state, T.profiles, 0) == [1, 2]  # to the listed end 3, past the stale stable offset 1
    assert _offsets(state, T.objections, 0) == []  # proven by the response: already read
    assert _listings(worker) == 1


async def test_gate_lists_the_end_of_a_state_partition_led_by_another_broker() -> None:
    # Stamps of responses from two brokers order their arrivals, not the brokers' reads.
    now = _just_fetched()
    consumer = _FakeConsumer(
        {C0: 1, P0: 1, O0: 2},
        {C0: 1, P0: 1, O0: 0},
        stamps={C0: now, P0: now, O0: now + 5},
        stable={C0: 1, P0: 1, O0: 0},
        leaders={O0: 2},
    )
    worker = _gating_worker(consumer)

    state, _ = await worker._gate({0}, taken=1)

    assert consumer.listed == [[O0]]
    assert _offsets(state, T.objections, 0) == [0, 1]


async def test_gate_tops_up_old_content_with_the_next_fetch_and_gates_every_partition_it_adds() -> None:
    # The batch's content of partition 0 was fetched a while ago; since then 2 more of
    # it, 2 of partition 1 and an objection of partition 1 reached the broker.
    old = _now_ms() - 10 * TOP_UP_AFTER_MS
    consumer = _FakeConsumer(
        {C0: 3, C1: 2, P0: 1, O1: 1},
        {C0: 1, P0: 1},
        stamps={C0: old, P0: old, O0: old},
        stable={C0: 1, P0: 1},
    )
    worker = _gating_worker(consumer)

    state, content = await worker._gate({0}, taken=1)

    assert consumer.calls[0] == ((), TOP_UP_WAIT_MS)  # the next fetch, awaited briefly
    assert _offsets(content, T.content, 0) == [1, 2]
    assert _offsets(content, T.content, 1) == [0, 1]
    assert _offsets(state, T.objections, 1) == [0]  # partition 1 joined the batch, so it is gated
    assert consumer.listed == []


async def test_gate_of_a_full_batch_does_not_top_up_and_gates_only_its_partitions() -> None:
    old = _now_ms() - 10 * TOP_UP_AFTER_MS
    consumer = _FakeConsumer(
        {C0: 9, P0: 3, P1: 3},
        {C0: 4},
        stamps={C0: old, P0: old, O0: old, P1: old},
        stable={C0: 4, P0: 3, P1: 3, O0: 0},
    )
    worker = _gating_worker(consumer, max_batch=4)

    state, content = await worker._gate({0}, taken=4)

    assert content == []
    assert all(tps for tps, _ in consumer.calls)  # no top-up fetch
    assert _offsets(state, T.profiles, 0) == [0, 1, 2]
    assert _offsets(state, T.profiles, 1) == []  # no content of partition 1 in the batch: not gated


async def test_gate_gives_up_the_batch_when_a_stop_begins() -> None:
    consumer = _FakeConsumer({P0: 3}, {})
    worker = _gating_worker(consumer)
    worker._stopping.set()

    with pytest.raises(_GiveUp):
        await worker._gate({0}, taken=1)


class _SilentConsumer(_FakeConsumer):
    """Lists end offsets past the position, then serves no record: a broker that answers but no longer serves."""

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[_Record]]:
        self.calls.append((tps, timeout_ms))
        return {}


async def test_gate_fails_its_batch_when_state_partitions_stop_yielding_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream.runtime.worker, "GATE_STALL_SECONDS", 0.05)
    worker = _gating_worker(_SilentConsumer({P0: 3, O0: 3}, {}, stamps={C0: _just_fetched()}))

    with pytest.raises(GateStallError, match="2 state partitions got no record"):
        await worker._gate({0}, taken=1)


# -- commit pacing ---------------------------------------------------------------------


class _CommitRecorder:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


def _committing_worker(interval_ms: int) -> tuple[FilterWorker, _CommitRecorder]:
    settings = Settings(commit_interval_ms=interval_ms)
    worker = FilterWorker(settings, Engine(load_policy(None), b"k", settings.topics), Metrics.create())
    recorder = _CommitRecorder()
    worker.consumer = recorder  # type: ignore[assignment]
    return worker, recorder


def _content(partition: int, *offsets: int) -> list[_Record]:
    return [_Record(T.content, partition, o, b"k", b"{}", 0) for o in offsets]


async def test_acknowledged_batches_within_the_interval_share_one_commit_sent_when_work_stops() -> None:
    worker, recorder = _committing_worker(interval_ms=60_000)

    await worker._commit(_content(0, 0, 1))  # the first commits at once
    await worker._commit(_content(0, 2) + _content(1, 0))
    await worker._commit(_content(0, 3))
    await worker._settle_commit()
    assert recorder.commits == [{TopicPartition(T.content, 0): 2}]

    await worker._settle(commit=True)  # a stop, a rewind or a rebalance: everything acknowledged is committed
    assert recorder.commits[1:] == [{TopicPartition(T.content, 0): 4, TopicPartition(T.content, 1): 1}]


async def test_an_interval_of_zero_commits_every_batch_in_order() -> None:
    worker, recorder = _committing_worker(interval_ms=0)

    await worker._commit(_content(0, 0, 1))
    await worker._commit(_content(0, 2))
    await worker._settle(commit=True)

    assert recorder.commits == [{TopicPartition(T.content, 0): 2}, {TopicPartition(T.content, 0): 3}]


async def test_the_loop_commits_what_an_idle_stream_left_once_the_interval_passed() -> None:
    worker, recorder = _committing_worker(interval_ms=60_000)
    await worker._commit(_content(0, 0))
    await worker._commit(_content(0, 1))
    await worker._flush_commit()
    await worker._settle_commit()
    assert len(recorder.commits) == 1  # within the interval: held

    worker._committed_at -= 61  # the interval has passed
    await worker._flush_commit()
    await worker._settle_commit()
    assert recorder.commits[-1] == {TopicPartition(T.content, 0): 2}
