"""What the worker guarantees, shown on the real broker: no commit before delivery,
the freshness gate, retraction, state that survives a restart or a wiped disk."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from stream.config import Settings
from stream.core.state import StateKind
from stream.runtime import health, recovery
from stream.runtime.assignor import CoPartitionedAssignor
from stream.runtime.interrupt import Cut
from stream.runtime.rebalance import RebalanceListener
from stream.runtime.store import RocksPartitionStore

from .harness import (
    before_each_cycle,
    build_worker,
    committed,
    content_consumed,
    js,
    latest_by_key,
    loop_in_a_thread,
    make_topics,
    read_all,
    read_until,
    running_worker,
    sample,
    send,
    set_topic_config,
    unique_settings,
    until,
)
from .test_filter_scenario import objection, profile, upsert

pytestmark = pytest.mark.integration


async def test_worker_feed_write_rejected_commits_nothing_until_delivered(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    # The broker refuses every feed record: the input must stay uncommitted.
    await set_topic_config(bootstrap, settings.topics.feed, {"max.message.bytes": "64"})
    await send(settings, settings.topics.profiles, [profile("a-gb")])
    await send(settings, settings.topics.content, [upsert("c-1", "a-gb")])

    async with running_worker(settings) as worker:
        await until(lambda: sample(worker, "eligibility_delivery_failures_total") >= 2)
        assert await committed(settings, settings.topics.content) == {0: None}
        assert await read_all(settings, settings.topics.feed) == []

        # Once the broker takes the record, the replayed batch delivers and commits.
        await set_topic_config(bootstrap, settings.topics.feed, {"max.message.bytes": "1048588"})
        feed = await read_until(settings, settings.topics.feed, 1)
        await until(lambda: sample(worker, "eligibility_output_records_total", output="feed") >= 1)
    assert [r.key for r in feed] == [b"c-1"]
    assert await committed(settings, settings.topics.content) == {0: 1}


async def test_worker_objection_written_before_content_is_never_beaten(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    users = [f"a-{i}" for i in range(20)]
    await send(settings, settings.topics.profiles, [profile(u) for u in users])
    async with running_worker(settings) as worker:
        # Objection acknowledged by the broker first, the content right after:
        # the freshness gate must apply the objection before deciding the content.
        for u in users:
            await send(settings, settings.topics.objections, [objection(u, "objected")])
            await send(settings, settings.topics.content, [upsert(f"c-{u}", u)])
        decisions = await read_until(settings, settings.topics.decisions, len(users))
        # One broker leads every partition and the state travels in every fetch with the
        # content: the fetch responses proved the state current, no end offsets were listed.
        assert sample(worker, "eligibility_gate_listings_total") == 0
    assert {d.json()["reason"] for d in decisions} == {"objected"}
    assert await read_all(settings, settings.topics.feed) == []


async def test_worker_objection_after_publishing_retracts_every_item(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-obj"), profile("a-other")])
    items = [upsert(f"c-{i}", "a-obj") for i in range(5)] + [upsert("c-other", "a-other")]
    await send(settings, settings.topics.content, items)
    async with running_worker(settings):
        await read_until(settings, settings.topics.feed, 6)
        await send(settings, settings.topics.objections, [objection("a-obj", "objected")])
        decisions = await read_until(settings, settings.topics.decisions, 6 + 5)
        feed = await read_until(settings, settings.topics.feed, 6 + 5)
    retracts = [d.json() for d in decisions if d.json()["action"] == "retract"]
    assert sorted(r["content_id"] for r in retracts) == [f"c-{i}" for i in range(5)]
    assert {r["cause"] for r in retracts} == {"objection"}
    tombstones = [r for r in feed if r.value is None]
    assert sorted(r.key for r in tombstones) == [f"c-{i}".encode() for i in range(5)]
    live = {k for k, r in latest_by_key(feed).items() if r.value is not None}
    assert live == {b"c-other"}
    # Each tombstone has its trainers' record on training.retractions, and nothing else does.
    retractions = await read_all(settings, settings.topics.retractions)
    assert sorted(r.key for r in retractions) == [f"c-{i}".encode() for i in range(5)]
    assert {r.json()["cause"] for r in retractions} == {"objection"}


async def test_worker_restart_with_state_on_disk_resumes_and_wiped_state_is_rebuilt(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "run1")
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-gb"), profile("a-minor", birth="2015-01-01")])
    await send(settings, settings.topics.content, [upsert("c-1", "a-gb")])
    async with running_worker(settings):
        await read_until(settings, settings.topics.decisions, 1)

    # Restart on the same data directory: the stored state decides new content.
    await send(settings, settings.topics.content, [upsert("c-2", "a-gb"), upsert("c-3", "a-minor")])
    async with running_worker(settings) as worker:
        decisions = await read_until(settings, settings.topics.decisions, 3)
        assert sample(worker, "eligibility_input_records_total", input="profiles") == 0  # resumed, not replayed

    # A wiped data directory: state is rebuilt from the compacted topics.
    shutil.rmtree(settings.data_dir)
    await send(settings, settings.topics.content, [upsert("c-4", "a-gb"), upsert("c-5", "a-minor")])
    async with running_worker(replace(settings)) as worker:
        decisions = await read_until(settings, settings.topics.decisions, 5)
        assert sample(worker, "eligibility_input_records_total", input="profiles") == 2
    reasons = {d.json()["content_id"]: d.json()["reason"] for d in decisions}
    assert reasons == {"c-1": "eligible", "c-2": "eligible", "c-3": "minor", "c-4": "eligible", "c-5": "minor"}


async def test_worker_records_its_own_changelog_offsets_so_a_restart_reads_none_back(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await _published_by_a_worker(settings, 5)
    ends = await _end_offsets(settings, [settings.topics.published])
    assert sum(ends.values()) == 5
    for tp in ends:
        store = RocksPartitionStore(settings.data_dir / "state" / f"partition-{tp.partition}")
        try:
            # The store already holds what it wrote: a restart resumes the changelog at its end.
            assert store.next_offset(StateKind.PUBLISHED) == ends[tp]
        finally:
            store.close()


async def test_worker_item_held_for_notice_period_is_decided_again_when_due_even_after_wiped_state(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "run1", partitions=1)
    await make_topics(settings)
    # Brazil's 30-day notice period ends a few seconds from now.
    ends = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
    notified = (ends - dt.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await send(settings, settings.topics.profiles, [profile("a-br", country="BR", notified=notified)])
    await send(settings, settings.topics.content, [upsert("c-held", "a-br"), upsert("c-dropped", "a-br")])
    async with running_worker(settings) as worker:
        decisions = await read_until(settings, settings.topics.decisions, 2)
        assert {d.json()["reason"] for d in decisions} == {"notice_period_running"}
        # c-dropped is deleted while held: it must not come back when the period ends.
        await send(
            settings,
            settings.topics.content,
            [
                (
                    b"a-br",
                    js(
                        {
                            "event_id": "e-del",
                            "op": "delete",
                            "content_id": "c-dropped",
                            "author_id": "a-br",
                            "event_time": "2026-11-28T09:15:00Z",
                        }
                    ),
                )
            ],
        )
        await read_until(settings, settings.topics.decisions, 3)
        await until(lambda: sample(worker, "eligibility_deferred_items") == 1)

    # The worker's local state is lost: the deferral comes back from its changelog.
    shutil.rmtree(settings.data_dir)
    async with running_worker(replace(settings)):
        feed = await read_until(settings, settings.topics.feed, 1, timeout=60)
        decisions = await read_until(settings, settings.topics.decisions, 4)
    assert [r.key for r in feed] == [b"c-held"]
    again = [d.json() for d in decisions][3]
    assert (again["content_id"], again["reason"], again["event_id"]) == ("c-held", "eligible", "e-c-held")
    assert dt.datetime.now(dt.UTC) >= ends


@pytest.mark.parametrize("wipe", [False, True], ids=["state-kept", "state-wiped"])
async def test_worker_restart_between_publishing_and_objecting_still_retracts_everything(
    bootstrap: str, tmp_path: Path, wipe: bool
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-obj"), profile("a-other")])
    items = [upsert(f"c-{i}", "a-obj") for i in range(6)] + [upsert("c-other", "a-other")]
    await send(settings, settings.topics.content, items)
    async with running_worker(settings):
        await read_until(settings, settings.topics.feed, 7)

    if wipe:  # a new pod, or the partition moved to another worker: only the topics remain
        shutil.rmtree(settings.data_dir)
    await send(settings, settings.topics.objections, [objection("a-obj", "objected")])
    async with running_worker(replace(settings)):
        feed = await read_until(settings, settings.topics.feed, 7 + 6)
        decisions = await read_until(settings, settings.topics.decisions, 7 + 6)
    live = {k for k, r in latest_by_key(feed).items() if r.value is not None}
    assert live == {b"c-other"}
    retracts = sorted(d.json()["content_id"] for d in decisions if d.json()["action"] == "retract")
    assert retracts == [f"c-{i}" for i in range(6)]
    # Every retraction of the feed is on training.retractions too, with the disk kept or wiped.
    retractions = await read_all(settings, settings.topics.retractions)
    assert {r.key for r in retractions} == {r.key for r in feed if r.value is None}
    assert {r.key for r in retractions} == {f"c-{i}".encode() for i in range(6)}


class _HeldRejoin(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    """Another member of the group that rejoins only when told: the group's rebalance waits for it."""

    def __init__(self) -> None:
        self.assigned = asyncio.Event()
        self.asked_to_rejoin = asyncio.Event()
        self.rejoin = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        if self.assigned.is_set():
            self.asked_to_rejoin.set()
            await self.rejoin.wait()

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.assigned.set()


