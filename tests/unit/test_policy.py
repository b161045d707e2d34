"""Unit tests of the rule (`stream.core.policy.decide`) and of the policy file (`load_policy`).

Table-driven: each case's id is the `Reason` it expects or names the boundary it
probes. No clock, no I/O beyond `tmp_path` policy files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from stream.core.models import (
    ContentEvent,
    ContentType,
    Objection,
    ObjectionStatus,
    Op,
    Platform,
    Profile,
    Reason,
    Visibility,
)
from stream.core.policy import Decision, Jurisdiction, Policy, attains_age_on, decide, load_policy
from stream.errors import ConfigError

UTC = dt.UTC
POLICY = load_policy()

NOW = dt.datetime(2026, 11, 28, 9, 15, tzinfo=UTC)
ADULT_BIRTH = dt.date(1990, 5, 17)
# Long before every decision instant below, so no notice period is still running.
NOTIFIED_LONG_AGO = dt.datetime(2020, 1, 1, tzinfo=UTC)
# 18 on NOW, minus one day: still a minor when NOW is decided.
MINOR_BIRTH = dt.date(2008, 11, 29)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def make_event(**overrides: object) -> ContentEvent:
    base = ContentEvent(
        event_id="ev-1",
        op=Op.UPSERT,
        content_id="c-1",
        author_id="a-1",
        event_time=NOW,
        content_type=ContentType.POST,
        platform=Platform.FACEBOOK,
        visibility=Visibility.PUBLIC,
        created_at=utc(2026, 11, 1),
        text="hello",
        media_uri=None,
        language="en",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]  # test overrides are loosely typed


def make_profile(**overrides: object) -> Profile:
    base = Profile(
        account_id="a-1",
        birth_date=ADULT_BIRTH,
        country="GB",
        notified_at=NOTIFIED_LONG_AGO,
        updated_at=NOTIFIED_LONG_AGO,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]  # test overrides are loosely typed


def make_objection(status: ObjectionStatus) -> Objection:
    return Objection(account_id="a-1", status=status, at=NOTIFIED_LONG_AGO, source="form", request_id="req-1")


OBJECTED = make_objection(ObjectionStatus.OBJECTED)
WITHDRAWN = make_objection(ObjectionStatus.WITHDRAWN)
NO_ACCOUNT = None  # a missing profile: unknown or deleted account


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the rule, in contract order -------------------------------------------------------

# (event, profile, objection, expected reason). Cases after the first of each reason
# pin the ORDER: several rules apply and the earliest must win.
RULE_CASES = [
    pytest.param(
        make_event(content_type=ContentType.MESSAGE), make_profile(), None, Reason.PRIVATE_MESSAGE, id="private_message"
    ),
    pytest.param(
        make_event(content_type=ContentType.MESSAGE, visibility=Visibility.PRIVATE),
        NO_ACCOUNT,
        OBJECTED,
        Reason.PRIVATE_MESSAGE,
        id="private_message-also-not_public-no-account-objected",
    ),
    pytest.param(
        make_event(content_type=ContentType.MESSAGE, visibility=Visibility.PUBLIC),
        make_profile(birth_date=MINOR_BIRTH),
        None,
        Reason.PRIVATE_MESSAGE,
        id="private_message-even-if-public",
    ),
    pytest.param(make_event(visibility=Visibility.FRIENDS), make_profile(), None, Reason.NOT_PUBLIC, id="not_public"),
    pytest.param(
        make_event(visibility=Visibility.PRIVATE), make_profile(), None, Reason.NOT_PUBLIC, id="not_public-private"
    ),
    pytest.param(
        make_event(visibility=Visibility.FRIENDS),
        NO_ACCOUNT,
        OBJECTED,
        Reason.NOT_PUBLIC,
        id="not_public-also-no-account-objected",
    ),
    pytest.param(make_event(), NO_ACCOUNT, None, Reason.ACCOUNT_UNKNOWN, id="account_unknown"),
    pytest.param(make_event(), NO_ACCOUNT, OBJECTED, Reason.ACCOUNT_UNKNOWN, id="account_unknown-also-objected"),
    pytest.param(make_event(), make_profile(), OBJECTED, Reason.OBJECTED, id="objected"),
    pytest.param(
        make_event(), make_profile(country=None), OBJECTED, Reason.OBJECTED, id="objected-also-country_unknown"
    ),
    pytest.param(
        make_event(), make_profile(country="DE"), OBJECTED, Reason.OBJECTED, id="objected-also-jurisdiction_not_enabled"
    ),
    pytest.param(
        make_event(), make_profile(birth_date=MINOR_BIRTH), OBJECTED, Reason.OBJECTED, id="objected-also-minor"
    ),
    pytest.param(make_event(), make_profile(country=None), None, Reason.COUNTRY_UNKNOWN, id="country_unknown"),
    pytest.param(
        make_event(),
        make_profile(country=None, notified_at=None, birth_date=None),
        WITHDRAWN,
        Reason.COUNTRY_UNKNOWN,
        id="country_unknown-also-not_notified-age_unknown",
    ),
    pytest.param(
        make_event(),
        make_profile(country="DE"),
        None,
        Reason.JURISDICTION_NOT_ENABLED,
        id="jurisdiction_not_enabled-DE",
    ),
    pytest.param(
        make_event(),
        make_profile(country="FR"),
        None,
        Reason.JURISDICTION_NOT_ENABLED,
        id="jurisdiction_not_enabled-FR",
    ),
    pytest.param(
        make_event(),
        make_profile(country="IE"),
        None,
        Reason.JURISDICTION_NOT_ENABLED,
        id="jurisdiction_not_enabled-IE",
    ),
    pytest.param(
        make_event(),
        make_profile(country="US"),
        None,
        Reason.JURISDICTION_NOT_ENABLED,
        id="jurisdiction_not_enabled-US",
    ),
    pytest.param(
        make_event(),
        make_profile(country="gb"),
        None,
        Reason.JURISDICTION_NOT_ENABLED,
        id="jurisdiction_not_enabled-lowercase-code",
    ),
    pytest.param(
        make_event(),
        make_profile(country="DE", notified_at=None, birth_date=MINOR_BIRTH),
        None,
        Reason.JURISDICTION_NOT_ENABLED,
        id="jurisdiction_not_enabled-also-not_notified-minor",
    ),
    pytest.param(make_event(), make_profile(notified_at=None), None, Reason.NOT_NOTIFIED, id="not_notified"),
    pytest.param(
        make_event(),
        make_profile(country="BR", notified_at=None, birth_date=None),
        None,
        Reason.NOT_NOTIFIED,
        id="not_notified-also-age_unknown",
    ),
    pytest.param(
        make_event(),
        make_profile(country="BR", notified_at=NOW - dt.timedelta(days=1)),
        None,
        Reason.NOTICE_PERIOD_RUNNING,
        id="notice_period_running",
    ),
    pytest.param(
        make_event(),
        make_profile(country="BR", notified_at=NOW - dt.timedelta(days=1), birth_date=None),
        None,
        Reason.NOTICE_PERIOD_RUNNING,
        id="notice_period_running-also-age_unknown",
    ),
    pytest.param(
        make_event(),
        make_profile(country="BR", notified_at=NOW - dt.timedelta(days=1), birth_date=MINOR_BIRTH),
        None,
        Reason.NOTICE_PERIOD_RUNNING,
        id="notice_period_running-also-minor",
    ),
    pytest.param(make_event(), make_profile(birth_date=None), None, Reason.AGE_UNKNOWN, id="age_unknown"),
    pytest.param(
        make_event(created_at=None),
        make_profile(birth_date=None),
        None,
        Reason.AGE_UNKNOWN,
        id="age_unknown-also-no-created_at",
    ),
    pytest.param(make_event(), make_profile(birth_date=MINOR_BIRTH), None, Reason.MINOR, id="minor"),
    pytest.param(
        make_event(created_at=utc(2020, 1, 1)),
        make_profile(birth_date=MINOR_BIRTH),
        None,
        Reason.MINOR,
        id="minor-also-created_while_minor",
    ),
    pytest.param(
        make_event(created_at=utc(2020, 1, 1)),
        make_profile(birth_date=dt.date(2005, 6, 1)),
        None,
        Reason.CREATED_WHILE_MINOR,
        id="created_while_minor",
    ),
    pytest.param(
        make_event(created_at=None),
        make_profile(),
        None,
        Reason.CREATED_WHILE_MINOR,
        id="created_while_minor-missing-created_at-fails-closed",
    ),
    pytest.param(make_event(), make_profile(), None, Reason.ELIGIBLE, id="eligible"),
    pytest.param(make_event(), make_profile(), WITHDRAWN, Reason.ELIGIBLE, id="eligible-withdrawn-objection"),
    pytest.param(make_event(), make_profile(country="BR"), None, Reason.ELIGIBLE, id="eligible-BR"),
    *[
        pytest.param(make_event(content_type=ct), make_profile(), None, Reason.ELIGIBLE, id=f"eligible-{ct}")
        for ct in (ContentType.COMMENT, ContentType.PHOTO, ContentType.CAPTION)
    ],
    pytest.param(
        make_event(platform=Platform.INSTAGRAM), make_profile(), None, Reason.ELIGIBLE, id="eligible-instagram"
    ),
]


@pytest.mark.parametrize(("event", "profile", "objection", "expected"), RULE_CASES)
def test_decide_rule_case_first_applicable_reason(
    event: ContentEvent, profile: Profile | None, objection: Objection | None, expected: Reason
) -> None:
    decision = decide(event, profile, objection, POLICY, NOW)

    assert decision.reason is expected
    assert decision.eligible is (expected is Reason.ELIGIBLE)
    assert decision.policy_version == POLICY.version
    if expected is Reason.ELIGIBLE:
        assert profile is not None
        assert decision.jurisdiction == profile.country
    else:
        assert decision.jurisdiction is None
    if expected is not Reason.NOTICE_PERIOD_RUNNING:
        assert decision.retry_at is None


def test_rule_cases_cover_every_reason() -> None:
    # content_type_not_enabled needs a non-packaged policy: see its own test below.
    covered = {case.values[3] for case in RULE_CASES} | {Reason.CONTENT_TYPE_NOT_ENABLED}
    assert covered == set(Reason)


@pytest.mark.parametrize("objection", [None, WITHDRAWN], ids=["no-objection", "withdrawn"])
def test_decide_objection_absent_or_withdrawn_allows(objection: Objection | None) -> None:
    decision = decide(make_event(), make_profile(), objection, POLICY, NOW)

    assert decision == Decision(True, Reason.ELIGIBLE, POLICY.version, "GB", None)


# --- age boundaries ----------------------------------------------------------------------

# (birth date, decision instant, expected). A person attains an age at the UTC start of
# the anniversary; 29 February birthdays move to 1 March in common years.
AGE_CASES = [
    pytest.param(dt.date(2008, 11, 28), utc(2026, 11, 27, 0, 0, 0), Reason.MINOR, id="day-before-18th-000000"),
    pytest.param(dt.date(2008, 11, 28), utc(2026, 11, 27, 23, 59, 59), Reason.MINOR, id="day-before-18th-235959"),
    pytest.param(
        dt.date(2008, 11, 28),
        dt.datetime(2026, 11, 27, 23, 59, 59, 999999, tzinfo=UTC),
        Reason.MINOR,
        id="last-microsecond-before-18th",
    ),
    pytest.param(dt.date(2008, 11, 28), utc(2026, 11, 28, 0, 0, 0), Reason.ELIGIBLE, id="18th-birthday-000000"),
    pytest.param(dt.date(2008, 11, 28), utc(2026, 11, 28, 23, 59, 59), Reason.ELIGIBLE, id="18th-birthday-235959"),
    # The day is the UTC day, whatever offset the instant is written in.
    pytest.param(
        dt.date(2008, 11, 28),
        dt.datetime(2026, 11, 28, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        Reason.MINOR,
        id="18th-birthday-local-but-still-day-before-in-utc",
    ),
    pytest.param(
        dt.date(2008, 11, 28),
        dt.datetime(2026, 11, 27, 20, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        Reason.ELIGIBLE,
        id="day-before-local-but-18th-birthday-in-utc",
    ),
    pytest.param(
        dt.date(2008, 2, 29), utc(2026, 2, 28, 23, 59, 59), Reason.MINOR, id="feb29-birthday-common-year-28feb-minor"
    ),
    pytest.param(
        dt.date(2008, 2, 29), utc(2026, 3, 1, 0, 0, 0), Reason.ELIGIBLE, id="feb29-birthday-common-year-1mar-adult"
    ),
    pytest.param(dt.date(2008, 2, 28), utc(2026, 2, 28, 0, 0, 0), Reason.ELIGIBLE, id="feb28-birthday-unaffected"),
    pytest.param(dt.date(2008, 3, 1), utc(2026, 2, 28, 23, 59, 59), Reason.MINOR, id="mar1-birthday-unaffected"),
]


@pytest.mark.parametrize(("birth_date", "now", "expected"), AGE_CASES)
def test_decide_age_boundary_minor_until_utc_start_of_18th_birthday(
    birth_date: dt.date, now: dt.datetime, expected: Reason
) -> None:
    # created_at = now: the content is as old as the decision, so only `minor` can refuse it.
    decision = decide(make_event(created_at=now), make_profile(birth_date=birth_date), None, POLICY, now)

    assert decision.reason is expected


@pytest.mark.parametrize(
    ("birth_date", "age", "expected"),
    [
        pytest.param(dt.date(2008, 11, 28), 18, dt.date(2026, 11, 28), id="ordinary"),
        pytest.param(dt.date(2008, 2, 29), 18, dt.date(2026, 3, 1), id="feb29-common-year-1mar"),
        pytest.param(dt.date(2004, 2, 29), 20, dt.date(2024, 2, 29), id="feb29-leap-year-29feb"),
        pytest.param(dt.date(1896, 2, 29), 4, dt.date(1900, 3, 1), id="feb29-century-common-year-1mar"),
        pytest.param(dt.date(1996, 2, 29), 4, dt.date(2000, 2, 29), id="feb29-400-year-leap-29feb"),
        pytest.param(dt.date(2008, 2, 28), 18, dt.date(2026, 2, 28), id="feb28"),
        pytest.param(dt.date(2008, 3, 1), 18, dt.date(2026, 3, 1), id="mar1"),
    ],
)
def test_attains_age_on_anniversary_returns_day(birth_date: dt.date, age: int, expected: dt.date) -> None:
    assert attains_age_on(birth_date, age) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(utc(2024, 2, 28, 23, 59, 59), Reason.MINOR, id="leap-year-28feb-minor"),
        pytest.param(utc(2024, 2, 29, 0, 0, 0), Reason.ELIGIBLE, id="leap-year-29feb-adult"),
    ],
)
def test_decide_feb29_birthday_leap_year_adult_on_29feb(now: dt.datetime, expected: Reason) -> None:
    # With a minimum age of 18 a 29 February birthday never falls in a leap year
    # (18 is not a multiple of 4), so the leap-year branch needs a minimum age of 20.
    policy = dataclasses.replace(POLICY, minimum_age=20)

    decision = decide(make_event(created_at=now), make_profile(birth_date=dt.date(2004, 2, 29)), None, policy, now)

    assert decision.reason is expected


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        pytest.param(utc(2026, 11, 27, 0, 0, 0), Reason.CREATED_WHILE_MINOR, id="created-day-before-18th-000000"),
        pytest.param(utc(2026, 11, 27, 23, 59, 59), Reason.CREATED_WHILE_MINOR, id="created-day-before-18th-235959"),
        pytest.param(
            dt.datetime(2026, 11, 28, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            Reason.CREATED_WHILE_MINOR,
            id="created-18th-birthday-local-but-day-before-in-utc",
        ),
        pytest.param(utc(2026, 11, 28, 0, 0, 0), Reason.ELIGIBLE, id="created-on-18th-birthday-000000"),
        pytest.param(utc(2026, 11, 28, 23, 59, 59), Reason.ELIGIBLE, id="created-on-18th-birthday-235959"),
    ],
)
def test_decide_created_at_boundary_created_while_minor_until_18th_birthday(
    created_at: dt.datetime, expected: Reason
) -> None:
    now = utc(2027, 1, 1)

    decision = decide(
        make_event(created_at=created_at), make_profile(birth_date=dt.date(2008, 11, 28)), None, POLICY, now
    )

    assert decision.reason is expected


# --- notice periods ------------------------------------------------------------------

BR_NOTIFIED = utc(2026, 10, 1, 12, 0, 0)
BR_NOTICE_ENDS = BR_NOTIFIED + dt.timedelta(days=30)


def test_decide_br_one_second_before_notice_end_notice_period_running_with_retry_at() -> None:
    now = BR_NOTICE_ENDS - dt.timedelta(seconds=1)

    decision = decide(make_event(), make_profile(country="BR", notified_at=BR_NOTIFIED), None, POLICY, now)

    assert decision == Decision(False, Reason.NOTICE_PERIOD_RUNNING, POLICY.version, None, BR_NOTICE_ENDS)
    assert decision.retry_at == utc(2026, 10, 31, 12, 0, 0)


@pytest.mark.parametrize(
    "now",
    [BR_NOTICE_ENDS, BR_NOTICE_ENDS + dt.timedelta(seconds=1), BR_NOTICE_ENDS + dt.timedelta(days=365)],
    ids=["exactly-at-end", "one-second-after", "a-year-after"],
)
def test_decide_br_notice_period_over_eligible(now: dt.datetime) -> None:
    decision = decide(make_event(), make_profile(country="BR", notified_at=BR_NOTIFIED), None, POLICY, now)

    assert decision == Decision(True, Reason.ELIGIBLE, POLICY.version, "BR", None)


def test_decide_br_retry_at_deciding_again_then_eligible() -> None:
    profile = make_profile(country="BR", notified_at=BR_NOTIFIED)
    deferred = decide(make_event(), profile, None, POLICY, BR_NOTIFIED)

    assert deferred.retry_at is not None
    assert decide(make_event(), profile, None, POLICY, deferred.retry_at).eligible


def test_decide_gb_zero_notice_period_eligible_immediately() -> None:
    notified = utc(2026, 11, 28, 9, 15, 0)

    decision = decide(make_event(), make_profile(country="GB", notified_at=notified), None, POLICY, notified)

    assert decision == Decision(True, Reason.ELIGIBLE, POLICY.version, "GB", None)


def test_decide_notice_period_compares_instants_not_wall_clocks() -> None:
    # notified_at written in UTC-3 (Brazil); the period ends 30 days later as an instant.
    notified = dt.datetime(2026, 10, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    profile = make_profile(country="BR", notified_at=notified)

    before = decide(make_event(), profile, None, POLICY, utc(2026, 10, 31, 11, 59, 59))
    at_end = decide(make_event(), profile, None, POLICY, utc(2026, 10, 31, 12, 0, 0))

    assert before.reason is Reason.NOTICE_PERIOD_RUNNING
    assert at_end.reason is Reason.ELIGIBLE


# --- policy files ----------------------------------------------------------------------

VALID_POLICY = """\
version = "test-1"
content_types = ["post", "comment", "photo", "caption"]
minimum_age = 18

