"""STREAM_LOG_FORMAT=json on real processes: every stderr line is a JSON object, and none carries personal data.

A worker process (`python -m stream worker`) decides records with distinctive
account ids, a birth date and a text body, some of them malformed, and is stopped
with SIGTERM; the CLI fails on a bad setting and on a missing topic. Every line on
stderr must parse as one JSON object with time, level, logger and message, Faust's and
mode's lines included, and none may carry an account id, a birth date or a payload.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.cli import allocator
from stream.config import Settings

from .harness import content_consumed, free_port, http_get, js, make_topics, process_env, send, unique_settings
from .test_filter_scenario import objection, profile, upsert

pytestmark = pytest.mark.integration

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
KEYS = {"time", "level", "logger", "message", "exception", "stack"}
ACCOUNTS = ("acct-7f3c9e01", "acct-52d1aa77", "acct-e09b44c3")
BIRTH = "1971-03-14"
TEXT = "payload-body-5d2a-do-not-log"


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of `stderr` as a JSON object with the four keys (fails naming the first line that is not)."""
    lines = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line[:300]!r}") from None
        assert isinstance(parsed, dict), line
        assert {"time", "level", "logger", "message"} <= set(parsed) <= KEYS, line
        assert RFC3339_UTC.match(parsed["time"]), line
        lines.append(parsed)
    return lines


def _records() -> list[tuple[str, tuple[bytes, bytes]]]:
    """Profiles with the birth date, content with the text, an objection, and malformed content."""
    a, b, c = ACCOUNTS
    return [
        *[("profiles", profile(x, birth=BIRTH)) for x in ACCOUNTS],
        ("objections", objection(b, "objected")),
        *[("content", upsert(f"c-{i}-{x}", x, text=TEXT)) for i in range(5) for x in ACCOUNTS],
        ("content", (a.encode(), b'{"event_id": "' + c.encode() + b'", not json ' + TEXT.encode())),
        ("content", (c.encode(), js({"op": "upsert", "author_id": a, "text": TEXT}))),  # schema violation
    ]


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_logs_worker_at_debug_level_writes_no_personal_data_and_only_json_lines_in_json(
    bootstrap: str, tmp_path: Path, log_format: str
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    port = free_port()
    stderr_path, stdout_path = tmp_path / "worker.err", tmp_path / "worker.out"
    with stderr_path.open("w") as err, stdout_path.open("w") as out:
        # At DEBUG every library's debug lines are written too (aiokafka's connection
        # logger would write out whole fetch responses and produce requests).
        worker = subprocess.Popen(
            [sys.executable, "-m", "stream", "--log-level", "debug", "worker"],
            env=process_env(settings, STREAM_LOG_FORMAT=log_format, STREAM_WEB_PORT=str(port)),
            stdout=out,
            stderr=err,
        )
        try:
            async with asyncio.timeout(120):
                while (await http_get(f"http://127.0.0.1:{port}/ready"))[0] != 200:
                    assert worker.poll() is None, stderr_path.read_text()[-3000:]
                    await asyncio.sleep(0.2)
            topics = {"profiles": settings.topics.profiles, "objections": settings.topics.objections}
            topics["content"] = settings.topics.content
            for name in ("profiles", "objections", "content"):
                await send(settings, topics[name], [r for n, r in _records() if n == name])
            await content_consumed(settings)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=90)

    stderr = stderr_path.read_text()
    assert "DEBUG" in stderr  # the level took effect
    # The worker inherits this process's environment, preload included: the same allocator.
    assert f"memory allocator: {allocator()}" in stderr
    for secret in (*ACCOUNTS, BIRTH, TEXT, "not json"):
        assert secret not in stderr, f"{secret!r} in the worker's log"
        assert secret not in stdout_path.read_text(), f"{secret!r} on the worker's stdout"
    if log_format == "json":
        lines = _json_lines(stderr)
        loggers = {line["logger"] for line in lines}
        assert any(name.startswith("faust.") for name in loggers), loggers  # Faust's and mode's own setup: JSON
        assert any(name.startswith("stream.") for name in loggers), loggers
        assert any("assigned partitions" in line["message"] for line in lines)


def _cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env=process_env(settings, STREAM_LOG_FORMAT="json", **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_logs_json_cli_errors_are_json_lines(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")  # its topics were never created

    missing = _cli(settings, "topics", "check")
    assert missing.returncode == 2, missing.stderr
    errors = [line for line in _json_lines(missing.stderr) if line["level"] == "ERROR"]
    assert len(errors) == 1 and settings.topics.content in errors[0]["message"], missing.stderr

    bad = _cli(settings, "topics", "check", STREAM_PARTITIONS="many")
    assert bad.returncode == 2
    (line,) = _json_lines(bad.stderr)
    assert line["level"] == "ERROR" and "STREAM_PARTITIONS" in line["message"]


def test_logs_json_generate_writes_json_lines_and_no_progress_bars(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    assert _cli(settings, "topics", "create").returncode == 0

    generated = _cli(settings, "generate", "--count", "50", "--accounts", "20")  # progress bars not turned off

    assert generated.returncode == 0, generated.stderr
    lines = _json_lines(generated.stderr)
    assert any("generator: done" in line["message"] for line in lines)
