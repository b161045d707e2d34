"""Model-based test: the engine and its stores against a small model of the contract.

A hypothesis `RuleBasedStateMachine` appends random inputs to simulated topics
(profiles and objections, upserts and tombstones; content upserts, edits, deletes,
exact duplicates, late and reordered events; unreadable records of every topic),
lets two simulated workers poll them in the order `stream/runtime/worker.py` does, moves
the clock past notice periods and item memory, restarts a worker with its stores
kept or wiped, and moves a partition between the workers. Each worker performs its
batch results as the worker does (pre-writes, the records to the topics, post-writes
with the state offsets and the changelog offsets of its own records), and recovers
an assigned partition as the worker does: changelogs restored from the store's
offsets, the state topics replayed (`recovering`), then held and published items
judged by the final state (`reevaluate_published`).

The model (`Model` below) is written from the contract and the issue #16 plan
alone: like `stream/verifier/` it imports none of the rule's code (no
`stream.core.policy`, `stream.core.engine` rules, `stream.core.records`, `stream.core.codec`); it
implements the rule, order per item, deletes being final, retractions, unreadable
records failing closed and the holding and release of items itself. The inputs are
built here as values, so the model never parses what the engine parses.

After every step:
- the compacted `training.feed` holds exactly the model's published items, each
  from the upsert the model published it from (`source_event_id`);
- the compacted changelogs (published index, held items, items' latest events),
  and the store of every partition whose owner is ready, hold exactly the model's;
and for every batch: nothing raised, every content input left its trace (the
decision, skip or retract record the model expects, with its event id, or a dead
letter naming its offset with the expected reason), every feed tombstone is a
retraction the model expects, with its cause.

Settings: the `ci` profile (bounded, for `make test`) unless HYPOTHESIS_PROFILE
names another registered here (`long`, for `make faults`).
"""

from __future__ import annotations

import calendar
import datetime as dt
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stream.config import TopicNames
from stream.core.engine import BatchResult, Engine, OutputTopic
from stream.core.policy import load_policy
from stream.core.state import REEVALUATE_KEY, StateKind, item_id, unpack_version
from stream.runtime.store import MemoryPartitionStore

UTC = dt.UTC
TOPICS = TopicNames()
PSEUDONYM_KEY = b"engine-model-key"
POLICY = load_policy()

# -- the contract, as the model knows it (not read from the engine's policy) ----------

MINIMUM_AGE = 18
NOTICE_DAYS = {"GB": 0, "BR": 30}
ITEM_MEMORY = dt.timedelta(days=8)
# Which retraction cause a refusal of a published item stands for (contract "Retractions").
CAUSE_OF_REASON = {
    "private_message": "visibility_changed",
    "not_public": "visibility_changed",
    "account_unknown": "account_deleted",
    "objected": "objection",
}

START = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

# -- the input space: few accounts and items, dates where every reason occurs --------

# The third id starts with the first (the stores' keys must keep them apart) and carries a
# NUL and a right-to-left override; the content ids an emoji and a NUL.
AUTHORS = ("a-1", "a-2", "a-1\x00\u202e")
PARTITION_OF = {"a-1": 0, "a-2": 1, "a-1\x00\u202e": 0}
PARTITIONS = (0, 1)
# Content ids are the author's (a content id is one item's, across the platform).
ITEMS = {a: (f"{a}/c1", f"{a}/c1\x00", f"{a}/\U0001f600") for a in AUTHORS}

# Dates as they are written on the topics; the model parses them itself (`_time`, `_date`).
BIRTH_DATES: tuple[str | None, ...] = (
    "1980-01-01",  # adult
    "2008-12-01",  # turns 18 on 2026-12-01, three days after the start
    "2008-02-29",  # turns 18 on 2026-03-01 (a common year)
    "2015-01-01",  # a minor throughout
    None,  # unknown
)
COUNTRIES: tuple[str | None, ...] = ("GB", "BR", "DE", None)
NOTIFIED: tuple[str | None, ...] = (
    "2025-01-01T00:00:00Z",  # every period over
    "2026-11-20T00:00:00Z",  # Brazil's 30 days run to 2026-12-20
    "2026-12-10T00:00:00Z",  # in the future: even GB's 0 days run until then
    # A due time between two milliseconds (never on the clock's whole hours, where a worker
    # would find the item due by the millisecond and still in its period by the microsecond).
    "2026-11-20T00:00:30.0005Z",
    None,  # never notified
)
CREATED_AT = (
    "2026-12-02T00:00:00Z",  # after every adult's 18th birthday
    "2020-01-01T00:00:00Z",
    "2026-02-28T23:59:59Z",  # the day before a 29 February birthday's 18th
    "2026-03-01T00:00:00Z",
    "2026-11-30T23:59:59.999999Z",  # the last moment before 2026-12-01
    "2026-12-01T00:00:00+00:00",
)
# Few event times, so that equal, older (late) and newer ones all occur; the text varies too.
EVENT_TIMES = (
    "2026-11-28T10:00:00Z",
    "2026-11-28T10:01:00Z",
    "2026-11-28T10:01:00+00:00",  # the same moment as the one before
    "2026-11-28T10:01:00.5Z",
    "2026-11-28T10:02:00Z",
)
CONTENT_TYPES = ("post", "comment", "photo", "post", "message")
VISIBILITIES = ("public", "public", "public", "friends", "private")
CLOCK_STEPS = (dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(days=3), dt.timedelta(days=31))


