"""Records of each topic as typed values; enum values ARE the contract strings.

Owns the vocabulary of the contract (`shared/spec/contract.md`). Knows nothing of
bytes (see `codec.py`), of Kafka or of the rule (see `policy.py`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, final


class Op(StrEnum):
    """What a content event does to its item: `op`."""

    UPSERT = "upsert"
    DELETE = "delete"


class ContentType(StrEnum):
    """The kind of content an item is: `content_type`."""

    POST = "post"
    COMMENT = "comment"
    PHOTO = "photo"
    CAPTION = "caption"
    MESSAGE = "message"


class Platform(StrEnum):
    """Where the item was posted: `platform`."""

    FACEBOOK = "facebook"
    INSTAGRAM = "instagram"


class Visibility(StrEnum):
    """Who may see the item upstream: `visibility`; only `public` can be eligible."""

    PUBLIC = "public"
    FRIENDS = "friends"
    PRIVATE = "private"


class ObjectionStatus(StrEnum):
    """An account's objection to training: `status` on `accounts.objections`."""

    OBJECTED = "objected"
    WITHDRAWN = "withdrawn"


class Reason(StrEnum):
    """Why an upsert was (not) eligible: the first rule that applies, in contract order."""

    PRIVATE_MESSAGE = "private_message"
    NOT_PUBLIC = "not_public"
    # Our addition, documented in the README: fires only if the policy file disables
    # one of the public content types; the packaged policy enables all four.
    CONTENT_TYPE_NOT_ENABLED = "content_type_not_enabled"
    ACCOUNT_UNKNOWN = "account_unknown"
    OBJECTED = "objected"
    COUNTRY_UNKNOWN = "country_unknown"
    JURISDICTION_NOT_ENABLED = "jurisdiction_not_enabled"
    NOT_NOTIFIED = "not_notified"
    NOTICE_PERIOD_RUNNING = "notice_period_running"
    AGE_UNKNOWN = "age_unknown"
    MINOR = "minor"
    CREATED_WHILE_MINOR = "created_while_minor"
    ELIGIBLE = "eligible"


class Action(StrEnum):
    """What an audit record on the decisions topic records: `action`."""

    DECIDE = "decide"
    RETRACT = "retract"
    SKIP = "skip"


class SkipReason(StrEnum):
    """Why a content event changed nothing (contract: "Order per item"); the `reason` of a `skip`."""

    # Older than the item's latest applied event, or that event itself again.
    SUPERSEDED = "superseded"
    # The item was deleted: a delete is final.
    DELETED = "deleted"


class RetractCause(StrEnum):
    """Why a published item left the feed: `cause` of a retract record and the metric label."""

    OBJECTION = "objection"
    ACCOUNT_DELETED = "account_deleted"
    ACCOUNT_CHANGED = "account_changed"
    CONTENT_DELETED = "content_deleted"
    VISIBILITY_CHANGED = "visibility_changed"
    # An edit or delete of the item that the filter could not read (a dead letter).
    UNREADABLE_UPDATE = "unreadable_update"


class DeadLetterReason(StrEnum):
    """Why an input record could not be processed; the `reason` of a dead letter."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    SCHEMA_VIOLATION = "schema_violation"
    KEY_MISMATCH = "key_mismatch"
    # Schema-valid, but a date the rule cannot compute with (see `codec.MAX_YEAR`).
    OUT_OF_RANGE = "out_of_range"
    # Anything unexpected raised while this one record was handled: it is isolated
    # (dead-lettered, its item or account failing closed) so the partition moves on.
    PROCESSING_ERROR = "processing_error"


# The records built per event (`ContentEvent`, `Profile`; `policy.Decision`,
# `batch.Produce`, `state.ItemVersion`) are immutable through `Final` attributes and
# an `__init__` of their own, not `frozen=True`: mypyc compiles such a class to a
# native one whose construction is a C struct fill (~40 ns), where a frozen
# dataclass's generated `__init__` stays Python calling `object.__setattr__` per
# field (~600 ns), several times per event (bench/notes.md, "Native value classes").
# The dataclass decorator still gives them `==` and `repr`; the compiled attributes
# are read-only at run time, and mypy refuses an assignment in either build.


@final
@dataclass(init=False)
class ContentEvent:
    """A `content.events` value. For `op=delete` only the identifying fields are set."""

    event_id: Final[str]
    op: Final[Op]
    content_id: Final[str]
    author_id: Final[str]
    event_time: Final[dt.datetime]
    content_type: Final[ContentType | None]
    platform: Final[Platform | None]
    visibility: Final[Visibility | None]
    created_at: Final[dt.datetime | None]
    text: Final[str | None]
    media_uri: Final[str | None]
    language: Final[str | None]

    def __init__(
        self,
        event_id: str,
        op: Op,
        content_id: str,
        author_id: str,
        event_time: dt.datetime,
        content_type: ContentType | None = None,
        platform: Platform | None = None,
        visibility: Visibility | None = None,
        created_at: dt.datetime | None = None,
        text: str | None = None,
        media_uri: str | None = None,
        language: str | None = None,
    ) -> None:
        self.event_id = event_id
        self.op = op
        self.content_id = content_id
        self.author_id = author_id
        self.event_time = event_time
        self.content_type = content_type
        self.platform = platform
        self.visibility = visibility
        self.created_at = created_at
        self.text = text
        self.media_uri = media_uri
        self.language = language


@final
@dataclass(init=False)
class Profile:
    """An `accounts.profiles` value; a tombstone (account deleted) is no Profile at all.

    `updated_at` is None in a profile read back from the partition store
    (`state.unpack_profile`): the rule never reads it, and building that datetime for
    every content event would be about a quarter of reading the profile back
    (bench/notes.md, "Instructions per event"). A decoded record always has it.
    """

    account_id: Final[str]
    birth_date: Final[dt.date | None]
    country: Final[str | None]
    notified_at: Final[dt.datetime | None]
    updated_at: Final[dt.datetime | None]

    def __init__(
        self,
        account_id: str,
        birth_date: dt.date | None,
        country: str | None,
        notified_at: dt.datetime | None,
        updated_at: dt.datetime | None,
    ) -> None:
        self.account_id = account_id
        self.birth_date = birth_date
        self.country = country
        self.notified_at = notified_at
        self.updated_at = updated_at


@dataclass(frozen=True, slots=True)
class Objection:
    """An `accounts.objections` value; a tombstone means the same as `withdrawn`."""

    account_id: str
    status: ObjectionStatus
    at: dt.datetime
    source: str
    request_id: str
