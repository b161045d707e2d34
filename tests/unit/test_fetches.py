"""The one private aiokafka counter the worker mends (stream/runtime/fetches.py): fails if aiokafka changes it.

On the real broker, with aiokafka's own getmany: tests/integration/test_fetches.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream.runtime.fetches import fetch


def _consumer_waiting_in_a_fetch() -> tuple[AIOKafkaConsumer, asyncio.Event]:
    """A consumer never started whose getmany waits, as aiokafka's does, inside its fetch count."""
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # no connection
    in_fetch = asyncio.Event()

    async def getmany(*partitions: TopicPartition, **options: Any) -> dict[TopicPartition, list[Any]]:
        with consumer._subscription.fetch_context():  # noqa: SLF001, RUF100  # the same path as aiokafka's getmany
            in_fetch.set()
            await asyncio.get_running_loop().create_future()
        return {}

    consumer.getmany = getmany  # type: ignore[method-assign]
    return consumer, in_fetch


async def _cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _fetches_in_flight(consumer: AIOKafkaConsumer) -> int:
    count: int = consumer._subscription._fetch_count  # noqa: SLF001, RUF100  # what fetches.py mends
    return count


async def test_aiokafka_leaves_a_cancelled_fetch_counted() -> None:
    # What fetches.py mends. If aiokafka ends the count itself (a `finally` in
    # fetch_context), this fails: then drop the mending, which would count twice.
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    with contextlib.suppress(asyncio.CancelledError), consumer._subscription.fetch_context():  # noqa: SLF001, RUF100
        raise asyncio.CancelledError
    assert _fetches_in_flight(consumer) == 1
    assert consumer._subscription.fetcher_idle_time == 0  # noqa: SLF001, RUF100  # busy for ever


async def test_cancelled_fetch_is_no_longer_in_flight_and_the_consumer_idles_again() -> None:
    consumer, in_fetch = _consumer_waiting_in_a_fetch()
    task = asyncio.create_task(fetch(consumer, timeout_ms=500, max_records=10))
    await in_fetch.wait()
    assert _fetches_in_flight(consumer) == 1
    await _cancelled(task)
    assert _fetches_in_flight(consumer) == 0
    await asyncio.sleep(0.01)  # the idle time is a clock's: it grows again
    assert consumer._subscription.fetcher_idle_time > 0  # noqa: SLF001, RUF100


async def test_fetch_that_ends_returns_what_getmany_returned_and_counts_nothing_twice() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    tp = TopicPartition("content.events", 0)

    async def getmany(*partitions: TopicPartition, **options: Any) -> dict[TopicPartition, list[Any]]:
        with consumer._subscription.fetch_context():  # noqa: SLF001, RUF100
            return {tp: [partitions, options]}

    consumer.getmany = getmany  # type: ignore[method-assign]
    fetched = await fetch(consumer, tp, timeout_ms=5, max_records=3)
    assert fetched == {tp: [(tp,), {"timeout_ms": 5, "max_records": 3}]}
    assert _fetches_in_flight(consumer) == 0


async def test_a_fetch_cancelled_while_another_is_in_flight_leaves_that_one_counted() -> None:
    consumer, in_fetch = _consumer_waiting_in_a_fetch()
    first = asyncio.create_task(fetch(consumer, timeout_ms=500, max_records=10))
    await in_fetch.wait()
    in_fetch.clear()
    second = asyncio.create_task(fetch(consumer, timeout_ms=500, max_records=10))
    await in_fetch.wait()
    assert _fetches_in_flight(consumer) == 2
    await _cancelled(second)
    assert _fetches_in_flight(consumer) == 1
    assert consumer._subscription.fetcher_idle_time == 0  # noqa: SLF001, RUF100  # the first is in flight
    await _cancelled(first)
    assert _fetches_in_flight(consumer) == 0


async def test_fetch_ended_by_an_error_is_no_longer_in_flight() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")

    async def getmany(*partitions: TopicPartition, **options: Any) -> dict[TopicPartition, list[Any]]:
        with consumer._subscription.fetch_context():  # noqa: SLF001, RUF100
            raise KafkaError("a partition's error, raised to the caller")

    consumer.getmany = getmany  # type: ignore[method-assign]
    with pytest.raises(KafkaError):
        await fetch(consumer, timeout_ms=5, max_records=3)
    assert _fetches_in_flight(consumer) == 0


async def test_fetch_refused_before_it_began_counts_nothing_back() -> None:
    consumer, in_fetch = _consumer_waiting_in_a_fetch()
    waiting = asyncio.create_task(fetch(consumer, timeout_ms=500, max_records=10))
    await in_fetch.wait()
    refusing = consumer.getmany

    async def refused(*partitions: TopicPartition, **options: Any) -> dict[TopicPartition, list[Any]]:
        raise KafkaError("refused before its fetch count, like ConsumerStoppedError")

    consumer.getmany = refused  # type: ignore[method-assign]
    with pytest.raises(KafkaError):
        await fetch(consumer, timeout_ms=5, max_records=3)
    assert _fetches_in_flight(consumer) == 1  # the other fetch is still in flight
    consumer.getmany = refusing  # type: ignore[method-assign]
    await _cancelled(waiting)
    assert _fetches_in_flight(consumer) == 0
