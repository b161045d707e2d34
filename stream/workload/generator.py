"""A seeded synthetic workload for the three input topics, and a producer that sends it.

Owns the shape of realistic test traffic: a population of accounts (countries,
ages, notices, objections), a stream of content events interleaved with profile
and objection changes, and a small share of malformed content records.

Two parts:
- the pure part (`Workload`, `generate`): no clock, no I/O, no Kafka. "Now" is an
  argument and every choice comes from `random.Random(seed)`, so a seed and a
  `now` always give the same bytes. Values are encoded here with orjson in the
  contract's wire format; this module does not use `stream.core.codec` on purpose,
  because it must also write what the codec would refuse.
- the shell (`produce`): sends a workload with aiokafka, open-loop paced. aiokafka
  is imported inside it so that the pure part stays importable without Kafka.

It never decides eligibility and must not import `stream.core.policy`: the workload
only makes every branch of the rule occur.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

from stream.config import Settings
from stream.connection import client_options
from stream.core.models import ContentType, ObjectionStatus, Op, Platform, Visibility
from stream.errors import DeliveryError

log = logging.getLogger(__name__)

_UTC = dt.UTC
_OPT = orjson.OPT_UTC_Z  # RFC 3339 with `Z`, as the contract writes timestamps


class TopicKind(StrEnum):
    """Which input topic a generated record belongs on (names come from `Settings.topics`)."""

    CONTENT = "content"
    PROFILES = "profiles"
    OBJECTIONS = "objections"


class RecordKind(StrEnum):
    """What a generated record is, for the generator's own counts."""

    PROFILE = "profile"
    ACCOUNT_DELETED = "account_deleted"  # profile tombstone
    OBJECTION = "objection"
    OBJECTION_TOMBSTONE = "objection_tombstone"
    UPSERT = "upsert"
    DELETE = "delete"
    MALFORMED = "malformed"


class MalformedKind(StrEnum):
    """How a malformed content record is broken."""

    GARBAGE_BYTES = "garbage_bytes"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_ENUM = "unknown_enum"
    KEY_MISMATCH = "key_mismatch"
    BAD_TIMESTAMP = "bad_timestamp"


class Record(NamedTuple):
    """One Kafka record to send: topic kind, key bytes, value bytes (None = tombstone)."""

    topic: TopicKind
    key: bytes | None
    value: bytes | None


class Labelled(NamedTuple):
    """A generated record with what it is; `malformed` is set only for `RecordKind.MALFORMED`."""

    kind: RecordKind
    record: Record
    malformed: MalformedKind | None = None


@dataclass(slots=True)
class GenerateStats:
    """Counts of what was generated (or sent); every enum value is present, zero or not."""

    by_topic: dict[TopicKind, int] = field(default_factory=lambda: dict.fromkeys(TopicKind, 0))
    by_kind: dict[RecordKind, int] = field(default_factory=lambda: dict.fromkeys(RecordKind, 0))
    malformed: dict[MalformedKind, int] = field(default_factory=lambda: dict.fromkeys(MalformedKind, 0))
    elapsed_seconds: float = 0.0

    def add(self, item: Labelled) -> None:
        """Count one generated (or sent) record."""
        self.by_topic[item.record.topic] += 1
        self.by_kind[item.kind] += 1
        if item.malformed is not None:
            self.malformed[item.malformed] += 1

    @property
    def content(self) -> int:
        """Records sent to the content topic, malformed ones included."""
        return self.by_topic[TopicKind.CONTENT]

    @property
    def total(self) -> int:
        """Every record generated (or sent), all topics."""
        return sum(self.by_topic.values())


# --- the population ---------------------------------------------------------------

_EU = ("DE", "FR", "IE", "ES", "IT", "NL", "PL")
_ELSEWHERE = ("US", "IN", "JP", "NG")
# Cumulative shares: GB 30 %, BR 30 %, EU 20 %, elsewhere 15 %, unknown 5 %.
_COUNTRY_CUTS = ((0.30, ("GB",)), (0.60, ("BR",)), (0.80, _EU), (0.95, _ELSEWHERE))

_LANGUAGES: dict[str | None, tuple[str, ...]] = {
    "GB": ("en-GB", "en"),
    "BR": ("pt-BR", "pt"),
    "DE": ("de", "de-DE"),
    "FR": ("fr", "fr-FR"),
    "IE": ("en-IE", "ga"),
    "ES": ("es", "ca"),
    "IT": ("it",),
    "NL": ("nl",),
    "PL": ("pl",),
    "US": ("en-US", "es-US"),
    "IN": ("hi", "en-IN"),
    "JP": ("ja",),
    "NG": ("en-NG", "yo"),
    None: ("en",),
}

