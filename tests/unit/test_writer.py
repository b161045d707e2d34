"""The store writer (stream/runtime/writer.py): small writes on the loop, stalled or large ones on its thread."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from stream.core.state import EntryKind, StateKind, Update
from stream.runtime.store import MemoryPartitionStore
from stream.runtime.writer import StoreWriter


class _Recording(MemoryPartitionStore):
    """Records which thread wrote what; refuses writes that may not wait while `stalled`."""

    def __init__(self, log: list[tuple[str, list[Update]]], *, stalled: bool = False) -> None:
        super().__init__()
        self.log = log
        self.stalled = stalled

    def apply(
        self,
        updates: Iterable[Update],
        offsets: Mapping[StateKind, int] | None = None,
        counts: Mapping[EntryKind, int] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        if self.stalled and not wait:
            return False
        updates = list(updates)
        self.log.append((threading.current_thread().name, updates))
        return super().apply(updates, offsets, counts, wait=wait)


async def test_write_small_and_unstalled_is_made_on_the_loop() -> None:
    log: list[tuple[str, list[Update]]] = []
    writer = StoreWriter({0: _Recording(log), 1: _Recording(log)})
    try:
        await writer.write([(0, [(b"a", b"1")], None, None), (1, [(b"b", b"2")], {StateKind.PROFILES: 4}, None)])
    finally:
        writer.close()

    assert [name for name, _ in log] == [threading.current_thread().name] * 2


async def test_write_refused_for_a_stall_goes_with_the_rest_to_the_thread_in_order() -> None:
    log: list[tuple[str, list[Update]]] = []
    stores = {0: _Recording(log), 1: _Recording(log, stalled=True), 2: _Recording(log)}
    writer = StoreWriter(stores)
    try:
        await writer.write([(p, [(b"k%d" % p, b"v")], None, None) for p in (0, 1, 2)])
    finally:
        writer.close()

    assert [updates[0][0] for _, updates in log] == [b"k0", b"k1", b"k2"]
    assert log[0][0] == threading.current_thread().name
    assert all(name.startswith("store-writer") for name, _ in log[1:])
    assert stores[2].get(b"k2") == b"v"


async def test_write_larger_than_the_inline_limit_goes_to_the_thread() -> None:
    log: list[tuple[str, list[Update]]] = []
    writer = StoreWriter({0: _Recording(log)}, inline_max=2)
    try:
        await writer.write([(0, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], None, None)])
    finally:
        writer.close()

    assert [name.startswith("store-writer") for name, _ in log] == [True]


async def test_call_runs_on_the_writer_thread() -> None:
    names: list[str] = []
    writer = StoreWriter({})
    try:
        await writer.call(lambda: names.append(threading.current_thread().name))
    finally:
        writer.close()

    assert names[0].startswith("store-writer")
