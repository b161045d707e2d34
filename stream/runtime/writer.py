"""The store writer: a batch's writes to the partition stores, in order, without stalling the event loop.

A RocksDB write stall must not stop the event loop, whose heartbeats keep the worker
in its consumer group, so a write RocksDB would make wait, and a large one, goes to
one writer thread. A hop there costs ~1.5 ms on a busy machine, on the path of every
batch, so small writes that need not wait are made on the loop. This module owns the
thread; which writes are due when is the batch cycle's (`cycle.py`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stream.core.state import EntryKind, PartitionStore, StateKind, Update

# Store writes of at most this many updates are made on the event loop (see `StoreWriter.write`).
INLINE_WRITE_MAX = 512

# One partition's store write: partition, updates, next offsets, count deltas.
Write = tuple[int, Sequence[Update], Mapping[StateKind, int] | None, Mapping[EntryKind, int] | None]


class StoreWriter:
    """Writes to the stores of `stores` (the worker's live mapping), one write in flight at a time."""

    def __init__(self, stores: Mapping[int, PartitionStore], *, inline_max: int = INLINE_WRITE_MAX) -> None:
        self._stores = stores
        self._inline_max = inline_max
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")

    async def write(self, writes: Sequence[Write]) -> None:
        """A batch's store writes, in order: on the loop when small and RocksDB need not stall.

        Only one write is in flight at any time (each is awaited), so writes on the
        loop cannot overtake one on the thread.
        """
        if sum(len(updates) for _, updates, _, _ in writes) <= self._inline_max:
            for i, (partition, updates, offsets, counts) in enumerate(writes):
                if not self._stores[partition].apply(updates, offsets, counts, wait=False):
                    writes = writes[i:]  # refused whole: this one and the rest go to the thread
                    break
            else:
                return
        await self.call(self._write, writes)

    async def call(self, fn: Callable[..., object], *args: Any) -> None:
        """Run a store write on the one writer thread: in order, and off the event loop."""
        await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args))

    def close(self) -> None:
        """Wait for the write in flight, then end the thread."""
        self._thread.shutdown(wait=True)

    def _write(self, writes: Sequence[Write]) -> None:
        for partition, updates, offsets, counts in writes:
            self._stores[partition].apply(updates, offsets, counts)
