"""Account changes: apply profile and objection records, then judge the author's items again.

Owns the `p:` and `o:` entries. After a change of an account, each of its published
items the rule now refuses is retracted and each of its held items is decided again
(still held, released, or published). An unreadable account update fails closed:
the account is then as if it had no profile, or as objecting; never as it was
before, since the update may have been the one that refuses it.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from stream.core.batch import BatchResult, InputRecord, broker_time, state_event_id
from stream.core.codec import Rejected, account_of_key, decode_index, decode_objection, decode_profile
from stream.core.items import ItemDecider, dead_letter
from stream.core.models import DeadLetterReason, Objection, ObjectionStatus, Profile, RetractCause
from stream.core.overlay import Overlay
from stream.core.policy import decide
from stream.core.state import StateKind, item_id, objection_key, pack_objection, pack_profile, profile_key

# An unreadable objection update fails closed: the account is treated as objecting.
_FAIL_CLOSED_OBJECTION: Final = pack_objection(ObjectionStatus.OBJECTED)


class AccountChanges:
    """Applies state records (profiles, objections) and judges the author's items again after each."""

    def __init__(self, decider: ItemDecider) -> None:
        self._decider = decider

    def apply(
        self,
        ov: Overlay,
        kind: StateKind,
        record: InputRecord,
        now: dt.datetime,
        result: BatchResult,
        *,
        recovering: bool,
        failed_with: str | None = None,
    ) -> None:
        """Apply one state record; `failed_with`: its handling raised that before, so it fails closed now.

        `recovering`: history is replayed into a restored store, so the author's items
        are not judged by each intermediate state (`Engine.process`).
        """
        if failed_with is not None:
            rejected = Rejected(DeadLetterReason.PROCESSING_ERROR, f"handling it raised {failed_with}")
            dead_letter(record, rejected, now, result)
            self._fail_closed(ov, kind, record, now, result, recovering)
            return
        decoded: Profile | Objection | Rejected | None
        if kind is StateKind.PROFILES:
            decoded = decode_profile(record.key, record.value)
        else:
            decoded = decode_objection(record.key, record.value)
        if isinstance(decoded, Rejected):
            dead_letter(record, decoded, now, result)
            self._fail_closed(ov, kind, record, now, result, recovering)
            return
        account_id = account_of_key(record.key)
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

    def _fail_closed(
        self,
        ov: Overlay,
        kind: StateKind,
        record: InputRecord,
        now: dt.datetime,
        result: BatchResult,
        recovering: bool,
    ) -> None:
        """An unreadable account update leaves the account as if it had no profile, or as objecting."""
        account_id = account_of_key(record.key)
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
        ov: Overlay,
        account_id: str,
        record: InputRecord,
        cause: RetractCause,
        now: dt.datetime,
        result: BatchResult,
    ) -> None:
        """After a change of the account: retract what the rule now refuses, decide held items again."""
        decider = self._decider
        profile = decider.profile(ov, account_id)
        objection = decider.objection(ov, account_id)
        for content_id, raw in list(ov.published_items(account_id)):
            decision = decide(decode_index(account_id, content_id, raw), profile, objection, decider.policy, now)
            if not decision.eligible:
                event_id, event_time = state_event_id(record), broker_time(record)
                decider.retract(ov, account_id, content_id, event_id, event_time, cause, now, result)
        for content_id, due_ms in list(ov.held_items(account_id)):
            decider.rejudge_held(ov, account_id, content_id, item_id(account_id, content_id), due_ms, now, result)
