"""Rotating the pseudonym key on the real broker: records name their key; the verifier takes the previous one."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.config import Settings
from stream.core.records import PSEUDONYM_KEY_ID_HEADER, pseudonym_key_id
from stream.verifier.compare import Problem
from stream.verifier.verify import render, verify
from stream.workload.generator import Workload

from .harness import content_consumed, make_topics, running_worker, send_workload, unique_settings

pytestmark = pytest.mark.integration

OLD_KEY = b"o" * 32
NEW_KEY = b"n" * 32


async def test_rotation_feed_records_name_their_key_and_verify_accepts_the_previous_one(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    workload = Workload(
        seed=21, accounts=200, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), run=uuid.uuid4().hex[:8]
    )
    setup = [item.record for item in workload.setup()]
    stream = [item.record for item in workload.stream(2000)]
    before, after = replace(settings, pseudonym_key=OLD_KEY), replace(settings, pseudonym_key=NEW_KEY)

    await send_workload(settings, setup, stream[:1000])
    async with running_worker(before):
        await content_consumed(settings)
    await send_workload(settings, [], stream[1000:])
    async with running_worker(after):  # the rotation: the same group, the new key
        await content_consumed(settings)

    named = list((await _live_key_ids(settings)).values())
    ids = {pseudonym_key_id(OLD_KEY).encode(), pseudonym_key_id(NEW_KEY).encode()}
    assert set(named) == ids  # both keys' records are live, each naming its key
    old_records = named.count(pseudonym_key_id(OLD_KEY).encode())

    rotated = await verify(replace(after, previous_pseudonym_key=OLD_KEY))
    assert rotated.ok and rotated.minimisation_count == 0, render(rotated)

    forgotten = await verify(after)  # the previous key dropped too early
    assert forgotten.minimisation[Problem.PSEUDONYM_KEY_UNKNOWN].count == old_records
    assert forgotten.minimisation[Problem.PSEUDONYM_MISMATCH].count == 0


async def _live_key_ids(settings: Settings) -> dict[bytes, bytes | None]:
    """Each live feed item's `pseudonym_key_id` header (None: none), read to the end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topics.feed, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        live: dict[bytes, bytes | None] = {}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    if r.value is None:
                        live.pop(r.key, None)
                    else:
                        live[r.key] = dict(r.headers).get(PSEUDONYM_KEY_ID_HEADER)
        return live
    finally:
        await consumer.stop()
