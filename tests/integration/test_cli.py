"""The operator's commands as an operator runs them: real processes, the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream.config import Settings

from .harness import free_port, http_get, process_env, read_until, unique_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return process_env(settings, **extra)


def _cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env=_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _cleanup_policies(settings: Settings) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        names = [
            settings.topics.content,
            settings.topics.profiles,
            settings.topics.objections,
            settings.topics.feed,
            settings.topics.decisions,
            settings.topics.dlq,
            settings.topics.deferred,
            settings.topics.published,
            settings.topics.items,
            settings.topics.retractions,
            settings.topics.shadow,
        ]
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        policies: dict[str, str] = {}
        for response in responses:
            for _, _, _, name, entries in response.resources:
                for entry in entries:
                    if entry[0] == "cleanup.policy":
                        policies[name] = entry[1]
        return policies
    finally:
        await admin.close()


async def test_topics_create_twice_is_idempotent_with_contract_cleanup_policies(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path, partitions=3)
    first = _cli(settings, "topics", "create")
    second = _cli(settings, "topics", "create")
    assert first.returncode == 0, first.stderr
    # The contract's seven, our three changelogs and eligibility.shadow.
    assert first.stdout.count(": created") == 11
    assert second.returncode == 0 and second.stdout.count(": exists") == 11
    assert "layout ok" in second.stdout
    t = settings.topics
    assert await _cleanup_policies(settings) == {
        t.content: "delete",
        t.profiles: "compact",
        t.objections: "compact",
        t.feed: "compact",
        t.decisions: "delete",
        t.dlq: "delete",
        t.deferred: "compact",
        t.published: "compact",
        t.items: "compact",
        t.retractions: "delete",
        t.shadow: "delete",
    }


async def test_worker_inputs_not_copartitioned_refuses_to_start_with_clear_message(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path, partitions=2)
    assert _cli(settings, "topics", "create").returncode == 0
    # An objections topic with a different partition count: recreate it under a new name.
    odd = settings.topics.objections + ".odd"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(odd, 3, 1)])
    finally:
        await admin.close()
    result = _cli(settings, "worker", STREAM_TOPIC_ACCOUNTS_OBJECTIONS=odd)
    assert result.returncode == 2
    assert "not co-partitioned" in result.stderr and f"{odd}=3" in result.stderr
    assert "topics create" in result.stderr


def test_worker_missing_topics_refuses_to_start_naming_them(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    result = _cli(settings, "worker")
    assert result.returncode == 2
    assert f"topic '{settings.topics.content}' does not exist" in result.stderr


def test_worker_without_pseudonym_key_outside_dev_mode_refuses_naming_the_variable(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    result = _cli(settings, "worker", STREAM_DEV_MODE="0")
    assert result.returncode == 2
    assert "STREAM_PSEUDONYM_KEY" in result.stderr


async def _http(url: str) -> tuple[int, bytes]:
    return await http_get(url)


async def test_worker_process_gets_ready_decides_generated_load_and_drains_on_sigterm(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    assert _cli(settings, "topics", "create").returncode == 0
    port = free_port()
    key_file = tmp_path / "key"
    key_file.write_text("a-secret-key-of-at-least-32-bytes\n")
    env = _env(settings, STREAM_WEB_PORT=str(port), STREAM_DEV_MODE="0", STREAM_PSEUDONYM_KEY_FILE=str(key_file))
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with asyncio.timeout(90):
            while (await _http(f"http://127.0.0.1:{port}/ready"))[0] != 200:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                await asyncio.sleep(0.2)
        assert (await _http(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        assert (await _http(f"http://127.0.0.1:{port}/table"))[0] == 404  # no table pages: personal data

        generated = _cli(
            settings, "generate", "--count", "400", "--accounts", "100", "--malformed-share", "0", "--no-progress"
        )
        assert generated.returncode == 0, generated.stderr
        await read_until(settings, settings.topics.decisions, 400)

        status, body = await _http(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        text = body.decode()
        assert 'eligibility_input_records_total{input="content"} 400.0' in text
        assert "eligibility_ready 1.0" in text

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        log.close()


@pytest.mark.parametrize("command", ["verify", "watch"])
async def test_long_running_commands_stop_on_sigterm_with_143(bootstrap: str, tmp_path: Path, command: str) -> None:
    # As a container's PID 1 a process without a SIGTERM handler ignores SIGTERM and a
    # pod waits out its grace period; the commands end on it like on Ctrl-C.
    settings = unique_settings(bootstrap, tmp_path)
    assert _cli(settings, "topics", "create").returncode == 0
    port = free_port()
    args = ["verify", "--interval", "600", "--port", str(port)] if command == "verify" else ["watch"]
    out = (tmp_path / f"{command}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", *args], env=_env(settings), stdout=out, stderr=subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(60):
            if command == "verify":  # up once its metrics answer
                while (await http_get(f"http://127.0.0.1:{port}/metrics"))[0] != 200:
                    assert process.poll() is None, (tmp_path / f"{command}.log").read_text()[-3000:]
                    await asyncio.sleep(0.2)
            else:  # up once its first count is printed
                while not (tmp_path / f"{command}.log").read_text().strip():
                    assert process.poll() is None
                    await asyncio.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
        out.close()


def test_make_run_prints_live_counts_and_ctrl_c_stops_all_it_started(bootstrap: str, tmp_path: Path) -> None:
    """The README's first command (`make run` is scripts/demo.sh after the build) on topics of its own."""
    settings = unique_settings(bootstrap, tmp_path)
    port = free_port()
    env = _env(
        settings,
        STREAM_WEB_PORT=str(port),
        KAFKA_PORT=bootstrap.rsplit(":", 1)[1],  # the demo reuses the broker that answers there
        DEMO_RATE="200",
        DEMO_ACCOUNTS="500",
    )
    demo = subprocess.Popen(
        [str(ROOT / "scripts" / "demo.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives it: Ctrl-C reaches it all
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, demo.stdout or ()), lines.put(None)], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        counted = None
        while counted is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(seen)
            seen.append(line)
            counted = re.match(r"\[\s*\d+s\] total=(\d+) .*\beligible=(\d+)", line)
        assert int(counted[1]) > 0 and int(counted[2]) > 0, line

        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        assert demo.wait(timeout=60) != 0
        while (line := lines.get(timeout=10)) is not None:
            seen.append(line)
        output = "".join(seen)
        assert "demo: stopping worker and generator" in output
        assert "Traceback" not in output and "INFO" not in output, output
        # Nothing it started runs on: the worker and the generator were in its group.
        with pytest.raises(ProcessLookupError):
            os.killpg(demo.pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
