"""Per-partition state as the engine sees it: the key scheme, the packed values and the store's interface.

No I/O: the stores themselves (RocksDB, and a dict for tests) are in
`stream.runtime.store`. One store per input partition number: the inputs are
co-partitioned, so partition p of the content topic needs exactly the profiles and
objections of partition p. The worker rebuilds a store from the compacted topics
when it has none, and resumes from the stored offsets when it has one.

Key scheme (bytes, so RocksDB orders them and an author's items share a prefix):
  p:<account>                 what the rule reads of a profile, packed (`pack_profile`)
  o:<account>                 the objection's status, packed (`pack_objection`)
  i:<item>                    a published item: what a re-evaluation needs
  d:<due ms, 8 bytes><item>   a deferred item, ordered by when it is due: its event's contract fields
  D:<item>                    the due time of a deferred item (to find and cancel it)
  v:<item>                    the item's latest applied event and when to forget it (`pack_version`)
  \\0offset:<kind>             next offset of each topic the store is restored from
  \\0count:<kind>              number of entries of each kind (for the state gauge)
  \\0format                     the layout version of the values above (`STORE_FORMAT`)
where <item> is the author's UTF-8 length in 2 bytes, the author, then the content
id: length-prefixed, so no id (NUL included) can forge another author's prefix.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol, final

from stream.core.models import ObjectionStatus, Profile


class StateKind(StrEnum):
    """The compacted topics a partition store is restored from."""

    PROFILES = "profiles"
    OBJECTIONS = "objections"
    PUBLISHED = "published"
    DEFERRED = "deferred"
    ITEMS = "items"


class EntryKind(StrEnum):
    """What the store counts, for the `eligibility_state_entries` gauge."""

    PROFILES = "profiles"
    OBJECTIONS = "objections"
    PUBLISHED = "published"
    DEFERRED = "deferred"
    ITEMS = "items"


def profile_key(account_id: str) -> bytes:
    """The key of an account's packed profile (`p:`)."""
    return b"p:" + account_id.encode()


def objection_key(account_id: str) -> bytes:
    """The key of an account's objection status (`o:`)."""
    return b"o:" + account_id.encode()


def item_id(author_id: str, content_id: str = "") -> bytes:
    """An item's id: the author's length-prefixed UTF-8 then the content id (no content id: the author's prefix)."""
    author = author_id.encode()
    return len(author).to_bytes(2, "big") + author + content_id.encode()


def split_item_id(item: bytes) -> tuple[str, str]:
    """`(author, content id)` of an item id."""
    n = int.from_bytes(item[:2], "big")
    return item[2 : 2 + n].decode(), item[2 + n :].decode()


def published_prefix(author_id: str) -> bytes:
    """The prefix of every published index key of one author."""
    return PUBLISHED_PREFIX + item_id(author_id)


def published_key(author_id: str, content_id: str) -> bytes:
    """The published index key of an item (`i:`)."""
    return PUBLISHED_PREFIX + item_id(author_id, content_id)


DEFERRED_PREFIX: Final = b"d:"
PUBLISHED_PREFIX: Final = b"i:"
# Set while a recovery replay's published items still await judgement by the final
# state; a worker that finds it set (it crashed meanwhile) judges them all again.
REEVALUATE_KEY: Final = b"\x00reevaluate"


def deferred_key(due_ms: int, item: bytes) -> bytes:
    """The key of a held item's copy (`d:`), ordered by when it is due."""
    return DEFERRED_PREFIX + due_ms.to_bytes(8, "big") + item


DEFERRED_DUE_PREFIX: Final = b"D:"


def deferred_due_key(item: bytes) -> bytes:
    """The key of a held item's due time (`D:`), to find and cancel it."""
    return DEFERRED_DUE_PREFIX + item


def split_deferred_key(key: bytes) -> tuple[int, bytes]:
    """`(due ms, item id)` of a `d:` key."""
    return int.from_bytes(key[2:10], "big"), key[10:]


