"""The batch cycle: decide a batch with the engine, then perform its result in engine.py's crash-safe order.

The order: the writes due before any send, the published index's new entries sent
(`_start`); then, possibly as a task running on while the next batch is fetched and
gated (the batch's tail, `_finish`), their acknowledgement, the batch's records and
what must follow them (the sender's `deliver`), the store writes those allow, the
content offsets marked done, and the batch's metrics. Every cycle waits for the tail
before it reads the store, so no decision sees a store without the batch before it.

`drain` is the worker's one path for a tail that failed: the batch is left
uncommitted, so it is replayed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from stream.config import TopicNames
from stream.core.engine import BatchResult, Engine, InputRecord
from stream.core.state import PartitionStore, StateKind
from stream.runtime.metrics import Metrics, Stage, observe_many
from stream.runtime.offsets import ContentCommits, changelog_offsets
from stream.runtime.sender import OutputSender, Sent
from stream.runtime.writer import StoreWriter, Write

log = logging.getLogger(__name__)


class _Started(NamedTuple):
    """A batch whose send has begun: its first records in flight, and the seconds of its pre-writes."""

    first: list[Sent]
    pre_seconds: float


class BatchCycle:
    """Decides and performs batches over the stores of `stores` (the worker's live mapping)."""

    def __init__(
        self,
        engine: Engine,
        stores: Mapping[int, PartitionStore],
        topics: TopicNames,
        *,
        writer: StoreWriter,
        sender: OutputSender,
        commits: ContentCommits,
        metrics: Metrics,
    ) -> None:
        self._engine = engine
        self._stores = stores
        self._changelog_kinds = {
            topics.published: StateKind.PUBLISHED,
            topics.deferred: StateKind.DEFERRED,
            topics.items: StateKind.ITEMS,
        }
        self._writer = writer
        self._sender = sender
        self._commits = commits
        self._metrics = metrics
        # The tail of the last content batch (acknowledgements, the writes after them,
        # the commit), running on while the next batch is fetched and gated.
        self._tail: asyncio.Task[None] | None = None

    async def process(
        self,
        state: Sequence[InputRecord],
        content: Sequence[InputRecord],
        *,
        recovering: bool = False,
        overlap: bool = False,
    ) -> None:
        """Decide, then perform the result; with `overlap` the batch's tail runs on as a task."""
        await self.settle()
        started = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        result = self._engine.process(self._stores, state, content, now, recovering=recovering)
        self.stage(Stage.DECIDE, started)
        begun = await self._start(result)
        tail = self._finish(result, begun, content, started)
        if overlap:
            self._tail = asyncio.create_task(tail)
        else:
            await tail

    async def perform(self, result: BatchResult) -> None:
        """Perform a result decided outside the content loop (deferrals, re-evaluation), to the end."""
        await self.settle()
        await self._finish(result, await self._start(result), (), None)

    async def settle(self, *, commit: bool = False) -> None:
        """Wait for the tail of the last batch (and with `commit` for everything acknowledged to be committed).

        A failure there fails the batch at hand, which is then replayed.
        """
        task, self._tail = self._tail, None
        if task is not None:
            await task
        if commit:
            await self._commits.flush(force=True)
            await self._commits.settle()

    async def drain(self, before: str) -> None:
        """Settle and commit before a stop, a rewind or a rebalance; a failed tail is logged, not raised.

        Its batch is uncommitted, so it is replayed (by this worker or the
        partition's next owner), never lost.
        """
        try:
            await self.settle(commit=True)
        except Exception as exc:  # the one place a failed tail is caught: it is replayed
            log.warning("the last batch before %s failed (%s); it is replayed", before, type(exc).__name__)

    def stage(self, stage: Stage, started: float) -> float:
        """Observe the time since `started` as `stage` of the batch; return now, the next stage's start."""
        now = time.perf_counter()
        self._metrics.stage_seconds.labels(stage=stage).observe(now - started)
        return now

    async def _start(self, result: BatchResult) -> _Started:
        """The writes due before any send, then the published index's new entries sent."""
        started = time.perf_counter()
        if result.pre_updates:
            await self._writer.write([(p, u, None, result.pre_counts.get(p)) for p, u in result.pre_updates.items()])
        pre_seconds = time.perf_counter() - started
        return _Started(await self._sender.send(result.first), pre_seconds)

    async def _finish(
        self,
        result: BatchResult,
        begun: _Started,
        content: Sequence[InputRecord],
        started: float | None,
    ) -> None:
        """Deliver the rest in order; write what the acknowledgements allow and mark the content done."""
        producing = time.perf_counter()
        acked = await self._sender.deliver(result, begun.first)
        changelogs = changelog_offsets(acked, self._stores, self._changelog_kinds)
        report_isolated(result)
        writing = self.stage(Stage.PRODUCE, producing)
        post = _post_writes(result, changelogs)
        if post:
            await self._writer.write(post)
        committing = time.perf_counter()
        self._metrics.stage_seconds.labels(stage=Stage.STORE).observe(committing - writing + begun.pre_seconds)
        acked_at = time.time()
        if content:
            await self._commits.mark_done(content)
            self.stage(Stage.COMMIT, committing)
            observe_many(self._metrics.broker_latency, (max(0.0, acked_at - r.timestamp / 1000) for r in content))
        self._observe(result, acked_at, started)

    def _observe(self, result: BatchResult, acked_at: float, started: float | None) -> None:
        metrics = self._metrics
        observe_many(metrics.event_time_latency, (max(0.0, acked_at - t) for t in result.event_times))
        observe_many(metrics.objection_propagation, (max(0.0, acked_at - ms / 1000) for ms in result.objections))
        metrics.count_batch(result)
        if started is not None:
            metrics.batch_seconds.observe(time.perf_counter() - started)


def _post_writes(result: BatchResult, changelogs: Mapping[int, Mapping[StateKind, int]]) -> list[Write]:
    """The writes after the acknowledgements: state, the inputs' next offsets, and the changelogs' (`changelogs`)."""
    return [
        (
            p,
            result.post_updates.get(p, ()),
            {**result.state_offsets.get(p, {}), **changelogs.get(p, {})},
            result.post_counts.get(p),
        )
        for p in result.post_updates.keys() | result.state_offsets.keys() | changelogs.keys()
    ]


def report_isolated(result: BatchResult) -> None:
    """Name every record (or stored item) the engine isolated after its handling raised."""
    for where in result.isolated:
        if where.offset < 0:  # a held or published item judged from the store
            log.error(
                "a stored item (%s) of partition %d raised %s; it failed closed (released or retracted)",
                where.topic,
                where.partition,
                where.error,
            )
        else:
            log.error(
                "record %s[%d]@%d raised %s; dead-lettered and failed closed, the partition goes on",
                where.topic,
                where.partition,
                where.offset,
                where.error,
            )