def _time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return moment


def _date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def _ms(moment: dt.datetime) -> int:
    """Milliseconds since the epoch, rounded down (a due time in ms, as on the deferred changelog)."""
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# -- inputs as values (what the model reads) and as bytes (what the engine reads) ------


@dataclass(frozen=True)
class Upsert:
    event_time: str
    content_type: str = "post"
    visibility: str = "public"
    created_at: str = CREATED_AT[0]


@dataclass(frozen=True)
class Delete:
    event_time: str


@dataclass(frozen=True)
class BadContent:
    kind: str


@dataclass(frozen=True)
class Event:
    """A readable content event."""

    event_id: str
    author: str
    content_id: str
    change: Upsert | Delete

    @property
    def item(self) -> tuple[str, str]:
        return (self.author, self.content_id)

    @property
    def op(self) -> str:
        return "upsert" if isinstance(self.change, Upsert) else "delete"

    @property
    def event_time(self) -> dt.datetime:
        return _time(self.change.event_time)

    def value(self) -> bytes:
        obj: dict[str, Any] = {
            "event_id": self.event_id,
            "op": self.op,
            "content_id": self.content_id,
            "author_id": self.author,
            "event_time": self.change.event_time,
        }
        if isinstance(self.change, Upsert):
            obj |= {
                "content_type": self.change.content_type,
                "platform": "instagram",
                "visibility": self.change.visibility,
                "created_at": self.change.created_at,
                "text": f"text of {self.event_id}",
                "media_uri": None,
                "language": "pt-BR",
            }
        return orjson.dumps(obj)


@dataclass(frozen=True)
class Account:
    """A profile, as written on the topic (what the rule reads of it)."""

    birth_date: str | None
    country: str | None
    notified_at: str | None

    def value(self, account_id: str) -> bytes:
        return orjson.dumps(
            {
                "account_id": account_id,
                "birth_date": self.birth_date,
                "country": self.country,
                "notified_at": self.notified_at,
                "updated_at": "2026-01-01T00:00:00Z",
            }
        )


@dataclass(frozen=True)
class ProfileTombstone:
    pass


@dataclass(frozen=True)
class Objection:
    status: str | None  # objected, withdrawn, or None: a tombstone


@dataclass(frozen=True)
class BadProfile:
    kind: str


@dataclass(frozen=True)
class BadObjection:
    kind: str


@dataclass(frozen=True)
class Unreadable:
    """An input the engine cannot read: what the model knows of it."""

    reason: str  # the expected dead-letter reason
    names: str | None  # content: the content id it still names; state: unused
    account: str | None  # the account (content: author) its key names, if any


@dataclass(frozen=True)
class StateChange:
    """A readable profile or objection record: the new value (None: tombstone)."""

    account: str
    profile: Account | None = None
    objecting: bool | None = None  # objections: True objected, False withdrawn / tombstone


Meta = Event | StateChange | Unreadable


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


@dataclass
class Log:
    """One topic partition: offsets never reused; compaction leaves gaps."""

    entries: list[tuple[bytes | None, bytes | None, int, Meta | None] | None] = field(default_factory=list)

    def append(self, key: bytes | None, value: bytes | None, timestamp: int, meta: Meta | None = None) -> int:
        self.entries.append((key, value, timestamp, meta))
        return len(self.entries) - 1

    @property
    def end(self) -> int:
        return len(self.entries)

    def read(self, topic: str, partition: int, start: int, limit: int | None = None) -> list[tuple[Rec, Meta | None]]:
        out: list[tuple[Rec, Meta | None]] = []
        for offset in range(start, self.end):
            entry = self.entries[offset]
            if entry is None:
                continue
            key, value, timestamp, meta = entry
            out.append((Rec(topic, partition, offset, key, value, timestamp), meta))
            if limit is not None and len(out) == limit:
                break
        return out

    def compact(self, below: int) -> None:
        """Keep only the latest record of each key among offsets < `below` (tombstones kept)."""
        latest: dict[bytes, int] = {}
        for offset, entry in enumerate(self.entries):
            if entry is not None and entry[0] is not None:
                latest[entry[0]] = offset
        for offset in range(min(below, self.end)):
            entry = self.entries[offset]
            if entry is not None and entry[0] is not None and latest[entry[0]] != offset:
                self.entries[offset] = None

    def view(self) -> dict[bytes, bytes]:
        """The compacted topic as a consumer reading it all sees it."""
        out: dict[bytes, bytes | None] = {}
        for entry in self.entries:
            if entry is not None and entry[0] is not None:
                out[entry[0]] = entry[1]
        return {k: v for k, v in out.items() if v is not None}


# -- the model ------------------------------------------------------------------------

Item = tuple[str, str]


@dataclass(frozen=True)
class Latest:
    event_time: dt.datetime
    event_id: str
    deleted: bool
    expires: dt.datetime