def deferred_due_prefix(author_id: str) -> bytes:
    """The prefix of every `D:` key of one author's held items."""
    return DEFERRED_DUE_PREFIX + item_id(author_id)


VERSION_PREFIX: Final = b"v:"


def version_key(item: bytes) -> bytes:
    """The key of an item's latest applied event (`v:<item>`)."""
    return VERSION_PREFIX + item


def published_item_key(item: bytes) -> bytes:
    """The published index key of an item already made into an item id (`i:<item>`)."""
    return PUBLISHED_PREFIX + item


def item_of_key(prefix: bytes, key: bytes) -> bytes:
    """The item id of a key under one of the per-item prefixes (`i:`, `D:`, `v:`)."""
    return key[len(prefix) :]


def pack_due(due_ms: int) -> bytes:
    """The stored due time of a held item (the value of its `D:` key): epoch ms, 8 bytes big-endian."""
    return due_ms.to_bytes(8, "big")


def unpack_due(raw: bytes) -> int:
    """A held item's due time (epoch ms) from the value of its `D:` key."""
    return int.from_bytes(raw, "big")


def entry_kind(key: bytes) -> EntryKind | None:
    """What the `eligibility_state_entries` gauge counts a key as, or None for a key it does not count."""
    return _KIND_OF_PREFIX.get(key[:2])


_KIND_OF_PREFIX: Final = {
    b"p:": EntryKind.PROFILES,
    b"o:": EntryKind.OBJECTIONS,
    PUBLISHED_PREFIX: EntryKind.PUBLISHED,
    DEFERRED_DUE_PREFIX: EntryKind.DEFERRED,
    VERSION_PREFIX: EntryKind.ITEMS,
}


@final
@dataclass(init=False)
class ItemVersion:
    """The latest event applied to an item (contract: "Order per item"), and when to forget it.

    `partition` and `offset` place that event in `content.events`: a replayed record
    the worker cannot read, found before it in the log, was handled before it and must
    not undo it (see `order.ItemOrder.applied_after`). Read once per event: immutable
    like the models built per event (`models.ContentEvent` says why not frozen).
    """

    event_time_us: Final[int]
    event_id: Final[str]
    deleted: Final[bool]
    expires_ms: Final[int]
    partition: Final[int]
    offset: Final[int]

    def __init__(
        self, event_time_us: int, event_id: str, deleted: bool, expires_ms: int, partition: int, offset: int
    ) -> None:
        self.event_time_us = event_time_us
        self.event_id = event_id
        self.deleted = deleted
        self.expires_ms = expires_ms
        self.partition = partition
        self.offset = offset


# event_time µs since the epoch, expires ms, deleted, content partition and offset; then the event id
_VERSION: Final = struct.Struct(">qq?iq")


def pack_version(version: ItemVersion) -> bytes:
    """An item's latest applied event as stored under its `v:` key (and sent on the items changelog)."""
    v = version
    return _VERSION.pack(v.event_time_us, v.expires_ms, v.deleted, v.partition, v.offset) + v.event_id.encode()


def unpack_version(raw: bytes) -> ItemVersion:
    """The latest applied event a `v:` value holds."""
    event_time_us, expires_ms, deleted, partition, offset = _VERSION.unpack_from(raw)
    return ItemVersion(event_time_us, raw[_VERSION.size :].decode(), deleted, expires_ms, partition, offset)


