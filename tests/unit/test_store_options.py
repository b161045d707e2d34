"""The RocksDB options that keep a lookup cheap are the ones the store opens with.

RocksDB writes the options a database was opened with to its OPTIONS file; reading
it back checks what reached RocksDB, not what our code meant to set.
"""

from __future__ import annotations

from pathlib import Path

from stream.runtime.store import MEMTABLE_BLOOM_RATIO, RocksPartitionStore


def _options_written(path: Path) -> dict[str, str]:
    latest = sorted(path.glob("OPTIONS-*"))[-1]
    pairs = (line.strip().split("=", 1) for line in latest.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def test_lookups_that_miss_are_answered_by_bloom_filters(tmp_path: Path) -> None:
    store = RocksPartitionStore(tmp_path / "p0")
    store.close()
    written = _options_written(tmp_path / "p0")
    # The files' filters (partitioned, cached, bounded by the shared budget) ...
    assert written["filter_policy"].startswith("bloomfilter")
    assert written["partition_filters"] == "true"
    assert written["cache_index_and_filter_blocks"] == "true"
    # ... and the memtables' own: a miss does not walk their skiplists.
    assert written["memtable_whole_key_filtering"] == "true"
    assert float(written["memtable_prefix_bloom_size_ratio"]) == MEMTABLE_BLOOM_RATIO


def test_reads_see_writes_in_the_memtable_and_after_reopening(tmp_path: Path) -> None:
    # The memtable filter must never hide a key that is there (a false negative
    # would make a stored objection or published item look absent).
    store = RocksPartitionStore(tmp_path / "p0")
    keys = [f"p:{i:06d}".encode() for i in range(20_000)]
    store.apply([(k, b"v") for k in keys[::2]])
    assert store.get_many(keys) == [b"v" if i % 2 == 0 else None for i in range(len(keys))]
    store.close()
    store = RocksPartitionStore(tmp_path / "p0")
    try:
        assert store.get_many(keys) == [b"v" if i % 2 == 0 else None for i in range(len(keys))]
    finally:
        store.close()
