"""The engine's instructions per content event, counted by callgrind: `python -m bench.instructions`.

Timings of a few per cent cannot be told apart on a shared machine whose speed drifts
(bench/notes.md, "Instructions per event"); instruction counts do not move with it.
This runs `python -m bench.engine_cost --repeat 1` under `valgrind --tool=callgrind`
(Debian's `valgrind`, ~50 times slower than without) with a fixed hash seed, then reads
`callgrind_annotate --inclusive=yes`: the instructions inside `Engine.process`, less
those inside `AccountChanges.apply` (loading the accounts), per content event, and
those of loading per state record. It needs the compiled core (`make compile`): the
functions are found by the names mypyc gives them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The inclusive count of a function of the compiled core, as callgrind_annotate prints it:
# `1,272,058,280 (38.90%)  build/__native_stream_core.c:CPyDef_engine___Engine___process [/...so]`.
_COUNT = r"^\s*([0-9,]+)\s.*\bCPyDef_{name} \["
PROCESS = "engine___Engine___process"
LOADING = "accounts___AccountChanges___apply"
# What bench.engine_cost prints of its workload.
_WORKLOAD = re.compile(r"(\d+) content events, \d+ accounts: .* loading (\d+) state records")


@dataclass(frozen=True, slots=True)
class Counts:
    """Instructions per content event and per state record loaded."""

    per_event: float
    per_record: float


def inclusive(annotated: str, name: str) -> int:
    """The inclusive instruction count of the compiled core's function `name` in callgrind_annotate's output."""
    found = re.search(_COUNT.format(name=re.escape(name)), annotated, re.MULTILINE)
    if found is None:
        raise ValueError(f"{name} is not in the profile: is stream/core compiled (make compile)?")
    return int(found.group(1).replace(",", ""))


def counts(annotated: str, printed: str) -> Counts:
    """Per-event and per-record instructions from callgrind_annotate's output and engine_cost's own."""
    workload = _WORKLOAD.search(printed)
    if workload is None:
        raise ValueError("bench.engine_cost printed no workload line")
    events, records = int(workload.group(1)), int(workload.group(2))
    process, loading = inclusive(annotated, PROCESS), inclusive(annotated, LOADING)
    return Counts((process - loading) / events, loading / records)


def measure(events: int, accounts: int, cwd: Path) -> Counts:
    """Run bench.engine_cost under callgrind in `cwd` (a checkout with the compiled core) and count."""
    tools = {tool: shutil.which(tool) for tool in ("valgrind", "callgrind_annotate")}
    for tool, path in tools.items():
        if path is None:
            raise SystemExit(f"bench.instructions: {tool} not found (Debian: apt-get install valgrind)")
    valgrind, annotate = str(tools["valgrind"]), str(tools["callgrind_annotate"])
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        # S603: fixed arguments and this interpreter; only the counts are the caller's.
        run = subprocess.run(  # noqa: S603
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.engine_cost",
                f"--events={events}",
                f"--accounts={accounts}",
                "--repeat=1",
            ],
            cwd=cwd,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
        annotated = subprocess.run(  # noqa: S603
            [annotate, "--inclusive=yes", str(out)], capture_output=True, text=True, check=True
        ).stdout
    return counts(annotated, run.stdout)


def main(argv: list[str] | None = None) -> None:
    """Print the engine's instructions per content event and per state record loaded."""
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument(
        "--cwd", type=Path, default=Path.cwd(), help="the checkout to measure (its stream/ compiled), e.g. a worktree"
    )
    args = parser.parse_args(argv)
    figures = measure(args.events, args.accounts, args.cwd)
    print(
        f"{args.cwd}: {figures.per_event:,.0f} instructions per content event, "
        f"{figures.per_record:,.0f} per state record loaded"
    )


if __name__ == "__main__":
    main()