def micros(moment: dt.datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


OFFSET_KEY: Final = {kind: b"\x00offset:" + kind.value.encode() for kind in StateKind}
COUNT_KEY: Final = {kind: b"\x00count:" + kind.value.encode() for kind in EntryKind}
# Wall-clock time of the last write: a store untouched for longer than the topics'
# tombstone retention may have missed a deletion and must be rebuilt.
TOUCHED_KEY: Final = b"\x00touched_at"

FORMAT_KEY: Final = b"\x00format"
# Bumped whenever a stored value's layout changes: a store of another format is
# rebuilt from the compacted topics rather than misread.
STORE_FORMAT: Final = b"4"

Update = tuple[bytes, bytes | None]

# -- stored values -------------------------------------------------------------------
#
# Profiles and objections are validated once, when they are applied, and stored as
# the few fields the rule reads, packed: reading one back for every content event
# is then a struct unpack, not a JSON parse and a schema check (docs/design.md).

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# birth date ordinal, notified_at µs, updated_at µs, country. updated_at is stored
# (format 4) but not read back: the rule never reads it (`models.Profile`).
_PROFILE: Final = struct.Struct(">iqq2s")
_NO_DATE: Final = 0
_NO_TIME: Final = -(1 << 63)
_NO_COUNTRY: Final = b"\x00\x00"
_OBJECTION_BYTE: Final = {ObjectionStatus.OBJECTED: b"O", ObjectionStatus.WITHDRAWN: b"W"}


def pack_profile(profile: Profile) -> bytes:
    """What the rule reads of a profile, packed for the `p:` key."""
    return _PROFILE.pack(
        profile.birth_date.toordinal() if profile.birth_date is not None else _NO_DATE,
        micros(profile.notified_at) if profile.notified_at is not None else _NO_TIME,
        micros(profile.updated_at) if profile.updated_at is not None else _NO_TIME,
        profile.country.encode("ascii") if profile.country is not None else _NO_COUNTRY,
    )


def unpack_profile(account_id: str, raw: bytes) -> Profile:
    """The profile a `p:` value holds, as the rule reads it (`updated_at` None: see `models.Profile`)."""
    birth, notified, _, country = _PROFILE.unpack(raw)
    return Profile(
        account_id,
        dt.date.fromordinal(birth) if birth != _NO_DATE else None,
        country.decode("ascii") if country != _NO_COUNTRY else None,
        _EPOCH + dt.timedelta(0, 0, notified) if notified != _NO_TIME else None,
        None,
    )


def pack_objection(status: ObjectionStatus) -> bytes:
    """An objection status as one byte for the `o:` key."""
    return _OBJECTION_BYTE[status]


def unpack_objection(raw: bytes) -> ObjectionStatus:
    """The stored status; anything but a withdrawal reads as objected (fail closed)."""
    return ObjectionStatus.WITHDRAWN if raw == b"W" else ObjectionStatus.OBJECTED


class PartitionStore(Protocol):
    """What the engine and the worker need from the state of one partition."""

    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None when absent."""

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of `keys`, in their order (None where absent)."""

    def scan(self, prefix: bytes, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with `prefix` (and sorts after `after`), in key order."""

    def apply(
        self,
        updates: Iterable[Update],
        offsets: Mapping[StateKind, int] | None = None,
        counts: Mapping[EntryKind, int] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        """Write `updates` (None deletes), new next-offsets and count deltas atomically.

        With `wait=False` a write that would have to wait (a RocksDB write stall) is
        refused whole: nothing is written and the result is False.
        """

    def next_offset(self, kind: StateKind) -> int:
        """The offset to resume `kind` from: 0 for a new store."""

    def counts(self) -> dict[EntryKind, int]:
        """The number of entries of each counted kind (for the state gauge)."""

    def touched_at(self) -> float | None:
        """Wall-clock time of the last write (None for a new store): a stale store is rebuilt."""

    def compatible(self) -> bool:
        """False for a store written in another layout (`STORE_FORMAT`): rebuild it."""

    def close(self) -> None:
        """Release the store; it is not used again."""


def deferred_due_ms(key: bytes) -> int:
    """When the held item of a `d:` key is due (epoch ms), without reading its item id."""
    start = len(DEFERRED_PREFIX)
    return int.from_bytes(key[start : start + 8], "big")


def earliest_due_ms(store: PartitionStore) -> int | None:
    """When the first of a store's held items is due (epoch ms), or None when it holds none."""
    first = next(store.scan(DEFERRED_PREFIX), None)
    return None if first is None else deferred_due_ms(first[0])
