"""An independent compliance check: does `training.feed` hold exactly what the rule allows?

`python -m stream verify` rebuilds the current state from the raw inputs
(`content.events`, `accounts.profiles`, `accounts.objections`), applies its own,
deliberately simple implementation of the contract, reads the compacted
`training.feed` and the filter's deferred changelog (`eligibility.deferred`: the
items it holds), and reports every difference:

- violations: a feed item the rule refuses, with the rule's reason, or
  `unknown_content`, `content_deleted` (the item's latest applied event is a
  delete), `unreadable_update` (an unreadable record named the item after that
  event); and `held_after_release`: a live held item the filter must have released;
- losses: an item the rule allows that is missing from the feed;
- minimisation problems: feed values that carry more, or other, than the
  contract's minimised fields.

What it checks, as the contract says it:
- order per item (an item is an author's content id): the latest *applied* event
  counts. An event with that event's id, or an older `event_time`, is superseded;
  after a delete every later event is (deletes are final); an equal `event_time`
  with another id applies, in offset order. Skipped events change nothing;
- unreadable records fail closed: a content record that does not parse but whose
  key is an id (1..256 characters) and whose value is a JSON object with a
  `content_id` id names an item. After the item's latest applied event (offset
  order; the same key keeps them in one partition) it takes the item off the feed
  and releases its held copy; it does not change the latest applied event, so only
  a newer readable event puts the item back. A date after year `MAX_YEAR` is
  unreadable (a profile then counts as unknown, an objection as objected), and a
  policy outside minimum age `MINIMUM_AGE_RANGE` or notice period
  `NOTICE_PERIOD_DAYS_RANGE` is refused, so the rule's date arithmetic never leaves
  the calendar;
- deferred decisions: a live held copy must be of the item's latest applied
  upsert, with no unreadable record since, and refused for the notice period alone
  by the author's current state (or allowed: then it is due and published next);
- nothing a record holds makes the verifier raise: every byte string, JSON value,
  nesting depth and record timestamp is data (`broker_time` clamps timestamps).

Independence is the point: a bug in the filter must not be repeated here. This
module must not import `stream.core.policy`, `stream.core.engine`, `stream.core.codec` or
`stream.core.records` (nor `stream.core.models`): it parses the wire format with orjson and
reads the policy TOML itself. It may use `stream.config` (settings, topic names)
and `stream.errors` (the error root). The deferred changelog's key (the filter's
item id: the author's length in UTF-8 bytes as 2 bytes big-endian, the author, the
content id) and value (`{"due_ms": ..., "content": {...}}`) are read as a wire format.

Layout: a pure part (parsing, `State`, `judge`, `compare`, `render`, `to_json`:
no clock, no I/O) and a thin shell (`verify` reads Kafka, `main_verify` runs it
once or continuously and serves Prometheus gauges from its own registry).

Choices the contract leaves open, and why:
- the filter forgets an item's latest applied event `STREAM_ITEM_MEMORY_DAYS` (8)
  after it applied it, by its own clock; the verifier has no such clock and forgets
  when the next event's broker timestamp is more than that after the latest
  applied one's (`State.item_memory`, from the same setting). The two agree while
  the filter keeps up. A filter that applied the latest event late remembers it
  longer, so an event arriving more than the memory after it, which the filter
  skips, may be applied here and reported as a loss or a violation: that takes a
  copy delivered over a week late, and the report names the item to look at;
- an unreadable profile update leaves the account unknown and an unreadable
  objection update counts as an objection (fail closed, as the filter does). Simply
  ignoring them would make the verdict depend on whether compaction already removed
  the previous valid record;
- the compacted topics keep only each account's latest state, so a missing item
  whose author's profile or objection record is not older than the item's latest
  upsert (by broker timestamp, within `CLOCK_SLACK`) may rightly stay retracted
  ("items retracted earlier stay retracted until a new upsert"): it is `excused`,
  reported but not failing;
- `grace_seconds` (default 0 once, 60 continuously) holds back differences whose
  cause is younger than the grace as `pending`: the filter may not have caught up;
- the end offsets of the feed and the deferred changelog are taken before the
  inputs', so every feed or held record read was caused by inputs that are read too;
- a feed item made from an older upsert than the item's latest eligible one is
  `stale`: reported, not failing (the contract names no such guarantee);
- once time retention has removed content events, a feed item without one cannot
  be called `unknown_content`: its author (found through the pseudonym) and the feed
  record's own fields are still judged, and if they pass it is `unverifiable`; a
  held copy without its events is judged by itself the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import sys
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from stream.config import Settings
from stream.errors import StreamError

log = logging.getLogger(__name__)

UTC: Final = dt.UTC
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_PORT: Final = 6067
DEFAULT_EXAMPLES: Final = 10
# Continuous mode runs beside a live filter: a difference younger than this is
# probably still in flight, not a fault (the filter's objective is well under a second).
DEFAULT_CONTINUOUS_GRACE_SECONDS: Final = 60.0
# Broker timestamps are producer clocks (CreateTime), and records on different
# topics may be appended in another order than they were stamped: a state change
# stamped up to this long before an upsert may still have reached the filter after it.
CLOCK_SLACK: Final = dt.timedelta(seconds=1)
# Reading stops with an error when no record arrives for this long while behind.
READ_STALL_SECONDS: Final = 60.0
# The latest year of a date or timestamp the rule computes with; a later one makes its
# record unreadable (the contract's "a value the rule cannot compute with"). The same
# bound as the filter's, so both call the same records unreadable: with the policy's
# bounds below, the rule's arithmetic on such a date stays inside years 1-9999.
MAX_YEAR: Final = 9800
MINIMUM_AGE_RANGE: Final = range(18, 151)
NOTICE_PERIOD_DAYS_RANGE: Final = range(0, 3651)
# How long the filter remembers an item's latest applied event (STREAM_ITEM_MEMORY_DAYS).
ITEM_MEMORY: Final = dt.timedelta(days=8)


class VerifyError(StreamError):
    """Raised when the verifier cannot read its topics or its policy file."""


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


class Problem(StrEnum):
    """What is wrong with a feed value under data minimisation."""

    NOT_JSON = "not_json"  # not a UTF-8 JSON object
    FIELDS = "fields"  # not exactly the contract's field set
    PSEUDONYM_FORMAT = "pseudonym_format"  # not 64 lower-case hex digits
    PSEUDONYM_MISMATCH = "pseudonym_mismatch"  # not HMAC-SHA256(key, author of the content)
    RAW_ACCOUNT_ID = "raw_account_id"  # a field value equals a known account id
    JURISDICTION = "jurisdiction"  # not an enabled jurisdiction


FEED_FIELDS: Final = frozenset(
    {
        "content_id",
        "content_type",
        "platform",
        "author_pseudonym",
        "created_at",
        "text",
        "media_uri",
        "language",
        "jurisdiction",
        "policy_version",
        "decided_at",
        "source_event_id",
    }
)

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


# --- parsing the inputs (own implementation of the schemas in `schemas/`) -------------

_ID_MAX: Final = 256
_TIMESTAMP: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(?:\.([0-9]{1,9}))?(?:Z|\+00:00)"
)
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COUNTRY: Final = re.compile(r"[A-Z]{2}")
_LANGUAGE: Final = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")
_PSEUDONYM: Final = re.compile(r"[0-9a-f]{64}")
_CONTENT_TYPES: Final = frozenset({"post", "comment", "photo", "caption", "message"})
_PLATFORMS: Final = frozenset({"facebook", "instagram"})
_VISIBILITIES: Final = frozenset({"public", "friends", "private"})


class _Invalid(Exception):
    """Raised inside the parsers when a record breaks its schema; never leaves this module."""


def _object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise _Invalid
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise _Invalid from None
    if type(obj) is not dict:
        raise _Invalid
    return obj


def _identifier(obj: Mapping[str, Any], name: str) -> str:
    v = obj.get(name)
    if type(v) is not str or not 1 <= len(v) <= _ID_MAX:
        raise _Invalid
    return v


def parse_timestamp(v: object) -> dt.datetime:
    """An RFC 3339 UTC timestamp as the schemas allow it, up to MAX_YEAR; digits beyond microseconds are dropped."""
    m = _TIMESTAMP.fullmatch(v) if type(v) is str else None
    if m is None:
        raise _Invalid
    year, month, day, hour, minute, second, fraction = m.groups()
    if int(year) > MAX_YEAR:
        raise _Invalid
    micro = int((fraction or "")[:6].ljust(6, "0"))
    try:
        return dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=UTC)
    except ValueError:
        raise _Invalid from None


def _optional_timestamp(obj: Mapping[str, Any], name: str) -> dt.datetime | None:
    return None if obj.get(name) is None else parse_timestamp(obj[name])


def _optional_string(obj: Mapping[str, Any], name: str, limit: int, pattern: re.Pattern[str] | None = None) -> None:
    v = obj.get(name)
    if v is None:
        return
    if type(v) is not str or len(v) > limit or (pattern is not None and pattern.fullmatch(v) is None):
        raise _Invalid


def _one_of(obj: Mapping[str, Any], name: str, allowed: frozenset[str]) -> str:
    v = obj.get(name)
    if type(v) is not str or v not in allowed:
        raise _Invalid
    return v


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class Content:
    """One valid event of a content item. `op` is `upsert` or `delete`."""

    op: str
    event_id: str
    author_id: str
    at: dt.datetime  # broker timestamp of the event
    event_time: dt.datetime  # when the change happened upstream: what orders an item's events
    partition: int = 0
    content_type: str = ""
    visibility: str = ""
    created_at: dt.datetime | None = None


def parse_content(key: bytes | None, value: bytes | None, at: dt.datetime, partition: int = 0) -> tuple[str, Content]:
    """`(content_id, Content)` of a valid `content.events` record; raise `_Invalid` otherwise."""
    obj = _object(value)
    event_id = _identifier(obj, "event_id")
    op = _one_of(obj, "op", frozenset({"upsert", "delete"}))
    content_id = _identifier(obj, "content_id")
    author_id = _identifier(obj, "author_id")
    event_time = parse_timestamp(obj.get("event_time"))
    if _key_text(key) != author_id:
        raise _Invalid
    if op == "delete":  # a delete's other fields are not looked at
        return content_id, Content("delete", event_id, author_id, at, event_time, partition)
    content_type = _one_of(obj, "content_type", _CONTENT_TYPES)
    _one_of(obj, "platform", _PLATFORMS)
    visibility = _one_of(obj, "visibility", _VISIBILITIES)
    created_at = parse_timestamp(obj.get("created_at"))
    _optional_string(obj, "text", 100_000)
    _optional_string(obj, "media_uri", 2048)
    _optional_string(obj, "language", 35, _LANGUAGE)
    return content_id, Content(
        "upsert", event_id, author_id, at, event_time, partition, content_type, visibility, created_at
    )


def item_named_by(key: bytes | None, value: bytes | None) -> tuple[str, str] | None:
    """`(author, content id)` that an unreadable content record still names: its key and its `content_id`.

    Only a key that is an identifier and a JSON object whose `content_id` is one name
    an item; anything else names none.
    """
    author_id = _key_text(key)
    if author_id is None or not 1 <= len(author_id) <= _ID_MAX:
        return None
    try:
        return author_id, _identifier(_object(value), "content_id")
    except _Invalid:
        return None


def split_held_key(key: bytes) -> tuple[str, str] | None:
    """`(author, content id)` of a key of the filter's deferred changelog, or None if it is not one.

    The key is the filter's item id (wire format of its own topic): the author's length
    in UTF-8 bytes (2 bytes, big-endian), the author, then the content id.
    """
    n = int.from_bytes(key[:2], "big")
    if len(key) < 2 or len(key) < 2 + n:
        return None
    try:
        author_id, content_id = key[2 : 2 + n].decode("utf-8"), key[2 + n :].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not (1 <= len(author_id) <= _ID_MAX and 1 <= len(content_id) <= _ID_MAX):
        return None
    return author_id, content_id


@dataclass(frozen=True, slots=True)
class Profile:
    birth_date: dt.date | None
    country: str | None
    notified_at: dt.datetime | None


def parse_profile(account_id: str, value: bytes) -> Profile:
    """A valid `accounts.profiles` value for `account_id`; raise `_Invalid` otherwise."""
    obj = _object(value)
    if _identifier(obj, "account_id") != account_id:
        raise _Invalid
    parse_timestamp(obj.get("updated_at"))
    birth: dt.date | None = None
    raw_birth = obj.get("birth_date")
    if raw_birth is not None:
        if type(raw_birth) is not str or _DATE.fullmatch(raw_birth) is None:
            raise _Invalid
        try:
            birth = dt.date.fromisoformat(raw_birth)
        except ValueError:
            raise _Invalid from None
        if birth.year > MAX_YEAR:
            raise _Invalid
    country = obj.get("country")
    if country is not None and (type(country) is not str or _COUNTRY.fullmatch(country) is None):
        raise _Invalid
    return Profile(birth, country, _optional_timestamp(obj, "notified_at"))


def parse_objection(account_id: str, value: bytes) -> bool:
    """Whether a valid `accounts.objections` value says `objected`; raise `_Invalid` otherwise."""
    obj = _object(value)
    if _identifier(obj, "account_id") != account_id:
        raise _Invalid
    status = _one_of(obj, "status", frozenset({"objected", "withdrawn"}))
    parse_timestamp(obj.get("at"))
    _identifier(obj, "source")
    _identifier(obj, "request_id")
    return status == "objected"


# --- the state ----------------------------------------------------------------------


@dataclass(slots=True)
class Account:
    """An account's current state as the compacted topics hold it."""

    profile: Profile | None = None  # None: no profile, deleted, or unreadable (fail closed)
    objected: bool = False  # an unreadable objection counts as one (fail closed)
    profile_at: dt.datetime | None = None  # broker timestamp of the latest profile record, tombstones included
    objection_at: dt.datetime | None = None

    def changed_at(self) -> dt.datetime | None:
        stamps = [t for t in (self.profile_at, self.objection_at) if t is not None]
        return max(stamps) if stamps else None


