"""The verifier's own reading of the contract's rule: the policy file, the reasons, `judge`, the pseudonym.

Written apart from the filter's `stream.core.policy` on purpose: a bug there must
not be repeated here. Pure: no clock (`now` is an argument), no I/O but reading
the policy file.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Final

from stream.verifier.errors import VerifyError

if TYPE_CHECKING:
    from stream.verifier.state import Account

UTC: Final = dt.UTC
MINIMUM_AGE_RANGE: Final = range(18, 151)
NOTICE_PERIOD_DAYS_RANGE: Final = range(0, 3651)

PSEUDONYM: Final = re.compile(r"[0-9a-f]{64}")


class Reason(StrEnum):
    """Why a feed item (or a held one) must not be there: the contract's rule, plus the verifier's own."""

    UNKNOWN_CONTENT = "unknown_content"  # no valid content event for the feed key
    CONTENT_DELETED = "content_deleted"  # the item's latest applied event is a delete
    UNREADABLE_UPDATE = "unreadable_update"  # an unreadable record named the item after its latest applied event
    HELD_AFTER_RELEASE = "held_after_release"  # a live held copy the filter must have released (or never held)
    PRIVATE_MESSAGE = "private_message"
    NOT_PUBLIC = "not_public"
    CONTENT_TYPE_NOT_ENABLED = "content_type_not_enabled"  # the policy file disables the type
    ACCOUNT_UNKNOWN = "account_unknown"  # no profile: unknown, deleted, or unreadable
    OBJECTED = "objected"
    COUNTRY_UNKNOWN = "country_unknown"
    JURISDICTION_NOT_ENABLED = "jurisdiction_not_enabled"
    NOT_NOTIFIED = "not_notified"
    NOTICE_PERIOD_RUNNING = "notice_period_running"
    AGE_UNKNOWN = "age_unknown"
    MINOR = "minor"
    CREATED_WHILE_MINOR = "created_while_minor"
    ELIGIBLE = "eligible"


VIOLATION_REASONS: Final = tuple(r for r in Reason if r is not Reason.ELIGIBLE)


# --- the policy ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """The verifier's reading of the policy file."""

    version: str
    content_types: frozenset[str]
    minimum_age: int
    notice_periods: Mapping[str, dt.timedelta]  # enabled jurisdiction -> notice period


def read_policy(path: Path | None = None) -> Policy:
    """Read the packaged `policy.toml`, or the file at `path`; raise VerifyError if unusable."""
    where = "packaged policy.toml" if path is None else str(path)
    try:
        raw = resources.files("stream").joinpath("policy.toml").read_bytes() if path is None else path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
        version = data["version"]
        minimum_age = data["minimum_age"]
        types = data["content_types"]
        tables = data.get("jurisdictions", {})
        if not isinstance(version, str) or type(minimum_age) is not int or not isinstance(types, list):
            raise TypeError("version, minimum_age or content_types has the wrong type")
        if minimum_age not in MINIMUM_AGE_RANGE:
            raise TypeError(f"minimum_age must be {MINIMUM_AGE_RANGE[0]} to {MINIMUM_AGE_RANGE[-1]}, not {minimum_age}")
        periods: dict[str, dt.timedelta] = {}
        for code, spec in tables.items():
            days = spec["notice_period_days"]
            if type(days) is not int or days not in NOTICE_PERIOD_DAYS_RANGE:
                raise TypeError(
                    f"jurisdiction {code}: notice_period_days must be a whole number from "
                    f"{NOTICE_PERIOD_DAYS_RANGE[0]} to {NOTICE_PERIOD_DAYS_RANGE[-1]}"
                )
            periods[code] = dt.timedelta(days=days)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise VerifyError(f"cannot read policy {where}: {exc}") from exc
    # `message` is refused by the rule before the type list is consulted.
    return Policy(version, frozenset(str(t) for t in types), minimum_age, periods)


# --- the rule -----------------------------------------------------------------------


def adult_from(birth: dt.date, age: int) -> dt.date:
    """The day someone born on `birth` turns `age`; a 29 February birthday counts on 1 March in common years.

    A day past the calendar's end (year 9999) is `date.max`: never, as far as the rule can tell.
    """
    year = birth.year + age
    if year > dt.MAXYEAR:
        return dt.date.max
    try:
        return birth.replace(year=year)
    except ValueError:
        return dt.date(year, 3, 1)


