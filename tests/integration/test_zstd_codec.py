"""The zstd codec on reused contexts (stream/zstd_codec.py) against the real broker and the other clients.

Its frames must be ones the broker validates and librdkafka reads; and it must read
the frames the broker (Java's zstd-jni, which writes no content size) and
librdkafka write, on its own context, not aiokafka's (cramjam's). Each test counts the
calls of the installed codec, so it fails when the batches did not go through it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import cramjam
import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, Producer

from stream import zstd_codec
from stream.config import Settings
from tests.unit.test_zstd_codec import count_calls

from .harness import make_topics, read_until, set_topic_config, unique_settings

pytestmark = pytest.mark.integration

# Values of every shape a batch carries: JSON, unicode, empty, and large.
VALUES = [b'{"content_id":"c%d","text":"%s"}' % (i, ("\u00e9\U0001f600 " * (i % 40)).encode()) for i in range(300)] + [
    b"",
    b"x" * 200_000,
]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """The installed codec of aiokafka's record extension, counting its calls."""
    assert zstd_codec.install()
    yield count_calls(monkeypatch, zstd_codec.RECORD_MODULES[:1])


@pytest.fixture
def cramjam_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many batches aiokafka's own codec (cramjam) decompressed: one entry each."""
    seen: list[int] = []
    original = cramjam.zstd.decompress

    def counting(payload: object) -> object:
        seen.append(1)
        return original(payload)

    monkeypatch.setattr(cramjam.zstd, "decompress", counting)
    return seen


async def aiokafka_send(bootstrap: str, topic: str, compression: str | None) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", compression_type=compression, linger_ms=5, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, key=b"k%d" % i, value=v) for i, v in enumerate(VALUES)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def aiokafka_read(settings: Settings, topic: str, count: int) -> list[bytes | None]:
    return [o.value for o in await read_until(settings, topic, count)]


def librdkafka_read(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[bytes | None]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"zstd-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[bytes | None] = []
    try:
        for message in iter(lambda: consumer.poll(timeout), None):
            assert message.error() is None, message.error()
            out.append(message.value())
            if len(out) == count:
                break
    finally:
        consumer.close()
    assert len(out) == count, f"{len(out)} of {count} records"
    return out


async def test_its_frames_are_taken_by_the_broker_and_read_by_librdkafka(
    bootstrap: str, tmp_path: Path, calls: dict[str, int]
) -> None:
    """On a compacted topic, whose batches the broker decompresses to check their keys."""
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    topic = settings.topics.feed  # compacted
    await aiokafka_send(bootstrap, topic, "zstd")
    assert calls["encode"] >= 1
    assert await asyncio.to_thread(librdkafka_read, bootstrap, topic, len(VALUES)) == VALUES


async def test_it_reads_librdkafkas_frames(
    bootstrap: str, tmp_path: Path, calls: dict[str, int], cramjam_reads: list[int]
) -> None:
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    topic = settings.topics.content

    def produce() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "zstd", "linger.ms": 20})
        for i, v in enumerate(VALUES):
            producer.produce(topic, key=b"k%d" % i, value=v)
        assert producer.flush(30) == 0

    await asyncio.to_thread(produce)
    assert await aiokafka_read(settings, topic, len(VALUES)) == VALUES
    assert calls["decode"] >= 1
    assert cramjam_reads == []  # librdkafka's frames state no size: streamed on our context


async def test_it_reads_the_brokers_frames(
    bootstrap: str, tmp_path: Path, calls: dict[str, int], cramjam_reads: list[int]
) -> None:
    """A topic with compression.type=zstd: the broker (zstd-jni) compresses what arrives uncompressed."""
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    topic = settings.topics.content
    await set_topic_config(bootstrap, topic, {"compression.type": "zstd"})
    await aiokafka_send(bootstrap, topic, None)
    assert calls["encode"] == 0
    assert await aiokafka_read(settings, topic, len(VALUES)) == VALUES
    assert calls["decode"] >= 1
    assert cramjam_reads == []  # zstd-jni's frames state no size: streamed on our context
