"""`explain` and `subject` on the real broker: a known scenario, the right answer for each case.

A worker decides a scenario with every refusal reason, an eligible item, a withdrawal
for each cause and skipped events (a duplicate, a late event, an event after a delete);
then each command is asked about each case, through the library (`to_json`: what
`--json` prints) and as a process (`python -m stream ...`): text, JSON, exit status,
unknown and hostile ids, and a debug-level run whose log lines never carry the raw id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from stream.compliance import explain as explain_mod
from stream.compliance import subject as subject_mod
from stream.config import Settings

from .harness import (
    KEY,
    content_consumed,
    js,
    make_topics,
    process_env,
    running_worker,
    send,
    send_markers,
    unique_settings,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime.now(dt.UTC)
LONG_AGO = "2025-01-01T00:00:00Z"
T1 = "2026-11-28T09:15:00Z"
T2 = "2026-11-28T10:15:00Z"
T3 = "2026-11-28T11:15:00Z"
VERSION = "explain-test.1"
# The packaged policy with captions disabled, so `content_type_not_enabled` fires too.
POLICY = f"""
version = "{VERSION}"
content_types = ["post", "comment", "photo"]
minimum_age = 18
[jurisdictions.GB]
notice_period_days = 0
[jurisdictions.BR]
notice_period_days = 30
"""
ODD_ID = "c-odd-\u00e9\U0001f600\u202e\u200b-id"
# Distinctive, so a log line carrying it cannot be a coincidence.
SECRET_ACCOUNT = "acct-objector-7f3a9c"


def ts(d: dt.datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def profile(
    account: str, *, country: str | None = "GB", birth: str | None = "1980-05-05", notified: str | None = LONG_AGO
) -> tuple[bytes, bytes]:
    value = {"account_id": account, "birth_date": birth, "country": country, "notified_at": notified}
    return account.encode(), js({**value, "updated_at": LONG_AGO})


def objection(account: str, status: str) -> tuple[bytes, bytes]:
    return account.encode(), js(
        {"account_id": account, "status": status, "at": LONG_AGO, "source": "form", "request_id": f"req-{account}"}
    )


def upsert(
    content_id: str,
    author: str,
    *,
    event_id: str | None = None,
    event_time: str = T1,
    content_type: str = "post",
    visibility: str = "public",
    created_at: str = "2026-01-02T03:04:05Z",
) -> tuple[bytes, bytes]:
    return author.encode(), js(
        {
            "event_id": event_id or f"e-{content_id}",
            "op": "upsert",
            "content_id": content_id,
            "content_type": content_type,
            "platform": "facebook",
            "author_id": author,
            "visibility": visibility,
            "created_at": created_at,
            "event_time": event_time,
            "text": f"text of {content_id}",
            "media_uri": None,
            "language": "en",
        }
    )


def delete(content_id: str, author: str, event_id: str, event_time: str) -> tuple[bytes, bytes]:
    return author.encode(), js(
        {"event_id": event_id, "op": "delete", "content_id": content_id, "author_id": author, "event_time": event_time}
    )


PROFILES = [
    profile("a-gb"),
    profile("a-br-recent", country="BR", notified=ts(NOW - dt.timedelta(days=1))),
    profile("a-de", country="DE"),
    profile("a-nocountry", country=None),
    profile("a-notnotified", notified=None),
    profile("a-nobirth", birth=None),
    profile("a-minor", birth=(NOW - dt.timedelta(days=15 * 365)).date().isoformat()),
    profile("a-was-minor", birth="2000-01-01"),
    profile("a-objector"),
    *(profile(a) for a in (SECRET_ACCOUNT, "r-del", "r-chg", "r-cdel", "r-vis", "r-unr", "s-skip")),
]

# content id -> (record, the reason of its one decision)
DECIDED: dict[str, tuple[tuple[bytes, bytes], str]] = {
    "c-eligible": (upsert("c-eligible", "a-gb"), "eligible"),
    ODD_ID: (upsert(ODD_ID, "a-gb"), "eligible"),
    "c-message": (upsert("c-message", "a-gb", content_type="message"), "private_message"),
    "c-friends": (upsert("c-friends", "a-gb", visibility="friends"), "not_public"),
    "c-caption": (upsert("c-caption", "a-gb", content_type="caption"), "content_type_not_enabled"),
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

# Published in the first phase, withdrawn in the second: content id -> (author, the codes of its audit records)
WITHDRAWN: dict[str, tuple[str, list[str]]] = {
    "c-r-obj": (SECRET_ACCOUNT, ["eligible", "objection"]),
    "c-r-obj2": (SECRET_ACCOUNT, ["eligible", "objection"]),
    "c-r-del": ("r-del", ["eligible", "account_deleted"]),
    "c-r-chg": ("r-chg", ["eligible", "account_changed"]),
    "c-r-cdel": ("r-cdel", ["eligible", "content_deleted"]),
    "c-r-vis": ("r-vis", ["eligible", "not_public", "visibility_changed"]),
    "c-r-unr": ("r-unr", ["eligible", "unreadable_update"]),
}

SKIPPED: dict[str, list[tuple[str, str]]] = {
    # the same event twice: the second is superseded
    "c-dup": [("decide", "eligible"), ("skip", "superseded")],
    # an event older than the one applied: superseded
    "c-late": [("decide", "eligible"), ("skip", "superseded")],
    # a delete is final: a later upsert is skipped
    "c-after-delete": [("decide", "eligible"), ("retract", "content_deleted"), ("skip", "deleted")],
}

PHASE_ONE = [
    *(record for record, _ in DECIDED.values()),
    *(upsert(cid, author) for cid, (author, _) in WITHDRAWN.items()),
    upsert("c-dup", "s-skip"),
    upsert("c-dup", "s-skip"),
    upsert("c-late", "s-skip", event_id="e-late-new", event_time=T2),
    upsert("c-late", "s-skip", event_id="e-late-old", event_time=T1),
    upsert("c-after-delete", "s-skip", event_id="e-ad-1", event_time=T1),
    delete("c-after-delete", "s-skip", "e-ad-2", T2),
    upsert("c-after-delete", "s-skip", event_id="e-ad-3", event_time=T3),
]


@pytest_asyncio.fixture(scope="module")
async def scenario(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    """The scenario decided by a worker, both phases committed; the worker stopped."""
    tmp = tmp_path_factory.mktemp("explain")
    policy = tmp / "policy.toml"
    policy.write_text(POLICY)
    settings = replace(unique_settings(bootstrap, tmp / "data"), policy_path=policy)
    await make_topics(settings)
    await send(settings, settings.topics.profiles, PROFILES)
    await send(settings, settings.topics.objections, [objection("a-objector", "objected")])
    async with running_worker(settings):
        await send(settings, settings.topics.content, PHASE_ONE)
        await send_markers(settings, "one")
        await content_consumed(settings)
        await send(settings, settings.topics.objections, [objection(SECRET_ACCOUNT, "objected")])
        await send(settings, settings.topics.profiles, [(b"r-del", None), profile("r-chg", country="DE")])
        unreadable = js(
            {"event_id": "e-bad", "op": "upsert", "content_id": "c-r-unr"}
        )  # schema-invalid, names the item
        await send(
            settings,
            settings.topics.content,
            [
                delete("c-r-cdel", "r-cdel", "e-cdel", T2),
                upsert("c-r-vis", "r-vis", event_id="e-vis", event_time=T2, visibility="friends"),
                (b"r-unr", unreadable),
            ],
        )
        await send_markers(settings, "two")
        await content_consumed(settings)
    yield settings


async def explained(settings: Settings, content_id: str) -> dict[str, Any]:
    """What `explain --json` prints, parsed."""
    data: dict[str, Any] = orjson.loads(explain_mod.to_json(await explain_mod.explain(settings, content_id)))
    return data


async def subject_of(settings: Settings, account_id: str) -> dict[str, Any]:
    """What `subject --json` prints, parsed."""
    data: dict[str, Any] = orjson.loads(subject_mod.to_json(await subject_mod.subject(settings, account_id)))
    return data


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The worker's topics, policy and pseudonym key (subject recognises the author's feed records by it)."""
    return process_env(
        settings, STREAM_POLICY_PATH=str(settings.policy_path), STREAM_PSEUDONYM_KEY=KEY.decode(), **extra
    )


