"""The state the inputs build: each item's latest applied event and each account's latest state.

Fed in offset order by the shell (`verify`); pure otherwise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from stream.verifier.inputs import (
    Content,
    Invalid,
    Profile,
    item_named_by,
    key_text,
    parse_content,
    parse_objection,
    parse_profile,
)
from stream.verifier.rule import is_pseudonym_of

# How long the filter remembers an item's latest applied event (STREAM_ITEM_MEMORY_DAYS).
ITEM_MEMORY: Final = dt.timedelta(days=8)


@dataclass(slots=True)
class Account:
    """An account's current state as the compacted topics hold it."""

    profile: Profile | None = None  # None: no profile, deleted, or unreadable (fail closed)
    objected: bool = False  # an unreadable objection counts as one (fail closed)
    profile_at: dt.datetime | None = None  # broker timestamp of the latest profile record, tombstones included
    objection_at: dt.datetime | None = None

    def changed_at(self) -> dt.datetime | None:
        """Broker time of the account's latest profile or objection record, tombstones included."""
        stamps = [t for t in (self.profile_at, self.objection_at) if t is not None]
        return max(stamps) if stamps else None


@dataclass(slots=True)
class InputCounts:
    """How many input records the verifier read, by kind."""

    content: int = 0
    content_invalid: int = 0
    content_skipped: int = 0  # valid, but superseded or after a delete: they change nothing
    profiles: int = 0
    objections: int = 0


@dataclass(slots=True)
class Item:
    """One item (an author's content id): its latest applied event, and an unreadable record since."""

    latest: Content | None = None
    # Broker time of an unreadable record naming the item after `latest`: the filter
    # retracts the item and releases its held copy; only a later applied event undoes that.
    unreadable_at: dt.datetime | None = None


def applies(latest: Content | None, event: Content, memory: dt.timedelta = ITEM_MEMORY) -> bool:
    """Whether `event` changes an item whose latest applied event is `latest` (contract: "Order per item").

    The same event id is superseded; after a delete everything is; an older event
    time is; an equal event time with another id applies (arrival order). The
    filter forgets `latest` `memory` after applying it; here after its broker time.
    """
    if latest is None or event.at - latest.at > memory:
        return True
    if event.event_id == latest.event_id or latest.op == "delete":
        return False
    return event.event_time >= latest.event_time


@dataclass(slots=True)
class State:
    """Each item's latest applied event and each account's latest state; fed in offset order.

    Items are keyed like the filter's, by author and content id: `items[content id][author]`.
    `contents` holds, per content id, the latest applied event of the item that changed
    last (offset order within a partition, broker time across partitions): the one a
    feed key names unless another author's item claims the same id.
    """

    items: dict[str, dict[str, Item]] = field(default_factory=dict)
    contents: dict[str, Content] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    counts: InputCounts = field(default_factory=InputCounts)
    item_memory: dt.timedelta = ITEM_MEMORY

    def _item(self, content_id: str, author_id: str) -> Item:
        return self.items.setdefault(content_id, {}).setdefault(author_id, Item())

    def apply_content(self, key: bytes | None, value: bytes | None, at: dt.datetime, partition: int = 0) -> None:
        """Apply one `content.events` record: the item's latest applied event, or an unreadable record naming it."""
        self.counts.content += 1
        try:
            content_id, content = parse_content(key, value, at, partition)
        except Invalid:  # a dead letter; the item it still names, if any, fails closed
            self.counts.content_invalid += 1
            named = item_named_by(key, value)
            if named is not None:
                self._item(named[1], named[0]).unreadable_at = at
            return
        item = self._item(content_id, content.author_id)
        if not applies(item.latest, content, self.item_memory):
            self.counts.content_skipped += 1
            return
        item.latest = content
        item.unreadable_at = None
        known = self.contents.get(content_id)
        # Offset order decides within a partition. The same content id from two
        # partitions (two authors claiming it) has no offset order: the later stamp wins.
        if known is None or known.partition == partition or known.at <= at:
            self.contents[content_id] = content

    def item_on_feed(self, content_id: str, claimed: object, keys: Sequence[bytes]) -> tuple[str | None, Item | None]:
        """The `(author, item)` a feed record of `content_id` stands for; `claimed` is its `author_pseudonym`.

        With one author of the id, that one; with several, the one whose pseudonym the
        record carries, else the item that changed last.
        """
        candidates = self.items.get(content_id)
        if not candidates:
            return None, None
        if len(candidates) > 1:
            for author_id, item in candidates.items():
                if is_pseudonym_of(claimed, author_id, keys):
                    return author_id, item
            current = self.contents.get(content_id)
            if current is not None:
                return current.author_id, candidates[current.author_id]
        return next(iter(candidates.items()))

    def apply_profile(self, key: bytes | None, value: bytes | None, at: dt.datetime) -> None:
        """Apply one `accounts.profiles` record; an unreadable one leaves the account unknown (fail closed)."""
        self.counts.profiles += 1
        account_id = key_text(key)
        if not account_id:
            return  # no account can be named: the record cannot change anyone's state
        account = self.accounts.setdefault(account_id, Account())
        account.profile_at = at
        try:
            account.profile = None if value is None else parse_profile(account_id, value)
        except Invalid:
            account.profile = None

    def apply_objection(self, key: bytes | None, value: bytes | None, at: dt.datetime) -> None:
        """Apply one `accounts.objections` record; an unreadable one counts as an objection (fail closed)."""
        self.counts.objections += 1
        account_id = key_text(key)
        if not account_id:
            return
        account = self.accounts.setdefault(account_id, Account())
        account.objection_at = at
        try:
            account.objected = False if value is None else parse_objection(account_id, value)
        except Invalid:
            account.objected = True

    def account_ids(self) -> set[str]:
        """Every raw account id the inputs mention."""
        return set(self.accounts) | {author for by_author in self.items.values() for author in by_author}