# A small lorem-like vocabulary with a few non-ASCII words, so UTF-8 text occurs.
_WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip "
    "ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla "
    "pariatur sunny beach coffee weekend garden music friends city river mountain bread "
    "café praça ação straße été niño 東京 ☀️"
).split()


def _table(weights: dict[Any, int]) -> tuple[Any, ...]:
    """A lookup table in which each choice appears `weight` times: one index draw per choice."""
    return tuple(choice for choice, weight in weights.items() for _ in range(weight))


# Shares in percent.
_CONTENT_TYPES = _table(
    {
        ContentType.POST: 35,
        ContentType.COMMENT: 30,
        ContentType.PHOTO: 15,
        ContentType.CAPTION: 10,
        ContentType.MESSAGE: 10,
    }
)
_VISIBILITIES = _table({Visibility.PUBLIC: 75, Visibility.FRIENDS: 18, Visibility.PRIVATE: 7})
_PLATFORMS = _table({Platform.FACEBOOK: 55, Platform.INSTAGRAM: 45})
_TEXT_WORDS = {  # (min, max) words of text per content type
    ContentType.POST: (4, 20),
    ContentType.COMMENT: (1, 8),
    ContentType.PHOTO: (2, 10),
    ContentType.CAPTION: (2, 10),
    ContentType.MESSAGE: (2, 12),
}
_SOURCES = _table({"form": 70, "settings": 25, "support": 5})

_SHARE_BIRTH_UNKNOWN = 0.03
_SHARE_BIRTH_29_FEB = 0.01
_SHARE_TURNING_18 = 0.04  # 18th birthday within `_TURNING_DAYS` of now, either side
_SHARE_MINOR = 0.10
_TURNING_DAYS = 3
_SHARE_NOT_NOTIFIED = 0.05
_SHARE_NOTIFIED_RECENTLY = 0.15  # within Brazil's 30-day notice period
_SHARE_OBJECTED_AT_START = 0.01  # the rest of the ~2 % object while the stream runs
_SHARE_WITHDRAWN_AT_START = 0.003

# Per content event, the chance that a state change is interleaved before it.
_P_OBJECTION_CHANGE = 0.001
_P_PROFILE_CHANGE = 0.001
_P_ACCOUNT_DELETION = 0.0002
# Per content event (not malformed): which operation it is.
_P_DELETE = 0.04
_P_EDIT = 0.08  # cumulative after `_P_DELETE`
_P_UNKNOWN_AUTHOR = 0.003  # new items by an account without a profile (account_unknown)
_RECENT_CAPACITY = 50_000  # content items remembered for edits and deletes
_POOL_SIZE = 1024  # precomputed sentences per content type; four times as many creation lags

_DEFAULT_STEP = dt.timedelta(milliseconds=1)

# Enum members the hot path uses, bound once: member access on an enum class costs
# about 0.1 µs on CPython 3.11, several times per event.
_MESSAGE, _PHOTO, _CAPTION, _POST = ContentType.MESSAGE, ContentType.PHOTO, ContentType.CAPTION, ContentType.POST
_PRIVATE = Visibility.PRIVATE
_OP_UPSERT, _OP_DELETE = Op.UPSERT, Op.DELETE
_KIND_UPSERT, _KIND_DELETE = RecordKind.UPSERT, RecordKind.DELETE
_TOPIC_CONTENT = TopicKind.CONTENT
DEFAULT_MALFORMED_SHARE = 0.005


def _years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a common year
        return dt.date(day.year - years, 2, 28)


@dataclass(slots=True)
class _Profile:
    birth_date: dt.date | None
    country: str | None
    notified_at: dt.datetime | None
    updated_at: dt.datetime


class _Item(NamedTuple):
    """A content item the stream remembers, to edit or delete it later.

    A NamedTuple, not a frozen dataclass: it is built for every item, and a frozen
    dataclass costs several times as much to construct.
    """

    content_id: str
    author: str
    content_type: ContentType
    platform: Platform
    visibility: Visibility
    created_at: dt.datetime
    media_uri: str | None
    language: str | None


def _profile_value(account: str, p: _Profile) -> bytes:
    """An `accounts.profiles` value in the contract's wire format."""
    return orjson.dumps(
        {
            "account_id": account,
            "birth_date": p.birth_date,
            "country": p.country,
            "notified_at": p.notified_at,
            "updated_at": p.updated_at,
        },
        option=_OPT,
    )


