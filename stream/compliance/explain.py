"""`python -m stream explain CONTENT_ID`: why an item was used, or not, from the audit log, in plain words.

Every decision, skip and retraction of the item on `eligibility.decisions`, in the
order the filter wrote them, each with its code, its plain sentence (`wording`), the
policy version and the time; and whether the item is on `training.feed` now.

How it stays fast on a large audit log: the audit log and the feed are keyed by
content id and written with Kafka's default partitioner, so the item's records are
all in one partition of each (`scan.partition_for`). Only those two partitions are
read, from their beginning to their end offsets at the start: a bounded scan of
1/N of the audit log (N its partition count) and of 1/M of the compacted feed,
with no local state to build or keep current. docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from stream.compliance.scan import ComplianceError, Found, Reader, identifier_key, keyed, shown, utc_text
from stream.compliance.wording import ACTIONS, sentence
from stream.config import Settings

__all__ = [
    "AuditRecord",
    "ComplianceError",
    "Explanation",
    "FeedStatus",
    "audit_record",
    "explain",
    "render",
    "to_json",
]

_FIELDS: Final = ("action", "reason", "cause", "eligible", "policy_version", "decided_at", "event_time", "event_id")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record of the audit log about an item, as read (any field may be missing from a bad record)."""

    offset: int
    written_at: dt.datetime  # broker time of the record
    action: str | None
    reason: str | None
    cause: str | None
    eligible: bool | None
    policy_version: str | None
    decided_at: str | None
    event_time: str | None
    event_id: str | None
    author_id: str | None
    readable: bool = True

    @property
    def code(self) -> str | None:
        """The record's code: the cause of a retraction, else the reason."""
        return self.cause if self.action == "retract" else self.reason

    @property
    def explanation(self) -> str:
        """The record in one plain sentence."""
        if not self.readable:
            return "An audit record that could not be read (not a JSON object): see the audit log at this offset."
        return sentence(self.action, self.reason, self.cause)


def _text(obj: dict[str, Any], name: str) -> str | None:
    v = obj.get(name)
    return v if isinstance(v, str) else None


def audit_record(found: Found) -> AuditRecord:
    """An audit log record as read; one that is not a JSON object is kept, marked unreadable (never dropped)."""
    try:
        obj = orjson.loads(found.value) if found.value is not None else None
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        return AuditRecord(found.offset, found.at, *(None,) * 9, readable=False)
    eligible = obj.get("eligible")
    return AuditRecord(
        found.offset,
        found.at,
        _text(obj, "action"),
        _text(obj, "reason"),
        _text(obj, "cause"),
        eligible if isinstance(eligible, bool) else None,
        _text(obj, "policy_version"),
        _text(obj, "decided_at"),
        _text(obj, "event_time"),
        _text(obj, "event_id"),
        _text(obj, "author_id"),
    )


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """Whether the item is on the compacted training feed now, and what its latest feed record says."""

    on_feed: bool
    # "on_feed": a live record; "withdrawn": the latest record is a tombstone; "absent":
    # the feed holds no record of it (never used, or withdrawn so long ago that the
    # tombstone was compacted away: the audit log says which).
    state: str
    since: dt.datetime | None = None  # broker time of the latest feed record
    policy_version: str | None = None
    jurisdiction: str | None = None
    decided_at: str | None = None

    @property
    def words(self) -> str:
        """The status in one plain sentence."""
        if self.state == "on_feed":
            return (
                f"Yes: the item is on the training feed now (since {utc_text(self.since) if self.since else '?'}, "
                f"policy {self.policy_version or '?'}, allowed in {self.jurisdiction or '?'})."
            )
        if self.state == "withdrawn":
            return (
                f"No: the item was withdrawn from the training feed at {utc_text(self.since) if self.since else '?'}"
                " and trainers must delete it."
            )
        return "No: the training feed holds no record of this item."