async def test_worker_stop_during_a_rebalance_finishes_once_the_rebalance_does(bootstrap: str, tmp_path: Path) -> None:
    # SIGTERM while the worker's consumer waits in a rebalance: closing the consumer
    # lets the rebalance finish first, and the listener's callbacks take the loop's
    # lock, so the stop must not hold it while it closes (or it waits for itself
    # until the shutdown timeout, as in a chaos run's final restart).
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    member = _HeldRejoin()
    other = _group_member(settings)
    await other.start()
    polling = asyncio.create_task(_poll_forever(other))
    try:
        other.subscribe(list(settings.topics.inputs()), listener=member)
        await asyncio.wait_for(member.assigned.wait(), 60)

        worker = build_worker(settings)
        await worker.start()
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(member.asked_to_rejoin.wait(), 60)  # the worker's join waits for the other member
        consumer = worker.consumer
        assert consumer is not None
        closing = consumer.stop

        async def close_after_the_rejoin() -> None:
            member.rejoin.set()  # the rebalance completes while the worker's consumer closes
            await closing()

        consumer.stop = close_after_the_rejoin  # type: ignore[method-assign]
        await asyncio.wait_for(worker.stop(), 30)
        await asyncio.wait_for(running, 10)
        assert not worker.is_ready
        # The assignment that came while stopping opened no store: the worker decides nothing more.
        assert sample(worker, "eligibility_rebalances_total") == 0
    finally:
        member.rejoin.set()
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await other.stop()


