"""The open-loop load of the rate and latency runs, at as little CPU as the harness can spend.

On this machine the generator, the reader, the broker and the worker under test share
two cores, so every CPU-second the harness spends is queueing delay it adds to what
it measures. `stream.workload.generator.produce` (the CLI's generator) hands each record to
`AIOKafkaProducer.send`: a future, a partitioner call and an accumulator lookup per
record, ~0.35 core at 3,000 events/s. Here a tick's due records are appended to
per-partition batches that go out closed (one produce request per tick), uncompressed
(the broker then need not decompress them to validate), and the reader reads only
the decisions topic, matching event ids against the send times kept here.

Open loop without coordinated omission: record i is stamped with its *scheduled*
time `start + i / rate` (in `gen_sent_at`), so a generator that falls behind makes
the latency worse instead of hiding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from bench import common
from stream.config import Settings
from stream.workload.generator import Labelled, RecordKind, TopicKind, Workload

# A tick's due records leave together; a record waits at most this long for its tick
# (and that wait counts in its latency). 5 ms is what the platform's own producers
# would wait: the Java client's `linger.ms` default since Kafka 4.0 (KIP-1030), and
# librdkafka's. At 2 ms the generator sent 500 produce requests a second, each a
# loopback write of ~0.2-0.3 ms on this machine, and took ~45 % of a core instead of
# ~36 %, CPU the worker and the broker then lacked (docs/benchmarks.md, notes).
TICK_SECONDS = 0.005
_IN_FLIGHT = 256  # produce futures kept before the oldest must have settled
# A finite run's records are all built before its clock starts, up to this many
# content records: ~4.3 KB of memory each with the state records between them
# (tracemalloc, 100k), so at most ~2 GB. Longer runs build them as they go.
PREBUILT_MAX = 500_000


@dataclass(slots=True)
class Paced:
    """Counts of an open-loop paced send, and how far behind its schedule it fell."""

    content: int = 0  # stamped content records sent (upserts)
    other: int = 0  # state changes, deletes and malformed records sent in between
    behind_max_seconds: float = 0.0  # how far the sender fell behind its schedule at worst
    elapsed_seconds: float = 0.0


_EVENT_ID = b'"event_id":"'


def event_id_of(value: bytes) -> bytes:
    """The event id of a serialised content event or decision, found without decoding the rest.

    Safe on JSON: a quote inside any string value is escaped, so the pattern can only
    be the member's own name.
    """
    start = value.index(_EVENT_ID) + len(_EVENT_ID)
    return value[start : value.index(b'"', start)]


def decisions_in(fetched: Mapping[Any, Iterable[Any]]) -> Iterator[tuple[bytes, Any]]:
    """Each decision record of a reader's fetch (`getmany`'s result), with its event id.

    Byte searches, not a decode of every decision: the readers share the consumers'
    cores, and what they spend is latency they add.
    """
    for records in fetched.values():
        for r in records:
            if r.value is not None and b'"action":"decide"' in r.value:
                yield event_id_of(r.value), r


def stamp(value: bytes, at: float) -> bytes:
    """Add `gen_sent_at` (the scheduled send time `at`, RFC 3339 µs) to a JSON object value without parsing it."""
    whole = int(at)
    return b'%s,"gen_sent_at":"%s.%06dZ"}' % (value[:-1], _second(whole), int((at - whole) * 1_000_000))


@functools.lru_cache(maxsize=4)
def _second(unix_seconds: int) -> bytes:
    """`YYYY-MM-DDTHH:MM:SS` of a whole second: formatted once a second, not once a record."""
    return dt.datetime.fromtimestamp(unix_seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()


def workload_for(seed: int, accounts: int, rate: float, malformed_share: float = 0.005) -> Workload:
    """The workload `stream.workload.generator.produce` builds for a paced run (by default 0.5 % malformed)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    step = dt.timedelta(seconds=1 / rate)
    run = f"{seed & 0xFFFF:x}{int(now.timestamp()):x}"  # re-runs on the same topics repeat no event id
    return Workload(seed=seed, accounts=accounts, now=now, malformed_share=malformed_share, step=step, run=run)