@dataclass(slots=True)
class InputCounts:
    content: int = 0
    content_invalid: int = 0
    content_skipped: int = 0  # valid, but superseded or after a delete: they change nothing
    profiles: int = 0
    objections: int = 0


@dataclass(slots=True)
class Item:
    """One item (an author's content id): its latest applied event, and an unreadable record since."""

    latest: Content | None = None
    # Broker time of an unreadable record naming the item after `latest`: the filter
    # retracts the item and releases its held copy; only a later applied event undoes that.
    unreadable_at: dt.datetime | None = None


def applies(latest: Content | None, event: Content, memory: dt.timedelta = ITEM_MEMORY) -> bool:
    """Whether `event` changes an item whose latest applied event is `latest` (contract: "Order per item").

    The same event id is superseded; after a delete everything is; an older event
    time is; an equal event time with another id applies (arrival order). The
    filter forgets `latest` `memory` after applying it; here after its broker time.
    """
    if latest is None or event.at - latest.at > memory:
        return True
    if event.event_id == latest.event_id or latest.op == "delete":
        return False
    return event.event_time >= latest.event_time


@dataclass(slots=True)
class State:
    """Each item's latest applied event and each account's latest state; fed in offset order.

    Items are keyed like the filter's, by author and content id: `items[content id][author]`.
    `contents` holds, per content id, the latest applied event of the item that changed
    last (offset order within a partition, broker time across partitions): the one a
    feed key names unless another author's item claims the same id.
    """

    items: dict[str, dict[str, Item]] = field(default_factory=dict)
    contents: dict[str, Content] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    counts: InputCounts = field(default_factory=InputCounts)
    item_memory: dt.timedelta = ITEM_MEMORY

    def _item(self, content_id: str, author_id: str) -> Item:
        return self.items.setdefault(content_id, {}).setdefault(author_id, Item())

    def apply_content(self, key: bytes | None, value: bytes | None, at: dt.datetime, partition: int = 0) -> None:
        self.counts.content += 1
        try:
            content_id, content = parse_content(key, value, at, partition)
        except _Invalid:  # a dead letter; the item it still names, if any, fails closed
            self.counts.content_invalid += 1
            named = item_named_by(key, value)
            if named is not None:
                self._item(named[1], named[0]).unreadable_at = at
            return
        item = self._item(content_id, content.author_id)
        if not applies(item.latest, content, self.item_memory):
            self.counts.content_skipped += 1
            return
        item.latest = content
        item.unreadable_at = None
        known = self.contents.get(content_id)
        # Offset order decides within a partition. The same content id from two
        # partitions (two authors claiming it) has no offset order: the later stamp wins.
        if known is None or known.partition == partition or known.at <= at:
            self.contents[content_id] = content

    def item_on_feed(self, content_id: str, claimed: object, key: bytes) -> tuple[str | None, Item | None]:
        """The `(author, item)` a feed record of `content_id` stands for; `claimed` is its `author_pseudonym`.

        With one author of the id, that one; with several, the one whose pseudonym the
        record carries, else the item that changed last.
        """
        candidates = self.items.get(content_id)
        if not candidates:
            return None, None
        if len(candidates) > 1:
            for author_id, item in candidates.items():
                if _is_pseudonym_of(claimed, author_id, key):
                    return author_id, item
            current = self.contents.get(content_id)
            if current is not None:
                return current.author_id, candidates[current.author_id]
        return next(iter(candidates.items()))

    def apply_profile(self, key: bytes | None, value: bytes | None, at: dt.datetime) -> None:
        self.counts.profiles += 1
        account_id = _key_text(key)
        if not account_id:
            return  # no account can be named: the record cannot change anyone's state
        account = self.accounts.setdefault(account_id, Account())
        account.profile_at = at
        try:
            account.profile = None if value is None else parse_profile(account_id, value)
        except _Invalid:
            account.profile = None

    def apply_objection(self, key: bytes | None, value: bytes | None, at: dt.datetime) -> None:
        self.counts.objections += 1
        account_id = _key_text(key)
        if not account_id:
            return
        account = self.accounts.setdefault(account_id, Account())
        account.objection_at = at
        try:
            account.objected = False if value is None else parse_objection(account_id, value)
        except _Invalid:
            account.objected = True

    def account_ids(self) -> set[str]:
        """Every raw account id the inputs mention."""
        return set(self.accounts) | {author for by_author in self.items.values() for author in by_author}


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
    return hmac.new(key, account_id.encode("utf-8"), hashlib.sha256).hexdigest()


