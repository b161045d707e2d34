"""Unit tests of the batch engine (`stream.core.engine.Engine.process`), without Kafka.

`FakeWorker` performs each `BatchResult` exactly as `stream/runtime/worker.py` does (write
`pre_updates`, "send" `produce`, then write `post_updates` with `state_offsets`)
against `MemoryPartitionStore`s, so scenarios can span several batches. Output
records are decoded with orjson and compared as whole dicts, built here by hand from
the contract rather than with `stream.core.records`, so a drift in either shows up.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from stream.config import TopicNames
from stream.core.codec import decode_profile
from stream.core.engine import BatchResult, Engine, OutputTopic
from stream.core.models import ContentType, DeadLetterReason, ObjectionStatus, Profile, Reason, RetractCause
from stream.core.policy import Policy, load_policy
from stream.core.state import (
    StateKind,
    item_id,
    objection_key,
    pack_objection,
    pack_profile,
    profile_key,
    published_key,
    published_prefix,
)
from stream.runtime.store import MemoryPartitionStore
from stream.workload.generator import RecordKind, TopicKind, Workload

UTC = dt.UTC
POLICY = load_policy()
VERSION = POLICY.version
PSEUDONYM_KEY = b"unit-test-pseudonym-key"
TOPICS = TopicNames()

NOW = dt.datetime(2026, 11, 28, 9, 15, tzinfo=UTC)
NOW_TEXT = "2026-11-28T09:15:00Z"
# The broker timestamp of every state record: the `event_time` of the retractions it causes.
BROKER_TIME = dt.datetime(2026, 11, 28, 9, 14, tzinfo=UTC)
BROKER_TIME_TEXT = "2026-11-28T09:14:00Z"
BROKER_MS = int(BROKER_TIME.timestamp() * 1000)

AUTHOR = "acct-7f3a9c"
OTHER = "acct-7f3a9c0"  # shares AUTHOR's text as a prefix: the published index must keep them apart
BIRTH_DATE = "1990-05-17"
COUNTRY = "GB"
EVENT_TIME = "2026-11-28T09:10:00Z"
CREATED_AT = "2026-11-01T12:00:00Z"

FEED_FIELDS = {
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
    "schema_version",
}


# -- input values ------------------------------------------------------------------


def dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def profile_value(account: str = AUTHOR, **overrides: Any) -> bytes:
    return dumps(
        {
            "account_id": account,
            "birth_date": BIRTH_DATE,
            "country": COUNTRY,
            "notified_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z",
            **overrides,
        }
    )


def objection_value(status: str = "objected", account: str = AUTHOR) -> bytes:
    return dumps(
        {"account_id": account, "status": status, "at": "2026-11-28T09:00:00Z", "source": "form", "request_id": "r-1"}
    )


def upsert_value(content_id: str = "c-1", event_id: str = "e-1", author: str = AUTHOR, **overrides: Any) -> bytes:
    return dumps(
        {
            "event_id": event_id,
            "op": "upsert",
            "content_id": content_id,
            "content_type": "post",
            "platform": "facebook",
            "author_id": author,
            "visibility": "public",
            "created_at": CREATED_AT,
            "event_time": EVENT_TIME,
            "text": "Sunny beach, lovely coffee.",
            "media_uri": None,
            "language": "en",
            **overrides,
        }
    )


def delete_value(content_id: str, event_id: str, author: str = AUTHOR) -> bytes:
    return dumps(
        {"event_id": event_id, "op": "delete", "content_id": content_id, "author_id": author, "event_time": EVENT_TIME}
    )


# -- expected output values --------------------------------------------------------


def pseudonym(account: str) -> str:
    return hmac.new(PSEUDONYM_KEY, account.encode(), hashlib.sha256).hexdigest()


def decide_record(content_id: str, event_id: str, reason: str, author: str = AUTHOR) -> dict[str, Any]:
    return {
        "content_id": content_id,
        "event_id": event_id,
        "author_id": author,
        "action": "decide",
        "eligible": reason == "eligible",
        "reason": reason,
        "cause": None,
        "policy_version": VERSION,
        "decided_at": NOW_TEXT,
        "event_time": EVENT_TIME,
    }


def retract_record(
    content_id: str, event_id: str, cause: str, event_time: str = EVENT_TIME, author: str = AUTHOR
) -> dict[str, Any]:
    return {
        "content_id": content_id,
        "event_id": event_id,
        "author_id": author,
        "action": "retract",
        "eligible": None,
        "reason": None,
        "cause": cause,
        "policy_version": VERSION,
        "decided_at": NOW_TEXT,
        "event_time": event_time,
    }


def feed_record(content_id: str, event_id: str, author: str = AUTHOR, **overrides: Any) -> dict[str, Any]:
    return {
        "content_id": content_id,
        "content_type": "post",
        "platform": "facebook",
        "author_pseudonym": pseudonym(author),
        "created_at": CREATED_AT,
        "text": "Sunny beach, lovely coffee.",
        "media_uri": None,
        "language": "en",
        "jurisdiction": COUNTRY,
        "policy_version": VERSION,
        "decided_at": NOW_TEXT,
        "source_event_id": event_id,
        "schema_version": 1,
        **overrides,
    }


def published(content_id: str, event_id: str, author: str = AUTHOR) -> list[tuple[OutputTopic, bytes, Any]]:
    """The outputs of an eligible upsert: its decision, then its feed record."""
    key = content_id.encode()
    return [
        (OutputTopic.DECISIONS, key, decide_record(content_id, event_id, "eligible", author)),
        (OutputTopic.FEED, key, feed_record(content_id, event_id, author)),
    ]


def retraction_record(content_id: str, cause: str) -> dict[str, Any]:
    """The trainers' `training.retractions` record: content id, time, cause, policy version; nothing else."""
    return {"content_id": content_id, "retracted_at": NOW_TEXT, "cause": cause, "policy_version": VERSION}