async def test_worker_is_not_ready_once_its_stop_begins(bootstrap: str, tmp_path: Path) -> None:
    # A stopping worker decides nothing more: /ready says so from the signal on, not
    # only once its clients are closed (which waits for a rebalance in flight).
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    async with running_worker(settings) as worker:
        await until(lambda: worker.is_ready)
        consumer = worker.consumer
        assert consumer is not None
        closing = consumer.stop
        ready_while_closing: list[bool] = []

        async def close() -> None:
            ready_while_closing.append(worker.is_ready)
            await closing()

        consumer.stop = close  # type: ignore[method-assign]
        await worker.stop()
        assert ready_while_closing == [False]


async def test_worker_whose_loop_stops_stepping_is_not_ready_until_it_steps_again(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A loop wedged inside a batch (here its outputs' acknowledgements never come; in
    # the bugs found so far, a wait that nothing wakes) makes no progress, whatever its
    # partitions' state: the worker must not report itself ready. The wedge ended, it
    # is ready again.
    monkeypatch.setattr(health, "LOOP_STALL_SECONDS", 1.0)
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("acct-1")])
    released = asyncio.Event()

    async def wedged(state: Sequence[Any], content: Sequence[Any]) -> None:
        if content:
            await released.wait()

    before_each_cycle(monkeypatch, wedged)
    async with running_worker(settings) as worker:
        await until(lambda: worker.is_ready)
        await send(settings, settings.topics.content, [upsert("c-1", "acct-1")])
        try:
            await until(lambda: not worker.is_ready, timeout=30)
            assert worker.stalled and worker.readiness() == (503, {"status": "stalled", "partitions": [0, 1]})
            assert sample(worker, "eligibility_ready") == 0
            assert sample(worker, "eligibility_loop_step_seconds") >= 1.0
        finally:  # the stop waits for the wedged batch
            released.set()
        await until(lambda: worker.is_ready)  # the batch done, the loop steps again
        assert worker.readiness()[0] == 200 and sample(worker, "eligibility_ready") == 1
        await read_until(settings, settings.topics.decisions, 1)