@dataclass
class Expected:
    """The audit records, dead letters and feed tombstones a step must write, as the model sees them."""

    # decide and skip records: event id, action, reason (each content input's trace, and
    # each held item decided again)
    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # retract records: content id, cause
    retracts: Counter[tuple[str, str]] = field(default_factory=Counter)
    # the retract record that is the trace of an applied delete: event id, cause
    deletes: Counter[tuple[str, str]] = field(default_factory=Counter)
    tombstones: Counter[str] = field(default_factory=Counter)
    dead: Counter[tuple[str, int, int, str]] = field(default_factory=Counter)  # topic, partition, offset, reason


def _adult_from(birth: dt.date) -> dt.date:
    year = birth.year + MINIMUM_AGE
    if (birth.month, birth.day) == (2, 29) and not calendar.isleap(year):
        return dt.date(year, 3, 1)
    return birth.replace(year=year)


@dataclass
class Model:
    now: dt.datetime = START
    profiles: dict[str, Account | None] = field(default_factory=dict)
    objecting: dict[str, bool] = field(default_factory=dict)
    latest: dict[Item, Latest] = field(default_factory=dict)
    published: dict[Item, Event] = field(default_factory=dict)
    held: dict[Item, tuple[Event, dt.datetime]] = field(default_factory=dict)

    # The rule, in the contract's order.
    def rule(self, event: Event) -> tuple[str, dt.datetime | None]:
        upsert = event.change
        assert isinstance(upsert, Upsert)
        if upsert.content_type == "message":
            return "private_message", None
        if upsert.visibility != "public":
            return "not_public", None
        account = self.profiles.get(event.author)
        if account is None:
            return "account_unknown", None
        if self.objecting.get(event.author, False):
            return "objected", None
        if account.country is None:
            return "country_unknown", None
        if account.country not in NOTICE_DAYS:
            return "jurisdiction_not_enabled", None
        if account.notified_at is None:
            return "not_notified", None
        notice_ends = _time(account.notified_at) + dt.timedelta(days=NOTICE_DAYS[account.country])
        if self.now < notice_ends:
            return "notice_period_running", notice_ends
        if account.birth_date is None:
            return "age_unknown", None
        adult_from = _adult_from(_date(account.birth_date))
        if self.now.date() < adult_from:
            return "minor", None
        if _time(upsert.created_at).astimezone(UTC).date() < adult_from:
            return "created_while_minor", None
        return "eligible", None

    def feed(self) -> dict[str, str]:
        return {content_id: event.event_id for (_, content_id), event in self.published.items()}

    def _retract(self, item: Item, cause: str, out: Expected) -> None:
        del self.published[item]
        out.retracts[item[1], cause] += 1
        out.tombstones[item[1]] += 1

    def _decide(self, event: Event, out: Expected) -> None:
        """Apply the rule to an upsert now the item's latest: publish, retract, hold."""
        reason, due = self.rule(event)
        out.decisions[event.event_id, "decide", reason] += 1
        if reason == "eligible":
            self.published[event.item] = event
            return
        if event.item in self.published:
            self._retract(event.item, CAUSE_OF_REASON.get(reason, "account_changed"), out)
        if due is not None:
            self.held[event.item] = (event, due)

    def content(self, event: Event, out: Expected) -> None:
        item = event.item
        latest = self.latest.get(item)
        skip = None
        if latest is not None:
            if latest.event_id == event.event_id:
                skip = "superseded"
            elif latest.deleted:
                skip = "deleted"
            elif event.event_time < latest.event_time:
                skip = "superseded"
        if skip is not None:
            out.decisions[event.event_id, "skip", skip] += 1
            return
        self.latest[item] = Latest(event.event_time, event.event_id, event.op == "delete", self.now + ITEM_MEMORY)
        self.held.pop(item, None)
        if event.op == "upsert":
            self._decide(event, out)
            return
        out.deletes[event.event_id, "content_deleted"] += 1
        if item in self.published:
            self._retract(item, "content_deleted", out)
        else:  # nothing to take back, but the audit log records the delete
            out.retracts[event.content_id, "content_deleted"] += 1

    def unreadable_content(self, bad: Unreadable, where: tuple[str, int, int], out: Expected) -> None:
        out.dead[*where, bad.reason] += 1
        if bad.account is None or bad.names is None:
            return
        item = (bad.account, bad.names)
        self.held.pop(item, None)
        if item in self.published:
            self._retract(item, "unreadable_update", out)

    def state(self, meta: Meta, topic: str, where: tuple[str, int, int], out: Expected, recovering: bool) -> None:
        """A profile or objection record, readable or not; `recovering`: applied only (judged later)."""
        if isinstance(meta, Unreadable):
            out.dead[*where, meta.reason] += 1
            if meta.account is None:
                return
            account = meta.account
            if topic == TOPICS.profiles:
                self.profiles[account] = None
                cause = "account_changed"
            else:
                self.objecting[account] = True
                cause = "objection"
        else:
            assert isinstance(meta, StateChange)
            account = meta.account
            if topic == TOPICS.profiles:
                self.profiles[account] = meta.profile
                cause = "account_deleted" if meta.profile is None else "account_changed"
            else:
                self.objecting[account] = bool(meta.objecting)
                cause = "objection"
        if recovering:
            return
        for item, event in sorted(self.published.items()):
            if item[0] == account and self.rule(event)[0] != "eligible":
                self._retract(item, cause, out)
        for item in sorted(self.held):
            if item[0] == account:
                self._rejudge_held(item, out)

    def _rejudge_held(self, item: Item, out: Expected) -> None:
        event, due = self.held[item]
        reason, new_due = self.rule(event)
        if reason == "notice_period_running" and new_due is not None and _ms(new_due) == _ms(due):
            return
        del self.held[item]
        self._decide(event, out)

    def due(self, partition: int, out: Expected) -> None:
        """The held items of `partition` whose time has come, decided again."""
        now_ms = _ms(self.now)
        for item in sorted(self.held):
            event, due = self.held[item]
            if PARTITION_OF[item[0]] == partition and _ms(due) <= now_ms:
                del self.held[item]
                self._decide(event, out)

    def rejudge_partition(self, partition: int, out: Expected) -> None:
        """After a recovery replay: held and published items judged by the final state."""
        for item in sorted(self.held):
            if PARTITION_OF[item[0]] == partition:
                self._rejudge_held(item, out)
        for item, event in sorted(self.published.items()):
            if PARTITION_OF[item[0]] == partition:
                reason, _ = self.rule(event)
                if reason != "eligible":
                    self._retract(item, CAUSE_OF_REASON.get(reason, "account_changed"), out)

    def forget(self, partition: int) -> None:
        """The item-memory sweep: latest events applied ITEM_MEMORY ago or more are forgotten."""
        now_ms = _ms(self.now)
        for item in sorted(self.latest):
            if PARTITION_OF[item[0]] == partition and _ms(self.latest[item].expires) <= now_ms:
                del self.latest[item]


