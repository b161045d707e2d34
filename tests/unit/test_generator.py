"""Unit tests of the synthetic workload (`stream.workload.generator`): no broker, no clock but the test's.

The pure part is checked against the contract with a small validator written here,
independent of the generator; `produce()` runs against a fake producer that records
what it is given.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import aiokafka
import orjson
import pytest

from stream.config import Settings, TopicNames
from stream.core.models import ContentType, ObjectionStatus, Op, Platform, Visibility
from stream.errors import DeliveryError
from stream.workload.generator import (
    DEFAULT_MALFORMED_SHARE,
    GenerateStats,
    Labelled,
    MalformedKind,
    Record,
    RecordKind,
    TopicKind,
    Workload,
    _stamp_sent,
    generate,
    produce,
)

NOW = dt.datetime(2026, 11, 28, 9, 15, tzinfo=dt.UTC)
ACCOUNTS = 2000
COUNT = 30_000

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
ID = re.compile(r"[a-z]+-[0-9a-z-]+")
UPSERT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "event_id": str,
    "op": str,
    "content_id": str,
    "content_type": str,
    "platform": str,
    "author_id": str,
    "visibility": str,
    "created_at": str,
    "event_time": str,
    "text": (str, type(None)),
    "media_uri": (str, type(None)),
    "language": (str, type(None)),
}
DELETE_FIELDS = {"event_id", "op", "content_id", "author_id", "event_time"}
ENUMS = {"op": Op, "content_type": ContentType, "platform": Platform, "visibility": Visibility}


def parse_timestamp(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or not TIMESTAMP.fullmatch(text):
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def content_violations(key: bytes | None, raw: bytes | None) -> set[MalformedKind]:
    """Everything wrong with a content record, by the contract alone."""
    assert raw is not None, "content records are never tombstones"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {MalformedKind.GARBAGE_BYTES}
    if not isinstance(value, dict):
        return {MalformedKind.NOT_AN_OBJECT}
    found: set[MalformedKind] = set()
    required = DELETE_FIELDS if value.get("op") == Op.DELETE else set(UPSERT_FIELDS)
    if required - value.keys():
        found.add(MalformedKind.MISSING_FIELD)
    for name in required & value.keys():
        if not isinstance(value[name], UPSERT_FIELDS[name]):
            found.add(MalformedKind.WRONG_TYPE)
        elif name in ENUMS and value[name] not in set(ENUMS[name]):
            found.add(MalformedKind.UNKNOWN_ENUM)
        elif name in ("created_at", "event_time") and parse_timestamp(value[name]) is None:
            found.add(MalformedKind.BAD_TIMESTAMP)
    author = value.get("author_id")
    if isinstance(author, str) and (key is None or key.decode() != author):
        found.add(MalformedKind.KEY_MISMATCH)
    return found


def key_of(record: Record) -> bytes:
    assert record.key is not None
    return record.key


def json_of(record: Record) -> Any:
    assert record.value is not None
    return orjson.loads(record.value)


def workload(seed: int = 42, malformed_share: float = DEFAULT_MALFORMED_SHARE, **kwargs: Any) -> Workload:
    return Workload(seed=seed, accounts=ACCOUNTS, now=NOW, malformed_share=malformed_share, **kwargs)


@pytest.fixture(scope="module")
def labelled() -> list[Labelled]:
    return list(workload().labelled(COUNT))


@pytest.fixture(scope="module")
def well_formed_content(labelled: list[Labelled]) -> list[tuple[bytes, dict[str, Any]]]:
    return [
        (key_of(item.record), json_of(item.record))
        for item in labelled
        if item.record.topic is TopicKind.CONTENT and item.kind is not RecordKind.MALFORMED
    ]


def profiles_of(items: list[Labelled]) -> dict[str, dict[str, Any]]:
    return {key_of(item.record).decode(): json_of(item.record) for item in items if item.kind is RecordKind.PROFILE}


# --- determinism ------------------------------------------------------------------


def test_workload_same_seed_same_bytes() -> None:
    first = list(workload(seed=7).records(5000))
    second = list(workload(seed=7).records(5000))
    assert first == second
    assert all(isinstance(r, tuple) and len(r) == 3 for r in first)


def test_workload_other_seed_other_bytes() -> None:
    assert list(workload(seed=7).records(500)) != list(workload(seed=8).records(500))


def test_workload_stream_repeated_call_same_bytes() -> None:
    w = workload()
    assert list(w.stream(3000)) == list(w.stream(3000))
    assert list(w.setup()) == list(w.setup())


def test_generate_shorthand_equals_workload_records() -> None:
    assert list(generate(seed=3, accounts=ACCOUNTS, count=1000, now=NOW)) == list(
        Workload(seed=3, accounts=ACCOUNTS, now=NOW).records(1000)
    )


def test_workload_run_tag_prefixes_ids() -> None:
    value = json_of(next(r for r in workload(run="zz9").records(10) if r.topic is TopicKind.CONTENT))
    assert value["event_id"].startswith("e-zz9-")
    assert value["content_id"].startswith("c-zz9-")


# --- the content stream -----------------------------------------------------------


def test_stream_count_counts_content_records(labelled: list[Labelled]) -> None:
    assert sum(item.record.topic is TopicKind.CONTENT for item in labelled) == COUNT


def test_stream_every_content_type_visibility_platform_and_op_occurs(
    well_formed_content: list[tuple[bytes, dict[str, Any]]],
) -> None:
    upserts = [v for _, v in well_formed_content if v["op"] == Op.UPSERT]
    assert {v["content_type"] for v in upserts} == set(ContentType)
    assert {v["visibility"] for v in upserts} == set(Visibility)
    assert {v["platform"] for v in upserts} == set(Platform)
    assert {v["op"] for _, v in well_formed_content} == set(Op)
    visibility = Counter(v["visibility"] for v in upserts)
    assert visibility[Visibility.PUBLIC] > visibility[Visibility.FRIENDS] > visibility[Visibility.PRIVATE]


def test_stream_well_formed_content_satisfies_contract(
    labelled: list[Labelled],
) -> None:
    for item in labelled:
        if item.record.topic is TopicKind.CONTENT and item.kind is not RecordKind.MALFORMED:
            assert content_violations(item.record.key, item.record.value) == set(), item


def test_stream_key_equals_author_id(well_formed_content: list[tuple[bytes, dict[str, Any]]]) -> None:
    for key, value in well_formed_content:
        assert key == value["author_id"].encode("utf-8")


def test_stream_created_at_before_event_time(well_formed_content: list[tuple[bytes, dict[str, Any]]]) -> None:
    for _, value in well_formed_content:
        if value["op"] == Op.UPSERT:
            created_at, event_time = parse_timestamp(value["created_at"]), parse_timestamp(value["event_time"])
            assert created_at is not None and event_time is not None
            assert created_at < event_time


def test_stream_delete_carries_only_identifying_fields(
    well_formed_content: list[tuple[bytes, dict[str, Any]]],
) -> None:
    deletes = [v for _, v in well_formed_content if v["op"] == Op.DELETE]
    assert deletes
    assert all(set(v) == DELETE_FIELDS for v in deletes)


def test_stream_edits_upsert_same_content_id_again(well_formed_content: list[tuple[bytes, dict[str, Any]]]) -> None:
    upserts = Counter(v["content_id"] for _, v in well_formed_content if v["op"] == Op.UPSERT)
    assert sum(1 for n in upserts.values() if n > 1) > COUNT * 0.02


def test_stream_photos_have_media_and_some_values_are_null(
    well_formed_content: list[tuple[bytes, dict[str, Any]]],
) -> None:
    upserts = [v for _, v in well_formed_content if v["op"] == Op.UPSERT]
    assert all(v["media_uri"] for v in upserts if v["content_type"] == ContentType.PHOTO)
    assert any(v["text"] is None for v in upserts)
    assert any(v["language"] is None for v in upserts)
    assert any(v["language"] == "pt-BR" for v in upserts)
    assert any(not v["text"].isascii() for v in upserts if v["text"])


def test_stream_ids_unique_and_look_like_ids(labelled: list[Labelled]) -> None:
    event_ids: list[str] = []
    request_ids: list[str] = []
    new_content_ids: set[str] = set()
    for item in labelled:
        if item.record.value is None or item.kind is RecordKind.MALFORMED:
            continue
        value = orjson.loads(item.record.value)
        if item.record.topic is TopicKind.CONTENT:
            event_ids.append(value["event_id"])
            new_content_ids.add(value["content_id"])
            assert ID.fullmatch(value["content_id"]) and ID.fullmatch(value["author_id"])
        elif item.record.topic is TopicKind.OBJECTIONS:
            request_ids.append(value["request_id"])
    assert len(event_ids) == len(set(event_ids))
    assert len(request_ids) == len(set(request_ids))
    assert all(ID.fullmatch(i) for i in event_ids + request_ids)


def test_stream_event_ids_unique_including_malformed(labelled: list[Labelled]) -> None:
    ids = []
    for item in labelled:
        if item.record.topic is TopicKind.CONTENT:
            try:
                value = json_of(item.record)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict) and isinstance(value.get("event_id"), str):
                ids.append(value["event_id"])
    assert len(ids) == len(set(ids))


# --- accounts ---------------------------------------------------------------------


def test_setup_profiles_precede_content_of_known_accounts(labelled: list[Labelled]) -> None:
    first_profile: dict[bytes, int] = {}
    first_content: dict[bytes, int] = {}
    for n, item in enumerate(labelled):
        key = item.record.key
        assert key is not None
        if item.record.topic is TopicKind.PROFILES:
            first_profile.setdefault(key, n)
        elif item.record.topic is TopicKind.CONTENT and item.kind is not RecordKind.MALFORMED:
            first_content.setdefault(key, n)
    known = first_content.keys() & first_profile.keys()
    assert known
    assert all(first_profile[k] < first_content[k] for k in known)
    # Setup comes first: every known account's profile before the first content record.
    first_any_content = min(first_content.values())
    assert sum(1 for n in first_profile.values() if n < first_any_content) == ACCOUNTS


def test_stream_some_content_has_no_profile(labelled: list[Labelled]) -> None:
    w = workload()
    profiled = {i.record.key for i in labelled if i.record.topic is TopicKind.PROFILES}
    orphans = {i.record.key for i in labelled if i.kind is RecordKind.UPSERT and i.record.key not in profiled}
    assert len(orphans) >= 3
    assert {k.decode() for k in orphans if k} <= set(w.unknown_ids)


def test_setup_profiles_valid_and_population_plausible(labelled: list[Labelled]) -> None:
    profiles = profiles_of(list(workload().setup()))
    assert len(profiles) == ACCOUNTS
    countries = Counter(p["country"] for p in profiles.values())
    share = {c: n / ACCOUNTS for c, n in countries.items()}
    assert 0.25 < share["GB"] < 0.35 and 0.25 < share["BR"] < 0.35
    assert 0.02 < share[None] < 0.08
    assert {"DE", "FR", "IE", "ES", "IT", "NL", "PL", "US", "IN", "JP", "NG"} <= countries.keys()
    for account, p in profiles.items():
        assert p["account_id"] == account
        assert set(p) == {"account_id", "birth_date", "country", "notified_at", "updated_at"}
        assert parse_timestamp(p["updated_at"]) is not None
        assert p["notified_at"] is None or parse_timestamp(p["notified_at"]) is not None
        assert p["birth_date"] is None or dt.date.fromisoformat(p["birth_date"])
    births = [dt.date.fromisoformat(p["birth_date"]) for p in profiles.values() if p["birth_date"]]
    assert 0.01 < 1 - len(births) / ACCOUNTS < 0.06
    assert any((b.month, b.day) == (2, 29) for b in births)
    eighteenth = [b.replace(year=b.year + 18) if (b.month, b.day) != (2, 29) else None for b in births]
    turning = [d for d in eighteenth if d and abs((d - NOW.date()).days) <= 3]
    assert any(d <= NOW.date() for d in turning) and any(d > NOW.date() for d in turning)
    assert any(d and d > NOW.date() + dt.timedelta(days=3) for d in eighteenth)  # minors
    notified = [parse_timestamp(p["notified_at"]) for p in profiles.values()]
    assert 0.02 < notified.count(None) / ACCOUNTS < 0.08
    recent = [n for n in notified if n and NOW - n < dt.timedelta(days=30)]
    assert 0.08 < len(recent) / ACCOUNTS < 0.25


def test_objections_valid_with_every_status_and_some_tombstones(labelled: list[Labelled]) -> None:
    objections = [i for i in labelled if i.record.topic is TopicKind.OBJECTIONS]
    values = [orjson.loads(i.record.value) for i in objections if i.record.value is not None]
    assert {v["status"] for v in values} == set(ObjectionStatus)
    assert {v["source"] for v in values} <= {"form", "settings", "support"}
    for item, value in zip((i for i in objections if i.record.value is not None), values, strict=True):
        assert item.record.key == value["account_id"].encode()
        assert parse_timestamp(value["at"]) is not None
        assert set(value) == {"account_id", "status", "at", "source", "request_id"}
    assert any(i.kind is RecordKind.OBJECTION_TOMBSTONE for i in objections)
    objecting = {i.record.key for i in objections}
    assert 0.01 < len(objecting) / ACCOUNTS < 0.05


def test_stream_account_deletions_are_profile_tombstones(labelled: list[Labelled]) -> None:
    deletions = [i for i in labelled if i.kind is RecordKind.ACCOUNT_DELETED]
    assert deletions
    assert all(i.record.topic is TopicKind.PROFILES and i.record.value is None for i in deletions)


# --- malformed records ------------------------------------------------------------


def malformed_of(items: Iterator[Labelled]) -> list[Labelled]:
    return [i for i in items if i.kind is RecordKind.MALFORMED]


def test_stream_malformed_share_default_roughly_half_a_percent(labelled: list[Labelled]) -> None:
    share = len(malformed_of(iter(labelled))) / COUNT
    # 30 000 draws at 0.5 %: the standard deviation is 0.04 points.
    assert 0.0035 < share < 0.0065


@pytest.mark.parametrize("configured", [0.0, 0.05, 0.2])
def test_stream_malformed_share_as_configured(configured: float) -> None:
    items = malformed_of(workload(malformed_share=configured).stream(10_000))
    assert abs(len(items) / 10_000 - configured) < 0.015


def test_stream_malformed_records_violate_exactly_their_kind() -> None:
    items = malformed_of(workload(malformed_share=0.1).stream(10_000))
    assert {i.malformed for i in items} == set(MalformedKind)
    for item in items:
        assert item.record.topic is TopicKind.CONTENT
        assert content_violations(item.record.key, item.record.value) == {item.malformed}, item


# --- validation and stats ---------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"accounts": 0},
        {"malformed_share": 1.5},
        {"now": dt.datetime(2026, 11, 28)},  # naive
        {"step": dt.timedelta(seconds=-1)},
    ],
)
def test_workload_invalid_argument_raises(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"seed": 1, "accounts": 10, "now": NOW} | kwargs
    with pytest.raises(ValueError):
        Workload(**args)


def test_generate_stats_initialises_every_label_and_counts() -> None:
    stats = GenerateStats()
    assert set(stats.by_topic) == set(TopicKind) and set(stats.by_kind) == set(RecordKind)
    assert set(stats.malformed) == set(MalformedKind) and stats.total == 0
    for item in workload(malformed_share=0.1).labelled(2000):
        stats.add(item)
    assert stats.content == 2000
    assert stats.by_topic[TopicKind.PROFILES] >= ACCOUNTS
    assert sum(stats.malformed.values()) == stats.by_kind[RecordKind.MALFORMED] > 0


def test_stamp_sent_adds_gen_sent_at_with_microseconds() -> None:
    stamped = orjson.loads(_stamp_sent(b'{"a":1}'))
    assert stamped["a"] == 1
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", stamped["gen_sent_at"])


# --- produce() against a fake producer --------------------------------------------


class FakeProducer:
    """Stands in for AIOKafkaProducer: records each send, acknowledges it at once (or fails)."""

    instances: ClassVar[list[FakeProducer]] = []
    fail_on: ClassVar[int | None] = None  # index of the send whose delivery fails

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes | None, bytes | None, float]] = []
        self.started = self.stopped = False
        FakeProducer.instances.append(self)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if FakeProducer.fail_on == len(self.sent):
            future.set_exception(aiokafka.errors.KafkaTimeoutError())
        else:
            future.set_result(None)
        self.sent.append((topic, key, value, time.monotonic()))
        return future


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    FakeProducer.instances = []
    FakeProducer.fail_on = None
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", FakeProducer)
    return FakeProducer


SETTINGS = Settings(topics=TopicNames(content="t.content", profiles="t.profiles", objections="t.objections"))


async def test_produce_sends_setup_first_then_count_content(fake_producer: type[FakeProducer]) -> None:
    stats = await produce(SETTINGS, count=3000, rate=None, accounts=300, seed=5, malformed_share=0.01, progress=False)
    (producer,) = fake_producer.instances
    assert producer.started and producer.stopped
    assert producer.config["acks"] == "all" and producer.config["compression_type"] == "zstd"
    topics = [topic for topic, *_ in producer.sent]
    assert topics.count("t.content") == stats.content == 3000
    assert topics.index("t.content") >= 300  # every profile before the first content record
    assert set(topics[:300]) == {"t.profiles"}
    assert stats.total == len(producer.sent)
    assert stats.by_topic[TopicKind.PROFILES] == topics.count("t.profiles")


async def test_produce_stamps_gen_sent_at_on_well_formed_upserts_only(fake_producer: type[FakeProducer]) -> None:
    await produce(SETTINGS, count=2000, rate=None, accounts=100, seed=5, malformed_share=0.05, progress=False)
    stamped = unstamped = 0
    for topic, key, value, _ in fake_producer.instances[0].sent:
        if topic != "t.content":
            continue
        assert value is not None
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(parsed, dict):
            continue
        if "gen_sent_at" in parsed:
            stamped += 1
            assert parsed["op"] == Op.UPSERT
            assert content_violations(key, value) == set()
        else:
            unstamped += 1
    assert stamped > 1500 and unstamped > 0


async def test_produce_rate_paces_content_open_loop(fake_producer: type[FakeProducer]) -> None:
    stats = await produce(SETTINGS, count=300, rate=3000.0, accounts=20, seed=1, malformed_share=0.0, progress=False)
    content_times = [t for topic, _, _, t in fake_producer.instances[0].sent if topic == "t.content"]
    spread = content_times[-1] - content_times[0]
    # Record 299 is due 299/3000 s after record 0; early by at most the 1 ms sleep granularity.
    assert 0.09 < spread < 1.0
    assert stats.content == 300


async def test_produce_unbounded_stops_when_stop_is_set(fake_producer: type[FakeProducer]) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    stats = await produce(
        SETTINGS, count=None, rate=2000.0, accounts=20, seed=1, malformed_share=0.0, progress=False, stop=stop
    )
    assert 50 < stats.content < 1500
    assert fake_producer.instances[0].stopped


async def test_produce_failed_delivery_raises_delivery_error(fake_producer: type[FakeProducer]) -> None:
    fake_producer.fail_on = 10
    with pytest.raises(DeliveryError):
        await produce(SETTINGS, count=100, rate=None, accounts=20, seed=1, malformed_share=0.0, progress=False)
    assert fake_producer.instances[0].stopped


def test_record_is_a_plain_three_tuple() -> None:
    topic, key, value = Record(TopicKind.CONTENT, b"k", b"{}")
    assert (topic, key, value) == ("content", b"k", b"{}")
