"""Decide a fetched batch: decode, look up, apply the rule, build the records. No I/O.

The shell (`worker.py`) fetches a batch, hands it here, then performs the result in
the order that keeps the feed safe across a crash at any point:

1. write `pre_updates` (items about to be published join the published index, so a
   crash after sending can never leave a feed item the index does not know);
2. send `produce` and wait until the broker acknowledged every record;
3. write `post_updates` with the new state offsets (profiles, objections, index
   removals, deferrals), so state that caused a retraction is never marked applied
   before the tombstone is durable;
4. commit the content offsets.

A crash anywhere replays the batch: records may be duplicated, never lost.

Deferred decisions: an upsert refused only because the author's notice period is
still running is held until the period ends (`process_due` decides it again with
the state of that moment). A deferral lives in the partition store and, so that it
survives a partition moving to another worker, on the compacted deferred topic.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

import orjson

from stream.codec import Rejected, decode_content, decode_objection, decode_profile, dumps, format_timestamp
from stream.codec import parse_timestamp as _parse_timestamp
from stream.config import TopicNames
from stream.models import (
    ContentEvent,
    ContentType,
    DeadLetterReason,
    Objection,
    ObjectionStatus,
    Op,
    Profile,
    Reason,
    RetractCause,
    Visibility,
)
from stream.policy import Policy, decide, decide_account, refuse_content
from stream.records import RETRACT_CAUSE_OF_REASON, dead_letter_value, decide_value, feed_value, retract_value
from stream.state import (
    DEFERRED_DUE_PREFIX,
    DEFERRED_PREFIX,
    PUBLISHED_PREFIX,
    REEVALUATE_KEY,
    EntryKind,
    PartitionStore,
    StateKind,
    Update,
    deferred_due_key,
    deferred_key,
    item_id,
    objection_key,
    pack_objection,
    pack_profile,
    profile_key,
    published_key,
    published_prefix,
    split_deferred_key,
    split_item_id,
    unpack_objection,
    unpack_profile,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class OutputTopic(StrEnum):
    FEED = "feed"
    DECISIONS = "decisions"
    DLQ = "dlq"
    DEFERRED = "deferred"
    PUBLISHED = "published"


class InputRecord(Protocol):
    """The fields of a consumed Kafka record the engine reads (aiokafka's ConsumerRecord has them)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...


class Produce(NamedTuple):
    """One record to send. A None value is a real Kafka tombstone.

    `partition` is the input partition the record comes from: every output goes to
    the same partition number (modulo the output's partition count), so a content
    item's records always share a partition (compaction and order per key hold)
    and the worker can send whole per-partition batches without hashing each key.
    A NamedTuple, not a frozen dataclass: two or three are built per event, and a
    frozen dataclass's __init__ costs several times a tuple's.
    """

    topic: OutputTopic
    key: bytes | None
    value: bytes | None
    partition: int


@dataclass(slots=True)
class BatchResult:
    produce: list[Produce] = field(default_factory=list)
    pre_updates: dict[int, list[Update]] = field(default_factory=dict)
    post_updates: dict[int, list[Update]] = field(default_factory=dict)
    pre_counts: dict[int, Counter[EntryKind]] = field(default_factory=dict)
    post_counts: dict[int, Counter[EntryKind]] = field(default_factory=dict)
    state_offsets: dict[int, dict[StateKind, int]] = field(default_factory=dict)
    decisions: Counter[Reason] = field(default_factory=Counter)
    dead_letters: Counter[DeadLetterReason] = field(default_factory=Counter)
    retractions: Counter[RetractCause] = field(default_factory=Counter)
    # Upstream event_time (s) of each content event decided, for the latency metric.
    event_times: list[float] = field(default_factory=list)
    # Broker append time (ms) of each `objected` record applied, for propagation latency.
    objections: list[int] = field(default_factory=list)


_KIND_OF_PREFIX = {
    b"p:": EntryKind.PROFILES,
    b"o:": EntryKind.OBJECTIONS,
    b"i:": EntryKind.PUBLISHED,
    b"D:": EntryKind.DEFERRED,
}


class _Overlay:
    """The partition's store as it will be once this batch's writes are applied."""

    def __init__(self, store: PartitionStore, partition: int) -> None:
        self.store = store
        self.partition = partition
        self.writes: dict[bytes, bytes | None] = {}
        self.published: dict[str, dict[str, bytes | None]] = {}
        # Values of the store read ahead for this batch (the store does not change
        # while a batch is decided: the worker writes only after `process` returns).
        self.read: dict[bytes, bytes | None] = {}

    def prefetch(self, keys: Iterable[bytes]) -> None:
        """Read `keys` from the store in one call: a batched lookup costs a fraction of one each."""
        wanted = [key for key in dict.fromkeys(keys) if key not in self.read]
        self.read.update(zip(wanted, self.store.get_many(wanted), strict=True))

    def stored(self, key: bytes) -> bytes | None:
        """The store's value, before this batch's writes."""
        if key in self.read:
            return self.read[key]
        return self.store.get(key)

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self.stored(key)

    def put(self, key: bytes, value: bytes | None) -> None:
        self.writes[key] = value

    def is_published(self, author_id: str, content_id: str) -> bool:
        mine = self.published.get(author_id)
        if mine is not None and content_id in mine:
            return mine[content_id] is not None
        return self.stored(published_key(author_id, content_id)) is not None

    def set_published(self, author_id: str, content_id: str, value: bytes | None) -> None:
        self.published.setdefault(author_id, {})[content_id] = value

    def published_items(self, author_id: str) -> Iterator[tuple[str, bytes]]:
        prefix = published_prefix(author_id)
        mine = self.published.get(author_id, {})
        for key, value in self.store.scan(prefix):
            content_id = key[len(prefix) :].decode()
            if content_id not in mine:
                yield content_id, value
        for content_id, maybe in mine.items():
            if maybe is not None:
                yield content_id, maybe

    def settle(self, result: BatchResult) -> None:
        """Split this batch's writes into the before-send and after-ack updates, with count deltas."""
        pre: list[Update] = []
        post: list[Update] = list(self.writes.items())
        for author_id, items in self.published.items():
            for content_id, value in items.items():
                (pre if value is not None else post).append((published_key(author_id, content_id), value))
                # The index's changelog, so the partition's next owner can restore it.
                result.produce.append(
                    Produce(OutputTopic.PUBLISHED, item_id(author_id, content_id), value, partition=self.partition)
                )
        pre_counts: Counter[EntryKind] = Counter()
        post_counts: Counter[EntryKind] = Counter()
        for updates, counts in ((pre, pre_counts), (post, post_counts)):
            for key, value in updates:
                kind = _KIND_OF_PREFIX.get(key[:2])
                if kind is not None:
                    counts[kind] += (value is not None) - (self.stored(key) is not None)
        p = self.partition
        if pre:
            result.pre_updates[p] = pre
            result.pre_counts[p] = pre_counts
        if post:
            result.post_updates[p] = post
            result.post_counts[p] = post_counts


class Engine:
    """Applies the rule to batches of input records; holds only immutable configuration."""

    def __init__(self, policy: Policy, pseudonym_key: bytes, topics: TopicNames) -> None:
        self.policy = policy
        self._key = pseudonym_key
        self._topics = topics
        self._kind_of_topic = {topics.profiles: StateKind.PROFILES, topics.objections: StateKind.OBJECTIONS}

    def process(
        self,
        stores: Mapping[int, PartitionStore],
        state_records: Sequence[InputRecord],
        content_records: Sequence[InputRecord],
        now: dt.datetime,
        *,
        recovering: bool = False,
    ) -> BatchResult:
        """Apply state records first (in offset order per partition), then decide content.

        `recovering`: the state records replay history into a restored store whose
        published index is already current, so judging items by each intermediate
        state would retract items that a later state allowed. State is only applied;
        `reevaluate_published` then judges every published item by the final state.
        """
        result = BatchResult()
        overlays: dict[int, _Overlay] = {}

        def overlay(partition: int) -> _Overlay:
            if partition not in overlays:
                overlays[partition] = _Overlay(stores[partition], partition)
            return overlays[partition]

        for record in state_records:
            kind = self._kind_of_topic[record.topic]
            ov = overlay(record.partition)
            if recovering:
                # Written with the replayed state itself: until the pass over the published
                # index ends, a restarted worker knows it still has to judge them.
                ov.put(REEVALUATE_KEY, b"1")
            self._apply_state(ov, kind, record, now, result, recovering)
            result.state_offsets.setdefault(record.partition, {})[kind] = record.offset + 1
        events = [decode_content(record.key, record.value) for record in content_records]
        # What deciding them will read, in one batched lookup per partition: every
        # event's deferral (a newer event cancels it) and published-index entry (a
        # retraction or the index count needs it), and the profile and objection of
        # each author whose event the content steps let through.
        # Each event's item id is built once here, for the lookup and the decision (b"" for a dead letter).
        items = [item_id(e.author_id, e.content_id) if isinstance(e, ContentEvent) else b"" for e in events]
        wanted: dict[int, list[bytes]] = {}
        for record, event, item in zip(content_records, events, items, strict=True):
            if isinstance(event, ContentEvent):
                keys = wanted.setdefault(record.partition, [])
                keys += (DEFERRED_DUE_PREFIX + item, PUBLISHED_PREFIX + item)
                if event.op is Op.UPSERT and refuse_content(event, self.policy) is None:
                    keys += (profile_key(event.author_id), objection_key(event.author_id))
        for partition, keys in wanted.items():
            overlay(partition).prefetch(keys)
        for record, event, item in zip(content_records, events, items, strict=True):
            self._decide_record(overlay(record.partition), record, event, item, now, result)
        for ov in overlays.values():
            ov.settle(result)
        return result

    def process_due(self, store: PartitionStore, partition: int, now: dt.datetime, limit: int) -> BatchResult:
        """Decide again, with the state of now, up to `limit` deferred items whose time has come."""
        result = BatchResult()
        ov = _Overlay(store, partition)
        now_ms = _ms(now)
        for key, raw in store.scan(DEFERRED_PREFIX):
            due_ms, item = split_deferred_key(key)
            if due_ms > now_ms or limit <= 0:
                break
            limit -= 1
            author_id, _ = split_item_id(item)
            event = decode_content(author_id.encode(), raw)
            self._cancel_deferral(ov, item, result)
            if isinstance(event, ContentEvent):
                self._decide_event(ov, event, raw, now, result)
        ov.settle(result)
        return result

    def reevaluate_published(
        self, store: PartitionStore, partition: int, now: dt.datetime, after: bytes | None, limit: int
    ) -> tuple[BatchResult, bytes | None]:
        """Judge up to `limit` published items after key `after` by the current state.

        One pass over the published index after a recovery replay: each item the rule
        now refuses is retracted. Returns the result and the key to continue after,
        or None when the pass is complete.
        """
        result = BatchResult()
        ov = _Overlay(store, partition)
        author = ""
        profile: Profile | None = None
        objection: Objection | None = None
        last: bytes | None = None
        for key, value in store.scan(PUBLISHED_PREFIX, after=after):
            if limit <= 0:
                ov.settle(result)
                return result, last
            limit -= 1
            last = key
            author_id, content_id = split_item_id(key[len(PUBLISHED_PREFIX) :])
            if author_id != author:
                author, profile, objection = author_id, self._profile(ov, author_id), self._objection(ov, author_id)
            decision = decide(_event_from_index(author_id, content_id, value), profile, objection, self.policy, now)
            if not decision.eligible:
                cause = RETRACT_CAUSE_OF_REASON[decision.reason]
                self._retract(ov, author_id, content_id, f"recovery:{partition}", now, cause, now, result)
        ov.settle(result)
        return result, None

    def restore(
        self, kind: StateKind, store: PartitionStore, records: Iterable[InputRecord]
    ) -> tuple[list[Update], Counter[EntryKind]]:
        """Local writes that replay one of our changelogs (published or deferred) into a store."""
        ov = _Overlay(store, -1)
        for record in records:
            if record.key is None:
                continue
            item = record.key
            if kind is StateKind.PUBLISHED:
                ov.put(b"i:" + item, record.value)
                continue
            previous = ov.get(deferred_due_key(item))
            if previous is not None:
                ov.put(deferred_key(int.from_bytes(previous, "big"), item), None)
                ov.put(deferred_due_key(item), None)
            if record.value is not None:
                data = orjson.loads(record.value)
                due_ms = int(data["due_ms"])
                ov.put(deferred_key(due_ms, item), orjson.dumps(data["content"]))
                ov.put(deferred_due_key(item), due_ms.to_bytes(8, "big"))
        result = BatchResult()
        ov.settle(result)
        return result.post_updates.get(-1, []), result.post_counts.get(-1, Counter())

    # -- content -------------------------------------------------------------------

    def _decide_record(
        self,
        ov: _Overlay,
        record: InputRecord,
        event: ContentEvent | Rejected,
        item: bytes,
        now: dt.datetime,
        result: BatchResult,
    ) -> None:
        if isinstance(event, Rejected):
            self._dead_letter(record, event, now, result)
            return
        assert record.value is not None  # decode_content rejects a null value
        # A newer event supersedes a held one: it is decided (or held) on its own.
        self._cancel_deferral(ov, item, result)
        self._decide_event(ov, event, record.value, now, result)

    def _decide_event(
        self, ov: _Overlay, event: ContentEvent, raw: bytes, now: dt.datetime, result: BatchResult
    ) -> None:
        result.event_times.append(event.event_time.timestamp())
        key = event.content_id.encode()
        if event.op is Op.DELETE:
            if ov.is_published(event.author_id, event.content_id):
                self._retract(
                    ov,
                    event.author_id,
                    event.content_id,
                    event.event_id,
                    event.event_time,
                    RetractCause.CONTENT_DELETED,
                    now,
                    result,
                )
            else:
                # Nothing was handed to training; the audit log still records the input.
                result.produce.append(
                    Produce(
                        OutputTopic.DECISIONS,
                        key,
                        retract_value(
                            content_id=event.content_id,
                            event_id=event.event_id,
                            author_id=event.author_id,
                            cause=RetractCause.CONTENT_DELETED,
                            policy_version=self.policy.version,
                            decided_at=now,
                            event_time=event.event_time,
                        ),
                        ov.partition,
                    )
                )
            return
        decision = refuse_content(event, self.policy)
        if decision is None:  # only now is the author's account worth two lookups
            profile = self._profile(ov, event.author_id)
            objection = self._objection(ov, event.author_id) if profile is not None else None
            decision = decide_account(event, profile, objection, self.policy, now)
        result.decisions[decision.reason] += 1
        result.produce.append(
            Produce(OutputTopic.DECISIONS, key, decide_value(event, decision, decided_at=now), ov.partition)
        )
        if decision.eligible:
            ov.set_published(event.author_id, event.content_id, _index_value(event))
            result.produce.append(
                Produce(OutputTopic.FEED, key, feed_value(event, decision, key=self._key, decided_at=now), ov.partition)
            )
            return
        if ov.is_published(event.author_id, event.content_id):
            self._retract(
                ov,
                event.author_id,
                event.content_id,
                event.event_id,
                event.event_time,
                RETRACT_CAUSE_OF_REASON[decision.reason],
                now,
                result,
            )
        if decision.reason is Reason.NOTICE_PERIOD_RUNNING and decision.retry_at is not None:
            self._defer(ov, item_id(event.author_id, event.content_id), _ms(decision.retry_at), raw, result)

    def _defer(self, ov: _Overlay, item: bytes, due_ms: int, raw: bytes, result: BatchResult) -> None:
        ov.put(deferred_key(due_ms, item), raw)
        ov.put(deferred_due_key(item), due_ms.to_bytes(8, "big"))
        value = orjson.dumps({"due_ms": due_ms, "content": orjson.Fragment(raw)})
        result.produce.append(Produce(OutputTopic.DEFERRED, item, value, partition=ov.partition))

    def _cancel_deferral(self, ov: _Overlay, item: bytes, result: BatchResult) -> None:
        due = ov.get(deferred_due_key(item))
        if due is None:
            return
        ov.put(deferred_key(int.from_bytes(due, "big"), item), None)
        ov.put(deferred_due_key(item), None)
        # And on the changelog, or a worker restoring from it would bring the item back.
        result.produce.append(Produce(OutputTopic.DEFERRED, item, None, partition=ov.partition))

    # -- state ---------------------------------------------------------------------

    def _apply_state(
        self,
        ov: _Overlay,
        kind: StateKind,
        record: InputRecord,
        now: dt.datetime,
        result: BatchResult,
        recovering: bool = False,
    ) -> None:
        decoded: Profile | Objection | Rejected | None
        if kind is StateKind.PROFILES:
            decoded = decode_profile(record.key, record.value)
        else:
            decoded = decode_objection(record.key, record.value)
        account_id = _account_of_key(record.key)
        if isinstance(decoded, Rejected):
            self._dead_letter(record, decoded, now, result)
            if account_id is None:
                return
            # Fail closed: an unreadable update leaves the account as if it had no
            # profile (account_unknown) or as objecting, never as it was before.
            if recovering:
                fail_closed = None if kind is StateKind.PROFILES else _FAIL_CLOSED_OBJECTION
                key = profile_key(account_id) if kind is StateKind.PROFILES else objection_key(account_id)
                ov.put(key, fail_closed)
                return
            if kind is StateKind.PROFILES:
                ov.put(profile_key(account_id), None)
                self._retract_all(ov, account_id, record, RetractCause.ACCOUNT_CHANGED, now, result)
            else:
                ov.put(objection_key(account_id), _FAIL_CLOSED_OBJECTION)
                result.objections.append(record.timestamp)
                self._retract_all(ov, account_id, record, RetractCause.OBJECTION, now, result)
            return
        assert account_id is not None  # the codec accepted the key
        if isinstance(decoded, Profile):
            stored: bytes | None = pack_profile(decoded)
        elif isinstance(decoded, Objection):
            stored = pack_objection(decoded.status)
        else:
            stored = None  # a tombstone: no profile (account deleted), no objection on record
        if recovering:
            ov.put(profile_key(account_id) if kind is StateKind.PROFILES else objection_key(account_id), stored)
            return
        if kind is StateKind.PROFILES:
            ov.put(profile_key(account_id), stored)
            if decoded is None:
                self._retract_all(ov, account_id, record, RetractCause.ACCOUNT_DELETED, now, result)
            else:
                self._reevaluate(ov, account_id, record, RetractCause.ACCOUNT_CHANGED, now, result)
        else:
            ov.put(objection_key(account_id), stored)
            if isinstance(decoded, Objection) and decoded.status is ObjectionStatus.OBJECTED:
                result.objections.append(record.timestamp)
            self._reevaluate(ov, account_id, record, RetractCause.OBJECTION, now, result)

    def _reevaluate(
        self,
        ov: _Overlay,
        account_id: str,
        record: InputRecord,
        cause: RetractCause,
        now: dt.datetime,
        result: BatchResult,
    ) -> None:
        """Retract each published item of the account that the rule now refuses."""
        profile = self._profile(ov, account_id)
        objection = self._objection(ov, account_id)
        for content_id, raw in list(ov.published_items(account_id)):
            decision = decide(_event_from_index(account_id, content_id, raw), profile, objection, self.policy, now)
            if not decision.eligible:
                self._retract(
                    ov, account_id, content_id, _state_event_id(record), _broker_time(record), cause, now, result
                )

    def _retract_all(
        self,
        ov: _Overlay,
        account_id: str,
        record: InputRecord,
        cause: RetractCause,
        now: dt.datetime,
        result: BatchResult,
    ) -> None:
        for content_id, _ in list(ov.published_items(account_id)):
            self._retract(ov, account_id, content_id, _state_event_id(record), _broker_time(record), cause, now, result)

    def _retract(
        self,
        ov: _Overlay,
        author_id: str,
        content_id: str,
        event_id: str,
        event_time: dt.datetime,
        cause: RetractCause,
        now: dt.datetime,
        result: BatchResult,
    ) -> None:
        ov.set_published(author_id, content_id, None)
        key = content_id.encode()
        result.retractions[cause] += 1
        result.produce.append(Produce(OutputTopic.FEED, key, None, ov.partition))
        result.produce.append(
            Produce(
                OutputTopic.DECISIONS,
                key,
                retract_value(
                    content_id=content_id,
                    event_id=event_id,
                    author_id=author_id,
                    cause=cause,
                    policy_version=self.policy.version,
                    decided_at=now,
                    event_time=event_time,
                ),
                ov.partition,
            )
        )

    # -- helpers -------------------------------------------------------------------

    def _profile(self, ov: _Overlay, account_id: str) -> Profile | None:
        raw = ov.get(profile_key(account_id))
        return unpack_profile(account_id, raw) if raw is not None else None

    def _objection(self, ov: _Overlay, account_id: str) -> Objection | None:
        raw = ov.get(objection_key(account_id))
        if raw is None:
            return None
        # The rule reads only the status; the store keeps nothing else of an objection.
        return _STORED_OBJECTION[unpack_objection(raw)]

    def _dead_letter(self, record: InputRecord, rejected: Rejected, now: dt.datetime, result: BatchResult) -> None:
        result.dead_letters[rejected.reason] += 1
        result.produce.append(
            Produce(
                OutputTopic.DLQ,
                record.key,
                dead_letter_value(
                    reason=rejected.reason,
                    detail=rejected.detail,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    received_at=now,
                    key=record.key,
                    value=record.value,
                ),
                record.partition,
            )
        )


# What `_objection` hands the rule: the stored status, nothing of who or when.
_STORED_OBJECTION = {status: Objection("", status, _EPOCH, "filter:state", "") for status in ObjectionStatus}
# An unreadable objection update fails closed: the account is treated as objecting.
_FAIL_CLOSED_OBJECTION = pack_objection(ObjectionStatus.OBJECTED)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _account_of_key(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _index_value(event: ContentEvent) -> bytes:
    """What re-deciding a published item needs, without its text."""
    assert event.content_type is not None and event.created_at is not None
    return dumps(
        {
            "content_type": event.content_type.value,
            "created_at": format_timestamp(event.created_at),
            "event_id": event.event_id,
        }
    )


def _event_from_index(author_id: str, content_id: str, raw: bytes) -> ContentEvent:
    data = orjson.loads(raw)
    created_at = _parse_timestamp(data["created_at"])
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


def _state_event_id(record: InputRecord) -> str:
    return f"{record.topic}:{record.partition}:{record.offset}"


def _broker_time(record: InputRecord) -> dt.datetime:
    return dt.datetime.fromtimestamp(record.timestamp / 1000, tz=dt.UTC)
