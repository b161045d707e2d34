"""Worker counts on the real broker: 1 to 5 workers on 4 partitions, and 3 on 12.

Each topology runs its workers in this event loop (one group, a data directory
each) over its own uuid-named topics. Once the group is stable, every worker with
partitions is ready and holds whole partition numbers (p of content, profiles and
objections together), as the broker's own view of the group shows too; then a small
scenario spread over every partition ends with the expected feed, and the verifier
finds nothing. With aiokafka's default assignor the 3-on-4 case never gets ready
(issue 16, point 2). Waiting is on group state, outputs and offsets, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from stream.config import Settings
from stream.core.partitioning import partition_for
from stream.runtime.partitions import HeldPartitions
from stream.runtime.worker import FilterWorker
from stream.verifier.verify import render, verify

from .harness import (
    HOUR_AGO_MS,
    content_consumed,
    latest_by_key,
    make_topics,
    read_all,
    read_until,
    running_worker,
    send,
    send_markers,
    unique_settings,
)
from .test_filter_scenario import objection, profile, upsert

pytestmark = pytest.mark.integration

# (workers, partitions): every count from 1 to one more than the partitions, and a
# count that divides neither way with more partitions per worker. With aiokafka's
# default (round robin) assignor swapped in, 3-on-4, 5-on-4 and 3-on-12 never get
# ready and the others fail the protocol check.
TOPOLOGIES = [(1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (3, 12)]
# A worker that cannot pass the gate never gets ready: fail within this, not the suite's timeout.
STABLE_TIMEOUT_SECONDS = 60.0
MINOR_BIRTH = (dt.datetime.now(dt.UTC) - dt.timedelta(days=15 * 365)).date().isoformat()


# -- the scenario: four authors on every partition -----------------------------------------


def author_on(role: str, partition: int, partitions: int) -> str:
    """An account id of `role` whose records land on `partition` (Kafka's default partitioner)."""
    for i in range(10_000):
        name = f"{role}-{partition}-{i}"
        if partition_for(name.encode(), partitions) == partition:
            return name
    raise AssertionError(f"no {role} account id found for partition {partition}")


@dataclass(frozen=True)
class Scenario:
    """Per partition: a keeper (two items stay), an objector before and one after publishing, a minor."""

    keepers: list[str]
    objectors_after: list[str]
    objectors_before: list[str]
    minors: list[str]

    @classmethod
    def over(cls, partitions: int) -> Scenario:
        def role(name: str) -> list[str]:
            return [author_on(name, p, partitions) for p in range(partitions)]

        return cls(role("keeper"), role("objector-after"), role("objector-before"), role("minor"))

    def state(self) -> list[tuple[str, tuple[bytes, bytes]]]:
        """Profiles of everyone and the early objections: an existing population's state."""
        authors = self.keepers + self.objectors_after + self.objectors_before
        records = [("profiles", profile(a)) for a in authors]
        records += [("profiles", profile(a, birth=MINOR_BIRTH)) for a in self.minors]
        records += [("objections", objection(a, "objected")) for a in self.objectors_before]
        return records

    def items(self) -> list[tuple[str, str]]:
        """(content id, author) of every upsert: two of each keeper, one of everyone else."""
        authors = [*self.keepers, *self.keepers, *self.objectors_after, *self.objectors_before, *self.minors]
        return [(f"c-{i}-{author}", author) for i, author in enumerate(authors)]

    def content(self) -> list[tuple[bytes, bytes]]:
        return [upsert(content_id, author) for content_id, author in self.items()]

    def published(self) -> set[bytes]:
        """What the feed holds before the late objections: the keepers' and the late objectors' items."""
        authors = {*self.keepers, *self.objectors_after}
        return {content_id.encode() for content_id, author in self.items() if author in authors}

    def kept(self) -> set[bytes]:
        """What the feed holds at the end: the keepers' items only."""
        return {content_id.encode() for content_id, author in self.items() if author in self.keepers}


async def send_state(settings: Settings, records: list[tuple[str, tuple[bytes, bytes]]]) -> None:
    """State stamped an hour back, older than any content, as an existing population's would be."""
    topic = {"profiles": settings.topics.profiles, "objections": settings.topics.objections}
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic[kind], key=k, value=v, timestamp_ms=HOUR_AGO_MS) for kind, (k, v) in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# -- the group ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_workers(settings: Settings, count: int, root: Path) -> AsyncIterator[list[FilterWorker]]:
    """`count` workers of one group in this event loop, each with its own data directory."""
    async with contextlib.AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(running_worker(replace(settings, data_dir=root / f"worker-{i}")))
            for i in range(count)
        ]
        yield workers


