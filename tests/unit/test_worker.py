"""The worker's bookkeeping that needs no broker: which changelog offsets a batch may record."""

from __future__ import annotations

from pathlib import Path

from stream.config import Settings
from stream.engine import Engine
from stream.metrics import Metrics
from stream.policy import load_policy
from stream.state import MemoryPartitionStore, RocksPartitionStore, StateKind
from stream.worker import FilterWorker

PUBLISHED = Settings().topics.published
DEFERRED = Settings().topics.deferred


def _worker(stored_offset: int) -> FilterWorker:
    settings = Settings()
    worker = FilterWorker(settings, Engine(load_policy(None), b"k", settings.topics), Metrics.create())
    store = MemoryPartitionStore()
    store.apply((), {StateKind.PUBLISHED: stored_offset, StateKind.DEFERRED: stored_offset})
    worker._stores = {0: store}
    return worker


def test_changelog_batches_that_follow_the_stored_offset_advance_it() -> None:
    worker = _worker(10)

    # Acknowledged out of order, two batches of 3 and 2 records from offset 10, on one partition.
    offsets = worker._changelog_offsets([(PUBLISHED, 0, 2, 13), (PUBLISHED, 0, 3, 10), (DEFERRED, 0, 1, 10)])

    assert offsets == {0: {StateKind.PUBLISHED: 15, StateKind.DEFERRED: 11}}


def test_a_gap_before_or_between_batches_leaves_the_offset_for_the_next_restore() -> None:
    worker = _worker(10)

    # Offset 10..11 was written by someone else (a previous owner): they must be read back.
    assert worker._changelog_offsets([(PUBLISHED, 0, 3, 12)]) == {}
    # The first batch follows on, the second does not: nothing moves.
    assert worker._changelog_offsets([(PUBLISHED, 0, 3, 10), (PUBLISHED, 0, 2, 14)]) == {}


def test_outputs_other_than_changelogs_and_partitions_not_held_record_nothing() -> None:
    worker = _worker(10)

    assert worker._changelog_offsets([(Settings().topics.feed, 0, 5, 10), (PUBLISHED, 3, 2, 10)]) == {}


def test_a_store_of_an_older_layout_is_rebuilt_not_misread(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    worker = FilterWorker(settings, Engine(load_policy(None), b"k", settings.topics), Metrics.create())
    path = tmp_path / "state" / "partition-0"
    old = RocksPartitionStore(path)
    old.apply([(b"p:a-1", b'{"account_id": "a-1"}')], {StateKind.PROFILES: 7})
    old._db.delete(b"\x00format")  # as written before the layout was recorded
    old.close()

    store = worker._open_store(0)
    try:
        assert store.compatible()
        assert store.get(b"p:a-1") is None and store.next_offset(StateKind.PROFILES) == 0  # rebuilt from scratch
    finally:
        store.close()
