"""The cost of the engine's batched store reads, in process: `python -m bench.store_reads`.

One RocksDB partition store (`stream.runtime.store.RocksPartitionStore`, the worker's
options) fed as a worker feeds one of four partitions of a 100,000-account drain:
each batch reads, for every content event, the keys the engine reads ahead
(`ContentSteps.lookups`: the item's latest version, held copy and published-index
entry, which for a new item all miss, and the author's profile and objection), in
one `get_many`, then writes what a batch writes (every item's version, a third of
them published). The figure is the CPU time (`time.process_time`) of the `get_many`
calls per key read. The baseline, measured in the same run and alternating with it,
is the same store with the memtable bloom filter off (`memtable_bloom_ratio=0`).
bench/notes.md ("RocksDB reads") records the figures.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

from stream.core.state import (
    deferred_due_key,
    item_id,
    objection_key,
    profile_key,
    published_item_key,
    version_key,
)
from stream.runtime.store import MEMTABLE_BLOOM_RATIO, RocksPartitionStore, store_options


def run(memtable_bloom_ratio: float, *, accounts: int, batches: int, batch: int, seed: int) -> float:
    """CPU microseconds per key read over `batches` batches of `batch` events each."""
    root = Path(tempfile.mkdtemp(prefix="bench-store-reads-"))
    store = RocksPartitionStore(root / "p0", store_options(memtable_bloom_ratio=memtable_bloom_ratio))
    try:
        rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
        authors = [f"acct-{i:08d}" for i in range(accounts)]
        store.apply([(profile_key(a), b"p" * 30) for a in authors])
        store.apply([(objection_key(a), b"O") for a in authors[: accounts // 50]])
        spent, read, n = 0.0, 0, 0
        for _ in range(batches):
            items = []
            for _ in range(batch):
                n += 1
                author = rng.choice(authors)
                items.append((author, item_id(author, f"content-{n:010d}")))
            keys: list[bytes] = []
            for author, item in items:
                keys += (version_key(item), deferred_due_key(item), published_item_key(item))
                keys += (profile_key(author), objection_key(author))
            started = time.process_time()
            store.get_many(keys)
            spent += time.process_time() - started
            read += len(keys)
            writes = [(version_key(item), b"v" * 29) for _, item in items]
            writes += [(published_item_key(item), b"i" * 20) for _, item in items[::3]]
            store.apply(writes)
        return spent / read * 1e6
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run both variants alternately and print each repetition's figure."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_reads", description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=25_000, help="accounts of the partition [25,000]")
    parser.add_argument("--batches", type=int, default=60, help="batches per repetition [60]")
    parser.add_argument("--batch", type=int, default=2_500, help="content events per batch [2,500]")
    parser.add_argument("--repetitions", type=int, default=3, help="alternating pairs [3]")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    variants = (
        ("memtable bloom off (baseline)", 0.0),
        (f"memtable bloom {MEMTABLE_BLOOM_RATIO}", MEMTABLE_BLOOM_RATIO),
    )
    figures: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.repetitions):
        for name, ratio in variants:
            us = run(ratio, accounts=args.accounts, batches=args.batches, batch=args.batch, seed=args.seed)
            figures[name].append(us)
            print(f"{name}: {us:.3f} us per key read", flush=True)
    for name, values in figures.items():
        print(f"{name}: best {min(values):.3f}, all {', '.join(f'{v:.3f}' for v in values)} us per key read")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
