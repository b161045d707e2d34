"""Peer: the same filter as a Quix Streams application (what a user would pick instead).

One `StreamingDataFrame` over the three inputs, concatenated (`sdf.concat`), so that
one stateful step sees an account's profile, objection and content together: the
topics are co-partitioned by account id, and Quix keeps a store per concatenated
stream whose state is scoped to the message key (here the account). The step runs
the same rule and record builders as the other baselines (`bench.dictfilter`) on the
account's slice of state, read from and written back to Quix's RocksDB store (with
its changelog topic, Quix's default) on every record. Its outputs are expanded into
rows and produced with `to_topic` to the feed, the decisions or the dead letters,
chosen per row. Quix's defaults otherwise: at-least-once, its checkpoint every 5 s,
confluent-kafka (librdkafka) underneath.

Why not two `join_asof` (content with profiles, then with objections): an as-of join
stores the right side and enriches the left, nothing more. It cannot retract an item
when its author objects later, hold an item for a notice period, or keep the order
per item; the baselines do all three (`bench.dictfilter`), so this peer does too.

Order: for concatenated topics Quix processes the records of one partition number
in timestamp order across the topics (its time alignment), waiting for a partition
that has records but none fetched. The drain's backlog stamps every state record
before every content record (`bench.run`), so this peer, like the others, decides
content on the state as it stands at the end of the backlog, and its feed can be
compared with theirs.

State values are JSON (orjson, as Quix's default state serialisation, but with
datetimes written as ISO 8601 rather than refused): the account's slice as lists of
the fields `bench.dictfilter` keeps, rebuilt into its values on every record
(pickling the dataclasses instead cost ~25 to 50 us a record).

Configured from the same environment as the worker (`Settings.from_env`); the consumer
group is `STREAM_GROUP_ID`, the state lives under `STREAM_DATA_DIR/quix`. Quix stops on
SIGTERM or SIGINT after the record in hand, committing what it processed.

    python -m bench.baseline_quix
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from quixstreams import Application, State, message_context
from quixstreams.models import Topic
from quixstreams.models.serializers import Serializer
from quixstreams.state.rocksdb import RocksDBOptions

# The filter's private value classes, to rebuild its state from Quix's store (the parity test
# on the broker, tests/integration/test_quix_peer.py, fails if they change shape).
from bench.dictfilter import DECISIONS, DLQ, FEED, DictFilter, Output, _Applied, _Held, _Published
from stream.config import Settings
from stream.core.models import ContentEvent, ContentType, Objection, ObjectionStatus, Op, Platform, Profile, Visibility
from stream.core.policy import load_policy

log = logging.getLogger("bench.baseline_quix")

SLICE = "a"  # the one state entry per account: its slice of the filter's state


@dataclass(frozen=True, slots=True)
class _Rec:
    """A consumed record seen through the fields `DictFilter` reads (timestamp in ms)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


class _OutputValue(Serializer):
    """Serialises an output row `(kind, key, value)` as its value: bytes, or None for a tombstone."""

    def __call__(self, value: Output, ctx: Any = None) -> bytes:
        # None is a tombstone: Quix hands the serialiser's result to the producer as it is.
        return value[2]  # type: ignore[return-value]


_CONTENT_TYPES = {m.value: m for m in ContentType}
_PLATFORMS = {m.value: m for m in Platform}
_VISIBILITIES = {m.value: m for m in Visibility}
_OPS = {m.value: m for m in Op}
_STATUSES = {m.value: m for m in ObjectionStatus}
_TIME = dt.datetime.fromisoformat


def _time(text: str | None) -> dt.datetime | None:
    return None if text is None else _TIME(text)


# The slice of one account as JSON (Quix's default state serialisation, orjson), and back:
# [profile, objection, published, held, latest], each a list of the fields `bench.dictfilter` keeps.
# orjson writes datetimes and dates in ISO 8601 and enums as their values.


def _encode(filt: DictFilter, account: str) -> list[Any] | None:
    p = filt.profiles.get(account)
    o = filt.objections.get(account)
    published = filt.published.get(account)
    held = filt.held.get(account)
    latest = {cid: list(a) for (author, cid), a in filt.latest.items() if author == account}
    if p is None and o is None and not published and not held and not latest:
        return None
    return [
        None if p is None else [p.account_id, p.birth_date, p.country, p.notified_at, p.updated_at],
        None if o is None else [o.account_id, o.status, o.at, o.source, o.request_id],
        {cid: [x.event_id, x.content_type, x.created_at] for cid, x in published.items()} if published else None,
        {cid: [_event_fields(h.event), h.due_ms] for cid, h in held.items()} if held else None,
        latest,
    ]


def _event_fields(e: ContentEvent) -> list[Any]:
    return [
        e.event_id,
        e.op,
        e.content_id,
        e.author_id,
        e.event_time,
        e.content_type,
        e.platform,
        e.visibility,
        e.created_at,
        e.text,
        e.media_uri,
        e.language,
    ]