def held(worker: FilterWorker) -> dict[str, set[int]]:
    """The worker's consumer's assignment: topic -> partition numbers."""
    assert worker.consumer is not None
    out: dict[str, set[int]] = {}
    for tp in worker.consumer.assignment():
        out.setdefault(tp.topic, set()).add(tp.partition)
    return out


async def broker_view(settings: Settings) -> tuple[str, str, list[dict[str, set[int]]]]:
    """The group's state, protocol and each member's assignment, as the group coordinator describes them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([settings.group_id])
    finally:
        await admin.close()
    (group,) = response.groups
    _error, _group, state, _type, protocol, members, *_ = group
    assignments = []
    for *_, raw in members:
        decoded = ConsumerProtocolMemberAssignment.decode(raw) if raw else None
        assignments.append({t: set(ps) for t, ps in decoded.assignment} if decoded else {})
    return state, protocol, assignments


def inputs(settings: Settings) -> list[str]:
    return [settings.topics.content, settings.topics.profiles, settings.topics.objections]


def whole_numbers(settings: Settings, assignment: dict[str, set[int]]) -> set[int] | None:
    """The partition numbers held if every input has the same ones, else None."""
    layouts = {frozenset(assignment.get(topic, set())) for topic in inputs(settings)}
    return set(layouts.pop()) if len(layouts) == 1 else None


def canonical(assignment: dict[str, set[int]]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((topic, tuple(sorted(ps))) for topic, ps in assignment.items() if ps))


def layout(settings: Settings, workers: list[FilterWorker]) -> str:
    return "; ".join(
        f"worker {i}: ready={w.is_ready} "
        + ", ".join(f"{t.split('.', 1)[1]}={sorted(ps)}" for t, ps in sorted(held(w).items()))
        for i, w in enumerate(workers)
    )


async def until_stable(settings: Settings, workers: list[FilterWorker]) -> list[set[int]]:
    """Wait until the group is stable with every worker, each with partitions ready; return their numbers.

    Fails, naming the layout, if that does not happen within STABLE_TIMEOUT_SECONDS.
    """
    partitions = settings.partitions
    try:
        async with asyncio.timeout(STABLE_TIMEOUT_SECONDS):
            while True:
                state, _protocol, members = await broker_view(settings)
                mine = [held(w) for w in workers]
                if (
                    state == "Stable"
                    and Counter(map(canonical, members)) == Counter(map(canonical, mine))
                    and sum(1 for m in mine if m) == min(len(workers), partitions)
                    and all(w.is_ready for w in workers if held(w))
                ):
                    return [whole_numbers(settings, held(w)) or set() for w in workers]
                await asyncio.sleep(0.2)  # polling the group's state, not a guess at timing
    except TimeoutError:
        raise AssertionError(
            f"group not stable and ready after {STABLE_TIMEOUT_SECONDS}s: {layout(settings, workers)}"
        ) from None


async def populated(bootstrap: str, tmp_path: Path, partitions: int) -> Settings:
    """Topics of their own with the scenario's population on every partition, for a group to form over."""
    settings = unique_settings(bootstrap, tmp_path, partitions=partitions)
    await make_topics(settings)
    await send_state(settings, Scenario.over(partitions).state())
    return settings


def counts(worker: FilterWorker) -> dict[str, float]:
    """Partitions assigned to `worker` so far, by where their store came from."""
    get = worker.metrics.registry.get_sample_value
    return {
        s: get("eligibility_partitions_assigned_total", {"store": s}) or 0.0 for s in ("kept", "resumed", "rebuilt")
    }


def plus_kept(counted: dict[str, float], n: int) -> dict[str, float]:
    return counted | {"kept": counted["kept"] + n}


def replays(workers: list[FilterWorker]) -> float:
    return sum(w.metrics.registry.get_sample_value("eligibility_batch_replays_total") or 0.0 for w in workers)


