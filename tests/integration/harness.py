"""Helpers for integration tests: uuid-named topics, a worker run in-process, awaited outputs."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream.config import Settings, TopicNames
from stream.core.engine import Engine
from stream.core.policy import load_policy
from stream.runtime.cycle import BatchCycle
from stream.runtime.metrics import Metrics
from stream.runtime.topics import create_topics
from stream.runtime.worker import FilterWorker
from stream.workload.generator import Record, TopicKind

KEY = b"integration-test-key"

# The name prefixes of every `unique_settings` of this session: its topics, the
# topics a test derives from them, and its Faust app's own topics (named after the
# group) are deleted when the session ends (tests/conftest.py). Left behind, each run
# added ~300 partitions to the local broker; after some dozen runs it took longer
# than its 90 s to start, and it was slower in the benchmarks.
CREATED_PREFIXES: list[str] = []


def unique_settings(bootstrap: str, data_dir: Path, *, partitions: int = 2) -> Settings:
    tag = uuid.uuid4().hex[:10]
    base = TopicNames()
    topics = TopicNames(**{f: f"t{tag}.{getattr(base, f)}" for f in base.__dataclass_fields__})
    CREATED_PREFIXES.extend((f"t{tag}.", f"it-{tag}-"))
    return Settings(
        bootstrap_servers=bootstrap,
        data_dir=data_dir,
        pseudonym_key=KEY,
        partitions=partitions,
        group_id=f"it-{tag}",
        topics=topics,
        dev_mode=True,
    )


async def make_topics(settings: Settings) -> None:
    await create_topics(settings)


async def delete_created_topics(bootstrap: str) -> list[str]:
    """Delete the topics named after this session's `unique_settings`; return their names."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="integration-test-cleanup")
    await admin.start()
    try:
        prefixes = tuple(CREATED_PREFIXES)
        doomed = sorted(topic for topic in await admin.list_topics() if topic.startswith(prefixes))
        if doomed:
            await admin.delete_topics(doomed)
        CREATED_PREFIXES.clear()
        return doomed
    finally:
        await admin.close()


@dataclass
class Out:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int

    def json(self) -> Any:
        return orjson.loads(self.value) if self.value is not None else None


async def send(settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    """Produce records in order and wait until the broker acknowledged them all."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def js(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


async def read_until(settings: Settings, topic: str, count: int, timeout: float = 60.0) -> list[Out]:
    """Read `topic` from the beginning until `count` records arrived (fails on timeout)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[Out] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < count:
                fetched = await consumer.getmany(timeout_ms=200)
                for records in fetched.values():
                    out.extend(Out(r.key, r.value, r.partition, r.offset) for r in records)
    except TimeoutError:
        raise AssertionError(f"{topic}: {len(out)} of {count} records after {timeout}s") from None
    finally:
        await consumer.stop()
    return out


async def read_all(settings: Settings, topic: str) -> list[Out]:
    """Everything on `topic` up to its current end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Out] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            fetched = await consumer.getmany(timeout_ms=200)
            for records in fetched.values():
                out.extend(Out(r.key, r.value, r.partition, r.offset) for r in records)
        return out
    finally:
        await consumer.stop()


def latest_by_key(records: Iterable[Out]) -> dict[bytes | None, Out]:
    """The compacted view: the last record of each key."""
    view: dict[bytes | None, Out] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        view[record.key] = record
    return view


def build_worker(settings: Settings) -> FilterWorker:
    return FilterWorker(
        settings, Engine(load_policy(settings.policy_path), settings.pseudonym_key, settings.topics), Metrics.create()
    )


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[FilterWorker]:
    """A FilterWorker consuming in this event loop until the block ends."""
    worker = build_worker(settings)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def committed(settings: Settings, topic: str) -> dict[int, int | None]:
    """The group's committed offset of each partition of `topic`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetch metadata: partitions_for_topic reads only the cache
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(settings.partitions)}
    finally:
        await consumer.stop()


def sample(worker: FilterWorker, name: str, **labels: str) -> float:
    """The worker's own metric value (0 when the series has no sample yet)."""
    value = worker.metrics.registry.get_sample_value(name, labels)
    return value if value is not None else 0.0


async def until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for a condition of the worker's own state (where no broker offset can be awaited)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def before_each_cycle(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[Sequence[Any], Sequence[Any]], Awaitable[None]]
) -> None:
    """Await `before(state, content)` at the start of every batch cycle: to hold one, or to record them."""
    process = BatchCycle.process

    async def wrapped(cycle: BatchCycle, state: Any, content: Any, **options: Any) -> None:
        await before(state, content)
        await process(cycle, state, content, **options)

    monkeypatch.setattr(BatchCycle, "process", wrapped)


