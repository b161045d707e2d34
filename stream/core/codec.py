"""Bytes <-> models for every topic: the only module that knows the wire format.

Decoding is orjson plus hand-written checks that accept exactly what the JSON
Schemas under `schemas/` accept (`tests/unit/test_codec_schema.py` proves it against
`jsonschema`, which is far too slow for the hot path). Bad input is not an exception
but a `Rejected` value: a `DeadLetterReason` and a detail that names the field and
the problem, never the payload, the text, a birth date or an id.

Owns: JSON parsing, field checks, key checks, timestamp parsing and formatting,
serialisation. Must not: decide eligibility, build output records, touch Kafka.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

import orjson

from stream.core.models import (
    ContentEvent,
    ContentType,
    DeadLetterReason,
    Objection,
    ObjectionStatus,
    Op,
    Platform,
    Profile,
    Visibility,
)
from stream.errors import StreamError

# Bounds from the schemas: big enough for any real record, small enough that a
# runaway producer's megabyte string is a dead letter, not state or a feed record.
ID_MAX_LENGTH: Final = 256
TEXT_MAX_LENGTH: Final = 100_000
MEDIA_URI_MAX_LENGTH: Final = 2048
LANGUAGE_MAX_LENGTH: Final = 35
# The latest year of a date or timestamp the rule can compute with. The rule adds at
# most the policy's minimum age (<= 150 years, `policy.MAX_MINIMUM_AGE`) or notice
# period (<= 10 years) to a date, and Python's dates end in year 9999: a later year,
# though schema-valid, is unreadable (contract: "Unreadable records fail closed").
MAX_YEAR: Final = 9800

# The schema patterns, used with fullmatch (so no `$`-before-newline surprise) and
# with [0-9] rather than \d, which in Python also matches non-ASCII digits. The
# timestamp's pattern is checked by hand (`timestamp_pattern_matches`).
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")
_LANGUAGE_RE: Final = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")

_E = TypeVar("_E", bound=StrEnum)


def _members(enum: type[_E]) -> Mapping[str, _E]:
    # A dict lookup is several times faster than calling the enum class.
    return {member.value: member for member in enum}


_OPS: Final = _members(Op)
_CONTENT_TYPES: Final = _members(ContentType)
_PLATFORMS: Final = _members(Platform)
_VISIBILITIES: Final = _members(Visibility)
_OBJECTION_STATUSES: Final = _members(ObjectionStatus)

_JSON_TYPE_NAMES: Final[Mapping[type, str]] = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input record that cannot be processed: it becomes a dead letter."""

    reason: DeadLetterReason
    detail: str  # human-readable; never the payload, text, birth dates or raw ids


class _FieldError(StreamError):
    """Raised inside this module when a field breaks the schema; caught here, never escapes."""


def _digits(s: str, first: int, last: int) -> bool:
    """Whether `s[first:last]` is all ASCII digits (48-57), read without slicing."""
    for i in range(first, last):
        c = ord(s[i])
        if c < 48 or c > 57:
            return False
    return True


def timestamp_pattern_matches(s: str) -> bool:
    """Whether `s` matches the schema's timestamp pattern, without the regex engine.

    The pattern: `^[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]
    (\\.[0-9]{1,9})?(Z|\\+00:00)$`. Checked character by character through `ord`, which
    the compiled core reads without making a string: a content event has two timestamps,
    and Python's regex engine costs more per timestamp than this (bench/notes.md,
    "Instructions per event"). tests/unit/test_codec_schema.py checks that this answers
    as the pattern does.
    """
    n = len(s)
    if n < 20:
        return False
    if ord(s[n - 1]) == 90:  # "Z"
        end = n - 1
    elif s.endswith("+00:00"):
        end = n - 6
    else:
        return False
    if end != 19 and not (21 <= end <= 29 and ord(s[19]) == 46):  # "."
        return False
    # The separators: "-" (45) at 4 and 7, "T" (84) at 10, ":" (58) at 13 and 16.
    if ord(s[4]) != 45 or ord(s[7]) != 45 or ord(s[10]) != 84 or ord(s[13]) != 58 or ord(s[16]) != 58:
        return False
    # Every other character before the zone is a digit [0-9], not one of another
    # script (which str.isdigit would take).
    if not (
        _digits(s, 0, 4)
        and _digits(s, 5, 7)
        and _digits(s, 8, 10)
        and _digits(s, 11, 13)
        and _digits(s, 14, 16)
        and _digits(s, 17, 19)
        and _digits(s, 20, end)
    ):
        return False
    hour = (ord(s[11]) - 48) * 10 + ord(s[12]) - 48
    return hour <= 23 and ord(s[14]) <= 53 and ord(s[17]) <= 53  # minute and second below 60


