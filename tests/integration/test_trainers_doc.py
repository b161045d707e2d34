"""docs/trainers.md's worked example runs as written: its ```python blocks, in order, against
the real broker, with the feed changing between the export and the retractions."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from .harness import committed, process_env, read_until, running_worker, unique_settings
from .test_feed import ELIGIBLE, LEAVES, _drained, _leave, _scenario

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "trainers.md"


def _blocks() -> list[str]:
    """The worked example: every ```python block (the recipes are ```py, for frameworks not installed)."""
    return re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.M | re.S)


def test_trainers_doc_worked_example_has_three_blocks() -> None:
    assert len(_blocks()) == 3


async def test_trainers_doc_worked_example_runs_and_ends_with_the_live_feed(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    for name, value in process_env(settings).items():
        if name.startswith(("KAFKA_", "STREAM_TOPIC_")):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    export_block, retract_block, follow_block = _blocks()
    namespace: dict[str, Any] = {}
    await _scenario(settings)
    async with running_worker(settings):
        await _drained(settings, "before")
        await asyncio.to_thread(exec, export_block, namespace)
        assert set(namespace["dataset"]) == ELIGIBLE
        assert (tmp_path / "datasets" / "2026-12-01" / "manifest.json").exists()

        await _leave(settings)
        await read_until(settings, settings.topics.retractions, len(LEAVES))
        await _drained(settings, "after")

    await asyncio.to_thread(exec, retract_block, namespace)
    assert set(namespace["dataset"]) == ELIGIBLE - LEAVES
    acknowledged = await committed(replace(settings, group_id="trainer-llm-a"), settings.topics.retractions)
    assert sum(o or 0 for o in acknowledged.values()) == len(LEAVES)

    await asyncio.to_thread(exec, follow_block, namespace)
    assert set(namespace["dataset"]) == (ELIGIBLE - LEAVES) | {"c-gb-3"}
