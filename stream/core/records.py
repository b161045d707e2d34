"""The records this filter writes: feed items, audit decisions, dead letters. Pure.

Datetimes go to `codec.dumps` as they are: orjson writes them as RFC 3339 UTC with
`Z` in C, as `codec.format_timestamp` would, at a fraction of the cost.

Data minimisation lives here: a feed record carries only the contract's fields,
with the author as an HMAC pseudonym, never the raw account id, birth date or
country (only the jurisdiction that allowed the item).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
from typing import Final

from stream.core.codec import dumps
from stream.core.models import Action, ContentEvent, DeadLetterReason, Reason, RetractCause, SkipReason
from stream.core.policy import Decision


@functools.lru_cache(maxsize=65536)
def pseudonym(key: bytes, account_id: str) -> str:
    """HMAC-SHA256 of the account id under the configured key, hex.

    Cached per author (an author's posts come in runs), and computed from the key's
    two padded hash states, copied: with OpenSSL 3 each `hmac.new`/`hmac.digest`
    sets up a new MAC, about three times the work (tests check it equals `hmac`).
    """
    inner, outer = _hmac_states(key)
    h = inner.copy()
    h.update(account_id.encode("utf-8"))
    o = outer.copy()
    o.update(h.digest())
    return o.hexdigest()


# The Kafka header on every feed record naming the key its `author_pseudonym` was made
# with (`pseudonym_key_id`). A header, not a field: the contract fixes the feed value's
# fields, and a header changes nothing a trainer parses. It lets a key be rotated: the
# verifier checks each record against the key it names (README, "Rotating the pseudonym key").
PSEUDONYM_KEY_ID_HEADER: Final = "pseudonym_key_id"
_KEY_ID_LABEL: Final = b"eligibility-filter pseudonym key id"


@functools.lru_cache(maxsize=4)
def pseudonym_key_id(key: bytes) -> str:
    """The key's id: 16 hex digits of HMAC-SHA256(key, a fixed label).

    Derived from the key, so it cannot be mislabelled or forgotten at a rotation, and
    tells nothing about the key (an HMAC under it, like every pseudonym).
    """
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def key_id_headers(key: bytes) -> list[tuple[str, bytes]]:
    """The headers of a feed record made with `key`: its key id. One list per key, shared: never change it."""
    return [(PSEUDONYM_KEY_ID_HEADER, pseudonym_key_id(key).encode("ascii"))]


@functools.lru_cache(maxsize=4)
def _hmac_states(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 already fed with key XOR ipad and key XOR opad (RFC 2104)."""
    block = hashlib.sha256().block_size
    padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\x00")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in padded)),
        hashlib.sha256(bytes(b ^ 0x5C for b in padded)),
    )


# The layout of a `training.feed` value, carried in every record as `schema_version`
# (schemas/training.feed.schema.json): raised when a field is added, removed or changes
# meaning, so a trainer can tell which layout a record (or an exported dataset) has.
FEED_SCHEMA_VERSION: Final = 1


def feed_value(event: ContentEvent, decision: Decision, *, key: bytes, decided_at: dt.datetime) -> bytes:
    """The `training.feed` value of an eligible upsert."""
    assert event.content_type is not None and event.platform is not None and event.created_at is not None
    return dumps(
        {
            "content_id": event.content_id,
            "content_type": event.content_type,
            "platform": event.platform,
            "author_pseudonym": pseudonym(key, event.author_id),
            "created_at": event.created_at,
            "text": event.text,
            "media_uri": event.media_uri,
            "language": event.language,
            "jurisdiction": decision.jurisdiction,
            "policy_version": decision.policy_version,
            "decided_at": decided_at,
            "source_event_id": event.event_id,
            "schema_version": FEED_SCHEMA_VERSION,
        }
    )


def decide_value(event: ContentEvent, decision: Decision, *, decided_at: dt.datetime) -> bytes:
    """The `eligibility.decisions` value recording the rule's outcome for an upsert."""
    return dumps(
        {
            "content_id": event.content_id,
            "event_id": event.event_id,
            "author_id": event.author_id,
            "action": Action.DECIDE,
            "eligible": decision.eligible,
            "reason": decision.reason,
            "cause": None,
            "policy_version": decision.policy_version,
            "decided_at": decided_at,
            "event_time": event.event_time,
        }
    )


def skip_value(event: ContentEvent, reason: SkipReason, *, policy_version: str, decided_at: dt.datetime) -> bytes:
    """The `eligibility.decisions` value recording a content event that changed nothing (order per item)."""
    return dumps(
        {
            "content_id": event.content_id,
            "event_id": event.event_id,
            "author_id": event.author_id,
            "action": Action.SKIP,
            "eligible": None,
            "reason": reason,
            "cause": None,
            "policy_version": policy_version,
            "decided_at": decided_at,
            "event_time": event.event_time,
        }
    )


def retract_value(
    *,
    content_id: str,
    event_id: str,
    author_id: str,
    cause: RetractCause,
    policy_version: str,
    decided_at: dt.datetime,
    event_time: dt.datetime,
) -> bytes:
    """The `eligibility.decisions` value recording that a published item was retracted.

    `event_id` is the input that caused it: a content event, or the id the filter
    gives a profile/objection record (`<topic>:<partition>:<offset>`).
    """
    return dumps(
        {
            "content_id": content_id,
            "event_id": event_id,
            "author_id": author_id,
            "action": Action.RETRACT,
            "eligible": None,
            "reason": None,
            "cause": cause,
            "policy_version": policy_version,
            "decided_at": decided_at,
            "event_time": event_time,
        }
    )