[jurisdictions.GB]
notice_period_days = 0
"""


def test_load_policy_packaged_matches_contract_defaults() -> None:
    policy = load_policy()

    assert policy.version
    assert policy.content_types == {ContentType.POST, ContentType.COMMENT, ContentType.PHOTO, ContentType.CAPTION}
    assert policy.minimum_age == 18
    assert policy.jurisdictions == {
        "GB": Jurisdiction("GB", dt.timedelta(days=0)),
        "BR": Jurisdiction("BR", dt.timedelta(days=30)),
    }


def test_load_policy_override_path_used(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        """\
version = "override-7"
content_types = ["post"]
minimum_age = 21

[jurisdictions.FR]
notice_period_days = 7
""",
    )

    policy = load_policy(path)

    assert policy == Policy(
        "override-7", frozenset({ContentType.POST}), 21, {"FR": Jurisdiction("FR", dt.timedelta(days=7))}
    )
    decision = decide(make_event(), make_profile(country="FR"), None, policy, NOW)
    assert decision == Decision(True, Reason.ELIGIBLE, "override-7", "FR", None)
    assert decide(make_event(), make_profile(country="GB"), None, policy, NOW).reason is Reason.JURISDICTION_NOT_ENABLED


INVALID_POLICIES = [
    pytest.param(VALID_POLICY.replace('version = "test-1"\n', ""), "version", id="missing-version"),
    pytest.param(VALID_POLICY.replace('"test-1"', '""'), "version", id="empty-version"),
    pytest.param(VALID_POLICY.replace('"test-1"', "1"), "version", id="version-not-a-string"),
    pytest.param(VALID_POLICY.replace('"caption"]', '"caption", "message"]'), "message", id="message-in-content_types"),
    pytest.param(VALID_POLICY.replace('"caption"]', '"video"]'), "video", id="unknown-content-type"),
    pytest.param(
        VALID_POLICY.replace('content_types = ["post", "comment", "photo", "caption"]\n', ""),
        "content_types",
        id="missing-content_types",
    ),
    pytest.param(VALID_POLICY.replace("minimum_age = 18", "minimum_age = 17"), "minimum_age", id="minimum_age-17"),
    pytest.param(VALID_POLICY.replace("minimum_age = 18\n", ""), "minimum_age", id="missing-minimum_age"),
    pytest.param(
        VALID_POLICY.replace("minimum_age = 18", "minimum_age = 18.5"), "minimum_age", id="minimum_age-not-an-integer"
    ),
    pytest.param(VALID_POLICY.replace("jurisdictions.GB", "jurisdictions.gb"), "gb", id="jurisdiction-lowercase"),
    pytest.param(VALID_POLICY.replace("jurisdictions.GB", "jurisdictions.GBR"), "GBR", id="jurisdiction-alpha-3"),
    pytest.param(VALID_POLICY.replace("jurisdictions.GB", "jurisdictions.G1"), "G1", id="jurisdiction-digit"),
    pytest.param(
        VALID_POLICY.replace("notice_period_days = 0", "notice_period_days = -1"),
        "0 to 3650",
        id="negative-notice-days",
    ),
    pytest.param(VALID_POLICY.replace("notice_period_days = 0\n", ""), "notice_period_days", id="missing-notice-days"),
    pytest.param(
        VALID_POLICY.replace("notice_period_days = 0", "notice_period_days = 29.5"),
        "notice_period_days",
        id="fractional-notice-days",
    ),
    pytest.param(
        VALID_POLICY.replace("notice_period_days = 0", "notice_period_days = true"),
        "notice_period_days",
        id="boolean-notice-days",
    ),
    pytest.param(
        VALID_POLICY.replace("[jurisdictions.GB]\nnotice_period_days = 0\n", "jurisdictions = 3\n"),
        "jurisdictions",
        id="jurisdictions-not-a-table",
    ),
    pytest.param('version = "test-1"\ncontent_types = [\n', "cannot read policy", id="bad-toml"),
    # Bounds that keep the rule's date arithmetic inside Python's years (issue #16: overflow).
    pytest.param(
        VALID_POLICY.replace("notice_period_days = 0", "notice_period_days = 3651"), "0 to 3650", id="huge-notice-days"
    ),
    pytest.param(
        VALID_POLICY.replace("notice_period_days = 0", "notice_period_days = 99999999999"),
        "0 to 3650",
        id="overflowing-notice-days",
    ),
    pytest.param(VALID_POLICY.replace("minimum_age = 18", "minimum_age = 151"), "18 to 150", id="huge-minimum-age"),
    pytest.param(
        VALID_POLICY.replace("minimum_age = 18", "minimum_age = 9999999"), "18 to 150", id="overflowing-minimum-age"
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID_POLICIES)
def test_load_policy_invalid_file_raises_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = write_policy(tmp_path, text)

    with pytest.raises(ConfigError, match=message) as info:
        load_policy(path)

    # The operator must learn which file is wrong.
    assert str(path) in str(info.value)


def test_load_policy_missing_file_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match="cannot read policy") as info:
        load_policy(path)

    assert str(path) in str(info.value)


def test_load_policy_packaged_unreadable_names_packaged_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A package directory without policy.toml stands in for a broken installation.
    monkeypatch.setattr("stream.core.policy.resources.files", lambda package: tmp_path)

    with pytest.raises(ConfigError, match=re.escape("cannot read policy packaged policy.toml")):
        load_policy()


def test_load_policy_directory_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy(tmp_path)


def test_load_policy_not_utf8_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b'version = "\xff"\n')

    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy(path)


def test_decide_policy_omits_content_type_content_type_not_enabled(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, VALID_POLICY.replace(', "caption"]', "]")))
    caption = make_event(content_type=ContentType.CAPTION)

    assert decide(caption, make_profile(), None, policy, NOW) == Decision(
        False, Reason.CONTENT_TYPE_NOT_ENABLED, "test-1", None, None
    )
    assert decide(make_event(), make_profile(), None, policy, NOW).reason is Reason.ELIGIBLE
    # Ordering: after not_public, before account_unknown.
    assert (
        decide(dataclasses.replace(caption, visibility=Visibility.FRIENDS), NO_ACCOUNT, None, policy, NOW).reason
        is Reason.NOT_PUBLIC
    )
    assert decide(caption, NO_ACCOUNT, OBJECTED, policy, NOW).reason is Reason.CONTENT_TYPE_NOT_ENABLED


# --- property: minor iff under 18 by an independent reference ------------------------


def reference_is_under_18(birth: dt.date, on: dt.date) -> bool:
    """Age by (month, day) comparison: deliberately NOT `attains_age_on`.

    Comparing (month, day) tuples handles 29 February by itself: in a common year
    (2, 28) < (2, 29) (not yet) and (3, 1) > (2, 29) (attained on 1 March); in a leap
    year (2, 29) == (2, 29) (attained that day).
    """
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return age < 18


OFFSETS = st.sampled_from([dt.timedelta(hours=h) for h in (-12, -5, -3, 0, 1, 2, 9, 14)])
BIRTHS = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 12, 31))


@st.composite
def birth_and_decision(draw: st.DrawFn) -> tuple[dt.date, dt.datetime]:
    birth = draw(BIRTHS)
    if draw(st.booleans()):
        # Anywhere within +-40 years of the birth date.
        day = birth + dt.timedelta(days=draw(st.integers(min_value=-365 * 40, max_value=365 * 40)))
    else:
        # Within a few days of the 18th birthday, where the rule can go wrong. Built from
        # day-of-month arithmetic so 29 February lands on 28/29 Feb or 1 March naturally.
        day = dt.date(birth.year + 18, birth.month, 1) + dt.timedelta(
            days=birth.day - 1 + draw(st.integers(min_value=-3, max_value=3))
        )
    seconds = draw(st.integers(min_value=0, max_value=86_399))
    instant_utc = dt.datetime.combine(day, dt.time(), tzinfo=UTC) + dt.timedelta(seconds=seconds)
    return birth, instant_utc.astimezone(dt.timezone(draw(OFFSETS)))


@given(birth_and_decision())
@example((dt.date(2008, 2, 29), utc(2026, 2, 28, 23, 59, 59)))
@example((dt.date(2008, 2, 29), utc(2026, 3, 1)))
@example((dt.date(2008, 11, 28), utc(2026, 11, 27, 23, 59, 59)))
@example((dt.date(2008, 11, 28), utc(2026, 11, 28)))
def test_decide_any_birth_and_decision_date_minor_iff_under_18(case: tuple[dt.date, dt.datetime]) -> None:
    birth, now = case
    # Notified long before, content created at the decision instant: nothing but age can refuse.
    profile = make_profile(birth_date=birth, notified_at=now - dt.timedelta(days=1))
    event = make_event(created_at=now)

    decision = decide(event, profile, None, POLICY, now)

    expected_minor = reference_is_under_18(birth, now.astimezone(UTC).date())
    assert (decision.reason is Reason.MINOR) is expected_minor
    assert decision.reason is (Reason.MINOR if expected_minor else Reason.ELIGIBLE)
