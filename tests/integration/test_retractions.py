"""`training.retractions` on the real broker: written with the feed's tombstones, in the same
acknowledged step, so a crash between the sends or a wiped disk never leaves a retraction of
the feed without its trainers' record."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from .harness import make_topics, read_all, read_until, running_worker, sample, send, unique_settings, until
from .test_filter_scenario import objection, profile, upsert

pytestmark = pytest.mark.integration


async def test_retractions_crash_between_tombstone_and_record_then_wiped_disk_every_retraction_recorded(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=2)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-obj"), profile("a-other")])
    items = [upsert(f"c-{i}", "a-obj") for i in range(4)] + [upsert("c-other", "a-other")]
    await send(settings, settings.topics.content, items)
    async with running_worker(settings):
        await read_until(settings, settings.topics.feed, 5)

    # The crash window: the broker takes the feed's tombstones but not their retraction
    # records (the send to training.retractions fails), and the worker dies there.
    await send(settings, settings.topics.objections, [objection("a-obj", "objected")])
    async with running_worker(replace(settings)) as worker:
        assert worker.producer is not None
        producer = worker.producer
        real_send_batch = producer.send_batch

        async def send_batch(batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
            if topic == settings.topics.retractions:
                refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                refused.set_exception(RuntimeError("retraction record lost in the crash"))
                return refused
            return await real_send_batch(batch, topic, partition=partition)

        producer.send_batch = send_batch  # type: ignore[method-assign]  # the crash point, injected
        await until(lambda: sample(worker, "eligibility_delivery_failures_total") >= 2)
    feed = await read_all(settings, settings.topics.feed)
    assert {r.key for r in feed if r.value is None} == {f"c-{i}".encode() for i in range(4)}  # the tombstones landed
    assert await read_all(settings, settings.topics.retractions) == []  # their records did not

    # The next owner starts without the disk: the batch is replayed, the records written.
    shutil.rmtree(settings.data_dir)
    async with running_worker(replace(settings)):
        retractions = await read_until(settings, settings.topics.retractions, 4)
    feed = await read_all(settings, settings.topics.feed)
    tombstoned = {r.key for r in feed if r.value is None}
    assert {r.key for r in retractions} == tombstoned == {f"c-{i}".encode() for i in range(4)}
    for record in retractions:
        body = record.json()
        assert body.keys() == {"content_id", "retracted_at", "cause", "policy_version"}
        assert (body["content_id"].encode(), body["cause"]) == (record.key, "objection")


async def test_retractions_topic_missing_worker_refuses_to_start_naming_it(bootstrap: str, tmp_path: Path) -> None:
    # An upgrade that skipped `topics create`: the layout check names the missing topic.
    from aiokafka.admin import AIOKafkaAdminClient

    from stream.errors import TopicLayoutError
    from stream.runtime.topics import check_layout

    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([settings.topics.retractions])
    finally:
        await admin.close()
    with pytest.raises(TopicLayoutError, match=f"topic '{settings.topics.retractions}' does not exist"):
        await until_raises(check_layout, settings)


async def until_raises(check: Any, settings: Any) -> None:
    """Call `check` until it raises: a deleted topic leaves the brokers' metadata a moment later."""
    async with asyncio.timeout(30):
        while True:
            await check(settings)
            await asyncio.sleep(0.2)  # polling the metadata, not a guess at timing
