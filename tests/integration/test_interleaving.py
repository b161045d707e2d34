"""Objections and content of the same users, interleaved in both orders, while the worker runs:
the compacted feed must hold exactly the items the contract allows, never one more."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from stream.core.state import StateKind
from stream.runtime.worker import FilterWorker

from .harness import (
    before_each_cycle,
    content_consumed,
    js,
    latest_by_key,
    make_topics,
    read_all,
    running_worker,
    send,
    unique_settings,
)
from .test_filter_scenario import objection, profile, upsert

pytestmark = pytest.mark.integration


def _delete(content_id: str, author: str) -> tuple[bytes, bytes]:
    return author.encode(), js(
        {
            "event_id": f"e-del-{content_id}-{random.random()}",
            "op": "delete",
            "content_id": content_id,
            "author_id": author,
            "event_time": "2026-11-28T09:15:00Z",
        }
    )


async def _caught_up(worker: FilterWorker, settings_ends: dict[TopicPartition, int], content_topic: str) -> bool:
    for tp, end in settings_ends.items():
        store = worker.store(tp.partition)  # the worker's own durable offsets
        if store is None:
            return False
        if tp.topic != content_topic and store.next_offset(StateKind.OBJECTIONS) < end:
            return False
    return True


@pytest.mark.parametrize(
    ("seed", "bursts"),
    [(20261128, False), (1, True), (2, True), (3, True)],
    ids=["as-sent", "bursts-1", "bursts-2", "bursts-3"],
)
async def test_interleaved_objections_and_content_feed_holds_exactly_the_allowed_items(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, bursts: bool
) -> None:
    # With `bursts` the worker is held at the start of a cycle while 25 steps are sent,
    # so that objections, withdrawals, upserts and deletes of the same users are fetched
    # together: the batches in which an objection's cycle goes before the content's.
    settings = unique_settings(bootstrap, tmp_path, partitions=2)
    await make_topics(settings)
    rng = random.Random(seed)
    going = asyncio.Event()
    going.set()

    async def held(state: Sequence[Any], content: Sequence[Any]) -> None:
        await going.wait()

    before_each_cycle(monkeypatch, held)
    users = [f"u-{i:02d}" for i in range(30)]
    await send(settings, settings.topics.profiles, [profile(u) for u in users])

    # The reference, in the order the broker acknowledged the events. The worker decides
    # with state at least as new as the event (the freshness gate), possibly newer: an
    # upsert made while objecting may still be decided eligible after a withdrawal. So:
    # an item MUST be on the feed if its latest upsert came while the author was not
    # objecting and no objection followed; it MAY be there if it is not deleted and its
    # author does not object now; otherwise it must not be there.
    objecting = dict.fromkeys(users, False)
    must: dict[str, bool] = {}  # item -> no objection since its latest upsert, made while not objecting
    deleted: dict[str, bool] = {}
    author_of: dict[str, str] = {}
    content_sent = 0
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        async with running_worker(settings) as worker:
            for step in range(500):
                if bursts and step % 25 == 0:
                    going.clear()
                user = rng.choice(users)
                roll = rng.random()
                if roll < 0.15:
                    status = "objected" if not objecting[user] or rng.random() < 0.3 else "withdrawn"
                    key, value = objection(user, status)
                    await (await producer.send(settings.topics.objections, key=key, value=value))
                    objecting[user] = status == "objected"
                    if status == "objected":  # retracts every item of the user; a withdrawal restores none
                        for item, author in author_of.items():
                            if author == user:
                                must[item] = False
                elif roll < 0.22 and [i for i, a in author_of.items() if a == user]:
                    item = rng.choice([i for i, a in author_of.items() if a == user])
                    key, value = _delete(item, user)
                    await (await producer.send(settings.topics.content, key=key, value=value))
                    content_sent += 1
                    deleted[item] = True
                else:
                    item = f"c-{user}-{rng.randrange(6)}"
                    key, value = upsert(item, user)
                    value = value.replace(b'"e-', f'"e{step}-'.encode(), 1)
                    await (await producer.send(settings.topics.content, key=key, value=value))
                    content_sent += 1
                    author_of[item] = user
                    # A delete is final: a later upsert of the item is skipped (order per item).
                    deleted.setdefault(item, False)
                    must[item] = not objecting[user] and not deleted[item]
                if step % 50 == 0:
                    await asyncio.sleep(0)  # let the worker interleave with the writer
                if step % 25 == 24:
                    going.set()
                if step % 100 == 99:
                    # The writer outpaces the worker: left alone, the worker decides most
                    # content after all its authors' objections (state newer than the event,
                    # as the gate allows), and no objection finds a published item to
                    # retract. Caught up here, what came before is on the feed when the
                    # next objections come.
                    await _settled(settings, worker)

            await _settled(settings, worker)
    finally:
        await producer.stop()

    live = {
        k.decode()
        for k, r in latest_by_key(await read_all(settings, settings.topics.feed)).items()
        if r.value is not None and k is not None
    }
    allowed = {item for item, author in author_of.items() if not deleted[item] and not objecting[author]}
    required = {item for item in allowed if must[item]}
    assert live <= allowed, f"items on the feed the contract forbids: {sorted(live - allowed)}"
    assert required <= live, f"eligible items missing from the feed: {sorted(required - live)}"
    # The scenario exercised every outcome: required, forbidden, and retracted after publishing.
    assert required and len(allowed) < len(author_of)
    causes = {d.json()["cause"] for d in await read_all(settings, settings.topics.decisions)}
    assert {"objection", "content_deleted"} <= causes


async def _settled(settings: Any, worker: FilterWorker) -> None:
    """Wait until the worker has committed every content event and durably applied every objection sent so far."""
    await content_consumed(settings, timeout=90)
    ends = await _end_offsets(settings, [settings.topics.objections])
    async with asyncio.timeout(90):
        while not await _caught_up(worker, ends, settings.topics.content):
            await asyncio.sleep(0.1)  # polling the store's applied offsets, not a guess at timing


async def _end_offsets(settings: object, topics: list[str]) -> dict[TopicPartition, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None)  # type: ignore[attr-defined]
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]  # type: ignore[attr-defined]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()
