"""Deciding one item: publish, hold, retract or release it. The step every pass of the engine ends in.

Owns what happens to an item once an event of it is to be decided (a new content
event, a held copy falling due or judged again after its author's account changed):
the rule's decision and its audit record, the feed record or tombstone, the
published index entry, the held copy and its deferred changelog record. It reads
the author's account from the batch's overlay; it never looks at the order of an
item's events (`order`) or at state records (`accounts`).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from stream.core.batch import BatchResult, InputRecord, OutputTopic, Produce, epoch_ms
from stream.core.codec import Rejected, decode_content, encode_content, encode_deferred, encode_index
from stream.core.models import ContentEvent, Objection, ObjectionStatus, Op, Profile, Reason, RetractCause
from stream.core.overlay import Overlay
from stream.core.policy import Decision, Policy, decide, decide_account, refuse_content
from stream.core.records import (
    RETRACT_CAUSE_OF_REASON,
    dead_letter_key,
    dead_letter_value,
    decide_value,
    feed_value,
    key_id_headers,
    retract_value,
    retraction_value,
)
from stream.core.shadow import ShadowDecider
from stream.core.state import deferred_key, objection_key, profile_key, unpack_objection, unpack_profile

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# What `objection` hands the rule: the stored status, nothing of who or when.
_STORED_OBJECTION: Final = {status: Objection("", status, _EPOCH, "filter:state", "") for status in ObjectionStatus}


class ItemDecider:
    """Applies the rule to one item and writes what follows from the decision; holds only configuration."""

    def __init__(self, policy: Policy, pseudonym_key: bytes, shadow: ShadowDecider | None = None) -> None:
        self.policy = policy
        self._key = pseudonym_key
        # Shadow mode (`shadow`): a second policy beside this one, which only records differences.
        self._shadow = shadow

    # -- the author's account, as the batch will leave it ------------------------------

    def profile(self, ov: Overlay, account_id: str) -> Profile | None:
        """The account's profile as the rule reads it, or None (no profile: unknown or deleted)."""
        raw = ov.get(profile_key(account_id))
        return unpack_profile(account_id, raw) if raw is not None else None

    def objection(self, ov: Overlay, account_id: str) -> Objection | None:
        """The account's objection as the rule reads it, or None (none on record)."""
        raw = ov.get(objection_key(account_id))
        if raw is None:
            return None
        # The rule reads only the status; the store keeps nothing else of an objection.
        return _STORED_OBJECTION[unpack_objection(raw)]

    # -- deciding -----------------------------------------------------------------------

    def decide_event(
        self, ov: Overlay, event: ContentEvent, item: bytes, now: dt.datetime, result: BatchResult
    ) -> None:
        """Decide an event that applies to its item: publish, hold, retract, or only audit it."""
        result.event_times.append(event.event_time.timestamp())
        if event.op is Op.DELETE:
            self._delete(ov, event, now, result)
            return
        decision = refuse_content(event, self.policy)
        if decision is None:  # only now is the author's account worth two lookups
            profile = self.profile(ov, event.author_id)
            objection = self.objection(ov, event.author_id) if profile is not None else None
            decision = decide_account(event, profile, objection, self.policy, now)
        key = event.content_id.encode()
        result.decisions[decision.reason] += 1
        result.produce.append(
            Produce(OutputTopic.DECISIONS, key, decide_value(event, decision, decided_at=now), ov.partition)
        )
        if self._shadow is not None:  # without a shadow policy, this is all it costs
            self._compare_shadow(self._shadow, ov, event, decision, now, result)
        if decision.eligible:
            ov.set_published(event.author_id, event.content_id, encode_index(event))
            value = feed_value(event, decision, key=self._key, decided_at=now)
            result.produce.append(Produce(OutputTopic.FEED, key, value, ov.partition, key_id_headers(self._key)))
            return
        if ov.is_published(event.author_id, event.content_id):
            cause = RETRACT_CAUSE_OF_REASON[decision.reason]
            self.retract(ov, event.author_id, event.content_id, event.event_id, event.event_time, cause, now, result)
        if decision.reason is Reason.NOTICE_PERIOD_RUNNING and decision.retry_at is not None:
            self._hold(ov, event, item, epoch_ms(decision.retry_at), result)

    def _compare_shadow(
        self,
        shadow: ShadowDecider,
        ov: Overlay,
        event: ContentEvent,
        decision: Decision,
        now: dt.datetime,
        result: BatchResult,
    ) -> None:
        """The same upsert under the shadow policy, with the same account and moment; it writes nothing here."""
        profile = self.profile(ov, event.author_id)
        objection = self.objection(ov, event.author_id) if profile is not None else None
        shadow.compare(event, decision, profile, objection, now, ov.partition, result)

    def _delete(self, ov: Overlay, event: ContentEvent, now: dt.datetime, result: BatchResult) -> None:
        """A delete: the item leaves the feed; if it was never on it, the audit log still records the input."""
        cause = RetractCause.CONTENT_DELETED
        if ov.is_published(event.author_id, event.content_id):
            self.retract(ov, event.author_id, event.content_id, event.event_id, event.event_time, cause, now, result)
            return
        value = retract_value(
            content_id=event.content_id,
            event_id=event.event_id,
            author_id=event.author_id,
            cause=cause,
            policy_version=self.policy.version,
            decided_at=now,
            event_time=event.event_time,
        )
        result.produce.append(Produce(OutputTopic.DECISIONS, event.content_id.encode(), value, ov.partition))

    def _hold(self, ov: Overlay, event: ContentEvent, item: bytes, due_ms: int, result: BatchResult) -> None:
        """Hold the item until its author's notice period ends, in the store and on the deferred changelog."""
        held = encode_content(event)  # the contract's fields only, never the record as it came
        ov.set_held(event.author_id, event.content_id, item, due_ms, held)
        result.produce.append(Produce(OutputTopic.DEFERRED, item, encode_deferred(due_ms, held), ov.partition))

    def retract(
        self,
        ov: Overlay,
        author_id: str,
        content_id: str,
        event_id: str,
        event_time: dt.datetime,
        cause: RetractCause,
        now: dt.datetime,
        result: BatchResult,
    ) -> None:
        """Take a published item off the feed (a tombstone) and out of the index, with its audit record.

        The trainers' retraction record goes in the same step as the tombstone (`produce`),
        so it is acknowledged before the item leaves the index and before the batch's
        offsets are committed: a crash in between replays both, never only one.
        """
        ov.set_published(author_id, content_id, None)
        key = content_id.encode()
        result.retractions[cause] += 1
        result.produce.append(Produce(OutputTopic.FEED, key, None, ov.partition))
        trainers = retraction_value(
            content_id=content_id, cause=cause, policy_version=self.policy.version, retracted_at=now
        )
        result.produce.append(Produce(OutputTopic.RETRACTIONS, key, trainers, ov.partition))
        value = retract_value(
            content_id=content_id,
            event_id=event_id,
            author_id=author_id,
            cause=cause,
            policy_version=self.policy.version,
            decided_at=now,
            event_time=event_time,
        )
        result.produce.append(Produce(OutputTopic.DECISIONS, key, value, ov.partition))

    # -- held items ---------------------------------------------------------------------

    def release(self, ov: Overlay, author_id: str, content_id: str, item: bytes, result: BatchResult) -> bool:
        """Remove the item's held copy from the store and its changelog; False if none was held."""
        if ov.due_of(author_id, content_id, item) is None:
            return False
        ov.set_held(author_id, content_id, item, None, None)
        # And on the changelog, or a worker restoring from it would bring the item back.
        result.produce.append(Produce(OutputTopic.DEFERRED, item, None, ov.partition))
        return True

    def rejudge_held(
        self,
        ov: Overlay,
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
            profile = self.profile(ov, author_id)
            objection = self.objection(ov, author_id) if profile is not None else None
            decision = decide(event, profile, objection, self.policy, now)
            if decision.retry_at is not None and epoch_ms(decision.retry_at) == due_ms:
                return  # still held, and due when it was
        self.release(ov, author_id, content_id, item, result)
        if release_only or not isinstance(event, ContentEvent) or raw is None:
            result.released += 1
            return
        self.decide_event(ov, event, item, now, result)
        if ov.due_of(author_id, content_id, item) is None:
            result.released += 1


def dead_letter(record: InputRecord, rejected: Rejected, now: dt.datetime, result: BatchResult) -> None:
    """Send a record the engine cannot use to the dead-letter topic, with the reason."""
    result.dead_letters[rejected.reason] += 1
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
    result.produce.append(Produce(OutputTopic.DLQ, dead_letter_key(record.key), value, record.partition))
