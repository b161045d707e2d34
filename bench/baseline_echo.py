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

Two more options measure what a consumer's own work costs that floor (bench/notes.md,
"Work per batch, and pipelining it"): `--work-ms MS` spends MS milliseconds of CPU on the
event loop's thread for each fetched batch before its steps, as a decision would;
`--pipelined` (implies `--ordered`) lets the next batch be fetched and worked on while the
last one's steps are awaited, its own steps starting only once those are done.

Configured from the worker's environment (`Settings.from_env`: topics, bootstrap,
compression). Runs until SIGTERM or SIGINT.

    python -m bench.baseline_echo [--ordered] [--work-ms MS] [--pipelined]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import common
from stream.config import Settings

log = logging.getLogger("bench.baseline_echo")

_DECIDE = b',"action":"decide"}'
_EVENT_ID = b'"event_id":"'


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    ordered: bool = False,
    work_ms: float = 0.0,
    pipelined: bool = False,
) -> None:
    """Echo content upserts to the decisions topic, partition for partition, until `stop` is set.

    With `ordered`, between acknowledged steps before and after them as the worker's order has;
    `work_ms` of CPU spent per fetched batch first; with `pipelined`, the next batch fetched and
    worked on while the last one's steps are awaited.
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
    previous: asyncio.Task[None] | None = None
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
            if not fetched:
                continue
            _work(work_ms)
            if pipelined:
                # This batch's steps begin once the last one's are done (its task awaits
                # them); meanwhile the loop fetches and works on the next batch.
                task = asyncio.create_task(_steps(producer, settings, out, fetched, ordered=True, after=previous))
                if previous is not None:
                    await previous
                previous = task
            else:
                await _steps(producer, settings, out, fetched, ordered=ordered)
        if previous is not None:
            await previous
    finally:
        if previous is not None and not previous.done():
            previous.cancel()
        await producer.stop()
        await consumer.stop()


def _work(ms: float) -> None:
    """Spend `ms` milliseconds of CPU on this thread, as deciding a batch would."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


async def _steps(
    producer: AIOKafkaProducer,
    settings: Settings,
    out: list[int],
    fetched: dict[TopicPartition, Any],
    *,
    ordered: bool,
    after: asyncio.Task[None] | None = None,
) -> None:
    """The echoes of `fetched`, acknowledged; with `ordered`, between the two marker steps; after `after`."""
    t = settings.topics
    if after is not None:
        await after
    futures: list[asyncio.Future[Any]] = []
    if ordered:
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
    if ordered:
        await _marker_step(producer, t.items, fetched)  # the items' latest events, after the echoes


async def _marker_step(producer: AIOKafkaProducer, topic: str, fetched: dict[TopicPartition, Any]) -> None:
    """One small record to `topic` for each fetched partition (its number there), sent closed and acknowledged."""
    futures = []
    for tp in fetched:
        batch = producer.create_batch()
        batch.append(key=b"echo", value=b"{}", timestamp=None)
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=tp.partition))
    await asyncio.gather(*futures)


def main(argv: list[str] | None = None) -> int:
    """Run the echo floor until interrupted (`--ordered`: in the crash-safe order)."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_echo")
    parser.add_argument("--ordered", action="store_true", help="the crash-safe order's steps around the echoes")
    parser.add_argument("--work-ms", type=float, default=0.0, help="CPU milliseconds spent per fetched batch [0]")
    parser.add_argument("--pipelined", action="store_true", help="work on the next batch during the last one's steps")
    args = parser.parse_args(argv)
    return common.run_baseline(
        lambda settings, stop: run(
            settings, stop, ordered=args.ordered or args.pipelined, work_ms=args.work_ms, pipelined=args.pipelined
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