def _is_pseudonym_of(claimed: object, account_id: str, key: bytes) -> bool:
    # compare_digest refuses non-ASCII strings: check the shape first.
    return (
        type(claimed) is str
        and _PSEUDONYM.fullmatch(claimed) is not None
        and hmac.compare_digest(claimed, pseudonym(key, account_id))
    )


# --- the comparison -----------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """A count and the first few content ids counted."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, content_id: str, limit: int) -> None:
        self.count += 1
        if len(self.examples) < limit:
            self.examples.append(content_id)


@dataclass(slots=True)
class Report:
    """Every difference between the feed and the verifier's rule, as counts and content-id examples."""

    checked_at: dt.datetime
    policy_version: str
    grace_seconds: float
    inputs: InputCounts
    content_truncated: bool  # time retention removed content events: `unverifiable` replaces `unknown_content`
    feed_items: int = 0
    held_items: int = 0  # live records on the filter's deferred changelog
    expected_eligible: int = 0
    violations: dict[Reason, Tally] = field(default_factory=lambda: {r: Tally() for r in VIOLATION_REASONS})
    losses: Tally = field(default_factory=Tally)
    excused: Tally = field(default_factory=Tally)  # missing, but the author's state changed since the upsert
    pending: Tally = field(default_factory=Tally)  # a difference younger than the grace
    stale: Tally = field(default_factory=Tally)  # on the feed from an older upsert than the latest
    unverifiable: Tally = field(default_factory=Tally)
    minimisation: dict[Problem, Tally] = field(default_factory=lambda: {p: Tally() for p in Problem})

    @property
    def violation_count(self) -> int:
        return sum(t.count for t in self.violations.values())

    @property
    def minimisation_count(self) -> int:
        return sum(t.count for t in self.minimisation.values())

    @property
    def ok(self) -> bool:
        return self.violation_count == 0 and self.losses.count == 0 and self.minimisation_count == 0

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1