def retraction_value(*, content_id: str, cause: RetractCause, policy_version: str, retracted_at: dt.datetime) -> bytes:
    """The `training.retractions` value: what a trainer needs to unlearn an item, and nothing else.

    No account id, no event id, no text: trainers read this topic for years after the
    feed's tombstone is gone, and it must tell them only which item left and why.
    """
    return dumps(
        {
            "content_id": content_id,
            "retracted_at": retracted_at,
            "cause": cause,
            "policy_version": policy_version,
        }
    )


def shadow_value(event: ContentEvent, in_force: Decision, shadow: Decision, *, decided_at: dt.datetime) -> bytes:
    """The `eligibility.shadow` value: an upsert the shadow policy decides differently from the policy in force.

    No account id, no text: the content id, the event (to tell a replayed duplicate),
    both reasons with their policy versions, and when. The audit log has the rest.
    """
    return dumps(
        {
            "content_id": event.content_id,
            "event_id": event.event_id,
            "in_force_reason": in_force.reason,
            "in_force_policy_version": in_force.policy_version,
            "shadow_reason": shadow.reason,
            "shadow_policy_version": shadow.policy_version,
            "decided_at": decided_at,
        }
    )


# A dead letter carries its input's bytes in base64 (4/3 of their size), so a letter
# of an input near the broker's default record limit (1 MiB, also the producer's
# max_request_size) would exceed that limit, and a batch the broker refuses is
# replayed for ever. Past this size the bytes are left out instead (the letter still
# names topic, partition and offset, where the input stays for its topic's
# retention, with its size and SHA-256). Half the limit keeps a letter clear of it
# with compression off and with a batch's overhead, and within one producer batch.
DEAD_LETTER_MAX_BYTES: Final = 480 << 10
# Room for the letter's other fields (reason, detail, where, when).
_DEAD_LETTER_OVERHEAD: Final = 4 << 10


# A dead letter's Kafka key is its input's key, as received, unless it is longer than
# any id could be: a key of megabytes would make the letter one the broker refuses.
# Such a key is replaced by its SHA-256 (hex); the letter still carries the key itself
# (or, if too large, its size and SHA-256).
DEAD_LETTER_KEY_MAX_BYTES: Final = 4096


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key of the dead letter of a record keyed `key`."""
    if key is None or len(key) <= DEAD_LETTER_KEY_MAX_BYTES:
        return key
    return hashlib.sha256(key).hexdigest().encode()


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


def _b64_size(data: bytes | None) -> int:
    return 0 if data is None else (len(data) + 2) // 3 * 4


def dead_letter_value(
    *,
    reason: DeadLetterReason,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    received_at: dt.datetime,
    key: bytes | None,
    value: bytes | None,
) -> bytes:
    """The `content.events.dlq` value: why, where from, and the original bytes to replay.

    Bytes that would make the letter larger than `DEAD_LETTER_MAX_BYTES` are left
    out (a key too large alone, and a value too large beside what is kept); `omitted` names them and `<field>_bytes` and
    `<field>_sha256` describe them.
    """
    letter: dict[str, object] = {
        "reason": reason,
        "detail": detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "received_at": received_at,
        "key": None,
        "value": None,
    }
    room = DEAD_LETTER_MAX_BYTES - _DEAD_LETTER_OVERHEAD
    omitted: list[str] = []
    # The key is kept if it fits alone (it is small for any real record), the value if it fits beside it.
    keep_key = _b64_size(key) <= room
    keep_value = _b64_size(value) <= room - (_b64_size(key) if keep_key else 0)
    for name, data, keep in (("key", key, keep_key), ("value", value, keep_value)):
        if keep:
            letter[name] = _b64(data)
        elif data is not None:
            omitted.append(name)
            letter[f"{name}_bytes"] = len(data)
            letter[f"{name}_sha256"] = hashlib.sha256(data).hexdigest()
    if omitted:
        letter["omitted"] = omitted
    return dumps(letter)


# Which retraction cause a new refusal of a published item stands for.
RETRACT_CAUSE_OF_REASON: Final[dict[Reason, RetractCause]] = {
    Reason.PRIVATE_MESSAGE: RetractCause.VISIBILITY_CHANGED,
    Reason.NOT_PUBLIC: RetractCause.VISIBILITY_CHANGED,
    Reason.CONTENT_TYPE_NOT_ENABLED: RetractCause.VISIBILITY_CHANGED,
    Reason.ACCOUNT_UNKNOWN: RetractCause.ACCOUNT_DELETED,
    Reason.OBJECTED: RetractCause.OBJECTION,
    Reason.COUNTRY_UNKNOWN: RetractCause.ACCOUNT_CHANGED,
    Reason.JURISDICTION_NOT_ENABLED: RetractCause.ACCOUNT_CHANGED,
    Reason.NOT_NOTIFIED: RetractCause.ACCOUNT_CHANGED,
    Reason.NOTICE_PERIOD_RUNNING: RetractCause.ACCOUNT_CHANGED,
    Reason.AGE_UNKNOWN: RetractCause.ACCOUNT_CHANGED,
    Reason.MINOR: RetractCause.ACCOUNT_CHANGED,
    Reason.CREATED_WHILE_MINOR: RetractCause.ACCOUNT_CHANGED,
}
