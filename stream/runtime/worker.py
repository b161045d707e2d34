"""The Kafka shell of the filter: a loop that fetches a batch, gates it, decides it, produces and commits.

One aiokafka consumer owns the three co-partitioned inputs, so partition p's
content is decided in the process that holds partition p's profiles and
objections. Faust hosts this loop (see `app.py`) for lifecycle, web and metrics;
the hot path runs on aiokafka directly because Faust's per-event machinery costs
15-30x what the client does (docs/design.md).

Guarantees (at least once):
- an input offset is committed only after every record it caused was acknowledged
  by the broker (acks=all, idempotent producer); a failed batch is replayed;
- state topics' positions are never read from the group: each partition store keeps
  its own next offsets, written after the records they caused were acknowledged (they
  are committed to the group too, for lag exporters to display: offsets.py);
- freshness gate: before content of partition p is decided, p's profiles and
  objections have been applied up to their end offsets as of the content's fetch
  (the stable offsets its response carried, or, where those prove nothing, the
  end offsets listed after it);
- the published-items index and deferred decisions are restored from their
  compacted changelogs when a partition is assigned, before any state record of
  that partition is applied; deferred items are decided again when due.

This module owns the loop, the clients' settings, and the wiring of its parts, each
in a module of its own: `intake` (a fetch sorted into a batch), `recovery`, `gate`
(the freshness gate), `cycle` (decide and perform in the crash-safe order, with
`sender`, `writer` and `offsets`), `deferrals` (the timer), `gauges`, `rebalance`
(the listener), `partitions` (the held stores), `health` (readiness, replays),
`interrupt` (giving a batch up, cutting a wait short), `fetches` (a fetch that may
be cut) and `membership` (another process under this worker's static instance id
stops it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.config import POLL_WAIT_MS, Settings
from stream.connection import client_options
from stream.core.engine import Engine, InputRecord
from stream.core.state import PartitionStore
from stream.runtime.assignor import CoPartitionedAssignor
from stream.runtime.cycle import BatchCycle
from stream.runtime.deferrals import DeferralTimer
from stream.runtime.fetches import fetch
from stream.runtime.gate import FreshnessGate
from stream.runtime.gauges import Gauges
from stream.runtime.health import Health, Replays
from stream.runtime.intake import Intake
from stream.runtime.interrupt import GiveUp, Interruption
from stream.runtime.leaders import leader_lookup
from stream.runtime.membership import InstanceIdConflict, MembershipWatch, membership
from stream.runtime.metrics import Metrics
from stream.runtime.offsets import ContentCommits, InputPositions
from stream.runtime.partitions import HeldPartitions
from stream.runtime.rebalance import RebalanceListener
from stream.runtime.recovery import Recovery
from stream.runtime.sender import OutputSender
from stream.runtime.writer import StoreWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Parts:
    """The parts of a started worker, every one built on its started clients: none is missing."""

    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    intake: Intake
    writer: StoreWriter
    commits: ContentCommits
    positions: InputPositions
    cycle: BatchCycle
    gate: FreshnessGate
    recovery: Recovery
    deferrals: DeferralTimer
    gauges: Gauges


class FilterWorker:
    """The filter's loop over its parts; `start()` builds them, `run()` consumes, `stop()` drains and closes."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self._held = HeldPartitions(settings.data_dir)
        # The live mapping of held partitions' stores, read by every part.
        self._stores = self._held.stores
        # Held by a batch from its gate to its send, and by stop, rewind and each
        # rebalance callback: none of them starts while a batch is in hand.
        self._lock = asyncio.Lock()
        self._interruption = Interruption()
        self._health = Health(metrics, self._interruption.stalled_for)
        self._replays = Replays(self._health, metrics)
        self._parts: _Parts | None = None

    @property
    def ready(self) -> bool:
        """Partitions assigned and their state caught up."""
        return self._health.ready

    @property
    def stuck(self) -> bool:
        """Batches keep failing: replayed, no progress."""
        return self._health.stuck

    @property
    def stalled(self) -> bool:
        """The loop has been in one step for `health.LOOP_STALL_SECONDS`: no progress."""
        return self._health.stalled

    @property
    def is_ready(self) -> bool:
        """Partitions assigned, their state caught up, batches succeeding, and the loop stepping."""
        return self._health.is_ready

    def readiness(self) -> tuple[int, dict[str, object]]:
        """`/ready`'s answer: status code and body."""
        return self._health.readiness(self._held.assigned)

    @property
    def assigned(self) -> frozenset[int]:
        """The partition numbers this worker holds now."""
        return self._held.assigned

    def store(self, partition: int) -> PartitionStore | None:
        """The store of a partition this worker holds (its state and stored offsets), or None."""
        return self._stores.get(partition)

    @property
    def consumer(self) -> AIOKafkaConsumer | None:
        """The started consumer, or None before start and after stop."""
        return None if self._parts is None else self._parts.consumer

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The started producer, or None before start and after stop."""
        return None if self._parts is None else self._parts.producer

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start both clients, build the parts on them, and subscribe: all of it, or nothing left running."""
        producer, consumer = _clients(self.settings, self._held.on_disk)
        await producer.start()
        try:
            await consumer.start()
        except BaseException:
            await producer.stop()
            raise
        parts = self._assemble(consumer, producer)
        topics = self.settings.topics
        consumer.subscribe(list(topics.inputs()), listener=self._listener(parts))
        self._parts = parts

    async def stop(self) -> None:
        """Finish the batch in hand, commit it, and close: the graceful drain of SIGTERM."""
        self._interruption.stop()  # and the loop's wait for records or a back-off is cut short
        self._health.set_ready(False)  # from the signal on: a stopping worker decides nothing more
        async with self._lock:
            parts = self._parts
            if parts is not None:
                await parts.cycle.drain("stopping")
        # The clients close outside the lock: closing the consumer first lets a rebalance
        # in flight finish, and the rebalance listener takes the lock: held here, the
        # stop would wait for itself until the shutdown timeout. Once stopping, the loop
        # starts no batch, so nothing else takes the lock to decide.
        if parts is not None:
            await parts.consumer.stop()
            await parts.producer.stop()
            parts.writer.close()
        self._held.close()

    async def run(self) -> None:
        """Consume until stopped; a failed batch is replayed after a back-off, never skipped."""
        parts = self._parts
        if parts is None:
            raise RuntimeError("FilterWorker.run() before start()")
        # Static membership: another process under our instance id ends this worker (membership.py).
        watch = MembershipWatch(self.settings.group_id, self.settings.group_instance_id)
        while not self._interruption.stopping:
            try:
                watch.check(membership(parts.consumer))
            except InstanceIdConflict as conflict:
                log.critical("%s", conflict)
                raise
            try:
                await self._poll_once(parts)
                self._replays.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the one place a batch's failure is caught: replay, never drop
                if self._interruption.stopping:
                    break
                delay = self._replays.failed(exc)
                await self._rewind(parts)
                await self._interruption.idle(asyncio.sleep(delay))

    # -- the loop ------------------------------------------------------------------

    async def _poll_once(self, parts: _Parts) -> None:
        fetched = await self._interruption.idle(
            fetch(parts.consumer, timeout_ms=POLL_WAIT_MS, max_records=self.settings.max_batch)
        )
        if fetched is None:  # cut short by a stop
            return
        async with self._lock:
            if self._interruption.interrupted:
                return
            try:
                await self._process(parts, fetched)
            except GiveUp as why:
                self.metrics.batches_given_up.labels(cause=why.cause.value).inc()
                log.info("%s: the batch in hand is abandoned uncommitted and will be replayed", why)

    async def _process(self, parts: _Parts, fetched: dict[TopicPartition, list[Any]]) -> None:
        state: list[InputRecord] = []
        content: list[InputRecord] = []
        content_partitions: set[int] = set()
        parts.intake.sort(fetched, state, content, content_partitions)
        if parts.recovery.needed and self._held.assigned:
            await parts.recovery.recover(self._held.assigned, state)
            state = []
            self._health.set_ready(not self._interruption.stopping)  # a stop that began meanwhile keeps it down
        if content and parts.intake.holds_objection(state):
            # Objection propagation is the product's headline service level: an objection's
            # tombstones wait for no content. Fetched with content, the state goes first in a
            # cycle of its own, as if fetched alone, before the content's gate; the content's
            # cycle settles on that one's tail, so it is decided on that state.
            await parts.cycle.process(state, (), overlap=True)
            state = []
        if content:
            more_state, more_content = await parts.gate.gate(content_partitions, len(content))
            state.extend(more_state)  # after the fetch's own: each partition's records stay in offset order
            content.extend(more_content)
        if state or content:  # one cycle: state first, then content, one produce and one commit
            await parts.cycle.process(state, content, overlap=True)
        if self._health.ready:
            await parts.deferrals.tick()
        await parts.gauges.refresh()
        await parts.commits.flush()  # what an idle stream's last batches left uncommitted

    async def _rewind(self, parts: _Parts) -> None:
        """After a failed batch, reposition every input to what is durably done."""
        async with self._lock:
            await parts.cycle.drain("the rewind")
            await parts.positions.rewind()

    # -- wiring --------------------------------------------------------------------

    def _assemble(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> _Parts:
        s, stores, metrics = self.settings, self._stores, self.metrics
        intake = Intake(s.topics, stores, metrics)
        writer = StoreWriter(stores)
        positions = InputPositions(consumer, s.topics, stores)
        # The state topics' positions go with the content commits, for display only (offsets.py).
        commits = ContentCommits(
            consumer, s.topics.content, s.commit_interval_ms, metrics, state_positions=positions.applied_state
        )
        cycle = BatchCycle(
            self.engine,
            stores,
            s.topics,
            writer=writer,
            sender=OutputSender(producer, s.topics, shadow=self.engine.shadow is not None),
            commits=commits,
            metrics=metrics,
        )

        async def apply_state(records: Any) -> None:
            await cycle.process(records, (), recovering=True)

        return _Parts(
            consumer=consumer,
            producer=producer,
            intake=intake,
            writer=writer,
            commits=commits,
            positions=positions,
            cycle=cycle,
            gate=FreshnessGate(
                consumer,
                s.topics,
                intake=intake,
                interruption=self._interruption,
                leader_of=leader_lookup(consumer),
                metrics=metrics,
                max_batch=s.max_batch,
            ),
            recovery=Recovery(
                s,
                consumer,
                stores,
                self.engine,
                apply_state=apply_state,
                perform=cycle.perform,
                writer=writer,
                intake=intake,
                interruption=self._interruption,
                metrics=metrics,
            ),
            deferrals=DeferralTimer(self.engine, stores, settle=cycle.settle, perform=cycle.perform),
            gauges=Gauges(consumer, s.topics, stores, metrics, settle=cycle.settle),
        )

    def _listener(self, parts: _Parts) -> RebalanceListener:
        return RebalanceListener(
            self.settings.topics.content,
            lock=self._lock,
            interruption=self._interruption,
            cycle=parts.cycle,
            held=self._held,
            positions=parts.positions,
            recovery=parts.recovery,
            health=self._health,
            metrics=self.metrics,
        )


def _clients(s: Settings, on_disk: Callable[[], Iterable[int]]) -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
    """The worker's producer and consumer, not started; `on_disk` names the partitions with a store on disk."""
    producer = AIOKafkaProducer(
        **client_options(s),
        client_id=f"{s.group_id}-producer",
        acks="all",
        enable_idempotence=True,
        linger_ms=s.linger_ms,
        compression_type=s.compression,
        max_batch_size=512 << 10,
        request_timeout_ms=30000,
    )
    consumer = AIOKafkaConsumer(
        **client_options(s),
        client_id=f"{s.group_id}-consumer",
        group_id=s.group_id,
        # Static membership when set (config.py): a restart within the session timeout
        # takes the same partitions back without a rebalance of the other workers.
        group_instance_id=s.group_instance_id,
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
        # The other members learn that a rebalance began at their next heartbeat, and the
        # group waits for them: every join and every leave pauses the partitions up to
        # this long more (bench/notes.md, "Heartbeats"). One small request a second.
        heartbeat_interval_ms=1000,
        # Whole partition numbers per worker: p of content with p of profiles and
        # objections, kept across rebalances where the balance allows (assignor.py).
        # An instance of its own: it remembers this consumer's numbers to claim them,
        # and names the stores on disk, so that a number that moves goes where its store is.
        partition_assignment_strategy=(CoPartitionedAssignor(on_disk),),
    )
    return producer, consumer
