"""Never wrong, never stuck (issue #16), on the real broker: hostile records, order per item,
unreadable updates, release of held items, crash windows, dead letters of any size, output
placement, isolation of a record that raises, and a worker that reports itself stuck."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

import stream.core.items
from stream.config import Settings
from stream.core.partitioning import partition_for
from stream.core.state import item_id
from stream.verifier.verify import render, verify

from .harness import (
    Out,
    content_consumed,
    js,
    latest_by_key,
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
from .test_filter_scenario import NOW, objection, profile, ts, upsert

pytestmark = pytest.mark.integration


async def _drained(settings: Settings, tag: str) -> None:
    """Everything sent so far is decided and committed (markers behind it on every partition)."""
    await send_markers(settings, tag)
    await content_consumed(settings)


def _event(content_id: str, author: str, event_id: str, event_time: str, **fields: Any) -> tuple[bytes, bytes]:
    key, value = upsert(content_id, author)
    return key, js({**orjson.loads(value), "event_id": event_id, "event_time": event_time, **fields})


def _delete(content_id: str, author: str, event_id: str, event_time: str) -> tuple[bytes, bytes]:
    return author.encode(), js(
        {"event_id": event_id, "op": "delete", "content_id": content_id, "author_id": author, "event_time": event_time}
    )


async def _verified(settings: Settings) -> None:
    """The independent verifier finds nothing wrong and nothing missing (issue #16: zero after each)."""
    report = await verify(settings)
    assert (report.violation_count, report.losses.count) == (0, 0), render(report)
    # Every feed tombstone has its record on training.retractions, and every record its tombstone.
    assert report.retraction_problem_count == 0, render(report)


def _live(feed: list[Out]) -> set[bytes | None]:
    return {key for key, record in latest_by_key(feed).items() if record.value is not None}


def _decisions(records: list[Out], content_id: str) -> list[dict[str, Any]]:
    return [r.json() for r in sorted(records, key=lambda r: r.offset) if r.json()["content_id"] == content_id]


async def test_worker_schema_valid_dates_it_cannot_compute_with_are_dead_letters_and_the_partition_goes_on(
    bootstrap: str, tmp_path: Path
) -> None:
    # Issue #16, point 1: a birth date of 9990-06-01 made every batch fail, forever.
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    await send(
        settings,
        settings.topics.profiles,
        [
            profile("a-gb"),
            profile("a-far-birth", birth="9990-06-01"),
            profile("a-far-notice", country="BR", notified="9999-12-31T23:59:59Z"),
        ],
    )
    await send(
        settings,
        settings.topics.content,
        [
            upsert("c-far-birth", "a-far-birth"),
            upsert("c-far-notice", "a-far-notice"),
            upsert("c-far-created", "a-gb", created_at="9990-01-01T00:00:00Z"),
            upsert("c-ok", "a-gb"),
        ],
    )
    async with running_worker(settings) as worker:
        feed = await read_until(settings, settings.topics.feed, 1)
        await _drained(settings, "far")
        assert worker.is_ready
        assert sample(worker, "eligibility_delivery_failures_total") == 0
    assert [r.key for r in feed] == [b"c-ok"]
    letters = [r.json() for r in await read_all(settings, settings.topics.dlq)]
    assert sorted((d["topic"], d["reason"]) for d in letters) == sorted(
        [
            (settings.topics.content, "out_of_range"),
            (settings.topics.profiles, "out_of_range"),
            (settings.topics.profiles, "out_of_range"),
        ]
    )
    decisions = await read_all(settings, settings.topics.decisions)
    # Unreadable profiles fail closed: the account is unknown, nothing of it is held.
    assert [d["reason"] for d in _decisions(decisions, "c-far-birth")] == ["account_unknown"]
    assert [d["reason"] for d in _decisions(decisions, "c-far-notice")] == ["account_unknown"]
    assert await read_all(settings, settings.topics.deferred) == []
    await _verified(settings)


async def test_worker_duplicate_or_late_event_never_puts_back_a_deleted_or_private_item(
    bootstrap: str, tmp_path: Path
) -> None:
    # Issue #16, point 3: upsert -> delete -> the same upsert again published the item again,
    # and public -> private -> an older public event published it again.
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=1)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-gb")])
    first = _event("c-del", "a-gb", "e-1", "2026-11-28T09:00:00Z")
    public = _event("c-priv", "a-gb", "e-3", "2026-11-28T09:00:00Z")
    older_public = _event("c-priv", "a-gb", "e-5", "2026-11-28T08:00:00Z")
    await send(
        settings,
        settings.topics.content,
        [
            first,
            _delete("c-del", "a-gb", "e-2", "2026-11-28T09:01:00Z"),
            first,  # delivered again
            _event("c-del", "a-gb", "e-9", "2026-11-28T10:00:00Z"),  # newer, but the item is deleted
            public,
            _event("c-priv", "a-gb", "e-4", "2026-11-28T09:01:00Z", visibility="private"),
            older_public,  # late
            public,  # delivered again
        ],
    )
    async with running_worker(settings) as worker:
        await _drained(settings, "order")
        assert sample(worker, "eligibility_skips_total", reason="deleted") == 2
        assert sample(worker, "eligibility_skips_total", reason="superseded") == 2
    assert _live(await read_all(settings, settings.topics.feed)) == set()
    decisions = await read_all(settings, settings.topics.decisions)
    assert [(d["action"], d["reason"], d["event_id"]) for d in _decisions(decisions, "c-del")] == [
        ("decide", "eligible", "e-1"),
        ("retract", None, "e-2"),
        ("skip", "deleted", "e-1"),
        ("skip", "deleted", "e-9"),
    ]
    assert [(d["action"], d["reason"], d["event_id"]) for d in _decisions(decisions, "c-priv")] == [
        ("decide", "eligible", "e-3"),
        ("decide", "not_public", "e-4"),
        ("retract", None, "e-4"),
        ("skip", "superseded", "e-5"),
        ("skip", "superseded", "e-3"),
    ]

    # The order survives a partition moving to a worker without the old disk.
    shutil.rmtree(settings.data_dir)
    await send(settings, settings.topics.content, [first, older_public])
    async with running_worker(replace(settings)):
        await _drained(settings, "order-after-wipe")
    assert _live(await read_all(settings, settings.topics.feed)) == set()
    decisions = await read_all(settings, settings.topics.decisions)
    assert [d["action"] for d in _decisions(decisions, "c-del")][-1] == "skip"
    assert [d["action"] for d in _decisions(decisions, "c-priv")][-1] == "skip"
    await _verified(settings)


