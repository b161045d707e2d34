"""Decide a fetched batch: decode, look up, apply the rule, build the records. No I/O.

The shell (`worker.py`) fetches a batch, hands it here, then performs the result in
the order that keeps the feed safe across a crash at any point:

1. write `pre_updates` (items about to be published join the published index, so a
   crash after sending can never leave a feed item the index does not know);
2. send `first` (the published index's changelog entries of items about to be
   published) and wait for the broker's acknowledgement: a partition's next owner,
   restoring the index from its changelog, then knows every item on the feed;
3. send `produce` (feed records and tombstones, decisions, dead letters, held
   items) and wait until the broker acknowledged every record;
4. send `last` (index removals, and each item's latest applied event) and wait:
   an item leaves the index, and an event counts as applied, only once the
   tombstones and decisions it caused are durable;
5. write `post_updates` with the new state offsets (profiles, objections, index
   removals, deferrals, item versions), so state that caused a retraction is never
   marked applied before the tombstone is durable;
6. commit the content offsets.

A crash anywhere replays the batch: records may be duplicated, never lost.

Order per item: each item's latest applied event (`state.ItemVersion`) is kept; an
event older than it, that event again, or anything after a delete is skipped with
an audit record and changes nothing.

Isolation: a record whose handling raises anything unexpected is dead-lettered
(`processing_error`) and fails closed (its item is retracted and released, or its
account is treated as unknown or objecting); the batch is decided again without
it, so one record can never stop a partition.

Deferred decisions: an upsert refused only because the author's notice period is
still running is held until the period ends (`process_due` decides it again with
the state of that moment). A deferral lives in the partition store and, so that it
survives a partition moving to another worker, on the compacted deferred topic.
Any change of the author's account decides their held items again at once: an
item now refused for another reason is released (removed from the store and
tombstoned on the changelog), one now eligible is published.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol, TypeVar

import orjson

from stream.config import TopicNames
from stream.core.codec import (
    ID_MAX_LENGTH,
    Rejected,
    decode_content,
    decode_objection,
    decode_profile,
    dumps,
    encode_content,
    format_timestamp,
)
from stream.core.codec import parse_timestamp as _parse_timestamp
from stream.core.models import (
    ContentEvent,
    ContentType,
    DeadLetterReason,
    Objection,
    ObjectionStatus,
    Op,
    Profile,
    Reason,
    RetractCause,
    SkipReason,
    Visibility,
)
from stream.core.policy import Policy, decide, decide_account, refuse_content
from stream.core.records import (
    RETRACT_CAUSE_OF_REASON,
    dead_letter_key,
    dead_letter_value,
    decide_value,
    feed_value,
    retract_value,
    skip_value,
)
from stream.core.state import (
    DEFERRED_DUE_PREFIX,
    DEFERRED_PREFIX,
    PUBLISHED_PREFIX,
    REEVALUATE_KEY,
    VERSION_PREFIX,
    EntryKind,
    ItemVersion,
    PartitionStore,
    StateKind,
    Update,
    deferred_due_key,
    deferred_due_prefix,
    deferred_key,
    item_id,
    micros,
    objection_key,
    pack_objection,
    pack_profile,
    pack_version,
    profile_key,
    published_key,
    published_prefix,
    split_deferred_key,
    split_item_id,
    unpack_objection,
    unpack_profile,
    unpack_version,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# How long an item's latest applied event is remembered after it was applied, by
# default (`STREAM_ITEM_MEMORY_DAYS`): at least as long as `content.events` retains
# records (7 days, `topics.py`), so that no duplicate or late copy still on the topic
# can find the item forgotten.
ITEM_MEMORY = dt.timedelta(days=8)


class OutputTopic(StrEnum):
    FEED = "feed"
    DECISIONS = "decisions"
    DLQ = "dlq"
    DEFERRED = "deferred"
    PUBLISHED = "published"
    ITEMS = "items"


# Our changelogs: a record goes to the partition number of the input it came from,
# since partition p's store is restored from partition p of each of them.
CHANGELOGS = frozenset({OutputTopic.DEFERRED, OutputTopic.PUBLISHED, OutputTopic.ITEMS})


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

    `partition` is the input partition the record comes from. Changelog records
    (`CHANGELOGS`) go to that partition number; the others go where Kafka's default
    partitioner puts their key (the worker's `partitioning`), so a content id's
    records stay on one partition however the inputs are partitioned.
    A NamedTuple, not a frozen dataclass: two or three are built per event, and a
    frozen dataclass's __init__ costs several times a tuple's.
    """

    topic: OutputTopic
    key: bytes | None
    value: bytes | None
    partition: int


