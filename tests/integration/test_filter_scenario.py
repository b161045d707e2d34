"""The filter end to end on the real broker: a known scenario, exact outputs."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest

from stream.core.policy import load_policy

from .harness import KEY, js, latest_by_key, make_topics, read_all, read_until, running_worker, send, unique_settings

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
LONG_AGO = "2025-01-01T00:00:00Z"


def ts(d: dt.datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def profile(
    account: str, *, country: str | None = "GB", birth: str | None = "1980-05-05", notified: str | None = LONG_AGO
) -> tuple[bytes, bytes]:
    return account.encode(), js(
        {
            "account_id": account,
            "birth_date": birth,
            "country": country,
            "notified_at": notified,
            "updated_at": LONG_AGO,
        }
    )


def objection(account: str, status: str) -> tuple[bytes, bytes]:
    return account.encode(), js(
        {"account_id": account, "status": status, "at": LONG_AGO, "source": "form", "request_id": f"req-{account}"}
    )


def upsert(
    content_id: str,
    author: str,
    *,
    content_type: str = "post",
    visibility: str = "public",
    created_at: str = "2026-01-02T03:04:05Z",
    **extra: Any,
) -> tuple[bytes, bytes]:
    value = {
        "event_id": f"e-{content_id}",
        "op": "upsert",
        "content_id": content_id,
        "content_type": content_type,
        "platform": "instagram",
        "author_id": author,
        "visibility": visibility,
        "created_at": created_at,
        "event_time": "2026-11-28T09:15:00Z",
        "text": f"text of {content_id}",
        "media_uri": None,
        "language": "en",
        **extra,
    }
    return author.encode(), js(value)


PROFILES = [
    profile("a-gb"),
    profile("a-br", country="BR", birth="1990-02-28"),
    profile("a-br-recent", country="BR", notified=ts(NOW - dt.timedelta(days=1))),
    profile("a-de", country="DE"),
    profile("a-nocountry", country=None),
    profile("a-notnotified", notified=None),
    profile("a-nobirth", birth=None),
    profile("a-minor", birth=(NOW - dt.timedelta(days=15 * 365)).date().isoformat()),
    profile("a-was-minor", birth="2000-01-01"),
    profile("a-objector"),
    profile("a-withdrawn"),
]
OBJECTIONS = [objection("a-objector", "objected"), objection("a-withdrawn", "withdrawn")]

# content id -> (record, expected reason)
CONTENT: dict[str, tuple[tuple[bytes, bytes], str]] = {
    "c-eligible-gb": (upsert("c-eligible-gb", "a-gb", content_type="photo", media_uri="media://p/1"), "eligible"),
    "c-eligible-br": (upsert("c-eligible-br", "a-br", content_type="caption", language=None), "eligible"),
    "c-withdrawn": (upsert("c-withdrawn", "a-withdrawn", content_type="comment"), "eligible"),
    "c-message": (upsert("c-message", "a-gb", content_type="message"), "private_message"),
    "c-friends": (upsert("c-friends", "a-gb", visibility="friends"), "not_public"),
    "c-private": (upsert("c-private", "a-gb", visibility="private"), "not_public"),
    "c-unknown": (upsert("c-unknown", "a-nobody"), "account_unknown"),
    "c-objected": (upsert("c-objected", "a-objector"), "objected"),
    "c-nocountry": (upsert("c-nocountry", "a-nocountry"), "country_unknown"),
    "c-de": (upsert("c-de", "a-de"), "jurisdiction_not_enabled"),
    "c-notnotified": (upsert("c-notnotified", "a-notnotified"), "not_notified"),
    "c-notice": (upsert("c-notice", "a-br-recent"), "notice_period_running"),
    "c-nobirth": (upsert("c-nobirth", "a-nobirth"), "age_unknown"),
    "c-minor": (upsert("c-minor", "a-minor"), "minor"),
    "c-was-minor": (upsert("c-was-minor", "a-was-minor", created_at="2017-12-31T23:59:59Z"), "created_while_minor"),
}

# (key, value, expected dead-letter reason); the valid event after them shares their partition
BAD: list[tuple[bytes | None, bytes | None, str]] = [
    (b"a-gb", b"\xff\xfe not json", "malformed_json"),
    (b"a-gb", b"[1, 2, 3]", "not_an_object"),
    (b"a-gb", js({"event_id": "e-x", "op": "upsert"}), "schema_violation"),
    (
        b"a-gb",
        js({**__import__("orjson").loads(upsert("c-bad-enum", "a-gb")[1]), "visibility": "everyone"}),
        "schema_violation",
    ),
    (
        b"a-gb",
        js({**__import__("orjson").loads(upsert("c-huge", "a-gb")[1]), "text": "x" * 200_000}),
        "schema_violation",
    ),
    (b"a-gb", None, "schema_violation"),
    (b"someone-else", upsert("c-mismatch", "a-gb")[1], "key_mismatch"),
    (None, upsert("c-nokey", "a-gb")[1], "key_mismatch"),
]


async def test_worker_known_scenario_writes_exact_feed_decisions_and_dead_letters(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, PROFILES)
    await send(settings, settings.topics.objections, OBJECTIONS)
    after_bad = upsert("c-after-bad", "a-gb")
    await send(
        settings,
        settings.topics.content,
        [record for record, _ in CONTENT.values()] + [(k, v) for k, v, _ in BAD] + [after_bad],
    )
    expected_decisions = len(CONTENT) + 1

    async with running_worker(settings):
        decisions = await read_until(settings, settings.topics.decisions, expected_decisions)
        dead = await read_until(settings, settings.topics.dlq, len(BAD))
    feed = await read_all(settings, settings.topics.feed)
    decisions = await read_all(settings, settings.topics.decisions)
    policy_version = load_policy().version

    # Exactly one decision per valid event, with the contract's reason.
    by_content = {d.json()["content_id"]: d.json() for d in decisions}
    assert len(decisions) == expected_decisions
    assert {cid: by_content[cid]["reason"] for cid in CONTENT} == {cid: r for cid, (_, r) in CONTENT.items()}
    assert by_content["c-after-bad"]["reason"] == "eligible"  # the worker kept consuming after bad input
    for cid, (_, reason) in CONTENT.items():
        d = by_content[cid]
        assert d["event_id"] == f"e-{cid}" and d["action"] == "decide" and d["cause"] is None
        assert d["eligible"] is (reason == "eligible") and d["policy_version"] == policy_version
        assert d["event_time"] == "2026-11-28T09:15:00Z"
    assert by_content["c-objected"]["author_id"] == "a-objector"

    # The feed holds exactly the eligible items, minimised.
    view = latest_by_key(feed)
    assert set(view) == {b"c-eligible-gb", b"c-eligible-br", b"c-withdrawn", b"c-after-bad"}
    item = view[b"c-eligible-gb"].json()
    assert item == {
        "content_id": "c-eligible-gb",
        "content_type": "photo",
        "platform": "instagram",
        "author_pseudonym": hmac.new(KEY, b"a-gb", hashlib.sha256).hexdigest(),
        "created_at": "2026-01-02T03:04:05Z",
        "text": "text of c-eligible-gb",
        "media_uri": "media://p/1",
        "language": "en",
        "jurisdiction": "GB",
        "policy_version": policy_version,
        "decided_at": by_content["c-eligible-gb"]["decided_at"],
        "source_event_id": "e-c-eligible-gb",
        "schema_version": 1,
    }
    assert view[b"c-eligible-br"].json()["jurisdiction"] == "BR"
    assert view[b"c-eligible-br"].json()["language"] is None
    for record in feed:
        assert record.value is not None and b"a-gb" not in record.value and b"1980" not in record.value

    # Every bad record is a dead letter carrying its reason and its original bytes.
    letters = sorted((d.json() for d in dead), key=lambda letter: (letter["partition"], letter["offset"]))
    expected = sorted(
        ((key, value, reason) for key, value, reason in BAD),
        key=lambda bad: [letter["value"] for letter in letters].index(
            base64.b64encode(bad[1]).decode() if bad[1] is not None else None
        ),
    )
    assert len(letters) == len(BAD)
    for letter, (key, value, reason) in zip(letters, expected, strict=True):
        assert letter["reason"] == reason
        assert letter["topic"] == settings.topics.content
        assert letter["key"] == (base64.b64encode(key).decode() if key is not None else None)
        assert letter["value"] == (base64.b64encode(value).decode() if value is not None else None)
        assert letter["detail"] and isinstance(letter["offset"], int)
        assert b"text of" not in letter["detail"].encode()
