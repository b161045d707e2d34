"""The packed state values, the store's layout version and its memory budget."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from stream.config import Settings
from stream.core.models import ObjectionStatus, Profile
from stream.core.state import (
    STORE_FORMAT,
    EntryKind,
    StateKind,
    pack_objection,
    pack_profile,
    unpack_objection,
    unpack_profile,
)
from stream.errors import ConfigError
from stream.runtime.app import build_app
from stream.runtime.store import (
    MEMORY_BUDGET_BYTES,
    MEMTABLE_BUDGET_BYTES,
    RocksPartitionStore,
    configure_memory,
    memory_budget,
    memory_usage,
    memtable_limit,
    store_options,
)

_UTC_TIMES = st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)
)


@given(
    birth=st.none() | st.dates(min_value=dt.date(1, 1, 1)),
    country=st.none() | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=2),
    notified=st.none() | _UTC_TIMES,
    updated=_UTC_TIMES,
)
def test_profile_survives_packing(
    birth: dt.date | None, country: str | None, notified: dt.datetime | None, updated: dt.datetime
) -> None:
    profile = Profile("acct-1", birth, country, notified, updated)

    # What the rule reads comes back exactly; `updated_at`, which it never reads, is not built.
    assert unpack_profile("acct-1", pack_profile(profile)) == Profile("acct-1", birth, country, notified, None)


@pytest.mark.parametrize("status", list(ObjectionStatus))
def test_objection_status_survives_packing(status: ObjectionStatus) -> None:
    assert unpack_objection(pack_objection(status)) is status


def test_unknown_stored_objection_reads_as_objected() -> None:
    assert unpack_objection(b"?") is ObjectionStatus.OBJECTED


def test_store_records_its_layout_and_an_older_one_is_not_compatible(tmp_path: Path) -> None:
    new = RocksPartitionStore(tmp_path / "new")
    assert new.compatible()  # nothing written yet
    new.apply([(b"p:a", b"x")], {StateKind.PROFILES: 1})
    assert new.compatible() and new.get(b"\x00format") == STORE_FORMAT
    new.close()

    old = RocksPartitionStore(tmp_path / "old")
    old.apply([], {StateKind.PROFILES: 1})
    old.close()
    # As written before the layout was recorded: offsets, no format (RocksDB itself, not the store, removes it).
    db = Rdict(str(tmp_path / "old"))
    db.delete(b"\x00format")
    db.close()
    old = RocksPartitionStore(tmp_path / "old")
    assert not old.compatible()
    old.close()


def test_stores_share_one_memtable_budget_that_flushes_instead_of_growing(tmp_path: Path) -> None:
    # A budget of the test's own, smaller than the worker's, keeps the writes small:
    # ~58 MiB over 4 stores, under 16 MiB (the write buffer) each. Without the shared
    # budget no memtable would fill and all of it would stay in memory. With it, the
    # store written past the memtable budget flushes; the flush runs in the background,
    # so usage may overshoot the budget while it does, never by a whole store's share.
    memory, memtables = 64 << 20, 24 << 20
    cache, write_buffers = memory_budget(memory, memtables)
    options = store_options(budget=(cache, write_buffers))
    stores = [RocksPartitionStore(tmp_path / str(p), options) for p in range(4)]
    try:
        value = bytes(100)
        for round_ in range(60):
            for p, store in enumerate(stores):
                store.apply((b"i:%d:%d:%d" % (p, round_, n), value) for n in range(2_000))
            assert write_buffers.get_usage() <= memtables * 1.5
        assert write_buffers.get_usage() > 0
        assert cache.get_usage() <= memory  # the memtables are charged to the cache
        assert stores[0].get(b"i:0:0:0") == value  # flushed, not dropped
        assert any(store.path.glob("*.sst") for store in stores)
        assert cache.get_usage() - write_buffers.get_usage() > 0  # read back through the budget's cache
    finally:
        for store in stores:
            store.close()


def test_the_worker_stores_use_the_process_budget(tmp_path: Path) -> None:
    # Stores opened with the default options share the process's budget, which
    # `memory_usage` (the eligibility_store_memory_bytes metric) reports.
    stores = [RocksPartitionStore(tmp_path / str(p)) for p in range(2)]
    try:
        before = memory_usage()["memtables"]
        for p, store in enumerate(stores):
            store.apply((b"i:%d:%d" % (p, n), bytes(100)) for n in range(20_000))
        used = memory_usage()
        assert used["memtables"] > before
        assert used["memtables"] <= MEMTABLE_BUDGET_BYTES * 1.5
        assert used["memtables"] + used["block_cache"] <= MEMORY_BUDGET_BYTES
    finally:
        for store in stores:
            store.close()


@pytest.mark.parametrize("mib", [32, 48, 1024])
def test_the_process_budget_takes_its_size_from_the_setting_with_the_memtables_at_their_share(
    mib: int, tmp_path: Path
) -> None:
    # STREAM_STORE_MEMORY_MIB reaches the budget through the composition root; stores
    # opened before (the default options share the budget) are resized with it.
    store = RocksPartitionStore(tmp_path / "before")
    try:
        build_app(Settings(data_dir=tmp_path, dev_mode=True, store_memory_mib=mib))
        assert memtable_limit() == (mib << 20) * 56 // 96
        # Written past the new limit, the memtables are flushed back under it.
        for round_ in range(8):
            store.apply((b"i:%d:%d" % (round_, n), bytes(100)) for n in range(20_000))
        assert memory_usage()["memtables"] <= memtable_limit() * 1.5
        assert memory_usage()["memtables"] + memory_usage()["block_cache"] <= mib << 20
    finally:
        store.close()
        configure_memory(MEMORY_BUDGET_BYTES)  # the default again, for the tests after this one
    assert memtable_limit() == MEMTABLE_BUDGET_BYTES


def test_the_store_memory_setting_is_read_and_a_budget_below_its_minimum_refused() -> None:
    dev = {"STREAM_DEV_MODE": "1"}
    assert Settings.from_env(dev).store_memory_mib == 96
    assert Settings.from_env({**dev, "STREAM_STORE_MEMORY_MIB": "512"}).store_memory_mib == 512
    for bad, why in (("31", "below its minimum 32"), ("1.5", "not a whole number"), ("lots", "not a whole number")):
        with pytest.raises(ConfigError, match=why):
            Settings.from_env({**dev, "STREAM_STORE_MEMORY_MIB": bad})


def test_apply_without_waiting_refuses_a_write_stall_and_writes_nothing(tmp_path: Path) -> None:
    def stalling() -> Options:
        # Two tiny memtables, no compaction, writes stop at two L0 files: RocksDB soon has to stall.
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(64 << 10)
        options.set_max_write_buffer_number(2)
        options.set_level_zero_slowdown_writes_trigger(1)
        options.set_level_zero_stop_writes_trigger(2)
        options.set_disable_auto_compactions(True)
        return options

    store = RocksPartitionStore(tmp_path / "p", stalling())
    try:
        written = 0
        for i in range(20_000):
            key = b"k%06d" % i
            if not store.apply([(key, bytes(1000))], {StateKind.PROFILES: i + 1}, {EntryKind.PUBLISHED: 1}, wait=False):
                assert store.get(key) is None  # refused whole: neither the update nor its offset
                assert store.next_offset(StateKind.PROFILES) == written
                assert store.counts()[EntryKind.PUBLISHED] == written  # nor its count, kept in memory
                break
            written = i + 1
        else:
            pytest.fail("RocksDB never had to stall")
        assert written > 0 and store.get(b"k%06d" % (written - 1)) == bytes(1000)
    finally:
        store.close()


def test_entry_counts_are_kept_in_step_with_writes_and_read_back_after_a_reopen(tmp_path: Path) -> None:
    store = RocksPartitionStore(tmp_path / "p")
    try:
        store.apply([(b"i:a", b"1"), (b"i:b", b"1")], None, {EntryKind.PUBLISHED: 2, EntryKind.DEFERRED: 0})
        store.apply([(b"i:a", None)], None, {EntryKind.PUBLISHED: -1})
        store.apply([], {StateKind.PROFILES: 7})  # no count change
        assert store.counts()[EntryKind.PUBLISHED] == 1
        store.counts()[EntryKind.PUBLISHED] = 99  # a copy: the caller cannot change the store's
        assert store.counts()[EntryKind.PUBLISHED] == 1
    finally:
        store.close()
    reopened = RocksPartitionStore(tmp_path / "p")
    try:
        assert reopened.counts()[EntryKind.PUBLISHED] == 1 and reopened.counts()[EntryKind.DEFERRED] == 0
    finally:
        reopened.close()


def test_a_write_reads_no_count_back_from_rocksdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RocksPartitionStore(tmp_path / "p")
    try:
        store.apply([(b"i:a", b"1")], None, {EntryKind.PUBLISHED: 1})
        reads: list[bytes] = []
        real_get = store.get
        monkeypatch.setattr(store, "get", lambda key: reads.append(key) or real_get(key))
        for i in range(3):
            store.apply([(b"i:b%d" % i, b"1")], {StateKind.PROFILES: i}, {EntryKind.PUBLISHED: 1})
        assert reads == []  # the counts are kept in memory, not read back for every write
        assert store.counts()[EntryKind.PUBLISHED] == 4
    finally:
        store.close()
