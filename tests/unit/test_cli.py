"""The worker's process set-up that happens before any thread starts."""

from __future__ import annotations

import asyncio
import ctypes.util
import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import faust
import pytest
import uvloop

import stream.runtime.app
import stream.runtime.topics
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
    monkeypatch.setattr(cli, "allocator", lambda: "system")
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


def test_malloc_is_left_alone_under_jemalloc(libc: _FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "allocator", lambda: "jemalloc")

    cli.tune_malloc()

    assert libc.calls == []


def test_allocator_is_read_from_the_mappings() -> None:
    glibc = "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    jemalloc = "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"

    assert cli.allocator(glibc) == "system"
    assert cli.allocator(glibc + jemalloc) == "jemalloc"


def test_the_image_allocator_environment_loads_jemalloc_where_it_is_installed() -> None:
    # The environment the Dockerfile sets, in a fresh interpreter: jemalloc is what the
    # process runs on wherever the dynamic linker finds the library (the image installs
    # it); elsewhere the preload is skipped and the system's malloc serves.
    env = {**os.environ, **cli.JEMALLOC_ENV}
    out = subprocess.run(
        [sys.executable, "-c", "from stream.cli import allocator; print(allocator())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    expected = "jemalloc" if ctypes.util.find_library("jemalloc") else "system"
    assert out.stdout.strip() == expected


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


@pytest.fixture
def thresholds() -> Iterator[None]:
    """The test process's collector thresholds, as they were, after the test."""
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_collector_collects_the_young_generation_later_and_keeps_the_older_thresholds(thresholds: None) -> None:
    gc.set_threshold(700, 11, 12)

    cli.tune_collector()

    assert gc.get_threshold() == (cli.YOUNG_COLLECTION_THRESHOLD, 11, 12)
    assert cli.YOUNG_COLLECTION_THRESHOLD > 700


def test_worker_starts_with_the_young_threshold_raised(
    thresholds: None, libc: _FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    class _Worker:
        """Faust's worker, as far as `_worker` uses it: what the collector is when it would start."""

        def __init__(self, app: Any, **options: Any) -> None:
            self.spinner: object = object()

        def execute_from_commandline(self) -> None:
            seen.append(gc.get_threshold()[0])

    async def no_check(settings: Settings) -> dict[str, int]:
        return {}

    monkeypatch.setattr(faust, "Worker", _Worker)
    monkeypatch.setattr(stream.runtime.topics, "check_layout", no_check)
    monkeypatch.setattr(stream.runtime.app, "build_app", lambda settings: (object(), None))
    monkeypatch.setattr(cli, "use_event_loop", lambda name: None)
    monkeypatch.setattr(cli.logs, "configure", lambda *_: None)
    monkeypatch.setattr(cli.zstd_codec, "install", lambda: None)
    monkeypatch.setenv("STREAM_DEV_MODE", "1")
    monkeypatch.delenv("STREAM_WORKER_PROCESSES", raising=False)
    gc.set_threshold(700, 10, 10)

    assert cli.main(["worker"]) == 0

    assert seen == [cli.YOUNG_COLLECTION_THRESHOLD]
