"""State-topic positions in the worker's group, on the real broker: shown to lag exporters, never read back.

Standard lag exporters read a group's committed offsets (the admin API's
ListConsumerGroupOffsets). The worker commits the profile and objection positions its
stores recorded, paced like the content commits, so the objection lag is visible, also
while no worker runs; its own restore never reads them (stream/runtime/offsets.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream.config import Settings

from .harness import latest_by_key, make_topics, read_until, running_worker, send, unique_settings
from .test_filter_scenario import objection, profile, upsert

pytestmark = pytest.mark.integration

OBJECTIONS = 12  # over both partitions


async def _group_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """What a lag exporter reads: the group's committed offset of each partition of `topic` (absent: none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.group_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return {tp.partition: n for tp, n in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _until_committed(settings: Settings, topic: str, ends: dict[int, int], timeout: float = 60.0) -> None:
    """Wait until the group's committed offsets of `topic` reach `ends` (polling the offsets, not guessing a time)."""
    async with asyncio.timeout(timeout):
        while (await _group_offsets(settings, topic)) != ends:
            await asyncio.sleep(0.2)


async def _commit_as_the_group(settings: Settings, offsets: dict[TopicPartition, int]) -> None:
    """Commit `offsets` to the worker's (empty) group, as a tool resetting offsets would."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def test_state_commits_group_shows_objections_read_and_the_lag_of_a_stopped_worker(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    accounts = [f"a-{i}" for i in range(OBJECTIONS)]
    await send(settings, settings.topics.profiles, [profile(a) for a in accounts[:3]])

    async with running_worker(settings):
        await send(settings, settings.topics.objections, [objection(a, "objected") for a in accounts])
        ends = await _end_offsets(settings, settings.topics.objections)
        assert sum(ends.values()) == OBJECTIONS and all(ends.values())  # both partitions have some
        # The worker has read all N: the group's committed offsets are exactly the end offsets.
        await _until_committed(settings, settings.topics.objections, ends)
        await _until_committed(
            settings, settings.topics.profiles, await _end_offsets(settings, settings.topics.profiles)
        )

    # Stopped: newly written objections show as lag of the group.
    await send(settings, settings.topics.objections, [objection(a, "withdrawn") for a in accounts[:5]])
    committed = await _group_offsets(settings, settings.topics.objections)
    now = await _end_offsets(settings, settings.topics.objections)
    assert committed == ends
    assert sum(now[p] - committed[p] for p in now) == 5


async def test_state_commits_worker_restores_from_its_store_never_from_the_groups_state_offsets(
    bootstrap: str, tmp_path: Path
) -> None:
    """A group offset moved past an objection (by hand, say) does not make a restarted worker skip it."""
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-obj")])
    await send(settings, settings.topics.content, [upsert("c-obj", "a-obj")])
    async with running_worker(settings):
        await read_until(settings, settings.topics.feed, 1)

    await send(settings, settings.topics.objections, [objection("a-obj", "objected")])
    ends = await _end_offsets(settings, settings.topics.objections)
    await _commit_as_the_group(settings, {TopicPartition(settings.topics.objections, p): n for p, n in ends.items()})
    assert await _group_offsets(settings, settings.topics.objections) == ends  # the objection "read" by the group

    async with running_worker(settings):
        feed = await read_until(settings, settings.topics.feed, 2)  # the item, then its tombstone
    assert latest_by_key(feed)[b"c-obj"].value is None
