"""Offsets (stream/runtime/offsets.py): commit pacing, the changelogs' next offsets, rewinding the inputs."""

from __future__ import annotations

from aiokafka import TopicPartition

from stream.core.state import StateKind
from stream.runtime.metrics import Metrics
from stream.runtime.offsets import ContentCommits, InputPositions, changelog_offsets
from stream.runtime.store import MemoryPartitionStore

from .fake_kafka import C0, C1, O0, O1, P0, P1, FakeConsumer, Record, T

KINDS = {T.published: StateKind.PUBLISHED, T.deferred: StateKind.DEFERRED, T.items: StateKind.ITEMS}


def _stores(stored_offset: int) -> dict[int, MemoryPartitionStore]:
    store = MemoryPartitionStore()
    store.apply((), {StateKind.PUBLISHED: stored_offset, StateKind.DEFERRED: stored_offset})
    return {0: store}


def test_changelog_offsets_batches_following_the_stored_offset_advance_it() -> None:
    # Acknowledged out of order, two batches of 3 and 2 records from offset 10, on one partition.
    acked = [(T.published, 0, 2, 13), (T.published, 0, 3, 10), (T.deferred, 0, 1, 10)]

    assert changelog_offsets(acked, _stores(10), KINDS) == {0: {StateKind.PUBLISHED: 15, StateKind.DEFERRED: 11}}


def test_changelog_offsets_gap_before_or_between_batches_leaves_the_offset_for_the_next_restore() -> None:
    stores = _stores(10)
    # Offset 10..11 was written by someone else (a previous owner): they must be read back.
    assert changelog_offsets([(T.published, 0, 3, 12)], stores, KINDS) == {}
    # The first batch follows on, the second does not: nothing moves.
    assert changelog_offsets([(T.published, 0, 3, 10), (T.published, 0, 2, 14)], stores, KINDS) == {}


def test_changelog_offsets_other_outputs_and_partitions_not_held_record_nothing() -> None:
    assert changelog_offsets([(T.feed, 0, 5, 10), (T.published, 3, 2, 10)], _stores(10), KINDS) == {}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _commits(interval_ms: int) -> tuple[ContentCommits, FakeConsumer, _Clock]:
    consumer, clock = FakeConsumer({}), _Clock()
    return ContentCommits(consumer, T.content, interval_ms, Metrics.create(), clock=clock), consumer, clock


def _content(partition: int, *offsets: int) -> list[Record]:
    return [Record(T.content, partition, o, b"k", b"{}", 0) for o in offsets]


async def test_commits_within_the_interval_share_one_commit_sent_when_forced() -> None:
    commits, consumer, _ = _commits(interval_ms=60_000)

    await commits.mark_done(_content(0, 0, 1))  # the first commits at once
    await commits.mark_done(_content(0, 2) + _content(1, 0))
    await commits.mark_done(_content(0, 3))
    await commits.settle()
    assert consumer.commits == [{C0: 2}]

    await commits.flush(force=True)  # a stop, a rewind or a rebalance: everything acknowledged is committed
    await commits.settle()
    assert consumer.commits[1:] == [{C0: 4, C1: 1}]


async def test_commits_interval_zero_commits_every_batch_in_order() -> None:
    commits, consumer, _ = _commits(interval_ms=0)

    await commits.mark_done(_content(0, 0, 1))
    await commits.mark_done(_content(0, 2))
    await commits.settle()

    assert consumer.commits == [{C0: 2}, {C0: 3}]


async def test_commits_idle_stream_committed_by_flush_once_the_interval_passed() -> None:
    commits, consumer, clock = _commits(interval_ms=60_000)
    await commits.mark_done(_content(0, 0))
    await commits.mark_done(_content(0, 1))
    await commits.flush()
    await commits.settle()
    assert len(consumer.commits) == 1  # within the interval: held

    clock.now += 61  # the interval has passed
    await commits.flush()
    await commits.settle()
    assert consumer.commits[-1] == {C0: 2}


async def test_commits_nothing_marked_done_sends_no_commit() -> None:
    commits, consumer, _ = _commits(interval_ms=0)

    await commits.flush(force=True)
    await commits.settle()

    assert consumer.commits == []


async def test_rewind_content_to_the_commit_or_beginning_and_state_to_the_stores_offsets() -> None:
    consumer = FakeConsumer({})
    consumer.committed_offsets = {C0: 7}  # C1 never committed
    store = MemoryPartitionStore()
    store.apply((), {StateKind.PROFILES: 3, StateKind.OBJECTIONS: 5})
    positions = InputPositions(consumer, T, {0: store})  # partition 1 has no store (revoked meanwhile)

    await positions.rewind()

    assert consumer.seeks == {C0: 7, C1: None, P0: 3, O0: 5}
    assert P1 not in consumer.seeks and O1 not in consumer.seeks


def test_seek_state_only_partitions_with_a_store() -> None:
    consumer = FakeConsumer({})
    store = MemoryPartitionStore()
    store.apply((), {StateKind.OBJECTIONS: 9})
    positions = InputPositions(consumer, T, {1: store})

    positions.seek_state([P0, O1])

    assert consumer.seeks == {O1: 9}


async def test_commits_carry_the_state_positions_that_moved_paced_like_content() -> None:
    consumer, clock = FakeConsumer({}), _Clock()
    applied = {P0: 3, O0: 5}
    metrics = Metrics.create()
    commits = ContentCommits(consumer, T.content, 60_000, metrics, state_positions=lambda: dict(applied), clock=clock)

    await commits.mark_done(_content(0, 0, 1))
    await commits.settle()
    assert consumer.commits == [{C0: 2, P0: 3, O0: 5}]  # with the first content commit

    applied[O0] = 8  # objections applied, no content: committed once the interval passed, alone
    await commits.flush()
    await commits.settle()
    assert len(consumer.commits) == 1
    last_batch = metrics.registry.get_sample_value("eligibility_last_batch_timestamp_seconds")
    clock.now += 61
    await commits.flush()
    await commits.settle()
    assert consumer.commits[-1] == {O0: 8}  # only what moved
    assert metrics.registry.get_sample_value("eligibility_last_batch_timestamp_seconds") == last_batch

    clock.now += 61  # nothing moved: no commit
    await commits.flush()
    await commits.settle()
    assert len(consumer.commits) == 2


async def test_commits_state_positions_of_a_failed_commit_are_sent_again() -> None:
    from aiokafka.errors import CommitFailedError

    class Rebalancing(FakeConsumer):
        failing = True

        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            if self.failing:
                raise CommitFailedError("rebalanced")
            await super().commit(offsets)

    consumer = Rebalancing({})
    commits = ContentCommits(consumer, T.content, 0, Metrics.create(), state_positions=lambda: {O0: 4})
    await commits.flush(force=True)
    await commits.settle()
    consumer.failing = False
    await commits.flush(force=True)
    await commits.settle()
    assert consumer.commits == [{O0: 4}]


def test_applied_state_is_each_assigned_state_partitions_store_offset() -> None:
    consumer = FakeConsumer({})
    store = MemoryPartitionStore()
    store.apply((), {StateKind.PROFILES: 3, StateKind.OBJECTIONS: 5})
    positions = InputPositions(consumer, T, {0: store})  # partition 1 has no store: nothing for it

    assert positions.applied_state() == {P0: 3, O0: 5}
