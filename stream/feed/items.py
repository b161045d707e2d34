"""A feed record as a trainer reads it: `FeedItem`, decoded from the bytes on `training.feed`.

The reader's own decoding (it shares nothing with the filter's codec but the field
names of schemas/training.feed.schema.json): a record is an item when its value is
a JSON object whose `content_id` equals the key and whose contract fields have their
types. Fields this version does not know are ignored (a later layout may add some,
and says so in `schema_version`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson

# The fields of a feed record, in the order an export writes its columns (content id first).
FIELDS: Final = (
    "content_id",
    "content_type",
    "platform",
    "author_pseudonym",
    "created_at",
    "text",
    "media_uri",
    "language",
    "jurisdiction",
    "policy_version",
    "decided_at",
    "source_event_id",
    "schema_version",
)
_REQUIRED_TEXT: Final = (
    "content_type",
    "platform",
    "author_pseudonym",
    "created_at",
    "jurisdiction",
    "policy_version",
    "decided_at",
    "source_event_id",
)
_OPTIONAL_TEXT: Final = ("text", "media_uri", "language")
# Records written before the field existed have the layout of version 1 without it.
UNVERSIONED_LAYOUT: Final = 1


class UnreadableRecord(ValueError):
    """Raised by `decode_item` when a feed value is not an item of the contract's layout."""


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One live item of `training.feed`: what a trainer may use. Timestamps are RFC 3339 UTC text, as on the feed."""

    content_id: str
    content_type: str
    platform: str
    author_pseudonym: str
    created_at: str
    text: str | None
    media_uri: str | None
    language: str | None
    jurisdiction: str
    policy_version: str
    decided_at: str
    source_event_id: str
    schema_version: int

    def as_dict(self) -> dict[str, Any]:
        """The item's fields by name, in `FIELDS` order."""
        return asdict(self)

    def digest(self) -> bytes:
        """SHA-256 of the item's fields as canonical JSON (keys sorted): what `content_hash` sums."""
        return hashlib.sha256(orjson.dumps(self.as_dict(), option=orjson.OPT_SORT_KEYS)).digest()


def decode_item(key: bytes | None, value: bytes) -> FeedItem:
    """The item a live feed record holds; raise `UnreadableRecord` saying what is wrong (never the text)."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise UnreadableRecord("not JSON") from None
    if type(obj) is not dict:
        raise UnreadableRecord("not a JSON object")
    content_id = obj.get("content_id")
    if type(content_id) is not str or not content_id:
        raise UnreadableRecord("no content_id")
    if key is None or key != content_id.encode("utf-8"):
        raise UnreadableRecord("content_id differs from the record key")
    for name in _REQUIRED_TEXT:
        if type(obj.get(name)) is not str:
            raise UnreadableRecord(f"field {name} missing or not a string")
    for name in _OPTIONAL_TEXT:
        if obj.get(name) is not None and type(obj[name]) is not str:
            raise UnreadableRecord(f"field {name} not a string or null")
    version = obj.get("schema_version", UNVERSIONED_LAYOUT)
    if type(version) is not int or version < 1:
        raise UnreadableRecord("schema_version not a positive integer")
    return FeedItem(
        content_id=content_id,
        content_type=obj["content_type"],
        platform=obj["platform"],
        author_pseudonym=obj["author_pseudonym"],
        created_at=obj["created_at"],
        text=obj.get("text"),
        media_uri=obj.get("media_uri"),
        language=obj.get("language"),
        jurisdiction=obj["jurisdiction"],
        policy_version=obj["policy_version"],
        decided_at=obj["decided_at"],
        source_event_id=obj["source_event_id"],
        schema_version=version,
    )


class ContentHash:
    """An order-independent hash of a set of items: the sum of their digests modulo 2**256, hex.

    Order-independent so that a shuffled or re-partitioned copy of a snapshot (a
    Parquet file, a dataset's shards) hashes the same as the snapshot: recompute it
    with `ContentHash.of(items)` and compare with the manifest's `content_hash`.
    """

    __slots__ = ("_sum",)
    _MODULUS: Final = 1 << 256

    def __init__(self) -> None:
        self._sum = 0

    def add(self, item: FeedItem) -> None:
        """Count one item."""
        self._sum = (self._sum + int.from_bytes(item.digest(), "big")) % self._MODULUS

    def hexdigest(self) -> str:
        """The hash as `sha256-sum:` and 64 hex digits."""
        return f"sha256-sum:{self._sum:064x}"

    @classmethod
    def of(cls, items: Any) -> str:
        """The hash of an iterable of `FeedItem`s."""
        h = cls()
        for item in items:
            h.add(item)
        return h.hexdigest()