def retracted(content_id: str, event_id: str, cause: str, event_time: str) -> list[tuple[OutputTopic, bytes, Any]]:
    """The outputs of retracting a published item: a feed tombstone, the trainers' record, then the audit record."""
    key = content_id.encode()
    return [
        (OutputTopic.FEED, key, None),
        (OutputTopic.RETRACTIONS, key, retraction_record(content_id, cause)),
        (OutputTopic.DECISIONS, key, retract_record(content_id, event_id, cause, event_time)),
    ]


def decoded(result: BatchResult) -> list[tuple[OutputTopic, bytes | None, Any]]:
    # The published-items and item-version changelogs are internal plumbing, tested on their own below.
    return [
        (p.topic, p.key, None if p.value is None else orjson.loads(p.value))
        for p in result.records()
        if p.topic not in (OutputTopic.PUBLISHED, OutputTopic.ITEMS)
    ]


def rule_state_updates(result: BatchResult) -> dict[int, list[tuple[bytes, bytes | None]]]:
    """`post_updates` without the item versions (`v:`/`x:` keys, order per item), which every applied event writes."""
    kept = {
        p: [(k, v) for k, v in updates if not k.startswith((b"v:", b"x:"))]
        for p, updates in result.post_updates.items()
    }
    return {p: updates for p, updates in kept.items() if updates}


# -- the fake worker ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InRecord:
    """The fields of a consumed Kafka record that the engine reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms since the epoch


class FakeWorker:
    """Performs batch results in the worker's crash-safe order against in-memory stores."""

    def __init__(self, engine: Engine, partitions: Iterable[int] = (0, 1)) -> None:
        self.engine = engine
        self.stores = {p: MemoryPartitionStore() for p in partitions}
        self.feed: dict[bytes, bytes] = {}  # the compacted `training.feed`
        self.changelog: list[InRecord] = []  # the published-items changelog, as written
        self._next_offset: Counter[tuple[str, int]] = Counter()

    def record(
        self, topic: str, key: bytes | None, value: bytes | None, *, partition: int = 0, offset: int | None = None
    ) -> InRecord:
        """An input record at the next offset of `topic`/`partition` (or at `offset`)."""
        if offset is None:
            offset = self._next_offset[topic, partition]
        self._next_offset[topic, partition] = offset + 1
        return InRecord(topic, partition, offset, key, value, BROKER_MS)

    def content(self, value: bytes | None, key: bytes | None = AUTHOR.encode(), **kw: Any) -> InRecord:
        return self.record(TOPICS.content, key, value, **kw)

    def profile(self, value: bytes | None, key: bytes | None = AUTHOR.encode(), **kw: Any) -> InRecord:
        return self.record(TOPICS.profiles, key, value, **kw)

    def objection(self, value: bytes | None, key: bytes | None = AUTHOR.encode(), **kw: Any) -> InRecord:
        return self.record(TOPICS.objections, key, value, **kw)

    def run(
        self,
        state: Sequence[InRecord] = (),
        content: Sequence[InRecord] = (),
        now: dt.datetime = NOW,
        *,
        crash_after_send: bool = False,
    ) -> BatchResult:
        """One batch; `crash_after_send` stops before `post_updates`, as a crash would."""
        result = self.engine.process(self.stores, state, content, now)
        for partition, updates in result.pre_updates.items():
            self.stores[partition].apply(updates)
        for out in result.records():
            if out.topic is OutputTopic.PUBLISHED:
                self.changelog.append(
                    InRecord(TOPICS.published, out.partition or 0, len(self.changelog), out.key, out.value, BROKER_MS)
                )
            if out.topic is OutputTopic.FEED:
                assert out.key is not None
                if out.value is None:
                    self.feed.pop(out.key, None)
                else:
                    self.feed[out.key] = out.value
        if crash_after_send:
            return result
        for partition in result.post_updates.keys() | result.state_offsets.keys():
            self.stores[partition].apply(
                result.post_updates.get(partition, ()), result.state_offsets.get(partition, {})
            )
        return result

    def published_ids(self, author: str = AUTHOR, partition: int = 0) -> list[str]:
        prefix = published_prefix(author)
        return [key[len(prefix) :].decode() for key, _ in self.stores[partition].scan(prefix)]

    def publish(self, *content_ids: str, author: str = AUTHOR) -> None:
        """Profile the author, then put `content_ids` on the feed (events `e-<content_id>`)."""
        self.run(state=[self.profile(profile_value(author), key=author.encode())])
        result = self.run(
            content=[self.content(upsert_value(c, f"e-{c}", author), key=author.encode()) for c in content_ids]
        )
        assert decoded(result) == [out for c in content_ids for out in published(c, f"e-{c}", author)]


@pytest.fixture
def engine() -> Engine:
    return Engine(POLICY, PSEUDONYM_KEY, TOPICS)


@pytest.fixture
def worker(engine: Engine) -> FakeWorker:
    return FakeWorker(engine)


# -- decisions ---------------------------------------------------------------------


def test_engine_eligible_upsert_yields_one_decision_and_one_minimised_feed_record(worker: FakeWorker) -> None:
    worker.run(state=[worker.profile(profile_value())])

    result = worker.run(content=[worker.content(upsert_value("c-1", "e-1"))])

    assert decoded(result) == [
        (OutputTopic.DECISIONS, b"c-1", decide_record("c-1", "e-1", "eligible")),
        (OutputTopic.FEED, b"c-1", feed_record("c-1", "e-1")),
    ]
    feed = orjson.loads(next(p for p in result.produce if p.topic is OutputTopic.FEED).value or b"")
    assert set(feed) == FEED_FIELDS
    assert feed["author_pseudonym"] == hmac.new(PSEUDONYM_KEY, AUTHOR.encode(), hashlib.sha256).hexdigest()
    assert result.decisions == Counter({Reason.ELIGIBLE: 1})
    assert not result.dead_letters and not result.retractions


