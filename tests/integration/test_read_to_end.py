"""`connection.read_to_end`, the read of the verifier, the evidence report and the compliance scans, on the real broker.

It yields every record below the end offsets it was given, in offset order per
partition, from where the caller placed each partition, and nothing appended after;
and it gives up with the caller's error when the partitions it still reads yield
nothing, instead of waiting for ever.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.connection import client_options, read_to_end
from stream.errors import StreamError

from .harness import make_topics, send, unique_settings

pytestmark = pytest.mark.integration


class _Stalled(StreamError):
    """The error a caller passes: read_to_end raises it, naming what it waited for."""


async def test_read_to_end_yields_each_partition_to_its_end_and_nothing_after(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path, partitions=2)
    await make_topics(settings)
    topic = settings.topics.decisions
    await send(settings, topic, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(300)])
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]
        ends = await consumer.end_offsets(tps)
        assert sum(ends.values()) == 300
        # Appended after the ends were taken: not part of this read.
        await send(settings, topic, [(f"late{i}".encode(), b"late") for i in range(50)])
        consumer.assign(tps)
        # Each partition from where the caller places it: partition 1 from its third record.
        consumer.seek(tps[0], 0)
        consumer.seek(tps[1], 2)
        read: dict[int, list[int]] = {0: [], 1: []}
        values: list[bytes] = []
        async for tp, records in read_to_end(consumer, ends, error=_Stalled, max_records=7):
            read[tp.partition] += [r.offset for r in records]
            values += [r.value for r in records]
    finally:
        await consumer.stop()
    assert read[0] == list(range(ends[tps[0]]))
    assert read[1] == list(range(2, ends[tps[1]]))
    assert b"late" not in values


async def test_read_to_end_raises_the_callers_error_when_the_partitions_yield_nothing(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path, partitions=2)
    await make_topics(settings)
    topic = settings.topics.decisions
    await send(settings, topic, [(b"k", b"v")])
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]
        real = await consumer.end_offsets(tps)
        # An end offset beyond what the partition holds: the records never come.
        ends = {tp: end + 10 for tp, end in real.items()}
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        with pytest.raises(_Stalled, match=rf"no records for 1s while reading {topic}\[0\], {topic}\[1\]"):
            async for _ in read_to_end(consumer, ends, error=_Stalled, stall_seconds=1.0):
                pass
    finally:
        await consumer.stop()
