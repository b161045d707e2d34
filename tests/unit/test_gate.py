"""The freshness gate and the content top-up (stream/runtime/gate.py), over an in-memory consumer."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition

from stream.config import Settings
from stream.errors import GateStallError
from stream.runtime.gate import TOP_UP_AFTER_MS, TOP_UP_WAIT_MS, FreshnessGate
from stream.runtime.intake import Intake
from stream.runtime.interrupt import GiveUp, Interruption
from stream.runtime.metrics import Metrics
from stream.runtime.store import MemoryPartitionStore

from .fake_kafka import C0, C1, O0, O1, P0, P1, FakeConsumer, SilentConsumer, T, now_ms


def _just_fetched() -> int:
    """A fetch stamp that stays "just now" however slowly the test runs (no top-up for it)."""
    return now_ms() + 60_000


def _gate(
    consumer: FakeConsumer,
    *,
    max_batch: int = 100,
    leaders: dict[TopicPartition, int] | None = None,
    interruption: Interruption | None = None,
    stall_seconds: float = 60.0,
) -> FreshnessGate:
    metrics = Metrics.create()
    stores = {0: MemoryPartitionStore(), 1: MemoryPartitionStore()}
    return FreshnessGate(
        consumer,
        Settings().topics,
        intake=Intake(Settings().topics, stores, metrics),
        interruption=interruption or Interruption(),
        leader_of=lambda tp: (leaders or {}).get(tp, 1),
        metrics=metrics,
        max_batch=max_batch,
        stall_seconds=stall_seconds,
    )


def _offsets(records: list[Any], topic: str, partition: int) -> list[int]:
    return [r.offset for r in records if r.topic == topic and r.partition == partition]


def _listings(consumer: FakeConsumer) -> int:
    return len(consumer.listed)


async def test_gate_fresh_content_reads_state_to_the_fetchs_stable_offsets_without_asking_the_broker() -> None:
    # One fetch response brought content 0-2 of partition 0 and stamped its state:
    # profiles stable at 3 (one record read so far), objections at 1 (read). Two more
    # profiles were appended after that fetch: the gate need not wait for them.
    now = _just_fetched()
    consumer = FakeConsumer(
        {C0: 3, P0: 5, O0: 1},
        {C0: 3, P0: 1, O0: 1},
        stamps={C0: now, P0: now, O0: now},
        stable={C0: 3, P0: 3, O0: 1},
    )
    gate = _gate(consumer)

    state, content = await gate.gate({0}, taken=3)

    assert content == []  # fresh content: no top-up
    assert _offsets(state, T.profiles, 0) == [1, 2]  # up to the stable offset 3
    assert await consumer.position(P0) >= 3
    assert _listings(consumer) == 0
    assert all(tps for tps, _ in consumer.calls)  # only reads of the lagging state, no fetch awaited


async def test_gate_state_left_out_of_the_contents_fetch_lists_its_end() -> None:
    # The profiles of partition 0 were last stamped by an older response than the
    # content's (they had records waiting when the content was fetched): their stable
    # offset proves nothing about the content's time, so their end is listed now.
    now = _just_fetched()
    consumer = FakeConsumer(
        {C0: 1, P0: 3, O0: 2},
        {C0: 1, P0: 1, O0: 2},
        stamps={C0: now, P0: now - 50, O0: now},
        stable={C0: 1, P0: 1, O0: 2},
    )
    gate = _gate(consumer)

    state, _ = await gate.gate({0}, taken=1)

    assert consumer.listed == [[P0]]
    assert _offsets(state, T.profiles, 0) == [1, 2]  # to the listed end 3, past the stale stable offset 1
    assert _offsets(state, T.objections, 0) == []  # proven by the response: already read


async def test_gate_listing_counts_the_batch_in_the_listings_metric() -> None:
    now = _just_fetched()
    consumer = FakeConsumer({C0: 1, P0: 1, O0: 1}, {C0: 1, P0: 1, O0: 1}, stamps={C0: now, O0: now}, stable={O0: 1})
    metrics = Metrics.create()
    gate = FreshnessGate(
        consumer,
        T,
        intake=Intake(T, {0: MemoryPartitionStore()}, metrics),
        interruption=Interruption(),
        leader_of=lambda tp: 1,
        metrics=metrics,
        max_batch=100,
    )

    await gate.gate({0}, taken=1)

    assert metrics.registry.get_sample_value("eligibility_gate_listings_total") == 1


async def test_gate_state_led_by_another_broker_lists_its_end() -> None:
    # Stamps of responses from two brokers order their arrivals, not the brokers' reads.
    now = _just_fetched()
    consumer = FakeConsumer(
        {C0: 1, P0: 1, O0: 2},
        {C0: 1, P0: 1, O0: 0},
        stamps={C0: now, P0: now, O0: now + 5},
        stable={C0: 1, P0: 1, O0: 0},
    )
    gate = _gate(consumer, leaders={O0: 2})

    state, _ = await gate.gate({0}, taken=1)

    assert consumer.listed == [[O0]]
    assert _offsets(state, T.objections, 0) == [0, 1]


def test_snapshot_ends_unknown_leader_or_stamp_proves_nothing() -> None:
    now = _just_fetched()
    consumer = FakeConsumer({}, stamps={C0: now, P0: now, O0: now, C1: now, P1: now}, stable={P0: 4, O0: 2, P1: 1})
    gate = _gate(consumer, leaders={C1: -1})

    ends, unproven = gate.snapshot_ends([0, 1])

    assert ends == {P0: 4, O0: 2}
    assert sorted(unproven) == sorted([P1, O1])  # partition 1's leader is unknown; O1 was never stamped


async def test_gate_old_content_tops_up_with_the_next_fetch_and_gates_every_partition_it_adds() -> None:
    # The batch's content of partition 0 was fetched a while ago; since then 2 more of
    # it, 2 of partition 1 and an objection of partition 1 reached the broker.
    old = now_ms() - 10 * TOP_UP_AFTER_MS
    consumer = FakeConsumer(
        {C0: 3, C1: 2, P0: 1, O1: 1},
        {C0: 1, P0: 1},
        stamps={C0: old, P0: old, O0: old},
        stable={C0: 1, P0: 1},
    )
    gate = _gate(consumer)

    state, content = await gate.gate({0}, taken=1)

    assert consumer.calls[0] == ((), TOP_UP_WAIT_MS)  # the next fetch, awaited briefly
    assert _offsets(content, T.content, 0) == [1, 2]
    assert _offsets(content, T.content, 1) == [0, 1]
    assert _offsets(state, T.objections, 1) == [0]  # partition 1 joined the batch, so it is gated
    assert consumer.listed == []


async def test_gate_full_batch_no_top_up_and_gates_only_its_partitions() -> None:
    old = now_ms() - 10 * TOP_UP_AFTER_MS
    consumer = FakeConsumer(
        {C0: 9, P0: 3, P1: 3},
        {C0: 4},
        stamps={C0: old, P0: old, O0: old, P1: old},
        stable={C0: 4, P0: 3, P1: 3, O0: 0},
    )
    gate = _gate(consumer, max_batch=4)

    state, content = await gate.gate({0}, taken=4)

    assert content == []
    assert all(tps for tps, _ in consumer.calls)  # no top-up fetch
    assert _offsets(state, T.profiles, 0) == [0, 1, 2]
    assert _offsets(state, T.profiles, 1) == []  # no content of partition 1 in the batch: not gated


async def test_gate_stop_begun_gives_up_the_batch() -> None:
    interruption = Interruption()
    interruption.stop()
    gate = _gate(FakeConsumer({P0: 3}), interruption=interruption)

    with pytest.raises(GiveUp, match="stopping"):
        await gate.gate({0}, taken=1)


async def test_gate_rebalance_begun_gives_up_the_batch() -> None:
    interruption = Interruption()
    interruption.rebalance_started()
    gate = _gate(FakeConsumer({P0: 3}), interruption=interruption)

    with pytest.raises(GiveUp, match="rebalance"):
        await gate.gate({0}, taken=1)


async def test_gate_state_partitions_yielding_no_records_fail_the_batch() -> None:
    gate = _gate(SilentConsumer({P0: 3, O0: 3}, stamps={C0: _just_fetched()}), stall_seconds=0.05)

    with pytest.raises(GateStallError, match="2 state partitions got no record"):
        await gate.gate({0}, taken=1)
