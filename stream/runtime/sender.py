"""The output sender: a batch's records to the broker as closed per-partition batches, and their acknowledgements.

Owns the producer's side of engine.py's crash-safe order: `deliver` awaits the
published index's new entries, then sends and awaits the batch's records, then what
must follow them (index removals, the items' latest events), each step only once the
one before was acknowledged. What is written or committed after that is the batch
cycle's (`cycle.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from stream.config import TopicNames
from stream.core.engine import BatchResult, OutputTopic, Produce
from stream.core.partitioning import by_partition
from stream.errors import DeliveryError

# A batch of records handed to the producer: topic, partition, record count, delivery future.
Sent = tuple[str, int, int, "asyncio.Future[Any]"]
# A batch the broker acknowledged: topic, partition, record count, offset of its first record.
Acked = tuple[str, int, int, int]


class OutputSender:
    """Sends through a started producer; output partition counts are read once per topic."""

    def __init__(self, producer: AIOKafkaProducer, topics: TopicNames, *, shadow: bool = False) -> None:
        self._producer = producer
        self._out_topic = {
            OutputTopic.FEED: topics.feed,
            OutputTopic.DECISIONS: topics.decisions,
            OutputTopic.DLQ: topics.dlq,
            OutputTopic.DEFERRED: topics.deferred,
            OutputTopic.PUBLISHED: topics.published,
            OutputTopic.ITEMS: topics.items,
            OutputTopic.RETRACTIONS: topics.retractions,
        }
        if shadow:  # the diff topic exists only where a shadow policy runs (`topics.check_layout`)
            self._out_topic[OutputTopic.SHADOW] = topics.shadow
        self._partition_counts: dict[str, int] = {}

    async def deliver(self, result: BatchResult, first: list[Sent]) -> list[Acked]:
        """Await `first` (the result's index entries, sent already), then send and await the rest in order."""
        acked = await self.acknowledged(first)
        # A shadow's diff records go with the decisions, apart from them in the result
        # (`BatchResult.shadow`): acknowledged before the batch is committed, like them.
        produce = [*result.produce, *result.shadow] if result.shadow else result.produce
        acked += await self.acknowledged(await self.send(produce))
        if result.last:
            acked += await self.acknowledged(await self.send(result.last))
        return acked

    async def send(self, records: Sequence[Produce]) -> list[Sent]:
        """Hand `records` to the producer as closed per-partition batches; do not wait for the broker.

        A changelog record goes to its input's partition number; any other record to
        the partition Kafka's default partitioner gives its key (see `partitioning`).
        """
        if not records:
            return []
        producer = self._producer
        sent: list[Sent] = []

        async def send(topic: str, partition: int, batch: Any) -> None:
            # A closed batch goes out at once: it is whole already, lingering would
            # only add the linger time to every batch's latency.
            batch.close()
            count = batch.record_count()
            sent.append((topic, partition, count, await producer.send_batch(batch, topic, partition=partition)))

        # Partition counts once per batch, not an await per record.
        counts = {out: await self._partitions_of(topic) for out, topic in self._out_topic.items()}
        for (out, partition), group in by_partition(records, counts).items():
            topic = self._out_topic[out]
            batch = producer.create_batch()
            for p in group:
                # None: the batch is full; send it and start another.
                if batch.append(key=p.key, value=p.value, timestamp=None, headers=p.headers) is None:
                    await send(topic, partition, batch)
                    batch = producer.create_batch()
                    if batch.append(key=p.key, value=p.value, timestamp=None, headers=p.headers) is None:
                        raise DeliveryError(f"a record for {topic} is larger than a whole producer batch")
            await send(topic, partition, batch)
        return sent

    @staticmethod
    async def acknowledged(sent: list[Sent]) -> list[Acked]:
        """Wait until the broker acknowledged every batch sent; raise if one was refused.

        Returns each batch's topic, partition, record count and first offset, from
        which `offsets.changelog_offsets` finds the next offsets of our changelogs.
        """
        if not sent:
            return []
        outcomes: list[Any] = await asyncio.gather(*(future for *_, future in sent), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise DeliveryError(f"{len(errors)} of {len(sent)} batches not acknowledged: {errors[0]!r}")
        # Each outcome is the batch's RecordMetadata; its offset is the batch's first.
        return [(t, p, n, meta.offset) for (t, p, n, _), meta in zip(sent, outcomes, strict=True)]

    async def _partitions_of(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = self._partition_counts[topic] = len(await self._producer.partitions_for(topic))
        return count
