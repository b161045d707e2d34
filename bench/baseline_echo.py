"""Latency floors: consumers that decide nothing and echo each content event as a decision.

The shortest path an event can take through a consumer on this machine: fetch,
append each upsert (its bytes and `"action":"decide"`, all the latency reader looks
for) to per-partition batches of the decisions topic, send them closed (no linger),
wait for the broker's acknowledgement, fetch again. No state, no rule, no commit
awaited. `python -m bench latency` runs it after each worker run at the same rate:
what the generator, the broker, one consumer hop and the reader cost on the machine
in that invocation, whatever a consumer does.

With `--ordered`, the echo keeps the worker's crash-safe order (`stream/core/engine.py`)
with nothing to decide: for every fetched partition one record to the published index's
changelog, acknowledged before the echoes are sent; the echoes, acknowledged; then one
record to the items changelog, acknowledged before the next fetch is handled. That is
the least latency any consumer keeping that order can have here: the floor the
worker's own work (gate, decisions, store) adds to.

Configured from the worker's environment (`Settings.from_env`: topics, bootstrap,
compression). Runs until SIGTERM or SIGINT.

    python -m bench.baseline_echo [--ordered]
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import common
from stream.config import Settings

log = logging.getLogger("bench.baseline_echo")

_DECIDE = b',"action":"decide"}'
_EVENT_ID = b'"event_id":"'


async def run(settings: Settings, stop: asyncio.Event, *, ordered: bool = False) -> None:
    """Echo content upserts to the decisions topic, partition for partition, until `stop` is set.

    With `ordered`, between acknowledged steps before and after them as the worker's order has.
    """
    t = settings.topics
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=100,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        compression_type=settings.compression,
        max_batch_size=512 << 10,
    )
    await consumer.start()
    await producer.start()
    try:
        out = sorted(await producer.partitions_for(t.decisions))
        tps = [TopicPartition(t.content, p) for p in sorted(await producer.partitions_for(t.content))]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        log.info("echoing %s to %s%s", t.content, t.decisions, " in the crash-safe order" if ordered else "")
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=200, max_records=5000)
            futures: list[asyncio.Future[Any]] = []
            if ordered and fetched:
                await _marker_step(producer, t.published, fetched)  # the index's entries, before any echo
            for tp, records in fetched.items():
                partition = out[tp.partition % len(out)]
                batch = producer.create_batch()
                for r in records:
                    # Only what the latency run stamps and matches: an event with an id (no malformed record).
                    if not (r.value and r.value.endswith(b"}") and _EVENT_ID in r.value):
                        continue
                    value = r.value[:-1] + _DECIDE
                    if batch.append(key=r.key, value=value, timestamp=None) is None:  # full: send it, start another
                        batch.close()
                        futures.append(await producer.send_batch(batch, t.decisions, partition=partition))
                        batch = producer.create_batch()
                        batch.append(key=r.key, value=value, timestamp=None)
                if batch.record_count():
                    batch.close()  # closed: sent at once, no linger
                    futures.append(await producer.send_batch(batch, t.decisions, partition=partition))
            if futures:
                await asyncio.gather(*futures)
            if ordered and fetched:
                await _marker_step(producer, t.items, fetched)  # the items' latest events, after the echoes
    finally:
        await producer.stop()
        await consumer.stop()


async def _marker_step(producer: AIOKafkaProducer, topic: str, fetched: dict[TopicPartition, Any]) -> None:
    """One small record to `topic` for each fetched partition (its number there), sent closed and acknowledged."""
    futures = []
    for tp in fetched:
        batch = producer.create_batch()
        batch.append(key=b"echo", value=b"{}", timestamp=None)
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=tp.partition))
    await asyncio.gather(*futures)


def main() -> int:
    """Run the echo floor (`--ordered`: in the crash-safe order) until interrupted."""
    ordered = "--ordered" in sys.argv[1:]
    return common.run_baseline(lambda settings, stop: run(settings, stop, ordered=ordered))


if __name__ == "__main__":
    raise SystemExit(main())
