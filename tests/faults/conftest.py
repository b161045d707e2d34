"""Fault-injection suite: collects each scenario's figures for docs/reliability.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES: list[dict[str, Any]] = []


@pytest.fixture(scope="session", autouse=True)
def reliability_report() -> Iterator[list[dict[str, Any]]]:
    """With RELIABILITY_REPORT=1 (`make faults`), write the figures of this run to docs/reliability.md."""
    yield FIGURES
    if os.environ.get("RELIABILITY_REPORT") != "1" or not FIGURES:
        return
    rows = "\n".join(
        f"| {f['scenario']} | {f['checked']} | {f['events']} | {f['violations']} | {f['losses']} | "
        f"{f['duplicates']} | {f['recovery']} |"
        for f in FIGURES
    )
    table = f"""<!-- faults:begin (written by `make faults`: tests/faults/conftest.py) -->
## The fault-injection suite

Every scenario runs against the real Kafka broker with the real worker process
(`python -m stream worker`), then waits until the worker has committed a marker
event on every content partition (so every state change before it is applied and
its retractions are on the feed), and ends with the independent verifier
(`python -m stream verify`, its own implementation of the rule) over the inputs
and the compacted feed. The assertion of each is the verifier's zero violations,
zero losses and zero minimisation problems.

Reproduce: `make faults` (the suite alone, and this section rewritten) or `make test`
(the suite with everything else). Last run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC,
{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}.

| scenario | what was checked | content events | violations | losses | duplicate feed records | recovery |
|---|---|---|---|---|---|---|
{rows}

*Duplicate feed records* counts feed records (not tombstones) repeating an item
and source event already on the feed: at-least-once replays after a crash. They
are harmless on the compacted feed (the same item again) and are reported, not
failed. *Recovery* is the time from the restarted (or remaining) worker's start
to its `/ready`, or to the end of the drain for SIGTERM.

*Static membership.* The rows naming `STREAM_GROUP_INSTANCE_ID` run the workers
with an instance id. Their kill -9 row is the same fault as the kill -9 rows
above, whose replacement joins without one and waits for the dead member's session
(30 s) before it gets the partitions; under the same id it takes them over at once.
The restart row also asserts that the other worker kept its partitions, its
rebalance count and its `/ready` throughout.
<!-- faults:end -->"""
    path = ROOT / "docs" / "reliability.md"
    text = path.read_text()
    begin, end = text.find("<!-- faults:begin"), text.find("<!-- faults:end -->")
    if begin < 0 or end < 0:
        raise RuntimeError("docs/reliability.md has no faults:begin/faults:end markers to write between")
    # Only the suite's own section: the rest of the page (behaviour, the chaos run) is kept.
    path.write_text(text[:begin] + table + text[end + len("<!-- faults:end -->") :])