async def test_worker_unreadable_edit_or_delete_of_a_published_item_retracts_it(bootstrap: str, tmp_path: Path) -> None:
    # Issue #16, point 4: the dead-lettered edit left the previous version in training.
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-gb")])
    await send(settings, settings.topics.content, [upsert(f"c-{i}", "a-gb") for i in range(4)])
    async with running_worker(settings):
        await read_until(settings, settings.topics.feed, 4)
        edit = orjson.loads(upsert("c-0", "a-gb")[1])
        await send(
            settings,
            settings.topics.content,
            [
                (b"a-gb", js({**edit, "event_id": "e-x0", "event_time": "2026-11-28T10:15:00+01:00"})),
                (b"a-gb", js(_delete_dict("c-1", "a-gb", event_id=None))),
                (b"a-gb", js({**edit, "content_id": "c-2", "event_id": "e-x2", "visibility": "circle"})),
                (b"a-gb", b'{"content_id": "c-3", "op": "upsert", "text": "broken'),  # names nothing readable
            ],
        )
        await _drained(settings, "unreadable")
    assert _live(await read_all(settings, settings.topics.feed)) == {b"c-3"}
    assert len(await read_all(settings, settings.topics.dlq)) == 4
    decisions = await read_all(settings, settings.topics.decisions)
    for content_id in ("c-0", "c-1", "c-2"):
        last = _decisions(decisions, content_id)[-1]
        assert (last["action"], last["cause"]) == ("retract", "unreadable_update")
        assert last["event_id"].startswith(f"{settings.topics.content}:0:")
    await _verified(settings)


def _delete_dict(content_id: str, author: str, *, event_id: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "op": "delete",
        "content_id": content_id,
        "author_id": author,
        "event_time": "2026-11-28T10:00:00Z",
    }
    if event_id is not None:
        record["event_id"] = event_id
    return record