async def test_worker_objection_fetched_with_content_is_performed_before_the_content_is_decided(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Objection propagation is the headline service level: an objection fetched in one
    # batch with content gets a cycle of its own, performed to its acknowledgements
    # before the content is decided, so its tombstones never wait for the content's
    # decisions and sends. The batch is made by holding the worker inside the cycle of
    # an earlier upsert until the objection and the next upsert are both fetched.
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-obj"), profile("a-other")])
    held_in, released = asyncio.Event(), asyncio.Event()
    cycles: list[tuple[list[str], list[bytes]]] = []  # each cycle's state topics and content keys

    async def recorded(state: Sequence[Any], content: Sequence[Any]) -> None:
        cycles.append(([r.topic for r in state], [r.key for r in content]))
        if any(r.value is not None and b'"c-hold"' in r.value for r in content):
            held_in.set()
            await released.wait()

    before_each_cycle(monkeypatch, recorded)
    async with running_worker(settings) as worker:
        await until(lambda: worker.is_ready)
        await send(settings, settings.topics.content, [upsert("c-old", "a-obj")])
        await read_until(settings, settings.topics.feed, 1)
        await send(settings, settings.topics.content, [upsert("c-hold", "a-other")])
        await held_in.wait()
        await send(settings, settings.topics.objections, [objection("a-obj", "objected")])
        await send(settings, settings.topics.content, [upsert("c-new", "a-other")])
        consumer = worker.consumer
        assert consumer is not None
        inputs = [TopicPartition(settings.topics.objections, 0), TopicPartition(settings.topics.content, 0)]
        ends = await consumer.end_offsets(inputs)
        # Both fetched (each partition's high watermark comes with its fetched records)
        # while the worker is held: the next batch holds the objection and c-new.
        await until(lambda: all(consumer.highwater(tp) == end for tp, end in ends.items()))
        released.set()
        feed = await read_until(settings, settings.topics.feed, 4)  # c-old, c-hold, its tombstone, c-new

    assert [(r.key, r.value is None) for r in feed] == [
        (b"c-old", False),
        (b"c-hold", False),
        (b"c-old", True),
        (b"c-new", False),
    ]
    after = cycles[next(i for i, (_, keys) in enumerate(cycles) if b"a-other" in keys) + 1 :]
    objected = [i for i, (topics, _) in enumerate(after) if settings.topics.objections in topics]
    assert len(objected) == 1, after
    # The objection's cycle holds no content; the content fetched with it is the next cycle's.
    assert after[objected[0]] == ([settings.topics.objections], [])
    assert after[objected[0] + 1][1] == [b"a-other"]


async def test_worker_recovery_that_ends_as_the_stop_begins_leaves_it_not_ready(bootstrap: str, tmp_path: Path) -> None:
    # The stop arrives while the assignment's recovery asks for a state partition's
    # position after its last check for a stop: the topics are empty, so the recovery
    # then ends, and must not report the stopping worker ready.
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    worker = build_worker(settings)
    await worker.start()
    consumer = worker.consumer
    assert consumer is not None
    asking_position, closing = consumer.position, consumer.stop
    stopping: list[asyncio.Task[None]] = []
    ready_while_closing: list[bool] = []

    async def position_then_stop(tp: TopicPartition) -> int:
        if not stopping and tp.topic != settings.topics.content:
            stopping.append(asyncio.create_task(worker.stop()))
            await asyncio.sleep(0)  # one turn of the loop: the stop begins, then waits for the loop's lock
        at: int = await asking_position(tp)
        return at

    async def close() -> None:
        ready_while_closing.append(worker.is_ready)
        await closing()

    consumer.position = position_then_stop  # type: ignore[method-assign]
    consumer.stop = close  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run())
    await until(lambda: bool(stopping))
    await asyncio.wait_for(stopping[0], 30)
    await asyncio.wait_for(running, 10)
    assert ready_while_closing == [False]
    assert not worker.is_ready


