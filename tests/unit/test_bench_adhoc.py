"""`python -m bench ... --no-write`: an ad hoc run leaves the figures of record alone.

The benchmarks' results merge across invocations into results.json, which
docs/benchmarks.md is rendered from; a trial between two `make bench` runs must not
become their figures, configuration or commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from bench import common, report
from bench import run as harness


@pytest.fixture
def stubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """The harness pointed at `tmp_path`, its benchmarks replaced by one that saves a result."""
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results.json")
    (tmp_path / "results.json").write_text('{"of": "record"}')
    seen: list[argparse.Namespace] = []

    async def bench(args: argparse.Namespace) -> int:
        seen.append(args)
        results = harness.load_results()
        harness.save({**results, "drain": {"events_per_second": 1}})
        return 0

    def run(main: Coroutine[Any, Any, int]) -> int:
        return asyncio.run(main)

    def render(results: dict[str, Any]) -> None:
        raise AssertionError("rendered the docs")

    monkeypatch.setattr(harness, "main_async", bench)
    monkeypatch.setattr(harness.uvloop, "run", run)
    monkeypatch.setattr(report, "render", render)
    return seen


def test_no_write_leaves_results_json_and_the_docs_and_keeps_its_own_results(
    stubbed: list[argparse.Namespace], tmp_path: Path
) -> None:
    assert harness.main(["drain", "--no-write"]) == 0
    assert json.loads((tmp_path / "results.json").read_text()) == {"of": "record"}
    (adhoc,) = tmp_path.glob("adhoc-*.json")
    assert json.loads(adhoc.read_text()) == {"drain": {"events_per_second": 1}}
    assert stubbed[0].no_render


def test_without_no_write_the_results_merge_into_results_json(
    stubbed: list[argparse.Namespace], tmp_path: Path
) -> None:
    # The same stub writes where the figures of record are: what --no-write avoids.
    assert harness.main(["drain", "--no-render"]) == 0
    assert json.loads((tmp_path / "results.json").read_text()) == {"of": "record", "drain": {"events_per_second": 1}}
    assert not list(tmp_path.glob("adhoc-*.json"))


def test_no_write_with_report_is_refused(stubbed: list[argparse.Namespace]) -> None:
    with pytest.raises(SystemExit) as exited:
        harness.main(["report", "--no-write"])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("argv", "beyond"),
    [
        (["rate"], harness.FULL["ladder_beyond"]),
        (["rate", "--rates", "1000,3000"], 0),
        (["rate", "--rates", "1000,3000", "--ladder-beyond", "500"], 500),
        (["rate", "--quick"], harness.QUICK["ladder_beyond"]),
    ],
)
def test_the_ladder_goes_past_the_default_rates_only(
    stubbed: list[argparse.Namespace], argv: list[str], beyond: int
) -> None:
    assert harness.main([*argv, "--no-write"]) == 0
    assert stubbed[0].ladder_beyond == beyond
