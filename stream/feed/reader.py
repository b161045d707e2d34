"""Reading the feed as a trainer: `snapshot`, `follow`, `retracted_since`, `acknowledge`.

A synchronous API (a training job is usually not asyncio code) over aiokafka: each
reader owns a private event loop and one consumer without a consumer group unless
the trainer names one. Nothing here writes to a topic; the only thing committed is
a trainer's own consumer group position, when it asks (`Follower.commit`,
`acknowledge`).

Why the snapshot is exact: the worker sends an item's tombstone and its
`training.retractions` record in the same awaited step, so they land within one
attempt's round trip of each other, in either order. The snapshot reads the
retractions' end offsets first and the feed's after; a retraction whose record lands
before the first and whose tombstone lands after the second would be named by neither
the snapshot nor `retracted_since`. So the snapshot also reads the retraction records
of the last `RACE_WINDOW` before its end, and withholds an item whose feed value was
decided no later than such a record retracted it (`Manifest.withheld`): an item it
yields is either still on the feed after its end, or its retraction record lies
after the manifest's retraction offsets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Final

import orjson

from stream.config import KafkaSecurity, Settings, TopicNames
from stream.errors import StreamError
from stream.feed.items import ContentHash, FeedItem, UnreadableRecord, decode_item
from stream.feed.manifest import Manifest

log = logging.getLogger(__name__)

# Longer than a tombstone and its retraction record, sent in one step, can land apart:
# aiokafka's request timeout (40 s) bounds one attempt; a failed attempt sends both again.
RACE_WINDOW: Final = dt.timedelta(minutes=5)
# Records one fetch takes.
_FETCH_RECORDS: Final = 10_000
# A read that gets no record for this long while behind its end offsets fails.
READ_STALL_SECONDS: Final = 60.0


class FeedError(StreamError):
    """Raised when the feed or training.retractions cannot be read as a manifest requires."""


def reader_settings(env: Mapping[str, str] | None = None) -> Settings:
    """What a trainer needs from the environment: the brokers, the security settings, the topic names.

    No pseudonym key (a trainer never has it) and none of the worker's settings: the
    rest keeps its defaults, which nothing in this package reads.
    """
    env = os.environ if env is None else env
    return Settings(
        bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        topics=TopicNames.from_env(env),
        kafka_security=KafkaSecurity.from_env(env),
    )


def _utc_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _parse_utc(text: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else None


class _Kafka:
    """A private event loop and one consumer on it; every method runs to completion synchronously."""

    def __init__(self, settings: Settings, group_id: str | None = None) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        try:
            self.consumer: Any = self.run(self._started(group_id))
        except BaseException:
            self.loop.close()
            raise

    async def _started(self, group_id: str | None) -> Any:
        # aiokafka binds a client to the running loop: it is built on the private one.
        from aiokafka import AIOKafkaConsumer

        from stream.connection import client_options

        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            client_id="eligibility-feed-reader",
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20,
        )
        await consumer.start()
        return consumer

    def run(self, awaitable: Any) -> Any:
        """Run one awaitable on the private loop."""
        return self.loop.run_until_complete(awaitable)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one of the consumer's synchronous methods on the private loop (they create futures on it)."""

        async def on_loop() -> Any:
            return fn(*args)

        return self.run(on_loop())

    def place(self, positions: Mapping[Any, int]) -> None:
        """Assign exactly these partitions, each at its position."""
        self.call(self.consumer.assign, list(positions))
        for tp, offset in positions.items():
            self.call(self.consumer.seek, tp, offset)

    def close(self) -> None:
        """Stop the consumer and close the loop."""
        try:
            self.run(self.consumer.stop())
        finally:
            self.loop.close()

    def partitions(self, topic: str) -> list[Any]:
        """Every partition of `topic`; FeedError if it does not exist."""
        from aiokafka import TopicPartition

        count = self.run(self._partition_count(topic))
        if not count:
            raise FeedError(f"topic {topic!r} does not exist (see `python -m stream topics check`)")
        return [TopicPartition(topic, p) for p in range(count)]

    async def _partition_count(self, topic: str) -> int:
        from aiokafka.admin import AIOKafkaAdminClient

        from stream.connection import client_options

        admin = AIOKafkaAdminClient(**client_options(self.settings), client_id="eligibility-feed-reader")
        await admin.start()
        try:
            if topic not in set(await admin.list_topics()):
                return 0
            described: list[Any] = await admin.describe_topics([topic])
        finally:
            await admin.close()
        return sum(len(t["partitions"]) for t in described if t.get("error_code", 0) == 0)

    def ends(self, tps: list[Any]) -> dict[Any, int]:
        """The end offsets of `tps` now."""
        return dict(self.run(self.consumer.end_offsets(tps)))

    def beginnings(self, tps: list[Any]) -> dict[Any, int]:
        """The first offsets retention kept."""
        return dict(self.run(self.consumer.beginning_offsets(tps)))

    def offsets_at(self, tps: list[Any], moment: dt.datetime, ends: Mapping[Any, int]) -> dict[Any, int]:
        """The first offset of each partition stamped at or after `moment` (its end if none)."""
        found = self.run(self.consumer.offsets_for_times({tp: int(moment.timestamp() * 1000) for tp in tps}))
        return {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}

    def read(self, ranges: Mapping[Any, tuple[int, int]]) -> Iterator[Any]:
        """The records of each partition from `start` to before `end`, partition by partition, in offset order."""
        for tp, (start, end) in sorted(ranges.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
            if start >= end:
                continue
            self.place({tp: start})
            position = start
            stalled_since = self.loop.time()
            while position < end:
                fetched = self.run(self.consumer.getmany(tp, timeout_ms=500, max_records=_FETCH_RECORDS))
                records = fetched.get(tp, [])
                if records:
                    stalled_since = self.loop.time()
                elif self.loop.time() - stalled_since > READ_STALL_SECONDS:
                    raise FeedError(f"no records for {READ_STALL_SECONDS:.0f}s reading {tp.topic}[{tp.partition}]")
                for r in records:
                    if r.offset >= end:
                        break
                    yield r
                # Compaction leaves gaps, and transaction markers take offsets: the position moves past them.
                position = max(position, self.run(self.consumer.position(tp)))


# --- snapshot ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    items: int = 0
    tombstones: int = 0
    unreadable: int = 0
    withheld: int = 0
    policy_versions: set[str] = field(default_factory=set)
    schema_versions: set[int] = field(default_factory=set)
    content_hash: ContentHash = field(default_factory=ContentHash)


class Snapshot:
    """The live items of the feed up to its end offsets when the snapshot starts; `manifest` once iterated.

    Iterate it once: `for item in snap: ...`, then `snap.manifest`. Reads the feed twice
    (keys first, to know each item's latest record, then the values of those), so it
    holds keys and offsets in memory, never the items.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings if settings is not None else reader_settings()
        self._manifest: Manifest | None = None
        self._plan: _Plan | None = None
        self._started = False

    @property
    def manifest(self) -> Manifest:
        """The snapshot's manifest; FeedError before the iteration has ended."""
        if self._manifest is None:
            raise FeedError("the manifest exists once the snapshot has been read to its end")
        return self._manifest

    def prepare(self) -> int:
        """Read the end offsets and the feed's keys; return how many items the iteration yields."""
        if self._plan is None:
            self._plan = _Plan.make(self._settings)
        return self._plan.expected

    def close(self) -> None:
        """Release the reader of a snapshot prepared but never iterated (iterating releases it at the end)."""
        if self._plan is not None and not self._started:
            self._started = True
            self._plan.kafka.close()

    def __iter__(self) -> Iterator[FeedItem]:
        if self._started:
            raise FeedError("a snapshot is read once; take another for another pass")
        self._started = True
        self.prepare()
        assert self._plan is not None
        plan, tally = self._plan, _Tally()
        tally.tombstones = plan.tombstones
        try:
            for r in plan.kafka.read(plan.feed_ranges):
                if r.value is None or plan.latest.get(r.key) != (r.partition, r.offset):
                    continue
                try:
                    item = decode_item(r.key, r.value)
                except UnreadableRecord as exc:
                    tally.unreadable += 1
                    log.warning("feed: unreadable record at %s[%d]@%d: %s", r.topic, r.partition, r.offset, exc)
                    continue
                if plan.withholds(item):
                    tally.withheld += 1
                    continue
                tally.items += 1
                tally.policy_versions.add(item.policy_version)
                tally.schema_versions.add(item.schema_version)
                tally.content_hash.add(item)
                yield item
        finally:
            plan.kafka.close()
        self._manifest = plan.manifest(tally)


def snapshot(settings: Settings | None = None) -> Snapshot:
    """The feed's live items up to its end offsets at the start, tombstones dropped; `.manifest` once read.

    `settings` defaults to `reader_settings()` (the environment, no pseudonym key needed).
    """
    return Snapshot(settings)


@dataclass(slots=True)
class _Plan:
    """A snapshot's end offsets, the feed's latest record per key, and the retractions of the race window."""

    kafka: _Kafka
    topics: TopicNames
    taken_at: dt.datetime
    feed_ranges: dict[Any, tuple[int, int]]
    retraction_ends: dict[Any, int]
    latest: dict[bytes, tuple[int, int]]  # key -> (partition, offset) of its latest live record
    tombstones: int
    # Content id -> the latest retracted_at of its records within the race window (None:
    # a record whose time cannot be read, which withholds the item whatever its version).
    recently_retracted: dict[str, dt.datetime | None]
    expected: int

    @classmethod
    def make(cls, settings: Settings) -> _Plan:
        topics = settings.topics
        kafka = _Kafka(settings)
        try:
            taken_at = dt.datetime.now(dt.UTC)
            retraction_tps = kafka.partitions(topics.retractions)
            feed_tps = kafka.partitions(topics.feed)
            # The retractions' ends first, the feed's after (the module docstring says why).
            retraction_ends = kafka.ends(retraction_tps)
            feed_ends = kafka.ends(feed_tps)
            feed_ranges = {tp: (start, feed_ends[tp]) for tp, start in kafka.beginnings(feed_tps).items()}
            window = kafka.offsets_at(retraction_tps, taken_at - RACE_WINDOW, retraction_ends)
            recently: dict[str, dt.datetime | None] = {}
            for r in kafka.read({tp: (window[tp], retraction_ends[tp]) for tp in retraction_tps}):
                content_id, text = _retraction(r.key, r.value)
                if content_id is None:
                    continue
                at = _parse_utc(text) if text is not None else None
                before = recently.get(content_id, at)
                recently[content_id] = None if at is None or before is None else max(at, before)
            latest: dict[bytes, tuple[int, int]] = {}
            tombstones = 0
            for r in kafka.read(feed_ranges):
                if r.key is None:
                    continue
                if r.value is None:
                    tombstones += 1
                    latest.pop(r.key, None)
                else:
                    latest[r.key] = (r.partition, r.offset)
        except BaseException:
            kafka.close()
            raise
        return cls(kafka, topics, taken_at, feed_ranges, retraction_ends, latest, tombstones, recently, len(latest))

    def withholds(self, item: FeedItem) -> bool:
        """Whether a retraction record of the race window retracted this very version of the item."""
        if item.content_id not in self.recently_retracted:
            return False
        retracted = self.recently_retracted[item.content_id]
        decided = _parse_utc(item.decided_at)
        # No later than: a version published and retracted within one batch has both times equal.
        return decided is None or retracted is None or decided <= retracted

    def manifest(self, tally: _Tally) -> Manifest:
        return Manifest(
            taken_at=_utc_text(self.taken_at),
            feed_topic=self.topics.feed,
            retractions_topic=self.topics.retractions,
            feed_offsets={tp.partition: end for tp, (_, end) in self.feed_ranges.items()},
            retractions_offsets={tp.partition: end for tp, end in self.retraction_ends.items()},
            items=tally.items,
            tombstones=tally.tombstones,
            unreadable=tally.unreadable,
            withheld=tally.withheld,
            policy_versions=tuple(sorted(tally.policy_versions)),
            schema_versions=tuple(sorted(tally.schema_versions)),
            content_hash=tally.content_hash.hexdigest(),
        )


def _retraction(key: bytes | None, value: bytes | None) -> tuple[str | None, str | None]:
    """`(content_id, retracted_at)` of a retraction record, None for what it lacks."""
    if value is None:
        return None, None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return (key.decode("utf-8", "replace") if key else None), None
    if type(obj) is not dict:
        return None, None
    content_id, retracted_at = obj.get("content_id"), obj.get("retracted_at")
    if type(content_id) is not str:
        content_id = key.decode("utf-8", "replace") if key else None
    return content_id, retracted_at if type(retracted_at) is str else None


# --- retracted since a manifest ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retracted:
    """The content ids retracted after a manifest, and where `training.retractions` was read to."""

    content_ids: frozenset[str]
    causes: dict[str, str]  # content id -> cause of its latest retraction
    offsets: dict[int, int]  # partition -> the end offset read to: what `acknowledge` commits
    records: int  # retraction records read (duplicates after a replay included)


def retracted_since(manifest: Manifest, settings: Settings | None = None) -> Retracted:
    """Every content id retracted after `manifest` was taken, however old it is, from training.retractions.

    Reads from the manifest's retraction offsets to the end offsets now. FeedError when
    retention already deleted records after the manifest (older than 3 years by
    default): the dataset must then be exported again.
    """
    settings = settings if settings is not None else reader_settings()
    kafka = _Kafka(settings)
    try:
        tps = kafka.partitions(manifest.retractions_topic)
        if {tp.partition for tp in tps} != set(manifest.retractions_offsets):
            raise FeedError(
                f"{manifest.retractions_topic} has partitions {sorted(tp.partition for tp in tps)}, "
                f"the manifest {sorted(manifest.retractions_offsets)}: not the topic the manifest was taken from"
            )
        ends, starts = kafka.ends(tps), kafka.beginnings(tps)
        for tp in tps:
            if starts[tp] > manifest.retractions_offsets[tp.partition]:
                raise FeedError(
                    f"{tp.topic}[{tp.partition}] starts at {starts[tp]}, after the manifest's "
                    f"{manifest.retractions_offsets[tp.partition]}: retention deleted retractions; export again"
                )
        causes: dict[str, str] = {}
        records = 0
        for r in kafka.read({tp: (manifest.retractions_offsets[tp.partition], ends[tp]) for tp in tps}):
            records += 1
            content_id, cause = _retraction_cause(r.key, r.value)
            causes[content_id] = cause
        return Retracted(frozenset(causes), causes, {tp.partition: ends[tp] for tp in tps}, records)
    finally:
        kafka.close()


def _retraction_cause(key: bytes | None, value: bytes | None) -> tuple[str, str]:
    """A retraction record's content id (the key's if the value cannot say) and cause (`unknown` if unreadable).

    A record that cannot be read still names an item by its key: it is reported, never dropped.
    """
    content_id = key.decode("utf-8", "replace") if key is not None else ""
    try:
        obj = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        obj = None
    if type(obj) is dict:
        if type(obj.get("content_id")) is str:
            content_id = obj["content_id"]
        cause = obj.get("cause")
        if type(cause) is str:
            return content_id, cause
    log.warning("retractions: unreadable record for a content id of %d characters", len(content_id))
    return content_id, "unknown"


def acknowledge(group_id: str, offsets: Mapping[int, int], settings: Settings | None = None) -> None:
    """Commit `offsets` of training.retractions under the trainer's consumer group: "applied up to here".

    A trainer calls it once it has deleted the ids `retracted_since` returned (`Retracted.offsets`).
    The group's lag on the topic is what `eligibility_trainer_unacknowledged_retractions` shows.
    """
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    settings = settings if settings is not None else reader_settings()
    kafka = _Kafka(settings, group_id=group_id)
    try:
        topic = settings.topics.retractions
        positions = {TopicPartition(topic, p): o for p, o in offsets.items()}
        kafka.place(positions)  # aiokafka commits only the partitions a consumer holds
        kafka.run(kafka.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in positions.items()}))
    finally:
        kafka.close()