async def test_worker_stop_ends_its_loop_when_the_rebalance_in_flight_ends_without_an_assignment(
    bootstrap: str, tmp_path: Path
) -> None:
    # While a rebalance is in flight, aiokafka's getmany waits for the next assignment,
    # and closing the consumer does not wake it when that rebalance ends without one.
    # Here the worker joins a group whose leader is still planning when a third member
    # joins: the worker's sync fails, its closing coordinator does not join again, and
    # no assignment ever comes. The stop must end the loop all the same (the lifecycle
    # search found this as a loop still running after its stop).
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    assigning, go = threading.Event(), threading.Event()

    class HeldPlan(CoPartitionedAssignor):
        """The leader's assignor; the first plan for more than one member blocks its thread until told."""

        @classmethod
        def assign(cls, cluster: Any, members: Mapping[str, Any]) -> Any:
            if len(members) > 1 and not assigning.is_set():
                assigning.set()
                go.wait(60)
            return super().assign(cluster, members)

    with loop_in_a_thread("leader") as leader_loop:  # blocked while it plans, so in a thread of its own
        leader: AIOKafkaConsumer = _run_in(
            leader_loop, _assigned(lambda: _group_member(settings, HeldPlan()), settings)
        )
        worker = build_worker(settings)
        third = _group_member(settings)
        try:
            await worker.start()
            running = asyncio.create_task(worker.run())
            await asyncio.to_thread(assigning.wait, 60)  # the worker waits in the join for the leader's plan
            stopping = asyncio.create_task(worker.stop())
            await third.start()
            third.subscribe(list(settings.topics.inputs()))  # the group rebalances again: the worker's sync fails
            await asyncio.wait_for(stopping, 30)
            go.set()
            ended, _ = await asyncio.wait({running}, timeout=10)  # not wait_for: its cancel would end the loop
            assert ended, "the worker's loop runs on after its stop"
            running.result()  # and it ended without an error
        finally:
            go.set()
            await third.stop()
            _run_in(leader_loop, leader.stop())


async def test_worker_read_under_the_loops_lock_gives_way_to_a_rebalance(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The recovery and the freshness gate read state partitions under the loop's lock.
    # Once a rebalance has begun, aiokafka's getmany waits for the next assignment (a
    # read already waiting goes back to that wait when records arrive), and the
    # revocation waits for the lock: a read left to itself deadlocks the rebalance, and
    # the worker with it. The start of a rebalance cuts the read short: the batch is
    # given up, uncommitted, and the rebalance goes on.
    settings = replace(unique_settings(bootstrap, tmp_path), max_batch=1)  # the recovery must read the rest
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile(f"acct-{i}") for i in range(40)])
    revoking = asyncio.Event()
    revoke = RebalanceListener.on_partitions_revoked

    async def revoking_partitions(listener: RebalanceListener, revoked: Sequence[TopicPartition]) -> None:
        if revoked:  # not the first join's empty revocation
            revoking.set()
        await revoke(listener, revoked)

    monkeypatch.setattr(RebalanceListener, "on_partitions_revoked", revoking_partitions)
    worker = build_worker(settings)
    await worker.start()
    consumer = worker.consumer
    assert consumer is not None
    reading = consumer.getmany
    joiner = _group_member(settings)
    joined: list[asyncio.Task[AIOKafkaConsumer]] = []

    async def read_as_another_member_joins(*partitions: TopicPartition, **options: Any) -> Any:
        if partitions and not joined:  # a read of state partitions, under the loop's lock
            joined.append(asyncio.create_task(_assigned(lambda: joiner, settings)))
            await revoking.wait()  # the rebalance has begun: its revocation waits for the lock
        return await reading(*partitions, **options)

    consumer.getmany = read_as_another_member_joins  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run())
    try:
        await until(lambda: bool(joined))
        await asyncio.wait_for(asyncio.shield(joined[0]), 60)  # the rebalance completed: the joiner holds partitions
        await until(lambda: worker.is_ready)  # and the worker recovered its own
        assert worker.assigned and len(worker.assigned) < settings.partitions
        given_up = {cut: sample(worker, "eligibility_batches_given_up_total", cause=cut) for cut in Cut}
        assert given_up[Cut.REBALANCE] >= 1 and given_up[Cut.STOP] == 0  # the batch of the cut read, counted
    finally:  # bounded: deadlocked, neither the worker's stop nor the joiner's would end
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.stop(), 30)
        ended, _ = await asyncio.wait({running}, timeout=10)
        for task in joined:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(joiner.stop(), 30)
    assert ended


