"""The codec accepts exactly what the JSON Schemas accept, and the schemas say the contract.

`jsonschema` with a FormatChecker that really checks `date-time` and `date` is the
oracle: property tests generate valid records and near misses for each input topic
and compare the codec's verdict (and, on acceptance, the decoded fields) with it.
Table-driven tests pin each dead-letter reason and its detail, and show that the
output schemas accept the records the filter means to write and nothing else.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from stream.core import codec, records
from stream.core.codec import Rejected
from stream.core.models import (
    ContentEvent,
    ContentType,
    DeadLetterReason,
    Objection,
    ObjectionStatus,
    Op,
    Platform,
    Profile,
    Reason,
    RetractCause,
    SkipReason,
    Visibility,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
INPUT_TOPICS = ("content.events", "accounts.profiles", "accounts.objections")
OUTPUT_TOPICS = ("training.feed", "eligibility.decisions", "content.events.dlq", "training.retractions")
FORMAT_CHECKER = FormatChecker()


def _schema(topic: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{topic}.schema.json").read_text(encoding="utf-8"))
    return schema


VALIDATORS = {
    topic: Draft202012Validator(_schema(topic), format_checker=FORMAT_CHECKER) for topic in INPUT_TOPICS + OUTPUT_TOPICS
}

TIMESTAMP_VALIDATOR = VALIDATORS["content.events"].evolve(schema=_schema("content.events")["$defs"]["timestamp"])

Decoder = Callable[[bytes | None, bytes | None], object]
DECODERS: dict[str, Decoder] = {
    "content.events": codec.decode_content,
    "accounts.profiles": codec.decode_profile,
    "accounts.objections": codec.decode_objection,
}
KEY_FIELDS = {"content.events": "author_id", "accounts.profiles": "account_id", "accounts.objections": "account_id"}

# Sized so the whole file runs in well under 30 s; raise max_examples locally to dig.
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# ---------------------------------------------------------------------------
# The oracle


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # RFC 8259 leaves number range to the parser; orjson (and so the filter) refuses
    # numbers that overflow a double, and the oracle follows it.
    number = float(text)
    if math.isinf(number):
        raise ValueError("number overflows a double")
    return number


def _finite_int(text: str) -> int:
    number = int(text)
    float(number)  # OverflowError beyond a double, as orjson
    return number


def _check_utf8(v: object) -> None:
    # RFC 8259 leaves an escaped lone surrogate (`"\ud800"`) to the parser: json yields
    # it, orjson (and so the filter) refuses it, and the oracle follows orjson. Such a
    # string cannot be written as UTF-8 (UnicodeEncodeError). An object was checked by
    # `_utf8_object` before its duplicate keys were merged.
    if isinstance(v, str):
        v.encode("utf-8")
    elif isinstance(v, list):
        for item in v:
            _check_utf8(item)


def _utf8_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    for name, v in pairs:
        _check_utf8(name)
        _check_utf8(v)
    return dict(pairs)


def _oracle(topic: str, key: bytes | None, value: bytes | None) -> DeadLetterReason | None:
    """What the contract says should happen: a dead-letter reason, or None for "accept"."""
    if value is None:
        if topic == "content.events":
            return DeadLetterReason.SCHEMA_VIOLATION
        # A tombstone names its account by the key alone: it must be a valid account id.
        key_text = _key_text(key)
        valid_id = key_text is not None and VALIDATORS[topic].evolve(
            schema=VALIDATORS[topic].schema["$defs"]["identifier"]
        ).is_valid(key_text)
        return None if valid_id else DeadLetterReason.KEY_MISMATCH
    try:
        obj = json.loads(
            value.decode("utf-8"),
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_finite_int,
            object_pairs_hook=_utf8_object,
        )
        _check_utf8(obj)
    except (UnicodeError, ValueError, OverflowError):
        return DeadLetterReason.MALFORMED_JSON
    if not isinstance(obj, dict):
        return DeadLetterReason.NOT_AN_OBJECT
    if not VALIDATORS[topic].is_valid(obj):
        return DeadLetterReason.SCHEMA_VIOLATION
    # Schema-valid, but a date after the year the rule computes with: unreadable too.
    if any(int(obj[name][:4]) > codec.MAX_YEAR for name in _DATE_FIELDS[topic](obj) if obj.get(name) is not None):
        return DeadLetterReason.OUT_OF_RANGE
    if _key_text(key) != obj[KEY_FIELDS[topic]]:
        return DeadLetterReason.KEY_MISMATCH
    return None


# The date and timestamp fields the codec reads, per topic (a delete's others are ignored).
_DATE_FIELDS: dict[str, Any] = {
    "content.events": lambda obj: ("event_time",) if obj["op"] == "delete" else ("event_time", "created_at"),
    "accounts.profiles": lambda obj: ("birth_date", "notified_at", "updated_at"),
    "accounts.objections": lambda obj: ("at",),
}


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


_TS_PARTS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?")


def _expected_timestamp(s: str) -> dt.datetime:
    # Independent of the codec: components by hand, fraction truncated to microseconds.
    m = _TS_PARTS.match(s)
    assert m is not None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int(((m.group(7) or "") + "000000")[:6])
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=dt.UTC)


def _optional_ts(s: object) -> dt.datetime | None:
    return None if s is None else _expected_timestamp(str(s))


def _expected_record(topic: str, obj: dict[str, Any]) -> object:
    if topic == "content.events":
        if obj["op"] == "delete":
            return ContentEvent(
                event_id=obj["event_id"],
                op=Op.DELETE,
                content_id=obj["content_id"],
                author_id=obj["author_id"],
                event_time=_expected_timestamp(obj["event_time"]),
            )
        return ContentEvent(
            event_id=obj["event_id"],
            op=Op.UPSERT,
            content_id=obj["content_id"],
            author_id=obj["author_id"],
            event_time=_expected_timestamp(obj["event_time"]),
            content_type=ContentType(obj["content_type"]),
            platform=Platform(obj["platform"]),
            visibility=Visibility(obj["visibility"]),
            created_at=_expected_timestamp(obj["created_at"]),
            text=obj.get("text"),
            media_uri=obj.get("media_uri"),
            language=obj.get("language"),
        )
    if topic == "accounts.profiles":
        birth_date = obj.get("birth_date")
        return Profile(
            account_id=obj["account_id"],
            birth_date=None if birth_date is None else dt.date(*map(int, birth_date.split("-"))),
            country=obj.get("country"),
            notified_at=_optional_ts(obj.get("notified_at")),
            updated_at=_expected_timestamp(obj["updated_at"]),
        )
    return Objection(
        account_id=obj["account_id"],
        status=ObjectionStatus(obj["status"]),
        at=_expected_timestamp(obj["at"]),
        source=obj["source"],
        request_id=obj["request_id"],
    )


def _assert_codec_agrees(topic: str, key: bytes | None, value: bytes | None) -> None:
    expected = _oracle(topic, key, value)
    if currently_in_test_context():
        event(f"verdict: {expected or 'accepted'}")  # see pytest --hypothesis-show-statistics
    result = DECODERS[topic](key, value)
    if expected is not None:
        assert isinstance(result, Rejected), f"oracle says {expected}, codec accepted {result!r}"
        assert result.reason is expected, result.detail
        assert result.detail
        return
    assert not isinstance(result, Rejected), f"oracle accepts, codec says {result}"
    if value is None:
        assert result is None
        return
    obj = orjson.loads(value)
    assert result == _expected_record(topic, obj)
    for name in ("event_time", "created_at", "notified_at", "updated_at", "at"):
        stamp = getattr(result, name, None)
        assert stamp is None or stamp.tzinfo is dt.UTC


# ---------------------------------------------------------------------------
# Strategies: valid values and near misses for each field

identifiers = st.text(min_size=1, max_size=12)
id_near_misses = st.one_of(
    st.just(""),
    st.sampled_from([255, 256, 257, 1000]).flatmap(lambda n: st.sampled_from(["x", "é", "😀"]).map(lambda c: c * n)),
    st.text(max_size=3),
)


@st.composite
def valid_timestamps(draw: st.DrawFn) -> str:
    # Valid and within the years the rule computes with (later ones are near misses below).
    moment = draw(
        st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(codec.MAX_YEAR, 12, 31, 23, 59, 59))
    )
    digits = draw(st.integers(0, 9))
    fraction = f"{moment.microsecond:06d}" + draw(st.text("0123456789", min_size=3, max_size=3))
    suffix = draw(st.sampled_from(["Z", "+00:00"]))
    dot = "." + fraction[:digits] if digits else ""
    return moment.isoformat(timespec="seconds") + dot + suffix


@st.composite
def timestamp_near_misses(draw: st.DrawFn) -> str:
    """Timestamps built from components that are often out of range; the oracle decides."""
    year = draw(
        st.sampled_from(
            ["0000", "0001", "2024", "2026", "9800", "9801", "9990", "9999", "202", "20266", "\uff12\uff10\uff12\uff16"]
        )
    )
    month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    hour, minute, second = draw(st.integers(0, 24)), draw(st.integers(0, 60)), draw(st.integers(0, 61))
    separator = draw(st.sampled_from(["T", "T", "T", "t", " "]))
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", max_size=11).map(lambda d: "." + d)))
    suffix = draw(
        st.sampled_from(
            ["Z", "+00:00", "z", "-00:00", "+02:00", "-05:30", "+0000", "", "Z\n", "+00:00\n", " Z", "+00:00Z"]
        )
    )
    return f"{year}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}{fraction}{suffix}"


timestamps_any = st.one_of(valid_timestamps(), timestamp_near_misses(), st.text(max_size=30))


@st.composite
def dates_any(draw: st.DrawFn) -> str:
    year = draw(
        st.sampled_from(["0000", "0001", "1990", "2000", "2004", "2100", "9800", "9990", "9999", "199", "٢٠٠٠"])
    )
    month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    suffix = draw(st.sampled_from(["", "", "", "\n", "T00:00:00Z", " "]))
    return f"{year}-{month:02d}-{day:02d}{suffix}"


languages_valid = st.from_regex(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,3}", fullmatch=True)
languages_any = st.one_of(
    languages_valid,
    languages_valid.map(lambda s: s + "\n"),
    st.just("en-" + "-".join(["abcdefgh"] * 4)),  # matches the pattern but is 38 > 35 characters
    st.text(max_size=12),
)
countries_any = st.one_of(
    st.from_regex(r"[A-Z]{2}", fullmatch=True), st.text("ABGRZbr1 \n", max_size=3), st.just("\uff27\uff22")
)


def _long_strings(limit: int) -> st.SearchStrategy[str]:
    return st.sampled_from([limit, limit + 1]).flatmap(lambda n: st.sampled_from(["x", "😀"]).map(lambda c: c * n))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


def _enum_values(enum: type[Any]) -> st.SearchStrategy[str]:
    return st.sampled_from([m.value for m in enum])


def _enum_near_misses(enum: type[Any]) -> st.SearchStrategy[object]:
    values = [m.value for m in enum]
    return st.one_of(
        st.sampled_from([v.upper() for v in values] + [v + " " for v in values] + ["", "unknown"]),
        st.text(max_size=10),
    )


# Per topic: field -> (valid values, near misses). `None` in valid values = may be absent or null.
FIELDS: dict[str, dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]] = {
    "content.events": {
        "event_id": (identifiers, id_near_misses),
        "op": (_enum_values(Op), _enum_near_misses(Op)),
        "content_id": (identifiers, id_near_misses),
        "author_id": (identifiers, id_near_misses),
        "event_time": (valid_timestamps(), timestamps_any),
        "content_type": (_enum_values(ContentType), _enum_near_misses(ContentType)),
        "platform": (_enum_values(Platform), _enum_near_misses(Platform)),
        "visibility": (_enum_values(Visibility), _enum_near_misses(Visibility)),
        "created_at": (valid_timestamps(), timestamps_any),
        "text": (st.one_of(st.none(), st.text(max_size=20)), _long_strings(codec.TEXT_MAX_LENGTH)),
        "media_uri": (st.one_of(st.none(), st.text(max_size=20)), _long_strings(codec.MEDIA_URI_MAX_LENGTH)),
        "language": (st.one_of(st.none(), languages_valid), languages_any),
    },
    "accounts.profiles": {
        "account_id": (identifiers, id_near_misses),
        "birth_date": (
            st.one_of(st.none(), st.dates(dt.date(1, 1, 1), dt.date(codec.MAX_YEAR, 12, 31)).map(dt.date.isoformat)),
            dates_any(),
        ),
        "country": (st.one_of(st.none(), st.sampled_from(["GB", "BR", "DE", "US", "ZZ"])), countries_any),
        "notified_at": (st.one_of(st.none(), valid_timestamps()), timestamps_any),
        "updated_at": (valid_timestamps(), timestamps_any),
    },
    "accounts.objections": {
        "account_id": (identifiers, id_near_misses),
        "status": (_enum_values(ObjectionStatus), _enum_near_misses(ObjectionStatus)),
        "at": (valid_timestamps(), timestamps_any),
        "source": (st.sampled_from(["form", "settings", "support"]), id_near_misses),
        "request_id": (identifiers, id_near_misses),
    },
}
OPTIONAL_NULLABLE = {"text", "media_uri", "language", "birth_date", "country", "notified_at"}
DELETE_FIELDS = ("event_id", "op", "content_id", "author_id", "event_time")


@st.composite
def valid_records(draw: st.DrawFn, topic: str) -> dict[str, Any]:
    record: dict[str, Any] = {}
    fields = FIELDS[topic]
    if topic == "content.events" and draw(_enum_values(Op)) == "delete":
        names: tuple[str, ...] = DELETE_FIELDS
    else:
        names = tuple(fields)
    for name in names:
        value = draw(fields[name][0])
        if value is None and draw(st.booleans()):
            continue  # optional and nullable: absent means null
        record[name] = value
    if topic == "content.events":
        record["op"] = "delete" if names is DELETE_FIELDS else "upsert"
        if names is DELETE_FIELDS and draw(st.booleans()):
            # A delete may carry the upsert fields, even broken ones: they are ignored.
            for name in set(fields) - set(DELETE_FIELDS):
                record[name] = draw(st.one_of(fields[name][0], fields[name][1], json_values))
    return record


@st.composite
def mutated_records(draw: st.DrawFn, topic: str) -> dict[str, Any]:
    record = draw(valid_records(topic))
    fields = FIELDS[topic]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["drop", "near_miss", "near_miss", "wrong_type", "extra"]))
        name = draw(st.sampled_from(sorted(fields)))
        if kind == "drop":
            record.pop(name, None)
        elif kind == "near_miss":
            record[name] = draw(fields[name][1])
        elif kind == "wrong_type":
            record[name] = draw(json_values)
        else:
            record[draw(st.text(max_size=8))] = draw(json_values)
    return record


@st.composite
def keys_for(draw: st.DrawFn, record: Mapping[str, Any], field: str) -> bytes | None:
    own = record.get(field)
    choice = draw(st.sampled_from(["own", "own", "own", "none", "other", "not_utf8", "padded"]))
    if choice == "own" and isinstance(own, str):
        return own.encode("utf-8")
    if choice == "none":
        return None
    if choice == "not_utf8":
        return b"\xff" + draw(st.binary(max_size=4))
    if choice == "padded" and isinstance(own, str):
        return (own + " ").encode("utf-8")
    return draw(st.text(max_size=6)).encode("utf-8")


# ---------------------------------------------------------------------------
# Properties: the codec agrees with the schema


@pytest.mark.parametrize("topic", INPUT_TOPICS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_decode_valid_record_accepted_with_equal_fields(topic: str, data: st.DataObject) -> None:
    record = data.draw(valid_records(topic))
    key = str(record[KEY_FIELDS[topic]]).encode("utf-8")
    value = orjson.dumps(record)
    assert _oracle(topic, key, value) is None, "the strategy must generate valid records"
    _assert_codec_agrees(topic, key, value)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_encode_content_keeps_only_the_contract_fields_and_decodes_to_the_same_event(data: st.DataObject) -> None:
    record = data.draw(valid_records("content.events"))
    record["an_unknown_field"] = data.draw(st.text(max_size=20))
    key = str(record["author_id"]).encode("utf-8")
    event = codec.decode_content(key, orjson.dumps(record))
    assert not isinstance(event, Rejected)
    encoded = codec.encode_content(event)
    assert codec.decode_content(key, encoded) == event
    assert _oracle("content.events", key, encoded) is None
    assert set(orjson.loads(encoded)) <= set(record) - {"an_unknown_field"} | {"text", "media_uri", "language"}


@pytest.mark.parametrize("topic", INPUT_TOPICS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_decode_mutated_record_verdict_matches_jsonschema(topic: str, data: st.DataObject) -> None:
    record = data.draw(mutated_records(topic))
    key = data.draw(keys_for(record, KEY_FIELDS[topic]))
    _assert_codec_agrees(topic, key, orjson.dumps(record))


@pytest.mark.parametrize("topic", INPUT_TOPICS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_decode_arbitrary_bytes_verdict_matches_jsonschema(topic: str, data: st.DataObject) -> None:
    valid = orjson.dumps(data.draw(valid_records(topic)))
    value = data.draw(
        st.one_of(
            st.none(),
            st.binary(max_size=40),
            json_values.map(orjson.dumps),
            st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),  # truncated
            st.binary(min_size=1, max_size=4).map(lambda junk: valid + junk),  # trailing junk
            st.just(b"\xef\xbb\xbf" + valid),  # byte order mark
        )
    )
    key = data.draw(st.one_of(st.none(), st.binary(max_size=6), identifiers.map(str.encode)))
    _assert_codec_agrees(topic, key, value)


# ---------------------------------------------------------------------------
# Hostile bytes: JSON a decoder that reads only what it needs might let through
#
# Spliced into a generated record (valid or mutated) as an unknown field, a duplicate
# of a known one or a delete's ignored field: escaped lone surrogates, invalid UTF-8,
# numbers at and beyond a double's range, nesting, odd Unicode. A decoder that skips
# what it does not read checking only the grammar (msgspec does, for unknown fields)
# would accept some of these where orjson, and so the contract's dead letters, refuse
# them (bench/notes.md, "Engine cost per event", E).

HOSTILE_JSON = [
    b'"\\ud800"',
    b'"\\udc00"',
    b'"\\ud800\\u0041"',
    b'"\\ud83d\\ude00"',  # a valid pair
    b'"\xff"',
    b'"\xed\xa0\x80"',  # a surrogate written as UTF-8
    b'"\xc0\xaf"',  # an overlong encoding
    b'"\xf4\x90\x80\x80"',  # beyond U+10FFFF
    b'"\\u0000"',
    '"\u2028\u2029\ufeff e\u0301 \U0001f600"'.encode(),
    b"1e400",
    b"-1E+309",
    b"1e-400",
    b"1.7976931348623157e308",
    b"1.7976931348623159e308",
    b"18446744073709551616",
    b"9" * 308,
    b"9" * 310,
    b"-0",
    b"[" * 100 + b"]" * 100,
    b'{"a":' * 100 + b"1" + b"}" * 100,
    b"[1e400]",
    b'{"b":[0,-1e999]}',
    b"true",
    b"null",
]
HOSTILE_NAMES = [
    b'"x"',
    b'"gen_sent_at"',
    b'""',
    b'"\\udfff"',
    b'"\xff"',
    b'"text"',
    b'"event_id"',
    b'"op"',
    b'"created_at"',
]


@st.composite
def hostile_content_values(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    record = draw(st.one_of(valid_records("content.events"), mutated_records("content.events")))
    body = orjson.dumps(record)
    member = draw(st.sampled_from(HOSTILE_NAMES)) + b":" + draw(st.sampled_from(HOSTILE_JSON))
    if body == b"{}":
        return record, b"{" + member + b"}"
    if draw(st.booleans()):
        return record, b"{" + member + b"," + body[1:]
    return record, body[:-1] + b"," + member + b"}"


@PROPERTY_SETTINGS
@given(data=st.data())
def test_decode_hostile_member_verdict_matches_jsonschema(data: st.DataObject) -> None:
    record, value = data.draw(hostile_content_values())
    key = data.draw(keys_for(record, "author_id"))
    _assert_codec_agrees("content.events", key, value)


@pytest.mark.parametrize("fragment", HOSTILE_JSON, ids=range(len(HOSTILE_JSON)))
def test_decode_hostile_unknown_field_on_valid_upsert_verdict_matches_jsonschema(fragment: bytes) -> None:
    # Each fragment once, in the field a live generator adds to every upsert.
    value = _with(_UPSERT)[:-1] + b',"gen_sent_at":' + fragment + b"}"
    _assert_codec_agrees("content.events", _KEY, value)


@pytest.mark.parametrize(("depth", "accepted"), [(500, True), (1023, True), (1024, False), (1100, False)])
def test_decode_deep_unknown_field_refused_beyond_orjson_depth(depth: int, accepted: bool) -> None:
    # Python's json (the oracle) gives up near 1000 levels, so this pins orjson's limit
    # by hand: 1024 levels, the document's own object included.
    value = _with(_UPSERT)[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
    result = codec.decode_content(_KEY, value)
    assert isinstance(result, ContentEvent) is accepted
    if not accepted:
        assert isinstance(result, Rejected)
        assert result.reason is DeadLetterReason.MALFORMED_JSON


# ---------------------------------------------------------------------------
# Table: every dead-letter reason, with a readable detail that leaks nothing

SECRET_ID = "acct-7f3a9c1e"
SECRET_TEXT = "my private words"
SECRET_BIRTH_DATE = "2011-05-17"

_UPSERT: dict[str, Any] = {
    "event_id": "evt-4b8d2e11",
    "op": "upsert",
    "content_id": "cnt-93be02aa",
    "content_type": "post",
    "platform": "instagram",
    "author_id": SECRET_ID,
    "visibility": "public",
    "created_at": "2026-11-28T09:15:00Z",
    "event_time": "2026-11-28T09:15:00.250+00:00",
    "text": SECRET_TEXT,
    "media_uri": None,
    "language": "en-GB",
}
_PROFILE: dict[str, Any] = {
    "account_id": SECRET_ID,
    "birth_date": SECRET_BIRTH_DATE,
    "country": "GB",
    "notified_at": "2026-10-01T00:00:00Z",
    "updated_at": "2026-10-01T00:00:00Z",
}
_OBJECTION: dict[str, Any] = {
    "account_id": SECRET_ID,
    "status": "objected",
    "at": "2026-11-28T09:15:00Z",
    "source": "form",
    "request_id": "req-1c0ffee0",
}
_KEY = SECRET_ID.encode()


_DROP = object()


def _with(base: Mapping[str, Any], **changes: Any) -> bytes:
    record = {**base, **changes}
    return orjson.dumps({k: v for k, v in record.items() if v is not _DROP})


REJECTION_CASES = [
    # (id, topic, key, value, reason, words the detail must contain)
    ("garbage", "content.events", _KEY, b"\xff\xfe not json", DeadLetterReason.MALFORMED_JSON, ["UTF-8"]),
    ("truncated", "accounts.profiles", _KEY, _with(_PROFILE)[:-1], DeadLetterReason.MALFORMED_JSON, ["JSON"]),
    ("nan", "content.events", _KEY, b'{"event_id": NaN}', DeadLetterReason.MALFORMED_JSON, ["JSON"]),
    ("empty_bytes", "accounts.objections", _KEY, b"", DeadLetterReason.MALFORMED_JSON, ["JSON"]),
    ("array", "content.events", _KEY, b"[1, 2]", DeadLetterReason.NOT_AN_OBJECT, ["array"]),
    ("json_null", "accounts.profiles", _KEY, b"null", DeadLetterReason.NOT_AN_OBJECT, ["null"]),
    ("string", "accounts.objections", _KEY, b'"objected"', DeadLetterReason.NOT_AN_OBJECT, ["string"]),
    ("content_tombstone", "content.events", _KEY, None, DeadLetterReason.SCHEMA_VIOLATION, ["null"]),
    # Schema-valid dates the rule cannot compute with (issue #16: year 10008 is out of range).
    (
        "birth_date_9990",
        "accounts.profiles",
        _KEY,
        _with(_PROFILE, birth_date="9990-06-01"),
        DeadLetterReason.OUT_OF_RANGE,
        ["birth_date", "9800"],
    ),
    (
        "notified_at_9999",
        "accounts.profiles",
        _KEY,
        _with(_PROFILE, notified_at="9999-12-31T23:59:59Z"),
        DeadLetterReason.OUT_OF_RANGE,
        ["notified_at"],
    ),
    (
        "created_at_9990",
        "content.events",
        _KEY,
        _with(_UPSERT, created_at="9990-01-01T00:00:00Z"),
        DeadLetterReason.OUT_OF_RANGE,
        ["created_at"],
    ),
    (
        "missing_id",
        "content.events",
        _KEY,
        _with(_UPSERT, event_id=_DROP),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["event_id", "missing"],
    ),
    (
        "empty_id",
        "content.events",
        _KEY,
        _with(_UPSERT, content_id=""),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["content_id", "empty"],
    ),
    (
        "number_id",
        "content.events",
        _KEY,
        _with(_UPSERT, event_id=7),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["event_id", "string", "number"],
    ),
    (
        "bool_visibility",
        "content.events",
        _KEY,
        _with(_UPSERT, visibility=True),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["visibility", "public"],
    ),
    (
        "unknown_op",
        "content.events",
        _KEY,
        _with(_UPSERT, op="edit"),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["op", "upsert, delete"],
    ),
    (
        "null_content_type",
        "content.events",
        _KEY,
        _with(_UPSERT, content_type=None),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["content_type", "message"],
    ),
    (
        "upsert_without_created_at",
        "content.events",
        _KEY,
        _with(_UPSERT, created_at=_DROP),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["created_at", "missing"],
    ),
    (
        "feb_30",
        "content.events",
        _KEY,
        _with(_UPSERT, created_at="2026-02-30T00:00:00Z"),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["created_at", "calendar"],
    ),
    (
        "offset",
        "content.events",
        _KEY,
        _with(_UPSERT, event_time="2026-11-28T11:15:00+02:00"),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["event_time", "UTC"],
    ),
    (
        "huge_text",
        "content.events",
        _KEY,
        _with(_UPSERT, text="x" * 100_001),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["text", "100000"],
    ),
    (
        "bad_language",
        "content.events",
        _KEY,
        _with(_UPSERT, language="english!"),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["language"],
    ),
    (
        "bad_birth_date",
        "accounts.profiles",
        _KEY,
        _with(_PROFILE, birth_date="2011-02-29"),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["birth_date", "calendar"],
    ),
    (
        "birth_date_format",
        "accounts.profiles",
        _KEY,
        _with(_PROFILE, birth_date="17/05/2011"),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["birth_date", "YYYY-MM-DD"],
    ),
    (
        "lowercase_country",
        "accounts.profiles",
        _KEY,
        _with(_PROFILE, country="gb"),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["country", "upper-case"],
    ),
    (
        "missing_updated_at",
        "accounts.profiles",
        _KEY,
        _with(_PROFILE, updated_at=_DROP),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["updated_at", "missing"],
    ),
    (
        "unknown_status",
        "accounts.objections",
        _KEY,
        _with(_OBJECTION, status="OBJECTED"),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["status", "objected, withdrawn"],
    ),
    (
        "missing_request_id",
        "accounts.objections",
        _KEY,
        _with(_OBJECTION, request_id=_DROP),
        DeadLetterReason.SCHEMA_VIOLATION,
        ["request_id", "missing"],
    ),
    ("no_key", "content.events", None, _with(_UPSERT), DeadLetterReason.KEY_MISMATCH, ["no key", "author_id"]),
    ("other_key", "content.events", b"acct-other", _with(_UPSERT), DeadLetterReason.KEY_MISMATCH, ["author_id"]),
    (
        "latin1_key",
        "accounts.profiles",
        b"acct-\xe9",
        _with(_PROFILE, account_id="acct-é"),
        DeadLetterReason.KEY_MISMATCH,
        ["UTF-8", "account_id"],
    ),
    (
        "other_key_objection",
        "accounts.objections",
        b"acct-other",
        _with(_OBJECTION),
        DeadLetterReason.KEY_MISMATCH,
        ["account_id"],
    ),
    ("tombstone_no_key", "accounts.profiles", None, None, DeadLetterReason.KEY_MISMATCH, ["tombstone", "no key"]),
    ("tombstone_empty_key", "accounts.objections", b"", None, DeadLetterReason.KEY_MISMATCH, ["tombstone"]),
]


@pytest.mark.parametrize(
    ("topic", "key", "value", "reason", "words"),
    [case[1:] for case in REJECTION_CASES],
    ids=[case[0] for case in REJECTION_CASES],
)
def test_decode_bad_record_rejected_with_readable_detail(
    topic: str, key: bytes | None, value: bytes | None, reason: DeadLetterReason, words: list[str]
) -> None:
    assert _oracle(topic, key, value) is reason, "the case must be wrong for the schema too"
    result = DECODERS[topic](key, value)
    assert isinstance(result, Rejected)
    assert result.reason is reason
    for word in words:
        assert word in result.detail
    for secret in (SECRET_ID, SECRET_TEXT, SECRET_BIRTH_DATE, "acct-other", "acct-", "english", "edit"):
        assert secret not in result.detail
    assert len(result.detail) < 200


def test_rejection_cases_every_dead_letter_reason_covered() -> None:
    # `processing_error` is the engine's, not the codec's: a record whose handling raised.
    assert {case[4] for case in REJECTION_CASES} == set(DeadLetterReason) - {DeadLetterReason.PROCESSING_ERROR}


@pytest.mark.parametrize(
    ("topic", "value"),
    [
        ("content.events", _with(_UPSERT)),
        ("content.events", _with(_UPSERT, text=_DROP, media_uri=_DROP, language=_DROP, extra={"future": [1]})),
        ("content.events", orjson.dumps({k: _UPSERT[k] for k in DELETE_FIELDS} | {"op": "delete"})),
        ("content.events", _with(_UPSERT, op="delete", content_type="bogus", created_at="yesterday")),
        ("accounts.profiles", _with(_PROFILE)),
        ("accounts.profiles", orjson.dumps({"account_id": SECRET_ID, "updated_at": "2026-10-01T00:00:00Z"})),
        ("accounts.objections", _with(_OBJECTION, status="withdrawn", channel="app")),
    ],
    ids=[
        "upsert",
        "upsert_minimal_with_extra",
        "delete_minimal",
        "delete_with_broken_extras",
        "profile",
        "profile_minimal",
        "objection_withdrawn",
    ],
)
def test_decode_good_record_accepted(topic: str, value: bytes) -> None:
    assert _oracle(topic, _KEY, value) is None
    _assert_codec_agrees(topic, _KEY, value)


@pytest.mark.parametrize(
    ("topic", "field", "candidates"),
    [
        ("content.events", "event_time", timestamps_any),
        ("content.events", "created_at", timestamps_any),
        ("content.events", "language", languages_any),
        ("accounts.profiles", "birth_date", dates_any()),
        ("accounts.profiles", "country", countries_any),
        ("accounts.profiles", "notified_at", timestamps_any),
    ],
)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_decode_field_near_miss_verdict_matches_jsonschema(
    topic: str, field: str, candidates: st.SearchStrategy[str], data: st.DataObject
) -> None:
    # One field at a time, in an otherwise valid record: the sharpest probe of the
    # hand-written checks against the schema's pattern + format.
    base = {"content.events": _UPSERT, "accounts.profiles": _PROFILE}[topic]
    _assert_codec_agrees(topic, _KEY, orjson.dumps({**base, field: data.draw(candidates)}))


@pytest.mark.parametrize("topic", ["accounts.profiles", "accounts.objections"])
def test_decode_tombstone_with_key_returns_none(topic: str) -> None:
    assert DECODERS[topic](_KEY, None) is None


def test_decode_duplicate_keys_last_one_wins() -> None:
    # orjson, like Python's json module and most parsers, keeps the last duplicate.
    value = _with(_OBJECTION)[:-1] + b',"status":"withdrawn"}'
    result = codec.decode_objection(_KEY, value)
    assert isinstance(result, Objection)
    assert result.status is ObjectionStatus.WITHDRAWN


# ---------------------------------------------------------------------------
# Timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T09:15:00Z", dt.datetime(2026, 11, 28, 9, 15, tzinfo=dt.UTC)),
        ("2026-11-28T09:15:00+00:00", dt.datetime(2026, 11, 28, 9, 15, tzinfo=dt.UTC)),
        ("2024-02-29T23:59:59.5Z", dt.datetime(2024, 2, 29, 23, 59, 59, 500_000, tzinfo=dt.UTC)),
        ("2026-11-28T09:15:00.123456789Z", dt.datetime(2026, 11, 28, 9, 15, 0, 123_456, tzinfo=dt.UTC)),
    ],
)
def test_parse_timestamp_utc_text_gives_aware_utc(text: str, expected: dt.datetime) -> None:
    assert TIMESTAMP_VALIDATOR.is_valid(text)
    parsed = codec.parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo is dt.UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-30T00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2026-11-28T09:15:00+02:00",
        "2026-11-28T09:15:00-00:00",
        "2026-11-28T09:15:00",
        "2026-11-28 09:15:00Z",
        "2026-11-28t09:15:00z",
        "2026-11-28T09:15Z",
        "2026-11-28T24:00:00Z",
        "2026-11-28T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "2026-11-28T09:15:00Z\n",
        "2026-11-28T09:15:00.Z",
        "2026-11-28T09:15:00.1234567890Z",
        "2026-11-28",
        "",
    ],
)
def test_parse_timestamp_non_utc_or_impossible_raises_without_echo(text: str) -> None:
    assert not TIMESTAMP_VALIDATOR.is_valid(text)
    with pytest.raises(ValueError, match=r"RFC 3339|calendar") as info:
        codec.parse_timestamp(text)
    assert not text.strip() or text.strip() not in str(info.value)


@given(
    st.datetimes(
        max_value=dt.datetime(9999, 12, 30), timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-3))])
    )
)
def test_format_timestamp_aware_datetime_round_trips(moment: dt.datetime) -> None:
    text = codec.format_timestamp(moment)
    assert TIMESTAMP_VALIDATOR.is_valid(text)
    assert text.endswith("Z")
    assert ("." in text) == (moment.microsecond != 0)
    assert codec.parse_timestamp(text) == moment


def test_format_timestamp_naive_datetime_raises() -> None:
    with pytest.raises(ValueError, match="naive"):
        codec.format_timestamp(dt.datetime(2026, 11, 28, 9, 15))


def test_dumps_datetime_written_like_format_timestamp() -> None:
    moment = dt.datetime(2026, 11, 28, 9, 15, 0, 5, tzinfo=dt.UTC)
    assert orjson.loads(codec.dumps({"at": moment})) == {"at": codec.format_timestamp(moment)}


# The schema's timestamp pattern alone (no format check): what `codec.timestamp_pattern_matches`
# must answer exactly. A JSON Schema pattern is searched, and its `$` matches only at the end;
# the schema refuses a newline apart (`not`), so Python's `$` before a final newline is moot.
_TIMESTAMP_PATTERN = re.compile(_schema("content.events")["$defs"]["timestamp"]["pattern"])
_CANONICAL = "2026-11-28T09:15:00.250Z"
# Characters a near-miss is made of: the pattern's own, digits beyond its ranges, and
# characters that look like them (non-ASCII digits, fullwidth and other separators).
_SHAPE_ALPHABET = "0123456789-T:.Z+ tz\n\u0663\u00b2\uff10\uff1a\u2010\u00e9"


def _near_misses() -> st.SearchStrategy[str]:
    """Valid timestamps with at most one part swapped for a near miss, then maybe mutated at one place."""
    digits = "0123456789"

    def number(size: int) -> st.SearchStrategy[str]:
        return st.text(alphabet=digits, min_size=size, max_size=size)

    fraction = st.integers(1, 9).flatmap(lambda k: number(k).map(lambda f: "." + f))
    # Each part: what the pattern allows, and near misses of it (the pattern's bounds, other
    # lengths, look-alike characters: non-ASCII digits, other separators).
    parts: list[tuple[st.SearchStrategy[str], list[str]]] = [
        (number(4), ["202", "20266", "\u0662026", "+2026"]),
        (st.just("-"), ["/", "\u2010", "", "--"]),
        (number(2), ["1", "001", "\u0660\u0661", "1a"]),
        (st.just("-"), ["/", "", "\u2010"]),
        (number(2), ["1", "001", "\u0661\u0660"]),
        (st.just("T"), ["t", " ", "_", "TT", ""]),
        (st.sampled_from(["00", "09", "10", "19", "20", "23"]), ["24", "29", "30", "99", "0", "\u0661\u0662"]),
        (st.just(":"), ["\uff1a", "", "::"]),
        (st.sampled_from(["00", "05", "50", "59"]), ["60", "69", "99", "5", "0\u0660"]),
        (st.just(":"), ["\uff1a", ""]),
        (st.sampled_from(["00", "05", "50", "59"]), ["60", "69", "99", "5", "0\u0660"]),
        (st.just("") | fraction, [".", ".0123456789", ".01234567890", ",5", ".\u0665"]),
        (st.sampled_from(["Z", "+00:00"]), ["", "z", "+00:0", "-00:00", "+01:00", "Z\n", "ZZ", "+00:00Z"]),
    ]

    @st.composite
    def timestamp(draw: st.DrawFn) -> str:
        swapped = draw(st.integers(-1, len(parts) - 1))  # -1: none
        return "".join(
            draw(st.sampled_from(misses)) if i == swapped else draw(valid) for i, (valid, misses) in enumerate(parts)
        )

    def mutate(text: str, where: int, char: str, how: int) -> str:
        i = where % (len(text) + 1)
        if how == 1:
            return text[:i] + char + text[i + 1 :]  # replace (or append at the end)
        if how == 2:
            return text[:i] + char + text[i:]  # insert
        if how == 3:
            return text[:i] + text[i + 1 :]  # delete
        return text

    return st.builds(
        mutate,
        timestamp() | st.just(_CANONICAL) | st.text(alphabet=_SHAPE_ALPHABET, max_size=40),
        st.integers(0, 40),
        st.sampled_from(_SHAPE_ALPHABET),
        st.integers(0, 6),  # 0, 4, 5 and 6: unchanged
    )


@settings(max_examples=3000)
@given(_near_misses())
# The pattern's edges, always tried besides the search's own.
@example("2026-11-28T23:59:59.123456789Z")
@example("2026-11-28T24:00:00Z")
@example("2026-11-28T09:60:00Z")
@example("2026-11-28T09:15:60Z")
@example("2026-11-28T09:15:00.0123456789Z")
@example("2026-11-28T09:15:00.Z")
@example("2026-11-28T09:15:00-00:00")
@example("2026-11-28t09:15:00Z")
@example("2026-11-28T09:15:00Z\n")
@example("\u0662026-11-28T09:15:00Z")
def test_timestamp_pattern_matches_answers_as_the_schema_pattern(text: str) -> None:
    expected = _TIMESTAMP_PATTERN.search(text) is not None and "\n" not in text
    event("matches" if expected else "does not match")
    assert codec.timestamp_pattern_matches(text) is expected


@given(st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)))
def test_index_value_writes_created_at_like_format_timestamp(created_at: dt.datetime) -> None:
    # The published changelog keeps values of every earlier release: the index value's
    # timestamp is written as `format_timestamp` always wrote it, and read back exactly.
    # Every event the engine holds was decoded, so its datetimes are UTC.
    event = ContentEvent(
        "e-1", Op.UPSERT, "c-1", "u-1", created_at, ContentType.POST, Platform.FACEBOOK, Visibility.PUBLIC, created_at
    )
    raw = codec.encode_index(event)
    assert orjson.loads(raw)["created_at"] == codec.format_timestamp(created_at)
    assert codec.decode_index("u-1", "c-1", raw).created_at == created_at


# ---------------------------------------------------------------------------
# The schemas themselves


def test_format_checker_date_time_and_date_really_checked() -> None:
    # Without rfc3339-validator installed, jsonschema silently skips `date-time`.
    assert not FORMAT_CHECKER.conforms("2026-02-30T00:00:00Z", "date-time")
    assert FORMAT_CHECKER.conforms("2024-02-29T00:00:00Z", "date-time")
    assert not FORMAT_CHECKER.conforms("2026-02-29", "date")
    assert FORMAT_CHECKER.conforms("2024-02-29", "date")


@pytest.mark.parametrize("topic", INPUT_TOPICS + OUTPUT_TOPICS)
def test_schema_file_well_formed_and_documented(topic: str) -> None:
    schema = _schema(topic)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{topic}.schema.json")
    assert schema["title"] and schema["description"]
    assert schema["additionalProperties"] is (topic in INPUT_TOPICS)
    # Every field and definition is documented; if/then/else narrowings repeat no prose,
    # except content.events' `then`, which is where the upsert fields are declared.
    fields = dict(schema["properties"])
    if topic == "content.events":
        fields |= schema["then"]["properties"]
    documented = fields | schema.get("$defs", {})
    assert [name for name, sub in documented.items() if not sub.get("description")] == []
    assert set(schema["required"]) <= set(schema["properties"])


def test_schema_shared_definitions_identical_across_files() -> None:
    seen: dict[str, dict[str, Any]] = {}
    for topic in INPUT_TOPICS + OUTPUT_TOPICS:
        for name, definition in _schema(topic).get("$defs", {}).items():
            assert seen.setdefault(name, definition) == definition, f"$defs/{name} differs in {topic}"


@pytest.mark.parametrize(
    ("topic", "pointer", "values"),
    [
        ("content.events", ("then", "properties", "content_type", "enum"), {m.value for m in ContentType}),
        ("content.events", ("then", "properties", "platform", "enum"), {m.value for m in Platform}),
        ("content.events", ("then", "properties", "visibility", "enum"), {m.value for m in Visibility}),
        ("content.events", ("properties", "op", "enum"), {m.value for m in Op}),
        ("accounts.objections", ("properties", "status", "enum"), {m.value for m in ObjectionStatus}),
        ("training.feed", ("properties", "content_type", "enum"), {m.value for m in ContentType} - {"message"}),
        ("training.feed", ("properties", "platform", "enum"), {m.value for m in Platform}),
        (
            "eligibility.decisions",
            ("properties", "reason", "enum"),
            {m.value for m in Reason} | {m.value for m in SkipReason} | {None},
        ),
        ("eligibility.decisions", ("properties", "cause", "enum"), {m.value for m in RetractCause} | {None}),
        ("content.events.dlq", ("properties", "reason", "enum"), {m.value for m in DeadLetterReason}),
        ("training.retractions", ("properties", "cause", "enum"), {m.value for m in RetractCause}),
    ],
)
def test_schema_enum_matches_models_enum(topic: str, pointer: tuple[str, ...], values: set[str | None]) -> None:
    node: Any = _schema(topic)
    for part in pointer:
        node = node[part]
    assert set(node) == values


NOW = codec.format_timestamp(dt.datetime(2026, 11, 28, 9, 15, 0, 250_000, tzinfo=dt.UTC))
FEED: dict[str, Any] = {
    "content_id": "cnt-93be02aa",
    "content_type": "photo",
    "platform": "instagram",
    "author_pseudonym": "a" * 64,
    "created_at": "2026-11-28T09:15:00Z",
    "text": None,
    "media_uri": "https://cdn.example/p/93be02aa.jpg",
    "language": None,
    "jurisdiction": "GB",
    "policy_version": "2026-11-01",
    "decided_at": NOW,
    "source_event_id": "evt-4b8d2e11",
    "schema_version": 1,
}
DECIDE: dict[str, Any] = {
    "content_id": "cnt-93be02aa",
    "event_id": "evt-4b8d2e11",
    "author_id": SECRET_ID,
    "action": "decide",
    "eligible": False,
    "reason": "minor",
    "cause": None,
    "policy_version": "2026-11-01",
    "decided_at": NOW,
    "event_time": "2026-11-28T09:15:00Z",
}
RETRACT: dict[str, Any] = {**DECIDE, "action": "retract", "eligible": None, "reason": None, "cause": "objection"}
SKIP: dict[str, Any] = {**DECIDE, "action": "skip", "eligible": None, "reason": "superseded", "cause": None}
DEAD_LETTER: dict[str, Any] = {
    "reason": "key_mismatch",
    "detail": "key does not equal `author_id`",
    "topic": "content.events",
    "partition": 3,
    "offset": 1_234_567,
    "received_at": NOW,
    "key": base64.b64encode(b"acct-other").decode(),
    "value": base64.b64encode(_with(_UPSERT)).decode(),
}

RETRACTION: dict[str, Any] = {
    "content_id": "cnt-93be02aa",
    "retracted_at": NOW,
    "cause": "objection",
    "policy_version": "2026-11-01",
}

GOOD_OUTPUTS = [
    ("feed", "training.feed", FEED),
    ("feed_with_text", "training.feed", {**FEED, "text": "hello", "language": "pt-BR", "media_uri": None}),
    ("decide_ineligible", "eligibility.decisions", DECIDE),
    ("decide_eligible", "eligibility.decisions", {**DECIDE, "eligible": True, "reason": "eligible"}),
    ("retract", "eligibility.decisions", RETRACT),
    ("retract_unreadable_update", "eligibility.decisions", {**RETRACT, "cause": "unreadable_update"}),
    ("skip_superseded", "eligibility.decisions", SKIP),
    ("skip_deleted", "eligibility.decisions", {**SKIP, "reason": "deleted"}),
    ("dead_letter", "content.events.dlq", DEAD_LETTER),
    ("dead_letter_null_key_value", "content.events.dlq", {**DEAD_LETTER, "key": None, "value": None}),
    ("dead_letter_empty_value", "content.events.dlq", {**DEAD_LETTER, "value": ""}),
    ("retraction", "training.retractions", RETRACTION),
    ("retraction_unreadable_update", "training.retractions", {**RETRACTION, "cause": "unreadable_update"}),
    (
        "dead_letter_value_omitted",
        "content.events.dlq",
        {**DEAD_LETTER, "value": None, "omitted": ["value"], "value_bytes": 10**6, "value_sha256": "ab" * 32},
    ),
]
BAD_OUTPUTS = [
    ("feed_extra_field", "training.feed", {**FEED, "author_id": SECRET_ID}),
    ("feed_missing_text", "training.feed", {k: v for k, v in FEED.items() if k != "text"}),
    ("feed_message", "training.feed", {**FEED, "content_type": "message"}),
    ("feed_uppercase_pseudonym", "training.feed", {**FEED, "author_pseudonym": "A" * 64}),
    ("feed_offset_time", "training.feed", {**FEED, "decided_at": "2026-11-28T10:15:00+01:00"}),
    ("feed_without_schema_version", "training.feed", {k: v for k, v in FEED.items() if k != "schema_version"}),
    ("feed_schema_version_text", "training.feed", {**FEED, "schema_version": "1"}),
    ("feed_schema_version_unknown", "training.feed", {**FEED, "schema_version": 2}),
    ("decide_without_eligible", "eligibility.decisions", {**DECIDE, "eligible": None}),
    ("decide_eligible_with_reason", "eligibility.decisions", {**DECIDE, "eligible": True}),
    ("decide_ineligible_reason_eligible", "eligibility.decisions", {**DECIDE, "reason": "eligible"}),
    ("decide_with_cause", "eligibility.decisions", {**DECIDE, "cause": "objection"}),
    ("retract_with_eligible", "eligibility.decisions", {**RETRACT, "eligible": True}),
    ("retract_without_cause", "eligibility.decisions", {**RETRACT, "cause": None}),
    ("retract_unknown_cause", "eligibility.decisions", {**RETRACT, "cause": "boredom"}),
    ("skip_with_rule_reason", "eligibility.decisions", {**SKIP, "reason": "minor"}),
    ("skip_with_cause", "eligibility.decisions", {**SKIP, "cause": "objection"}),
    ("skip_with_eligible", "eligibility.decisions", {**SKIP, "eligible": False}),
    ("decide_with_skip_reason", "eligibility.decisions", {**DECIDE, "reason": "superseded"}),
    ("dead_letter_omits_unknown", "content.events.dlq", {**DEAD_LETTER, "omitted": ["payload"]}),
    ("dead_letter_bool_partition", "content.events.dlq", {**DEAD_LETTER, "partition": True}),
    ("dead_letter_negative_offset", "content.events.dlq", {**DEAD_LETTER, "offset": -1}),
    ("dead_letter_not_base64", "content.events.dlq", {**DEAD_LETTER, "key": "acct-other"}),
    ("dead_letter_unknown_reason", "content.events.dlq", {**DEAD_LETTER, "reason": "cosmic_ray"}),
    ("dead_letter_extra_field", "content.events.dlq", {**DEAD_LETTER, "payload": "{}"}),
    ("retraction_with_author_id", "training.retractions", {**RETRACTION, "author_id": SECRET_ID}),
    ("retraction_with_text", "training.retractions", {**RETRACTION, "text": "hello"}),
    ("retraction_unknown_cause", "training.retractions", {**RETRACTION, "cause": "boredom"}),
    ("retraction_without_cause", "training.retractions", {k: v for k, v in RETRACTION.items() if k != "cause"}),
    ("retraction_offset_time", "training.retractions", {**RETRACTION, "retracted_at": "2026-11-28T10:15:00+01:00"}),
]


@pytest.mark.parametrize(("topic", "record"), [c[1:] for c in GOOD_OUTPUTS], ids=[c[0] for c in GOOD_OUTPUTS])
def test_output_schema_example_record_valid(topic: str, record: dict[str, Any]) -> None:
    assert not list(VALIDATORS[topic].iter_errors(orjson.loads(codec.dumps(record))))


@pytest.mark.parametrize(("topic", "record"), [c[1:] for c in BAD_OUTPUTS], ids=[c[0] for c in BAD_OUTPUTS])
def test_output_schema_broken_record_invalid(topic: str, record: dict[str, Any]) -> None:
    assert not VALIDATORS[topic].is_valid(record)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"acct-1", b"x" * (2 << 20)),  # 2 MiB of value: left out
        (b"k" * (1 << 20), b"{}"),  # 1 MiB of key: left out too
        (b"acct-1", b"y" * (300 << 10)),  # 300 KiB: still carried whole
        (b"k" * (300 << 10), b"v" * (300 << 10)),  # together too large: the key stays, the value goes
    ],
    ids=["huge_value", "huge_key", "large_value_kept", "large_key_and_value"],
)
def test_dead_letter_of_any_size_fits_the_cap_and_the_schema(
    key: bytes, value: bytes, request: pytest.FixtureRequest
) -> None:
    letter = records.dead_letter_value(
        reason=DeadLetterReason.SCHEMA_VIOLATION,
        detail="field `text` is longer than 100000 characters",
        topic="content.events",
        partition=0,
        offset=7,
        received_at=dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
        key=key,
        value=value,
    )
    assert len(letter) <= records.DEAD_LETTER_MAX_BYTES
    obj = orjson.loads(letter)
    assert (
        obj.get("omitted", [])
        == {
            "huge_value": ["value"],
            "huge_key": ["key"],
            "large_value_kept": [],
            "large_key_and_value": ["value"],
        }[request.node.callspec.id]
    )
    assert not list(VALIDATORS["content.events.dlq"].iter_errors(obj))
    for name, data in (("key", key), ("value", value)):
        if name in obj.get("omitted", []):
            assert obj[name] is None
            assert obj[f"{name}_bytes"] == len(data)
            assert obj[f"{name}_sha256"] == hashlib.sha256(data).hexdigest()
        else:
            assert base64.b64decode(obj[name]) == data


@pytest.mark.parametrize("cause", list(RetractCause))
def test_retraction_value_every_cause_valid_under_its_schema_and_minimised(cause: RetractCause) -> None:
    at = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    value = records.retraction_value(content_id="cnt-1", cause=cause, policy_version="2026-11-01", retracted_at=at)
    obj = orjson.loads(value)
    assert not list(VALIDATORS["training.retractions"].iter_errors(obj))
    assert obj == {
        "content_id": "cnt-1",
        "retracted_at": "2026-11-28T00:00:00Z",
        "cause": cause.value,
        "policy_version": "2026-11-01",
    }
