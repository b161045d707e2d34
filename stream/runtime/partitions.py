"""The partitions this worker holds and their open stores: opened on assignment, closed on revocation.

A store is opened from `STREAM_DATA_DIR/state/partition-<p>` and rebuilt from the
compacted topics when it cannot be trusted (idle too long, or of another layout).
What is in a store, and how it is brought up to date, is not this module's.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from os import scandir  # a name of this module's: tests/unit/test_partitions.py replaces it
from pathlib import Path

from stream.core.state import PartitionStore
from stream.runtime.store import RocksPartitionStore

log = logging.getLogger(__name__)

# A store untouched for longer than this may have missed a tombstone that Kafka's
# compaction already removed (topics are created with delete.retention.ms = 7 days),
# so it is rebuilt from the beginning of the compacted topics instead of resumed.
STORE_MAX_IDLE_SECONDS = 12 * 3600


class StoreOrigin(StrEnum):
    """Where an assigned partition's store came from: the label values of `eligibility_partitions_assigned_total`."""

    KEPT = "kept"  # held before the assignment: the store stays open, nothing to catch up but the gap
    RESUMED = "resumed"  # on disk from an earlier assignment or run: brought up to date from its offsets
    REBUILT = "rebuilt"  # none on disk, idle too long or of another layout: read from the start of the topics


class HeldPartitions:
    """`stores` is the live mapping every part reads; only this class adds or removes stores."""

    def __init__(self, data_dir: Path, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._root = data_dir / "state"
        self._wall_clock = wall_clock
        self.stores: dict[int, PartitionStore] = {}
        self.assigned: frozenset[int] = frozenset()

    def assign(self, partitions: Iterable[int]) -> dict[int, StoreOrigin]:
        """Hold exactly `partitions`: close the stores of the others, open the missing ones; where each came from."""
        held = frozenset(partitions)
        for p in list(self.stores):
            if p not in held:
                self.stores.pop(p).close()
        origins: dict[int, StoreOrigin] = {}
        for p in sorted(held):
            if p in self.stores:
                origins[p] = StoreOrigin.KEPT
            else:
                self.stores[p], origins[p] = self._open(p)
        self.assigned = held
        return origins

    def open(self, partition: int) -> PartitionStore:
        """Open partition `partition`'s store, rebuilt empty if it was idle too long or is of another layout."""
        store, _ = self._open(partition)
        return store

    def _open(self, partition: int) -> tuple[PartitionStore, StoreOrigin]:
        path = self.path(partition)
        store = RocksPartitionStore(path)
        touched = store.touched_at()
        idle = self._wall_clock() - (touched or 0)
        stale = touched is not None and idle > STORE_MAX_IDLE_SECONDS
        if stale or not store.compatible():
            log.warning(
                "state of partition %d %s: rebuilding from the compacted topics",
                partition,
                f"idle for {idle / 3600:.0f} h" if stale else "is of an older layout",
            )
            store.close()
            RocksPartitionStore.destroy(path)
            return RocksPartitionStore(path), StoreOrigin.REBUILT
        return store, StoreOrigin.RESUMED if touched is not None else StoreOrigin.REBUILT

    def on_disk(self) -> frozenset[int]:
        """The partitions with a store on disk that would resume, held or not: written within STORE_MAX_IDLE_SECONDS.

        A store's last write is the newest modification time of its files (RocksDB
        appends every write to its log file), read without opening the store: the
        assignor asks at every join. A store idle longer is rebuilt when opened, so
        it is no reason to send its partition here.
        """
        found: set[int] = set()
        oldest = self._wall_clock() - STORE_MAX_IDLE_SECONDS
        for path in self._root.glob("partition-*"):
            match = re.fullmatch(r"partition-(\d+)", path.name)
            if match is None or int(match[1]) >= 2**31:
                continue
            written = _last_write(path)
            if written is not None and written >= oldest:
                found.add(int(match[1]))
        return frozenset(found)

    def path(self, partition: int) -> Path:
        """The directory of a partition's store under the data directory."""
        return self._root / f"partition-{partition}"

    def close(self) -> None:
        """Close every store (the partitions stay assigned until the next assignment)."""
        for store in self.stores.values():
            store.close()
        self.stores.clear()


def _last_write(path: Path) -> float | None:
    """The newest modification time of the files in `path`; None for none, or for a directory it cannot read.

    Called while a join is sent: an error here would fail the join, so none leaves.
    RocksDB's background compactions delete files while they are listed.
    """
    newest: float | None = None
    try:
        with scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_file():
                        modified = entry.stat().st_mtime
                        newest = modified if newest is None else max(newest, modified)
                except FileNotFoundError:
                    continue  # deleted since it was listed
    except OSError as exc:
        log.warning("cannot read the store directory %s (%s): not named to the assignor", path.name, exc)
        return None
    return newest
