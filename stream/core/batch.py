"""What the engine hands the shell for one batch: the records to send, the store writes, the counts.

Owns the engine's result types (`BatchResult`, `Produce`, `OutputTopic`) and the
fields of a consumed record it reads (`InputRecord`). The order in which the shell
performs a result is in `engine`'s module docstring.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple, Protocol, final

from stream.core.models import DeadLetterReason, Reason, RetractCause, SkipReason
from stream.core.state import EntryKind, StateKind, Update


class OutputTopic(StrEnum):
    """The topics the engine writes to; the values are the metric's `output` label."""

    FEED = "feed"
    DECISIONS = "decisions"
    DLQ = "dlq"
    DEFERRED = "deferred"
    PUBLISHED = "published"
    ITEMS = "items"
    RETRACTIONS = "retractions"
    # Only with a shadow policy (`shadow`): where it would have decided differently.
    SHADOW = "shadow"


# Our changelogs: a record goes to the partition number of the input it came from,
# since partition p's store is restored from partition p of each of them.
CHANGELOGS: Final = frozenset({OutputTopic.DEFERRED, OutputTopic.PUBLISHED, OutputTopic.ITEMS})


class InputRecord(Protocol):
    """The fields of a consumed Kafka record the engine reads (aiokafka's ConsumerRecord has them)."""

    @property
    def topic(self) -> str:
        """The topic the record was consumed from."""

    @property
    def partition(self) -> int:
        """Its partition."""

    @property
    def offset(self) -> int:
        """Its offset in that partition."""

    @property
    def key(self) -> bytes | None:
        """Its key bytes (None: no key)."""

    @property
    def value(self) -> bytes | None:
        """Its value bytes (None: a tombstone)."""

    @property
    def timestamp(self) -> int:
        """Its broker timestamp, ms since the epoch."""


@final
@dataclass(init=False)
class Produce:
    """One record to send. A None value is a real Kafka tombstone.

    `partition` is the input partition the record comes from. Changelog records
    (`CHANGELOGS`) go to that partition number; the others go where Kafka's default
    partitioner puts their key (the worker's `partitioning`), so a content id's
    records stay on one partition however the inputs are partitioned.
    Two or three are built per event: immutable like the models built per event
    (`models.ContentEvent` says why not frozen), a native class once compiled.
    """

    topic: Final[OutputTopic]
    key: Final[bytes | None]
    value: Final[bytes | None]
    partition: Final[int]
    # Kafka headers: a feed record names the key of its pseudonym (`records.key_id_headers`).
    # A list, as aiokafka's record builder requires; shared between records, never changed.
    headers: Final[list[tuple[str, bytes]] | None]

    def __init__(
        self,
        topic: OutputTopic,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.partition = partition
        self.headers = headers


class Isolated(NamedTuple):
    """A record whose handling raised: dead-lettered and failed closed instead (for the log)."""

    topic: str
    partition: int
    offset: int
    error: str


@dataclass(slots=True)
class BatchResult:
    """Everything deciding one batch produced: records in send order, store writes around them, counts."""

    # Sent and acknowledged before `produce`, and `last` after it (see the engine's module docstring).
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
    # Shadow mode only (`shadow`): the diff records, sent with `produce` but apart from
    # it, so the records in force are the same with and without a shadow; and their
    # count by (reason in force, shadow reason).
    shadow: list[Produce] = field(default_factory=list)
    shadow_differences: Counter[tuple[Reason, Reason]] = field(default_factory=Counter)

    def records(self) -> Iterator[Produce]:
        """Every record of the batch, in the order they are sent."""
        yield from self.first
        yield from self.produce
        yield from self.shadow
        yield from self.last


def where(record: InputRecord) -> tuple[str, int, int]:
    """Where a record is in the log: what isolating it remembers it by."""
    return (record.topic, record.partition, record.offset)


def state_event_id(record: InputRecord) -> str:
    """The event id an audit record caused by a state record carries: its place in the log."""
    return f"{record.topic}:{record.partition}:{record.offset}"


def broker_time(record: InputRecord) -> dt.datetime:
    """The record's broker timestamp as an aware datetime."""
    return dt.datetime.fromtimestamp(record.timestamp / 1000, tz=dt.UTC)


def epoch_ms(moment: dt.datetime) -> int:
    """Milliseconds since the Unix epoch: how due times and expiries are stored."""
    return int(moment.timestamp() * 1000)