@pytest.mark.parametrize(
    "upsert",
    [
        pytest.param({}, id="post"),
        pytest.param({"content_type": "photo", "text": None, "media_uri": "https://m.example/p.jpg"}, id="photo"),
        pytest.param({"platform": "instagram", "content_type": "caption", "language": None}, id="caption"),
    ],
)
def test_engine_feed_record_carries_no_author_id_birth_date_or_country(
    worker: FakeWorker, upsert: dict[str, Any]
) -> None:
    worker.run(state=[worker.profile(profile_value())])

    result = worker.run(content=[worker.content(upsert_value("c-1", "e-1", **upsert))])

    feed = [p.value for p in result.produce if p.topic is OutputTopic.FEED]
    assert len(feed) == 1 and feed[0] is not None
    raw = feed[0]
    assert orjson.loads(raw) == feed_record("c-1", "e-1", **upsert)
    assert AUTHOR.encode() not in raw
    assert BIRTH_DATE.encode() not in raw and b"1990" not in raw
    # The country of residence may appear only as the jurisdiction that allowed the item.
    assert COUNTRY.encode() not in raw.replace(b'"jurisdiction":"GB"', b"")


# Each case: the author's profile (None = no profile) and objection, the upsert's
# overrides, and the reason the rule gives. NOW is 2026-11-28.
INELIGIBLE = [
    pytest.param(
        profile_value(),
        None,
        {"content_type": "message", "visibility": "private"},
        Reason.PRIVATE_MESSAGE,
        id="private_message",
    ),
    pytest.param(
        profile_value(), None, {"content_type": "message"}, Reason.PRIVATE_MESSAGE, id="private_message_even_if_public"
    ),
    pytest.param(profile_value(), None, {"visibility": "friends"}, Reason.NOT_PUBLIC, id="not_public_friends"),
    pytest.param(profile_value(), None, {"visibility": "private"}, Reason.NOT_PUBLIC, id="not_public_private"),
    pytest.param(None, None, {}, Reason.ACCOUNT_UNKNOWN, id="account_unknown"),
    pytest.param(profile_value(), objection_value("objected"), {}, Reason.OBJECTED, id="objected"),
    pytest.param(profile_value(country=None), None, {}, Reason.COUNTRY_UNKNOWN, id="country_unknown"),
    pytest.param(profile_value(country="DE"), None, {}, Reason.JURISDICTION_NOT_ENABLED, id="jurisdiction_not_enabled"),
    pytest.param(profile_value(notified_at=None), None, {}, Reason.NOT_NOTIFIED, id="not_notified"),
    pytest.param(
        profile_value(country="BR", notified_at="2026-11-01T00:00:00Z"),
        None,
        {},
        Reason.NOTICE_PERIOD_RUNNING,
        id="notice_period_running",
    ),
    pytest.param(profile_value(birth_date=None), None, {}, Reason.AGE_UNKNOWN, id="age_unknown"),
    pytest.param(profile_value(birth_date="2008-11-29"), None, {}, Reason.MINOR, id="minor"),
    pytest.param(
        profile_value(birth_date="2008-11-01"),
        None,
        {"created_at": "2026-10-31T23:59:59Z"},
        Reason.CREATED_WHILE_MINOR,
        id="created_while_minor",
    ),
]


@pytest.mark.parametrize(("profile", "objection", "upsert", "reason"), INELIGIBLE)
def test_engine_ineligible_upsert_yields_decision_record_only(
    worker: FakeWorker, profile: bytes | None, objection: bytes | None, upsert: dict[str, Any], reason: Reason
) -> None:
    state = []
    if profile is not None:
        state.append(worker.profile(profile))
    if objection is not None:
        state.append(worker.objection(objection))
    assert decoded(worker.run(state=state)) == []

    result = worker.run(content=[worker.content(upsert_value("c-1", "e-1", **upsert))])

    outputs = decoded(result)
    assert outputs[0] == (OutputTopic.DECISIONS, b"c-1", decide_record("c-1", "e-1", reason.value))
    assert result.decisions == Counter({reason: 1})
    assert not result.pre_updates
    if reason is Reason.NOTICE_PERIOD_RUNNING:
        # Held, not dropped: a deferral on the deferred topic and in the store (see the deferral tests).
        assert [o[0] for o in outputs[1:]] == [OutputTopic.DEFERRED]
        assert result.post_updates
    else:
        assert outputs[1:] == [] and not rule_state_updates(result)
    assert worker.feed == {} and worker.published_ids() == []


def test_engine_content_type_disabled_by_policy_yields_decision_record_only() -> None:
    policy = Policy(VERSION, frozenset({ContentType.POST}), POLICY.minimum_age, POLICY.jurisdictions)
    worker = FakeWorker(Engine(policy, PSEUDONYM_KEY, TOPICS))
    worker.run(state=[worker.profile(profile_value())])

    result = worker.run(content=[worker.content(upsert_value("c-1", "e-1", content_type="comment"))])

    assert decoded(result) == [(OutputTopic.DECISIONS, b"c-1", decide_record("c-1", "e-1", "content_type_not_enabled"))]


# -- dead letters ------------------------------------------------------------------

_MISSING_CONTENT_ID = dumps({k: v for k, v in orjson.loads(upsert_value()).items() if k != "content_id"})

DEAD_LETTERS = [
    pytest.param(AUTHOR.encode(), b'{"event_id": "e-1", ', DeadLetterReason.MALFORMED_JSON, id="malformed_json"),
    pytest.param(AUTHOR.encode(), b"\xff\xfe{}", DeadLetterReason.MALFORMED_JSON, id="malformed_json_not_utf8"),
    pytest.param(AUTHOR.encode(), b"[1, 2]", DeadLetterReason.NOT_AN_OBJECT, id="not_an_object_array"),
    pytest.param(AUTHOR.encode(), b"null", DeadLetterReason.NOT_AN_OBJECT, id="not_an_object_null"),
    pytest.param(AUTHOR.encode(), b'"upsert"', DeadLetterReason.NOT_AN_OBJECT, id="not_an_object_string"),
    pytest.param(
        AUTHOR.encode(), _MISSING_CONTENT_ID, DeadLetterReason.SCHEMA_VIOLATION, id="schema_violation_missing_field"
    ),
    pytest.param(
        AUTHOR.encode(),
        upsert_value(visibility="public_ish"),
        DeadLetterReason.SCHEMA_VIOLATION,
        id="schema_violation_unknown_enum",
    ),
    pytest.param(
        AUTHOR.encode(),
        upsert_value(event_time="yesterday"),
        DeadLetterReason.SCHEMA_VIOLATION,
        id="schema_violation_bad_timestamp",
    ),
    pytest.param(AUTHOR.encode(), None, DeadLetterReason.SCHEMA_VIOLATION, id="schema_violation_tombstone"),
    pytest.param(b"acct-someone-else", upsert_value(), DeadLetterReason.KEY_MISMATCH, id="key_mismatch"),
    pytest.param(None, upsert_value(), DeadLetterReason.KEY_MISMATCH, id="key_mismatch_no_key"),
    pytest.param(b"\xff", upsert_value(), DeadLetterReason.KEY_MISMATCH, id="key_mismatch_key_not_utf8"),
]


