"""The freshness gate: a batch's content is decided only after its partitions' state was read up to the
content's fetch; and the content top-up that fills a batch first.

Owns the reads of the batch's state partitions before the decision; applying them is
the batch cycle's. Gives the batch up (`interrupt.GiveUp`) when a stop or a rebalance
begins while it waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.config import GATE_READ_RECORDS, LAGGING_READ_WAIT_MS, TopicNames
from stream.core.engine import InputRecord
from stream.errors import GateStallError
from stream.runtime.fetches import fetch
from stream.runtime.intake import Intake
from stream.runtime.interrupt import Interruption
from stream.runtime.leaders import LeaderOf
from stream.runtime.metrics import Metrics, Stage

# The gate fails its batch when the state partitions it waits for yield no record for
# this long (a broker that answers but no longer serves them).
GATE_STALL_SECONDS = 60.0
# The content top-up: content fetched at least this long before it is taken waits up
# to TOP_UP_WAIT_MS for the fetch aiokafka sends as it is taken. A loopback fetch with
# records at the broker is answered in ~1-2 ms here; one the broker has nothing for
# waits for the next record (the platform's producers send every 5 ms, their
# linger), so the wait is bounded to that.
TOP_UP_AFTER_MS = 2
TOP_UP_WAIT_MS = 5


class FreshnessGate:
    """Gates batches read by a started consumer, of at most `max_batch` records."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: TopicNames,
        *,
        intake: Intake,
        interruption: Interruption,
        leader_of: LeaderOf,
        metrics: Metrics,
        max_batch: int,
        stall_seconds: float = GATE_STALL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._content = topics.content
        self._state_topics = (topics.profiles, topics.objections)
        self._intake = intake
        self._interruption = interruption
        self._leader_of = leader_of
        self._metrics = metrics
        self._max_batch = max_batch
        self._stall_seconds = stall_seconds
        self._clock = clock

    async def gate(self, partitions: set[int], taken: int) -> tuple[list[InputRecord], list[InputRecord]]:
        """The content top-up of a batch, then its freshness gate; returns the state and content read after the fetch.

        Top-up: aiokafka keeps one fetch in flight per broker and sends the next only
        once the fetched records were taken, so records taken a while after they were
        fetched hold only what had reached the broker by then; the rest would wait at
        the broker for a whole batch more. While the batch has room (`taken` of
        `max_batch`) and its content is older than `TOP_UP_AFTER_MS`, the fetch sent
        when it was taken is awaited for up to `TOP_UP_WAIT_MS`: with records at the
        broker it is answered at once. Each content partition read here joins the
        gated ones.

        Gate: the state of every partition with content in the batch must be applied
        up to what had been appended when that content was fetched. A fetch response
        carries each partition's last stable offset, read by the broker while it
        serves the fetch, and the state partitions are in every fetch with the
        content: so once a partition's state was read up to the stable offsets of a
        response at least as recent as its content's, from the same broker, the gate
        holds without asking the broker anything (`snapshot_ends`). Otherwise (the
        state partition was left out of that fetch, or has another leader) its end is
        listed now, after the fetch: one ListOffsets request.
        """
        started = time.perf_counter()
        consumer = self._consumer
        limit = self._max_batch
        gated = set(partitions)
        state: list[InputRecord] = []
        content: list[InputRecord] = []
        if taken < limit and self._content_age_ms(gated) >= TOP_UP_AFTER_MS:
            fetched = await self._interruption.read(
                fetch, consumer, timeout_ms=TOP_UP_WAIT_MS, max_records=limit - taken
            )
            self._intake.sort(fetched, state, content, gated)
        ends, unproven = self.snapshot_ends(gated)
        if unproven:
            self._metrics.gate_listings.inc()
            ends.update(await consumer.end_offsets(unproven))
        progressed = self._clock()
        while True:
            self._interruption.check()
            lagging = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
            if not lagging:
                self._metrics.stage_seconds.labels(stage=Stage.GATE).observe(time.perf_counter() - started)
                return state, content
            if self._clock() - progressed > self._stall_seconds:
                # A gate that waits for ever would hold the batch, and the worker would look
                # healthy: failing the batch makes it replay, and repeated, the worker stuck.
                raise GateStallError(
                    f"freshness gate: {len(lagging)} state partitions got no record for "
                    f"{self._stall_seconds:.0f} s below their end offsets"
                )
            fetched = await self._interruption.read(
                fetch, consumer, *lagging, timeout_ms=LAGGING_READ_WAIT_MS, max_records=GATE_READ_RECORDS
            )
            if any(fetched.values()):
                progressed = self._clock()
            self._intake.sort(fetched, state, content, gated)

    def snapshot_ends(self, partitions: Iterable[int]) -> tuple[dict[TopicPartition, int], list[TopicPartition]]:
        """The gate's end offsets that the fetch responses prove, and the state partitions they cannot.

        aiokafka stamps every partition of a fetch response with its arrival time
        (`last_poll_timestamp`) and keeps the stable offset it carried. A state
        partition stamped no earlier than its content partition, by the same leader,
        was in the response that brought that content or in a later one (one fetch
        is in flight per broker), so its stable offset was read no earlier than the
        content was. The state must then be read up to that offset, and no further.
        """
        consumer = self._consumer
        leader_of = self._leader_of
        ends: dict[TopicPartition, int] = {}
        unproven: list[TopicPartition] = []
        for p in partitions:
            content_tp = TopicPartition(self._content, p)
            content_at = consumer.last_poll_timestamp(content_tp)
            leader = leader_of(content_tp)
            for topic in self._state_topics:
                tp = TopicPartition(topic, p)
                at = consumer.last_poll_timestamp(tp)
                end = consumer.last_stable_offset(tp)
                if (
                    content_at is None
                    or at is None
                    or at < content_at
                    or end is None
                    or end < 0
                    or leader is None
                    or leader < 0
                    or leader_of(tp) != leader
                ):
                    unproven.append(tp)
                else:
                    ends[tp] = end
        return ends, unproven

    def _content_age_ms(self, partitions: Iterable[int]) -> float:
        """How long ago the newest fetch response with content of `partitions` arrived (ms)."""
        consumer = self._consumer
        stamps = [consumer.last_poll_timestamp(TopicPartition(self._content, p)) for p in partitions]
        newest = max((t for t in stamps if t is not None), default=None)
        return 0.0 if newest is None else time.time() * 1000 - newest