# A config entry's source in DescribeConfigs v1 and later: set on the topic itself.
DYNAMIC_TOPIC_CONFIG = 1


async def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    """The configs set on `topic` itself (not the broker's defaults), as the broker describes them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await _own_configs(admin, topic)
    finally:
        await admin.close()


async def _own_configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    # v0 has no source per entry, only whether it is a default: a broker that old is not ours.
    assert response.API_VERSION >= 1, f"DescribeConfigs v{response.API_VERSION}: entries carry no source"
    own: dict[str, str] = {}
    for error, message, _, name, entries in response.resources:
        assert error == 0, f"describing {name}: error {error} ({message})"
        own.update({entry[0]: entry[1] for entry in entries if entry[3] == DYNAMIC_TOPIC_CONFIG})
    return own


async def set_topic_config(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    """Set `configs` on `topic`; its other configs of its own (a compacted topic's cleanup policy) stay.

    AlterConfigs, the request aiokafka's admin client sends, replaces a topic's whole
    set: a config it does not name goes back to the broker's default (the feed's
    `cleanup.policy=compact` to `delete`). So the topic's own configs are read first
    and sent again, `configs` over them.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        merged = {**await _own_configs(admin, topic), **configs}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=merged)])
    finally:
        await admin.close()


def with_topics(settings: Settings, **names: str) -> Settings:
    return replace(settings, topics=replace(settings.topics, **names))


# -- real worker processes ---------------------------------------------------------


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that points `python -m stream ...` at these settings' topics and broker."""
    import os

    base = TopicNames()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    env.update(
        {
            "STREAM_TOPIC_" + getattr(base, f).upper().replace(".", "_"): getattr(settings.topics, f)
            for f in base.__dataclass_fields__
        }
    )
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        STREAM_DATA_DIR=str(settings.data_dir),
        STREAM_PARTITIONS=str(settings.partitions),
        STREAM_GROUP_ID=settings.group_id,
        STREAM_DEV_MODE="1",
    )
    env.update(extra)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET on loopback; status 0 when nothing answers."""
    import urllib.error
    import urllib.request

    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except OSError:
            return 0, b""

    return await asyncio.to_thread(get)


# Stamped an hour back: state of an existing population, older than any content.
HOUR_AGO_MS = int((time.time() - 3600) * 1000)


async def send_workload(settings: Settings, setup: list[Record], stream: list[Record]) -> None:
    """One producer, in the workload's order, so state changes interleave with content as generated.

    The setup (profiles, initial objections) is stamped an hour back, as an existing
    population would be; the stream carries the time it is sent.
    """
    topics = {
        TopicKind.CONTENT: settings.topics.content,
        TopicKind.PROFILES: settings.topics.profiles,
        TopicKind.OBJECTIONS: settings.topics.objections,
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(topics[r.topic], key=r.key, value=r.value, timestamp_ms=HOUR_AGO_MS) for r in setup
        ]
        futures += [await producer.send(topics[r.topic], key=r.key, value=r.value) for r in stream]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    await send_markers(settings, "workload")


async def send_markers(settings: Settings, tag: str) -> None:
    """A content event on every partition after everything sent so far.

    Once the worker has committed them, its freshness gate has applied every state
    change sent before them, so all their retractions are on the feed.
    """
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        futures = []
        for p in range(settings.partitions):
            author = f"marker-{tag}-{p}"
            marker = js(
                {
                    "event_id": author,
                    "op": "delete",
                    "content_id": author,
                    "author_id": author,
                    "event_time": "2026-11-28T09:15:00Z",
                }
            )
            futures.append(await producer.send(settings.topics.content, key=author.encode(), value=marker, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def content_consumed(settings: Settings, timeout: float = 120.0) -> None:
    """Wait until the worker's group committed the content topic up to its end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topics.content, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        async with asyncio.timeout(timeout):
            while [tp for tp in tps if (await consumer.committed(tp) or 0) < ends[tp]]:
                await asyncio.sleep(0.2)  # polling the committed offsets, not a guess at timing
    finally:
        await consumer.stop()


@contextlib.contextmanager
def loop_in_a_thread(name: str) -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own: for clients that must not share the test's loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"{name}-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