async def test_worker_objection_or_account_deletion_releases_held_items_at_once(bootstrap: str, tmp_path: Path) -> None:
    # Issue #16, point 5: held items (text included) stayed in the store and on
    # eligibility.deferred until they fell due, whatever their author did meanwhile.
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    recent = ts(NOW - dt.timedelta(days=1))  # Brazil: 29 more days of notice
    await send(
        settings,
        settings.topics.profiles,
        [profile(a, country="BR", notified=recent) for a in ("a-objects", "a-leaves", "a-moves", "a-stays")],
    )
    held = [upsert(f"c-{a}", a) for a in ("a-objects", "a-leaves", "a-moves", "a-stays")]
    await send(settings, settings.topics.content, held)
    async with running_worker(settings) as worker:
        await read_until(settings, settings.topics.deferred, 4)
        await until(lambda: sample(worker, "eligibility_deferred_items") == 4)
        await send(settings, settings.topics.objections, [objection("a-objects", "objected")])
        await send(
            settings,
            settings.topics.profiles,
            [(b"a-leaves", None), profile("a-moves", country="DE", notified=recent)],
        )
        await _drained(settings, "release")
        await until(lambda: sample(worker, "eligibility_deferred_items") == 1)
        assert sample(worker, "eligibility_released_items_total") == 3
    deferred = latest_by_key(await read_all(settings, settings.topics.deferred))
    still = {key for key, record in deferred.items() if record.value is not None}
    assert still == {item_id("a-stays", "c-a-stays")}
    decisions = await read_all(settings, settings.topics.decisions)
    assert _decisions(decisions, "c-a-objects")[-1]["reason"] == "objected"
    assert _decisions(decisions, "c-a-leaves")[-1]["reason"] == "account_unknown"
    assert _decisions(decisions, "c-a-moves")[-1]["reason"] == "jurisdiction_not_enabled"
    assert _live(await read_all(settings, settings.topics.feed)) == set()
    await _verified(settings)