@pytest.mark.parametrize(("key", "value", "reason"), DEAD_LETTERS)
def test_engine_unprocessable_content_yields_one_dead_letter_only(
    worker: FakeWorker, key: bytes | None, value: bytes | None, reason: DeadLetterReason
) -> None:
    worker.run(state=[worker.profile(profile_value())])
    record = worker.content(value, key=key, partition=0, offset=41)

    result = worker.run(content=[record])

    assert [(p.topic, p.key) for p in result.produce] == [(OutputTopic.DLQ, key)]
    letter = orjson.loads(result.produce[0].value or b"")
    detail = letter.pop("detail")
    assert isinstance(detail, str) and detail
    assert letter == {
        "reason": reason.value,
        "topic": TOPICS.content,
        "partition": 0,
        "offset": 41,
        "received_at": NOW_TEXT,
        "key": None if key is None else base64.b64encode(key).decode(),
        "value": None if value is None else base64.b64encode(value).decode(),
    }
    assert (None if letter["value"] is None else base64.b64decode(letter["value"])) == value
    assert result.dead_letters == Counter({reason: 1})
    assert not result.decisions and not result.retractions
    assert not result.pre_updates and not result.post_updates and not result.state_offsets


# -- one outcome per input ---------------------------------------------------------

_TOPIC_OF_KIND = {
    TopicKind.CONTENT: TOPICS.content,
    TopicKind.PROFILES: TOPICS.profiles,
    TopicKind.OBJECTIONS: TOPICS.objections,
}
_PARTITIONS = 3


def _partition_of(key: bytes | None) -> int:
    return zlib.crc32(key or b"") % _PARTITIONS


def _run_workload(engine: Engine, *, seed: int, count: int, batch: int) -> tuple[FakeWorker, list[Any], list[Any]]:
    """Feed a generated workload through the engine in batches; return the worker, inputs and results."""
    workload = Workload(seed=seed, accounts=80, now=NOW, malformed_share=0.05)
    worker = FakeWorker(engine, range(_PARTITIONS))

    def to_record(item: Any) -> InRecord:
        topic, key, value = item.record
        return worker.record(_TOPIC_OF_KIND[topic], key, value, partition=_partition_of(key))

    worker.run(state=[to_record(item) for item in workload.setup()])
    items = list(workload.stream(count))
    inputs: list[tuple[Any, InRecord]] = []
    results: list[BatchResult] = []
    for start in range(0, len(items), batch):
        chunk = [(item, to_record(item)) for item in items[start : start + batch]]
        inputs.extend(chunk)
        state = [r for item, r in chunk if item.record.topic is not TopicKind.CONTENT]
        content = [r for item, r in chunk if item.record.topic is TopicKind.CONTENT]
        results.append(worker.run(state=state, content=content))
    return worker, inputs, results


def test_engine_workload_every_input_record_ends_in_exactly_one_outcome(engine: Engine) -> None:
    _, inputs, results = _run_workload(engine, seed=11, count=3000, batch=250)
    content = [(item, record) for item, record in inputs if item.record.topic is TopicKind.CONTENT]
    upserts = Counter(orjson.loads(r.value)["event_id"] for item, r in content if item.kind is RecordKind.UPSERT)
    deletes = Counter(orjson.loads(r.value)["event_id"] for item, r in content if item.kind is RecordKind.DELETE)
    malformed = Counter((r.topic, r.partition, r.offset) for item, r in content if item.kind is RecordKind.MALFORMED)
    assert upserts and deletes and malformed  # the workload exercises every kind of outcome

    outputs = [out for result in results for out in decoded(result)]
    decided = Counter(v["event_id"] for t, _, v in outputs if t is OutputTopic.DECISIONS and v["action"] == "decide")
    content_deleted = Counter(
        v["event_id"] for t, _, v in outputs if t is OutputTopic.DECISIONS and v["cause"] == "content_deleted"
    )
    lettered = Counter((v["topic"], v["partition"], v["offset"]) for t, _, v in outputs if t is OutputTopic.DLQ)

    # A held item (notice period running) is decided again when its author's account
    # changes (released or published at once): only then does an event have two decisions.
    first_reason: dict[str, str] = {}
    for t, _, v in outputs:
        if t is OutputTopic.DECISIONS and v["action"] == "decide":
            first_reason.setdefault(v["event_id"], v["reason"])
    again = {event_id for event_id, n in decided.items() if n > 1}
    assert again and all(first_reason[event_id] == "notice_period_running" for event_id in again)
    assert set(decided) == set(upserts)
    assert content_deleted == deletes
    assert lettered == malformed  # the generated state records are all well-formed
    assert len(content) == len(decided) + content_deleted.total() + lettered.total()
    eligible = sum(1 for t, _, v in outputs if t is OutputTopic.DECISIONS and v["reason"] == "eligible")
    assert sum(1 for t, _, v in outputs if t is OutputTopic.FEED and v is not None) == eligible
    assert sum(r.decisions.total() for r in results) == decided.total()
    assert sum(r.dead_letters.total() for r in results) == malformed.total()


