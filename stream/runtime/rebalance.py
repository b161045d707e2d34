"""The rebalance listener: what the worker does when the group takes partitions away or hands them over.

Revocation first stops the loop from starting or continuing a batch (it gives the
batch in hand up, uncommitted), then waits for the loop's lock, so that what was
done is written and committed before the partitions move. Assignment opens the new
partitions' stores, positions their state, and asks for a recovery before any of
their content is decided.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import ConsumerRebalanceListener, TopicPartition

from stream.runtime.cycle import BatchCycle
from stream.runtime.health import Health
from stream.runtime.interrupt import Interruption
from stream.runtime.metrics import Metrics
from stream.runtime.offsets import InputPositions
from stream.runtime.partitions import HeldPartitions, StoreOrigin
from stream.runtime.recovery import Recovery

log = logging.getLogger(__name__)


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    """Called by aiokafka around each rebalance, under the worker's loop `lock`."""

    def __init__(
        self,
        content_topic: str,
        *,
        lock: asyncio.Lock,
        interruption: Interruption,
        cycle: BatchCycle,
        held: HeldPartitions,
        positions: InputPositions,
        recovery: Recovery,
        health: Health,
        metrics: Metrics,
    ) -> None:
        self._content = content_topic
        self._lock = lock
        self._interruption = interruption
        self._cycle = cycle
        self._held = held
        self._positions = positions
        self._recovery = recovery
        self._health = health
        self._metrics = metrics

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Let the batch in hand finish and commit (or give up, uncommitted) before the partitions move; not ready."""
        # Waiting for the lock lets the batch in hand finish and commit first (or,
        # if it is waiting for records, give up: see `Interruption`).
        self._interruption.rebalance_started()
        async with self._lock:
            await self._cycle.drain("the rebalance")  # written and committed before the partitions move
            self._health.set_ready(False)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Hold exactly the assigned partitions (stores of others closed), seek their state; recovery runs next."""
        async with self._lock:
            if self._interruption.stopping:  # the worker is closing its consumer: it will decide nothing more
                log.info("assigned partitions while stopping: left closed")
                return
            await self._cycle.drain("the assignment")  # no write of an earlier batch may land in a store closed here
            origins = self._held.assign(tp.partition for tp in assigned)
            self._positions.seek_state(tp for tp in assigned if tp.topic != self._content)
            self._recovery.request()
            self._metrics.rebalances.inc()
            self._metrics.recovering.set(1)
            self._interruption.rebalance_ended()
            for origin in origins.values():
                self._metrics.partitions_assigned.labels(store=origin.value).inc()
            log.info(
                "assigned partitions %s (%s)",
                sorted(self._held.assigned),
                ", ".join(f"{o.value} {sorted(p for p, of in origins.items() if of is o)}" for o in StoreOrigin),
            )