def run_cli(settings: Settings, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    env = cli_env(settings)
    return subprocess.run(
        [sys.executable, "-m", "stream", *args], capture_output=True, env=env, cwd=ROOT, timeout=120, check=False
    )


async def run_cli_async(settings: Settings, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(run_cli, settings, *args)


# --- explain ---------------------------------------------------------------------------


async def test_explain_each_decided_item_gives_its_reason_sentence_and_feed_status(scenario: Settings) -> None:
    for content_id, (_, reason) in DECIDED.items():
        data = await explained(scenario, content_id)
        assert data["found"] is True, content_id
        [record] = data["records"]
        assert (record["action"], record["code"], record["reason"]) == ("decide", reason, reason), content_id
        assert record["eligible"] is (reason == "eligible")
        assert record["policy_version"] == VERSION and record["event_id"] == f"e-{content_id}"
        assert record["event_time"] == T1 and record["decided_at"].startswith(str(NOW.year))
        assert record["explanation"] and "code this tool does not know" not in record["explanation"]
        assert data["on_feed"] is (reason == "eligible"), content_id
        assert data["feed"]["state"] == ("on_feed" if reason == "eligible" else "absent")
    eligible = await explained(scenario, "c-eligible")
    assert eligible["feed"]["policy_version"] == VERSION and eligible["feed"]["jurisdiction"] == "GB"
    assert eligible["authors"] == ["a-gb"]
    assert eligible["records"][0]["explanation"].startswith("Used for training")
    assert (await explained(scenario, "c-minor"))["records"][0]["explanation"].startswith("Not used: the author was")


async def test_explain_withdrawn_item_lists_decision_then_withdrawal_with_cause(scenario: Settings) -> None:
    for content_id, (author, codes) in WITHDRAWN.items():
        data = await explained(scenario, content_id)
        assert [r["code"] for r in data["records"]] == codes, content_id
        assert data["records"][-1]["action"] == "retract" and data["records"][-1]["cause"] == codes[-1]
        assert data["records"][-1]["explanation"] != data["records"][0]["explanation"]
        assert data["authors"] == [author]
        assert data["on_feed"] is False, content_id
        assert data["feed"]["state"] == "withdrawn" and data["feed"]["since"] is not None
        offsets = [r["offset"] for r in data["records"]]
        assert offsets == sorted(offsets)  # in the order the filter wrote them
    objected = await explained(scenario, "c-r-obj")
    assert objected["records"][1]["explanation"].startswith("Withdrawn from training: the author objected")


async def test_explain_skipped_events_are_listed_with_their_reason(scenario: Settings) -> None:
    for content_id, expected in SKIPPED.items():
        data = await explained(scenario, content_id)
        assert [(r["action"], r["code"]) for r in data["records"]] == expected, content_id
    dup = await explained(scenario, "c-dup")
    assert dup["on_feed"] is True  # the duplicate changed nothing
    assert dup["records"][1]["explanation"].startswith("Ignored")
    late = await explained(scenario, "c-late")
    assert [r["event_id"] for r in late["records"]] == ["e-late-new", "e-late-old"] and late["on_feed"] is True
    after = await explained(scenario, "c-after-delete")
    assert after["records"][2]["event_id"] == "e-ad-3" and after["on_feed"] is False


async def test_explain_unknown_id_is_not_found(scenario: Settings) -> None:
    data = await explained(scenario, "c-never-seen")
    assert data["found"] is False and data["records"] == [] and data["on_feed"] is False


async def test_explain_cli_text_json_and_exit_status(scenario: Settings) -> None:
    text = await run_cli_async(scenario, "explain", "c-r-obj")
    assert text.returncode == 0, text.stderr
    out = text.stdout.decode()
    assert "Content item c-r-obj" in out and "On the training feed now? No: the item was withdrawn" in out
    assert "decided: eligible" in out and "withdrawn: objection" in out and f"policy {VERSION}" in out
    assert "the author objected" in out

    as_json = await run_cli_async(scenario, "explain", "c-eligible", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = orjson.loads(as_json.stdout)
    assert data["on_feed"] is True and [r["code"] for r in data["records"]] == ["eligible"]

    unknown = await run_cli_async(scenario, "explain", "c-never-seen")
    assert (
        unknown.returncode == 1 and b"the filter has no record of it" in unknown.stdout and not unknown.stderr.strip()
    )
    unknown_json = await run_cli_async(scenario, "explain", "c-never-seen", "--json")
    assert unknown_json.returncode == 1 and orjson.loads(unknown_json.stdout)["found"] is False


async def test_explain_cli_hostile_ids_give_clear_messages(scenario: Settings) -> None:
    odd = await run_cli_async(scenario, "explain", ODD_ID, "--json")
    assert odd.returncode == 0, odd.stderr
    assert orjson.loads(odd.stdout)["content_id"] == ODD_ID and orjson.loads(odd.stdout)["on_feed"] is True
    odd_text = await run_cli_async(scenario, "explain", ODD_ID)
    assert odd_text.returncode == 0 and "\\u202e" in odd_text.stdout.decode()  # escaped, not obeyed by the terminal
    huge = await run_cli_async(scenario, "explain", "c" * 100_000)
    assert huge.returncode == 2 and b"at most 256 characters" in huge.stderr and b"Traceback" not in huge.stderr
    undecodable = await run_cli_async(scenario, "explain", b"c-\xff\xfe")
    assert undecodable.returncode == 2 and b"not valid UTF-8" in undecodable.stderr
    assert b"Traceback" not in undecodable.stderr
    empty = await run_cli_async(scenario, "subject", "")
    assert empty.returncode == 2 and b"empty" in empty.stderr
    control = await run_cli_async(scenario, "subject", "\x1b[31m\x07acct", "--json")
    assert control.returncode == 1 and orjson.loads(control.stdout)["found"] is False


# --- subject ---------------------------------------------------------------------------


async def test_subject_objector_has_nothing_on_feed_with_withdrawal_times_and_propagation(scenario: Settings) -> None:
    data = await subject_of(scenario, SECRET_ACCOUNT)
    assert data["objection"]["status"] == "objected" and data["objection"]["objects"] is True
    assert data["objection"]["request_id"] == f"req-{SECRET_ACCOUNT}" and data["objection"]["source"] == "form"
    assert data["eligibility"]["reason"] == "objected"
    assert data["profile"]["status"] == "present" and data["profile"]["country"] == "GB"
    assert sorted(i["content_id"] for i in data["items"]) == ["c-r-obj", "c-r-obj2"]
    assert data["on_feed"] == []
    for item in data["items"]:
        assert item["on_feed"] is False and item["withdrawn_cause"] == "objection"
        assert item["withdrawn_at"] is not None and item["last_code"] == "objection"
        assert item["policy_versions"] == [VERSION]
    propagation = data["propagation"]
    assert propagation["last_withdrawal_at"] == max(i["withdrawn_at"] for i in data["items"])
    recorded = dt.datetime.fromisoformat(data["objection"]["recorded_at"])
    last = dt.datetime.fromisoformat(propagation["last_withdrawal_at"])
    assert propagation["seconds"] == pytest.approx((last - recorded).total_seconds(), abs=0.002)
    assert 0 <= propagation["seconds"] < 60


async def test_subject_each_account_state_and_its_items(scenario: Settings) -> None:
    gb = await subject_of(scenario, "a-gb")
    assert gb["objection"]["status"] == "none" and gb["eligibility"]["reason"] == "eligible"
    assert gb["profile"]["birth_date"] == "1980-05-05" and gb["profile"]["notified_at"] == "2025-01-01T00:00:00.000Z"
    items = {i["content_id"]: i for i in gb["items"]}
    assert set(items) == {"c-eligible", ODD_ID, "c-message", "c-friends", "c-caption"}
    assert sorted(gb["on_feed"]) == sorted(["c-eligible", ODD_ID])
    assert items["c-caption"]["last_code"] == "content_type_not_enabled" and items["c-caption"]["on_feed"] is False
    assert gb["propagation"] == {"last_withdrawal_at": None, "seconds": None}

    expected = {
        "r-del": ("deleted", "account_unknown", "account_deleted"),
        "r-chg": ("present", "jurisdiction_not_enabled", "account_changed"),
        "r-cdel": ("present", "eligible", "content_deleted"),
        "r-vis": ("present", "eligible", "visibility_changed"),
        "r-unr": ("present", "eligible", "unreadable_update"),
    }
    for account, (profile_status, reason, cause) in expected.items():
        data = await subject_of(scenario, account)
        assert (data["profile"]["status"], data["eligibility"]["reason"]) == (profile_status, reason), account
        [item] = data["items"]
        assert (item["on_feed"], item["withdrawn_cause"]) == (False, cause), account

    objector = await subject_of(scenario, "a-objector")  # objected before posting: nothing was ever published
    assert objector["objection"]["status"] == "objected" and objector["on_feed"] == []
    assert [i["last_code"] for i in objector["items"]] == ["objected"]
    assert objector["propagation"]["seconds"] is None
    assert (await subject_of(scenario, "a-minor"))["eligibility"]["reason"] == "minor"
    assert (await subject_of(scenario, "a-notnotified"))["eligibility"]["reason"] == "not_notified"
    unknown = await subject_of(scenario, "a-nobody")  # items decided, but no profile
    assert unknown["profile"]["status"] == "none" and unknown["eligibility"]["reason"] == "account_unknown"
    assert [i["content_id"] for i in unknown["items"]] == ["c-unknown"]
    nothing = await subject_of(scenario, "nobody-at-all")
    assert nothing["found"] is False and nothing["items"] == []


async def test_subject_with_another_pseudonym_key_still_reports_items_on_feed_flagged(scenario: Settings) -> None:
    right = await subject_of(scenario, "a-gb")
    assert {i["content_id"]: i["pseudonym_matches"] for i in right["items"] if i["on_feed"]} == {
        "c-eligible": True,
        ODD_ID: True,
    }
    wrong = await subject_of(replace(scenario, pseudonym_key=b"not-the-workers-key"), "a-gb")
    assert sorted(wrong["on_feed"]) == sorted(["c-eligible", ODD_ID])  # never hidden for want of the key
    assert {i["content_id"]: i["pseudonym_matches"] for i in wrong["items"] if i["on_feed"]} == {
        "c-eligible": False,
        ODD_ID: False,
    }
    assert all(i["pseudonym_matches"] is None for i in wrong["items"] if not i["on_feed"])


async def test_subject_cli_prints_the_id_on_stdout_but_never_logs_it(scenario: Settings) -> None:
    for args in (("--log-level", "debug", "subject", SECRET_ACCOUNT), ("--log-level", "debug", "explain", "c-r-obj")):
        for fmt in ("text", "json"):
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "stream", *args],
                capture_output=True,
                env=cli_env(scenario, STREAM_LOG_FORMAT=fmt),
                cwd=ROOT,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert SECRET_ACCOUNT.encode() in done.stdout
            lines = done.stderr.decode().splitlines()
            assert lines, "a debug run logs something (else this test proves nothing)"
            assert not [line for line in lines if SECRET_ACCOUNT in line]
    text = run_cli(scenario, "subject", SECRET_ACCOUNT).stdout.decode()
    assert f"Account {SECRET_ACCOUNT}" in text and "OBJECTS to the use" in text
    assert "on the training feed now: 0" in text and "Objection propagation:" in text
    assert "withdrawn at" in text and "(objection)" in text