async def paced(
    settings: Settings,
    workload: Workload,
    *,
    rate: float,
    count: int,
    on_sent: Callable[[bytes, float], None] | None = None,
) -> Paced:
    """Send `workload.stream(count)` at `rate` content records per second (setup excluded).

    `on_sent(event_id, scheduled_unix_time)` is called for every stamped upsert.
    Raises if the broker does not acknowledge a record.
    """
    t = settings.topics
    topic_of = {TopicKind.CONTENT: t.content, TopicKind.PROFILES: t.profiles, TopicKind.OBJECTIONS: t.objections}
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", compression_type=None, max_batch_size=1 << 20
    )
    await producer.start()
    stats = Paced()
    loop = asyncio.get_running_loop()
    futures: deque[asyncio.Future[Any]] = deque()
    partition_of: dict[bytes, int] = {}
    started = time.monotonic()
    try:
        counts = {topic: len(await producer.partitions_for(topic)) for topic in topic_of.values()}
        stream: Iterator[Labelled] = workload.stream(count)  # builds its pools before the clock starts
        if count <= PREBUILT_MAX:
            # Built now rather than on the clock: making a record costs about as much
            # CPU as sending it, and on the clock that CPU is taken from the worker.
            stream = iter(list(stream))
        interval = 1.0 / rate
        t0 = loop.time()
        wall0 = time.time()
        sent = 0
        exhausted = False
        while not exhausted and sent < count:
            now = loop.time()
            due = min(count, int((now - t0) / interval) + 1)
            if due > sent:
                stats.behind_max_seconds = max(stats.behind_max_seconds, now - (t0 + sent * interval))
            batches: dict[tuple[str, int], Any] = {}
            while sent < due:
                item = next(stream, None)
                if item is None:
                    exhausted = True
                    break
                kind, key, value = item.record
                topic = topic_of[kind]
                if kind is TopicKind.CONTENT:
                    sent += 1
                if item.kind is RecordKind.UPSERT and value is not None:
                    at = wall0 + (sent - 1) * interval
                    value = stamp(value, at)
                    stats.content += 1
                    if on_sent is not None:
                        on_sent(event_id_of(value), at)
                else:
                    stats.other += 1
                p = 0
                if key is not None:
                    p = partition_of.get(key, -1)
                    if p < 0:
                        p = partition_of[key] = (murmur2(key) & 0x7FFFFFFF) % counts[topic]
                batch = batches.get((topic, p))
                if batch is None:
                    batch = batches[topic, p] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batch.close()
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch = batches[topic, p] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            for (topic, p), batch in batches.items():
                batch.close()  # closed: it leaves now instead of lingering
                futures.append(await producer.send_batch(batch, topic, partition=p))
            while futures and (futures[0].done() or len(futures) > _IN_FLIGHT):
                await futures.popleft()  # raises if the broker refused it
            # The next tick, or the next record if that is due later (a low rate).
            await asyncio.sleep(max(TICK_SECONDS, t0 + sent * interval - loop.time()))
        while futures:
            await futures.popleft()
    finally:
        await producer.stop()
        stats.elapsed_seconds = time.monotonic() - started
    return stats


@contextlib.contextmanager
def no_collector_pauses() -> Iterator[None]:
    """The harness's own garbage collector off while it measures.

    A full collection walks everything the harness holds (the workload's pools, the
    send times of records in flight): tens of milliseconds in which it neither sends
    nor reads, counted as the worker's latency. What the measurement allocates is
    freed by reference counting (decoded records hold no cycles); the collector
    runs again afterwards.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def setup(settings: Settings, workload: Workload) -> None:
    """Every account's profile and the objections on record, in bulk, before the clock starts."""
    await common.preload(settings.bootstrap_servers, settings.topics, (i.record for i in workload.setup()))