# --- following the feed -----------------------------------------------------------------


class ChangeKind(StrEnum):
    """What a change does to a trainer's copy of the feed."""

    ADDED = "added"  # an item that was not live
    REPLACED = "replaced"  # a new version of a live item
    RETRACTED = "retracted"  # a live item left the feed: drop it


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the feed after a manifest; `item` is None for a retraction."""

    kind: ChangeKind
    content_id: str
    item: FeedItem | None
    partition: int
    offset: int


class Follower:
    """The feed's changes from a manifest (or the group's committed position) on, in order per partition.

    Iterate it; `commit()` records the position of what was yielded under the group
    given to `follow`; `close()` (or a `with` block) ends it. With `until_end`, the
    iteration stops at the end offsets as they were when following started.
    """

    def __init__(
        self,
        manifest: Manifest,
        settings: Settings | None,
        group_id: str | None,
        until_end: bool,
        on_unreadable: Callable[[int, int, str], None] | None,
    ) -> None:
        self._settings = settings if settings is not None else reader_settings()
        self._manifest = manifest
        self._group_id = group_id
        self._until_end = until_end
        self._on_unreadable = on_unreadable
        self._kafka = _Kafka(self._settings, group_id=group_id)
        self._positions: dict[int, int] = {}
        self._closed = False

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading; uncommitted positions are not committed."""
        if not self._closed:
            self._closed = True
            self._kafka.close()

    def positions(self) -> dict[int, int]:
        """Per partition, the offset after the last record handled (yielded or passed over)."""
        return dict(self._positions)

    def commit(self) -> None:
        """Commit `positions()` under the follower's consumer group; FeedError without one."""
        from aiokafka.structs import OffsetAndMetadata

        if self._group_id is None:
            raise FeedError("follow(..., group_id=...) names the consumer group a position is committed under")
        from aiokafka import TopicPartition

        topic = self._manifest.feed_topic
        offsets = {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in self._positions.items()}
        if offsets:
            self._kafka.run(self._kafka.consumer.commit(offsets))

    def _starts(self, tps: list[Any]) -> dict[Any, int]:
        starts = {tp: self._manifest.feed_offsets.get(tp.partition, 0) for tp in tps}
        if self._group_id is not None:
            for tp in tps:
                committed = self._kafka.run(self._kafka.consumer.committed(tp))
                if committed is not None and committed > starts[tp]:
                    starts[tp] = committed
        return starts

    def __iter__(self) -> Iterator[Change]:
        kafka, topic = self._kafka, self._manifest.feed_topic
        tps = kafka.partitions(topic)
        if {tp.partition for tp in tps} != set(self._manifest.feed_offsets):
            raise FeedError(f"{topic} has other partitions than the manifest: not the topic it was taken from")
        starts = self._starts(tps)
        # Which items are live where following starts: keys only, from the compacted feed.
        live: set[bytes] = set()
        for r in kafka.read({tp: (b, starts[tp]) for tp, b in kafka.beginnings(tps).items()}):
            if r.key is not None:
                (live.discard if r.value is None else live.add)(r.key)
        self._positions = {tp.partition: starts[tp] for tp in tps}
        ends = kafka.ends(tps) if self._until_end else None
        kafka.place(starts)
        while not self._closed:
            if ends is not None and all(self._positions[tp.partition] >= ends[tp] for tp in tps):
                return
            fetched = kafka.run(kafka.consumer.getmany(timeout_ms=500, max_records=_FETCH_RECORDS))
            for tp, records in fetched.items():
                for r in records:
                    if ends is not None and r.offset >= ends[tp]:
                        break
                    self._positions[tp.partition] = r.offset + 1
                    change = self._change(r, live)
                    if change is not None:
                        yield change

    def _change(self, r: Any, live: set[bytes]) -> Change | None:
        if r.key is None:
            return None
        content_id = r.key.decode("utf-8", "replace")
        if r.value is None:
            if r.key not in live:
                return None  # a tombstone again (a replayed batch): nothing left to drop
            live.discard(r.key)
            return Change(ChangeKind.RETRACTED, content_id, None, r.partition, r.offset)
        try:
            item = decode_item(r.key, r.value)
        except UnreadableRecord as exc:
            log.warning("feed: unreadable record at %s[%d]@%d: %s", r.topic, r.partition, r.offset, exc)
            if self._on_unreadable is not None:
                self._on_unreadable(r.partition, r.offset, str(exc))
            return None
        kind = ChangeKind.REPLACED if r.key in live else ChangeKind.ADDED
        live.add(r.key)
        return Change(kind, content_id, item, r.partition, r.offset)


def follow(
    manifest: Manifest,
    settings: Settings | None = None,
    *,
    group_id: str | None = None,
    until_end: bool = False,
    on_unreadable: Callable[[int, int, str], None] | None = None,
) -> Follower:
    """The feed's additions, replacements and retractions after `manifest`, in order per partition.

    With `group_id`, following starts at the group's committed position where it is
    past the manifest's, and `Follower.commit()` records the position. A feed record
    that is not an item is logged and passed to `on_unreadable(partition, offset, why)`.
    A follower that stays away longer than the feed keeps tombstones (7 days) must use
    `retracted_since` for what it missed.
    """
    return Follower(manifest, settings, group_id, until_end, on_unreadable)
