"""The echo floor's command line (bench/baseline_echo.py): each option reaches the loop it configures.

The integration test (tests/integration/test_echo_floor.py) checks what each variant
echoes on the real broker; these check that `--work-ms` and `--pipelined` are what
the loop is given, since a lost option would only show as a wrong figure in bench/notes.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bench import baseline_echo, common


def _options(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> dict[str, Any]:
    """The keyword arguments `main(argv)` runs the echo loop with."""
    seen: dict[str, Any] = {}

    async def run(settings: Any, stop: asyncio.Event, **options: Any) -> None:
        seen.update(options)

    def run_baseline(loop_of: Callable[[Any, asyncio.Event], Awaitable[None]]) -> int:
        asyncio.run(loop_of(None, asyncio.Event()))  # type: ignore[arg-type]
        return 0

    monkeypatch.setattr(baseline_echo, "run", run)
    monkeypatch.setattr(common, "run_baseline", run_baseline)
    assert baseline_echo.main(argv) == 0
    return seen


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"ordered": False, "work_ms": 0.0, "pipelined": False}),
        (["--ordered"], {"ordered": True, "work_ms": 0.0, "pipelined": False}),
        (["--ordered", "--work-ms", "2.5"], {"ordered": True, "work_ms": 2.5, "pipelined": False}),
        # Pipelined steps are the ordered ones: the option implies the order.
        (["--work-ms", "5", "--pipelined"], {"ordered": True, "work_ms": 5.0, "pipelined": True}),
    ],
)
def test_each_option_reaches_the_echo_loop(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: dict[str, Any]
) -> None:
    assert _options(monkeypatch, argv) == expected


def test_the_work_per_batch_is_spent_on_the_calling_thread() -> None:
    started = time.thread_time()
    baseline_echo._work(20)  # noqa: SLF001 - our own helper
    # CPU time of this thread, not wall time: the work is what a decision would cost the loop.
    assert time.thread_time() - started >= 0.005