# -- the simulated workers --------------------------------------------------------------

TOPIC_OF = {
    OutputTopic.FEED: TOPICS.feed,
    OutputTopic.DECISIONS: TOPICS.decisions,
    OutputTopic.DLQ: TOPICS.dlq,
    OutputTopic.DEFERRED: TOPICS.deferred,
    OutputTopic.PUBLISHED: TOPICS.published,
    OutputTopic.ITEMS: TOPICS.items,
    OutputTopic.RETRACTIONS: TOPICS.retractions,
}
CHANGELOG_KIND = {
    TOPICS.published: StateKind.PUBLISHED,
    TOPICS.deferred: StateKind.DEFERRED,
    TOPICS.items: StateKind.ITEMS,
}
STATE_KIND = {TOPICS.profiles: StateKind.PROFILES, TOPICS.objections: StateKind.OBJECTIONS}


@dataclass
class Cluster:
    logs: dict[tuple[str, int], Log] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)  # the group's content offsets
    feed: dict[bytes, bytes] = field(default_factory=dict)  # compacted training.feed
    out: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)  # decisions and dead letters

    def log(self, topic: str, partition: int) -> Log:
        return self.logs.setdefault((topic, partition), Log())

    def view(self, topic: str) -> dict[bytes, bytes]:
        merged: dict[bytes, bytes] = {}
        for p in PARTITIONS:
            merged |= self.log(topic, p).view()
        return merged


@dataclass
class Worker:
    """One worker process: its disk (a store per partition it ever held) and its assignment."""

    engine: Engine
    cluster: Cluster
    disks: dict[int, MemoryPartitionStore] = field(default_factory=dict)
    assigned: set[int] = field(default_factory=set)
    needs_catch_up: bool = True

    def stores(self) -> dict[int, MemoryPartitionStore]:
        return {p: self.disks.setdefault(p, MemoryPartitionStore()) for p in sorted(self.assigned)}

    def perform(self, result: BatchResult) -> None:
        """The result in the worker's order, with no crash: pre-writes, records, post-writes."""
        stores = self.stores()
        for p, updates in result.pre_updates.items():
            stores[p].apply(updates, counts=result.pre_counts.get(p))
        written: dict[tuple[str, int], list[int]] = {}
        for record in result.records():
            topic = TOPIC_OF[record.topic]
            if topic in CHANGELOG_KIND:
                offset = self.cluster.log(topic, record.partition).append(record.key, record.value, 0)
                written.setdefault((topic, record.partition), []).append(offset)
            elif topic == TOPICS.feed:
                assert record.key is not None
                if record.value is None:
                    self.cluster.feed.pop(record.key, None)
                else:
                    self.cluster.feed[record.key] = record.value
            else:
                self.cluster.out.append((topic, record.key, record.value))
        # worker._changelog_offsets: the store skips its own records when they follow its offset.
        changelog: dict[int, dict[StateKind, int]] = {}
        for (topic, p), offsets in written.items():
            kind = CHANGELOG_KIND[topic]
            if (
                p in stores
                and offsets[0] == stores[p].next_offset(kind)
                and offsets == list(range(offsets[0], offsets[0] + len(offsets)))
            ):
                changelog.setdefault(p, {})[kind] = offsets[-1] + 1
        for p in result.post_updates.keys() | result.state_offsets.keys() | changelog.keys():
            stores[p].apply(
                result.post_updates.get(p, ()),
                {**result.state_offsets.get(p, {}), **changelog.get(p, {})},
                result.post_counts.get(p),
            )

    def state_records(self) -> list[tuple[Rec, Meta | None]]:
        out: list[tuple[Rec, Meta | None]] = []
        for p, store in self.stores().items():
            for topic, kind in STATE_KIND.items():
                out += self.cluster.log(topic, p).read(topic, p, store.next_offset(kind))
        return out

    def restore(self) -> None:
        """worker._restore_changelogs: each changelog from the store's offset to its end."""
        for p, store in self.stores().items():
            for topic, kind in CHANGELOG_KIND.items():
                log = self.cluster.log(topic, p)
                records = [rec for rec, _ in log.read(topic, p, store.next_offset(kind))]
                updates, counts = self.engine.restore(kind, store, records)
                store.apply(updates, {kind: log.end}, counts)

    def reevaluate(self, now: dt.datetime) -> list[BatchResult]:
        """worker._reevaluate_published, in small chunks."""
        results: list[BatchResult] = []
        for p, store in self.stores().items():
            if store.get(REEVALUATE_KEY) is None:
                continue
            after: bytes | None = None
            while True:
                result, after = self.engine.reevaluate_published(store, p, now, after, limit=2)
                self.perform(result)
                results.append(result)
                if after is None:
                    break
            store.apply([(REEVALUATE_KEY, None)])
        return results


