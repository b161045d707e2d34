"""Unit tests of the verifier's pure part: its own rule, its parsing, its state and the diff.

Table-driven; no Kafka, no clock (every instant is a constant). The verifier must
agree with the contract, not with `stream.policy`: nothing here imports the filter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream.verify import (
    CLOCK_SLACK,
    FEED_FIELDS,
    Account,
    Policy,
    Problem,
    Profile,
    Reason,
    State,
    VerifierMetrics,
    VerifyError,
    adult_from,
    compare,
    judge,
    read_policy,
    render,
    to_json,
)

UTC = dt.UTC
KEY = b"unit-test-key"
POLICY = read_policy()
NOW = dt.datetime(2026, 11, 28, 9, 15, tzinfo=UTC)
LONG_AGO = dt.datetime(2020, 1, 1, tzinfo=UTC)
T0 = dt.datetime(2026, 11, 28, 8, 0, tzinfo=UTC)  # broker time of the inputs, an hour before NOW


def ts(d: dt.datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def pseudo(account: str) -> str:
    return hmac.new(KEY, account.encode(), hashlib.sha256).hexdigest()


# --- record builders (wire format, as the platform writes it) ------------------------


def upsert(content_id: str, author: str, **overrides: Any) -> tuple[bytes, bytes]:
    value = {
        "event_id": f"e-{content_id}",
        "op": "upsert",
        "content_id": content_id,
        "content_type": "post",
        "platform": "facebook",
        "author_id": author,
        "visibility": "public",
        "created_at": "2026-01-02T03:04:05Z",
        "event_time": "2026-11-28T08:00:00Z",
        "text": "secret words",
        "media_uri": None,
        "language": "en",
    }
    value.update(overrides)
    return author.encode(), orjson.dumps({k: v for k, v in value.items() if v is not ...})


def delete(content_id: str, author: str) -> tuple[bytes, bytes]:
    return author.encode(), orjson.dumps(
        {
            "event_id": f"d-{content_id}",
            "op": "delete",
            "content_id": content_id,
            "author_id": author,
            "event_time": "2026-11-28T08:00:00Z",
        }
    )


def profile(
    account: str,
    *,
    country: str | None = "GB",
    birth: str | None = "1980-05-05",
    notified: str | None = ts(LONG_AGO),
    **extra: Any,
) -> tuple[bytes, bytes]:
    return account.encode(), orjson.dumps(
        {
            "account_id": account,
            "birth_date": birth,
            "country": country,
            "notified_at": notified,
            "updated_at": ts(LONG_AGO),
            **extra,
        }
    )


def objection(account: str, status: str = "objected", **overrides: Any) -> tuple[bytes, bytes]:
    value = {"account_id": account, "status": status, "at": ts(LONG_AGO), "source": "form", "request_id": "r-1"}
    value.update(overrides)
    return account.encode(), orjson.dumps({k: v for k, v in value.items() if v is not ...})


def feed_value(content_id: str, author: str, **overrides: Any) -> bytes:
    value = {
        "content_id": content_id,
        "content_type": "post",
        "platform": "facebook",
        "author_pseudonym": pseudo(author),
        "created_at": "2026-01-02T03:04:05Z",
        "text": "secret words",
        "media_uri": None,
        "language": "en",
        "jurisdiction": "GB",
        "policy_version": POLICY.version,
        "decided_at": "2026-11-28T08:00:01Z",
        "source_event_id": f"e-{content_id}",
    }
    value.update(overrides)
    return orjson.dumps({k: v for k, v in value.items() if v is not ...})


class World:
    """State and feed built record by record, each input stamped with a broker time."""

    def __init__(self) -> None:
        self.state = State()
        self.feed: dict[bytes, bytes] = {}

    def content(self, record: tuple[bytes | None, bytes | None], at: dt.datetime = T0, partition: int = 0) -> World:
        self.state.apply_content(record[0], record[1], at, partition)
        return self

    def profile(self, record: tuple[bytes | None, bytes | None], at: dt.datetime = T0) -> World:
        self.state.apply_profile(record[0], record[1], at)
        return self

    def objection(self, record: tuple[bytes | None, bytes | None], at: dt.datetime = T0) -> World:
        self.state.apply_objection(record[0], record[1], at)
        return self

    def on_feed(self, content_id: str, value: bytes | None = None, author: str = "a-1") -> World:
        self.feed[content_id.encode()] = value if value is not None else feed_value(content_id, author)
        return self

    def compare(self, **kwargs: Any) -> Any:
        return compare(self.state, self.feed, POLICY, pseudonym_key=KEY, now=kwargs.pop("now", NOW), **kwargs)


def adult(account: str = "a-1", at: dt.datetime = T0 - dt.timedelta(days=1)) -> World:
    return World().profile(profile(account), at)


# --- the rule ----------------------------------------------------------------------

NOTIFIED = dt.datetime(2020, 1, 1, tzinfo=UTC)


def account(
    *,
    country: str | None = "GB",
    birth: dt.date | None = dt.date(1980, 5, 5),
    notified: dt.datetime | None = NOTIFIED,
    objected: bool = False,
) -> Account:
    return Account(profile=Profile(birth, country, notified), objected=objected)


CREATED = dt.datetime(2026, 1, 2, tzinfo=UTC)

RULE_CASES: list[tuple[str, dict[str, Any], Reason]] = [
    ("eligible", {}, Reason.ELIGIBLE),
    ("message_even_if_public", {"content_type": "message"}, Reason.PRIVATE_MESSAGE),
    ("message_before_not_public", {"content_type": "message", "visibility": "private"}, Reason.PRIVATE_MESSAGE),
    ("friends", {"visibility": "friends"}, Reason.NOT_PUBLIC),
    ("private", {"visibility": "private"}, Reason.NOT_PUBLIC),
    ("no_account", {"account": None}, Reason.ACCOUNT_UNKNOWN),
    ("account_without_profile", {"account": Account()}, Reason.ACCOUNT_UNKNOWN),
    ("objected", {"account": account(objected=True)}, Reason.OBJECTED),
    ("objected_before_country", {"account": account(objected=True, country=None)}, Reason.OBJECTED),
    ("country_unknown", {"account": account(country=None)}, Reason.COUNTRY_UNKNOWN),
    ("eu_on_hold", {"account": account(country="DE")}, Reason.JURISDICTION_NOT_ENABLED),
    ("us", {"account": account(country="US")}, Reason.JURISDICTION_NOT_ENABLED),
    ("not_notified", {"account": account(notified=None)}, Reason.NOT_NOTIFIED),
    (
        "br_notice_one_second_short",
        {"account": account(country="BR", notified=NOW - dt.timedelta(days=30) + dt.timedelta(seconds=1))},
        Reason.NOTICE_PERIOD_RUNNING,
    ),
    ("br_notice_just_ended", {"account": account(country="BR", notified=NOW - dt.timedelta(days=30))}, Reason.ELIGIBLE),
    ("gb_no_notice_period", {"account": account(notified=NOW)}, Reason.ELIGIBLE),
    (
        "gb_notice_in_the_future",
        {"account": account(notified=NOW + dt.timedelta(seconds=1))},
        Reason.NOTICE_PERIOD_RUNNING,
    ),
    ("notice_before_age", {"account": account(notified=NOW, country="BR", birth=None)}, Reason.NOTICE_PERIOD_RUNNING),
    ("age_unknown", {"account": account(birth=None)}, Reason.AGE_UNKNOWN),
    ("seventeen", {"account": account(birth=dt.date(2008, 11, 29))}, Reason.MINOR),
    ("eighteen_today", {"account": account(birth=dt.date(2008, 11, 28)), "created_at": NOW}, Reason.ELIGIBLE),
    (
        "eighteen_today_item_from_yesterday",
        {"account": account(birth=dt.date(2008, 11, 28)), "created_at": NOW - dt.timedelta(days=1)},
        Reason.CREATED_WHILE_MINOR,
    ),
    ("created_at_missing", {"created_at": None}, Reason.CREATED_WHILE_MINOR),
    # 29 February birthdays: 18 on 1 March in a common year, on 29 February in a leap year.
    (
        "feb29_on_feb28_common_year",
        {
            "account": account(birth=dt.date(2008, 2, 29)),
            "now": dt.datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC),
            "created_at": CREATED,
        },
        Reason.MINOR,
    ),
    (
        "feb29_on_mar1_common_year",
        {
            "account": account(birth=dt.date(2008, 2, 29)),
            "now": dt.datetime(2026, 3, 1, tzinfo=UTC),
            "created_at": dt.datetime(2026, 3, 1, tzinfo=UTC),
        },
        Reason.ELIGIBLE,
    ),
    (
        "feb29_item_created_feb28_common_year",
        {
            "account": account(birth=dt.date(2008, 2, 29)),
            "now": dt.datetime(2026, 3, 2, tzinfo=UTC),
            "created_at": dt.datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC),
        },
        Reason.CREATED_WHILE_MINOR,
    ),
    # (A 29 February birthday's 18th anniversary never falls in a leap year.)
    (
        "feb29_2012_on_feb28_2030",
        {
            "account": account(birth=dt.date(2012, 2, 29)),
            "now": dt.datetime(2030, 2, 28, tzinfo=UTC),
            "created_at": CREATED,
        },
        Reason.MINOR,
    ),
    (
        "created_while_minor",
        {
            "account": account(birth=dt.date(2000, 1, 1)),
            "created_at": dt.datetime(2017, 12, 31, 23, 59, 59, tzinfo=UTC),
        },
        Reason.CREATED_WHILE_MINOR,
    ),
    (
        "created_on_18th_birthday",
        {"account": account(birth=dt.date(2000, 1, 1)), "created_at": dt.datetime(2018, 1, 1, tzinfo=UTC)},
        Reason.ELIGIBLE,
    ),
]


@pytest.mark.parametrize(
    ("overrides", "expected"), [(o, e) for _, o, e in RULE_CASES], ids=[name for name, _, _ in RULE_CASES]
)
def test_judge_contract_rule_case_gives_reason(overrides: dict[str, Any], expected: Reason) -> None:
    args: dict[str, Any] = {
        "content_type": "post",
        "visibility": "public",
        "created_at": CREATED,
        "account": account(),
        "now": NOW,
        **overrides,
    }
    assert (
        judge(args["content_type"], args["visibility"], args["created_at"], args["account"], POLICY, args["now"])
        is expected
    )


def test_judge_policy_disables_type_refuses_content_type_not_enabled() -> None:
    policy = replace(POLICY, content_types=frozenset({"post"}))
    assert judge("photo", "public", CREATED, account(), policy, NOW) is Reason.CONTENT_TYPE_NOT_ENABLED
    assert judge("post", "public", CREATED, account(), policy, NOW) is Reason.ELIGIBLE


@pytest.mark.parametrize(
    ("birth", "attains"),
    [
        (dt.date(2008, 2, 29), dt.date(2026, 3, 1)),
        (dt.date(2012, 2, 29), dt.date(2030, 3, 1)),
        (dt.date(2010, 2, 28), dt.date(2028, 2, 28)),
        (dt.date(2006, 2, 28), dt.date(2024, 2, 28)),
        (dt.date(2006, 3, 1), dt.date(2024, 3, 1)),
    ],
    ids=["feb29_common", "feb29_common_2030", "feb28", "feb28_into_leap", "mar1"],
)
def test_adult_from_birth_date_gives_18th_birthday(birth: dt.date, attains: dt.date) -> None:
    assert adult_from(birth, 18) == attains


def test_adult_from_feb29_into_leap_year_is_feb29() -> None:
    assert adult_from(dt.date(2004, 2, 29), 20) == dt.date(2024, 2, 29)


def test_read_policy_packaged_has_contract_jurisdictions_and_notice_periods() -> None:
    assert POLICY.notice_periods == {"GB": dt.timedelta(0), "BR": dt.timedelta(days=30)}
    assert POLICY.minimum_age == 18 and POLICY.version
    assert "message" not in POLICY.content_types


def test_read_policy_broken_file_raises_verify_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('version = "x"\ncontent_types = ["post"]\nminimum_age = "18"\n')
    with pytest.raises(VerifyError, match="policy"):
        read_policy(path)
    with pytest.raises(VerifyError, match="policy"):
        read_policy(tmp_path / "missing.toml")


def test_read_policy_override_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'version = "v9"\ncontent_types = ["post"]\nminimum_age = 21\n[jurisdictions.FR]\nnotice_period_days = 7\n'
    )
    assert read_policy(path) == Policy("v9", frozenset({"post"}), 21, {"FR": dt.timedelta(days=7)})


# --- parsing: what the schemas reject is a dead letter and changes nothing --------------

_GOOD = orjson.loads(upsert("c-1", "a-1")[1])

INVALID_CONTENT: list[tuple[str, bytes | None, bytes | None]] = [
    ("not_json", b"a-1", b"\xff\xfe{"),
    ("array", b"a-1", b"[1]"),
    ("tombstone", b"a-1", None),
    ("no_key", None, upsert("c-1", "a-1")[1]),
    ("key_mismatch", b"someone-else", upsert("c-1", "a-1")[1]),
    ("missing_created_at", *upsert("c-1", "a-1", created_at=...)),
    ("unknown_visibility", *upsert("c-1", "a-1", visibility="everyone")),
    ("unknown_op", *upsert("c-1", "a-1", op="undelete")),
    ("unknown_platform", *upsert("c-1", "a-1", platform="myspace")),
    ("unknown_type", *upsert("c-1", "a-1", content_type="story")),
    ("text_not_string", *upsert("c-1", "a-1", text=42)),
    ("text_too_long", *upsert("c-1", "a-1", text="x" * 100_001)),
    ("media_uri_too_long", *upsert("c-1", "a-1", media_uri="m" * 2049)),
    ("language_bad", *upsert("c-1", "a-1", language="en_GB")),
    ("language_list", *upsert("c-1", "a-1", language=["en"])),
    ("empty_content_id", b"a-1", orjson.dumps({**_GOOD, "content_id": ""})),
    ("author_not_string", b"a-1", orjson.dumps({**_GOOD, "author_id": {"id": "a-1"}})),
    ("long_event_id", *upsert("c-1", "a-1", event_id="e" * 257)),
    ("timestamp_offset", *upsert("c-1", "a-1", event_time="2026-11-28T09:15:00+01:00")),
    ("timestamp_no_seconds", *upsert("c-1", "a-1", created_at="2026-11-28T09:15Z")),
    ("timestamp_feb30", *upsert("c-1", "a-1", created_at="2026-02-30T00:00:00Z")),
    ("timestamp_newline", *upsert("c-1", "a-1", created_at="2026-11-28T09:15:00Z\n")),
    ("timestamp_number", *upsert("c-1", "a-1", event_time=1764321300)),
    (
        "delete_without_event_time",
        b"a-1",
        orjson.dumps({"event_id": "d", "op": "delete", "content_id": "c-1", "author_id": "a-1"}),
    ),
]


@pytest.mark.parametrize(
    ("key", "value"), [(k, v) for _, k, v in INVALID_CONTENT], ids=[name for name, _, _ in INVALID_CONTENT]
)
def test_state_invalid_content_event_is_ignored(key: bytes | None, value: bytes | None) -> None:
    world = adult().content(upsert("c-1", "a-1", visibility="friends"))
    world.content((key, value))
    assert world.state.contents["c-1"].visibility == "friends"
    assert world.state.counts.content_invalid == 1


VALID_CONTENT: list[tuple[str, tuple[bytes, bytes]]] = [
    ("nine_fraction_digits", upsert("c-1", "a-1", created_at="2026-01-02T03:04:05.123456789Z")),
    ("plus_zero_offset", upsert("c-1", "a-1", event_time="2026-11-28T09:15:00+00:00")),
    ("optional_fields_absent", upsert("c-1", "a-1", text=..., media_uri=..., language=...)),
    ("unknown_extra_field", upsert("c-1", "a-1", mood="sunny")),
    ("language_subtags", upsert("c-1", "a-1", language="zh-Hant-TW")),
    ("delete_with_junk", (b"a-1", orjson.dumps({**orjson.loads(delete("c-1", "a-1")[1]), "visibility": 7}))),
]


@pytest.mark.parametrize("record", [r for _, r in VALID_CONTENT], ids=[name for name, _ in VALID_CONTENT])
def test_state_valid_content_event_is_applied(record: tuple[bytes, bytes]) -> None:
    world = World().content(record)
    assert "c-1" in world.state.contents and world.state.counts.content_invalid == 0


def test_state_fraction_beyond_microseconds_is_truncated() -> None:
    world = World().content(upsert("c-1", "a-1", created_at="2026-01-02T03:04:05.123456789Z"))
    assert world.state.contents["c-1"].created_at == dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_state_latest_event_per_content_id_wins_in_offset_order() -> None:
    world = adult().content(upsert("c-1", "a-1")).content(delete("c-1", "a-1"))
    assert world.state.contents["c-1"].op == "delete"
    world.content(upsert("c-1", "a-1", event_id="e-again"))
    assert world.state.contents["c-1"].event_id == "e-again"
    # Offset order within a partition, even when the producer's clock went backwards.
    world.content(upsert("c-1", "a-1", event_id="e-last"), at=T0 - dt.timedelta(hours=1))
    assert world.state.contents["c-1"].event_id == "e-last"


def test_state_same_content_id_in_two_partitions_later_stamp_wins() -> None:
    world = World().content(upsert("c-1", "a-1"), at=T0, partition=0)
    world.content(upsert("c-1", "a-2"), at=T0 - dt.timedelta(seconds=1), partition=1)
    assert world.state.contents["c-1"].author_id == "a-1"
    world.content(upsert("c-1", "a-2"), at=T0 + dt.timedelta(seconds=1), partition=1)
    assert world.state.contents["c-1"].author_id == "a-2"


STATE_CASES: list[tuple[str, list[tuple[str, tuple[bytes, bytes | None]]], Reason]] = [
    ("profile", [("p", profile("a-1"))], Reason.ELIGIBLE),
    ("profile_tombstone", [("p", profile("a-1")), ("p", (b"a-1", None))], Reason.ACCOUNT_UNKNOWN),
    ("profile_back_after_tombstone", [("p", (b"a-1", None)), ("p", profile("a-1"))], Reason.ELIGIBLE),
    ("unreadable_profile_fails_closed", [("p", profile("a-1")), ("p", (b"a-1", b"{not json"))], Reason.ACCOUNT_UNKNOWN),
    ("profile_bad_country", [("p", profile("a-1")), ("p", profile("a-1", country="gb"))], Reason.ACCOUNT_UNKNOWN),
    ("profile_bad_birth", [("p", profile("a-1")), ("p", profile("a-1", birth="2000-02-30"))], Reason.ACCOUNT_UNKNOWN),
    ("profile_for_other_account", [("p", profile("a-1")), ("p", (b"a-1", profile("a-2")[1]))], Reason.ACCOUNT_UNKNOWN),
    (
        "profile_missing_updated_at",
        [("p", profile("a-1")), ("p", (b"a-1", orjson.dumps({"account_id": "a-1", "country": "GB"})))],
        Reason.ACCOUNT_UNKNOWN,
    ),
    (
        "profile_optional_fields_absent",
        [("p", (b"a-1", orjson.dumps({"account_id": "a-1", "updated_at": "2026-01-01T00:00:00Z"})))],
        Reason.COUNTRY_UNKNOWN,
    ),
    ("objected", [("p", profile("a-1")), ("o", objection("a-1"))], Reason.OBJECTED),
    (
        "withdrawn",
        [("p", profile("a-1")), ("o", objection("a-1")), ("o", objection("a-1", "withdrawn"))],
        Reason.ELIGIBLE,
    ),
    ("objection_tombstone", [("p", profile("a-1")), ("o", objection("a-1")), ("o", (b"a-1", None))], Reason.ELIGIBLE),
    (
        "unreadable_objection_fails_closed",
        [("p", profile("a-1")), ("o", objection("a-1", request_id=...))],
        Reason.OBJECTED,
    ),
    ("objection_unknown_status", [("p", profile("a-1")), ("o", objection("a-1", "maybe"))], Reason.OBJECTED),
]


@pytest.mark.parametrize(
    ("records", "expected"), [(r, e) for _, r, e in STATE_CASES], ids=[name for name, _, _ in STATE_CASES]
)
def test_state_account_records_in_order_give_reason(
    records: list[tuple[str, tuple[bytes, bytes | None]]], expected: Reason
) -> None:
    world = World()
    for topic, record in records:
        (world.profile if topic == "p" else world.objection)(record)
    assert judge("post", "public", CREATED, world.state.accounts.get("a-1"), POLICY, NOW) is expected


# --- the diff ----------------------------------------------------------------------


def violations(report: Any) -> dict[str, list[str]]:
    return {r.value: t.examples for r, t in report.violations.items() if t.count}


def test_compare_eligible_item_on_feed_is_clean() -> None:
    report = adult().content(upsert("c-1", "a-1")).on_feed("c-1").compare()
    assert report.ok and report.exit_status == 0
    assert (report.feed_items, report.expected_eligible, report.violation_count, report.losses.count) == (1, 1, 0, 0)
    assert report.minimisation_count == 0 and report.stale.count == 0


VIOLATION_CASES: list[tuple[str, World, Reason]] = [
    ("objected", adult().objection(objection("a-1")).content(upsert("c-1", "a-1")), Reason.OBJECTED),
    ("account_deleted", adult().profile((b"a-1", None)).content(upsert("c-1", "a-1")), Reason.ACCOUNT_UNKNOWN),
    ("account_unknown", World().content(upsert("c-1", "a-1")), Reason.ACCOUNT_UNKNOWN),
    ("minor", World().profile(profile("a-1", birth="2010-01-01")).content(upsert("c-1", "a-1")), Reason.MINOR),
    (
        "created_while_minor",
        World().profile(profile("a-1", birth="2008-06-01")).content(upsert("c-1", "a-1")),
        Reason.CREATED_WHILE_MINOR,
    ),
    (
        "moved_to_eu",
        adult().profile(profile("a-1", country="FR")).content(upsert("c-1", "a-1")),
        Reason.JURISDICTION_NOT_ENABLED,
    ),
    (
        "country_unknown",
        World().profile(profile("a-1", country=None)).content(upsert("c-1", "a-1")),
        Reason.COUNTRY_UNKNOWN,
    ),
    ("not_notified", World().profile(profile("a-1", notified=None)).content(upsert("c-1", "a-1")), Reason.NOT_NOTIFIED),
    (
        "notice_period_running",
        World()
        .profile(profile("a-1", country="BR", notified=ts(NOW - dt.timedelta(days=2))))
        .content(upsert("c-1", "a-1")),
        Reason.NOTICE_PERIOD_RUNNING,
    ),
    ("age_unknown", World().profile(profile("a-1", birth=None)).content(upsert("c-1", "a-1")), Reason.AGE_UNKNOWN),
    ("private_message", adult().content(upsert("c-1", "a-1", content_type="message")), Reason.PRIVATE_MESSAGE),
    (
        "edited_to_friends",
        adult().content(upsert("c-1", "a-1")).content(upsert("c-1", "a-1", visibility="friends")),
        Reason.NOT_PUBLIC,
    ),
    ("content_deleted", adult().content(upsert("c-1", "a-1")).content(delete("c-1", "a-1")), Reason.CONTENT_DELETED),
    ("unknown_content", adult(), Reason.UNKNOWN_CONTENT),
    ("only_invalid_content", adult().content((b"a-1", b"{")), Reason.UNKNOWN_CONTENT),
]


@pytest.mark.parametrize(
    ("world", "reason"), [(w, r) for _, w, r in VIOLATION_CASES], ids=[name for name, _, _ in VIOLATION_CASES]
)
def test_compare_ineligible_item_on_feed_is_violation_with_reason(world: World, reason: Reason) -> None:
    report = world.on_feed("c-1").compare()
    assert violations(report) == {reason.value: ["c-1"]}
    assert not report.ok and report.exit_status == 1
    assert report.minimisation_count == 0


def test_compare_recent_cause_within_grace_is_pending_not_violation() -> None:
    world = adult().content(upsert("c-1", "a-1")).objection(objection("a-1"), at=NOW - dt.timedelta(seconds=5))
    world.on_feed("c-1")
    assert violations(world.compare(grace_seconds=0)) == {"objected": ["c-1"]}
    report = world.compare(grace_seconds=30)
    assert report.violation_count == 0 and report.pending.examples == ["c-1"] and report.ok


def test_compare_minor_with_old_records_is_violation_even_with_grace() -> None:
    world = World().profile(profile("a-1", birth="2010-01-01")).content(upsert("c-1", "a-1")).on_feed("c-1")
    assert violations(world.compare(grace_seconds=3600)) == {"minor": ["c-1"]}


LOSS_CASES: list[tuple[str, World, str]] = [
    ("nothing_changed_since", adult().content(upsert("c-1", "a-1")), "losses"),
    (
        "profile_changed_after_upsert",
        World()
        .profile(profile("a-1", notified=None), T0 - dt.timedelta(days=1))
        .content(upsert("c-1", "a-1"))
        .profile(profile("a-1"), T0 + dt.timedelta(minutes=1)),
        "excused",
    ),
    (
        "objection_withdrawn_after_upsert",
        adult()
        .objection(objection("a-1"), T0 - dt.timedelta(hours=1))
        .content(upsert("c-1", "a-1"))
        .objection(objection("a-1", "withdrawn"), T0 + dt.timedelta(minutes=1)),
        "excused",
    ),
    (
        "objection_tombstone_after_upsert",
        adult()
        .content(upsert("c-1", "a-1"))
        .objection(objection("a-1"), T0 + dt.timedelta(minutes=1))
        .objection((b"a-1", None), T0 + dt.timedelta(minutes=2)),
        "excused",
    ),
    ("same_broker_millisecond", adult(at=T0).content(upsert("c-1", "a-1"), at=T0), "excused"),
    ("state_within_clock_slack_before", adult(at=T0 - CLOCK_SLACK).content(upsert("c-1", "a-1"), at=T0), "excused"),
    (
        "state_just_beyond_clock_slack",
        adult(at=T0 - CLOCK_SLACK - dt.timedelta(milliseconds=1)).content(upsert("c-1", "a-1"), at=T0),
        "losses",
    ),
    (
        "objection_withdrawn_before_upsert",
        adult()
        .objection(objection("a-1"), T0 - dt.timedelta(hours=2))
        .objection(objection("a-1", "withdrawn"), T0 - dt.timedelta(hours=1))
        .content(upsert("c-1", "a-1")),
        "losses",
    ),
    ("upsert_after_delete", adult().content(delete("c-1", "a-1")).content(upsert("c-1", "a-1")), "losses"),
    # A deferred decision: refused while the notice ran, due when it ended.
    (
        "notice_ended_since_upsert",
        World()
        .profile(
            profile("a-1", country="BR", notified=ts(T0 - dt.timedelta(days=30) + dt.timedelta(minutes=10))),
            T0 - dt.timedelta(days=1),
        )
        .content(upsert("c-1", "a-1")),
        "losses",
    ),
]


@pytest.mark.parametrize(
    ("world", "outcome"), [(w, o) for _, w, o in LOSS_CASES], ids=[name for name, _, _ in LOSS_CASES]
)
def test_compare_eligible_item_missing_is_loss_or_excused(world: World, outcome: str) -> None:
    report = world.compare()
    assert report.expected_eligible == 1 and report.violation_count == 0
    assert {"losses": report.losses.examples, "excused": report.excused.examples} == {
        "losses": ["c-1"] if outcome == "losses" else [],
        "excused": ["c-1"] if outcome == "excused" else [],
    }
    assert report.ok is (outcome == "excused")


def test_compare_missing_item_younger_than_grace_is_pending() -> None:
    world = adult().content(upsert("c-1", "a-1"), at=NOW - dt.timedelta(seconds=10))
    assert world.compare().losses.count == 1
    report = world.compare(grace_seconds=60)
    assert report.losses.count == 0 and report.pending.examples == ["c-1"]


def test_compare_missing_item_whose_notice_just_ended_is_pending_within_grace() -> None:
    notified = NOW - dt.timedelta(days=30) - dt.timedelta(seconds=10)
    world = World().profile(profile("a-1", country="BR", notified=ts(notified)), T0 - dt.timedelta(days=1))
    world.content(upsert("c-1", "a-1"), at=T0)
    assert world.compare(grace_seconds=60).pending.examples == ["c-1"]
    assert world.compare(grace_seconds=5).losses.examples == ["c-1"]


def test_compare_missing_ineligible_items_are_not_losses() -> None:
    world = adult().objection(objection("a-1")).content(upsert("c-1", "a-1")).content(upsert("c-2", "a-2"))
    world.content(upsert("c-3", "a-1", visibility="private"))
    report = world.compare()
    assert report.ok and report.expected_eligible == 0


def test_compare_feed_from_older_upsert_is_stale_not_failing() -> None:
    world = adult().content(upsert("c-1", "a-1")).content(upsert("c-1", "a-1", event_id="e-edit"))
    report = world.on_feed("c-1").compare()
    assert report.stale.examples == ["c-1"] and report.ok


# Time retention removed the content events: the author's state, found by pseudonym, still decides.
def test_compare_truncated_content_judges_author_through_pseudonym() -> None:
    world = adult("a-ok").profile(profile("a-obj")).objection(objection("a-obj"))
    world.profile(profile("a-kid", birth="2010-01-01"))
    world.on_feed("c-ok", author="a-ok").on_feed("c-obj", author="a-obj").on_feed("c-kid", author="a-kid")
    world.on_feed("c-gone", author="a-deleted")
    world.on_feed("c-msg", feed_value("c-msg", "a-ok", content_type="message"))
    report = world.compare(content_truncated=True)
    assert violations(report) == {
        "objected": ["c-obj"],
        "minor": ["c-kid"],
        "account_unknown": ["c-gone"],
        "private_message": ["c-msg"],
    }
    assert report.unverifiable.examples == ["c-ok"]
    assert violations(world.compare(content_truncated=False)) == {
        "unknown_content": ["c-ok", "c-obj", "c-kid", "c-gone", "c-msg"]
    }


def test_compare_examples_are_capped_but_counts_are_not() -> None:
    world = adult().objection(objection("a-1"))
    for i in range(30):
        world.content(upsert(f"c-{i:02d}", "a-1")).on_feed(f"c-{i:02d}")
    report = world.compare(examples=3)
    assert report.violations[Reason.OBJECTED].count == 30
    assert report.violations[Reason.OBJECTED].examples == ["c-00", "c-01", "c-02"]


def test_compare_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        World().compare(now=dt.datetime(2026, 1, 1))


MINIMISATION_CASES: list[tuple[str, bytes, set[Problem]]] = [
    ("extra_birth_date", feed_value("c-1", "a-1", birth_date="1980-05-05"), {Problem.FIELDS}),
    ("extra_author_id", feed_value("c-1", "a-1", author_id="a-1"), {Problem.FIELDS, Problem.RAW_ACCOUNT_ID}),
    ("missing_field", feed_value("c-1", "a-1", language=...), {Problem.FIELDS}),
    (
        "pseudonym_upper_case",
        feed_value("c-1", "a-1", author_pseudonym=pseudo("a-1").upper()),
        {Problem.PSEUDONYM_FORMAT},
    ),
    ("pseudonym_short", feed_value("c-1", "a-1", author_pseudonym=pseudo("a-1")[:63]), {Problem.PSEUDONYM_FORMAT}),
    (
        "pseudonym_raw_id",
        feed_value("c-1", "a-1", author_pseudonym="a-1"),
        {Problem.PSEUDONYM_FORMAT, Problem.RAW_ACCOUNT_ID},
    ),
    (
        "pseudonym_other_key",
        feed_value("c-1", "a-1", author_pseudonym=hashlib.sha256(b"a-1").hexdigest()),
        {Problem.PSEUDONYM_MISMATCH},
    ),
    ("pseudonym_other_author", feed_value("c-1", "a-2"), {Problem.PSEUDONYM_MISMATCH}),
    ("raw_id_in_field", feed_value("c-1", "a-1", source_event_id="a-1"), {Problem.RAW_ACCOUNT_ID}),
    ("raw_id_nested", feed_value("c-1", "a-1", extra={"who": ["a-1"]}), {Problem.FIELDS, Problem.RAW_ACCOUNT_ID}),
    ("text_equal_to_id_is_the_authors_words", feed_value("c-1", "a-1", text="a-1"), set()),
    ("jurisdiction_not_enabled", feed_value("c-1", "a-1", jurisdiction="DE"), {Problem.JURISDICTION}),
    ("jurisdiction_country_list", feed_value("c-1", "a-1", jurisdiction=["GB"]), {Problem.JURISDICTION}),
    ("not_json", b"\xff{", {Problem.NOT_JSON}),
    ("json_array", b"[1, 2]", {Problem.NOT_JSON}),
]


@pytest.mark.parametrize(
    ("value", "problems"), [(v, p) for _, v, p in MINIMISATION_CASES], ids=[name for name, _, _ in MINIMISATION_CASES]
)
def test_compare_feed_value_minimisation_problems(value: bytes, problems: set[Problem]) -> None:
    world = adult().profile(profile("a-2")).content(upsert("c-1", "a-1")).on_feed("c-1", value)
    report = world.compare()
    assert {p for p, t in report.minimisation.items() if t.count} == problems
    assert all(t.examples == ["c-1"] for t in report.minimisation.values() if t.count)
    assert report.violation_count == 0
    assert report.ok is (not problems)


def test_feed_fields_are_the_contracts_minimised_set() -> None:
    assert orjson.loads(feed_value("c-1", "a-1")).keys() == FEED_FIELDS


# --- output ------------------------------------------------------------------------


def _dirty_report() -> Any:
    world = adult().profile(profile("a-kid", birth="2010-01-01")).objection(objection("a-1"))
    world.content(upsert("c-obj", "a-1")).on_feed("c-obj")
    world.content(upsert("c-kid", "a-kid")).on_feed("c-kid", author="a-kid")
    world.content(upsert("c-lost", "a-2")).profile(profile("a-2"), T0 - dt.timedelta(days=1))
    world.content(upsert("c-min", "a-2")).on_feed("c-min", feed_value("c-min", "a-2", birth_date="2010-01-01"))
    return world.compare()


def test_render_counts_and_ids_without_text_birth_dates_or_account_ids() -> None:
    text = render(_dirty_report())
    assert "FAILED" in text
    assert "objected: 1  [c-obj]" in text and "minor: 1  [c-kid]" in text
    assert "losses: 1  [c-lost]" in text and "fields: 1  [c-min]" in text
    for secret in ("secret words", "2010-01-01", "1980-05-05", "a-1", "a-kid", "a-2"):
        assert secret not in text


def test_render_clean_report_says_ok() -> None:
    assert "OK" in render(adult().content(upsert("c-1", "a-1")).on_feed("c-1").compare()).splitlines()[0]


def test_render_unprintable_content_id_is_escaped() -> None:
    report = adult().content(upsert("c-\x1b[2J", "a-1")).compare()
    assert "\x1b" not in render(report) and "\\x1b" in render(report)


def test_to_json_has_every_reason_and_kind_and_no_personal_data() -> None:
    raw = to_json(_dirty_report())
    data = orjson.loads(raw)
    assert data["ok"] is False and data["exit_status"] == 1
    assert set(data["violations"]["by_reason"]) == {r.value for r in Reason} - {"eligible"}
    assert data["violations"]["count"] == 2
    assert data["violations"]["by_reason"]["objected"] == {"count": 1, "examples": ["c-obj"]}
    assert data["losses"] == {"count": 1, "examples": ["c-lost"]}
    assert set(data["minimisation_problems"]["by_kind"]) == {p.value for p in Problem}
    assert data["minimisation_problems"]["by_kind"]["fields"]["examples"] == ["c-min"]
    assert data["checked_at"] == "2026-11-28T09:15:00Z" and data["policy_version"] == POLICY.version
    for secret in (b"secret words", b"2010-01-01", b'"a-1"', b"a-kid", b'"a-2"'):
        assert secret not in raw


def test_metrics_update_sets_gauges_in_own_registry() -> None:
    registry = CollectorRegistry()
    metrics = VerifierMetrics.create(registry)
    # Every label value exists before the first run, so no panel starts empty.
    assert registry.get_sample_value("eligibility_verifier_violations", {"reason": "objected"}) == 0
    assert registry.get_sample_value("eligibility_verifier_minimisation_problems", {"kind": "fields"}) == 0
    metrics.update(_dirty_report())
    assert registry.get_sample_value("eligibility_verifier_violations", {"reason": "objected"}) == 1
    assert registry.get_sample_value("eligibility_verifier_violations", {"reason": "minor"}) == 1
    assert registry.get_sample_value("eligibility_verifier_violations", {"reason": "not_public"}) == 0
    assert registry.get_sample_value("eligibility_verifier_losses") == 1
    assert registry.get_sample_value("eligibility_verifier_minimisation_problems", {"kind": "fields"}) == 1
    assert registry.get_sample_value("eligibility_verifier_last_run_timestamp_seconds") == NOW.timestamp()


def test_verify_module_imports_nothing_of_the_filter_it_checks() -> None:
    import ast

    import stream.verify

    tree = ast.parse(Path(stream.verify.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    forbidden = {"stream.policy", "stream.engine", "stream.codec", "stream.records", "stream.models"}
    assert not imported & forbidden
    assert {m for m in imported if m.startswith("stream")} <= {"stream.config", "stream.errors"}