def test_engine_workload_every_tombstone_has_its_retract_record_and_objecting_everyone_empties_feed(
    engine: Engine,
) -> None:
    worker, _, results = _run_workload(engine, seed=5, count=2000, batch=300)
    for result in results:
        outputs = decoded(result)
        for i, (topic, key, value) in enumerate(outputs):
            if topic is OutputTopic.FEED and value is None:
                trainers, follower = outputs[i + 1], outputs[i + 2]
                assert trainers[0] is OutputTopic.RETRACTIONS and trainers[1] == key
                assert trainers[2]["cause"] == follower[2]["cause"]
                assert follower[0] is OutputTopic.DECISIONS and follower[1] == key
                assert follower[2]["action"] == "retract"
        assert sum(1 for t, _, v in outputs if t is OutputTopic.FEED and v is None) == result.retractions.total()
        assert sum(1 for t, _, _ in outputs if t is OutputTopic.RETRACTIONS) == result.retractions.total()
    on_feed = len(worker.feed)
    assert on_feed > 0

    authors = Workload(seed=5, accounts=80, now=NOW).account_ids
    objections = [
        worker.objection(objection_value("objected", a), key=a.encode(), partition=_partition_of(a.encode()))
        for a in authors
    ]
    result = worker.run(state=objections)

    assert worker.feed == {}
    assert result.retractions == Counter({RetractCause.OBJECTION: on_feed})
    assert all(not list(store.scan(b"i:")) for store in worker.stores.values())


# -- state before content ----------------------------------------------------------


def test_engine_objection_and_content_in_one_batch_applies_state_first_objected(worker: FakeWorker) -> None:
    worker.run(state=[worker.profile(profile_value())])

    # The content record has the lower offset on its own topic; state still goes first.
    result = worker.run(
        state=[worker.objection(objection_value("objected"))], content=[worker.content(upsert_value("c-1", "e-1"))]
    )

    assert decoded(result) == [(OutputTopic.DECISIONS, b"c-1", decide_record("c-1", "e-1", "objected"))]
    assert worker.feed == {}


def test_engine_profile_and_content_in_one_batch_applies_state_first_eligible(worker: FakeWorker) -> None:
    result = worker.run(state=[worker.profile(profile_value())], content=[worker.content(upsert_value("c-1", "e-1"))])

    assert decoded(result) == published("c-1", "e-1")


# -- retractions -------------------------------------------------------------------

# A state record arriving after c-1 and c-2 were published, and the cause it retracts them with.
STATE_RETRACTIONS = [
    pytest.param(TOPICS.objections, objection_value("objected"), RetractCause.OBJECTION, id="objection"),
    pytest.param(TOPICS.profiles, None, RetractCause.ACCOUNT_DELETED, id="account_deleted"),
    pytest.param(TOPICS.profiles, profile_value(country="DE"), RetractCause.ACCOUNT_CHANGED, id="moved_to_DE"),
    pytest.param(TOPICS.profiles, profile_value(country=None), RetractCause.ACCOUNT_CHANGED, id="country_unknown"),
    pytest.param(
        TOPICS.profiles,
        profile_value(birth_date="2010-03-04"),
        RetractCause.ACCOUNT_CHANGED,
        id="birth_date_corrected_to_minor",
    ),
    pytest.param(
        TOPICS.profiles,
        profile_value(birth_date="2008-11-15"),
        RetractCause.ACCOUNT_CHANGED,
        id="birth_date_corrected_created_while_minor",
    ),
]


@pytest.mark.parametrize(("topic", "value", "cause"), STATE_RETRACTIONS)
def test_engine_state_change_after_publish_retracts_every_published_item(
    worker: FakeWorker, topic: str, value: bytes | None, cause: RetractCause
) -> None:
    worker.publish("c-1", "c-2")
    worker.publish("c-9", author=OTHER)
    record = worker.record(topic, AUTHOR.encode(), value)

    result = worker.run(state=[record])

    event_id = f"{topic}:0:{record.offset}"
    assert decoded(result) == [
        *retracted("c-1", event_id, cause.value, BROKER_TIME_TEXT),
        *retracted("c-2", event_id, cause.value, BROKER_TIME_TEXT),
    ]
    assert result.retractions == Counter({cause: 2})
    assert set(worker.feed) == {b"c-9"}
    assert worker.published_ids() == [] and worker.published_ids(OTHER) == ["c-9"]


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(profile_value(updated_at="2026-11-28T09:00:00Z"), id="same_facts"),
        pytest.param(profile_value(country="BR"), id="moved_to_BR_notified_long_ago"),
        pytest.param(profile_value(birth_date="2000-01-01"), id="birth_date_corrected_still_adult"),
    ],
)
def test_engine_profile_change_keeping_items_eligible_retracts_nothing(worker: FakeWorker, profile: bytes) -> None:
    worker.publish("c-1")

    result = worker.run(state=[worker.profile(profile)])

    assert decoded(result) == []
    assert worker.published_ids() == ["c-1"] and set(worker.feed) == {b"c-1"}


def test_engine_content_delete_of_published_item_retracts_content_deleted(worker: FakeWorker) -> None:
    worker.publish("c-1", "c-2")

    result = worker.run(content=[worker.content(delete_value("c-1", "e-del"))])

    assert decoded(result) == retracted("c-1", "e-del", "content_deleted", EVENT_TIME)
    assert result.retractions == Counter({RetractCause.CONTENT_DELETED: 1})
    assert not result.decisions
    assert worker.published_ids() == ["c-2"] and set(worker.feed) == {b"c-2"}


@pytest.mark.parametrize(
    ("upsert", "reason"),
    [
        pytest.param({"visibility": "friends"}, "not_public", id="friends"),
        pytest.param({"visibility": "private"}, "not_public", id="private"),
    ],
)
def test_engine_reupsert_no_longer_public_retracts_visibility_changed(
    worker: FakeWorker, upsert: dict[str, Any], reason: str
) -> None:
    worker.publish("c-1")

    result = worker.run(content=[worker.content(upsert_value("c-1", "e-2", **upsert))])

    assert decoded(result) == [
        (OutputTopic.DECISIONS, b"c-1", decide_record("c-1", "e-2", reason)),
        *retracted("c-1", "e-2", "visibility_changed", EVENT_TIME),
    ]
    assert result.decisions == Counter({Reason(reason): 1})
    assert result.retractions == Counter({RetractCause.VISIBILITY_CHANGED: 1})
    assert worker.published_ids() == [] and worker.feed == {}


