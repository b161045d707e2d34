"""The output sender (stream/runtime/sender.py): placement, closed batches, and the three steps of the crash order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from stream.config import Settings
from stream.core.engine import BatchResult, OutputTopic, Produce
from stream.core.partitioning import partition_for
from stream.core.records import key_id_headers, pseudonym_key_id
from stream.errors import DeliveryError
from stream.runtime.sender import OutputSender

T = Settings().topics


class _Batch:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.headers: list[list[tuple[str, bytes]] | None] = []
        self.capacity = capacity
        self.closed = False

    def append(
        self, *, key: bytes | None, value: bytes | None, timestamp: None, headers: list[tuple[str, bytes]] | None
    ) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        self.headers.append(headers)
        return object()

    def close(self) -> None:
        self.closed = True

    def record_count(self) -> int:
        return len(self.records)


class _Producer:
    """The producer calls the sender makes; each topic's log gives offsets; `refuse` topics fail."""

    def __init__(self, *, partitions: int = 4, capacity: int = 100, refuse: frozenset[str] = frozenset()) -> None:
        self.partitions = partitions
        self.capacity = capacity
        self.refuse = refuse
        self.sent: list[tuple[str, int, _Batch]] = []
        self.ends: dict[tuple[str, int], int] = {}

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> _Batch:
        return _Batch(self.capacity)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert batch.closed  # a closed batch goes out at once, without lingering
        self.sent.append((topic, partition, batch))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if topic in self.refuse:
            future.set_exception(RuntimeError("refused"))
        else:
            base = self.ends.get((topic, partition), 0)
            self.ends[topic, partition] = base + batch.record_count()
            future.set_result(SimpleNamespace(offset=base))
        return future


async def test_send_changelog_records_keep_their_partition_and_others_go_by_key() -> None:
    producer = _Producer()
    sender = OutputSender(producer, T)

    sent = await sender.send(
        [Produce(OutputTopic.PUBLISHED, b"item", b"v", 6), Produce(OutputTopic.FEED, b"c-1", b"v", 0)]
    )

    assert [(topic, partition, n) for topic, partition, n, _ in sent] == [
        (T.published, 6 % 4, 1),
        (T.feed, partition_for(b"c-1", 4), 1),
    ]


async def test_send_record_headers_reach_the_batch_feed_records_name_their_pseudonym_key() -> None:
    producer = _Producer(partitions=1)
    named = key_id_headers(b"k" * 32)
    await OutputSender(producer, T).send(
        [Produce(OutputTopic.FEED, b"c-1", b"v", 0, named), Produce(OutputTopic.DECISIONS, b"c-1", b"d", 0)]
    )

    headers = {topic: batch.headers for topic, _, batch in producer.sent}
    assert headers == {T.feed: [named], T.decisions: [None]}
    assert named == [("pseudonym_key_id", pseudonym_key_id(b"k" * 32).encode())]


async def test_send_full_batch_goes_out_and_another_starts() -> None:
    producer = _Producer(partitions=1, capacity=2)
    sender = OutputSender(producer, T)

    acked = await sender.acknowledged(
        await sender.send([Produce(OutputTopic.DECISIONS, b"k", b"%d" % i, 0) for i in range(5)])
    )

    assert acked == [(T.decisions, 0, 2, 0), (T.decisions, 0, 2, 2), (T.decisions, 0, 1, 4)]


async def test_deliver_index_entries_refused_nothing_else_is_sent() -> None:
    producer = _Producer(refuse=frozenset({T.published}))
    sender = OutputSender(producer, T)
    result = BatchResult(
        first=[Produce(OutputTopic.PUBLISHED, b"item", b"v", 0)],
        produce=[Produce(OutputTopic.FEED, b"c-1", b"v", 0)],
    )

    with pytest.raises(DeliveryError, match="1 of 1 batches not acknowledged"):
        await sender.deliver(result, await sender.send(result.first))

    assert [topic for topic, _, _ in producer.sent] == [T.published]  # no feed record without its index entry


async def test_deliver_sends_each_step_after_the_one_before_was_acknowledged() -> None:
    producer = _Producer(refuse=frozenset({T.feed}))
    sender = OutputSender(producer, T)
    result = BatchResult(
        first=[Produce(OutputTopic.PUBLISHED, b"item", b"v", 0)],
        produce=[Produce(OutputTopic.FEED, b"c-1", b"v", 0)],
        last=[Produce(OutputTopic.ITEMS, b"item", b"v", 0)],
    )

    with pytest.raises(DeliveryError):
        await sender.deliver(result, await sender.send(result.first))

    assert [topic for topic, _, _ in producer.sent] == [T.published, T.feed]  # the item's version never went out


async def test_deliver_all_acknowledged_returns_every_batch_in_step_order() -> None:
    sender = OutputSender(_Producer(partitions=1), T)
    result = BatchResult(
        first=[Produce(OutputTopic.PUBLISHED, b"item", b"v", 0)],
        produce=[Produce(OutputTopic.FEED, b"c-1", b"v", 0)],
        last=[Produce(OutputTopic.ITEMS, b"item", b"v", 0)],
    )

    acked = await sender.deliver(result, await sender.send(result.first))

    assert acked == [(T.published, 0, 1, 0), (T.feed, 0, 1, 0), (T.items, 0, 1, 0)]
