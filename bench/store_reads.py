"""The cost of the engine's batched store reads, in process: `python -m bench.store_reads [bloom|budget]`.

Partition stores (`stream.runtime.store.RocksPartitionStore`, the worker's options)
fed as a worker feeds them: each batch reads, for every content event, the keys the
engine reads ahead (`ContentSteps.lookups`: the item's latest version, held copy and
published-index entry, which for a new item all miss, and the author's profile and
objection), in one `get_many` per store, then writes what a batch writes (every
item's version, a third of them published). Two comparisons, each variant against
its baseline in the same run, alternating:

- `bloom`: one store as one of four partitions of a 100,000-account drain, with the
  memtable bloom filter (the worker's) and without it (`memtable_bloom_ratio=0`); the
  figure is the CPU time (`time.process_time`) of the `get_many` calls per key read.
- `budget`: four stores sharing one memory budget, over 1,000,000 accounts and as
  many events (the drain's sizes), with the worker's budget and with the budget it
  had before (64 MiB, of which 24 MiB memtables); the figures are the process's CPU
  time per event (reads, writes and RocksDB's flush and compaction threads), the
  reads' share of it, and the memtable flushes RocksDB logged.

bench/notes.md ("RocksDB reads", "The memtable budget") records the figures.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import struct
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
from stream.runtime.store import (
    MEMORY_BUDGET_BYTES,
    MEMTABLE_BLOOM_RATIO,
    MEMTABLE_BUDGET_BYTES,
    RocksPartitionStore,
    memory_budget,
    store_options,
)

# Stored values shaped like the engine's (stream/core/state.py): a profile's packed
# birth date, two timestamps and country; an item version's times, partition, offset
# and event id; a published entry's time and offset.
_PROFILE = struct.Struct(">iqq2s")
_VERSION = struct.Struct(">qq?iq")
_PUBLISHED = struct.Struct(">qq")
_NOW_US = 1_764_000_000_000_000


def _lookups(items: list[tuple[str, bytes]]) -> list[bytes]:
    """The keys the engine reads ahead for these (author, item id) upserts, in its order."""
    keys: list[bytes] = []
    for author, item in items:
        keys += (version_key(item), deferred_due_key(item), published_item_key(item))
        keys += (profile_key(author), objection_key(author))
    return keys


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
            keys = _lookups(items)
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


def _cpu() -> float:
    """CPU seconds of the whole process (every thread, RocksDB's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_budget(
    memory_bytes: int, memtable_bytes: int, *, accounts: int, events: int, batch: int, seed: int
) -> tuple[float, float, int]:
    """(process CPU µs per event, `get_many` CPU µs per event, memtable flushes) for four stores sharing a budget."""
    root = Path(tempfile.mkdtemp(prefix="bench-store-budget-"))
    options = store_options(budget=memory_budget(memory_bytes, memtable_bytes))
    stores = [RocksPartitionStore(root / f"p{i}", options) for i in range(4)]
    try:
        rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
        authors = [f"acct-{i:08d}" for i in range(accounts)]
        chunk = 5_000  # consecutive accounts per store, as a partitioner spreads them (any split will do)
        for i in range(0, accounts, chunk):
            stores[(i // chunk) % 4].apply(
                [
                    (profile_key(a), _PROFILE.pack(720_000 + rng.randrange(20_000), _NOW_US, _NOW_US, b"GB"))
                    for a in authors[i : i + chunk]
                ]
            )
        started, reads, n = _cpu(), 0.0, 0
        for _ in range(events // batch):
            per_store: list[list[tuple[str, bytes]]] = [[] for _ in stores]
            for _ in range(batch):
                n += 1
                j = rng.randrange(accounts)
                per_store[(j // chunk) % 4].append((authors[j], item_id(authors[j], f"content-{n:010d}")))
            for store, items in zip(stores, per_store, strict=True):
                read_from = time.process_time()
                store.get_many(_lookups(items))
                reads += time.process_time() - read_from
                at = _NOW_US + rng.randrange(10**10)
                event_id = f"{rng.getrandbits(128):032x}".encode()
                writes = [
                    (version_key(item), _VERSION.pack(at, at // 1000, False, 1, n) + event_id) for _, item in items
                ]
                writes += [(published_item_key(item), _PUBLISHED.pack(at, n)) for _, item in items[::3]]
                store.apply(writes)
        spent = _cpu() - started
        for store in stores:
            store.close()
        # RocksDB's event log in each store's LOG file: one line per flush begun.
        flushes = sum((root / f"p{i}" / "LOG").read_text().count('"flush_started"') for i in range(len(stores)))
        return spent / events * 1e6, reads / events * 1e6, flushes
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _compare_bloom(args: argparse.Namespace) -> None:
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


def _compare_budget(args: argparse.Namespace) -> None:
    mib = 1 << 20
    variants = (
        ("budget 64 MiB, memtables 24 MiB (baseline)", 64 * mib, 24 * mib),
        (
            f"budget {MEMORY_BUDGET_BYTES // mib} MiB, memtables {MEMTABLE_BUDGET_BYTES // mib} MiB (the worker's)",
            MEMORY_BUDGET_BYTES,
            MEMTABLE_BUDGET_BYTES,
        ),
    )
    for _ in range(args.repetitions):
        for name, memory, memtables in variants:
            total, reads, flushes = run_budget(
                memory, memtables, accounts=args.accounts, events=args.events, batch=args.batch, seed=args.seed
            )
            print(f"{name}: {total:.2f} us CPU per event, reads {reads:.2f}, {flushes} flushes", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one comparison's variants alternately and print each repetition's figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_reads", description=__doc__.splitlines()[0])
    parser.add_argument("compare", nargs="?", choices=("bloom", "budget"), default="bloom")
    parser.add_argument("--accounts", type=int, help="accounts [bloom 25,000 in the partition; budget 1,000,000]")
    parser.add_argument("--batches", type=int, default=60, help="bloom: batches per repetition [60]")
    parser.add_argument("--events", type=int, default=1_000_000, help="budget: content events [1,000,000]")
    parser.add_argument("--batch", type=int, help="content events per batch [bloom 2,500; budget 500]")
    parser.add_argument("--repetitions", type=int, default=3, help="alternating pairs [3]")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.compare == "bloom":
        args.accounts = args.accounts or 25_000
        args.batch = args.batch or 2_500
        _compare_bloom(args)
    else:
        args.accounts = args.accounts or 1_000_000
        args.batch = args.batch or 500
        _compare_budget(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