def parse_timestamp(s: str) -> dt.datetime:
    """Parse an RFC 3339 UTC timestamp (`Z` or `+00:00`) into an aware UTC datetime.

    Fractional digits beyond microseconds are truncated. Raises ValueError, with a
    message that does not repeat the input, for anything else.
    """
    if not timestamp_pattern_matches(s):
        raise ValueError("not an RFC 3339 UTC timestamp (YYYY-MM-DDTHH:MM:SS[.f], ending in Z or +00:00)")
    try:
        # After the pattern, fromisoformat only still rejects impossible dates; it
        # returns tzinfo=dt.UTC for both `Z` and `+00:00`.
        return dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError("not a real calendar date-time") from None


def format_timestamp(d: dt.datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with `Z`; microseconds only if nonzero."""
    if d.utcoffset() is None:
        raise ValueError("naive datetime: every timestamp on the wire is UTC")
    # isoformat() of a UTC datetime ends in "+00:00" and omits zero microseconds.
    return d.astimezone(dt.UTC).isoformat()[:-6] + "Z"


def dumps(obj: Mapping[str, object]) -> bytes:
    """Serialise an output record; any datetime in it is written with `Z` like `format_timestamp`.

    An enum member is written as its value (orjson does it natively; the records pass
    members, not `.value`, which under mypyc is a Python property call per field).
    """
    return orjson.dumps(obj if isinstance(obj, dict) else dict(obj), option=orjson.OPT_UTC_Z)


def decode_content(key: bytes | None, value: bytes | None) -> ContentEvent | Rejected:
    """Decode a `content.events` record; the key must equal `author_id`."""
    if value is None:
        return Rejected(
            DeadLetterReason.SCHEMA_VIOLATION, "value is null (a tombstone); a content event must be a JSON object"
        )
    obj = _load(value)
    if isinstance(obj, Rejected):
        return obj
    event = _valid_content_event(obj)
    if event is None:
        try:
            event = _content_event(obj)
        except _FieldError as exc:
            return Rejected(DeadLetterReason.SCHEMA_VIOLATION, str(exc))
    if event.event_time.year > MAX_YEAR or (event.created_at is not None and event.created_at.year > MAX_YEAR):
        dates = (event.event_time,) if event.created_at is None else (event.event_time, event.created_at)
        return _out_of_range(dates, ("event_time", "created_at")) or event
    # orjson never yields a lone surrogate, so every decoded id encodes; the key equals
    # `author_id` exactly when its bytes are the id's UTF-8 (what `_key_mismatch` checks).
    if key is None or key != event.author_id.encode():
        return _key_mismatch(key, event.author_id, "author_id") or event
    return event


def encode_content(event: ContentEvent) -> bytes:
    """The contract's fields of a decoded content event, as a `content.events` value.

    `decode_content` of the result gives the event back. A copy the filter keeps (a
    held item) is this, not the record as it arrived: unknown extra fields, allowed on
    input, would go along unbounded (a record the broker refuses) and unminimised.
    """
    fields: dict[str, object] = {
        "event_id": event.event_id,
        "op": event.op,
        "content_id": event.content_id,
        "author_id": event.author_id,
        "event_time": format_timestamp(event.event_time),
    }
    if event.op is Op.UPSERT:
        assert event.content_type is not None and event.platform is not None and event.visibility is not None
        assert event.created_at is not None  # decode_content sets all four on an upsert
        fields |= {
            "content_type": event.content_type,
            "platform": event.platform,
            "visibility": event.visibility,
            "created_at": format_timestamp(event.created_at),
            "text": event.text,
            "media_uri": event.media_uri,
            "language": event.language,
        }
    return orjson.dumps(fields)


def decode_profile(key: bytes | None, value: bytes | None) -> Profile | Rejected | None:
    """Decode an `accounts.profiles` record; None is a tombstone (the account was deleted)."""
    return _decode_account_record(key, value, _profile)


def decode_objection(key: bytes | None, value: bytes | None) -> Objection | Rejected | None:
    """Decode an `accounts.objections` record; None is a tombstone (no objection on record)."""
    return _decode_account_record(key, value, _objection)


_A = TypeVar("_A", Profile, Objection)


def _decode_account_record(
    key: bytes | None, value: bytes | None, build: Callable[[dict[str, object]], _A]
) -> _A | Rejected | None:
    """The shape both compacted account topics share: keyed by account id, a null value a tombstone."""
    if value is None:
        return _tombstone_key_problem(key)
    obj = _load(value)
    if isinstance(obj, Rejected):
        return obj
    try:
        record = build(obj)
    except _FieldError as exc:
        return Rejected(DeadLetterReason.SCHEMA_VIOLATION, str(exc))
    if isinstance(record, Profile):
        problem = _out_of_range(
            (record.birth_date, record.notified_at, record.updated_at), ("birth_date", "notified_at", "updated_at")
        )
    else:
        problem = _out_of_range((record.at,), ("at",))
    return problem or _key_mismatch(key, record.account_id, "account_id") or record


def _profile(obj: dict[str, object]) -> Profile:
    return Profile(
        account_id=_identifier(obj, "account_id"),
        birth_date=_optional_date(obj, "birth_date"),
        country=_optional_country(obj, "country"),
        notified_at=_optional_timestamp(obj, "notified_at"),
        updated_at=_timestamp(obj, "updated_at"),
    )


def _objection(obj: dict[str, object]) -> Objection:
    return Objection(
        account_id=_identifier(obj, "account_id"),
        status=_enum(obj, "status", _OBJECTION_STATUSES),
        at=_timestamp(obj, "at"),
        source=_identifier(obj, "source"),
        request_id=_identifier(obj, "request_id"),
    )


def _load(value: bytes) -> dict[str, object] | Rejected:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # orjson's messages are fixed phrases ("unexpected character", "str is not
        # valid UTF-8: ..."); they never quote the document.
        return Rejected(DeadLetterReason.MALFORMED_JSON, f"value is not UTF-8 JSON: {exc.msg} (at position {exc.pos})")
    if type(obj) is not dict:
        return Rejected(DeadLetterReason.NOT_AN_OBJECT, f"value is a JSON {_json_type(obj)}, not an object")
    return obj


def _content_event(obj: dict[str, object]) -> ContentEvent:
    event_id = _identifier(obj, "event_id")
    op = _enum(obj, "op", _OPS)
    content_id = _identifier(obj, "content_id")
    author_id = _identifier(obj, "author_id")
    event_time = _timestamp(obj, "event_time")
    if op is Op.DELETE:
        # A delete's other fields are ignored, not validated: a delete must never
        # be dead-lettered over a field it does not need.
        return ContentEvent(event_id=event_id, op=op, content_id=content_id, author_id=author_id, event_time=event_time)
    return ContentEvent(
        event_id=event_id,
        op=op,
        content_id=content_id,
        author_id=author_id,
        event_time=event_time,
        content_type=_enum(obj, "content_type", _CONTENT_TYPES),
        platform=_enum(obj, "platform", _PLATFORMS),
        visibility=_enum(obj, "visibility", _VISIBILITIES),
        created_at=_timestamp(obj, "created_at"),
        text=_optional_string(obj, "text", TEXT_MAX_LENGTH),
        media_uri=_optional_string(obj, "media_uri", MEDIA_URI_MAX_LENGTH),
        language=_optional_language(obj, "language"),
    )


def _valid_content_event(obj: dict[str, object]) -> ContentEvent | None:
    """The event `_content_event` builds from `obj` when it is valid, in fewer steps; None otherwise.

    The hot path: most records are valid, and checking them field by field through
    `_content_event`'s helpers costs a call or two per field. This accepts only what
    those helpers accept and builds the same event; for anything else it returns None
    and `_content_event` finds the first problem and words the dead letter's detail.
    """
    get = obj.get
    event_id, content_id, author_id = get("event_id"), get("content_id"), get("author_id")
    if not (
        type(event_id) is str
        and type(content_id) is str
        and type(author_id) is str
        and 0 < len(event_id) <= ID_MAX_LENGTH
        and 0 < len(content_id) <= ID_MAX_LENGTH
        and 0 < len(author_id) <= ID_MAX_LENGTH
    ):
        return None
    op_raw = get("op")
    op = _OPS.get(op_raw) if type(op_raw) is str else None
    event_time = _valid_timestamp(get("event_time"))
    if op is None or event_time is None:
        return None
    if op is Op.DELETE:
        return ContentEvent(event_id, op, content_id, author_id, event_time)
    type_raw, platform_raw, visibility_raw = get("content_type"), get("platform"), get("visibility")
    content_type = _CONTENT_TYPES.get(type_raw) if type(type_raw) is str else None
    platform = _PLATFORMS.get(platform_raw) if type(platform_raw) is str else None
    visibility = _VISIBILITIES.get(visibility_raw) if type(visibility_raw) is str else None
    created_at = _valid_timestamp(get("created_at"))
    if content_type is None or platform is None or visibility is None or created_at is None:
        return None
    text, media_uri, language = get("text"), get("media_uri"), get("language")
    if text is not None and (type(text) is not str or len(text) > TEXT_MAX_LENGTH):
        return None
    if media_uri is not None and (type(media_uri) is not str or len(media_uri) > MEDIA_URI_MAX_LENGTH):
        return None
    if language is not None and (
        type(language) is not str or len(language) > LANGUAGE_MAX_LENGTH or _LANGUAGE_RE.fullmatch(language) is None
    ):
        return None
    return ContentEvent(
        event_id,
        op,
        content_id,
        author_id,
        event_time,
        content_type,
        platform,
        visibility,
        created_at,
        text,
        media_uri,
        language,
    )


def _valid_timestamp(v: object) -> dt.datetime | None:
    """`parse_timestamp(v)` if `v` is a string it accepts, else None."""
    if type(v) is not str or not timestamp_pattern_matches(v):
        return None
    try:
        return dt.datetime.fromisoformat(v)
    except ValueError:
        return None


def _key_mismatch(key: bytes | None, expected: str, field: str) -> Rejected | None:
    if key is None:
        return Rejected(DeadLetterReason.KEY_MISMATCH, f"record has no key; the key must equal `{field}`")
    try:
        decoded = key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(DeadLetterReason.KEY_MISMATCH, f"key is not valid UTF-8, so it cannot equal `{field}`")
    if decoded != expected:
        return Rejected(DeadLetterReason.KEY_MISMATCH, f"key does not equal `{field}`")
    return None


def _tombstone_key_problem(key: bytes | None) -> Rejected | None:
    # A tombstone names its account only through the key, so the key must be an
    # account id a value could have carried.
    if key is None:
        return Rejected(DeadLetterReason.KEY_MISMATCH, "tombstone has no key; it must carry the account id")
    try:
        decoded = key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(DeadLetterReason.KEY_MISMATCH, "tombstone key is not valid UTF-8, so it is no account id")
    if not 1 <= len(decoded) <= ID_MAX_LENGTH:
        return Rejected(
            DeadLetterReason.KEY_MISMATCH, f"tombstone key is no account id (must be 1 to {ID_MAX_LENGTH} characters)"
        )
    return None


def _json_type(v: object) -> str:
    return _JSON_TYPE_NAMES.get(type(v), type(v).__name__)


def _wrong(obj: dict[str, object], name: str, v: object, expected: str) -> _FieldError:
    if v is None and name not in obj:
        return _FieldError(f"field `{name}` is required but missing")
    return _FieldError(f"field `{name}` must be {expected}, got {_json_type(v)}")


def _identifier(obj: dict[str, object], name: str) -> str:
    v = obj.get(name)
    if type(v) is not str:
        raise _wrong(obj, name, v, "a string")
    if not v:
        raise _FieldError(f"field `{name}` must not be empty")
    if len(v) > ID_MAX_LENGTH:
        raise _FieldError(f"field `{name}` is longer than {ID_MAX_LENGTH} characters")
    return v


def _enum(obj: dict[str, object], name: str, members: Mapping[str, _E]) -> _E:
    v = obj.get(name)
    member = members.get(v) if type(v) is str else None
    if member is None:
        if v is None and name not in obj:
            raise _FieldError(f"field `{name}` is required but missing")
        # The value itself is not repeated: it could be anything, payload included.
        raise _FieldError(f"field `{name}` must be one of {', '.join(members)}")
    return member


def _timestamp(obj: dict[str, object], name: str) -> dt.datetime:
    v = obj.get(name)
    if type(v) is not str:
        raise _wrong(obj, name, v, "an RFC 3339 UTC timestamp string")
    try:
        return parse_timestamp(v)
    except ValueError as exc:
        raise _FieldError(f"field `{name}` is {exc}") from None


def _optional_timestamp(obj: dict[str, object], name: str) -> dt.datetime | None:
    return None if obj.get(name) is None else _timestamp(obj, name)


def _optional_string(obj: dict[str, object], name: str, max_length: int) -> str | None:
    v = obj.get(name)
    if v is None:
        return None
    if type(v) is not str:
        raise _FieldError(f"field `{name}` must be a string or null, got {_json_type(v)}")
    if len(v) > max_length:
        raise _FieldError(f"field `{name}` is longer than {max_length} characters")
    return v


def _optional_language(obj: dict[str, object], name: str) -> str | None:
    v = _optional_string(obj, name, LANGUAGE_MAX_LENGTH)
    if v is not None and _LANGUAGE_RE.fullmatch(v) is None:
        raise _FieldError(f"field `{name}` is not a language tag like `en` or `pt-BR`")
    return v


def _optional_country(obj: dict[str, object], name: str) -> str | None:
    v = obj.get(name)
    if v is None:
        return None
    if type(v) is not str:
        raise _FieldError(f"field `{name}` must be a string or null, got {_json_type(v)}")
    if _COUNTRY_RE.fullmatch(v) is None:
        raise _FieldError(f"field `{name}` is not two upper-case letters (ISO 3166-1 alpha-2)")
    return v


def _optional_date(obj: dict[str, object], name: str) -> dt.date | None:
    v = obj.get(name)
    if v is None:
        return None
    if type(v) is not str:
        raise _FieldError(f"field `{name}` must be a YYYY-MM-DD string or null, got {_json_type(v)}")
    if _DATE_RE.fullmatch(v) is None:
        raise _FieldError(f"field `{name}` is not a YYYY-MM-DD date")
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        raise _FieldError(f"field `{name}` is not a real calendar date") from None


def _out_of_range(dates: tuple[dt.date | None, ...], names: tuple[str, ...]) -> Rejected | None:
    """A schema-valid record with a date the rule cannot compute with (after `MAX_YEAR`) is unreadable too."""
    for day, name in zip(dates, names, strict=False):
        if day is not None and day.year > MAX_YEAR:
            return Rejected(
                DeadLetterReason.OUT_OF_RANGE, f"field `{name}` is after year {MAX_YEAR}, beyond what the rule handles"
            )
    return None


# -- our internal topics -------------------------------------------------------------
#
# The filter's own changelogs are read back only by the filter (and the deferred one
# by the verifier, as a wire format): their values are written and read here, so one
# module owns every JSON the filter puts on a topic.


def encode_deferred(due_ms: int, content: bytes) -> bytes:
    """A deferred changelog value: when the held item is due (epoch ms) and its copy (`encode_content`)."""
    return orjson.dumps({"due_ms": due_ms, "content": orjson.Fragment(content)})


def decode_deferred(value: bytes) -> tuple[int, bytes]:
    """`(due ms, held copy)` of a deferred changelog value written by `encode_deferred`."""
    data = orjson.loads(value)
    return int(data["due_ms"]), orjson.dumps(data["content"])


def encode_index(event: ContentEvent) -> bytes:
    """A published index value: what deciding a published item again needs, without its text."""
    assert event.content_type is not None and event.created_at is not None
    return dumps(
        {
            "content_type": event.content_type,
            "created_at": event.created_at,  # `dumps` writes it as `format_timestamp` would
            "event_id": event.event_id,
        }
    )


def decode_index(author_id: str, content_id: str, raw: bytes) -> ContentEvent:
    """The published item an index value stands for, as the public upsert the rule allowed."""
    data = orjson.loads(raw)
    created_at = parse_timestamp(data["created_at"])
    return ContentEvent(
        event_id=data["event_id"],
        op=Op.UPSERT,
        content_id=content_id,
        author_id=author_id,
        event_time=created_at,
        content_type=ContentType(data["content_type"]),
        visibility=Visibility.PUBLIC,
        created_at=created_at,
    )


# -- what an unreadable record still names ---------------------------------------------


def identifier_text(raw: object) -> str | None:
    """`raw` as an identifier the contract allows (a string of 1 to ID_MAX_LENGTH characters), or None."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if type(raw) is not str or not 1 <= len(raw) <= ID_MAX_LENGTH:
        return None
    return raw


def account_of_key(key: bytes | None) -> str | None:
    """The account a state record's key names, if it is an id a readable record could carry."""
    return identifier_text(key)


def item_named_by(key: bytes | None, value: bytes | None) -> tuple[str, str] | None:
    """The (author, content id) an unreadable content record still names: its key and `content_id`."""
    author_id = identifier_text(key)
    if author_id is None or value is None:
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    content_id = identifier_text(obj.get("content_id"))
    return None if content_id is None else (author_id, content_id)
