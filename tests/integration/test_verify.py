"""The compliance verifier on the real broker: clean after the worker, and it catches what is planted.

The worker runs in-process over uuid-named topics; then the verifier reads the same
topics independently. Waiting is on offsets and outputs, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import socket
import threading
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream.config import Settings
from stream.verifier.verify import Reason, Report, VerifyError, main_verify, render, verify
from stream.workload.generator import TopicKind, Workload

from .harness import (
    HOUR_AGO_MS,
    KEY,
    content_consumed,
    js,
    latest_by_key,
    make_topics,
    read_all,
    read_until,
    running_worker,
    send,
    send_markers,
    send_workload,
    unique_settings,
)
from .test_filter_scenario import objection, profile, ts, upsert

pytestmark = pytest.mark.integration

UTC = dt.UTC


async def send_at(
    settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes | None]], timestamp_ms: int
) -> None:
    """Like `send`, with a broker timestamp in the past (state that predates the content)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v, timestamp_ms=timestamp_ms) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def pseudonym(account: str) -> str:
    return hmac.new(KEY, account.encode(), hashlib.sha256).hexdigest()


def found(report: Report) -> dict[str, list[str]]:
    return {r.value: t.examples for r, t in report.violations.items() if t.count}


async def test_verify_after_worker_on_generated_workload_finds_nothing(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    # `now` an hour back keeps every generated notice ("shown now") in the past for the worker.
    workload = Workload(
        seed=11,
        accounts=400,
        now=dt.datetime.now(UTC) - dt.timedelta(hours=1),
        malformed_share=0.02,
        run=uuid.uuid4().hex[:8],
    )
    setup = [item.record for item in workload.setup()]
    stream = [item.record for item in workload.stream(6000)]
    await send_workload(settings, setup, stream)

    async with running_worker(settings):
        await content_consumed(settings)
        first = await verify(settings)
        assert first.ok, render(first)

        # Then state changes of authors with items on the feed: retractions, and
        # withdrawn objections whose retracted items stay retracted (excused).
        author_of = {pseudonym(a): a for a in workload.account_ids}
        feed = latest_by_key(await read_all(settings, settings.topics.feed))
        authors = sorted({author_of[r.json()["author_pseudonym"]] for r in feed.values() if r.value is not None})
        objectors, deleted, moved = authors[:6], authors[6], authors[7]
        await send(settings, settings.topics.objections, [objection(a, "objected") for a in objectors])
        await send(settings, settings.topics.objections, [objection(a, "withdrawn") for a in objectors[:3]])
        await send(settings, settings.topics.profiles, [(deleted.encode(), None), profile(moved, country="FR")])
        await send_markers(settings, "changes")
        await content_consumed(settings)
    report = await verify(settings)

    assert report.ok, render(report)
    assert (report.violation_count, report.losses.count, report.minimisation_count) == (0, 0, 0), render(report)
    assert report.stale.count == 0 and report.unverifiable.count == 0 and report.pending.count == 0
    # The workload exercised the rule: many items eligible, bad input ignored, every
    # eligible item on the feed unless its author's state changed since (excused).
    assert report.inputs.content == first.inputs.content + settings.partitions
    assert first.inputs.content == len([r for r in stream if r.topic is TopicKind.CONTENT]) + settings.partitions
    assert report.inputs.content_invalid > 0
    assert report.expected_eligible > 500
    assert report.excused.count > 0
    assert report.feed_items + report.excused.count == report.expected_eligible
    assert report.feed_items < first.feed_items
    status = await asyncio.to_thread(main_verify, settings, tmp_path / "clean.json", True, 0.0)
    assert status == 0
    assert orjson.loads((tmp_path / "clean.json").read_bytes())["ok"] is True


async def test_verify_planted_feed_records_are_reported_with_reasons_and_fail(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    minor_birth = (dt.datetime.now(UTC) - dt.timedelta(days=15 * 365)).date().isoformat()
    await send_at(
        settings,
        settings.topics.profiles,
        [profile("a-adult"), profile("a-objector"), profile("a-minor", birth=minor_birth)],
        HOUR_AGO_MS,
    )
    await send_at(settings, settings.topics.objections, [objection("a-objector", "objected")], HOUR_AGO_MS)
    await send(
        settings,
        settings.topics.content,
        [
            upsert("c-ok", "a-adult"),
            upsert("c-obj", "a-objector"),
            upsert("c-minor", "a-minor"),
            upsert("c-extra", "a-adult"),
        ],
    )
    async with running_worker(settings):
        await read_until(settings, settings.topics.decisions, 4)
        await content_consumed(settings)
    live = {k: r.json() for k, r in latest_by_key(await read_all(settings, settings.topics.feed)).items()}
    assert set(live) == {b"c-ok", b"c-extra"}
    assert (await verify(settings)).ok

    # Written straight to the feed, behind the filter's back.
    good = live[b"c-ok"]
    planted = [
        (
            b"c-obj",
            js(
                {
                    **good,
                    "content_id": "c-obj",
                    "author_pseudonym": pseudonym("a-objector"),
                    "source_event_id": "e-c-obj",
                }
            ),
        ),
        (
            b"c-minor",
            js(
                {
                    **good,
                    "content_id": "c-minor",
                    "author_pseudonym": pseudonym("a-minor"),
                    "source_event_id": "e-c-minor",
                }
            ),
        ),
        (b"c-extra", js({**live[b"c-extra"], "birth_date": "1980-05-05"})),
        (b"c-ghost", js({**good, "content_id": "c-ghost", "source_event_id": "e-c-ghost"})),
    ]
    await send(settings, settings.topics.feed, planted)
    report = await verify(settings)

    assert found(report) == {"objected": ["c-obj"], "minor": ["c-minor"], "unknown_content": ["c-ghost"]}
    assert {p.value: t.examples for p, t in report.minimisation.items() if t.count} == {"fields": ["c-extra"]}
    assert report.losses.count == 0 and not report.ok
    text = render(report)
    for secret in ("a-objector", "a-minor", "a-adult", "1980-05-05", minor_birth, "text of"):
        assert secret not in text

    json_path = tmp_path / "report.json"
    status = await asyncio.to_thread(main_verify, settings, json_path, True, 0.0)
    assert status == 1
    data = orjson.loads(json_path.read_bytes())
    assert data["violations"]["by_reason"][Reason.OBJECTED.value] == {"count": 1, "examples": ["c-obj"]}
    assert data["minimisation_problems"]["by_kind"]["fields"]["count"] == 1


def delete(content_id: str, author: str) -> tuple[bytes, bytes]:
    return author.encode(), js(
        {
            "event_id": f"d-{content_id}",
            "op": "delete",
            "content_id": content_id,
            "author_id": author,
            "event_time": "2026-11-28T09:15:00Z",
        }
    )


async def test_verify_order_unreadable_updates_and_held_items_agree_with_worker_and_catch_plants(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    # a-br is in Brazil and was shown the notice just now: 30 days of notice period run.
    shown = ts(dt.datetime.now(UTC))
    await send_at(
        settings,
        settings.topics.profiles,
        [profile("a-adult"), profile("a-br", country="BR", notified=shown)],
        HOUR_AGO_MS,
    )
    unreadable = js({**orjson.loads(upsert("c-bad", "a-adult")[1]), "event_id": "e-c-bad-2", "visibility": "circle"})
    await send(
        settings,
        settings.topics.content,
        [
            upsert("c-keep", "a-adult"),
            upsert("c-del", "a-adult"),
            delete("c-del", "a-adult"),
            upsert("c-del", "a-adult"),  # a duplicate after the delete: skipped
            upsert("c-del", "a-adult", event_id="e-c-del-2", event_time="2026-11-28T10:00:00Z"),  # deleted: skipped
            upsert("c-bad", "a-adult"),
            (b"a-adult", unreadable),  # a dead letter that still names c-bad: it leaves the feed
            upsert("c-held", "a-br"),
            upsert("c-held-2", "a-br"),
        ],
    )
    async with running_worker(settings):
        await content_consumed(settings)
        report = await verify(settings)
        assert report.ok, render(report)
        assert (report.held_items, report.inputs.content_skipped, report.inputs.content_invalid) == (2, 2, 1)
        held = {k: r.value for k, r in latest_by_key(await read_all(settings, settings.topics.deferred)).items()}
        assert len(held) == 2 and all(v is not None for v in held.values())

        # The objection releases both held items: tombstones on the deferred changelog.
        await send(settings, settings.topics.objections, [objection("a-br", "objected")])
        await send_markers(settings, "objection")
        await content_consumed(settings)
    report = await verify(settings)
    assert report.ok and report.held_items == 0, render(report)
    live = {k: r.json() for k, r in latest_by_key(await read_all(settings, settings.topics.feed)).items()}
    assert {k for k, v in live.items() if v is not None} == {b"c-keep"}

    # Written behind the filter's back: a deleted item, an item after its unreadable
    # update, and the released held copies back on the deferred changelog.
    good = live[b"c-keep"]
    await send(
        settings,
        settings.topics.feed,
        [
            (c, js({**good, "content_id": c.decode(), "source_event_id": f"e-{c.decode()}"}))
            for c in (b"c-del", b"c-bad")
        ],
    )
    await send(settings, settings.topics.deferred, list(held.items()))
    report = await verify(settings)

    assert {r: sorted(e) for r, e in found(report).items()} == {
        "content_deleted": ["c-del"],
        "unreadable_update": ["c-bad"],
        "held_after_release": ["c-held", "c-held-2"],
    }, render(report)
    assert report.held_items == 2 and report.exit_status == 1
    assert "a-br" not in render(report) and "text of" not in render(report)


async def test_verify_tombstoned_eligible_item_is_reported_as_loss(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    await send_at(settings, settings.topics.profiles, [profile("a-adult")], HOUR_AGO_MS)
    await send(settings, settings.topics.content, [upsert("c-1", "a-adult"), upsert("c-2", "a-adult")])
    async with running_worker(settings):
        await read_until(settings, settings.topics.feed, 2)
    assert (await verify(settings)).ok

    await send(settings, settings.topics.feed, [(b"c-1", None)])
    report = await verify(settings)

    assert report.losses.examples == ["c-1"] and report.losses.count == 1
    assert (report.expected_eligible, report.feed_items, report.violation_count) == (2, 1, 0)
    assert report.exit_status == 1


async def test_verify_missing_topics_raises_naming_them(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    with pytest.raises(VerifyError, match=settings.topics.feed.replace(".", r"\.")):
        await verify(settings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _scrape(port: int) -> str:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        return str(r.read().decode())
    return ""


async def test_verify_continuous_mode_serves_gauges_until_stopped(bootstrap: str, tmp_path: Path) -> None:
    # A trainer group that never acknowledged the one retraction on training.retractions.
    settings = replace(unique_settings(bootstrap, tmp_path), trainer_groups=("trainer-silent",))
    await make_topics(settings)
    retraction = {"content_id": "c-0", "retracted_at": "2026-11-28T09:15:00Z", "cause": "objection"}
    await send(settings, settings.topics.retractions, [(b"c-0", js({**retraction, "policy_version": "v"}))])
    await send_at(settings, settings.topics.profiles, [profile("a-adult")], HOUR_AGO_MS)
    await send(settings, settings.topics.content, [upsert("c-1", "a-adult")])  # never published: a loss
    port = _free_port()
    stop = threading.Event()
    json_path = tmp_path / "live.json"
    run = asyncio.create_task(
        asyncio.to_thread(main_verify, settings, json_path, False, 0.5, port=port, grace_seconds=0.0, stop=stop)
    )
    try:
        async with asyncio.timeout(60):
            while "eligibility_verifier_losses 1.0" not in (text := await asyncio.to_thread(_scrape, port)):
                await asyncio.sleep(0.1)  # polling the endpoint for the first run's gauges
    finally:
        stop.set()
        status = await run
    assert status == 1
    assert 'eligibility_verifier_violations{reason="objected"} 0.0' in text
    assert "eligibility_verifier_last_run_timestamp_seconds" in text
    assert 'eligibility_trainer_unacknowledged_retractions{group="trainer-silent"} 1.0' in text
    assert "eligibility_trainer_acknowledgement_deadline_seconds 86400.0" in text
    assert orjson.loads(json_path.read_bytes())["losses"]["examples"] == ["c-1"]