async def test_worker_crash_after_feed_before_index_cannot_leave_an_item_the_next_owner_never_retracts(
    bootstrap: str, tmp_path: Path
) -> None:
    # Issue #16, point 6: a feed record and its published-index entry were sent with no order
    # between them. Here the broker takes everything but the index entry, then the worker dies
    # and the partition moves to a worker without its disk, which then sees an objection.
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=1)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-gb")])
    await send(settings, settings.topics.content, [upsert("c-1", "a-gb")])
    async with running_worker(settings) as worker:
        assert worker.producer is not None
        producer = worker.producer
        real_send_batch = producer.send_batch

        async def send_batch(batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
            if topic == settings.topics.published:
                refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                refused.set_exception(RuntimeError("index entry lost in the crash"))
                return refused
            return await real_send_batch(batch, topic, partition=partition)

        producer.send_batch = send_batch  # type: ignore[method-assign]  # the crash point, injected
        await until(lambda: sample(worker, "eligibility_delivery_failures_total") >= 2)
    # No feed record without its index entry durable first.
    assert await read_all(settings, settings.topics.feed) == []

    shutil.rmtree(settings.data_dir)
    await send(settings, settings.topics.objections, [objection("a-gb", "objected")])
    async with running_worker(replace(settings)):
        await _drained(settings, "crash")
    assert _live(await read_all(settings, settings.topics.feed)) == set()
    await _verified(settings)


async def test_worker_dead_letter_of_a_huge_record_is_capped_and_the_partition_goes_on(
    bootstrap: str, tmp_path: Path
) -> None:
    # Issue #16, point 6: a 1 MB record of random bytes got a dead letter the broker refused
    # (without compression), and its batch was replayed for ever.
    settings = replace(unique_settings(bootstrap, tmp_path, partitions=1), compression=None)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-gb")])
    junk = os.urandom(1_000_000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2 << 20)
    await producer.start()
    huge_key = os.urandom(600_000)
    try:
        await producer.send_and_wait(settings.topics.content, key=b"a-gb", value=junk)
        await producer.send_and_wait(settings.topics.content, key=huge_key, value=b"{}")
    finally:
        await producer.stop()
    await send(settings, settings.topics.content, [upsert("c-after", "a-gb")])
    async with running_worker(settings) as worker:
        feed = await read_until(settings, settings.topics.feed, 1)
        assert sample(worker, "eligibility_delivery_failures_total") == 0
    assert [r.key for r in feed] == [b"c-after"]
    letter, of_key = sorted(await read_all(settings, settings.topics.dlq), key=lambda r: r.offset)
    junk_letter = letter.json()
    assert junk_letter["reason"] == "malformed_json" and letter.key == b"a-gb"
    assert junk_letter["omitted"] == ["value"] and junk_letter["value"] is None
    assert (junk_letter["value_bytes"], junk_letter["value_sha256"]) == (len(junk), hashlib.sha256(junk).hexdigest())
    assert base64.b64decode(junk_letter["key"]) == b"a-gb"
    # A key no id could be: the letter's Kafka key is its SHA-256, the letter describes it.
    key_letter = of_key.json()
    assert of_key.key == hashlib.sha256(huge_key).hexdigest().encode()
    assert key_letter["omitted"] == ["key"] and key_letter["key_bytes"] == len(huge_key)
    assert base64.b64decode(key_letter["value"]) == b"{}"
    await _verified(settings)


async def test_worker_places_records_by_content_id_whatever_the_input_partition(bootstrap: str, tmp_path: Path) -> None:
    # Issue #16, point 6: outputs went to the input's partition number, so after an operator
    # added input partitions a content id's feed records moved and its old value stayed.
    settings = unique_settings(bootstrap, tmp_path, partitions=4)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-gb")])
    ids = [f"c-{i}" for i in range(12)]
    await send(settings, settings.topics.content, [upsert(c, "a-gb") for c in ids])
    async with running_worker(settings):
        feed = await read_until(settings, settings.topics.feed, len(ids))
        decisions = await read_until(settings, settings.topics.decisions, len(ids))
    author_partition = {r.partition for r in await read_all(settings, settings.topics.content)}
    assert len(author_partition) == 1
    placed = {r.key: r.partition for r in feed}
    assert placed == {c.encode(): partition_for(c.encode(), 4) for c in ids}
    assert set(placed.values()) - author_partition, "some ids must hash elsewhere for the test to mean anything"
    assert all(r.partition == partition_for(r.key or b"", 4) for r in decisions)
    await _verified(settings)


@pytest.mark.pure_core  # monkeypatches the core (tests/pure_core.py)
async def test_worker_record_that_raises_is_isolated_dead_lettered_and_the_partition_goes_on(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-gb")])
    await send(settings, settings.topics.content, [upsert("c-ok", "a-gb")])
    real = stream.core.items.decide_account

    def decide_account(event: Any, *args: Any) -> Any:
        if event.content_id == "c-boom":
            raise ZeroDivisionError("a bug nobody imagined")
        return real(event, *args)

    monkeypatch.setattr(stream.core.items, "decide_account", decide_account)
    async with running_worker(settings) as worker:
        await read_until(settings, settings.topics.feed, 1)
        await send(settings, settings.topics.content, [upsert("c-boom", "a-gb"), upsert("c-next", "a-gb")])
        await _drained(settings, "boom")
        assert worker.is_ready and sample(worker, "eligibility_delivery_failures_total") == 0
        assert sample(worker, "eligibility_dead_letters_total", reason="processing_error") == 1
    assert _live(await read_all(settings, settings.topics.feed)) == {b"c-ok", b"c-next"}
    [letter] = [r.json() for r in await read_all(settings, settings.topics.dlq)]
    assert letter["reason"] == "processing_error" and "ZeroDivisionError" in letter["detail"]
    await _verified(settings)


async def test_worker_whose_batches_keep_failing_reports_itself_stuck_until_one_succeeds(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path, partitions=1)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, [profile("a-gb")])
    async with running_worker(settings) as worker:
        await until(lambda: worker.is_ready)
        # The broker refuses every feed record: each attempt fails and is replayed.
        await set_topic_config(bootstrap, settings.topics.feed, {"max.message.bytes": "64"})
        await send(settings, settings.topics.content, [upsert("c-1", "a-gb")])
        await until(lambda: sample(worker, "eligibility_worker_stuck") == 1)
        assert not worker.is_ready and worker.ready  # caught up, but making no progress
        assert sample(worker, "eligibility_ready") == 0
        assert sample(worker, "eligibility_batch_replays_total") >= 3
        await set_topic_config(bootstrap, settings.topics.feed, {"max.message.bytes": "1048588"})
        await read_until(settings, settings.topics.feed, 1)
        await until(lambda: worker.is_ready)
        assert sample(worker, "eligibility_worker_stuck") == 0 and sample(worker, "eligibility_ready") == 1
    await _verified(settings)
