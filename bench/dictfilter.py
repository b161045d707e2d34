"""The contract's rule over in-memory dicts: the decision core of both baselines.

Same rule (`stream.core.policy.decide`), same decoders (`stream.core.codec`) and same record
builders (`stream.core.records`) as the worker, so the three consumers must write the
same feed; but state lives in Python dicts of decoded values (no RocksDB, no
re-decoding of stored profiles or held items), and nothing here does I/O or knows Kafka.

Handed the same records in the same order (a fetch's state records before its
content, as `Engine.process` takes a batch), it writes what `stream/core/engine.py`
writes to the feed, the decisions and the dead letters, record for record;
`tests/unit/test_dictfilter_parity.py` checks it on generated workloads:
- order per item: each item's latest applied event is kept; that event again, an
  older one, or anything after a delete is skipped with an audit record (`skip`);
- state records first; after any change of an account, published items the rule
  now refuses are retracted and held items decided again; unreadable state fails
  closed (no profile, or objecting);
- an unreadable content record that still names an item (key and `content_id`)
  retracts it if it is on the feed (`unreadable_update`) and releases a held copy;
- a delete of an unpublished item leaves an audit record;
- an upsert refused only for `notice_period_running` is held, released by a newer
  event of its item and decided again by a change of its account.

What it leaves out, because a benchmark run never reaches it:
- a held item never comes due (the engine's `process_due`): no timer runs here, and
  no notice period (30 days) ends inside a run;
- an item's latest event is never forgotten (the engine forgets it `ITEM_MEMORY`,
  8 days, after it was applied);
- no changelog (published, deferred, items) is written and nothing survives a
  restart: a baseline's state is its process's memory.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from stream.core.codec import ID_MAX_LENGTH, Rejected, decode_content, decode_objection, decode_profile
from stream.core.engine import InputRecord as Record  # the fields of a consumed record the filter reads
from stream.core.models import (
    ContentEvent,
    ContentType,
    Objection,
    ObjectionStatus,
    Op,
    Profile,
    Reason,
    RetractCause,
    SkipReason,
    Visibility,
)
from stream.core.policy import Policy, decide
from stream.core.records import (
    RETRACT_CAUSE_OF_REASON,
    dead_letter_key,
    dead_letter_value,
    decide_value,
    feed_value,
    retract_value,
    skip_value,
)

FEED, DECISIONS, DLQ = "feed", "decisions", "dlq"
Output = tuple[str, bytes | None, bytes | None]  # (FEED | DECISIONS | DLQ, key, value)


@dataclass(frozen=True, slots=True)
class _Published:
    """What re-deciding a published item needs (like the engine's index value)."""

    event_id: str
    content_type: ContentType
    created_at: dt.datetime


class _Applied(NamedTuple):
    """An item's latest applied event (the engine's `state.ItemVersion`); a NamedTuple: one per event."""

    event_time: dt.datetime
    event_id: str
    deleted: bool
    partition: int
    offset: int


class _Held(NamedTuple):
    """An upsert held until its author's notice period ends (due in ms, as the engine keys it)."""

    event: ContentEvent
    due_ms: int


class DictFilter:
    """The filter's decisions with plain dicts and no changelogs: the baselines' engine, kept in step with `Engine`."""

    def __init__(self, policy: Policy, pseudonym_key: bytes) -> None:
        self.policy = policy
        self.key = pseudonym_key
        self.profiles: dict[str, Profile] = {}
        self.objections: dict[str, Objection] = {}
        self.published: dict[str, dict[str, _Published]] = {}
        self.held: dict[str, dict[str, _Held]] = {}
        self.latest: dict[tuple[str, str], _Applied] = {}  # (author id, content id) -> latest applied event

    # -- state ---------------------------------------------------------------------

    def apply_profile(self, record: Record, now: dt.datetime, out: list[Output]) -> None:
        """Apply a profile record; retract what the rule now refuses and decide held items again."""
        decoded = decode_profile(record.key, record.value)
        if isinstance(decoded, Rejected):
            self._dead_letter(record, decoded, now, out)
            account = _identifier(record.key)
            if account is not None:  # fail closed: the account as unknown
                self.profiles.pop(account, None)
                self._reevaluate(account, record, RetractCause.ACCOUNT_CHANGED, now, out)
            return
        account = _identifier(record.key)
        assert account is not None  # the codec accepted the key
        if decoded is None:
            self.profiles.pop(account, None)
            self._reevaluate(account, record, RetractCause.ACCOUNT_DELETED, now, out)
        else:
            self.profiles[account] = decoded
            self._reevaluate(account, record, RetractCause.ACCOUNT_CHANGED, now, out)

    def apply_objection(self, record: Record, now: dt.datetime, out: list[Output]) -> None:
        """Apply an objection record; retract what the rule now refuses and decide held items again."""
        decoded = decode_objection(record.key, record.value)
        if isinstance(decoded, Rejected):
            self._dead_letter(record, decoded, now, out)
            account = _identifier(record.key)
            if account is not None:  # fail closed: an unreadable objection counts as one
                self.objections[account] = Objection(account, ObjectionStatus.OBJECTED, now, "filter", "")
                self._reevaluate(account, record, RetractCause.OBJECTION, now, out)
            return
        account = _identifier(record.key)
        assert account is not None  # the codec accepted the key
        if decoded is None:
            self.objections.pop(account, None)
        else:
            self.objections[account] = decoded
        self._reevaluate(account, record, RetractCause.OBJECTION, now, out)

    def _reevaluate(
        self, account: str, record: Record, cause: RetractCause, now: dt.datetime, out: list[Output]
    ) -> None:
        """After a change of the account: retract what the rule now refuses, decide held items again."""
        profile = self.profiles.get(account)
        objection = self.objections.get(account)
        mine = self.published.get(account)
        if mine:
            for content_id, item in list(mine.items()):
                event = ContentEvent(
                    event_id=item.event_id,
                    op=Op.UPSERT,
                    content_id=content_id,
                    author_id=account,
                    event_time=item.created_at,
                    content_type=item.content_type,
                    visibility=Visibility.PUBLIC,
                    created_at=item.created_at,
                )
                if not decide(event, profile, objection, self.policy, now).eligible:
                    self._retract(account, content_id, _state_event_id(record), _broker_time(record), cause, now, out)
        held = self.held.get(account)
        if held:
            for content_id, copy in list(held.items()):
                decision = decide(copy.event, profile, objection, self.policy, now)
                if decision.retry_at is not None and _ms(decision.retry_at) == copy.due_ms:
                    continue  # still held, and due when it was
                self._release(account, content_id)
                self._decide_event(copy.event, now, out)

    # -- content -------------------------------------------------------------------

    def decide_content(self, record: Record, now: dt.datetime, out: list[Output]) -> None:
        """Decide a content record: dead letter, skip (order per item), or the rule's decision."""
        event = decode_content(record.key, record.value)
        if isinstance(event, Rejected):
            self._dead_letter(record, event, now, out)
            self._fail_item_closed(record, now, out)
            return
        item = (event.author_id, event.content_id)
        latest = self.latest.get(item)
        if latest is not None:
            skip: SkipReason | None = None
            if latest.event_id == event.event_id:
                skip = SkipReason.SUPERSEDED
            elif latest.deleted:
                skip = SkipReason.DELETED
            elif event.event_time < latest.event_time:
                skip = SkipReason.SUPERSEDED
            if skip is not None:
                value = skip_value(event, skip, policy_version=self.policy.version, decided_at=now)
                out.append((DECISIONS, event.content_id.encode(), value))
                return
        self.latest[item] = _Applied(
            event.event_time, event.event_id, event.op is Op.DELETE, record.partition, record.offset
        )
        self._release(event.author_id, event.content_id)  # a newer event supersedes a held one
        self._decide_event(event, now, out)

    def _decide_event(self, event: ContentEvent, now: dt.datetime, out: list[Output]) -> None:
        author, content_id = event.author_id, event.content_id
        key = content_id.encode()
        mine = self.published.get(author)
        published = mine is not None and content_id in mine
        if event.op is Op.DELETE:
            if published:
                self._retract(
                    author, content_id, event.event_id, event.event_time, RetractCause.CONTENT_DELETED, now, out
                )
            else:  # nothing was handed to training; the audit log still records the input
                value = retract_value(
                    content_id=content_id,
                    event_id=event.event_id,
                    author_id=author,
                    cause=RetractCause.CONTENT_DELETED,
                    policy_version=self.policy.version,
                    decided_at=now,
                    event_time=event.event_time,
                )
                out.append((DECISIONS, key, value))
            return
        decision = decide(event, self.profiles.get(author), self.objections.get(author), self.policy, now)
        out.append((DECISIONS, key, decide_value(event, decision, decided_at=now)))
        if decision.eligible:
            assert event.content_type is not None and event.created_at is not None
            if mine is None:
                mine = self.published[author] = {}
            mine[content_id] = _Published(event.event_id, event.content_type, event.created_at)
            out.append((FEED, key, feed_value(event, decision, key=self.key, decided_at=now)))
            return
        if published:
            cause = RETRACT_CAUSE_OF_REASON[decision.reason]
            self._retract(author, content_id, event.event_id, event.event_time, cause, now, out)
        if decision.reason is Reason.NOTICE_PERIOD_RUNNING and decision.retry_at is not None:
            self.held.setdefault(author, {})[content_id] = _Held(event, _ms(decision.retry_at))

    def _release(self, author: str, content_id: str) -> None:
        held = self.held.get(author)
        if held is not None and held.pop(content_id, None) is not None and not held:
            del self.held[author]

    def _fail_item_closed(self, record: Record, now: dt.datetime, out: list[Output]) -> None:
        """An unreadable content record: the item it names leaves the feed and is no longer held."""
        item = _item_named_by(record)
        if item is None:
            return
        latest = self.latest.get(item)
        if latest is not None and latest.partition == record.partition and latest.offset > record.offset:
            return  # a record delivered again after its item's latest event: it must not undo it
        author, content_id = item
        self._release(author, content_id)
        mine = self.published.get(author)
        if mine is not None and content_id in mine:
            self._retract(
                author,
                content_id,
                _state_event_id(record),
                _broker_time(record),
                RetractCause.UNREADABLE_UPDATE,
                now,
                out,
            )

    # -- records -------------------------------------------------------------------

    def _retract(
        self,
        author: str,
        content_id: str,
        event_id: str,
        event_time: dt.datetime,
        cause: RetractCause,
        now: dt.datetime,
        out: list[Output],
    ) -> None:
        mine = self.published.get(author)
        if mine is not None:
            mine.pop(content_id, None)
            if not mine:
                del self.published[author]
        key = content_id.encode()
        out.append((FEED, key, None))
        out.append(
            (
                DECISIONS,
                key,
                retract_value(
                    content_id=content_id,
                    event_id=event_id,
                    author_id=author,
                    cause=cause,
                    policy_version=self.policy.version,
                    decided_at=now,
                    event_time=event_time,
                ),
            )
        )

    def _dead_letter(self, record: Record, rejected: Rejected, now: dt.datetime, out: list[Output]) -> None:
        value = dead_letter_value(
            reason=rejected.reason,
            detail=rejected.detail,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            received_at=now,
            key=record.key,
            value=record.value,
        )
        out.append((DLQ, dead_letter_key(record.key), value))


def _identifier(raw: object) -> str | None:
    """`raw` as an id a readable record could carry (UTF-8 text of 1 to ID_MAX_LENGTH characters), or None."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if type(raw) is not str or not 1 <= len(raw) <= ID_MAX_LENGTH:
        return None
    return raw


def _item_named_by(record: Record) -> tuple[str, str] | None:
    """The (author, content id) an unreadable content record still names: its key and `content_id`.

    Decodes the value a second time, but only for a record the codec refused.
    """
    author = _identifier(record.key)
    if author is None or record.value is None:
        return None
    try:
        obj = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    content_id = _identifier(obj.get("content_id"))
    return None if content_id is None else (author, content_id)


def _ms(moment: dt.datetime) -> int:
    # As the engine computes a held item's due time: equal due times must compare equal.
    return int(moment.timestamp() * 1000)


def _state_event_id(record: Record) -> str:
    return f"{record.topic}:{record.partition}:{record.offset}"


def _broker_time(record: Record) -> dt.datetime:
    return dt.datetime.fromtimestamp(record.timestamp / 1000, tz=dt.UTC)
