"""The batch cycle (stream/runtime/cycle.py): decide, deliver, write, commit; and its one error path, `drain`."""

from __future__ import annotations

import logging

import pytest

from stream.config import Settings
from stream.core.engine import Engine
from stream.core.policy import load_policy
from stream.errors import DeliveryError
from stream.runtime.cycle import BatchCycle
from stream.runtime.metrics import Metrics
from stream.runtime.offsets import ContentCommits
from stream.runtime.sender import OutputSender
from stream.runtime.store import MemoryPartitionStore
from stream.runtime.writer import StoreWriter

from .fake_kafka import C0, FakeConsumer, Record
from .test_sender import _Producer

T = Settings().topics


def _cycle(producer: _Producer) -> tuple[BatchCycle, FakeConsumer, Metrics, StoreWriter]:
    stores = {0: MemoryPartitionStore()}
    consumer, metrics, writer = FakeConsumer({}), Metrics.create(), StoreWriter(stores)
    cycle = BatchCycle(
        Engine(load_policy(None), b"k", T),
        stores,
        T,
        writer=writer,
        sender=OutputSender(producer, T),
        commits=ContentCommits(consumer, T.content, 0, metrics),
        metrics=metrics,
    )
    return cycle, consumer, metrics, writer


UNREADABLE = [Record(T.content, 0, 4, b"a-1", b"not json", 0)]


async def test_process_unreadable_content_dead_lettered_then_committed() -> None:
    producer = _Producer()
    cycle, consumer, _, writer = _cycle(producer)
    try:
        await cycle.process((), UNREADABLE, overlap=True)
        await cycle.settle(commit=True)
    finally:
        writer.close()

    assert T.dlq in {topic for topic, _, _ in producer.sent}
    assert consumer.commits == [{C0: 5}]


async def test_process_refused_output_fails_the_next_settle_and_commits_nothing() -> None:
    cycle, consumer, _, writer = _cycle(_Producer(refuse=frozenset({T.dlq})))
    try:
        await cycle.process((), UNREADABLE, overlap=True)  # the tail runs on
        with pytest.raises(DeliveryError):
            await cycle.settle()
    finally:
        writer.close()

    assert consumer.commits == []


async def test_drain_failed_tail_logged_not_raised_and_left_uncommitted(caplog: pytest.LogCaptureFixture) -> None:
    cycle, consumer, _, writer = _cycle(_Producer(refuse=frozenset({T.dlq})))
    try:
        await cycle.process((), UNREADABLE, overlap=True)
        with caplog.at_level(logging.WARNING, logger="stream.runtime.cycle"):
            await cycle.drain("the rebalance")
    finally:
        writer.close()

    assert "the last batch before the rebalance failed (DeliveryError); it is replayed" in caplog.text
    assert consumer.commits == []
