"""The Kafka shell of the filter: fetch a batch, gate it, decide it, produce, commit.

One aiokafka consumer owns the three co-partitioned inputs, so partition p's
content is decided in the process that holds partition p's profiles and
objections. Faust hosts this loop (see `app.py`) for lifecycle, web and metrics;
the hot path runs on aiokafka directly because Faust's per-event machinery costs
15-30x what the client does (docs/design.md).

Guarantees (at least once):
- an input offset is committed only after every record it caused was acknowledged
  by the broker (acks=all, idempotent producer); a failed batch is replayed;
- state topics are never committed to the group: each partition store keeps its
  own next offsets, written after the records they caused were acknowledged;
- freshness gate: before content of partition p is decided, p's profiles and
  objections have been applied up to their end offsets as of the content's fetch
  (the stable offsets its response carried, or, where those prove nothing, the
  end offsets listed after it);
- the published-items index and deferred decisions are restored from their
  compacted changelogs when a partition is assigned, before any state record of
  that partition is applied; deferred items are decided again when due.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from stream.config import Settings
from stream.core.engine import CHANGELOGS, BatchResult, Engine, InputRecord, OutputTopic, Produce
from stream.core.partitioning import partition_for
from stream.core.state import DEFERRED_PREFIX, REEVALUATE_KEY, EntryKind, PartitionStore, StateKind
from stream.errors import DeliveryError, GateStallError
from stream.runtime.assignor import CoPartitionedAssignor
from stream.runtime.metrics import Metrics, observe_many
from stream.runtime.store import RocksPartitionStore, memory_usage

log = logging.getLogger(__name__)

# A store untouched for longer than this may have missed a tombstone that Kafka's
# compaction already removed (topics are created with delete.retention.ms = 7 days),
# so it is rebuilt from the beginning of the compacted topics instead of resumed.
STORE_MAX_IDLE_SECONDS = 12 * 3600
RETRY_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)
# After this many failed attempts in a row at the same batch the worker reports
# itself stuck: not ready, and `eligibility_worker_stuck` 1 (an alert), until one succeeds.
STUCK_AFTER_FAILURES = 3
# The freshness gate fails its batch when the state partitions it waits for yield no
# record for this long (a broker that answers but no longer serves them).
GATE_STALL_SECONDS = 60.0
# Gauges read from the broker or the stores are refreshed at most this often, and
# deferred items (held for days) are looked for at most this often.
GAUGE_PERIOD_SECONDS = 1.0
DUE_PERIOD_SECONDS = 1.0
# The items' latest events are swept for expired ones this often, this many keys a
# partition at a time: a full sweep of 10M items takes under 3 hours, against 8 days
# of memory (STREAM_ITEM_MEMORY_DAYS), at well under a millisecond of the loop a second.
EXPIRY_PERIOD_SECONDS = 10.0
EXPIRY_SCAN_KEYS = 2000

# Store writes of at most this many updates are made on the event loop (see `_store`).
INLINE_WRITE_MAX = 512
# The content top-up (see `_gate`): content fetched at least this long before it is
# taken waits up to TOP_UP_WAIT_MS for the fetch aiokafka sends as it is taken. A
# loopback fetch with records at the broker is answered in ~1-2 ms here; one the
# broker has nothing for waits for the next record (the platform's producers send
# every 5 ms, their linger), so the wait is bounded to that.
TOP_UP_AFTER_MS = 2
TOP_UP_WAIT_MS = 5

# A batch of records handed to the producer: topic, partition, record count, delivery future.
_Sent = tuple[str, int, int, "asyncio.Future[Any]"]
# A batch the broker acknowledged: topic, partition, record count, offset of its first record.
_Acked = tuple[str, int, int, int]


class _Started(NamedTuple):
    """A batch whose send has begun: its first records in flight, and the seconds of its pre-writes."""

    first: list[_Sent]
    pre_seconds: float


# One partition's store write: partition, updates, next offsets, count deltas.
_Write = tuple[
    int, Sequence[tuple[bytes, bytes | None]], Mapping[StateKind, int] | None, Mapping[EntryKind, int] | None
]


class FilterWorker:
    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        topics = settings.topics
        self._content = topics.content
        self._kind_of_topic = {topics.profiles: StateKind.PROFILES, topics.objections: StateKind.OBJECTIONS}
        self._input_of_topic = {topics.content: "content", topics.profiles: "profiles", topics.objections: "objections"}
        self._out_topic = {
            OutputTopic.FEED: topics.feed,
            OutputTopic.DECISIONS: topics.decisions,
            OutputTopic.DLQ: topics.dlq,
            OutputTopic.DEFERRED: topics.deferred,
            OutputTopic.PUBLISHED: topics.published,
            OutputTopic.ITEMS: topics.items,
        }
        self._changelog_kinds = {
            topics.published: StateKind.PUBLISHED,
            topics.deferred: StateKind.DEFERRED,
            topics.items: StateKind.ITEMS,
        }
        self._stores: dict[int, PartitionStore] = {}
        self._partition_counts: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._needs_catch_up = True
        # The tail of the last content batch (acknowledgements, the writes after them,
        # the commit), running on while the next batch is fetched and gated.
        self._tail: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        # Acknowledged batches' next content offsets, not yet sent in a commit.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = 0.0
        self._commit_lock = asyncio.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")  # renewed by start()
        # Set as soon as a rebalance starts revoking: loops that wait for records of
        # our partitions give up the batch (uncommitted, so replayed) instead of
        # holding the lock the rebalance waits for.
        self._rebalancing = False
        self._gauges_at = 0.0
        self._due_at = 0.0
        # Where each partition's sweep over the items' latest events goes on (engine.expire_items).
        self._expiry_cursor: dict[int, bytes | None] = {}
        self._expired_at = 0.0
        self._lag_labels: set[tuple[str, str]] = set()
        self.ready = False
        self.stuck = False
        self.assigned: frozenset[int] = frozenset()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"{s.group_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=s.linger_ms,
            compression_type=s.compression,
            max_batch_size=512 << 10,
            request_timeout_ms=30000,
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"{s.group_id}-consumer",
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 << 20,
            fetch_max_bytes=32 << 20,
            # No fetch_min_bytes: waiting on the broker for bigger batches (64 KiB or
            # 10 ms) was tried and made the latency worse (docs/benchmarks.md, notes).
            fetch_max_wait_ms=100,
            # A batch is decided and produced within seconds; a worker slower than this is stuck.
            max_poll_interval_ms=300000,
            # A killed worker's partitions move on after this long without heartbeats;
            # long enough that a RocksDB write stall while rebuilding state is no death.
            session_timeout_ms=30000,
            heartbeat_interval_ms=3000,
            # Whole partition numbers per worker: p of content with p of profiles and objections (assignor.py).
            partition_assignment_strategy=(CoPartitionedAssignor,),
        )
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([self._content, *self._kind_of_topic], listener=_Rebalance(self))

    async def stop(self) -> None:
        """Finish the batch in hand, commit it, and close: the graceful drain of SIGTERM."""
        self._stopping.set()
        async with self._lock:
            try:
                await self._settle(commit=True)
            except Exception as exc:  # its batch is uncommitted: replayed, never lost
                log.warning("last batch failed (%s); the next owner replays it", type(exc).__name__)
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()
            self._writer.shutdown(wait=True)
            for store in self._stores.values():
                store.close()
            self._stores.clear()
            self.ready = False
            self.metrics.ready.set(0)

    async def run(self) -> None:
        """Consume until stopped; a failed batch is replayed after a back-off, never skipped."""
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._poll_once()
                if failures:
                    log.info("a batch succeeded after %d failed attempts; no longer stuck", failures)
                    failures = 0
                    self._set_stuck(False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the one place that catches: replay, never drop
                if self._stopping.is_set():
                    break
                delay = RETRY_BACKOFF_SECONDS[min(failures, len(RETRY_BACKOFF_SECONDS) - 1)]
                failures += 1
                self.metrics.delivery_failures.inc()
                self.metrics.batch_replays.inc()
                if failures >= STUCK_AFTER_FAILURES:
                    self._set_stuck(True)
                log.error(
                    "batch failed (%s: %s), attempt %d; replaying from the last commit in %.1fs",
                    type(exc).__name__,
                    exc,
                    failures,
                    delay,
                )
                await self._rewind()
                await asyncio.sleep(delay)

    def _set_stuck(self, stuck: bool) -> None:
        """A worker whose batches keep failing cannot make progress: it is not ready (/ready 503)."""
        self.stuck = stuck
        self.metrics.stuck.set(1 if stuck else 0)
        self.metrics.ready.set(1 if self.is_ready else 0)

    @property
    def is_ready(self) -> bool:
        """Partitions assigned, their state caught up, and batches succeeding."""
        return self.ready and not self.stuck

    # -- the loop ------------------------------------------------------------------

    async def _poll_once(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        fetched = await consumer.getmany(timeout_ms=200, max_records=self.settings.max_batch)
        async with self._lock:
            if self._stopping.is_set() or self._rebalancing:
                return
            try:
                await self._process(fetched)
            except _GiveUp as why:
                log.info("%s: the batch in hand is abandoned uncommitted and will be replayed", why)

    async def _process(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        state: list[InputRecord] = []
        content: list[InputRecord] = []
        content_partitions: set[int] = set()
        self._sort(fetched, state, content, content_partitions)
        recovering = self._needs_catch_up and bool(self.assigned)
        if recovering:
            # Published items and deferrals first: applying state may retract or re-decide them.
            self.metrics.recovering.set(1)
            started = time.monotonic()
            await self._restore_changelogs(self.assigned)
            if state:  # before the catch-up, which reads the records after these
                await self._cycle(state, (), recovering=True)
                state = []
            await self._catch_up(self.assigned)
            await self._reevaluate_published()
            self._needs_catch_up = False
            # What start-up and recovery built stays for the process's life: out of the
            # collector's sight, a full collection no longer walks it mid-batch.
            gc.freeze()
            self.ready = True
            self.metrics.ready.set(1 if self.is_ready else 0)
            self.metrics.recovering.set(0)
            log.info(
                "state of partitions %s restored and caught up in %.1fs; ready",
                sorted(self.assigned),
                time.monotonic() - started,
            )
        if content:
            started = time.perf_counter()
            more_state, more_content = await self._gate(content_partitions, len(content))
            state.extend(more_state)  # after the fetch's own: each partition's records stay in offset order
            content.extend(more_content)
            self._stage("gate", started)
        if state or content:  # one cycle: state first, then content, one produce and one commit
            await self._cycle(state, content, overlap=True)
        if self.ready and time.monotonic() - self._due_at >= DUE_PERIOD_SECONDS:
            self._due_at = time.monotonic()
            await self._decide_due()
        await self._refresh_gauges()
        await self._flush_commit()  # what an idle stream's last batches left uncommitted

    async def _restore_changelogs(self, partitions: Iterable[int]) -> None:
        """Replay our changelogs (published index, deferrals) from each store's offset to their end."""
        tps = {TopicPartition(topic, p): p for topic in self._changelog_kinds for p in partitions}
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id=f"{self.settings.group_id}-restore",
        )
        await reader.start()
        try:
            reader.assign(list(tps))
            ends = await reader.end_offsets(list(tps))
            for tp, p in tps.items():
                reader.seek(tp, self._stores[p].next_offset(self._changelog_kinds[tp.topic]))
            pending = [tp for tp in tps if await reader.position(tp) < ends[tp]]
            while pending:
                fetched = await reader.getmany(*pending, timeout_ms=500, max_records=self.settings.max_batch)
                for tp, records in fetched.items():
                    kind = self._changelog_kinds[tp.topic]
                    store = self._stores[tps[tp]]
                    updates, counts = self.engine.restore(kind, store, records)
                    await self._in_writer(store.apply, updates, {kind: records[-1].offset + 1}, counts)
                pending = [tp for tp in pending if await reader.position(tp) < ends[tp]]
            for tp, p in tps.items():  # compaction may leave the end past the last record
                self._stores[p].apply((), {self._changelog_kinds[tp.topic]: ends[tp]})
        finally:
            await reader.stop()

    async def _gate(self, partitions: set[int], taken: int) -> tuple[list[InputRecord], list[InputRecord]]:
        """The content top-up of a batch, then its freshness gate.

        Returns the state and content records read after the fetch.

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
        holds without asking the broker anything (`_snapshot_ends`). Otherwise (the
        state partition was left out of that fetch, or has another leader) its end is
        listed now, after the fetch: one ListOffsets request.
        """
        consumer = self.consumer
        assert consumer is not None
        limit = self.settings.max_batch
        gated = set(partitions)
        state: list[InputRecord] = []
        content: list[InputRecord] = []
        if taken < limit and self._content_age_ms(gated) >= TOP_UP_AFTER_MS:
            fetched = await consumer.getmany(timeout_ms=TOP_UP_WAIT_MS, max_records=limit - taken)
            self._sort(fetched, state, content, gated)
        ends, unproven = self._snapshot_ends(gated)
        if unproven:
            self.metrics.gate_listings.inc()
            ends.update(await consumer.end_offsets(unproven))
        progressed = time.monotonic()
        while True:
            self._check_going_on()
            lagging = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
            if not lagging:
                return state, content
            if time.monotonic() - progressed > GATE_STALL_SECONDS:
                # A gate that waits for ever would hold the batch, and the worker would look
                # healthy: failing the batch makes it replay, and repeated, the worker stuck.
                raise GateStallError(
                    f"freshness gate: {len(lagging)} state partitions got no record for "
                    f"{GATE_STALL_SECONDS:.0f} s below their end offsets"
                )
            fetched = await consumer.getmany(*lagging, timeout_ms=500, max_records=limit)
            if any(fetched.values()):
                progressed = time.monotonic()
            self._sort(fetched, state, content, gated)

    def _content_age_ms(self, partitions: Iterable[int]) -> float:
        """How long ago the newest fetch response with content of `partitions` arrived (ms)."""
        consumer = self.consumer
        assert consumer is not None
        stamps = [consumer.last_poll_timestamp(TopicPartition(self._content, p)) for p in partitions]
        newest = max((t for t in stamps if t is not None), default=None)
        return 0.0 if newest is None else time.time() * 1000 - newest

    def _snapshot_ends(self, partitions: Iterable[int]) -> tuple[dict[TopicPartition, int], list[TopicPartition]]:
        """The gate's end offsets that the fetch responses prove, and the state partitions they cannot.

        aiokafka stamps every partition of a fetch response with its arrival time
        (`last_poll_timestamp`) and keeps the stable offset it carried. A state
        partition stamped no earlier than its content partition, by the same leader,
        was in the response that brought that content or in a later one (one fetch
        is in flight per broker), so its stable offset was read no earlier than the
        content was. The state must then be read up to that offset, and no further.
        """
        consumer = self.consumer
        assert consumer is not None
        # aiokafka has no public accessor for a partition's leader; the gate only
        # compares two partitions' leaders, in the metadata the fetcher itself uses.
        cluster = consumer._client.cluster
        ends: dict[TopicPartition, int] = {}
        unproven: list[TopicPartition] = []
        for p in partitions:
            content_tp = TopicPartition(self._content, p)
            content_at = consumer.last_poll_timestamp(content_tp)
            leader = cluster.leader_for_partition(content_tp)
            for topic in self._kind_of_topic:
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
                    or cluster.leader_for_partition(tp) != leader
                ):
                    unproven.append(tp)
                else:
                    ends[tp] = end
        return ends, unproven

    def _sort(
        self,
        fetched: Mapping[TopicPartition, list[Any]],
        state: list[InputRecord],
        content: list[InputRecord],
        content_partitions: set[int],
    ) -> None:
        """Add fetched records to the batch's state and content, and count them."""
        for tp, records in fetched.items():
            if tp.partition not in self._stores:
                continue  # revoked while the fetch was in flight; the new owner reads it
            self.metrics.records_in.labels(input=self._input_of_topic[tp.topic]).inc(len(records))
            if tp.topic == self._content:
                content.extend(records)
                content_partitions.add(tp.partition)
            else:
                state.extend(records)

    def _check_going_on(self) -> None:
        """Give up the batch in hand when a rebalance or a stop began: it is replayed, never half-gated."""
        if self._rebalancing:
            raise _GiveUp("rebalance started")
        if self._stopping.is_set():
            raise _GiveUp("stopping")

    async def _catch_up(self, partitions: Iterable[int]) -> None:
        """Recovery: apply the state of `partitions` up to the end offsets as of now."""
        consumer = self.consumer
        assert consumer is not None
        tps = [TopicPartition(topic, p) for p in partitions for topic in self._kind_of_topic]
        if not tps:
            return
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        while True:
            self._check_going_on()
            lagging = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not lagging:
                return
            fetched = await consumer.getmany(*lagging, timeout_ms=500, max_records=self.settings.max_batch)
            records: list[InputRecord] = []
            for tp in lagging:
                got = fetched.get(tp, [])
                records.extend(got)
                self.metrics.records_in.labels(input=self._input_of_topic[tp.topic]).inc(len(got))
            if records:
                await self._cycle(records, (), recovering=True)

    async def _reevaluate_published(self) -> None:
        """After a recovery replay: retract every published item the final state refuses."""
        for partition, store in self._stores.items():
            if store.get(REEVALUATE_KEY) is None:
                continue
            after: bytes | None = None
            while True:
                self._check_going_on()
                now = dt.datetime.now(dt.UTC)
                result, after = self.engine.reevaluate_published(store, partition, now, after, self.settings.max_batch)
                await self._perform(result)
                if after is None:
                    break
            await self._in_writer(store.apply, [(REEVALUATE_KEY, None)])

    async def _decide_due(self) -> None:
        await self._settle()  # the store as every batch before left it
        now = dt.datetime.now(dt.UTC)
        now_ms = int(now.timestamp() * 1000)
        for partition, store in self._stores.items():
            first = next(store.scan(DEFERRED_PREFIX), None)
            if first is None or int.from_bytes(first[0][2:10], "big") > now_ms:
                continue
            result = self.engine.process_due(store, partition, now, self.settings.max_batch)
            await self._perform(result)
            log.info("decided %d deferred items of partition %d again", sum(result.decisions.values()), partition)
        if time.monotonic() - self._expired_at >= EXPIRY_PERIOD_SECONDS:
            self._expired_at = time.monotonic()
            for partition, store in self._stores.items():
                after = self._expiry_cursor.get(partition)
                result, self._expiry_cursor[partition] = self.engine.expire_items(
                    store, partition, now, after, EXPIRY_SCAN_KEYS
                )
                if result.last:
                    await self._perform(result)

    async def _cycle(
        self,
        state: Sequence[InputRecord],
        content: Sequence[InputRecord],
        *,
        recovering: bool = False,
        overlap: bool = False,
    ) -> None:
        """Decide, then perform the result in the crash-safe order described in engine.py.

        With `overlap` the batch's tail (waiting for the broker's acknowledgements,
        the store writes after them, the commit) runs on as a task while the loop
        fetches and gates the next batch; every cycle first waits for the tail before
        it reads the store, so decisions always see the state of every batch before.
        """
        await self._settle()
        started = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        result = self.engine.process(self._stores, state, content, now, recovering=recovering)
        self._stage("decide", started)
        started_send = await self._start(result)
        tail = self._finish(result, started_send, content, started)
        if overlap:
            self._tail = asyncio.create_task(tail)
        else:
            await tail

    async def _perform(self, result: BatchResult) -> None:
        """Perform a result outside the content loop (deferrals, re-evaluation), to the end."""
        await self._settle()
        await self._finish(result, await self._start(result), (), None)

    async def _settle(self, *, commit: bool = False) -> None:
        """Wait for the tail of the last batch (and with `commit` for its commit too).

        A failure there fails the batch at hand, which is then replayed.
        """
        task, self._tail = self._tail, None
        if task is not None:
            await task
        if commit:
            await self._flush_commit(force=True)
            await self._settle_commit()

    async def _settle_commit(self) -> None:
        task, self._commit_task = self._commit_task, None
        if task is not None:
            await task

    async def _start(self, result: BatchResult) -> _Started:
        """The start of engine.py's crash-safe order: the writes due before any send, then the
        published index's new entries sent. The rest (`_finish`) may overlap the next fetch."""
        started = time.perf_counter()
        if result.pre_updates:
            await self._store([(p, u, None, result.pre_counts.get(p)) for p, u in result.pre_updates.items()])
        pre_seconds = time.perf_counter() - started
        return _Started(await self._send(result.first), pre_seconds)

    async def _finish(
        self,
        result: BatchResult,
        begun: _Started,
        content: Sequence[InputRecord],
        started: float | None,
    ) -> None:
        """Await the index entries' acknowledgement, send and await the batch's records, then
        what must follow them (index removals, item versions); write what they allow and
        commit the content."""
        producing = time.perf_counter()
        # Each step is sent only once the one before is acknowledged (engine.py).
        acked = await self._acknowledged(begun.first)
        acked += await self._acknowledged(await self._send(result.produce))
        if result.last:
            acked += await self._acknowledged(await self._send(result.last))
        changelog_offsets = self._changelog_offsets(acked)
        self._report_isolated(result)
        pre_seconds = begun.pre_seconds
        writing = self._stage("produce", producing)
        post = [
            (
                p,
                result.post_updates.get(p, ()),
                {**result.state_offsets.get(p, {}), **changelog_offsets.get(p, {})},
                result.post_counts.get(p),
            )
            for p in result.post_updates.keys() | result.state_offsets.keys() | changelog_offsets.keys()
        ]
        if post:
            await self._store(post)
        committing = time.perf_counter()
        self.metrics.stage_seconds.labels(stage="store").observe(committing - writing + pre_seconds)
        acked_at = time.time()
        if content:
            await self._commit(content)
            self._stage("commit", committing)
            observe_many(self.metrics.broker_latency, (max(0.0, acked_at - r.timestamp / 1000) for r in content))
        observe_many(self.metrics.event_time_latency, (max(0.0, acked_at - t) for t in result.event_times))
        observe_many(self.metrics.objection_propagation, (max(0.0, acked_at - ms / 1000) for ms in result.objections))
        self.metrics.count_batch(result)
        if started is not None:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _store(self, writes: Sequence[_Write]) -> None:
        """A batch's store writes, in order: on the loop when small and RocksDB need not stall.

        A write stall must not stop the event loop, whose heartbeats keep this worker
        in its group, so a write RocksDB would make wait, and a large one, goes to the
        writer thread instead. A hop there costs ~1.5 ms on a busy machine, on the
        path of every batch. Only one write is in flight at any time (each is awaited),
        so writes on the loop cannot overtake one on the thread.
        """
        if sum(len(updates) for _, updates, _, _ in writes) <= INLINE_WRITE_MAX:
            for i, (partition, updates, offsets, counts) in enumerate(writes):
                if not self._stores[partition].apply(updates, offsets, counts, wait=False):
                    writes = writes[i:]
                    break
            else:
                return
        await self._in_writer(self._write, writes)

    async def _in_writer(self, fn: Callable[..., object], *args: Any) -> None:
        """Run a store write on the one writer thread: in order, and off the event loop."""
        await asyncio.get_running_loop().run_in_executor(self._writer, functools.partial(fn, *args))

    def _write(self, writes: Sequence[_Write]) -> None:
        for partition, updates, offsets, counts in writes:
            self._stores[partition].apply(updates, offsets, counts)

    def _stage(self, stage: str, started: float) -> float:
        """Observe the time since `started` as `stage` of the batch; return now, the next stage's start."""
        now = time.perf_counter()
        self.metrics.stage_seconds.labels(stage=stage).observe(now - started)
        return now

    async def _send(self, records: Sequence[Produce]) -> list[_Sent]:
        """Hand `records` to the producer as closed per-partition batches; do not wait for the broker.

        A changelog record goes to its input's partition number; any other record to
        the partition Kafka's default partitioner gives its key (see `partitioning`).
        """
        producer = self.producer
        assert producer is not None
        if not records:
            return []
        open_batches: dict[tuple[str, int], Any] = {}
        sent: list[_Sent] = []

        async def send(topic: str, partition: int, batch: Any) -> None:
            # A closed batch goes out at once: it is whole already, lingering would
            # only add the linger time to every batch's latency.
            batch.close()
            count = batch.record_count()
            sent.append((topic, partition, count, await producer.send_batch(batch, topic, partition=partition)))

        # Partition counts once per batch, not an await per record.
        counts = {out: await self._partitions_of(topic) for out, topic in self._out_topic.items()}
        for p in records:
            topic = self._out_topic[p.topic]
            if p.topic in CHANGELOGS or p.key is None:
                partition = p.partition % counts[p.topic]
            else:
                partition = partition_for(p.key, counts[p.topic])
            batch = open_batches.get((topic, partition))
            if batch is None:
                batch = open_batches[topic, partition] = producer.create_batch()
            if batch.append(key=p.key, value=p.value, timestamp=None) is None:  # full: send it, start another
                await send(topic, partition, batch)
                batch = open_batches[topic, partition] = producer.create_batch()
                if batch.append(key=p.key, value=p.value, timestamp=None) is None:
                    raise DeliveryError(f"a record for {topic} is larger than a whole producer batch")
        for (topic, partition), batch in open_batches.items():
            await send(topic, partition, batch)
        return sent

    async def _acknowledged(self, sent: list[_Sent]) -> list[_Acked]:
        """Wait until the broker acknowledged every batch sent; raise if one was refused.

        Returns each batch's topic, partition, record count and first offset, from
        which `_changelog_offsets` finds the next offsets of our changelogs.
        """
        if not sent:
            return []
        outcomes: list[Any] = await asyncio.gather(*(future for *_, future in sent), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise DeliveryError(f"{len(errors)} of {len(sent)} batches not acknowledged: {errors[0]!r}")
        # Each outcome is the batch's RecordMetadata; its offset is the batch's first.
        return [(t, p, n, meta.offset) for (t, p, n, _), meta in zip(sent, outcomes, strict=True)]

    def _report_isolated(self, result: BatchResult) -> None:
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

    def _changelog_offsets(self, acked: Iterable[tuple[str, int, int, int]]) -> dict[int, dict[StateKind, int]]:
        """The next offsets of our changelogs, where this batch's records directly follow the store's.

        The store applies its own changelog records as it writes them, so once they
        are acknowledged it may resume its changelogs after them: a restart then
        does not read back what this worker wrote itself. Only when they follow on
        without a gap: a record of another writer in between (a previous owner still
        finishing a batch) must be read at the next restore, so then nothing moves.
        """
        ends: dict[tuple[str, int], int | None] = {}
        for topic, partition, count, base in sorted(acked, key=lambda a: (a[0], a[1], a[3])):
            kind = self._changelog_kinds.get(topic)
            store = self._stores.get(partition)
            if kind is None or store is None:
                continue
            expected = ends[topic, partition] if (topic, partition) in ends else store.next_offset(kind)
            ends[topic, partition] = base + count if base == expected else None
        offsets: dict[int, dict[StateKind, int]] = {}
        for (topic, partition), end in ends.items():
            if end is not None:
                offsets.setdefault(partition, {})[self._changelog_kinds[topic]] = end
        return offsets

    async def _partitions_of(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            producer = self.producer
            assert producer is not None
            count = self._partition_counts[topic] = len(await producer.partitions_for(topic))
        return count

    async def _commit(self, content: Sequence[InputRecord]) -> None:
        """Mark an acknowledged batch's content done; commit if the last commit is old enough."""
        ends: dict[int, int] = {}  # per partition first: no TopicPartition built per record
        for record in content:
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
        offsets = self._uncommitted
        for partition, end in ends.items():
            tp = TopicPartition(self._content, partition)
            offsets[tp] = max(offsets.get(tp, 0), end)
        await self._flush_commit()

    async def _flush_commit(self, *, force: bool = False) -> None:
        """Commit what is acknowledged, at most once per `STREAM_COMMIT_INTERVAL_MS` unless `force`.

        A commit per batch was one more request per batch for the worker and for the
        broker's group coordinator, ~10 ms of p99 latency at 3,000 events/s on the
        benchmark machine (docs/benchmarks.md). What the interval bounds is only how
        much a crash replays: every output of what a commit covers was acknowledged.
        """
        interval = self.settings.commit_interval_ms / 1000
        if not self._uncommitted or (not force and time.monotonic() - self._committed_at < interval):
            return
        # The commit goes out while the next batch is decided: its outputs are
        # acknowledged already, so only the amount a crash replays depends on it.
        # Commits stay in order: each waits for the one before, under a lock of
        # their own, since the loop and a batch's tail both commit.
        async with self._commit_lock:
            await self._settle_commit()
            if not self._uncommitted:
                return
            offsets, self._uncommitted = self._uncommitted, {}
            self._committed_at = time.monotonic()
            self._commit_task = asyncio.create_task(self._send_commit(offsets))

    async def _send_commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self.consumer
        assert consumer is not None
        try:
            await consumer.commit(offsets)
        except CommitFailedError:
            # The group rebalanced: the partition's new owner replays from the last
            # commit. Duplicates on the feed are idempotent (same key, same item).
            log.warning("commit failed after a rebalance; the new owner replays %d partitions", len(offsets))
            return
        self.metrics.last_batch.set(time.time())

    async def _refresh_gauges(self) -> None:
        if time.monotonic() - self._gauges_at < GAUGE_PERIOD_SECONDS:
            return
        self._gauges_at = time.monotonic()
        await self._settle()  # the stores' counts are not read while the writer thread changes them
        consumer = self.consumer
        assert consumer is not None
        seen: set[tuple[str, str]] = set()
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            labels = (self._input_of_topic[tp.topic], str(tp.partition))
            self.metrics.consumer_lag.labels(*labels).set(max(0, end - await consumer.position(tp)))
            seen.add(labels)
        for labels in self._lag_labels - seen:  # revoked partitions leave the gauge
            self.metrics.consumer_lag.remove(*labels)
        self._lag_labels = seen
        totals = dict.fromkeys(EntryKind, 0)
        for store in self._stores.values():
            for kind, n in store.counts().items():
                totals[kind] += n
        for kind, n in totals.items():
            self.metrics.state_entries.labels(kind=kind.value).set(n)
        self.metrics.deferred_items.set(totals[EntryKind.DEFERRED])
        for part, size in memory_usage().items():
            self.metrics.store_memory.labels(part=part).set(size)

    async def _rewind(self) -> None:
        """After a failed batch, reposition every input to what is durably done."""
        consumer = self.consumer
        if consumer is None:
            return
        async with self._lock:
            try:
                await self._settle(commit=True)
            except Exception as exc:  # its batch is uncommitted: replayed, never lost
                log.warning("the last batch's tail failed (%s); it is replayed", type(exc).__name__)
            try:
                assignment = consumer.assignment()
                content = [tp for tp in assignment if tp.topic == self._content]
                committed = {tp: await consumer.committed(tp) for tp in content}
                for tp, offset in committed.items():
                    if offset is None:
                        await consumer.seek_to_beginning(tp)
                    else:
                        consumer.seek(tp, offset)
                self._seek_state(tp for tp in assignment if tp.topic != self._content)
            except KafkaError as exc:
                log.error("rewind failed (%s); the next batch retries it", type(exc).__name__)

    def _seek_state(self, tps: Iterable[TopicPartition]) -> None:
        consumer = self.consumer
        assert consumer is not None
        for tp in tps:
            store = self._stores.get(tp.partition)
            if store is not None:
                consumer.seek(tp, store.next_offset(self._kind_of_topic[tp.topic]))

    # -- rebalances ----------------------------------------------------------------

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Waiting for the lock lets the batch in hand finish and commit first (or,
        # if it is waiting for records, give up: see `_rebalancing`).
        self._rebalancing = True
        async with self._lock:
            try:
                await self._settle(commit=True)  # what was done is written and committed before the partitions move
            except Exception as exc:  # its batch is uncommitted: replayed, never lost
                log.warning(
                    "the last batch before the rebalance failed (%s); the new owner replays", type(exc).__name__
                )
            self.ready = False
            self.metrics.ready.set(0)

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        async with self._lock:
            try:
                await self._settle(commit=True)  # no write of an earlier batch may land in a store closed here
            except Exception as exc:  # its batch is uncommitted: replayed, never lost
                log.warning("the last batch before the assignment failed (%s); it is replayed", type(exc).__name__)
            partitions = frozenset(tp.partition for tp in assigned)
            for p in list(self._stores):
                if p not in partitions:
                    self._stores.pop(p).close()
            for p in partitions:
                if p not in self._stores:
                    self._stores[p] = self._open_store(p)
            self._seek_state(tp for tp in assigned if tp.topic != self._content)
            self.assigned = partitions
            self._needs_catch_up = True
            self.metrics.rebalances.inc()
            self.metrics.recovering.set(1)
            self._rebalancing = False
            log.info("assigned partitions %s", sorted(partitions))

    def _open_store(self, partition: int) -> PartitionStore:
        path = self.settings.data_dir / "state" / f"partition-{partition}"
        store = RocksPartitionStore(path)
        touched = store.touched_at()
        stale = touched is not None and time.time() - touched > STORE_MAX_IDLE_SECONDS
        if stale or not store.compatible():
            log.warning(
                "state of partition %d %s: rebuilding from the compacted topics",
                partition,
                f"idle for {(time.time() - (touched or 0)) / 3600:.0f} h" if stale else "is of an older layout",
            )
            store.close()
            RocksPartitionStore.destroy(path)
            store = RocksPartitionStore(path)
        return store

    def store_paths(self) -> list[Path]:
        return [self.settings.data_dir / "state" / f"partition-{p}" for p in sorted(self._stores)]


class _GiveUp(Exception):
    """Raised inside the loop when a rebalance or a stop began: the batch in hand is given up, uncommitted."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    def __init__(self, worker: FilterWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._worker.on_assigned(assigned)