def _objection_value(account: str, status: ObjectionStatus, at: dt.datetime, source: str, request_id: str) -> bytes:
    """An `accounts.objections` value in the contract's wire format."""
    return orjson.dumps(
        {"account_id": account, "status": status, "at": at, "source": source, "request_id": request_id},
        option=_OPT,
    )


class Workload:
    """A deterministic synthetic workload; a seed and `now` always give the same records.

    `setup()` yields every profile and the initial objections; `stream(count)` yields
    `count` content records (None = endlessly) with occasional profile and objection
    changes in between. Each call starts afresh from the seed, so `setup()` and
    `stream()` may be called in any order and more than once.

    `now` is the instant ages and notices are relative to and the first content
    event's `event_time`; each content event advances the clock by `step`. `run`
    prefixes content, event and request ids so that two runs with the same seed do
    not collide on the same topics (default: derived from the seed).
    """

    def __init__(
        self,
        *,
        seed: int,
        accounts: int,
        now: dt.datetime,
        malformed_share: float = DEFAULT_MALFORMED_SHARE,
        step: dt.timedelta = _DEFAULT_STEP,
        run: str | None = None,
    ) -> None:
        if accounts < 1:
            raise ValueError("accounts must be at least 1")
        if not 0.0 <= malformed_share <= 1.0:
            raise ValueError("malformed_share must be between 0 and 1")
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if step < dt.timedelta(0):
            raise ValueError("step must not be negative")
        self.seed = seed
        self.accounts = accounts
        self.now = now.astimezone(_UTC)
        self.malformed_share = malformed_share
        self.step = step
        self.run = run if run is not None else f"{seed & 0xFFFFFFFF:x}"
        width = max(6, len(str(accounts + accounts // 100 + 10)))
        self.account_ids: tuple[str, ...] = tuple(f"acct-{i:0{width}d}" for i in range(accounts))
        # Accounts that post but never get a profile: their items are `account_unknown`.
        self.unknown_ids: tuple[str, ...] = tuple(
            f"acct-{accounts + j:0{width}d}" for j in range(max(3, accounts // 200))
        )
        # S311: a reproducible test workload, not a secret; `random` is the right tool.
        rng = random.Random(seed)  # noqa: S311
        self._profiles = tuple(self._draw_profile(rng) for _ in range(accounts))
        self._objections: dict[int, tuple[ObjectionStatus, dt.datetime, str]] = {}
        for i in range(accounts):
            r = rng.random()
            if r < _SHARE_OBJECTED_AT_START + _SHARE_WITHDRAWN_AT_START:
                status = ObjectionStatus.OBJECTED if r < _SHARE_OBJECTED_AT_START else ObjectionStatus.WITHDRAWN
                at = self.now - dt.timedelta(seconds=rng.randrange(60, 400 * 86_400))
                self._objections[i] = (status, at, rng.choice(_SOURCES))
        # Heavy posters appear several times, so activity is skewed like real traffic.
        self._author_pool: tuple[int, ...] = tuple(
            i for i in range(accounts) for _ in range(1 + min(9, int(rng.paretovariate(1.5)) - 1))
        )
        self._stream_seed = rng.getrandbits(64)

    # --- population ---------------------------------------------------------------

    def _draw_profile(self, rng: random.Random) -> _Profile:
        now = self.now
        today = now.date()
        r = rng.random()
        country: str | None = None
        for cut, choices in _COUNTRY_CUTS:
            if r < cut:
                country = rng.choice(choices)
                break

        r = rng.random()
        birth: dt.date | None
        if r < _SHARE_BIRTH_UNKNOWN:
            birth = None
        elif r < _SHARE_BIRTH_UNKNOWN + _SHARE_BIRTH_29_FEB:
            leap_years = [y for y in range(today.year - 70, today.year - 12) if y % 4 == 0 and y % 100 != 0]
            birth = dt.date(rng.choice(leap_years), 2, 29)
        elif r < _SHARE_BIRTH_UNKNOWN + _SHARE_BIRTH_29_FEB + _SHARE_TURNING_18:
            offset = rng.randint(-_TURNING_DAYS, _TURNING_DAYS)
            birth = _years_before(today, 18) + dt.timedelta(days=offset)
        elif r < _SHARE_BIRTH_UNKNOWN + _SHARE_BIRTH_29_FEB + _SHARE_TURNING_18 + _SHARE_MINOR:
            age = rng.randint(13, 17)
            birth = _years_before(today, age) - dt.timedelta(days=rng.randrange(0, 365))
        else:  # adult, clear of the 18th birthday by more than the "turning 18" window
            birth = _years_before(today, 18) - dt.timedelta(days=rng.randrange(_TURNING_DAYS + 1, 57 * 365))

        r = rng.random()
        notified: dt.datetime | None
        if r < _SHARE_NOT_NOTIFIED:
            notified = None
        elif r < _SHARE_NOT_NOTIFIED + _SHARE_NOTIFIED_RECENTLY:
            notified = now - dt.timedelta(seconds=rng.randrange(60, 29 * 86_400))
        else:
            notified = now - dt.timedelta(seconds=rng.randrange(60 * 86_400, 700 * 86_400))
        if notified is not None:
            since = int((now - notified).total_seconds())
            updated = notified + dt.timedelta(seconds=rng.randrange(0, max(1, since)))
        else:
            updated = now - dt.timedelta(seconds=rng.randrange(60, 900 * 86_400))
        return _Profile(birth, country, notified, updated)

    # --- public iterators ---------------------------------------------------------

    def setup(self) -> Iterator[Labelled]:
        """Every account's profile, then the objections already on record at `now`."""
        for account, profile in zip(self.account_ids, self._profiles, strict=True):
            yield Labelled(
                RecordKind.PROFILE,
                Record(TopicKind.PROFILES, account.encode(), _profile_value(account, profile)),
            )
        for n, (i, (status, at, source)) in enumerate(sorted(self._objections.items())):
            account = self.account_ids[i]
            value = _objection_value(account, status, at, source, f"r-{self.run}-s{n:06d}")
            yield Labelled(RecordKind.OBJECTION, Record(TopicKind.OBJECTIONS, account.encode(), value))

    def stream(self, count: int | None) -> Iterator[Labelled]:
        """`count` content records (None = no end), with state changes interleaved."""
        start = _Start(self._stream_seed, self._profiles, self._objections, self._author_pool)
        return _Stream(self, start).run(count)

    def labelled(self, count: int | None) -> Iterator[Labelled]:
        """The whole workload: `setup()` then `stream(count)`."""
        yield from self.setup()
        yield from self.stream(count)

    def records(self, count: int | None) -> Iterator[Record]:
        """The whole workload as plain `(topic_kind, key, value)` tuples."""
        for item in self.labelled(count):
            yield item.record


def generate(
    *,
    seed: int,
    accounts: int,
    count: int | None,
    now: dt.datetime,
    malformed_share: float = DEFAULT_MALFORMED_SHARE,
) -> Iterator[Record]:
    """Shorthand for `Workload(...).records(count)`."""
    return Workload(seed=seed, accounts=accounts, now=now, malformed_share=malformed_share).records(count)


class _Start(NamedTuple):
    """What a pass over the stream starts from: the workload's drawn population and the stream's seed."""

    seed: int
    profiles: tuple[_Profile, ...]
    objections: dict[int, tuple[ObjectionStatus, dt.datetime, str]]
    author_pool: tuple[int, ...]


class _Stream:
    """The mutable state of one pass over the content stream; lives only inside `stream()`.

    The content events are made here; state changes (`_objection_change`,
    `_profile_change`, `_account_deletion`) and malformed records (`_malformed`) are
    functions of their own over this state.
    """

    def __init__(self, w: Workload, start: _Start) -> None:
        self.w = w
        self.rng = random.Random(start.seed)  # noqa: S311 - see Workload.__init__
        self.profiles = [_Profile(p.birth_date, p.country, p.notified_at, p.updated_at) for p in start.profiles]
        self.objections = {i: status for i, (status, _, _) in start.objections.items()}
        self.author_pool = start.author_pool
        self.deleted: set[int] = set()
        self.deleted_ids: set[str] = set()
        self.recent: list[_Item] = []
        self.clock = w.now
        self.step = w.step
        self.event_n = 0
        self.content_n = 0
        self.request_n = 0
        # Precomputed pools: one index draw per choice keeps the stream above 50k events/s.
        rng = self.rng
        self.sentences = {
            content_type: tuple(
                " ".join(rng.choices(_WORDS, k=rng.randint(low, high))).capitalize() + "." for _ in range(_POOL_SIZE)
            )
            for content_type, (low, high) in _TEXT_WORDS.items()
        }
        # Live items were created moments ago; one in ten is backfilled, up to three years old.
        self.lags = tuple(
            dt.timedelta(microseconds=rng.randrange(1_000, 120_000_000))
            if rng.random() < 0.9
            else dt.timedelta(seconds=rng.randrange(1, 3 * 365 * 86_400))
            for _ in range(_POOL_SIZE * 4)
        )

    # ids -------------------------------------------------------------------------

    def _event_id(self) -> str:
        self.event_n += 1
        return f"e-{self.w.run}-{self.event_n:09d}"

    def _content_id(self) -> str:
        self.content_n += 1
        return f"c-{self.w.run}-{self.content_n:09d}"

    def request_id(self) -> str:
        self.request_n += 1
        return f"r-{self.w.run}-{self.request_n:06d}"

    # the loop --------------------------------------------------------------------

    def run(self, count: int | None) -> Iterator[Labelled]:
        rnd = self.rng.random
        malformed_share = self.w.malformed_share
        n = 0
        while count is None or n < count:
            if rnd() < _P_OBJECTION_CHANGE:
                yield _objection_change(self)
            if rnd() < _P_PROFILE_CHANGE:
                yield _profile_change(self)
            if rnd() < _P_ACCOUNT_DELETION:
                deletion = _account_deletion(self)
                if deletion is not None:
                    yield deletion
            if rnd() < malformed_share:
                yield _malformed(self)
            else:
                yield self._content()
            n += 1
            self.clock += self.step

    # content ---------------------------------------------------------------------

    def pick_author(self) -> int:
        pool = self.author_pool
        for _ in range(8):
            i = pool[int(self.rng.random() * len(pool))]
            if i not in self.deleted:
                return i
        return -1  # everyone drawn was deleted: an unknown author stands in

    def _text(self, content_type: ContentType) -> str:
        sentences = self.sentences[content_type]
        return sentences[int(self.rng.random() * len(sentences))]

    def _new_item(self, author: str, country: str | None) -> tuple[_Item, dict[str, Any]]:
        rng = self.rng
        rnd = rng.random
        content_id = self._content_id()
        content_type: ContentType = _CONTENT_TYPES[int(rnd() * len(_CONTENT_TYPES))]
        platform: Platform = _PLATFORMS[int(rnd() * len(_PLATFORMS))]
        if content_type is _MESSAGE and rnd() < 0.9:
            visibility = _PRIVATE
        else:
            visibility = _VISIBILITIES[int(rnd() * len(_VISIBILITIES))]
        created_at = self.clock - self.lags[int(rnd() * len(self.lags))]
        text: str | None = None
        media_uri: str | None = None
        if content_type is _PHOTO:
            media_uri = f"https://media.example.invalid/{platform}/{content_id}.jpg"
            if rnd() < 0.4:
                text = self._text(content_type)
        else:
            text = self._text(content_type)
            if content_type is _CAPTION and rnd() < 0.5:
                media_uri = f"https://media.example.invalid/{platform}/{content_id}.mp4"
            elif content_type is _POST and rnd() < 0.1:
                media_uri = f"https://media.example.invalid/{platform}/{content_id}.jpg"
        r = rnd()
        language: str | None
        if r < 0.2:
            language = None
        elif r < 0.3:
            language = "en"
        else:
            tags = _LANGUAGES[country]
            language = tags[int(rnd() * len(tags))]
        item = _Item(content_id, author, content_type, platform, visibility, created_at, media_uri, language)
        return item, self._upsert_value(item, text)

    def _upsert_value(self, item: _Item, text: str | None) -> dict[str, Any]:
        return {
            "event_id": self._event_id(),
            "op": _OP_UPSERT,
            "content_id": item.content_id,
            "content_type": item.content_type,
            "platform": item.platform,
            "author_id": item.author,
            "visibility": item.visibility,
            "created_at": item.created_at,
            "event_time": self.clock,
            "text": text,
            "media_uri": item.media_uri,
            "language": item.language,
        }

    def _remember(self, item: _Item) -> None:
        if len(self.recent) < _RECENT_CAPACITY:
            self.recent.append(item)
        else:
            self.recent[int(self.rng.random() * _RECENT_CAPACITY)] = item

    def _content(self) -> Labelled:
        rnd = self.rng.random
        r = rnd()
        recent = self.recent
        if recent and r < _P_DELETE:
            k = int(rnd() * len(recent))
            item = recent[k]
            recent[k] = recent[-1]
            recent.pop()
            value = {
                "event_id": self._event_id(),
                "op": _OP_DELETE,
                "content_id": item.content_id,
                "author_id": item.author,
                "event_time": self.clock,
            }
            return Labelled(
                _KIND_DELETE, Record(_TOPIC_CONTENT, item.author.encode(), orjson.dumps(value, option=_OPT))
            )
        if recent and r < _P_DELETE + _P_EDIT:
            k = int(rnd() * len(recent))
            edited = recent[k]
            if edited.author not in self.deleted_ids:  # a deleted account edits nothing
                if rnd() < 0.2:  # the author changes the audience: a retraction when it leaves `public`
                    edited = edited._replace(visibility=_VISIBILITIES[int(rnd() * len(_VISIBILITIES))])
                    recent[k] = edited
                with_text = edited.content_type is not _PHOTO or rnd() < 0.5
                value = self._upsert_value(edited, self._text(edited.content_type) if with_text else None)
                return Labelled(
                    _KIND_UPSERT,
                    Record(_TOPIC_CONTENT, edited.author.encode(), orjson.dumps(value, option=_OPT)),
                )
        item, value = self.new_author_item()
        self._remember(item)
        return Labelled(_KIND_UPSERT, Record(_TOPIC_CONTENT, item.author.encode(), orjson.dumps(value, option=_OPT)))

    def new_author_item(self) -> tuple[_Item, dict[str, Any]]:
        i = -1 if self.rng.random() < _P_UNKNOWN_AUTHOR else self.pick_author()
        if i < 0:
            author = self.w.unknown_ids[int(self.rng.random() * len(self.w.unknown_ids))]
            return self._new_item(author, None)
        return self._new_item(self.w.account_ids[i], self.profiles[i].country)


# --- malformed records and state changes: functions over a pass's state ------------------


def _malformed(s: _Stream) -> Labelled:
    """A content record broken in one of the `MalformedKind` ways, for a fresh item."""
    rng = s.rng
    kind = _MALFORMED_KINDS[int(rng.random() * len(_MALFORMED_KINDS))]
    item, value = s.new_author_item()  # a fresh item, never remembered for edits
    key = item.author.encode()
    raw: bytes
    if kind is MalformedKind.GARBAGE_BYTES:
        # 0xFF never occurs in UTF-8, so this is not even text.
        raw = b"\xff\xfe" + rng.randbytes(rng.randint(1, 64))
    elif kind is MalformedKind.NOT_AN_OBJECT:
        raw = rng.choice((b"null", b"42", b'"upsert"', b"true", b"[]", orjson.dumps([value], option=_OPT)))
    else:
        if kind is MalformedKind.MISSING_FIELD:
            del value[rng.choice(_REQUIRED_UPSERT_FIELDS)]
        elif kind is MalformedKind.WRONG_TYPE:
            name = rng.choice(tuple(_WRONG_TYPES))
            value[name] = _WRONG_TYPES[name]
        elif kind is MalformedKind.UNKNOWN_ENUM:
            name = rng.choice(tuple(_UNKNOWN_ENUMS))
            value[name] = _UNKNOWN_ENUMS[name]
        elif kind is MalformedKind.KEY_MISMATCH:
            other = s.w.account_ids[int(rng.random() * len(s.w.account_ids))]
            key = other.encode() if other != item.author else (item.author + "-x").encode()
        elif kind is MalformedKind.BAD_TIMESTAMP:
            value[rng.choice(("event_time", "created_at"))] = rng.choice(_BAD_TIMESTAMPS)
        raw = orjson.dumps(value, option=_OPT)
    return Labelled(RecordKind.MALFORMED, Record(TopicKind.CONTENT, key, raw), kind)


def _objection_change(s: _Stream) -> Labelled:
    """An objection made, withdrawn or cleared (a tombstone) by an active author."""
    rng = s.rng
    objected = [i for i, status in s.objections.items() if status is ObjectionStatus.OBJECTED]
    r = rng.random()
    if objected and r < 0.3:
        i = rng.choice(objected)
        status = ObjectionStatus.WITHDRAWN
    elif s.objections and r < 0.4:
        # A cleared record (tombstone) means the same as `withdrawn`.
        i = rng.choice(list(s.objections))
        del s.objections[i]
        account = s.w.account_ids[i]
        return Labelled(RecordKind.OBJECTION_TOMBSTONE, Record(TopicKind.OBJECTIONS, account.encode(), None))
    else:
        # Objectors are drawn from active authors, so their objection has items to retract.
        i = max(0, s.pick_author())
        status = ObjectionStatus.OBJECTED
    s.objections[i] = status
    account = s.w.account_ids[i]
    value = _objection_value(account, status, s.clock, rng.choice(_SOURCES), s.request_id())
    return Labelled(RecordKind.OBJECTION, Record(TopicKind.OBJECTIONS, account.encode(), value))


def _profile_change(s: _Stream) -> Labelled:
    """A profile update: a notice shown, a corrected birth date, or a move."""
    rng = s.rng
    i = max(0, s.pick_author())
    p = s.profiles[i]
    today = s.clock.date()
    r = rng.random()
    if p.notified_at is None or r < 0.3:  # the notice is shown now
        p.notified_at = s.clock
    elif r < 0.55:  # a corrected birth date, sometimes making an adult a minor
        if rng.random() < 0.5:
            p.birth_date = _years_before(today, rng.randint(13, 17)) - dt.timedelta(days=rng.randrange(365))
        else:
            p.birth_date = _years_before(today, rng.randint(19, 70))
    elif r < 0.8:  # a move, in or out of an enabled jurisdiction
        p.country = rng.choice(("GB", "BR", *_EU, *_ELSEWHERE))
    else:
        p.country = None if rng.random() < 0.3 else p.country
    p.updated_at = s.clock
    account = s.w.account_ids[i]
    return Labelled(RecordKind.PROFILE, Record(TopicKind.PROFILES, account.encode(), _profile_value(account, p)))


def _account_deletion(s: _Stream) -> Labelled | None:
    """An account deleted (a profile tombstone); None when no live author was drawn."""
    i = s.pick_author()
    if i < 0:
        return None
    s.deleted.add(i)
    account = s.w.account_ids[i]
    s.deleted_ids.add(account)
    return Labelled(RecordKind.ACCOUNT_DELETED, Record(TopicKind.PROFILES, account.encode(), None))


_MALFORMED_KINDS = tuple(MalformedKind)
_REQUIRED_UPSERT_FIELDS = (
    "event_id",
    "op",
    "content_id",
    "content_type",
    "platform",
    "author_id",
    "visibility",
    "created_at",
    "event_time",
)
_WRONG_TYPES: dict[str, object] = {
    "content_id": 12345,
    "event_id": None,
    "visibility": True,
    "text": 42,
    "event_time": 1764321300,
    "language": ["en"],
    "author_id": {"id": "acct"},
}
_UNKNOWN_ENUMS = {
    "content_type": "story",
    "visibility": "public_ish",
    "op": "undelete",
    "platform": "myspace",
}
_BAD_TIMESTAMPS = (
    "2026-13-45T25:61:00Z",
    "yesterday",
    "2026-11-28 09:15",
    "28/11/2026 09:15:00",
    "",
)


# --- the producer (I/O) -----------------------------------------------------------

_SEND_BATCH = 1000
_PROGRESS_EVERY = 256
_MAX_SLEEP = 0.1  # seconds: how long `stop` may go unnoticed while pacing
_MIN_SLEEP = 0.001  # seconds: below this the event loop cannot sleep precisely; send early instead
_UNPACED_STEP = dt.timedelta(microseconds=50)  # event-time step without a rate: about 20k/s


def _stamp_sent(value: bytes) -> bytes:
    """Add `gen_sent_at` (now, microseconds) to a JSON object value, without re-parsing it."""
    now = dt.datetime.now(_UTC).isoformat(timespec="microseconds")
    return b'%s,"gen_sent_at":"%sZ"}' % (value[:-1], now[:-6].encode())


class _Sender:
    """Sends records without waiting for each; settles delivery one batch behind."""

    def __init__(self, producer: Any, topics: dict[TopicKind, str], stats: GenerateStats) -> None:
        self._producer = producer
        self._topics = topics
        self._stats = stats
        self._current: list[asyncio.Future[Any]] = []
        self._previous: list[asyncio.Future[Any]] = []

    async def send(self, item: Labelled) -> None:
        topic, key, value = item.record
        if item.kind is RecordKind.UPSERT and value is not None:
            value = _stamp_sent(value)
        future = await self._producer.send(self._topics[topic], value=value, key=key)
        self._current.append(future)
        self._stats.add(item)
        if len(self._current) >= _SEND_BATCH:
            # The previous batch has had a whole batch's time to be acknowledged.
            await self._settle(self._previous)
            self._previous, self._current = self._current, []

    async def flush(self) -> None:
        await self._settle(self._previous)
        await self._settle(self._current)
        self._previous, self._current = [], []

    @staticmethod
    async def _settle(futures: list[asyncio.Future[Any]]) -> None:
        if not futures:
            return
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise DeliveryError(f"the broker did not acknowledge a generated record: {result!r}") from result


async def produce(
    settings: Settings,
    *,
    count: int | None,
    rate: float | None,
    accounts: int,
    seed: int,
    malformed_share: float,
    progress: bool,
    stop: asyncio.Event | None = None,
) -> GenerateStats:
    """Send a workload: all profiles and objections first, then `count` content records.

    `count=None` runs until `stop` is set or the task is cancelled. `rate` is content
    records per second on an open-loop schedule (record i is due at start + i/rate,
    whatever the broker's latency); None sends as fast as the broker takes them.
    Raises `DeliveryError` when the broker does not acknowledge a record.
    """
    if count is not None and count < 0:
        raise ValueError("count must not be negative")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    now = dt.datetime.now(_UTC).replace(microsecond=0)
    step = dt.timedelta(seconds=1 / rate) if rate else _UNPACED_STEP
    # A run tag from the start time: re-running with the same seed against the same
    # topics must not repeat event ids, which the filter may take for duplicates.
    run = f"{seed & 0xFFFF:x}{int(now.timestamp()):x}"
    workload = Workload(seed=seed, accounts=accounts, now=now, malformed_share=malformed_share, step=step, run=run)
    stats = GenerateStats()
    started = time.monotonic()
    producer = _producer(settings)
    sender = _Sender(producer, _topic_names(settings), stats)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    log.info(
        "generator: run=%s seed=%d accounts=%d count=%s rate=%s malformed_share=%.4f",
        *(run, seed, accounts, count, rate, malformed_share),
    )
    try:
        await producer.start()
        await _send_setup(workload, sender, progress, stopped)
        await _send_stream(workload, sender, count, rate, progress, stopped)
    finally:
        await producer.stop()
        stats.elapsed_seconds = time.monotonic() - started
    log.info(
        "generator: done run=%s content=%d profiles=%d objections=%d malformed=%d elapsed=%.1fs",
        *(run, stats.content, stats.by_topic[TopicKind.PROFILES], stats.by_topic[TopicKind.OBJECTIONS]),
        *(stats.by_kind[RecordKind.MALFORMED], stats.elapsed_seconds),
    )
    return stats


def _topic_names(settings: Settings) -> dict[TopicKind, str]:
    """Where each kind of generated record goes: the topic names come from the settings."""
    return {
        TopicKind.CONTENT: settings.topics.content,
        TopicKind.PROFILES: settings.topics.profiles,
        TopicKind.OBJECTIONS: settings.topics.objections,
    }


def _producer(settings: Settings) -> Any:
    """An aiokafka producer for the workload, acknowledged by all replicas; not started."""
    from aiokafka import AIOKafkaProducer  # the shell's dependency; the pure part needs no Kafka
    from aiokafka.codec import has_zstd

    compression = settings.compression
    if compression == "zstd" and not has_zstd():
        log.warning("generator: zstd is not available, sending uncompressed")
        compression = None
    return AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        linger_ms=settings.linger_ms,
        compression_type=compression,
        max_batch_size=256 * 1024,
    )


async def _send_setup(workload: Workload, sender: _Sender, progress: bool, stopped: Callable[[], bool]) -> None:
    """Send every profile and the initial objections, and wait until the broker acknowledged them."""
    from tqdm import tqdm

    with tqdm(total=workload.accounts, unit="rec", desc="profiles", disable=not progress) as bar:
        for item in workload.setup():
            if stopped():
                break
            await sender.send(item)
            if item.kind is RecordKind.PROFILE:
                bar.update()
        await sender.flush()


async def _send_stream(
    workload: Workload,
    sender: _Sender,
    count: int | None,
    rate: float | None,
    progress: bool,
    stopped: Callable[[], bool],
) -> None:
    """Send the content stream, each content record at its open-loop time when `rate` is set."""
    from tqdm import tqdm

    loop = asyncio.get_running_loop()
    interval = 1 / rate if rate else 0.0
    with tqdm(total=count, unit="ev", desc="content", disable=not progress) as bar:
        stream = workload.stream(count)  # builds its precomputed pools: before the schedule starts
        t0 = loop.time()
        sent = 0
        unreported = 0
        for item in stream:
            if stopped():
                break
            if item.record.topic is TopicKind.CONTENT:
                if interval:
                    delay = t0 + sent * interval - loop.time()
                    while delay > _MIN_SLEEP and not stopped():
                        if unreported:
                            bar.update(unreported)
                            unreported = 0
                        await asyncio.sleep(min(delay, _MAX_SLEEP))
                        delay = t0 + sent * interval - loop.time()
                    if stopped():
                        break
                sent += 1
                unreported += 1
                if unreported >= _PROGRESS_EVERY:
                    bar.update(unreported)
                    unreported = 0
            await sender.send(item)
        await sender.flush()
        bar.update(unreported)
