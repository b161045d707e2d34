"""The benchmark runs every consumer on the image's allocator where it is installed, and says which ran."""

from __future__ import annotations

import pytest

from bench import common
from stream.cli import JEMALLOC_ENV
from stream.config import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({"STREAM_DEV_MODE": "1"})


def test_consumers_get_the_image_allocator_where_it_is_installed(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(common.ctypes.util, "find_library", lambda name: "libjemalloc.so.2")

    env = common.process_env(settings)

    assert {k: env[k] for k in JEMALLOC_ENV} == JEMALLOC_ENV


def test_consumers_get_the_system_malloc_where_jemalloc_is_missing(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("MALLOC_CONF", raising=False)
    monkeypatch.setattr(common.ctypes.util, "find_library", lambda name: None)

    env = common.process_env(settings)

    assert "LD_PRELOAD" not in env and "MALLOC_CONF" not in env


def test_a_preload_of_the_callers_own_is_kept(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("LD_PRELOAD", "libtcmalloc.so.4")
    monkeypatch.delenv("MALLOC_CONF", raising=False)
    monkeypatch.setattr(common.ctypes.util, "find_library", lambda name: "libjemalloc.so.2")

    env = common.process_env(settings)

    assert env["LD_PRELOAD"] == "libtcmalloc.so.4" and "MALLOC_CONF" not in env


@pytest.mark.parametrize(
    ("preload", "library", "recorded"),
    [
        (None, "libjemalloc.so.2", "libjemalloc.so.2"),
        (None, None, "the system's malloc"),
        ("", None, "the system's malloc"),
        ("libtcmalloc.so.4", "libjemalloc.so.2", "libtcmalloc.so.4"),
    ],
)
def test_the_run_records_the_allocator_its_consumers_get(
    monkeypatch: pytest.MonkeyPatch, preload: str | None, library: str | None, recorded: str
) -> None:
    if preload is None:
        monkeypatch.delenv("LD_PRELOAD", raising=False)
    else:
        monkeypatch.setenv("LD_PRELOAD", preload)
    monkeypatch.setattr(common.ctypes.util, "find_library", lambda name: library)

    assert common.allocator_name() == recorded