def test_engine_second_objection_after_retraction_retracts_nothing(worker: FakeWorker) -> None:
    worker.publish("c-1")
    first = worker.objection(objection_value("objected"))
    assert decoded(worker.run(state=[first])) == retracted(
        "c-1", f"{TOPICS.objections}:0:{first.offset}", "objection", BROKER_TIME_TEXT
    )
    assert worker.published_ids() == []

    result = worker.run(state=[worker.objection(objection_value("objected"))])

    assert decoded(result) == []
    assert not result.retractions


@pytest.mark.parametrize(
    "withdrawal",
    [pytest.param(objection_value("withdrawn"), id="withdrawn"), pytest.param(None, id="tombstone")],
)
def test_engine_withdrawn_objection_resurrects_nothing_new_upserts_eligible(
    worker: FakeWorker, withdrawal: bytes | None
) -> None:
    worker.publish("c-1")
    worker.run(state=[worker.objection(objection_value("objected"))])
    assert worker.feed == {}

    result = worker.run(state=[worker.objection(withdrawal)])

    assert decoded(result) == []
    assert worker.feed == {} and worker.published_ids() == []

    # New upserts, of a new item and of the retracted one, are decided afresh.
    result = worker.run(
        content=[worker.content(upsert_value("c-2", "e-2")), worker.content(upsert_value("c-1", "e-3"))]
    )

    assert decoded(result) == [*published("c-2", "e-2"), *published("c-1", "e-3")]
    assert worker.published_ids() == ["c-1", "c-2"]


def test_engine_objection_with_nothing_published_retracts_nothing(worker: FakeWorker) -> None:
    # OTHER's key starts with AUTHOR's: its items must not count as AUTHOR's.
    worker.publish("c-9", author=OTHER)
    worker.run(state=[worker.profile(profile_value())])

    result = worker.run(state=[worker.objection(objection_value("objected"))])

    assert decoded(result) == []
    assert not result.retractions and not result.pre_updates
    assert result.post_updates == {0: [(objection_key(AUTHOR), pack_objection(ObjectionStatus.OBJECTED))]}
    assert set(worker.feed) == {b"c-9"} and worker.published_ids(OTHER) == ["c-9"]


@pytest.mark.parametrize(
    "history",
    [
        pytest.param([], id="never_upserted"),
        pytest.param([upsert_value("c-1", "e-1", visibility="friends")], id="decided_ineligible"),
    ],
)
def test_engine_delete_of_never_published_item_yields_retract_record_without_tombstone(
    worker: FakeWorker, history: list[bytes]
) -> None:
    worker.run(state=[worker.profile(profile_value())])
    worker.run(content=[worker.content(v) for v in history])

    result = worker.run(content=[worker.content(delete_value("c-1", "e-del"))])

    assert decoded(result) == [
        (OutputTopic.DECISIONS, b"c-1", retract_record("c-1", "e-del", "content_deleted", EVENT_TIME))
    ]
    # Nothing left the feed, so nothing counts as a retraction.
    assert not result.retractions and not result.decisions
    assert not result.pre_updates and not rule_state_updates(result)


def test_engine_delete_of_item_retracted_by_objection_yields_no_second_tombstone(worker: FakeWorker) -> None:
    worker.publish("c-1")
    worker.run(state=[worker.objection(objection_value("objected"))])

    result = worker.run(content=[worker.content(delete_value("c-1", "e-del"))])

    assert decoded(result) == [
        (OutputTopic.DECISIONS, b"c-1", retract_record("c-1", "e-del", "content_deleted", EVENT_TIME))
    ]


def test_engine_publish_then_delete_in_one_batch_ends_with_tombstone(worker: FakeWorker) -> None:
    worker.run(state=[worker.profile(profile_value())])

    result = worker.run(
        content=[worker.content(upsert_value("c-1", "e-1")), worker.content(delete_value("c-1", "e-del"))]
    )

    assert decoded(result) == [*published("c-1", "e-1"), *retracted("c-1", "e-del", "content_deleted", EVENT_TIME)]
    assert not result.pre_updates  # the item is not on the feed once the batch is sent
    assert worker.feed == {} and worker.published_ids() == []


# -- store updates and offsets -----------------------------------------------------


def test_engine_batch_updates_index_additions_before_sending_removals_and_state_after(worker: FakeWorker) -> None:
    profile, objection = profile_value(), objection_value("withdrawn")
    result = worker.run(state=[worker.profile(profile), worker.objection(objection)])
    assert result.pre_updates == {}
    # The store keeps what the rule reads, packed (state.py), not the topic's bytes.
    assert result.post_updates == {
        0: [
            (profile_key(AUTHOR), pack_profile(_decoded_profile(profile))),
            (objection_key(AUTHOR), pack_objection(ObjectionStatus.WITHDRAWN)),
        ]
    }

    result = worker.run(content=[worker.content(upsert_value("c-1", "e-1"))])
    assert rule_state_updates(result) == {}
    assert [(key, orjson.loads(value or b"")) for key, value in result.pre_updates[0]] == [
        (published_key(AUTHOR, "c-1"), {"content_type": "post", "created_at": CREATED_AT, "event_id": "e-1"})
    ]
    assert list(result.pre_updates) == [0]

    objected = objection_value("objected")
    result = worker.run(state=[worker.objection(objected)])
    assert result.pre_updates == {}
    assert dict(result.post_updates[0]) == {
        objection_key(AUTHOR): pack_objection(ObjectionStatus.OBJECTED),
        published_key(AUTHOR, "c-1"): None,
    }
    assert len(result.post_updates[0]) == 2 and list(result.post_updates) == [0]


