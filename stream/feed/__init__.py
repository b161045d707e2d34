"""The trainers' reader of the training feed: snapshot it, follow it, unlearn what it retracted.

- `snapshot()` reads the compacted `training.feed` to its end offsets at the start and
  yields the live items (tombstones drop out); its `manifest` records where it ended on
  the feed and on `training.retractions`, what it held and a content hash: what a
  training run keeps as its data lineage.
- `follow(manifest)` yields the additions, replacements and retractions after it, and
  commits its position under a consumer group of the trainer's choosing.
- `retracted_since(manifest)` returns every content id retracted after the manifest,
  however old it is, from `training.retractions` (kept 3 years); `acknowledge` commits
  the trainer's group there once they are deleted.

docs/trainers.md shows the whole loop. This package reads only the two trainer topics,
imports only the settings (`stream.config`), the client options (`stream.connection`)
and its own decoding, and never needs the pseudonym key.
"""

from stream.feed.items import FIELDS, ContentHash, FeedItem, UnreadableRecord, decode_item
from stream.feed.manifest import Manifest, ManifestError
from stream.feed.reader import (
    Change,
    ChangeKind,
    FeedError,
    Follower,
    Retracted,
    Snapshot,
    acknowledge,
    follow,
    reader_settings,
    retracted_since,
    snapshot,
)

__all__ = [
    "FIELDS",
    "Change",
    "ChangeKind",
    "ContentHash",
    "FeedError",
    "FeedItem",
    "Follower",
    "Manifest",
    "ManifestError",
    "Retracted",
    "Snapshot",
    "UnreadableRecord",
    "acknowledge",
    "decode_item",
    "follow",
    "reader_settings",
    "retracted_since",
    "snapshot",
]