def _content_id_of_key(key: bytes) -> str:
    text = _key_text(key)
    return text if text is not None else "0x" + key.hex()


def _strings(value: object) -> Iterator[str]:
    """Every string inside a parsed JSON value, keys excepted.

    A loop, not recursion: a feed value nested a thousand deep (orjson allows 1024)
    would otherwise stop the verifier with a RecursionError.
    """
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _text(value: object) -> str:
    # Never str() of a parsed value: the repr of a deeply nested list raises RecursionError.
    return value if isinstance(value, str) else ""


def compare(
    state: State,
    feed: Mapping[bytes, bytes],
    policy: Policy,
    *,
    pseudonym_key: bytes,
    now: dt.datetime,
    grace_seconds: float = 0.0,
    content_truncated: bool = False,
    examples: int = DEFAULT_EXAMPLES,
    held: Mapping[bytes, bytes] | None = None,
) -> Report:
    """Diff the compacted feed and the live held items (values only, no tombstones) against the state. Pure."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    held = held if held is not None else {}
    report = Report(
        now, policy.version, grace_seconds, state.counts, content_truncated, feed_items=len(feed), held_items=len(held)
    )
    recent = now - dt.timedelta(seconds=grace_seconds)
    account_ids = state.account_ids()
    by_pseudonym: dict[str, str] | None = None

    def is_recent(*stamps: dt.datetime | None) -> bool:
        return grace_seconds > 0 and any(t is not None and t > recent for t in stamps)

    def flag(reason: Reason, content_id: str, *stamps: dt.datetime | None) -> None:
        if is_recent(*stamps):
            report.pending.add(content_id, examples)
        else:
            report.violations[reason].add(content_id, examples)

    for key, value in feed.items():
        content_id = _content_id_of_key(key)
        fields = _feed_object(value)
        claimed = fields.get("author_pseudonym") if fields is not None else None
        author, item = state.item_on_feed(content_id, claimed, pseudonym_key)
        content = item.latest if item is not None else None
        for problem in _minimisation_problems(
            fields, content.author_id if content is not None else None, account_ids, policy, pseudonym_key
        ):
            report.minimisation[problem].add(content_id, examples)

        if content is None:
            if not content_truncated:
                report.violations[Reason.UNKNOWN_CONTENT].add(content_id, examples)
                continue
            if item is not None and item.unreadable_at is not None and author is not None:
                if _is_pseudonym_of(claimed, author, pseudonym_key):
                    flag(Reason.UNREADABLE_UPDATE, content_id, item.unreadable_at)
                    continue
            # The content event aged out: judge what the feed record and the author's state still tell.
            if by_pseudonym is None:
                by_pseudonym = {pseudonym(pseudonym_key, a): a for a, acc in state.accounts.items() if acc.profile}
            fields = fields if fields is not None else {}
            account_id = by_pseudonym.get(_text(fields.get("author_pseudonym")))
            account = state.accounts.get(account_id) if account_id is not None else None
            try:
                created_at: dt.datetime | None = parse_timestamp(fields.get("created_at"))
            except _Invalid:
                created_at = None
            # The feed does not carry the visibility; the item is taken as public as it claims.
            reason = judge(_text(fields.get("content_type")), "public", created_at, account, policy, now)
            if reason is Reason.ELIGIBLE:
                report.unverifiable.add(content_id, examples)
            else:
                flag(reason, content_id, account.changed_at() if account is not None else None)
            continue

        assert item is not None
        account = state.accounts.get(content.author_id)
        if content.op == "delete":
            reason = Reason.CONTENT_DELETED
        elif item.unreadable_at is not None:
            reason = Reason.UNREADABLE_UPDATE
        else:
            reason = judge(content.content_type, content.visibility, content.created_at, account, policy, now)
        if reason is Reason.ELIGIBLE:
            if fields is not None and fields.get("source_event_id") != content.event_id:
                report.stale.add(content_id, examples)
        else:
            flag(reason, content_id, content.at, item.unreadable_at, account.changed_at() if account else None)

    for key, value in held.items():
        _judge_held(state, key, value, policy, now, content_truncated, flag)

    for content_id, content in state.contents.items():
        if content.op != "upsert" or state.items[content_id][content.author_id].unreadable_at is not None:
            continue  # deleted, or retracted (and released) by the unreadable record since
        account = state.accounts.get(content.author_id)
        if judge(content.content_type, content.visibility, content.created_at, account, policy, now) is not (
            Reason.ELIGIBLE
        ):
            continue
        report.expected_eligible += 1
        if content_id.encode("utf-8") in feed:
            continue
        assert account is not None and account.profile is not None and account.profile.notified_at is not None
        country = account.profile.country
        assert country is not None
        ends = notice_end(account.profile.notified_at, policy.notice_periods[country])
        assert ends is not None  # eligible: the notice period has ended
        # Due from the later of the upsert and the end of the notice period (a deferred decision).
        due = max(content.at, ends)
        changed = account.changed_at()
        if due > recent:
            report.pending.add(content_id, examples)
        elif changed is not None and changed >= content.at - CLOCK_SLACK:
            report.excused.add(content_id, examples)
        else:
            report.losses.add(content_id, examples)
    return report


def _judge_held(
    state: State,
    key: bytes,
    value: bytes,
    policy: Policy,
    now: dt.datetime,
    content_truncated: bool,
    flag: Callable[..., None],
) -> None:
    """Flag a live held item the filter must have released: the contract's "Deferred decisions".

    A held copy may stay only while it is the item's latest applied event, no unreadable
    record named the item since, and the rule refuses it for its notice period alone
    (or allows it: then it falls due and is published, or missing it is a loss).
    """
    names = split_held_key(key)
    if names is None:
        # Not an item id: name it without the author id the key may still contain.
        flag(Reason.HELD_AFTER_RELEASE, "held-key-sha256:" + hashlib.sha256(key).hexdigest()[:16])
        return
    author_id, content_id = names
    copy = _held_copy(author_id, content_id, value)
    item = state.items.get(content_id, {}).get(author_id)
    latest = item.latest if item is not None else None
    account = state.accounts.get(author_id)
    changed = account.changed_at() if account is not None else None
    if copy is None:
        flag(Reason.HELD_AFTER_RELEASE, content_id)
        return
    if latest is None:
        if not content_truncated or (item is not None and item.unreadable_at is not None):
            flag(Reason.HELD_AFTER_RELEASE, content_id, changed)
            return
        latest = copy  # its content events aged out: judge the copy itself
    assert item is not None or latest is copy
    unreadable_at = item.unreadable_at if item is not None else None
    if latest.op != "upsert" or unreadable_at is not None or latest.event_id != copy.event_id:
        flag(Reason.HELD_AFTER_RELEASE, content_id, latest.at, unreadable_at, changed)
        return
    reason = judge(latest.content_type, latest.visibility, latest.created_at, account, policy, now)
    if reason not in (Reason.NOTICE_PERIOD_RUNNING, Reason.ELIGIBLE):
        flag(Reason.HELD_AFTER_RELEASE, content_id, latest.at, changed, _notice_end_of(account, policy))


def _held_copy(author_id: str, content_id: str, value: bytes) -> Content | None:
    """The content event a deferred changelog value holds (`{"due_ms": ..., "content": {...}}`), if readable."""
    obj = _feed_object(value)
    held = obj.get("content") if obj is not None else None
    if type(held) is not dict:
        return None
    try:
        # A copy has no broker time of its own: the epoch, so it never counts as a recent change.
        named, copy = parse_content(author_id.encode("utf-8"), orjson.dumps(held), _EPOCH)
    except (_Invalid, orjson.JSONEncodeError):
        return None
    return copy if named == content_id else None


def _notice_end_of(account: Account | None, policy: Policy) -> dt.datetime | None:
    """When the author's notice period ends (a held item's release is due then), if it has one."""
    profile = account.profile if account is not None else None
    if profile is None or profile.notified_at is None or profile.country is None:
        return None
    period = policy.notice_periods.get(profile.country)
    return None if period is None else notice_end(profile.notified_at, period)


def _feed_object(value: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return obj if type(obj) is dict else None


def _minimisation_problems(
    item: dict[str, Any] | None,
    author_id: str | None,
    account_ids: set[str],
    policy: Policy,
    pseudonym_key: bytes,
) -> Iterable[Problem]:
    if item is None:
        yield Problem.NOT_JSON
        return
    if item.keys() != FEED_FIELDS:
        yield Problem.FIELDS
    value = item.get("author_pseudonym")
    if type(value) is not str or _PSEUDONYM.fullmatch(value) is None:
        yield Problem.PSEUDONYM_FORMAT
    elif author_id is not None and not hmac.compare_digest(value, pseudonym(pseudonym_key, author_id)):
        yield Problem.PSEUDONYM_MISMATCH
    # `text` is the author's own words: a comment that happens to equal some account
    # id is not a leak by the filter, and flagging it would page someone for nothing.
    if any(s in account_ids for name, v in item.items() if name != "text" for s in _strings(v)):
        yield Problem.RAW_ACCOUNT_ID
    jurisdiction = item.get("jurisdiction")
    if type(jurisdiction) is not str or jurisdiction not in policy.notice_periods:
        yield Problem.JURISDICTION


# --- output -------------------------------------------------------------------------


def _printable(content_id: str) -> str:
    # Ids are compared exactly and may hold anything; a terminal must not be steered by them.
    return content_id if content_id.isprintable() else ascii(content_id)


def _line(label: str, tally: Tally, indent: str = "  ") -> str:
    shown = ", ".join(_printable(c) for c in tally.examples)
    more = ", ..." if tally.count > len(tally.examples) else ""
    return f"{indent}{label}: {tally.count}" + (f"  [{shown}{more}]" if tally.count else "")


def render(report: Report) -> str:
    """The report for a person: counts and a few content ids; never text, birth dates or account ids."""
    c = report.inputs
    verdict = "OK" if report.ok else "FAILED"
    lines = [
        f"training.feed verification at {_timestamp(report.checked_at)}, policy {report.policy_version}: {verdict}",
        f"  inputs: {c.content} content events ({c.content_invalid} invalid, "
        f"{c.content_skipped} superseded or after a delete), "
        f"{c.profiles} profile records, {c.objections} objection records"
        + ("; older content events are past retention" if report.content_truncated else ""),
        f"  feed items: {report.feed_items}, held items: {report.held_items}, "
        f"expected eligible: {report.expected_eligible}"
        + (f", grace {report.grace_seconds:g}s" if report.grace_seconds else ""),
        f"  violations: {report.violation_count}",
    ]
    lines += [_line(reason.value, t, "    ") for reason, t in report.violations.items() if t.count]
    lines.append(_line("losses", report.losses))
    lines.append(f"  minimisation problems: {report.minimisation_count}")
    lines += [_line(problem.value, t, "    ") for problem, t in report.minimisation.items() if t.count]
    lines.append(_line("excused (author's state changed since the upsert; not failing)", report.excused))
    lines.append(_line("pending (younger than the grace; not failing)", report.pending))
    lines.append(_line("stale (feed holds an older version; not failing)", report.stale))
    lines.append(_line("unverifiable (content event past retention; not failing)", report.unverifiable))
    return "\n".join(lines)


def _timestamp(d: dt.datetime) -> str:
    return d.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _tally(t: Tally) -> dict[str, object]:
    return {"count": t.count, "examples": list(t.examples)}


def to_json(report: Report) -> bytes:
    """The report for machines: every reason and problem kind present, zero or not."""
    c = report.inputs
    return orjson.dumps(
        {
            "ok": report.ok,
            "exit_status": report.exit_status,
            "checked_at": _timestamp(report.checked_at),
            "policy_version": report.policy_version,
            "grace_seconds": report.grace_seconds,
            "inputs": {
                "content_events": c.content,
                "content_events_invalid": c.content_invalid,
                "content_events_skipped": c.content_skipped,
                "profile_records": c.profiles,
                "objection_records": c.objections,
                "content_truncated": report.content_truncated,
            },
            "feed_items": report.feed_items,
            "held_items": report.held_items,
            "expected_eligible": report.expected_eligible,
            "violations": {
                "count": report.violation_count,
                "by_reason": {r.value: _tally(t) for r, t in report.violations.items()},
            },
            "losses": _tally(report.losses),
            "minimisation_problems": {
                "count": report.minimisation_count,
                "by_kind": {p.value: _tally(t) for p, t in report.minimisation.items()},
            },
            "excused": _tally(report.excused),
            "pending": _tally(report.pending),
            "stale": _tally(report.stale),
            "unverifiable": _tally(report.unverifiable),
        },
        option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE,
    )


# --- metrics ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifierMetrics:
    """The verifier's gauges, in their own registry (the filter's /metrics is another process)."""

    registry: CollectorRegistry
    violations: Gauge
    losses: Gauge
    excused: Gauge
    minimisation_problems: Gauge
    feed_items: Gauge
    expected_eligible: Gauge
    last_run: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> VerifierMetrics:
        r = registry if registry is not None else CollectorRegistry()
        m = cls(
            registry=r,
            violations=Gauge(
                "eligibility_verifier_violations",
                "Feed items the verifier's own rule refuses, by reason (last run)",
                ["reason"],
                registry=r,
            ),
            losses=Gauge("eligibility_verifier_losses", "Eligible items missing from the feed (last run)", registry=r),
            excused=Gauge(
                "eligibility_verifier_excused",
                "Eligible items missing from the feed whose author's state changed since the upsert (last run)",
                registry=r,
            ),
            minimisation_problems=Gauge(
                "eligibility_verifier_minimisation_problems",
                "Feed values breaking data minimisation, by kind (last run)",
                ["kind"],
                registry=r,
            ),
            feed_items=Gauge(
                "eligibility_verifier_feed_items", "Live items on the compacted feed (last run)", registry=r
            ),
            expected_eligible=Gauge(
                "eligibility_verifier_expected_eligible", "Items the verifier's rule allows (last run)", registry=r
            ),
            last_run=Gauge(
                "eligibility_verifier_last_run_timestamp_seconds",
                "When the last successful run judged the feed (alert when it falls behind)",
                registry=r,
            ),
        )
        for reason in VIOLATION_REASONS:
            m.violations.labels(reason=reason.value)
        for problem in Problem:
            m.minimisation_problems.labels(kind=problem.value)
        return m

    def update(self, report: Report) -> None:
        for reason, tally in report.violations.items():
            self.violations.labels(reason=reason.value).set(tally.count)
        for problem, tally in report.minimisation.items():
            self.minimisation_problems.labels(kind=problem.value).set(tally.count)
        self.losses.set(report.losses.count)
        self.excused.set(report.excused.count)
        self.feed_items.set(report.feed_items)
        self.expected_eligible.set(report.expected_eligible)
        self.last_run.set(report.checked_at.timestamp())


# --- the Kafka shell ----------------------------------------------------------------


# Producers choose a record's CreateTime: any 64-bit number, -1 when there is none.
_LAST_BROKER_MS: Final = (dt.datetime(9999, 1, 1, tzinfo=UTC) - _EPOCH) // dt.timedelta(milliseconds=1)


def broker_time(ms: int) -> dt.datetime:
    """A record's timestamp as a datetime, clamped to 1970..9999: no timestamp may make the verifier raise."""
    return _EPOCH + dt.timedelta(milliseconds=min(max(ms, 0), _LAST_BROKER_MS))


