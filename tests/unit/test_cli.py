"""The worker's process set-up that happens before any thread starts."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from stream import cli
from stream.config import Settings
from stream.errors import ConfigError


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> _FakeLibc:
    fake = _FakeLibc()
    monkeypatch.setattr(cli.ctypes, "CDLL", lambda name: fake)
    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    return fake


def test_malloc_caps_arenas_and_fixes_the_mmap_threshold(libc: _FakeLibc) -> None:
    cli.tune_malloc()

    # M_ARENA_MAX = -8, M_MMAP_THRESHOLD = -3 (glibc's malloc.h)
    assert libc.calls == [(-8, 2), (-3, cli.MMAP_THRESHOLD_BYTES)]


@pytest.mark.parametrize(
    ("name", "value", "kept"),
    [
        ("MALLOC_ARENA_MAX", "4", [(-3, cli.MMAP_THRESHOLD_BYTES)]),
        ("MALLOC_MMAP_THRESHOLD_", "65536", [(-8, 2)]),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536", [(-8, 2)]),
    ],
)
def test_malloc_leaves_what_the_operator_set(
    libc: _FakeLibc, monkeypatch: pytest.MonkeyPatch, name: str, value: str, kept: list[tuple[int, int]]
) -> None:
    monkeypatch.setenv(name, value)

    cli.tune_malloc()

    assert libc.calls == kept


def test_event_loop_setting_defaults_to_uvloop_and_rejects_others() -> None:
    assert Settings.from_env({"STREAM_DEV_MODE": "1"}).event_loop == "uvloop"
    assert Settings.from_env({"STREAM_DEV_MODE": "1", "STREAM_EVENT_LOOP": " AsyncIO "}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="STREAM_EVENT_LOOP='tokio': expected uvloop or asyncio"):
        Settings.from_env({"STREAM_DEV_MODE": "1", "STREAM_EVENT_LOOP": "tokio"})


@pytest.mark.parametrize(("name", "loop_type"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)])
def test_worker_runs_on_the_event_loop_it_was_set_to(name: str, loop_type: type) -> None:
    async def running() -> type:
        return type(asyncio.get_running_loop())

    try:
        cli.use_event_loop(name)
        assert issubclass(asyncio.run(running()), loop_type)
    finally:
        asyncio.set_event_loop_policy(None)