class Isolated(NamedTuple):
    """A record whose handling raised: dead-lettered and failed closed instead (for the log)."""

    topic: str
    partition: int
    offset: int
    error: str


@dataclass(slots=True)
class BatchResult:
    # Sent and acknowledged before `produce`, and `last` after it (see the module docstring).
    first: list[Produce] = field(default_factory=list)
    produce: list[Produce] = field(default_factory=list)
    last: list[Produce] = field(default_factory=list)
    pre_updates: dict[int, list[Update]] = field(default_factory=dict)
    post_updates: dict[int, list[Update]] = field(default_factory=dict)
    pre_counts: dict[int, Counter[EntryKind]] = field(default_factory=dict)
    post_counts: dict[int, Counter[EntryKind]] = field(default_factory=dict)
    state_offsets: dict[int, dict[StateKind, int]] = field(default_factory=dict)
    decisions: Counter[Reason] = field(default_factory=Counter)
    skips: Counter[SkipReason] = field(default_factory=Counter)
    dead_letters: Counter[DeadLetterReason] = field(default_factory=Counter)
    retractions: Counter[RetractCause] = field(default_factory=Counter)
    released: int = 0
    isolated: list[Isolated] = field(default_factory=list)
    # Upstream event_time (s) of each content event decided, for the latency metric.
    event_times: list[float] = field(default_factory=list)
    # Broker append time (ms) of each `objected` record applied, for propagation latency.
    objections: list[int] = field(default_factory=list)

    def records(self) -> Iterator[Produce]:
        """Every record of the batch, in the order they are sent."""
        yield from self.first
        yield from self.produce
        yield from self.last


_V = TypeVar("_V")