def test_engine_state_offsets_are_last_offset_plus_one_per_partition_and_kind(worker: FakeWorker) -> None:
    state = [
        worker.profile(profile_value(), partition=0, offset=10),
        worker.profile(profile_value(country="BR"), partition=0),
        worker.objection(objection_value("withdrawn"), partition=0, offset=3),
        worker.profile(profile_value(OTHER), key=OTHER.encode(), partition=1, offset=70),
        worker.objection(b"{broken", partition=1, offset=5),  # a dead letter still advances the offset
    ]

    result = worker.run(state=state, content=[worker.content(upsert_value(), partition=0, offset=500)])

    assert result.state_offsets == {
        0: {StateKind.PROFILES: 12, StateKind.OBJECTIONS: 4},
        1: {StateKind.PROFILES: 71, StateKind.OBJECTIONS: 6},
    }
    assert [worker.stores[0].next_offset(k) for k in (StateKind.PROFILES, StateKind.OBJECTIONS)] == [12, 4]
    assert [worker.stores[1].next_offset(k) for k in (StateKind.PROFILES, StateKind.OBJECTIONS)] == [71, 6]


# -- fail closed -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"{oops", id="malformed_json"),
        pytest.param(b"[]", id="not_an_object"),
        pytest.param(objection_value("perhaps"), id="schema_violation"),
        pytest.param(objection_value("withdrawn", account=OTHER), id="key_mismatch"),
    ],
)
def test_engine_unreadable_objection_fails_closed_objected_and_retracts(worker: FakeWorker, value: bytes) -> None:
    worker.publish("c-1", "c-2")
    record = worker.objection(value)

    result = worker.run(state=[record])

    outputs = decoded(result)
    assert [(t, k) for t, k, _ in outputs[:1]] == [(OutputTopic.DLQ, AUTHOR.encode())]
    assert outputs[0][2]["topic"] == TOPICS.objections and outputs[0][2]["offset"] == record.offset
    assert outputs[0][2]["value"] == base64.b64encode(value).decode()
    event_id = f"{TOPICS.objections}:0:{record.offset}"
    assert outputs[1:] == [
        *retracted("c-1", event_id, "objection", BROKER_TIME_TEXT),
        *retracted("c-2", event_id, "objection", BROKER_TIME_TEXT),
    ]
    assert worker.feed == {}

    result = worker.run(content=[worker.content(upsert_value("c-3", "e-3"))])

    assert decoded(result) == [(OutputTopic.DECISIONS, b"c-3", decide_record("c-3", "e-3", "objected"))]


def test_engine_unreadable_objection_then_valid_withdrawal_makes_new_upserts_eligible(worker: FakeWorker) -> None:
    worker.run(state=[worker.profile(profile_value()), worker.objection(b"{oops")])
    worker.run(state=[worker.objection(objection_value("withdrawn"))])

    result = worker.run(content=[worker.content(upsert_value("c-1", "e-1"))])

    assert decoded(result) == published("c-1", "e-1")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\x00garbage", id="malformed_json"),
        pytest.param(b"42", id="not_an_object"),
        pytest.param(profile_value(birth_date="17/05/1990"), id="schema_violation"),
        pytest.param(profile_value(OTHER), id="key_mismatch"),
    ],
)
def test_engine_unreadable_profile_fails_closed_account_unknown(worker: FakeWorker, value: bytes) -> None:
    worker.publish("c-1")
    record = worker.profile(value)

    result = worker.run(state=[record])

    outputs = decoded(result)
    assert outputs[0][0] is OutputTopic.DLQ and outputs[0][2]["topic"] == TOPICS.profiles
    # The item may no longer be used; the rule's reason is account_unknown, retracted as account_changed
    # (the account was not deleted: its update could not be read).
    assert outputs[1:] == retracted("c-1", f"{TOPICS.profiles}:0:{record.offset}", "account_changed", BROKER_TIME_TEXT)
    assert worker.feed == {}

    result = worker.run(content=[worker.content(upsert_value("c-2", "e-2"))])

    assert decoded(result) == [(OutputTopic.DECISIONS, b"c-2", decide_record("c-2", "e-2", "account_unknown"))]


def test_engine_unreadable_state_without_account_key_is_dead_letter_only(worker: FakeWorker) -> None:
    worker.publish("c-1")

    result = worker.run(state=[worker.objection(b"{oops", key=None), worker.profile(b"{oops", key=b"")])

    assert [p.topic for p in result.produce] == [OutputTopic.DLQ, OutputTopic.DLQ]
    assert result.dead_letters == Counter({DeadLetterReason.MALFORMED_JSON: 2})
    assert set(worker.feed) == {b"c-1"}


def test_engine_crash_after_sending_retractions_replay_keeps_objection_honoured(worker: FakeWorker) -> None:
    worker.publish("c-1")
    objection = worker.objection(objection_value("objected"))
    event_id = f"{TOPICS.objections}:0:{objection.offset}"

    # Tombstones sent, but neither the objection nor its offset reached the store.
    worker.run(state=[objection], crash_after_send=True)
    assert worker.feed == {} and worker.published_ids() == ["c-1"]
    assert worker.stores[0].next_offset(StateKind.OBJECTIONS) == 0

    replay = worker.run(state=[objection])

    assert decoded(replay) == retracted("c-1", event_id, "objection", BROKER_TIME_TEXT)  # a duplicate, never a loss
    assert worker.published_ids() == [] and worker.stores[0].next_offset(StateKind.OBJECTIONS) == objection.offset + 1
    result = worker.run(content=[worker.content(upsert_value("c-2", "e-2"))])
    assert decoded(result) == [(OutputTopic.DECISIONS, b"c-2", decide_record("c-2", "e-2", "objected"))]


def test_engine_crash_after_sending_feed_record_index_already_knows_item(worker: FakeWorker) -> None:
    worker.run(state=[worker.profile(profile_value())])
    worker.run(content=[worker.content(upsert_value("c-1", "e-1"))], crash_after_send=True)
    assert set(worker.feed) == {b"c-1"} and worker.published_ids() == ["c-1"]

    result = worker.run(state=[worker.objection(objection_value("objected"))])

    assert result.retractions == Counter({RetractCause.OBJECTION: 1})
    assert worker.feed == {}