def _decoded(result: BatchResult, topic: OutputTopic) -> Iterator[tuple[bytes | None, Any]]:
    for record in result.records():
        if record.topic is topic:
            yield record.key, orjson.loads(record.value) if record.value is not None else None


def _check(results: Sequence[BatchResult], expected: Expected) -> None:
    """The records of a step are exactly those the model expects: every input left its trace, no other."""
    decisions: Counter[tuple[str, str, str]] = Counter()
    retracts: Counter[tuple[str, str]] = Counter()
    deletes: Counter[tuple[str, str]] = Counter()
    tombstones: Counter[str] = Counter()
    dead: Counter[tuple[str, int, int, str]] = Counter()
    for result in results:
        for _, value in _decoded(result, OutputTopic.DECISIONS):
            assert value is not None
            if value["action"] == "retract":
                retracts[value["content_id"], value["cause"]] += 1
                deletes[value["event_id"], value["cause"]] += 1
            else:
                decisions[value["event_id"], value["action"], value["reason"]] += 1
        for key, value in _decoded(result, OutputTopic.FEED):
            if value is None:
                assert key is not None
                tombstones[key.decode()] += 1
        for _, value in _decoded(result, OutputTopic.DLQ):
            dead[value["topic"], value["partition"], value["offset"], value["reason"]] += 1
    assert decisions == expected.decisions, "decide and skip records (event id, action, reason)"
    assert retracts == expected.retracts, "retract records (content id, cause)"
    assert not expected.deletes - deletes, "applied deletes without their retract record (event id, cause)"
    assert tombstones == expected.tombstones, "feed tombstones (content id)"
    assert dead == expected.dead, "dead letters (topic, partition, offset, reason)"


# -- unreadable inputs ------------------------------------------------------------------


def _other(author: str) -> str:
    return AUTHORS[(AUTHORS.index(author) + 1) % len(AUTHORS)]


def _bad_content(kind: str, author: str, content_id: str) -> tuple[bytes | None, bytes | None, Unreadable]:
    other = _other(author)
    good = Event("e-bad", author, content_id, Upsert(EVENT_TIMES[4])).value()
    obj = orjson.loads(good)
    names: str | None = content_id
    key: bytes | None = author.encode()
    account: str | None = author
    if kind == "offset_time":  # an RFC 3339 time, but not in UTC
        obj["event_time"], reason = "2026-11-28T11:00:00+01:00", "schema_violation"
    elif kind == "new_visibility":
        obj["visibility"], reason = "unlisted", "schema_violation"
    elif kind == "no_event_id":
        del obj["event_id"]
        reason = "schema_violation"
    elif kind == "year_9990":  # schema-valid, beyond what the rule computes with
        obj["created_at"], reason = "9990-01-01T00:00:00Z", "out_of_range"
    elif kind == "delete_year_9999":
        obj = {"event_id": "e-bad", "op": "delete", "content_id": content_id, "author_id": author}
        obj["event_time"], reason = "9999-12-31T23:59:59Z", "out_of_range"
    elif kind == "key_mismatch":  # names the key's item, not the value's author's
        key, account, reason = other.encode(), other, "key_mismatch"
    elif kind == "no_key":
        key, account, reason = None, None, "key_mismatch"
    elif kind == "content_id_number":
        obj["content_id"], names, reason = 17, None, "schema_violation"
    elif kind == "garbage":
        return author.encode(), b"\xff\xfe{not json", Unreadable("malformed_json", None, None)
    elif kind == "array":
        return author.encode(), b"[1, 2]", Unreadable("not_an_object", None, None)
    else:
        assert kind == "null"
        return author.encode(), None, Unreadable("schema_violation", None, None)
    return key, orjson.dumps(obj), Unreadable(reason, names, account)


BAD_CONTENT = (
    "offset_time",
    "new_visibility",
    "no_event_id",
    "year_9990",
    "delete_year_9999",
    "key_mismatch",
    "no_key",
    "content_id_number",
    "garbage",
    "array",
    "null",
)


