"""The worker's bookkeeping that needs no broker: which changelog offsets a batch may record, what the gate reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiokafka import TopicPartition

from stream.config import Settings
from stream.engine import Engine
from stream.metrics import Metrics
from stream.policy import load_policy
from stream.state import MemoryPartitionStore, RocksPartitionStore, StateKind
from stream.worker import FilterWorker, _GiveUp

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


class _FakeConsumer:
    """The consumer calls the gate makes, over in-memory logs; a fetch returns at most 2 records per partition."""

    def __init__(self, logs: dict[TopicPartition, int], positions: dict[TopicPartition, int]) -> None:
        self.logs = {
            tp: [_Record(tp.topic, tp.partition, o, b"k", b"{}", 0) for o in range(n)] for tp, n in logs.items()
        }
        self.positions = dict(positions)
        self.listed: list[list[TopicPartition]] = []

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.listed.append(list(tps))
        return {tp: len(self.logs.get(tp, [])) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[_Record]]:
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


def _offsets(records: list[Any], topic: str, partition: int) -> list[int]:
    return [r.offset for r in records if r.topic == topic and r.partition == partition]


async def test_gate_reads_content_to_the_end_listed_after_the_fetch_and_gates_every_partition_it_adds() -> None:
    # The fetch brought content 0 of partition 0; 4 more of it and 3 of partition 1 wait at the broker.
    consumer = _FakeConsumer(
        {
            TopicPartition(T.content, 0): 5,
            TopicPartition(T.content, 1): 3,
            TopicPartition(T.profiles, 0): 1,
            TopicPartition(T.objections, 1): 3,
        },
        {TopicPartition(T.content, 0): 1},
    )
    worker = _gating_worker(consumer)

    state, content = await worker._gate({0}, taken=1)

    assert _offsets(content, T.content, 0) == [1, 2, 3, 4]
    assert _offsets(content, T.content, 1) == [0, 1, 2]
    # State up to its end for partition 0 (in the batch from the start) and partition 1 (added).
    assert _offsets(state, T.profiles, 0) == [0]
    assert _offsets(state, T.objections, 1) == [0, 1, 2]
    # One ListOffsets request, for content and state of every partition.
    assert len(consumer.listed) == 1 and len(consumer.listed[0]) == 6


async def test_gate_of_a_full_batch_reads_only_the_state_of_its_partitions() -> None:
    consumer = _FakeConsumer(
        {TopicPartition(T.content, 0): 9, TopicPartition(T.profiles, 0): 3, TopicPartition(T.profiles, 1): 3},
        {TopicPartition(T.content, 0): 4},
    )
    worker = _gating_worker(consumer, max_batch=4)

    state, content = await worker._gate({0}, taken=4)

    assert content == []
    assert _offsets(state, T.profiles, 0) == [0, 1, 2]
    assert _offsets(state, T.profiles, 1) == []  # no content of partition 1 in the batch: not gated
    assert TopicPartition(T.content, 0) not in consumer.listed[0]


async def test_gate_gives_up_the_batch_when_a_stop_begins() -> None:
    consumer = _FakeConsumer({TopicPartition(T.profiles, 0): 3}, {})
    worker = _gating_worker(consumer)
    worker._stopping.set()

    with pytest.raises(_GiveUp):
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
