"""`python -m stream export`: a snapshot of the feed as Parquet, with its manifest.

Writes `DIR/feed.parquet` (one column per feed field, `content_id` first, timestamps
as the feed's RFC 3339 text so the content hash can be recomputed from the file) and
then `DIR/manifest.json`: a directory with a manifest holds a whole snapshot. pyarrow
is an optional dependency (`pip install 'eligibility-filter[export]'`), imported here
only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final, TextIO

from stream.config import Settings
from stream.feed.items import FIELDS, FeedItem
from stream.feed.manifest import Manifest
from stream.feed.reader import FeedError, snapshot

DATA_FILE: Final = "feed.parquet"
MANIFEST_FILE: Final = "manifest.json"
# Items per Parquet row group: large enough for columnar compression, small enough to
# hold in memory with texts of up to 100,000 characters.
ROW_GROUP_ITEMS: Final = 10_000


def _schema() -> Any:
    import pyarrow as pa

    text = {name: pa.string() for name in FIELDS}
    text["schema_version"] = pa.int32()
    nullable = {"text", "media_uri", "language"}
    return pa.schema([pa.field(name, text[name], nullable=name in nullable) for name in FIELDS])


def _chunks(items: Iterable[FeedItem], size: int) -> Iterator[list[FeedItem]]:
    chunk: list[FeedItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def export(
    out: Path, settings: Settings | None = None, *, progress: bool | None = None, stream: TextIO | None = None
) -> Manifest:
    """Write a snapshot of the feed to `out` (created if need be); return its manifest.

    `progress`: a progress bar on `stream` (stderr): None shows it on a terminal only.
    Refuses a directory that already holds an export (FeedError): a dataset is never
    overwritten in place.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FeedError("export needs pyarrow: pip install 'eligibility-filter[export]'") from None
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST_FILE).exists() or (out / DATA_FILE).exists():
        raise FeedError(f"{out} already holds an export ({DATA_FILE}, {MANIFEST_FILE}); choose another directory")
    snap = snapshot(settings)
    schema = _schema()
    partial = out / f".{DATA_FILE}.partial"
    # tqdm's own rule when not told: a bar on a terminal, none in a log file.
    disable = None if progress is None else not progress
    try:
        total = snap.prepare()
        with (
            tqdm(total=total, unit="item", desc="export", disable=disable, file=stream or sys.stderr) as bar,
            pq.ParquetWriter(partial, schema, compression="zstd") as writer,
        ):
            for chunk in _chunks(snap, ROW_GROUP_ITEMS):
                columns = {name: [getattr(item, name) for item in chunk] for name in FIELDS}
                writer.write_table(pa.table(columns, schema=schema))
                bar.update(len(chunk))
    finally:
        snap.close()  # a no-op once the iteration has released the reader
    os.replace(partial, out / DATA_FILE)
    manifest = snap.manifest
    tmp = out / f".{MANIFEST_FILE}.partial"
    tmp.write_bytes(manifest.to_json())
    os.replace(tmp, out / MANIFEST_FILE)
    return manifest
