"""Baseline ceiling: a raw aiokafka loop applying the same rule with in-memory dicts.

What the client can do when nothing else is in the way: `getmany` batched fetch,
the rule over Python dicts (`bench.dictfilter`), outputs appended to per-partition
`BatchBuilder`s and sent with `send_batch` (no per-message await), then one commit
per batch after every batch was acknowledged. No RocksDB, no freshness gate: the
compacted state topics are read to their end once at start-up (so a pre-loaded
drain sees the same state as the worker), and afterwards whatever a fetch returns
is applied before the content of the same fetch.

Configured like the worker, from the same environment (`Settings.from_env`: topic
names, group, bootstrap, pseudonym key, linger, compression). Runs until SIGTERM
or SIGINT, finishing the batch in hand.

    python -m bench.baseline_raw
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from bench import common
from bench.dictfilter import DECISIONS, DLQ, FEED, DictFilter, Output
from stream.config import Settings
from stream.core.policy import load_policy

log = logging.getLogger("bench.baseline_raw")

MAX_RECORDS = 5000


class _BatchProducer:
    """Collects a batch's outputs into one BatchBuilder per topic-partition, then sends them all."""

    def __init__(self, producer: AIOKafkaProducer, partitions: dict[str, list[int]]) -> None:
        self._producer = producer
        self._partitions = partitions
        self._builders: dict[tuple[str, int], Any] = {}
        self._futures: list[asyncio.Future[Any]] = []

    async def add(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        parts = self._partitions[topic]
        p = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)] if key is not None else parts[0]
        tp = (topic, p)
        builder = self._builders.get(tp)
        if builder is None:
            builder = self._builders[tp] = self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:  # full: ship it, start another
            builder.close()  # closed: sent at once, no linger (as the worker does)
            self._futures.append(await self._producer.send_batch(builder, topic, partition=p))
            builder = self._builders[tp] = self._producer.create_batch()
            builder.append(key=key, value=value, timestamp=None)

    async def flush(self) -> None:
        for (topic, p), builder in self._builders.items():
            if builder.record_count():
                builder.close()
                self._futures.append(await self._producer.send_batch(builder, topic, partition=p))
        self._builders.clear()
        futures, self._futures = self._futures, []
        if futures:
            await asyncio.gather(*futures)  # an unacknowledged batch raises: the process stops, nothing is committed


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The baseline loop: consume, decide with `DictFilter`, produce, commit; until `stop` is set."""
    t = settings.topics
    filt = DictFilter(load_policy(settings.policy_path), settings.pseudonym_key)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
        fetch_max_wait_ms=100,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        compression_type=settings.compression,
        max_batch_size=512 << 10,
    )
    await consumer.start()
    await producer.start()
    try:
        parts = {name: sorted(await producer.partitions_for(name)) for name in (t.feed, t.decisions, t.dlq)}
        out_topic = {FEED: t.feed, DECISIONS: t.decisions, DLQ: t.dlq}
        sender = _BatchProducer(producer, parts)
        content_tps = [TopicPartition(t.content, p) for p in sorted(await producer.partitions_for(t.content))]
        state_tps = [TopicPartition(topic, tp.partition) for topic in (t.profiles, t.objections) for tp in content_tps]
        consumer.assign(content_tps + state_tps)
        await consumer.seek_to_beginning(*state_tps)
        for tp in content_tps:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)

        async def emit(outputs: list[Output]) -> None:
            for kind, key, value in outputs:
                await sender.add(out_topic[kind], key, value)

        # Start-up: the compacted state up to its end as of now, before any content.
        consumer.pause(*content_tps)
        ends = await consumer.end_offsets(state_tps)
        loaded = 0
        while not stop.is_set():
            lagging = [tp for tp in state_tps if await consumer.position(tp) < ends[tp]]
            if not lagging:
                break
            fetched = await consumer.getmany(*lagging, timeout_ms=500, max_records=MAX_RECORDS)
            now = dt.datetime.now(dt.UTC)
            out: list[Output] = []
            for tp, records in fetched.items():
                apply = filt.apply_profile if tp.topic == t.profiles else filt.apply_objection
                for record in records:
                    apply(record, now, out)
                loaded += len(records)
            await emit(out)
            await sender.flush()
        consumer.resume(*content_tps)
        log.info("state loaded: %d records; deciding content", loaded)

        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            if not fetched:
                continue
            now = dt.datetime.now(dt.UTC)
            out = []
            commit: dict[TopicPartition, int] = {}
            content = []
            for tp, records in fetched.items():
                if tp.topic == t.content:
                    content.append((tp, records))
                    continue
                apply = filt.apply_profile if tp.topic == t.profiles else filt.apply_objection
                for record in records:
                    apply(record, now, out)
            decide = filt.decide_content
            for tp, records in content:
                for record in records:
                    decide(record, now, out)
                commit[tp] = records[-1].offset + 1
            await emit(out)
            await sender.flush()
            if commit:
                await consumer.commit(commit)
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> int:
    """Run the raw aiokafka baseline until interrupted."""
    return common.run_baseline(run)


if __name__ == "__main__":
    raise SystemExit(main())
