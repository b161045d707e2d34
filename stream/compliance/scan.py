"""Reading what the filter wrote about one key: where Kafka put it, and a bounded read of those partitions.

`explain` and `subject` read the audit log, the compacted feed and the account
topics with their own decoding, and nothing of the filter (the import contract in
pyproject.toml). A key is found without reading the whole topic: every topic here is
keyed (the audit log and the feed by content id, the account topics by account id)
and written with Kafka's default partitioner, so the key's partition is known and
only that partition is read, from its beginning to the end offset taken at the start.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from stream.config import Settings
from stream.connection import client_options, read_to_end
from stream.errors import StreamError

UTC: Final = dt.UTC
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=UTC)
# Producers choose a record's CreateTime: any 64-bit number; clamp it to the calendar.
_LAST_MS: Final = (dt.datetime(9999, 1, 1, tzinfo=UTC) - _EPOCH) // dt.timedelta(milliseconds=1)
# The contract's identifiers: non-empty, at most 256 characters (schemas' `identifier`).
ID_MAX: Final = 256
# Large fetches: a scan reads whole partitions, and per-request overhead dominates small ones.
_PARTITION_FETCH_BYTES: Final = 16 << 20
_FETCH_BYTES: Final = 64 << 20


class ComplianceError(StreamError):
    """Raised when a compliance command cannot answer: a topic is missing, the broker stalls, or the id is unusable."""


# --- Kafka's default partitioner ------------------------------------------------------


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` among `partitions` (aiokafka's murmur2).

    tests/unit/test_compliance.py checks that the filter's own (`stream.core.partitioning`)
    agrees: the tools find a record where the filter put it.
    """
    from aiokafka.partitioner import murmur2  # imported here, like the clients: a fast start for the CLI

    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def identifier_key(text: str, what: str) -> bytes:
    """The record key of an id typed by an operator; ComplianceError when no record can carry it.

    The contract's ids are 1 to 256 characters of UTF-8. An argument that is not
    (empty, too long, or bytes the terminal could not decode) names nothing the
    filter wrote: a clear message, never a traceback.
    """
    if not text:
        raise ComplianceError(f"the {what} is empty")
    if len(text) > ID_MAX:
        raise ComplianceError(f"a {what} has at most {ID_MAX} characters; this one has {len(text)}: no record has it")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ComplianceError(f"the {what} is not valid UTF-8 text (undecodable bytes in the argument)") from None


def shown(text: str) -> str:
    """An id or value as it may be printed on a terminal: escaped when it holds control or invisible characters."""
    return text if text.isprintable() else ascii(text)


def broker_time(ms: int) -> dt.datetime:
    """A record's timestamp as a datetime, clamped to 1970..9999: no timestamp makes a command raise."""
    return _EPOCH + dt.timedelta(milliseconds=min(max(ms, 0), _LAST_MS))


def utc_text(moment: dt.datetime) -> str:
    """A moment as RFC 3339 in UTC with milliseconds, as the reports print it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the read -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """One record a scan kept: where it is, its broker time, its key and value (None: a tombstone)."""

    topic: str
    partition: int
    offset: int
    at: dt.datetime
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class Scan:
    """What a scan kept, how many records it read and how long it took."""

    found: list[Found] = field(default_factory=list)
    read: int = 0
    seconds: float = 0.0
    partitions: dict[str, list[int]] = field(default_factory=dict)

    def of(self, topic: str) -> list[Found]:
        """The kept records of `topic`, in offset order."""
        return [f for f in self.found if f.topic == topic]


# keep(topic, key, value) -> whether a record is kept
Keep = Callable[[str, bytes | None, bytes | None], bool]


class Reader:
    """One consumer without a group (nothing is committed, the filter's group never sees it) for one command."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: Any = None
        self._counts: dict[str, int] = {}

    async def __aenter__(self) -> Reader:
        """Start the consumer."""
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            **client_options(self._settings),
            client_id="eligibility-compliance",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=_PARTITION_FETCH_BYTES,
            fetch_max_bytes=_FETCH_BYTES,
        )
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the consumer."""
        await self._consumer.stop()

    async def partition_count(self, topic: str) -> int:
        """How many partitions `topic` has; ComplianceError when it does not exist."""
        if topic not in self._counts:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(**client_options(self._settings), client_id="eligibility-compliance")
            await admin.start()
            try:
                if topic not in set(await admin.list_topics()):
                    raise ComplianceError(f"topic {topic} does not exist (see `python -m stream topics check`)")
                described: list[Any] = await admin.describe_topics([topic])
            finally:
                await admin.close()
            counts = [len(t["partitions"]) for t in described if t.get("topic") == topic and not t.get("error_code")]
            if not counts or not counts[0]:
                raise ComplianceError(f"cannot describe topic {topic}")
            self._counts[topic] = counts[0]
        return self._counts[topic]

    async def partition_of(self, topic: str, key: bytes) -> int:
        """The partition of `topic` that holds `key`'s records."""
        return partition_for(key, await self.partition_count(topic))

    async def scan(self, wanted: Mapping[str, list[int]], keep: Keep) -> Scan:
        """Read the partitions `wanted` (topic -> partition numbers) from their beginning to their end
        offsets as of now, keeping the records `keep` accepts, in offset order per partition."""
        from aiokafka import TopicPartition

        started = time.monotonic()
        tps = [TopicPartition(topic, p) for topic, parts in wanted.items() for p in sorted(set(parts))]
        result = Scan(partitions={topic: sorted(set(parts)) for topic, parts in wanted.items()})
        if not tps:
            return result
        consumer = self._consumer
        consumer.assign(tps)
        ends: dict[Any, int] = dict(await consumer.end_offsets(tps))
        await consumer.seek_to_beginning(*tps)
        # Records appended after the start are not part of this answer.
        async for tp, records in read_to_end(consumer, ends, error=ComplianceError, max_records=100_000):
            result.read += len(records)
            for r in records:
                if keep(tp.topic, r.key, r.value):
                    result.found.append(
                        Found(tp.topic, tp.partition, r.offset, broker_time(r.timestamp), r.key, r.value)
                    )
        result.found.sort(key=lambda f: (f.topic, f.partition, f.offset))
        result.seconds = time.monotonic() - started
        return result


def keyed(key: bytes) -> Keep:
    """Keep the records whose key is `key`."""
    return lambda _topic, k, _value: k == key