def _due_ms(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


_KIND_OF_PREFIX = {
    b"p:": EntryKind.PROFILES,
    b"o:": EntryKind.OBJECTIONS,
    PUBLISHED_PREFIX: EntryKind.PUBLISHED,
    DEFERRED_DUE_PREFIX: EntryKind.DEFERRED,
    VERSION_PREFIX: EntryKind.ITEMS,
}


class _Overlay:
    """The partition's store as it will be once this batch's writes are applied."""

    def __init__(self, store: PartitionStore, partition: int) -> None:
        self.store = store
        self.partition = partition
        self.writes: dict[bytes, bytes | None] = {}
        self.published: dict[str, dict[str, bytes | None]] = {}
        # This batch's changes to held items, per author: content id -> due ms (None: released).
        self.held: dict[str, dict[str, int | None]] = {}
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
        """The author's published items as they will be: (content id, index value)."""
        return self._merged(published_prefix(author_id), self.published.get(author_id, {}), bytes)

    def due_of(self, author_id: str, content_id: str, item: bytes) -> int | None:
        """When the item's held copy is due (ms), or None if none is held."""
        mine = self.held.get(author_id)
        if mine is not None and content_id in mine:
            return mine[content_id]
        raw = self.stored(DEFERRED_DUE_PREFIX + item)
        return _due_ms(raw) if raw is not None else None

    def set_held(self, author_id: str, content_id: str, item: bytes, due_ms: int | None, raw: bytes | None) -> None:
        """Hold the item's copy `raw` until `due_ms`, or (None) release the copy held now."""
        previous = self.due_of(author_id, content_id, item)
        if previous is not None:
            self.put(deferred_key(previous, item), None)
        if due_ms is None:
            self.put(DEFERRED_DUE_PREFIX + item, None)
        else:
            assert raw is not None
            self.put(deferred_key(due_ms, item), raw)
            self.put(DEFERRED_DUE_PREFIX + item, due_ms.to_bytes(8, "big"))
        self.held.setdefault(author_id, {})[content_id] = due_ms

    def held_items(self, author_id: str) -> Iterator[tuple[str, int]]:
        """The author's held items as they will be: (content id, due ms)."""
        return self._merged(deferred_due_prefix(author_id), self.held.get(author_id, {}), _due_ms)

    def _merged(
        self, prefix: bytes, mine: Mapping[str, _V | None], decode: Callable[[bytes], _V]
    ) -> Iterator[tuple[str, _V]]:
        """One author's entries under `prefix`: the store's, with this batch's changes (`mine`) over them."""
        for key, value in self.store.scan(prefix):
            content_id = key[len(prefix) :].decode()
            if content_id not in mine:
                yield content_id, decode(value)
        for content_id, maybe in mine.items():
            if maybe is not None:
                yield content_id, maybe

    def settle(self, result: BatchResult) -> None:
        """Split this batch's writes into the before-send and after-ack updates, with count deltas."""
        pre: list[Update] = []
        post: list[Update] = list(self.writes.items())
        for author_id, items in self.published.items():
            for content_id, value in items.items():
                # The index's changelog, so the partition's next owner can restore it:
                # an entry is durable before its feed record is sent, and removed only
                # once its tombstone is (see the module docstring).
                record = Produce(OutputTopic.PUBLISHED, item_id(author_id, content_id), value, self.partition)
                if value is not None:
                    pre.append((published_key(author_id, content_id), value))
                    result.first.append(record)
                else:
                    post.append((published_key(author_id, content_id), value))
                    result.last.append(record)
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


class _RecordFailed(Exception):
    """Raised inside the engine when handling one record raised: the batch is decided again without it."""

    def __init__(self, where: tuple[str, int, int], error: str) -> None:
        super().__init__(where, error)
        self.where = where
        self.error = error


def _where(record: InputRecord) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


class Engine:
    """Applies the rule to batches of input records; holds only immutable configuration."""

    def __init__(
        self, policy: Policy, pseudonym_key: bytes, topics: TopicNames, *, item_memory: dt.timedelta = ITEM_MEMORY
    ) -> None:
        self.policy = policy
        self._item_memory_ms = int(item_memory.total_seconds() * 1000)
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

        A record whose handling raises is isolated: the batch is decided again from
        the unchanged store with that record dead-lettered and failed closed.
        """
        failed: dict[tuple[str, int, int], str] = {}
        while True:
            try:
                result = self._process(stores, state_records, content_records, now, recovering, failed)
            except _RecordFailed as exc:
                if exc.where in failed:  # failing closed failed too: the batch fails, and is replayed
                    raise exc.__cause__ or exc from None
                failed[exc.where] = exc.error
                continue
            result.isolated = [Isolated(*where, error) for where, error in failed.items()]
            return result

    def _process(
        self,
        stores: Mapping[int, PartitionStore],
        state_records: Sequence[InputRecord],
        content_records: Sequence[InputRecord],
        now: dt.datetime,
        recovering: bool,
        failed: Mapping[tuple[str, int, int], str],
    ) -> BatchResult:
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
            try:
                error = failed.get(_where(record)) if failed else None
                if error is None:
                    self._apply_state(ov, kind, record, now, result, recovering)
                else:
                    rejected = Rejected(DeadLetterReason.PROCESSING_ERROR, f"handling it raised {error}")
                    self._dead_letter(record, rejected, now, result)
                    self._fail_account_closed(ov, kind, record, now, result, recovering)
            except Exception as exc:
                raise _RecordFailed(_where(record), type(exc).__name__) from exc
            result.state_offsets.setdefault(record.partition, {})[kind] = record.offset + 1
        events = [self._decode(record, failed) for record in content_records]
        # What deciding them will read, in one batched lookup per partition: every
        # event's latest applied version, deferral (a newer event releases it) and
        # published-index entry (a retraction or the index count needs it), and the
        # profile and objection of each author whose event the content steps let through.
        # Each event's item id is built once here, for the lookup and the decision (b"" for a dead letter).
        items = [item_id(e.author_id, e.content_id) if isinstance(e, ContentEvent) else b"" for e in events]
        wanted: dict[int, list[bytes]] = {}
        for record, event, item in zip(content_records, events, items, strict=True):
            if isinstance(event, ContentEvent):
                keys = wanted.setdefault(record.partition, [])
                keys += (VERSION_PREFIX + item, DEFERRED_DUE_PREFIX + item, PUBLISHED_PREFIX + item)
                if event.op is Op.UPSERT and refuse_content(event, self.policy) is None:
                    keys += (profile_key(event.author_id), objection_key(event.author_id))
        for partition, keys in wanted.items():
            overlay(partition).prefetch(keys)
        for record, event, item in zip(content_records, events, items, strict=True):
            try:
                self._decide_record(overlay(record.partition), record, event, item, now, result)
            except Exception as exc:
                raise _RecordFailed(_where(record), type(exc).__name__) from exc
        for ov in overlays.values():
            ov.settle(result)
        return result

    def _decode(self, record: InputRecord, failed: Mapping[tuple[str, int, int], str]) -> ContentEvent | Rejected:
        error = failed.get(_where(record)) if failed else None
        if error is not None:
            return Rejected(DeadLetterReason.PROCESSING_ERROR, f"handling it raised {error}")
        try:
            return decode_content(record.key, record.value)
        except Exception as exc:
            raise _RecordFailed(_where(record), type(exc).__name__) from exc

    def process_due(self, store: PartitionStore, partition: int, now: dt.datetime, limit: int) -> BatchResult:
        """Decide again, with the state of now, up to `limit` deferred items whose time has come.

        A held item whose decision raises is released (fail closed) and reported in `isolated`.
        """
        failed: dict[bytes, str] = {}
        now_ms = _ms(now)
        while True:
            result = BatchResult()
            ov = _Overlay(store, partition)
            try:
                for key, raw in itertools.islice(store.scan(DEFERRED_PREFIX), limit):
                    due_ms, item = split_deferred_key(key)
                    if due_ms > now_ms:
                        break
                    self._decide_due(ov, item, raw, now, result, release_only=item in failed)
            except _ItemFailed as exc:
                if exc.item in failed:
                    raise exc.__cause__ or exc from None
                failed[exc.item] = exc.error
                continue
            ov.settle(result)
            result.isolated = [Isolated("held items", partition, -1, error) for error in failed.values()]
            return result

    def _decide_due(
        self, ov: _Overlay, item: bytes, raw: bytes, now: dt.datetime, result: BatchResult, *, release_only: bool
    ) -> None:
        try:
            author_id, content_id = split_item_id(item)
            ov.set_held(author_id, content_id, item, None, None)
            result.produce.append(Produce(OutputTopic.DEFERRED, item, None, ov.partition))
            if release_only:
                result.released += 1
                return
            event = decode_content(author_id.encode(), raw)
            if isinstance(event, ContentEvent):
                self._decide_event(ov, event, item, now, result)
        except Exception as exc:
            raise _ItemFailed(item, type(exc).__name__) from exc

    def reevaluate_published(
        self, store: PartitionStore, partition: int, now: dt.datetime, after: bytes | None, limit: int
    ) -> tuple[BatchResult, bytes | None]:
        """Judge up to `limit` held and published items after key `after` by the current state.

        One pass over the held items and the published index after a recovery replay:
        each published item the rule now refuses is retracted, each held item is
        decided again (released, published or still held). Returns the result and the
        key to continue after, or None when the pass is complete. An item whose
        judgement raises fails closed: retracted, or released.
        """
        failed: dict[bytes, str] = {}
        while True:
            result = BatchResult()
            ov = _Overlay(store, partition)
            try:
                last = self._reevaluate_pass(ov, partition, now, after, limit, result, failed)
            except _ItemFailed as exc:
                if exc.item in failed:
                    raise exc.__cause__ or exc from None
                failed[exc.item] = exc.error
                continue
            ov.settle(result)
            result.isolated = [Isolated("published or held items", partition, -1, e) for e in failed.values()]
            return result, last

    def _reevaluate_pass(
        self,
        ov: _Overlay,
        partition: int,
        now: dt.datetime,
        after: bytes | None,
        limit: int,
        result: BatchResult,
        failed: Mapping[bytes, str],
    ) -> bytes | None:
        accounts: dict[str, tuple[Profile | None, Objection | None]] = {}

        def account(author_id: str) -> tuple[Profile | None, Objection | None]:
            if author_id not in accounts:
                accounts.clear()  # keys come in author order: one author's state at a time
                accounts[author_id] = (self._profile(ov, author_id), self._objection(ov, author_id))
            return accounts[author_id]

        last: bytes | None = None
        # `D:` sorts before `i:`: held items first, then the published index.
        for prefix in (DEFERRED_DUE_PREFIX, PUBLISHED_PREFIX):
            if after is not None and after[:2] > prefix:
                continue
            start = after if after is not None and after.startswith(prefix) else None
            for key, value in ov.store.scan(prefix, after=start):
                if limit <= 0:
                    return last
                limit -= 1
                last = key
                item = key[len(prefix) :]
                try:
                    author_id, content_id = split_item_id(item)
                    if prefix == DEFERRED_DUE_PREFIX:
                        self._rejudge_held(
                            ov, author_id, content_id, item, int.from_bytes(value, "big"), now, result, item in failed
                        )
                        continue
                    profile, objection = account(author_id)
                    event = _event_from_index(author_id, content_id, value)
                    decision = decide(event, profile, objection, self.policy, now)
                    if not decision.eligible or item in failed:
                        cause = RETRACT_CAUSE_OF_REASON.get(decision.reason, RetractCause.ACCOUNT_CHANGED)
                        self._retract(ov, author_id, content_id, f"recovery:{partition}", now, cause, now, result)
                except Exception as exc:
                    raise _ItemFailed(item, type(exc).__name__) from exc
        return None

    def expire_items(
        self, store: PartitionStore, partition: int, now: dt.datetime, after: bytes | None, limit: int
    ) -> tuple[BatchResult, bytes | None]:
        """Look at up to `limit` items' latest events after key `after`; forget those past their memory (`item_memory`).

        A sweep in steps over the items, off the path of every event (which then writes
        one key, not an expiry index beside it). Returns the result and the key to go on
        after, or None when the sweep reached the end.
        """
        result = BatchResult()
        ov = _Overlay(store, partition)
        now_ms = _ms(now)
        last: bytes | None = None
        seen = 0
        for key, raw in itertools.islice(store.scan(VERSION_PREFIX, after=after), limit):
            last, seen = key, seen + 1
            if unpack_version(raw).expires_ms <= now_ms:
                ov.put(key, None)
                result.last.append(Produce(OutputTopic.ITEMS, key[len(VERSION_PREFIX) :], None, partition))
        ov.settle(result)
        return result, (last if seen == limit else None)

    def restore(
        self, kind: StateKind, store: PartitionStore, records: Iterable[InputRecord]
    ) -> tuple[list[Update], Counter[EntryKind]]:
        """Local writes that replay one of our changelogs (published, deferred, items) into a store."""
        ov = _Overlay(store, -1)
        for record in records:
            if record.key is None:
                continue
            item = record.key
            if kind is StateKind.PUBLISHED:
                ov.put(PUBLISHED_PREFIX + item, record.value)
            elif kind is StateKind.ITEMS:
                self._restore_version(ov, item, record.value)
            else:
                self._restore_deferral(ov, item, record.value)
        result = BatchResult()
        ov.settle(result)
        return result.post_updates.get(-1, []), result.post_counts.get(-1, Counter())

    def _restore_deferral(self, ov: _Overlay, item: bytes, value: bytes | None) -> None:
        previous = ov.get(deferred_due_key(item))
        if previous is not None:
            ov.put(deferred_key(int.from_bytes(previous, "big"), item), None)
            ov.put(deferred_due_key(item), None)
        if value is not None:
            data = orjson.loads(value)
            due_ms = int(data["due_ms"])
            ov.put(deferred_key(due_ms, item), orjson.dumps(data["content"]))
            ov.put(deferred_due_key(item), due_ms.to_bytes(8, "big"))

    def _restore_version(self, ov: _Overlay, item: bytes, value: bytes | None) -> None:
        # The changelog carries the stored value itself (`state.pack_version`).
        ov.put(VERSION_PREFIX + item, value)

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
            self._fail_item_closed(ov, record, now, result)
            return
        assert record.value is not None  # decode_content rejects a null value
        skip = self._order(ov, record, event, item, now, result)
        if skip is not None:
            result.skips[skip] += 1
            result.produce.append(
                Produce(
                    OutputTopic.DECISIONS,
                    event.content_id.encode(),
                    skip_value(event, skip, policy_version=self.policy.version, decided_at=now),
                    ov.partition,
                )
            )
            return
        # A newer event supersedes a held one: it is decided (or held) on its own.
        self._release(ov, event.author_id, event.content_id, item, result)
        self._decide_event(ov, event, item, now, result)

    def _order(
        self,
        ov: _Overlay,
        record: InputRecord,
        event: ContentEvent,
        item: bytes,
        now: dt.datetime,
        result: BatchResult,
    ) -> SkipReason | None:
        """Skip an event the item's latest applied event supersedes; else make it the latest."""
        event_time_us = micros(event.event_time)
        raw = ov.get(VERSION_PREFIX + item)
        if raw is not None:
            latest = unpack_version(raw)
            if latest.event_id == event.event_id:
                return SkipReason.SUPERSEDED
            if latest.deleted:
                return SkipReason.DELETED
            if event_time_us < latest.event_time_us:
                return SkipReason.SUPERSEDED
        packed = pack_version(
            ItemVersion(
                event_time_us,
                event.event_id,
                event.op is Op.DELETE,
                _ms(now) + self._item_memory_ms,
                record.partition,
                record.offset,
            )
        )
        ov.put(VERSION_PREFIX + item, packed)
        result.last.append(Produce(OutputTopic.ITEMS, item, packed, ov.partition))
        return None

    def _decide_event(
        self, ov: _Overlay, event: ContentEvent, item: bytes, now: dt.datetime, result: BatchResult
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
            due_ms = _ms(decision.retry_at)
            held = encode_content(event)  # the contract's fields only, never the record as it came
            ov.set_held(event.author_id, event.content_id, item, due_ms, held)
            value = orjson.dumps({"due_ms": due_ms, "content": orjson.Fragment(held)})
            result.produce.append(Produce(OutputTopic.DEFERRED, item, value, ov.partition))

    def _release(self, ov: _Overlay, author_id: str, content_id: str, item: bytes, result: BatchResult) -> bool:
        """Remove the item's held copy from the store and its changelog; False if none was held."""
        if ov.due_of(author_id, content_id, item) is None:
            return False
        ov.set_held(author_id, content_id, item, None, None)
        # And on the changelog, or a worker restoring from it would bring the item back.
        result.produce.append(Produce(OutputTopic.DEFERRED, item, None, ov.partition))
        return True

    def _fail_item_closed(self, ov: _Overlay, record: InputRecord, now: dt.datetime, result: BatchResult) -> None:
        """An unreadable content record: the item it names leaves the feed and is no longer held."""
        named = _item_named_by(record)
        if named is None:
            return
        author_id, content_id = named
        item = item_id(author_id, content_id)
        raw = ov.get(VERSION_PREFIX + item)
        if raw is not None:
            latest = unpack_version(raw)
            if latest.partition == record.partition and latest.offset > record.offset:
                # Replayed after a crash: the item's latest event came after this record in
                # the log, so this record was handled before it, and must not undo it.
                return
        if self._release(ov, author_id, content_id, item, result):
            result.released += 1
        if ov.is_published(author_id, content_id):
            self._retract(
                ov,
                author_id,
                content_id,
                _state_event_id(record),
                _broker_time(record),
                RetractCause.UNREADABLE_UPDATE,
                now,
                result,
            )

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
        if isinstance(decoded, Rejected):
            self._dead_letter(record, decoded, now, result)
            self._fail_account_closed(ov, kind, record, now, result, recovering)
            return
        account_id = _account_of_key(record.key)
        assert account_id is not None  # the codec accepted the key
        if isinstance(decoded, Profile):
            stored: bytes | None = pack_profile(decoded)
        elif isinstance(decoded, Objection):
            stored = pack_objection(decoded.status)
        else:
            stored = None  # a tombstone: no profile (account deleted), no objection on record
        if kind is StateKind.PROFILES:
            ov.put(profile_key(account_id), stored)
            cause = RetractCause.ACCOUNT_DELETED if decoded is None else RetractCause.ACCOUNT_CHANGED
        else:
            ov.put(objection_key(account_id), stored)
            if not recovering and isinstance(decoded, Objection) and decoded.status is ObjectionStatus.OBJECTED:
                result.objections.append(record.timestamp)
            cause = RetractCause.OBJECTION
        if not recovering:
            self._reevaluate(ov, account_id, record, cause, now, result)

    def _fail_account_closed(
        self,
        ov: _Overlay,
        kind: StateKind,
        record: InputRecord,
        now: dt.datetime,
        result: BatchResult,
        recovering: bool,
    ) -> None:
        """An unreadable account update leaves the account as if it had no profile, or as objecting.

        Never as it was before: the update may have been the one that refuses it.
        """
        account_id = _account_of_key(record.key)
        if account_id is None:
            return  # names no account a readable record could have
        if kind is StateKind.PROFILES:
            ov.put(profile_key(account_id), None)
            cause = RetractCause.ACCOUNT_CHANGED
        else:
            ov.put(objection_key(account_id), _FAIL_CLOSED_OBJECTION)
            if not recovering:
                result.objections.append(record.timestamp)
            cause = RetractCause.OBJECTION
        if not recovering:
            self._reevaluate(ov, account_id, record, cause, now, result)

    def _reevaluate(
        self,
        ov: _Overlay,
        account_id: str,
        record: InputRecord,
        cause: RetractCause,
        now: dt.datetime,
        result: BatchResult,
    ) -> None:
        """After a change of the account: retract what the rule now refuses, decide held items again."""
        profile = self._profile(ov, account_id)
        objection = self._objection(ov, account_id)
        for content_id, raw in list(ov.published_items(account_id)):
            decision = decide(_event_from_index(account_id, content_id, raw), profile, objection, self.policy, now)
            if not decision.eligible:
                self._retract(
                    ov, account_id, content_id, _state_event_id(record), _broker_time(record), cause, now, result
                )
        for content_id, due_ms in list(ov.held_items(account_id)):
            self._rejudge_held(ov, account_id, content_id, item_id(account_id, content_id), due_ms, now, result)

    def _rejudge_held(
        self,
        ov: _Overlay,
        author_id: str,
        content_id: str,
        item: bytes,
        due_ms: int,
        now: dt.datetime,
        result: BatchResult,
        release_only: bool = False,
    ) -> None:
        """Decide a held item again with the account as it is now: still held, released, or published."""
        raw = ov.get(deferred_key(due_ms, item))
        event = decode_content(author_id.encode(), raw) if raw is not None else None
        if not release_only and isinstance(event, ContentEvent):
            profile = self._profile(ov, author_id)
            objection = self._objection(ov, author_id) if profile is not None else None
            decision = decide(event, profile, objection, self.policy, now)
            if decision.retry_at is not None and _ms(decision.retry_at) == due_ms:
                return  # still held, and due when it was
        self._release(ov, author_id, content_id, item, result)
        if release_only or not isinstance(event, ContentEvent) or raw is None:
            result.released += 1
            return
        self._decide_event(ov, event, item, now, result)
        if ov.due_of(author_id, content_id, item) is None:
            result.released += 1

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
                dead_letter_key(record.key),
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


class _ItemFailed(Exception):
    """Raised inside the engine when judging one stored item raised: it is decided again, failing closed."""

    def __init__(self, item: bytes, error: str) -> None:
        super().__init__(item, error)
        self.item = item
        self.error = error


# What `_objection` hands the rule: the stored status, nothing of who or when.
_STORED_OBJECTION = {status: Objection("", status, _EPOCH, "filter:state", "") for status in ObjectionStatus}
# An unreadable objection update fails closed: the account is treated as objecting.
_FAIL_CLOSED_OBJECTION = pack_objection(ObjectionStatus.OBJECTED)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _identifier_text(raw: object) -> str | None:
    """`raw` as an identifier the contract allows (a string of 1 to ID_MAX_LENGTH characters), or None."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if type(raw) is not str or not 1 <= len(raw) <= ID_MAX_LENGTH:
        return None
    return raw


def _account_of_key(key: bytes | None) -> str | None:
    """The account a state record's key names, if it is an id a readable record could carry."""
    return _identifier_text(key)


def _item_named_by(record: InputRecord) -> tuple[str, str] | None:
    """The (author, content id) an unreadable content record still names: its key and `content_id`."""
    author_id = _identifier_text(record.key)
    if author_id is None or record.value is None:
        return None
    try:
        obj = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    content_id = _identifier_text(obj.get("content_id"))
    return None if content_id is None else (author_id, content_id)


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
