"""Offsets: the content offsets (and, for display, the state positions) committed to the group, paced and in
order; the changelogs' next offsets a batch may record; repositioning the inputs to what is durably done.

The content offsets the group holds are what a restart resumes from. The state
topics' and changelogs' next offsets live in each partition store (written with the
state they produced), and only there are they read back. The state topics' positions
are committed to the group as well, for display only: standard lag exporters
(kafka-lag-exporter, Burrow, kafka-exporter's kafka_consumergroup_lag) read a group's
committed offsets, and without them would see no objection lag, not even while no
worker runs. Nothing here or elsewhere reads them back: an assignment seeks every
state partition to its store's offset (`InputPositions.seek_state`), and a store that
is new or rebuilt starts from the beginning of the topic, whatever the group holds.
This module decides nothing about records and sends none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from stream.config import TopicNames
from stream.core.engine import InputRecord
from stream.core.state import PartitionStore, StateKind
from stream.runtime.metrics import Metrics
from stream.runtime.sender import Acked

log = logging.getLogger(__name__)


class ContentCommits:
    """Marks acknowledged content done and commits it at most once per interval; commits stay in order.

    A commit per batch was one more request per batch for the worker and for the
    broker's group coordinator, ~10 ms of p99 latency at 3,000 events/s on the
    benchmark machine (docs/benchmarks.md). What the interval bounds is only how
    much a crash replays: every output of what a commit covers was acknowledged.

    The same commits carry the state topics' positions that moved since the last one
    (`state_positions`: each assigned state partition's next offset as its store
    recorded it), for display only (see the module's docstring).
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        content_topic: str,
        interval_ms: int,
        metrics: Metrics,
        *,
        state_positions: Callable[[], Mapping[TopicPartition, int]] = dict,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._content = content_topic
        self._interval = interval_ms / 1000
        self._metrics = metrics
        self._state_positions = state_positions
        self._clock = clock
        # Acknowledged batches' next content offsets, not yet sent in a commit.
        self._uncommitted: dict[TopicPartition, int] = {}
        # The state positions the group holds (as far as this worker committed them).
        self._state_committed: dict[TopicPartition, int] = {}
        self._committed_at = 0.0
        self._lock = asyncio.Lock()
        self._in_flight: asyncio.Task[None] | None = None

    async def mark_done(self, content: Sequence[InputRecord]) -> None:
        """Mark an acknowledged batch's content done; commit if the last commit is old enough."""
        ends: dict[int, int] = {}  # per partition first: no TopicPartition built per record
        for record in content:
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
        offsets = self._uncommitted
        for partition, end in ends.items():
            tp = TopicPartition(self._content, partition)
            offsets[tp] = max(offsets.get(tp, 0), end)
        await self.flush()

    async def flush(self, *, force: bool = False) -> None:
        """Commit what is marked done and the state positions that moved, at most once per interval unless `force`."""
        if not force and self._clock() - self._committed_at < self._interval:
            return
        # The commit goes out while the next batch is decided: its outputs are
        # acknowledged already, so only the amount a crash replays depends on it.
        # Commits stay in order: each waits for the one before, under a lock of
        # their own, since the loop and a batch's tail both commit.
        async with self._lock:
            await self.settle()
            positions = self._state_positions()
            # Forget partitions no longer held: another worker may have moved them on.
            self._state_committed = {tp: n for tp, n in self._state_committed.items() if tp in positions}
            state = {tp: n for tp, n in positions.items() if self._state_committed.get(tp) != n}
            if not self._uncommitted and not state:
                return
            offsets, self._uncommitted = {**state, **self._uncommitted}, {}
            self._committed_at = self._clock()
            self._in_flight = asyncio.create_task(self._commit(offsets, state))

    async def settle(self) -> None:
        """Wait for the commit in flight, if any."""
        task, self._in_flight = self._in_flight, None
        if task is not None:
            await task

    async def _commit(self, offsets: dict[TopicPartition, int], state: Mapping[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError:
            # The group rebalanced: the partition's new owner replays from the last
            # commit. Duplicates on the feed are idempotent (same key, same item).
            log.warning("commit failed after a rebalance; the new owner replays %d partitions", len(offsets))
            return
        self._state_committed.update(state)
        if len(offsets) > len(state):  # content was committed, not only state positions
            self._metrics.last_batch.set(time.time())


def changelog_offsets(
    acked: Iterable[Acked], stores: Mapping[int, PartitionStore], kinds: Mapping[str, StateKind]
) -> dict[int, dict[StateKind, int]]:
    """The next offsets of our changelogs (`kinds`: topic -> kind), where a batch's records directly follow the store's.

    The store applies its own changelog records as it writes them, so once they
    are acknowledged it may resume its changelogs after them: a restart then
    does not read back what this worker wrote itself. Only when they follow on
    without a gap: a record of another writer in between (a previous owner still
    finishing a batch) must be read at the next restore, so then nothing moves.
    """
    ends: dict[tuple[str, int], int | None] = {}
    for topic, partition, count, base in sorted(acked, key=lambda a: (a[0], a[1], a[3])):
        kind = kinds.get(topic)
        store = stores.get(partition)
        if kind is None or store is None:
            continue
        expected = ends[topic, partition] if (topic, partition) in ends else store.next_offset(kind)
        ends[topic, partition] = base + count if base == expected else None
    offsets: dict[int, dict[StateKind, int]] = {}
    for (topic, partition), end in ends.items():
        if end is not None:
            offsets.setdefault(partition, {})[kinds[topic]] = end
    return offsets


class InputPositions:
    """Positions the consumer's inputs: content at the group's commit, state at each store's next offset."""

    def __init__(self, consumer: AIOKafkaConsumer, topics: TopicNames, stores: Mapping[int, PartitionStore]) -> None:
        self._consumer = consumer
        self._content = topics.content
        self._kind_of_topic = {topics.profiles: StateKind.PROFILES, topics.objections: StateKind.OBJECTIONS}
        self._stores = stores

    async def rewind(self) -> None:
        """After a failed batch, reposition every assigned input to what is durably done.

        A failure here is logged, not raised: the next batch fails the same way and
        retries it.
        """
        consumer = self._consumer
        try:
            assignment = consumer.assignment()
            content = [tp for tp in assignment if tp.topic == self._content]
            committed = {tp: await consumer.committed(tp) for tp in content}
            for tp, offset in committed.items():
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            self.seek_state(tp for tp in assignment if tp.topic != self._content)
        except KafkaError as exc:
            log.error("rewind failed (%s); the next batch retries it", type(exc).__name__)

    def applied_state(self) -> dict[TopicPartition, int]:
        """Each assigned state partition's next offset as its store recorded it (for display in the group)."""
        positions: dict[TopicPartition, int] = {}
        for tp in self._consumer.assignment():
            kind = self._kind_of_topic.get(tp.topic)
            store = self._stores.get(tp.partition)
            if kind is not None and store is not None:
                positions[tp] = store.next_offset(kind)
        return positions

    def seek_state(self, tps: Iterable[TopicPartition]) -> None:
        """Seek each state partition of `tps` to its store's next offset (partitions without a store: untouched)."""
        for tp in tps:
            store = self._stores.get(tp.partition)
            if store is not None:
                self._consumer.seek(tp, store.next_offset(self._kind_of_topic[tp.topic]))
