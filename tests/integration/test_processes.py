"""`python -m stream worker --processes 2` on the real broker: one supervisor, two workers in one group."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from stream.config import DEV_PSEUDONYM_KEY
from stream.verifier.verify import render, verify
from stream.workload.generator import Workload

from .harness import (
    content_consumed,
    free_port,
    http_get,
    make_topics,
    process_env,
    send_markers,
    send_workload,
    unique_settings,
)

pytestmark = pytest.mark.integration

UTC = dt.UTC


async def _ready(supervisor: subprocess.Popen[bytes], port: int, log: Path) -> dict[str, object]:
    async with asyncio.timeout(120):
        while True:
            assert supervisor.poll() is None, log.read_text()[-3000:]
            status, body = await http_get(f"http://127.0.0.1:{port}/ready")
            if status == 200:
                data: dict[str, object] = orjson.loads(body)
                return data
            await asyncio.sleep(0.2)


async def test_two_processes_share_the_partitions_decide_everything_and_drain_on_sigterm(
    bootstrap: str, tmp_path: Path
) -> None:
    # The processes run in development mode (process_env): the verifier checks with their key.
    settings = replace(unique_settings(bootstrap, tmp_path / "data", partitions=4), pseudonym_key=DEV_PSEUDONYM_KEY)
    await make_topics(settings)
    workload = Workload(
        seed=5, accounts=300, now=dt.datetime.now(UTC) - dt.timedelta(hours=1), run=uuid.uuid4().hex[:8]
    )
    await send_workload(settings, [i.record for i in workload.setup()], [i.record for i in workload.stream(3000)])
    port = free_port()
    log = tmp_path / "supervisor.log"
    env = process_env(settings, STREAM_WEB_PORT=str(port), STREAM_GROUP_INSTANCE_ID="pod-0")
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker", "--processes", "2"], env=env, stdout=out, stderr=out
        )
    try:
        ready = await _ready(supervisor, port, log)
        # Two members of the group, each holding partitions, together all of them.
        held = [set(p["partitions"]) for p in ready["processes"]]  # type: ignore[attr-defined]
        assert len(held) == 2 and all(held) and held[0].isdisjoint(held[1]), ready
        assert held[0] | held[1] == set(range(settings.partitions))
        assert (tmp_path / "data" / "0").is_dir() and (tmp_path / "data" / "1").is_dir()

        await send_markers(settings, "processes")
        await content_consumed(settings)
        report = await verify(settings)
        assert report.ok and report.losses.count == 0 and report.violation_count == 0, render(report)

        # One /metrics for both: the input counter summed over the processes.
        status, body = await http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        text = body.decode()
        counted = float(re.findall(r'eligibility_input_records_total\{input="content"\} (\S+)', text)[0])
        assert counted == report.inputs.content, text[:2000]
        assert "eligibility_ready 1.0" in text
        assert text.count("eligibility_build_info{") == 1
        # One /healthz for both: each child asked, each alive.
        status, body = await http_get(f"http://127.0.0.1:{port}/healthz")
        assert (status, orjson.loads(body)) == (200, {"status": "alive", "processes": ["alive", "alive"]})

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert "all 2 worker processes drained and stopped" in log.read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


async def test_a_killed_process_stops_the_supervisor_with_status_1(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    port = free_port()
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker", "--processes", "2"],
            env=process_env(settings, STREAM_WEB_PORT=str(port)),
            stdout=out,
            stderr=out,
        )
    try:
        await _ready(supervisor, port, log)
        pids = [int(p) for p in re.findall(r"worker process \d started: pid (\d+)", log.read_text())]
        assert len(pids) == 2
        os.kill(pids[1], signal.SIGKILL)
        assert supervisor.wait(timeout=60) == 1
        text = log.read_text()
        assert f"worker process 1 (pid {pids[1]}) exited on its own with status signal SIGKILL" in text
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def test_more_processes_than_partitions_is_refused(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    asyncio.run(make_topics(settings))
    result = subprocess.run(
        [sys.executable, "-m", "stream", "worker", "--processes", "3"],
        env=process_env(settings, STREAM_WEB_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "has 2 partitions: 1 processes would hold none" in result.stderr
