"""The worker's process set-up that happens before any thread starts."""

from __future__ import annotations

import pytest

from stream import cli


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
    cli._tune_malloc()

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

    cli._tune_malloc()

    assert libc.calls == kept