async def test_worker_changelog_restore_gives_way_to_a_stop_and_resumes_where_it_was(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Restoring a wiped store from its changelogs holds the loop's lock; a restore
    # of a large partition takes minutes, and a stop or a rebalance (the whole group
    # waits in it) must not wait for all of it. The restore gives way at its next read,
    # and what it applied stays with its offsets: the next recovery resumes there.
    settings = unique_settings(bootstrap, tmp_path)
    await _published_by_a_worker(settings, 60)
    shutil.rmtree(settings.data_dir)

    monkeypatch.setattr(recovery, "RESTORE_READ_RECORDS", 5)  # 60 entries: at least 12 reads
    worker = build_worker(settings)
    reads: list[int] = []
    stopping: list[asyncio.Task[None]] = []

    class StoppedAtTheThirdRead(AIOKafkaConsumer):  # type: ignore[misc]  # aiokafka ships no types
        async def getmany(self, *partitions: TopicPartition, **options: Any) -> Any:
            reads.append(len(partitions))
            if len(reads) == 3:  # two reads applied
                stopping.append(asyncio.create_task(worker.stop()))
            return await super().getmany(*partitions, **options)

    monkeypatch.setattr(recovery, "AIOKafkaConsumer", StoppedAtTheThirdRead)
    await worker.start()
    running = asyncio.create_task(worker.run())
    await until(lambda: bool(stopping))
    await asyncio.wait_for(stopping[0], 30)
    ended, _ = await asyncio.wait({running}, timeout=10)
    assert ended
    assert len(reads) == 3  # the stop cut the third read short: it did not wait for the whole restore
    assert sample(worker, "eligibility_batches_given_up_total", cause=Cut.STOP) == 1
    monkeypatch.undo()

    changelogs = {
        StateKind.PUBLISHED: settings.topics.published,
        StateKind.DEFERRED: settings.topics.deferred,
        StateKind.ITEMS: settings.topics.items,
    }
    ends = await _end_offsets(settings, list(changelogs.values()))
    applied = 0
    for p in range(settings.partitions):
        store = RocksPartitionStore(settings.data_dir / "state" / f"partition-{p}")
        try:
            applied += sum(store.next_offset(kind) for kind in changelogs)
        finally:
            store.close()
    assert 0 < applied < sum(ends.values())  # what the two reads applied stays, with its offsets
    async with running_worker(settings) as resumed:  # the next recovery resumes there, to the end
        await until(lambda: resumed.is_ready)
        restored = {
            TopicPartition(topic, p): store.next_offset(kind)
            for p in range(settings.partitions)
            if (store := resumed.store(p)) is not None
            for kind, topic in changelogs.items()
        }
        assert restored == ends


async def _published_by_a_worker(settings: Settings, count: int) -> None:
    """`count` items of one adult published by a worker on new topics, every batch committed; the worker stopped."""
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-gb")])
    await send(settings, settings.topics.content, [upsert(f"c-{i}", "a-gb") for i in range(count)])
    async with running_worker(settings):
        await read_until(settings, settings.topics.published, count)
        await content_consumed(settings)  # committed only after the batch's store writes


async def _end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    """Each partition's end offset of `topics`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        return dict(
            await consumer.end_offsets([TopicPartition(t, p) for t in topics for p in range(settings.partitions)])
        )
    finally:
        await consumer.stop()


def _group_member(settings: Settings, assignor: CoPartitionedAssignor | None = None) -> AIOKafkaConsumer:
    """Another member of the worker's group, on the worker's assignor protocol; made in the loop it runs in."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
        partition_assignment_strategy=(assignor or CoPartitionedAssignor(),),
    )


def _run_in(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(60)


async def _assigned(new: Callable[[], AIOKafkaConsumer], settings: Settings) -> AIOKafkaConsumer:
    """A consumer made in the running loop, started and subscribed to the inputs, once it holds partitions."""
    consumer = new()
    await consumer.start()
    consumer.subscribe(list(settings.topics.inputs()))
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=200)
    return consumer


async def _poll_forever(consumer: AIOKafkaConsumer) -> None:
    while True:
        await consumer.getmany(timeout_ms=200)
