"""Parsing the inputs and the filter's deferred changelog: the verifier's own implementation of `schemas/`.

Nothing a record holds makes these parsers raise anything but `Invalid`, which
never leaves the verifier: every byte string and JSON value is data.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

UTC: Final = dt.UTC
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=UTC)
# The latest year of a date or timestamp the rule computes with; a later one makes its
# record unreadable (the contract's "a value the rule cannot compute with"). The same
# bound as the filter's, so both call the same records unreadable: with the policy's
# bounds below, the rule's arithmetic on such a date stays inside years 1-9999.
MAX_YEAR: Final = 9800

_ID_MAX: Final = 256
_TIMESTAMP: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(?:\.([0-9]{1,9}))?(?:Z|\+00:00)"
)
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COUNTRY: Final = re.compile(r"[A-Z]{2}")
_LANGUAGE: Final = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")
_CONTENT_TYPES: Final = frozenset({"post", "comment", "photo", "caption", "message"})
_PLATFORMS: Final = frozenset({"facebook", "instagram"})
_VISIBILITIES: Final = frozenset({"public", "friends", "private"})


class Invalid(Exception):
    """Raised inside the parsers when a record breaks its schema; never leaves this module."""


def _object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise Invalid
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise Invalid from None
    if type(obj) is not dict:
        raise Invalid
    return obj


def _identifier(obj: Mapping[str, Any], name: str) -> str:
    v = obj.get(name)
    if type(v) is not str or not 1 <= len(v) <= _ID_MAX:
        raise Invalid
    return v


def parse_timestamp(v: object) -> dt.datetime:
    """An RFC 3339 UTC timestamp as the schemas allow it, up to MAX_YEAR; digits beyond microseconds are dropped."""
    m = _TIMESTAMP.fullmatch(v) if type(v) is str else None
    if m is None:
        raise Invalid
    year, month, day, hour, minute, second, fraction = m.groups()
    if int(year) > MAX_YEAR:
        raise Invalid
    micro = int((fraction or "")[:6].ljust(6, "0"))
    try:
        return dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=UTC)
    except ValueError:
        raise Invalid from None


def _optional_timestamp(obj: Mapping[str, Any], name: str) -> dt.datetime | None:
    return None if obj.get(name) is None else parse_timestamp(obj[name])


def _optional_string(obj: Mapping[str, Any], name: str, limit: int, pattern: re.Pattern[str] | None = None) -> None:
    v = obj.get(name)
    if v is None:
        return
    if type(v) is not str or len(v) > limit or (pattern is not None and pattern.fullmatch(v) is None):
        raise Invalid


def _one_of(obj: Mapping[str, Any], name: str, allowed: frozenset[str]) -> str:
    v = obj.get(name)
    if type(v) is not str or v not in allowed:
        raise Invalid
    return v


def key_text(key: bytes | None) -> str | None:
    """A record key as text, or None when there is none or it is not UTF-8."""
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
    """`(content_id, Content)` of a valid `content.events` record; raise `Invalid` otherwise."""
    obj = _object(value)
    event_id = _identifier(obj, "event_id")
    op = _one_of(obj, "op", frozenset({"upsert", "delete"}))
    content_id = _identifier(obj, "content_id")
    author_id = _identifier(obj, "author_id")
    event_time = parse_timestamp(obj.get("event_time"))
    if key_text(key) != author_id:
        raise Invalid
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
    author_id = key_text(key)
    if author_id is None or not 1 <= len(author_id) <= _ID_MAX:
        return None
    try:
        return author_id, _identifier(_object(value), "content_id")
    except Invalid:
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
    """What the rule reads of a valid profile."""

    birth_date: dt.date | None
    country: str | None
    notified_at: dt.datetime | None


def parse_profile(account_id: str, value: bytes) -> Profile:
    """A valid `accounts.profiles` value for `account_id`; raise `Invalid` otherwise."""
    obj = _object(value)
    if _identifier(obj, "account_id") != account_id:
        raise Invalid
    parse_timestamp(obj.get("updated_at"))
    birth: dt.date | None = None
    raw_birth = obj.get("birth_date")
    if raw_birth is not None:
        if type(raw_birth) is not str or _DATE.fullmatch(raw_birth) is None:
            raise Invalid
        try:
            birth = dt.date.fromisoformat(raw_birth)
        except ValueError:
            raise Invalid from None
        if birth.year > MAX_YEAR:
            raise Invalid
    country = obj.get("country")
    if country is not None and (type(country) is not str or _COUNTRY.fullmatch(country) is None):
        raise Invalid
    return Profile(birth, country, _optional_timestamp(obj, "notified_at"))


def parse_objection(account_id: str, value: bytes) -> bool:
    """Whether a valid `accounts.objections` value says `objected`; raise `Invalid` otherwise."""
    obj = _object(value)
    if _identifier(obj, "account_id") != account_id:
        raise Invalid
    status = _one_of(obj, "status", frozenset({"objected", "withdrawn"}))
    parse_timestamp(obj.get("at"))
    _identifier(obj, "source")
    _identifier(obj, "request_id")
    return status == "objected"


def held_copy(author_id: str, content_id: str, value: bytes) -> Content | None:
    """The content event a deferred changelog value holds (`{"due_ms": ..., "content": {...}}`), if readable."""
    obj = json_object(value)
    held = obj.get("content") if obj is not None else None
    if type(held) is not dict:
        return None
    try:
        # A copy has no broker time of its own: the epoch, so it never counts as a recent change.
        named, copy = parse_content(author_id.encode("utf-8"), orjson.dumps(held), _EPOCH)
    except (Invalid, orjson.JSONEncodeError):
        return None
    return copy if named == content_id else None


RETRACTION_FIELDS: Final = frozenset({"content_id", "retracted_at", "cause", "policy_version"})
_RETRACT_CAUSES: Final = frozenset(
    {"objection", "account_deleted", "account_changed", "content_deleted", "visibility_changed", "unreadable_update"}
)


def parse_retraction(key: bytes | None, value: bytes | None) -> tuple[str, dt.datetime]:
    """`(content_id, retracted_at)` of a valid `training.retractions` record; raise `Invalid` otherwise.

    Valid means exactly the schema's four fields (schemas/training.retractions.schema.json),
    each of its type, and a `content_id` equal to the key.
    """
    obj = _object(value)
    if obj.keys() != RETRACTION_FIELDS:
        raise Invalid
    content_id = _identifier(obj, "content_id")
    retracted_at = parse_timestamp(obj.get("retracted_at"))
    _one_of(obj, "cause", _RETRACT_CAUSES)
    version = obj.get("policy_version")
    if type(version) is not str or not version or key_text(key) != content_id:
        raise Invalid
    return content_id, retracted_at


def json_object(value: bytes) -> dict[str, Any] | None:
    """A value parsed as a JSON object, or None when it is not one."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return obj if type(obj) is dict else None
