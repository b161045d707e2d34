"""The contract's rule over in-memory dicts: the decision core of both baselines.

Same rule (`stream.policy.decide`), same decoders (`stream.codec`) and same record
builders (`stream.records`) as the worker, so the three consumers must write the
same feed; but state lives in Python dicts of decoded values (no RocksDB, no
re-decoding of stored profiles), and nothing here does I/O or knows Kafka.

It mirrors `stream/engine.py`'s semantics record for record: state records first,
retraction of published items whose author's state changed, fail-closed handling
of unreadable state, and an audit record for a delete of an unpublished item.
Deferred decisions (items refused only for `notice_period_running`) are not held
here; inside a benchmark run no notice period ends, so the feed is unaffected.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from stream.codec import Rejected, decode_content, decode_objection, decode_profile
from stream.engine import InputRecord as Record  # the fields of a consumed record the filter reads
from stream.models import ContentEvent, ContentType, Objection, ObjectionStatus, Op, Profile, RetractCause, Visibility
from stream.policy import Policy, decide
from stream.records import RETRACT_CAUSE_OF_REASON, dead_letter_value, decide_value, feed_value, retract_value

FEED, DECISIONS, DLQ = "feed", "decisions", "dlq"
Output = tuple[str, bytes | None, bytes | None]  # (FEED | DECISIONS | DLQ, key, value)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class _Published:
    """What re-deciding a published item needs (like the engine's index value)."""

    event_id: str
    content_type: ContentType
    created_at: dt.datetime


class DictFilter:
    def __init__(self, policy: Policy, pseudonym_key: bytes) -> None:
        self.policy = policy
        self.key = pseudonym_key
        self.profiles: dict[str, Profile] = {}
        self.objections: dict[str, Objection] = {}
        self.published: dict[str, dict[str, _Published]] = {}

    # -- state ---------------------------------------------------------------------

    def apply_profile(self, record: Record, now: dt.datetime, out: list[Output]) -> None:
        decoded = decode_profile(record.key, record.value)
        account = _account(record.key)
        if isinstance(decoded, Rejected):
            self._dead_letter(record, decoded, now, out)
            if account is not None:
                self.profiles.pop(account, None)  # fail closed: account unknown
                self._retract_all(account, record, RetractCause.ACCOUNT_CHANGED, now, out)
            return
        assert account is not None
        if decoded is None:
            self.profiles.pop(account, None)
            self._retract_all(account, record, RetractCause.ACCOUNT_DELETED, now, out)
        else:
            self.profiles[account] = decoded
            self._reevaluate(account, record, RetractCause.ACCOUNT_CHANGED, now, out)

    def apply_objection(self, record: Record, now: dt.datetime, out: list[Output]) -> None:
        decoded = decode_objection(record.key, record.value)
        account = _account(record.key)
        if isinstance(decoded, Rejected):
            self._dead_letter(record, decoded, now, out)
            if account is not None:  # fail closed: an unreadable objection counts as one
                self.objections[account] = Objection(account, ObjectionStatus.OBJECTED, now, "filter", "")
                self._retract_all(account, record, RetractCause.OBJECTION, now, out)
            return
        assert account is not None
        if decoded is None:
            self.objections.pop(account, None)
        else:
            self.objections[account] = decoded
        self._reevaluate(account, record, RetractCause.OBJECTION, now, out)

    def _reevaluate(
        self, account: str, record: Record, cause: RetractCause, now: dt.datetime, out: list[Output]
    ) -> None:
        mine = self.published.get(account)
        if not mine:
            return
        profile = self.profiles.get(account)
        objection = self.objections.get(account)
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

    def _retract_all(
        self, account: str, record: Record, cause: RetractCause, now: dt.datetime, out: list[Output]
    ) -> None:
        for content_id in list(self.published.get(account, ())):
            self._retract(account, content_id, _state_event_id(record), _broker_time(record), cause, now, out)

    # -- content -------------------------------------------------------------------

    def decide_content(self, record: Record, now: dt.datetime, out: list[Output]) -> None:
        event = decode_content(record.key, record.value)
        if isinstance(event, Rejected):
            self._dead_letter(record, event, now, out)
            return
        author, content_id = event.author_id, event.content_id
        mine = self.published.get(author)
        if event.op is Op.DELETE:
            if mine is not None and content_id in mine:
                self._retract(
                    author, content_id, event.event_id, event.event_time, RetractCause.CONTENT_DELETED, now, out
                )
            else:
                out.append(
                    (
                        DECISIONS,
                        content_id.encode(),
                        retract_value(
                            content_id=content_id,
                            event_id=event.event_id,
                            author_id=author,
                            cause=RetractCause.CONTENT_DELETED,
                            policy_version=self.policy.version,
                            decided_at=now,
                            event_time=event.event_time,
                        ),
                    )
                )
            return
        decision = decide(event, self.profiles.get(author), self.objections.get(author), self.policy, now)
        key = content_id.encode()
        out.append((DECISIONS, key, decide_value(event, decision, decided_at=now)))
        if decision.eligible:
            assert event.content_type is not None and event.created_at is not None
            if mine is None:
                mine = self.published[author] = {}
            mine[content_id] = _Published(event.event_id, event.content_type, event.created_at)
            out.append((FEED, key, feed_value(event, decision, key=self.key, decided_at=now)))
        elif mine is not None and content_id in mine:
            cause = RETRACT_CAUSE_OF_REASON[decision.reason]
            self._retract(author, content_id, event.event_id, event.event_time, cause, now, out)

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
        out.append((DLQ, record.key, value))


def _account(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _state_event_id(record: Record) -> str:
    return f"{record.topic}:{record.partition}:{record.offset}"


def _broker_time(record: Record) -> dt.datetime:
    return dt.datetime.fromtimestamp(record.timestamp / 1000, tz=dt.UTC)
