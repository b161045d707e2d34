"""Latency floor: a consumer that decides nothing and echoes each content event as a decision.

The shortest path an event can take through a consumer on this machine: fetch,
append each upsert (its bytes and `"action":"decide"`, all the latency reader looks
for) to per-partition batches of the decisions topic, send them closed (no linger),
wait for the broker's acknowledgement, fetch again. No state, no rule, no commit
awaited. `python -m bench latency --consumers echo,...` measures it beside the
worker at the same rate: what the generator, the broker, one client hop and the
reader cost on the machine in that run, whatever a consumer does.

Configured from the worker's environment (`Settings.from_env`: topics, bootstrap,
compression). Runs until SIGTERM or SIGINT.

    python -m bench.baseline_echo
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.config import Settings

log = logging.getLogger("bench.baseline_echo")

_DECIDE = b',"action":"decide"}'
_EVENT_ID = b'"event_id":"'


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Echo content upserts to the decisions topic, partition for partition, until `stop` is set."""
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
        log.info("echoing %s to %s", t.content, t.decisions)
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=200, max_records=5000)
            futures: list[asyncio.Future[Any]] = []
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
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> int:
    """Run the echo floor until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    uvloop.run(go())  # the worker's event loop
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
