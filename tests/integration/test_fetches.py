"""A fetch cut short no longer counts as in flight, with aiokafka's own getmany on the real broker (fetches.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.runtime.fetches import fetch

from .harness import make_topics, unique_settings

pytestmark = pytest.mark.integration


async def test_cancelled_fetch_leaves_the_consumer_idle_again(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topics.profiles, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        waiting = asyncio.create_task(fetch(consumer, tp, timeout_ms=30_000, max_records=10))  # nothing comes
        await asyncio.sleep(0)  # one turn: getmany is in its wait, counted as in flight
        in_flight = consumer._subscription.fetcher_idle_time  # noqa: SLF001, RUF100  # what fetches.py mends
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.01)  # the idle time is a clock's: it grows again
        assert (in_flight, consumer._subscription.fetcher_idle_time > 0) == (0, True)  # noqa: SLF001, RUF100
    finally:
        await consumer.stop()
