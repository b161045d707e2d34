"""The held partitions and their stores (stream/runtime/partitions.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from stream.core.state import StateKind
from stream.runtime import partitions
from stream.runtime.partitions import STORE_MAX_IDLE_SECONDS, HeldPartitions, StoreOrigin
from stream.runtime.store import RocksPartitionStore


def test_open_store_of_an_older_layout_is_rebuilt_not_misread(tmp_path: Path) -> None:
    held = HeldPartitions(tmp_path)
    old = RocksPartitionStore(held.path(0))
    old.apply([(b"p:a-1", b'{"account_id": "a-1"}')], {StateKind.PROFILES: 7})
    old._db.delete(b"\x00format")  # noqa: SLF001, RUF100  # as written before the layout was recorded
    old.close()

    store = held.open(0)
    try:
        assert store.compatible()
        assert store.get(b"p:a-1") is None and store.next_offset(StateKind.PROFILES) == 0  # rebuilt from scratch
    finally:
        store.close()


def test_open_store_idle_too_long_is_rebuilt_and_a_recent_one_resumed(tmp_path: Path) -> None:
    written = RocksPartitionStore(HeldPartitions(tmp_path).path(0))
    written.apply([(b"p:a-1", b"x")], {StateKind.PROFILES: 7})
    written.close()

    resumed = HeldPartitions(tmp_path).open(0)
    try:
        assert resumed.next_offset(StateKind.PROFILES) == 7
    finally:
        resumed.close()

    later = HeldPartitions(tmp_path, wall_clock=lambda: time.time() + STORE_MAX_IDLE_SECONDS + 60)
    rebuilt = later.open(0)
    try:
        assert rebuilt.next_offset(StateKind.PROFILES) == 0
    finally:
        rebuilt.close()


def test_assign_closes_revoked_stores_and_opens_new_ones(tmp_path: Path) -> None:
    held = HeldPartitions(tmp_path)
    assert held.assign([0, 1]) == {0: StoreOrigin.REBUILT, 1: StoreOrigin.REBUILT}  # nothing on disk yet
    kept = held.stores[1]
    held.stores[0].apply([(b"p:a-1", b"x")], {StateKind.PROFILES: 7})

    assert held.assign([1, 2]) == {1: StoreOrigin.KEPT, 2: StoreOrigin.REBUILT}
    try:
        assert held.assigned == frozenset({1, 2}) and sorted(held.stores) == [1, 2]
        assert held.stores[1] is kept  # a partition held on is not reopened
        # 0 comes back: its store on disk resumes; 1, never written, is as good as none.
        assert held.assign([0, 1]) == {0: StoreOrigin.RESUMED, 1: StoreOrigin.KEPT}
    finally:
        held.close()
    assert held.stores == {}
    later = HeldPartitions(tmp_path, wall_clock=lambda: time.time() + STORE_MAX_IDLE_SECONDS + 60)
    try:
        assert later.assign([0]) == {0: StoreOrigin.REBUILT}  # idle too long
    finally:
        later.close()


def test_on_disk_names_the_stores_written_recently_held_or_not_and_nothing_else(tmp_path: Path) -> None:
    held = HeldPartitions(tmp_path)
    assert held.on_disk() == frozenset()  # no state directory yet
    held.assign([0, 3, 5])
    held.assign([3])  # 0 and 5 closed, their stores kept on disk
    (tmp_path / "state" / "partition-x").mkdir()
    (tmp_path / "state" / "partition-99999999999").mkdir()  # not a Kafka partition number
    (tmp_path / "state" / "partition-7").mkdir()  # no store in it
    (tmp_path / "state" / "other-8").mkdir()
    idle = time.time() - STORE_MAX_IDLE_SECONDS - 60
    for entry in (tmp_path / "state" / "partition-5").iterdir():  # last written too long ago: rebuilt if opened
        os.utime(entry, (idle, idle))
    try:
        assert held.on_disk() == frozenset({0, 3})
    finally:
        held.close()


class _Vanished:
    """A directory entry whose file was deleted between the listing and its stat (a RocksDB compaction)."""

    name = "000042.sst"

    def is_file(self) -> bool:
        return True

    def stat(self) -> os.stat_result:
        raise FileNotFoundError(self.name)


def test_on_disk_skips_files_deleted_while_listed_and_directories_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Called while a join is sent: an error would fail the join, so none may leave.
    held = HeldPartitions(tmp_path)
    held.assign([0, 1])
    held.assign([])
    listing = os.scandir

    class Listing(list[Any]):  # iterated, or used as a context manager, like os.scandir's
        def __enter__(self) -> Listing:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    def scandir(path: Path) -> Listing:
        if Path(path).name == "partition-1":
            raise PermissionError(13, "Permission denied")
        with listing(path) as entries:
            return Listing([_Vanished(), *entries])

    monkeypatch.setattr(partitions, "scandir", scandir)
    assert held.on_disk() == frozenset({0})
