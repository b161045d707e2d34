"""The gauges read from the broker and the stores: consumer lag, state entries, held items, store memory.

Refreshed at most once a `GAUGE_PERIOD_SECONDS`, after the tail of the batch before
(`settle`): the stores' counts are not read while the writer thread changes them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer

from stream.config import TopicNames
from stream.core.state import EntryKind, PartitionStore
from stream.runtime.metrics import Metrics
from stream.runtime.store import memory_usage

# Gauges read from the broker or the stores are refreshed at most this often.
GAUGE_PERIOD_SECONDS = 1.0


class Gauges:
    """Refreshes the gauges of a started consumer's assignment and of the stores of `stores`."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: TopicNames,
        stores: Mapping[int, PartitionStore],
        metrics: Metrics,
        *,
        settle: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._input_of_topic = {topics.content: "content", topics.profiles: "profiles", topics.objections: "objections"}
        self._stores = stores
        self._metrics = metrics
        self._settle = settle
        self._clock = clock
        self._refreshed_at = 0.0
        self._lag_labels: set[tuple[str, str]] = set()

    async def refresh(self) -> None:
        """Read the gauges again, unless they were read less than a period ago."""
        if self._clock() - self._refreshed_at < GAUGE_PERIOD_SECONDS:
            return
        self._refreshed_at = self._clock()
        await self._settle()
        await self._refresh_lag()
        totals = dict.fromkeys(EntryKind, 0)
        for store in self._stores.values():
            for kind, n in store.counts().items():
                totals[kind] += n
        for kind, n in totals.items():
            self._metrics.state_entries.labels(kind=kind.value).set(n)
        self._metrics.deferred_items.set(totals[EntryKind.DEFERRED])
        for part, size in memory_usage().items():
            self._metrics.store_memory.labels(part=part).set(size)

    async def _refresh_lag(self) -> None:
        consumer = self._consumer
        seen: set[tuple[str, str]] = set()
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            labels = (self._input_of_topic[tp.topic], str(tp.partition))
            self._metrics.consumer_lag.labels(*labels).set(max(0, end - await consumer.position(tp)))
            seen.add(labels)
        for labels in self._lag_labels - seen:  # revoked partitions leave the gauge
            self._metrics.consumer_lag.remove(*labels)
        self._lag_labels = seen