# Regression: the index key once used a NUL separator, which an author id may contain.
def test_engine_author_id_containing_nul_objection_retracts_only_own_items(worker: FakeWorker) -> None:
    prefix_author, nul_author = "x", "x\x00y"
    worker.publish("c-1", author=nul_author)
    worker.run(state=[worker.profile(profile_value(prefix_author), key=prefix_author.encode())])

    first = worker.run(state=[worker.objection(objection_value("objected", prefix_author), key=prefix_author.encode())])
    second = worker.run(state=[worker.objection(objection_value("objected", nul_author), key=nul_author.encode())])

    assert decoded(first) == []
    assert [(t, k) for t, k, _ in decoded(second)] == [
        (OutputTopic.FEED, b"c-1"),
        (OutputTopic.RETRACTIONS, b"c-1"),
        (OutputTopic.DECISIONS, b"c-1"),
    ]
    assert worker.feed == {}


def test_engine_published_index_changes_go_to_their_changelog_on_the_authors_partition(worker: FakeWorker) -> None:
    worker.run(state=[worker.profile(profile_value(AUTHOR), key=AUTHOR.encode())])
    added = worker.run(content=[worker.content(upsert_value("c-1", "e-c-1"), key=AUTHOR.encode())])
    removed = worker.run(state=[worker.objection(objection_value("objected"))])

    # An entry is sent (and acknowledged) before its feed record, a removal after its tombstone.
    assert not [p for p in (*added.produce, *added.last) if p.topic is OutputTopic.PUBLISHED]
    assert not [p for p in (*removed.first, *removed.produce) if p.topic is OutputTopic.PUBLISHED]
    [entry] = [p for p in added.first if p.topic is OutputTopic.PUBLISHED]
    assert (entry.key, entry.partition) == (item_id(AUTHOR, "c-1"), 0)
    assert entry.value is not None and orjson.loads(entry.value)["event_id"] == "e-c-1"
    [tombstone] = [p for p in removed.last if p.topic is OutputTopic.PUBLISHED]
    assert (tombstone.key, tombstone.value, tombstone.partition) == (item_id(AUTHOR, "c-1"), None, 0)


def test_engine_published_changelog_restores_the_index_it_came_from(worker: FakeWorker) -> None:
    worker.publish("c-1", "c-2", "c-3")
    worker.run(content=[worker.content(upsert_value("c-2", "e-x", visibility="friends"), key=AUTHOR.encode())])
    fresh = MemoryPartitionStore()
    updates, _ = worker.engine.restore(StateKind.PUBLISHED, fresh, worker.changelog)
    fresh.apply(updates)
    assert list(fresh.scan(published_prefix(AUTHOR))) == list(worker.stores[0].scan(published_prefix(AUTHOR)))
    assert len(list(fresh.scan(published_prefix(AUTHOR)))) == 2


def _decoded_profile(value: bytes) -> Profile:
    profile = decode_profile(AUTHOR.encode(), value)
    assert isinstance(profile, Profile)
    return profile


class _ReadLog(MemoryPartitionStore):
    """A store that remembers which keys were read."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[bytes] = []
        self.single: list[bytes] = []  # the keys read one at a time
        self.batched: list[list[bytes]] = []  # the keys of each `get_many`

    def get(self, key: bytes) -> bytes | None:
        self.read.append(key)
        self.single.append(key)
        return super().get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self.batched.append(list(keys))
        self.read.extend(keys)
        return super().get_many(keys)


def test_the_account_is_looked_up_only_for_events_the_content_steps_let_through() -> None:
    # A third of a typical stream is refused by the event alone (messages, non-public):
    # those need no profile or objection lookup; the decisions are the same either way.
    worker = FakeWorker(Engine(POLICY, PSEUDONYM_KEY, TOPICS), partitions=(0,))
    store = worker.stores[0] = _ReadLog()
    worker.run(state=[worker.profile(profile_value()), worker.objection(objection_value("withdrawn"))])
    store.read.clear()
    account_keys = {profile_key(AUTHOR), objection_key(AUTHOR)}

    refused = worker.run(
        content=[
            worker.content(upsert_value("c-m", "e-m", content_type="message", visibility="private")),
            worker.content(upsert_value("c-f", "e-f", visibility="friends")),
        ]
    )
    assert refused.decisions == Counter({Reason.PRIVATE_MESSAGE: 1, Reason.NOT_PUBLIC: 1})
    assert account_keys.isdisjoint(store.read)

    eligible = worker.run(content=[worker.content(upsert_value("c-p", "e-p"))])
    assert eligible.decisions == Counter({Reason.ELIGIBLE: 1})
    assert account_keys <= set(store.read)


def test_a_batch_reads_its_accounts_deferrals_and_published_entries_in_one_batched_lookup() -> None:
    # One lookup at a time costs several times a batched one (docs/design.md, "State").
    worker = FakeWorker(Engine(POLICY, PSEUDONYM_KEY, TOPICS), partitions=(0,))
    store = worker.stores[0] = _ReadLog()
    worker.run(state=[worker.profile(profile_value()), worker.profile(profile_value(OTHER), key=OTHER.encode())])
    worker.publish("c-0")
    store.single.clear()
    store.batched.clear()

    result = worker.run(
        content=[
            worker.content(upsert_value("c-1", "e-1")),
            worker.content(upsert_value("c-2", "e-2", author=OTHER), key=OTHER.encode()),
            worker.content(upsert_value("c-0", "e-3", visibility="friends")),  # published: retracted
        ]
    )

    assert result.decisions == Counter({Reason.ELIGIBLE: 2, Reason.NOT_PUBLIC: 1})
    assert result.retractions == Counter({RetractCause.VISIBILITY_CHANGED: 1})
    items = [item_id(a, c) for a, c in ((AUTHOR, "c-1"), (OTHER, "c-2"), (AUTHOR, "c-0"))]
    ahead = {profile_key(AUTHOR), profile_key(OTHER), objection_key(AUTHOR), objection_key(OTHER)}
    ahead |= {prefix + item for item in items for prefix in (b"i:", b"D:", b"v:")}
    assert len(store.batched) == 1 and set(store.batched[0]) == ahead
    assert [key for key in store.single if key[:2] in (b"p:", b"o:", b"i:", b"D:")] == []