def notice_end(notified_at: dt.datetime, period: dt.timedelta) -> dt.datetime | None:
    """When a notice period shown at `notified_at` ends; None past the calendar's end (it never does)."""
    try:
        return notified_at + period
    except OverflowError:
        return None


def judge(
    content_type: str,
    visibility: str,
    created_at: dt.datetime | None,
    account: Account | None,
    policy: Policy,
    now: dt.datetime,
) -> Reason:
    """The contract's rule in its order: the first that applies gives the reason."""
    if content_type == "message":
        return Reason.PRIVATE_MESSAGE
    if visibility != "public":
        return Reason.NOT_PUBLIC
    if content_type not in policy.content_types:
        return Reason.CONTENT_TYPE_NOT_ENABLED
    profile = account.profile if account is not None else None
    if account is None or profile is None:
        return Reason.ACCOUNT_UNKNOWN
    if account.objected:
        return Reason.OBJECTED
    if profile.country is None:
        return Reason.COUNTRY_UNKNOWN
    period = policy.notice_periods.get(profile.country)
    if period is None:
        return Reason.JURISDICTION_NOT_ENABLED
    if profile.notified_at is None:
        return Reason.NOT_NOTIFIED
    ends = notice_end(profile.notified_at, period)
    if ends is None or now < ends:
        return Reason.NOTICE_PERIOD_RUNNING
    if profile.birth_date is None:
        return Reason.AGE_UNKNOWN
    adult = adult_from(profile.birth_date, policy.minimum_age)
    if now.astimezone(UTC).date() < adult:
        return Reason.MINOR
    if created_at is None or created_at.astimezone(UTC).date() < adult:
        return Reason.CREATED_WHILE_MINOR
    return Reason.ELIGIBLE


def pseudonym(key: bytes, account_id: str) -> str:
    """HMAC-SHA256 of the account id under the pseudonym key, hex: what the feed must carry."""
    return hmac.new(key, account_id.encode("utf-8"), hashlib.sha256).hexdigest()


def is_pseudonym_of(claimed: object, account_id: str, keys: Sequence[bytes]) -> bool:
    # compare_digest refuses non-ASCII strings: check the shape first.
    """Whether `claimed` is the account's pseudonym under one of `keys` (any JSON value is compared safely)."""
    return (
        type(claimed) is str
        and PSEUDONYM.fullmatch(claimed) is not None
        and any(hmac.compare_digest(claimed, pseudonym(key, account_id)) for key in keys)
    )


# The Kafka header on a feed record naming the key its pseudonym was made with, and how
# the filter derives a key's id: the first 16 hex digits of HMAC-SHA256(key, the label).
KEY_ID_HEADER: Final = "pseudonym_key_id"
_KEY_ID_LABEL: Final = b"eligibility-filter pseudonym key id"


@functools.lru_cache(maxsize=8)
def key_id(key: bytes) -> str:
    """The id the filter gives `key` (its feed records' `pseudonym_key_id` header)."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PseudonymKeys:
    """The pseudonym key in use and, after a rotation, the one before it (STREAM_PSEUDONYM_PREVIOUS_KEY_FILE)."""

    current: bytes
    previous: bytes | None = None

    @property
    def all(self) -> tuple[bytes, ...]:
        """Every key a feed record may have been made with."""
        return (self.current,) if self.previous is None else (self.current, self.previous)

    def named(self, key_id_header: str | None) -> tuple[bytes, ...]:
        """The keys a feed record may have been made with, given its key id header.

        The one key the id names (none if the verifier does not know it); a record
        without the header (written before the filter named its key) either key.
        """
        if key_id_header is None:
            return self.all
        return tuple(k for k in self.all if key_id(k) == key_id_header)


def notice_end_of(account: Account | None, policy: Policy) -> dt.datetime | None:
    """When the author's notice period ends (a held item's release is due then), if it has one."""
    profile = account.profile if account is not None else None
    if profile is None or profile.notified_at is None or profile.country is None:
        return None
    period = policy.notice_periods.get(profile.country)
    return None if period is None else notice_end(profile.notified_at, period)