def _bad_profile(kind: str, author: str) -> tuple[bytes | None, bytes | None, Unreadable]:
    other = _other(author)
    obj = orjson.loads(Account("1980-01-01", "GB", NOTIFIED[0]).value(author))
    key: bytes | None = author.encode()
    account: str | None = author
    if kind == "birth_9990":
        obj["birth_date"], reason = "9990-06-01", "out_of_range"
    elif kind == "notified_9999":
        obj["notified_at"], reason = "9999-12-31T23:59:59Z", "out_of_range"
    elif kind == "lower_country":
        obj["country"], reason = "gb", "schema_violation"
    elif kind == "key_mismatch":
        obj["account_id"], reason = other, "key_mismatch"
    elif kind == "no_key_tombstone":
        return None, None, Unreadable("key_mismatch", None, None)
    else:
        assert kind == "garbage"
        return key, b"\x00\x01", Unreadable("malformed_json", None, account)
    return key, orjson.dumps(obj), Unreadable(reason, None, account)


BAD_PROFILES = ("birth_9990", "notified_9999", "lower_country", "key_mismatch", "no_key_tombstone", "garbage")


def _bad_objection(kind: str, author: str) -> tuple[bytes | None, bytes | None, Unreadable]:
    obj: dict[str, Any] = {
        "account_id": author,
        "status": "objected",
        "at": "2026-11-28T09:00:00Z",
        "source": "form",
        "request_id": "r-1",
    }
    if kind == "status_maybe":
        obj["status"], reason = "maybe", "schema_violation"
    elif kind == "at_9999":
        obj["at"], reason = "9999-01-01T00:00:00Z", "out_of_range"
    elif kind == "no_request_id":
        del obj["request_id"]
        reason = "schema_violation"
    else:
        assert kind == "number"
        return author.encode(), b"42", Unreadable("not_an_object", None, author)
    return author.encode(), orjson.dumps(obj), Unreadable(reason, None, author)


BAD_OBJECTIONS = ("status_maybe", "at_9999", "no_request_id", "number")


# -- the state machine ------------------------------------------------------------------

authors = st.sampled_from(AUTHORS)
polls = st.booleans()
# Most accounts allow content (an adult notified in GB, or in Brazil in or after its notice
# period): the feed then has items for the other inputs to retract, hold and put back.
accounts = st.one_of(
    st.builds(
        Account,
        st.sampled_from(BIRTH_DATES[:3]),
        st.sampled_from(("GB", "BR")),
        st.sampled_from(NOTIFIED[:4]),
    ),
    st.builds(Account, st.sampled_from(BIRTH_DATES), st.sampled_from(COUNTRIES), st.sampled_from(NOTIFIED)),
)
# What happens to an account, weighted towards profiles that allow content.
account_changes = st.one_of(
    accounts,
    accounts,
    accounts,
    st.just(ProfileTombstone()),
    st.builds(Objection, st.sampled_from(["objected", "withdrawn", None])),
    st.builds(BadProfile, st.sampled_from(BAD_PROFILES)),
    st.builds(BadObjection, st.sampled_from(BAD_OBJECTIONS)),
)
upserts = st.builds(
    Upsert,
    st.sampled_from(EVENT_TIMES),
    st.sampled_from(CONTENT_TYPES),
    st.sampled_from(VISIBILITIES),
    st.sampled_from(CREATED_AT),
)
# What happens to an item: mostly new versions (first, edits, late ones: event times repeat).
content_changes = st.one_of(
    upserts,
    upserts,
    upserts,
    st.builds(Delete, st.sampled_from(EVENT_TIMES)),
    st.builds(BadContent, st.sampled_from(BAD_CONTENT)),
)