def _event(f: list[Any]) -> ContentEvent:
    return ContentEvent(
        event_id=f[0],
        op=_OPS[f[1]],
        content_id=f[2],
        author_id=f[3],
        event_time=_TIME(f[4]),
        content_type=None if f[5] is None else _CONTENT_TYPES[f[5]],
        platform=None if f[6] is None else _PLATFORMS[f[6]],
        visibility=None if f[7] is None else _VISIBILITIES[f[7]],
        created_at=_time(f[8]),
        text=f[9],
        media_uri=f[10],
        language=f[11],
    )


def _decode(stored: list[Any], account: str, filt: DictFilter) -> None:
    p, o, published, held, latest = stored
    if p is not None:
        birth = p[1]
        filt.profiles[account] = Profile(
            p[0], None if birth is None else dt.date.fromisoformat(birth), p[2], _time(p[3]), _TIME(p[4])
        )
    if o is not None:
        filt.objections[account] = Objection(o[0], _STATUSES[o[1]], _TIME(o[2]), o[3], o[4])
    if published:
        filt.published[account] = {
            cid: _Published(x[0], _CONTENT_TYPES[x[1]], _TIME(x[2])) for cid, x in published.items()
        }
    if held:
        filt.held[account] = {cid: _Held(_event(x[0]), x[1]) for cid, x in held.items()}
    for cid, a in latest.items():
        filt.latest[(account, cid)] = _Applied(_TIME(a[0]), a[1], a[2], a[3], a[4])


class _Step:
    """The stateful step: one account's slice of state into a `DictFilter`, the record applied, the slice back."""

    def __init__(self, filt: DictFilter, topics: dict[str, str]) -> None:
        self.filt = filt
        self.kind_of = topics  # topic name -> "content" | "profiles" | "objections"

    def __call__(
        self, value: bytes | None, key: bytes | None, timestamp: int, headers: Any, state: State[Any, Any]
    ) -> list[Output]:
        ctx = message_context()
        record = _Rec(ctx.topic, ctx.partition, ctx.offset, key, value, timestamp)
        filt = self.filt
        account = _account(key)
        if account is not None:
            self._load(account, state)
        out: list[Output] = []
        now = dt.datetime.now(dt.UTC)
        kind = self.kind_of[ctx.topic]
        if kind == "content":
            filt.decide_content(record, now, out)
        elif kind == "profiles":
            filt.apply_profile(record, now, out)
        else:
            filt.apply_objection(record, now, out)
        if account is not None:
            self._store(account, state)
        return out

    def _load(self, account: str, state: State[Any, Any]) -> None:
        filt = self.filt
        filt.profiles.clear()
        filt.objections.clear()
        filt.published.clear()
        filt.held.clear()
        filt.latest.clear()
        stored = state.get(SLICE)
        if stored is not None:
            _decode(stored, account, filt)

    def _store(self, account: str, state: State[Any, Any]) -> None:
        # A record touches only its key's account (the codec refuses an author that differs from the key).
        stored = _encode(self.filt, account)
        if stored is None:
            state.delete(SLICE)
        else:
            state.set(SLICE, stored)


def _account(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _wall_clock_ms(value: Any, key: Any, timestamp: int, headers: Any) -> int:
    """The output's timestamp: when it is produced, as the other consumers' producers stamp it.

    Quix stamps an output with its input's timestamp by default; the drain measures
    throughput from the outputs' timestamps.
    """
    return int(time.time() * 1000)


def build(settings: Settings) -> Application:
    """The Quix application: three inputs concatenated, one stateful step, outputs routed per row."""
    t = settings.topics
    (settings.data_dir / "quix").mkdir(parents=True, exist_ok=True)
    app = Application(
        broker_address=settings.bootstrap_servers,
        consumer_group=settings.group_id,
        auto_offset_reset="earliest",
        state_dir=str(settings.data_dir / "quix"),
        # orjson with its defaults: Quix's own `dumps` passes datetimes through (to fail), and the
        # slice holds datetimes (`_encode`).
        rocksdb_options=RocksDBOptions(dumps=orjson.dumps, loads=orjson.loads),
        # The worker's and the raw loop's output compression and linger.
        producer_extra_config={"compression.type": settings.compression, "linger.ms": settings.linger_ms},
        loglevel="INFO",
    )

    def raw_topic(name: str) -> Topic:
        """Bytes in: decoded by the filter's codec, as the worker does."""
        return app.topic(name, key_deserializer="bytes", value_deserializer="bytes")

    def output_topic(name: str) -> Topic:
        return app.topic(name, key_serializer="bytes", value_serializer=_OutputValue())

    outputs = {FEED: output_topic(t.feed), DECISIONS: output_topic(t.decisions), DLQ: output_topic(t.dlq)}
    step = _Step(
        DictFilter(load_policy(settings.policy_path), settings.pseudonym_key),
        {t.content: "content", t.profiles: "profiles", t.objections: "objections"},
    )
    sdf = (
        app.dataframe(raw_topic(t.profiles))
        .concat(app.dataframe(raw_topic(t.objections)))
        .concat(app.dataframe(raw_topic(t.content)))
    )
    sdf = sdf.apply(step, stateful=True, expand=True, metadata=True)
    sdf = sdf.set_timestamp(_wall_clock_ms)
    sdf.to_topic(lambda value, key, timestamp, headers: outputs[value[0]], key=lambda value: value[1])
    return app


def main() -> int:
    """Run the Quix Streams peer until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build(Settings.from_env()).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