# -- the matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "partitions"), TOPOLOGIES, ids=[f"{w}-on-{p}" for w, p in TOPOLOGIES])
async def test_topology_workers_hold_whole_partition_numbers_get_ready_and_verify_clean(
    bootstrap: str, tmp_path: Path, count: int, partitions: int
) -> None:
    """Issue 16, point 2: any worker count works, each worker owning the same numbers of all three inputs."""
    settings = unique_settings(bootstrap, tmp_path, partitions=partitions)
    await make_topics(settings)
    scenario = Scenario.over(partitions)
    await send_state(settings, scenario.state())

    async with running_workers(settings, count, tmp_path) as workers:
        numbers = await until_stable(settings, workers)
        # Every worker with partitions holds whole numbers; together each number exactly once.
        for worker, held_numbers in zip(workers, numbers, strict=True):
            assert whole_numbers(settings, held(worker)) is not None, layout(settings, workers)
            assert held_numbers == worker.assigned
        assert sorted(p for ns in numbers for p in ns) == list(range(partitions))
        counts = [len(ns) for ns in numbers]
        assert max(counts) - min(counts) <= 1  # balanced; beyond the partition count, idle
        _state, protocol, _members = await broker_view(settings)
        assert protocol == "copartitioned"
        replays_before = replays(workers)

        await send(settings, settings.topics.content, scenario.content())
        first = await read_until(settings, settings.topics.feed, len(scenario.published()))
        assert {r.key for r in first} == scenario.published()
        await send(settings, settings.topics.objections, [objection(a, "objected") for a in scenario.objectors_after])
        await send_markers(settings, "topology")
        await content_consumed(settings)

        # No rebalance and no failed batch while the scenario ran: the layout held.
        assert await until_stable(settings, workers) == numbers
        assert replays(workers) == replays_before

    feed = latest_by_key(await read_all(settings, settings.topics.feed))
    assert {k for k, r in feed.items() if r.value is not None} == scenario.kept()
    report = await verify(settings)
    assert (report.violation_count, report.losses.count) == (0, 0), render(report)
    assert report.ok, render(report)
    assert report.expected_eligible == len(scenario.kept())


async def test_topology_a_joining_worker_takes_numbers_only_from_those_over_their_share(
    bootstrap: str, tmp_path: Path
) -> None:
    # Static members, so the order is known: the newcomer w-0 sorts first, and dealt
    # afresh it would take 0 and 3 of six, leaving w-1 one of its three numbers. A
    # number that moves is a store rebuilt from the changelogs; the assignor keeps
    # each worker's numbers up to its share.
    settings = await populated(bootstrap, tmp_path, 6)

    def member(instance: str) -> contextlib.AbstractAsyncContextManager[FilterWorker]:
        return running_worker(replace(settings, data_dir=tmp_path / instance, group_instance_id=instance))

    async with member("w-1") as w1, member("w-2") as w2:
        before = await until_stable(settings, [w1, w2])
        assert sorted(len(ns) for ns in before) == [3, 3]
        counted = [counts(w) for w in (w1, w2)]
        async with member("w-0") as w0:
            after = await until_stable(settings, [w1, w2, w0])
            assert [len(ns) for ns in after] == [2, 2, 2], layout(settings, [w1, w2, w0])
            assert after[0] <= before[0] and after[1] <= before[1], layout(settings, [w1, w2, w0])
            # Their two numbers held on, none reopened; the newcomer's two read from the topics.
            assert [counts(w) for w in (w1, w2)] == [plus_kept(c, 2) for c in counted]
            assert counts(w0) == {"kept": 0, "resumed": 0, "rebuilt": 2}
            _state, protocol, _members = await broker_view(settings)
            assert protocol == "copartitioned"


async def test_topology_a_worker_joining_with_stores_on_its_disk_takes_those_numbers(
    bootstrap: str, tmp_path: Path
) -> None:
    # The first worker holds all four numbers. The second starts on a disk that has
    # the stores of 0 and 1 (a pod back on its volume) and names them when it joins:
    # the first gives up those two, not its highest (2 and 3, which the second would
    # rebuild from the changelogs while 0 and 1 wait on its disk).
    settings = await populated(bootstrap, tmp_path, 4)
    disk = HeldPartitions(tmp_path / "second")
    disk.assign([0, 1])
    disk.close()

    async with running_worker(replace(settings, data_dir=tmp_path / "first")) as first:
        assert await until_stable(settings, [first]) == [{0, 1, 2, 3}]
        async with running_worker(replace(settings, data_dir=tmp_path / "second")) as second:
            after = await until_stable(settings, [first, second])
            assert after == [{2, 3}, {0, 1}], layout(settings, [first, second])
