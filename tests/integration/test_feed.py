"""The trainers' reader (`stream.feed`) on the real broker: a snapshot holds exactly the
eligible items; after objections, deletions and profile changes, `retracted_since` returns
exactly the items that left the feed, also once the feed's tombstones are compacted away
and across a worker crash; `follow` yields the changes in order and commits its position."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stream.config import Settings
from stream.feed import ChangeKind, ContentHash, FeedItem, Manifest, acknowledge, follow, retracted_since, snapshot

from .harness import (
    committed,
    content_consumed,
    js,
    make_topics,
    read_all,
    read_until,
    running_worker,
    sample,
    send,
    send_markers,
    set_topic_config,
    unique_settings,
    until,
)
from .test_filter_scenario import objection, profile, upsert

pytestmark = pytest.mark.integration

ELIGIBLE = {"c-gb-1", "c-gb-2", "c-obj-1", "c-obj-2", "c-del-1", "c-moves-1", "c-br-1"}
# What leaves the feed after the snapshot: an objection, an account deletion, a move out
# of the enabled jurisdictions, a content delete.
LEAVES = {"c-obj-1", "c-obj-2", "c-del-1", "c-moves-1", "c-gb-2"}


def _delete(content_id: str, author: str) -> tuple[bytes, bytes]:
    return author.encode(), js(
        {
            "event_id": f"e-del-{content_id}",
            "op": "delete",
            "content_id": content_id,
            "author_id": author,
            "event_time": "2026-11-28T09:16:00Z",
        }
    )


async def _scenario(settings: Settings) -> None:
    """Known inputs: seven eligible items and three that never are."""
    await make_topics(settings)
    await send(
        settings,
        settings.topics.profiles,
        [
            profile("a-gb"),
            profile("a-obj"),
            profile("a-del"),
            profile("a-moves"),
            profile("a-br", country="BR"),
            profile("a-minor", birth="2015-01-01"),
            profile("a-de", country="DE"),
        ],
    )
    await send(
        settings,
        settings.topics.content,
        [
            upsert("c-gb-1", "a-gb"),
            upsert("c-gb-2", "a-gb"),
            upsert("c-obj-1", "a-obj"),
            upsert("c-obj-2", "a-obj"),
            upsert("c-del-1", "a-del"),
            upsert("c-moves-1", "a-moves"),
            upsert("c-br-1", "a-br"),
            upsert("c-minor-1", "a-minor"),
            upsert("c-de-1", "a-de"),
            upsert("c-private-1", "a-gb", visibility="private"),
        ],
    )


async def _leave(settings: Settings) -> None:
    """The changes after the snapshot: four causes of retraction, and one new eligible item."""
    await send(settings, settings.topics.objections, [objection("a-obj", "objected")])
    await send(settings, settings.topics.profiles, [(b"a-del", None), profile("a-moves", country="DE")])
    await send(settings, settings.topics.content, [_delete("c-gb-2", "a-gb"), upsert("c-gb-3", "a-gb")])


async def _drained(settings: Settings, tag: str) -> None:
    await send_markers(settings, tag)
    await content_consumed(settings)


def _read_snapshot(settings: Settings) -> tuple[list[FeedItem], Manifest]:
    snap = snapshot(settings)
    items = list(snap)
    return items, snap.manifest


async def test_feed_snapshot_holds_exactly_the_eligible_items_and_retracted_since_exactly_those_that_left(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await _scenario(settings)
    async with running_worker(settings):
        await _drained(settings, "before")
        items, manifest = await asyncio.to_thread(_read_snapshot, settings)
        assert {i.content_id for i in items} == ELIGIBLE
        assert all(i.schema_version == 1 and i.text == f"text of {i.content_id}" for i in items)
        assert (manifest.items, manifest.tombstones, manifest.unreadable, manifest.withheld) == (7, 0, 0, 0)
        assert manifest.schema_versions == (1,) and len(manifest.policy_versions) == 1
        assert manifest.content_hash == ContentHash.of(items)
        assert sum(manifest.feed_offsets.values()) == 7 and sum(manifest.retractions_offsets.values()) == 0
        assert Manifest.from_json(manifest.to_json()) == manifest

        await _leave(settings)
        await read_until(settings, settings.topics.retractions, len(LEAVES))
        await _drained(settings, "after")

    retracted = await asyncio.to_thread(retracted_since, manifest, settings)
    assert retracted.content_ids == LEAVES
    assert retracted.causes == {
        "c-obj-1": "objection",
        "c-obj-2": "objection",
        "c-del-1": "account_deleted",
        "c-moves-1": "account_changed",
        "c-gb-2": "content_deleted",
    }
    # A later snapshot holds the rest, and the new item.
    later, _ = await asyncio.to_thread(_read_snapshot, settings)
    assert {i.content_id for i in later} == (ELIGIBLE - LEAVES) | {"c-gb-3"}

    def changes() -> list[tuple[ChangeKind, str]]:
        with follow(manifest, settings, until_end=True) as follower:
            return [(c.kind, c.content_id) for c in follower]

    seen = await asyncio.to_thread(changes)
    assert {cid for kind, cid in seen if kind is ChangeKind.RETRACTED} == LEAVES
    assert [cid for kind, cid in seen if kind is ChangeKind.ADDED] == ["c-gb-3"]
    assert not [cid for kind, cid in seen if kind is ChangeKind.REPLACED]


async def test_feed_retracted_since_still_exact_after_the_feeds_tombstones_are_compacted_away(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=1)
    await _scenario(settings)
    # A feed that keeps tombstones 100 ms and rolls its segments every 100 ms: the log
    # cleaner removes them within a few of its passes, as 7 days do on a real feed.
    # (set_topic_config keeps the feed's own configs: it stays compacted.)
    short = {
        "delete.retention.ms": "100",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0",
    }
    await set_topic_config(bootstrap, settings.topics.feed, short)
    async with running_worker(settings):
        await _drained(settings, "before")
        _, manifest = await asyncio.to_thread(_read_snapshot, settings)
        await _leave(settings)
        await read_until(settings, settings.topics.retractions, len(LEAVES))
        await _drained(settings, "after")
    assert {r.key for r in await read_all(settings, settings.topics.feed) if r.value is None} == {
        c.encode() for c in LEAVES
    }

    rolls = 0

    async def tombstones_gone() -> bool:
        # A record appended now rolls the active segment, which the cleaner may then clean.
        nonlocal rolls
        rolls += 1
        await send(settings, settings.topics.feed, [(f"z-roll-{rolls}".encode(), js({"roll": rolls}))])
        feed = await read_all(settings, settings.topics.feed)
        return not [r for r in feed if r.value is None and not r.key.startswith(b"z-")]

    async with asyncio.timeout(120):
        while not await tombstones_gone():
            await asyncio.sleep(2)  # the broker's log cleaner runs on its own schedule; its result is polled

    retracted = await asyncio.to_thread(retracted_since, manifest, settings)
    assert retracted.content_ids == LEAVES


async def test_feed_retracted_since_exact_across_a_worker_crash_between_tombstones_and_records(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await _scenario(settings)
    async with running_worker(settings):
        await _drained(settings, "before")
    _, manifest = await asyncio.to_thread(_read_snapshot, settings)
    await _leave(settings)
    # The worker dies after its tombstones landed and before their retraction records did.
    async with running_worker(replace(settings)) as worker:
        assert worker.producer is not None
        real_send_batch = worker.producer.send_batch

        async def send_batch(batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
            if topic == settings.topics.retractions:
                refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                refused.set_exception(RuntimeError("retraction records lost in the crash"))
                return refused
            return await real_send_batch(batch, topic, partition=partition)

        worker.producer.send_batch = send_batch  # type: ignore[method-assign]  # the crash point, injected
        await until(lambda: sample(worker, "eligibility_delivery_failures_total") >= 2)
    assert await read_all(settings, settings.topics.retractions) == []
    shutil.rmtree(settings.data_dir)  # and its disk is gone
    async with running_worker(replace(settings)):
        await _drained(settings, "after")
    retracted = await asyncio.to_thread(retracted_since, manifest, settings)
    assert retracted.content_ids == LEAVES


async def test_feed_follow_commits_its_position_and_acknowledge_commits_the_retractions(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=1)
    await _scenario(settings)
    async with running_worker(settings):
        await _drained(settings, "before")
        _, manifest = await asyncio.to_thread(_read_snapshot, settings)
        await _leave(settings)
        # An edit of a live item: a replacement.
        edit = upsert("c-gb-1", "a-gb", event_id="e-c-gb-1-edit", event_time="2026-11-28T09:17:00Z", text="edited")
        await send(settings, settings.topics.content, [edit])
        await read_until(settings, settings.topics.retractions, len(LEAVES))
        await _drained(settings, "after")
    group = f"{settings.group_id}-trainer"

    def follow_and_commit() -> list[tuple[ChangeKind, str]]:
        with follow(manifest, settings, group_id=group, until_end=True) as follower:
            seen = [(c.kind, c.content_id) for c in follower]
            follower.commit()
            return seen

    first = await asyncio.to_thread(follow_and_commit)
    assert {cid for kind, cid in first if kind is ChangeKind.RETRACTED} == LEAVES
    assert [cid for kind, cid in first if kind is ChangeKind.ADDED] == ["c-gb-3"]
    assert [cid for kind, cid in first if kind is ChangeKind.REPLACED] == ["c-gb-1"]
    assert await asyncio.to_thread(follow_and_commit) == []  # resumed at the committed position
    feed_end = len(await read_all(settings, settings.topics.feed))
    assert await committed(replace(settings, group_id=group), settings.topics.feed) == {0: feed_end}

    retracted = await asyncio.to_thread(retracted_since, manifest, settings)
    await asyncio.to_thread(acknowledge, group, retracted.offsets, settings)
    assert await committed(replace(settings, group_id=group), settings.topics.retractions) == {0: len(LEAVES)}


def _feed_value(content_id: str, decided_at: str) -> bytes:
    return js(
        {
            "content_id": content_id,
            "content_type": "post",
            "platform": "facebook",
            "author_pseudonym": "a" * 64,
            "created_at": "2026-01-02T03:04:05Z",
            "text": "t",
            "media_uri": None,
            "language": None,
            "jurisdiction": "GB",
            "policy_version": "v",
            "decided_at": decided_at,
            "source_event_id": f"e-{content_id}",
            "schema_version": 1,
        }
    )


def _retraction_value(content_id: str, retracted_at: str) -> bytes:
    return js({"content_id": content_id, "retracted_at": retracted_at, "cause": "objection", "policy_version": "v"})


async def test_feed_snapshot_withholds_an_item_whose_retraction_record_landed_before_its_tombstone(
    bootstrap: str, tmp_path: Path
) -> None:
    # The moment between a retraction record and its tombstone, frozen: the record is on
    # training.retractions before the snapshot's end, the tombstone not yet on the feed.
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=1)
    await make_topics(settings)
    await send(
        settings,
        settings.topics.feed,
        [
            (b"c-caught", _feed_value("c-caught", "2026-11-28T09:00:00Z")),  # retracted after this version
            (b"c-again", _feed_value("c-again", "2026-11-28T09:00:02Z")),  # published again after its retraction
            (b"c-live", _feed_value("c-live", "2026-11-28T09:00:00Z")),
        ],
    )
    await send(
        settings,
        settings.topics.retractions,
        [
            (b"c-caught", _retraction_value("c-caught", "2026-11-28T09:00:01Z")),
            (b"c-again", _retraction_value("c-again", "2026-11-28T09:00:01Z")),
        ],
    )
    items, manifest = await asyncio.to_thread(_read_snapshot, settings)
    assert {i.content_id for i in items} == {"c-again", "c-live"}
    assert (manifest.items, manifest.withheld) == (2, 1)
    # Its tombstone lands after the snapshot: retracted_since need not name it, the snapshot never had it.
    await send(settings, settings.topics.feed, [(b"c-caught", None)])
    assert (await asyncio.to_thread(retracted_since, manifest, settings)).content_ids == frozenset()