async def verify(
    settings: Settings,
    *,
    now: dt.datetime | None = None,
    grace_seconds: float = 0.0,
    examples: int = DEFAULT_EXAMPLES,
) -> Report:
    """Read the inputs and the feed from the beginning to the end offsets taken at start; compare.

    Raises VerifyError when a topic is missing, the broker cannot be read, or the
    policy file is unusable.
    """
    from aiokafka.errors import KafkaError

    now = dt.datetime.now(UTC) if now is None else now
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    policy = read_policy(settings.policy_path)
    try:
        state, feed, held, truncated = await _read(settings)
    except KafkaError as exc:
        raise VerifyError(f"cannot read the topics from {settings.bootstrap_servers}: {exc!r}") from exc
    return compare(
        state,
        feed,
        policy,
        pseudonym_key=settings.pseudonym_key,
        now=now,
        grace_seconds=grace_seconds,
        content_truncated=truncated,
        examples=examples,
        held=held,
    )


async def _read(settings: Settings) -> tuple[State, dict[bytes, bytes], dict[bytes, bytes], bool]:
    """The state of the inputs, the live feed, the live held items, and whether retention removed content events."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # the shell's dependency; the pure part needs no Kafka

    topics = settings.topics
    counts = await _partition_counts(
        settings, [topics.feed, topics.deferred, topics.content, topics.profiles, topics.objections]
    )
    partitions = {name: [TopicPartition(name, p) for p in range(n)] for name, n in counts.items()}
    # No group: nothing is committed, and the filter's group never sees this reader.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="eligibility-verifier",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    try:
        # The outputs' end offsets first, the inputs' after: every feed and held record
        # read was then caused by input records that are read too (no false
        # unknown_content, no held item judged without the event it holds).
        ends = dict(await consumer.end_offsets(partitions[topics.feed] + partitions[topics.deferred]))
        inputs = partitions[topics.content] + partitions[topics.profiles] + partitions[topics.objections]
        ends.update(await consumer.end_offsets(inputs))
        starts = await consumer.beginning_offsets(partitions[topics.content])
        truncated = any(offset > 0 for offset in starts.values())

        # A memory past timedelta's range (a setting of millions of years) is "never forget".
        state = State(item_memory=dt.timedelta(days=min(settings.item_memory_days, dt.timedelta.max.days)))
        feed: dict[bytes, bytes] = {}
        held: dict[bytes, bytes] = {}
        async for tp, records in _read_to_end(consumer, ends):
            if tp.topic in (topics.feed, topics.deferred):
                live = feed if tp.topic == topics.feed else held
                for r in records:
                    if r.key is None:
                        continue  # a compacted topic refuses keyless records; nothing to judge
                    if r.value is None:
                        live.pop(r.key, None)
                    else:
                        live[r.key] = r.value
            elif tp.topic == topics.content:
                for r in records:
                    state.apply_content(r.key, r.value, broker_time(r.timestamp), tp.partition)
            elif tp.topic == topics.profiles:
                for r in records:
                    state.apply_profile(r.key, r.value, broker_time(r.timestamp))
            else:
                for r in records:
                    state.apply_objection(r.key, r.value, broker_time(r.timestamp))
    finally:
        await consumer.stop()
    return state, feed, held, truncated


async def _partition_counts(settings: Settings, names: list[str]) -> dict[str, int]:
    """Partitions of each topic; VerifyError naming any that does not exist."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="eligibility-verifier")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            raise VerifyError(f"topics do not exist: {', '.join(missing)} (see `python -m stream topics check`)")
        described: list[Any] = await admin.describe_topics(names)
    finally:
        await admin.close()
    counts = {t["topic"]: len(t["partitions"]) for t in described if t.get("error_code", 0) == 0}
    unreadable = [name for name in names if not counts.get(name)]
    if unreadable:
        raise VerifyError(f"cannot describe topics: {', '.join(unreadable)}")
    return counts


