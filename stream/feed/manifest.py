"""The manifest of a snapshot: what a training run records as its data lineage.

Where the snapshot ends on the feed and on `training.retractions` (per partition),
when it was taken, what it holds (counts, policy and schema versions, a content
hash), and the topics it was read from. `follow` and `retracted_since` start from
it; `to_json` / `from_json` write and read it (`DIR/manifest.json` of an export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from stream.errors import StreamError

# The manifest's own layout: raised when a field changes meaning.
MANIFEST_FORMAT: Final = 1


class ManifestError(StreamError):
    """Raised when a manifest file cannot be read or is not one this version understands."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A snapshot's position, contents and provenance."""

    taken_at: str  # RFC 3339 UTC: when the end offsets were read
    feed_topic: str
    retractions_topic: str
    # The end offsets the snapshot read to: partition -> next offset.
    feed_offsets: dict[int, int]
    retractions_offsets: dict[int, int]
    items: int  # live items yielded
    tombstones: int  # retractions the feed still showed up to its end offsets
    unreadable: int  # live records that are not items of the contract's layout (not yielded; logged)
    policy_versions: tuple[str, ...]  # of the items yielded, sorted
    schema_versions: tuple[int, ...]  # of the items yielded, sorted
    content_hash: str  # `ContentHash` of the items yielded
    # Items whose feed value predates a retraction record read before the snapshot's
    # end while their tombstone landed after it: left out (see `reader.snapshot`).
    withheld: int = 0
    format: int = field(default=MANIFEST_FORMAT)

    def to_json(self) -> bytes:
        """The manifest as indented JSON (partitions as string keys, as JSON requires)."""
        body: dict[str, Any] = {
            "format": self.format,
            "taken_at": self.taken_at,
            "feed_topic": self.feed_topic,
            "retractions_topic": self.retractions_topic,
            "feed_offsets": {str(p): o for p, o in sorted(self.feed_offsets.items())},
            "retractions_offsets": {str(p): o for p, o in sorted(self.retractions_offsets.items())},
            "items": self.items,
            "tombstones": self.tombstones,
            "unreadable": self.unreadable,
            "withheld": self.withheld,
            "policy_versions": list(self.policy_versions),
            "schema_versions": list(self.schema_versions),
            "content_hash": self.content_hash,
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """A manifest from `to_json`'s bytes; ManifestError saying what is wrong otherwise."""
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from None
        if type(body) is not dict:
            raise ManifestError("manifest is not a JSON object")
        if body.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"manifest format {body.get('format')!r} is not {MANIFEST_FORMAT}")
        try:
            return cls(
                taken_at=_text(body, "taken_at"),
                feed_topic=_text(body, "feed_topic"),
                retractions_topic=_text(body, "retractions_topic"),
                feed_offsets=_offsets(body, "feed_offsets"),
                retractions_offsets=_offsets(body, "retractions_offsets"),
                items=_count(body, "items"),
                tombstones=_count(body, "tombstones"),
                unreadable=_count(body, "unreadable"),
                withheld=_count(body, "withheld"),
                policy_versions=tuple(_texts(body, "policy_versions")),
                schema_versions=tuple(_counts(body, "schema_versions")),
                content_hash=_text(body, "content_hash"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest field {exc}") from None


def _text(body: dict[str, Any], name: str) -> str:
    v = body[name]
    if type(v) is not str:
        raise TypeError(f"{name} is not a string")
    return v


def _count(body: dict[str, Any], name: str) -> int:
    v = body[name]
    if type(v) is not int or v < 0:
        raise TypeError(f"{name} is not a count")
    return v


def _texts(body: dict[str, Any], name: str) -> list[str]:
    v = body[name]
    if type(v) is not list or any(type(x) is not str for x in v):
        raise TypeError(f"{name} is not a list of strings")
    return v


def _counts(body: dict[str, Any], name: str) -> list[int]:
    v = body[name]
    if type(v) is not list or any(type(x) is not int for x in v):
        raise TypeError(f"{name} is not a list of integers")
    return v


def _offsets(body: dict[str, Any], name: str) -> dict[int, int]:
    v = body[name]
    if type(v) is not dict:
        raise TypeError(f"{name} is not an object")
    out: dict[int, int] = {}
    for p, o in v.items():
        if not p.isdigit() or type(o) is not int or o < 0:
            raise TypeError(f"{name} holds {p!r}: {o!r}, not partition: offset")
        out[int(p)] = o
    return out