def feed_status(records: list[Found]) -> FeedStatus:
    """The status the item's latest record on the compacted feed gives."""
    if not records:
        return FeedStatus(False, "absent")
    last = records[-1]
    if last.value is None:
        return FeedStatus(False, "withdrawn", last.at)
    try:
        obj = orjson.loads(last.value)
    except orjson.JSONDecodeError:
        obj = None
    obj = obj if isinstance(obj, dict) else {}
    return FeedStatus(
        True, "on_feed", last.at, _text(obj, "policy_version"), _text(obj, "jurisdiction"), _text(obj, "decided_at")
    )


@dataclass(slots=True)
class Explanation:
    """Everything the audit log and the feed say about one content id."""

    content_id: str
    records: list[AuditRecord]
    feed: FeedStatus
    decisions_partition: int
    feed_partition: int
    records_read: int = 0
    seconds: float = 0.0
    authors: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether the filter left any trace of the item."""
        return bool(self.records) or self.feed.state != "absent"


async def explain(settings: Settings, content_id: str) -> Explanation:
    """Read the item's partition of the audit log and of the feed; ComplianceError if the id is unusable."""
    key = identifier_key(content_id, "content id")
    topics = settings.topics
    async with Reader(settings) as reader:
        decisions_partition = await reader.partition_of(topics.decisions, key)
        feed_partition = await reader.partition_of(topics.feed, key)
        scan = await reader.scan({topics.decisions: [decisions_partition], topics.feed: [feed_partition]}, keyed(key))
    records = [audit_record(f) for f in scan.of(topics.decisions)]
    authors = sorted({r.author_id for r in records if r.author_id is not None})
    return Explanation(
        content_id,
        records,
        feed_status(scan.of(topics.feed)),
        decisions_partition,
        feed_partition,
        scan.read,
        scan.seconds,
        authors,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def render(e: Explanation) -> str:
    """The explanation as text for a person."""
    name = shown(e.content_id)
    if not e.found:
        return (
            f"Content item {name}: the filter has no record of it. No decision, skip or withdrawal of this id is in "
            f"the audit log, and it is not on the training feed (read {e.records_read} records in "
            f"{e.seconds:.2f} s).\n"
        )
    lines = [f"Content item {name}"]
    if e.authors:
        lines.append(f"Author (account id): {', '.join(shown(a) for a in e.authors)}")
    lines.append(f"On the training feed now? {e.feed.words}")
    lines.append("")
    lines.append(f"What the filter did, oldest first ({_count(len(e.records), 'audit record')}):")
    for n, r in enumerate(e.records, 1):
        what = ACTIONS.get(r.action or "", r.action or "?")
        lines.append(
            f"{n:3}. {r.decided_at or utc_text(r.written_at)}  {what}: {r.code or '?'}"
            f"  (policy {r.policy_version or '?'}; event {shown(r.event_id or '?')} of {r.event_time or '?'})"
        )
        lines.append(f"     {r.explanation}")
    if not e.records:
        lines.append("     (none: the audit log no longer holds them, or never did)")
    lines.append("")
    lines.append(
        f"Read {e.records_read} records of the audit log's partition {e.decisions_partition} and the feed's "
        f"partition {e.feed_partition} in {e.seconds:.2f} s."
    )
    return "\n".join(lines) + "\n"


def to_json(e: Explanation) -> bytes:
    """The explanation as one JSON object (indented), for scripts."""
    body = {
        "content_id": e.content_id,
        "found": e.found,
        "authors": e.authors,
        "on_feed": e.feed.on_feed,
        "feed": {
            "state": e.feed.state,
            "since": utc_text(e.feed.since) if e.feed.since else None,
            "policy_version": e.feed.policy_version,
            "jurisdiction": e.feed.jurisdiction,
            "decided_at": e.feed.decided_at,
            "explanation": e.feed.words,
        },
        "records": [
            {
                "offset": r.offset,
                "written_at": utc_text(r.written_at),
                **{name: getattr(r, name) for name in _FIELDS},
                "author_id": r.author_id,
                "code": r.code,
                "explanation": r.explanation,
                "readable": r.readable,
            }
            for r in e.records
        ],
        "scan": {
            "decisions_partition": e.decisions_partition,
            "feed_partition": e.feed_partition,
            "records_read": e.records_read,
            "seconds": round(e.seconds, 3),
        },
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