async def _read_to_end(consumer: Any, ends: Mapping[Any, int]) -> AsyncIterator[tuple[Any, list[Any]]]:
    """Yield `(partition, records)` in offset order until every partition reached its end offset."""
    consumer.assign(list(ends))
    await consumer.seek_to_beginning(*ends)
    remaining = set(ends)
    loop = asyncio.get_running_loop()
    last_progress = loop.time()
    while True:
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
                consumer.pause(tp)  # records appended after the start are not part of this run
        if not remaining:
            return
        fetched = await consumer.getmany(*remaining, timeout_ms=500, max_records=20_000)
        for tp, records in fetched.items():
            wanted = [r for r in records if r.offset < ends[tp]]
            if wanted:
                last_progress = loop.time()
                yield tp, wanted
        if loop.time() - last_progress > READ_STALL_SECONDS:
            behind = sorted(f"{tp.topic}[{tp.partition}]" for tp in remaining)
            raise VerifyError(f"no records for {READ_STALL_SECONDS:.0f}s while reading {', '.join(behind)}")


def _write_json(path: Path, data: bytes) -> None:
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    # Replace atomically: a scraper or a person never reads half a report.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main_verify(
    settings: Settings,
    json_path: Path | None,
    once: bool,
    interval: float,
    *,
    port: int = DEFAULT_PORT,
    grace_seconds: float | None = None,
    examples: int = DEFAULT_EXAMPLES,
    stop: threading.Event | None = None,
) -> int:
    """Run once (exit 1 on any violation, loss or minimisation problem, else 0), or every `interval` s.

    Once: the text report on stdout, the JSON report to `json_path` (`-`: stdout,
    instead of the text). Continuously: gauges on `port`, one log line per run, the
    JSON report rewritten at `json_path`; runs until interrupted (or `stop` is set:
    then it returns the last run's status), a failed run is logged and retried at
    the next interval.
    """
    read_policy(settings.policy_path)  # a bad policy file fails at start, not on every run
    if once:
        report = asyncio.run(verify(settings, grace_seconds=grace_seconds or 0.0, examples=examples))
        if json_path is None or str(json_path) != "-":
            print(render(report), flush=True)
        if json_path is not None:
            _write_json(json_path, to_json(report))
        return report.exit_status

    grace = DEFAULT_CONTINUOUS_GRACE_SECONDS if grace_seconds is None else grace_seconds
    metrics = VerifierMetrics.create()
    server, _ = start_http_server(port, registry=metrics.registry)
    log.info("verify: metrics on port %d, a run every %.0fs, grace %.0fs", port, interval, grace)
    try:
        return _run_continuously(settings, metrics, json_path, interval, grace, examples, stop or threading.Event())
    finally:
        server.shutdown()
        server.server_close()


def _run_continuously(
    settings: Settings,
    metrics: VerifierMetrics,
    json_path: Path | None,
    interval: float,
    grace: float,
    examples: int,
    stop: threading.Event,
) -> int:
    from aiokafka.errors import KafkaError

    status = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            report = asyncio.run(verify(settings, grace_seconds=grace, examples=examples))
        except (StreamError, KafkaError, OSError, TimeoutError) as exc:
            # The gauges keep the last results; last_run_timestamp_seconds shows the gap.
            log.warning("verify: run failed, retrying in %.0fs: %s", interval, exc)
        else:
            metrics.update(report)
            status = report.exit_status
            if json_path is not None:
                _write_json(json_path, to_json(report))
            log.info(
                "verify: ok=%s feed_items=%d expected=%d violations=%d losses=%d minimisation=%d excused=%d "
                "pending=%d stale=%d unverifiable=%d",
                report.ok,
                report.feed_items,
                report.expected_eligible,
                report.violation_count,
                report.losses.count,
                report.minimisation_count,
                report.excused.count,
                report.pending.count,
                report.stale.count,
                report.unverifiable.count,
            )
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    return status