class EngineModel(RuleBasedStateMachine):
    """Two workers, two partitions, the simulated topics, and the model beside them."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.cluster = Cluster()
        self.engine = Engine(POLICY, PSEUDONYM_KEY, TOPICS)
        self.workers = [
            Worker(self.engine, self.cluster, assigned={0, 1}),
            Worker(Engine(POLICY, PSEUDONYM_KEY, TOPICS), self.cluster),
        ]
        self.sent: list[Event] = []
        self.next_event = 0

    @initialize(accounts=st.lists(accounts, min_size=len(AUTHORS), max_size=len(AUTHORS)))
    def start(self, accounts: list[Account]) -> None:
        """A profile for every author, mostly one that allows content, decided before anything else."""
        assert POLICY.minimum_age == MINIMUM_AGE
        assert {c: j.notice_period.days for c, j in POLICY.jurisdictions.items()} == NOTICE_DAYS
        for author, account in zip(AUTHORS, accounts, strict=True):
            self._append(
                TOPICS.profiles,
                PARTITION_OF[author],
                author.encode(),
                account.value(author),
                StateChange(author, account),
            )
        self.poll(1)

    # -- inputs ---------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        return _ms(self.model.now)

    def _then(self, poll: bool) -> None:
        """Inputs are often decided at once (a worker keeping up), sometimes they pile up."""
        if poll:
            self.poll(6)

    def _append(self, topic: str, partition: int, key: bytes | None, value: bytes | None, meta: Meta) -> None:
        self.cluster.log(topic, partition).append(key, value, self.now_ms, meta)

    @rule(poll=polls, author=authors, change=account_changes)
    def account(
        self, poll: bool, author: str, change: Account | ProfileTombstone | Objection | BadProfile | BadObjection
    ) -> None:
        """A profile or objection record (upsert, tombstone, or one the engine cannot read)."""
        partition, key = PARTITION_OF[author], author.encode()
        if isinstance(change, Account):
            self._append(TOPICS.profiles, partition, key, change.value(author), StateChange(author, change))
        elif isinstance(change, ProfileTombstone):
            self._append(TOPICS.profiles, partition, key, None, StateChange(author, None))
        elif isinstance(change, Objection):
            value = None
            if change.status is not None:
                value = orjson.dumps(
                    {
                        "account_id": author,
                        "status": change.status,
                        "at": "2026-11-28T09:00:00Z",
                        "source": "form",
                        "request_id": f"r-{self.next_event}",
                    }
                )
            state = StateChange(author, objecting=change.status == "objected")
            self._append(TOPICS.objections, partition, key, value, state)
        elif isinstance(change, BadProfile):
            self._append(TOPICS.profiles, partition, *_bad_profile(change.kind, author))
        else:
            self._append(TOPICS.objections, partition, *_bad_objection(change.kind, author))
        self._then(poll)

    def _send(self, event: Event) -> None:
        self._append(TOPICS.content, PARTITION_OF[event.author], event.author.encode(), event.value(), event)

    @rule(poll=polls, author=authors, n=st.integers(0, 2), change=content_changes)
    def content(self, poll: bool, author: str, n: int, change: Upsert | Delete | BadContent) -> None:
        """A content event of one of the author's items: a new version, a delete, or an unreadable one."""
        if isinstance(change, BadContent):
            key, value, bad = _bad_content(change.kind, author, ITEMS[author][n])
            self._append(TOPICS.content, PARTITION_OF[key.decode()] if key is not None else 0, key, value, bad)
        else:
            self.next_event += 1
            event = Event(f"e-{self.next_event}", author, ITEMS[author][n], change)
            self.sent.append(event)
            self._send(event)
        self._then(poll)

    @precondition(lambda self: bool(self.sent))
    @rule(poll=polls, data=st.data())
    def duplicate(self, poll: bool, data: st.DataObject) -> None:
        """An event delivered again, byte for byte (at least once upstream)."""
        self._send(data.draw(st.sampled_from(self.sent)))
        self._then(poll)

    @rule(poll=polls, author=authors, n=st.integers(0, 2), older=upserts)
    def reordered(self, poll: bool, author: str, n: int, older: Upsert) -> None:
        """Two versions of an item arriving newest first: the older one is late."""
        newer = Event(f"e-{self.next_event + 1}", author, ITEMS[author][n], Upsert(EVENT_TIMES[4]))
        late = Event(f"e-{self.next_event + 2}", author, ITEMS[author][n], replace(older, event_time=EVENT_TIMES[0]))
        self.next_event += 2
        self.sent += [newer, late]
        self._send(newer)
        self._send(late)
        self._then(poll)

    # -- the workers ------------------------------------------------------------------

    def _recover(self, worker: Worker) -> None:
        """worker._process while recovering: changelogs, the state replayed, items judged."""
        worker.restore()
        state = worker.state_records()
        if state:
            results = [
                worker.engine.process(worker.stores(), [r for r, _ in state], [], self.model.now, recovering=True)
            ]
            worker.perform(results[0])
            results += worker.reevaluate(self.model.now)
            expected = Expected()
            for rec, meta in state:
                assert meta is not None
                self.model.state(meta, rec.topic, (rec.topic, rec.partition, rec.offset), expected, recovering=True)
            for p in sorted({rec.partition for rec, _ in state}):
                self.model.rejudge_partition(p, expected)
            _check(results, expected)
        worker.needs_catch_up = False

    def _decide_due(self, worker: Worker) -> None:
        """worker._decide_due, a few items at a time, until none is due."""
        now_ms = _ms(self.model.now)
        for p, store in worker.stores().items():
            results: list[BatchResult] = []
            while (first := next(store.scan(b"d:"), None)) is not None:
                if int.from_bytes(first[0][2:10], "big") > now_ms:
                    break
                assert len(results) < 50, "held items due for ever"
                results.append(worker.engine.process_due(store, p, self.model.now, limit=2))
                worker.perform(results[-1])
            expected = Expected()
            self.model.due(p, expected)
            _check(results, expected)

    @rule(max_content=st.integers(1, 6))
    def poll(self, max_content: int) -> None:
        """Each worker polls once: recovery if it was (re)assigned, one batch, then due items."""
        for worker in self.workers:
            if not worker.assigned:
                continue
            if worker.needs_catch_up:
                self._recover(worker)
            state = worker.state_records()
            content: list[tuple[Rec, Meta | None]] = []
            for p in sorted(worker.assigned):
                content += self.cluster.log(TOPICS.content, p).read(
                    TOPICS.content, p, self.cluster.committed.get(p, 0), max_content
                )
            if not state and not content:
                self._decide_due(worker)
                continue
            result = worker.engine.process(
                worker.stores(), [r for r, _ in state], [r for r, _ in content], self.model.now
            )
            worker.perform(result)
            expected = Expected()
            for rec, meta in state:
                assert meta is not None
                self.model.state(meta, rec.topic, (rec.topic, rec.partition, rec.offset), expected, recovering=False)
            for rec, meta in content:
                if isinstance(meta, Event):
                    self.model.content(meta, expected)
                else:
                    assert isinstance(meta, Unreadable)
                    self.model.unreadable_content(meta, (rec.topic, rec.partition, rec.offset), expected)
            _check([result], expected)
            for rec, _ in content:
                self.cluster.committed[rec.partition] = rec.offset + 1
            self._decide_due(worker)

    @rule(step=st.sampled_from(CLOCK_STEPS))
    def clock(self, step: dt.timedelta) -> None:
        """Time passes; ready workers decide the held items now due."""
        self.model.now += step
        for worker in self.workers:
            if worker.assigned and not worker.needs_catch_up:
                self._decide_due(worker)

    @rule()
    def sweep(self) -> None:
        """The item-memory sweep of every ready worker (worker._decide_due's expiry)."""
        for worker in self.workers:
            if not worker.assigned or worker.needs_catch_up:
                continue
            for p, store in worker.stores().items():
                after: bytes | None = None
                results: list[BatchResult] = []
                while True:
                    result, after = worker.engine.expire_items(store, p, self.model.now, after, limit=2)
                    worker.perform(result)
                    results.append(result)
                    if after is None:
                        break
                self.model.forget(p)
                _check(results, Expected())

    @rule(w=st.sampled_from([0, 1]), wipe=st.booleans())
    def restart(self, w: int, wipe: bool) -> None:
        """A worker restarts, with its disk or on a new one (the pod replaced)."""
        worker = self.workers[w]
        if wipe:
            worker.disks.clear()
        worker.needs_catch_up = True

    @rule(p=st.sampled_from(PARTITIONS))
    def move(self, p: int) -> None:
        """A rebalance moves partition p to the other worker; both catch up before deciding again."""
        owner = next(w for w in self.workers if p in w.assigned)
        other = next(w for w in self.workers if w is not owner)
        owner.assigned.discard(p)
        other.assigned.add(p)
        for worker in self.workers:
            worker.needs_catch_up = True

    @rule()
    def compact(self) -> None:
        """Kafka's log cleaner: changelogs wholly, state topics below what their owner read."""
        for p in PARTITIONS:
            for topic in CHANGELOG_KIND:
                self.cluster.log(topic, p).compact(self.cluster.log(topic, p).end)
            owner = next(w for w in self.workers if p in w.assigned)
            store = owner.stores()[p]
            for topic, kind in STATE_KIND.items():
                self.cluster.log(topic, p).compact(store.next_offset(kind))

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def feed_is_the_models(self) -> None:
        feed = {key.decode(): orjson.loads(value)["source_event_id"] for key, value in self.cluster.feed.items()}
        assert feed == self.model.feed()

    @invariant()
    def changelogs_are_the_models(self) -> None:
        published = {k: orjson.loads(v)["event_id"] for k, v in self.cluster.view(TOPICS.published).items()}
        assert published == {item_id(*item): e.event_id for item, e in self.model.published.items()}
        held = {
            k: (orjson.loads(v)["content"]["event_id"], orjson.loads(v)["due_ms"])
            for k, v in self.cluster.view(TOPICS.deferred).items()
        }
        assert held == {item_id(*item): (e.event_id, _ms(due)) for item, (e, due) in self.model.held.items()}
        latest = {k: (v.event_id, v.deleted) for k, v in _versions(self.cluster.view(TOPICS.items)).items()}
        assert latest == {item_id(*item): (v.event_id, v.deleted) for item, v in self.model.latest.items()}

    @invariant()
    def ready_stores_are_the_models(self) -> None:
        for worker in self.workers:
            if worker.needs_catch_up:
                continue
            for p, store in worker.stores().items():
                mine = {item_id(*item) for item in self.model.published if PARTITION_OF[item[0]] == p}
                assert {k[2:] for k, _ in store.scan(b"i:")} == mine, f"published index of partition {p}"
                held = {item_id(*item) for item in self.model.held if PARTITION_OF[item[0]] == p}
                assert {k[2:] for k, _ in store.scan(b"D:")} == held, f"held items of partition {p}"
                assert {k[10:] for k, _ in store.scan(b"d:")} == held, f"held copies of partition {p}"
                versions = {k[2:] for k, _ in store.scan(b"v:")}
                assert versions == {item_id(*item) for item in self.model.latest if PARTITION_OF[item[0]] == p}


def _versions(view: Mapping[bytes, bytes]) -> dict[bytes, Any]:
    return {k: unpack_version(v) for k, v in view.items()}


# -- settings ---------------------------------------------------------------------------

settings.register_profile(
    "ci",
    max_examples=600,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "long",
    max_examples=5000,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _profile() -> settings:
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    return settings.get_profile(name if name in ("ci", "long") else "ci")


def test_engine_any_interleaving_of_inputs_restarts_and_moves_matches_the_model() -> None:
    run_state_machine_as_test(EngineModel, settings=_profile())
