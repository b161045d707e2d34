"""Shared fixtures. Integration tests need the real Kafka broker of scripts/kafka.sh.

Without KAFKA_BOOTSTRAP_SERVERS the session starts the local broker itself
(`scripts/kafka.sh start`, which fetches it from Maven Central once). Locally a
broker that cannot start skips the integration tests loudly; under CI=true it is
a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.pure_core import PURE_ENV, compiled, source_first

if os.environ.get(PURE_ENV) == "1":
    source_first()  # before anything below imports the core

import stream.core.engine
from stream import zstd_codec
from tests.integration.harness import delete_created_topics

# As every command does (stream/cli.py): the workers and readers the tests run in
# this process compress and decompress zstd on reused contexts too.
zstd_codec.install()

ROOT = Path(__file__).resolve().parent.parent


def _answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """The bootstrap address of a running broker, started here if need be.

    When the session ends, the topics the tests created on it are deleted.
    """
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if servers is None:
        port = os.environ.get("KAFKA_PORT", "9092")
        servers = f"127.0.0.1:{port}"
        if not _answers(servers):
            proc = subprocess.run(
                ["bash", str(ROOT / "scripts" / "kafka.sh"), "start"],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "KAFKA_PORT": port},
            )
            if proc.returncode != 0:
                _no_broker(f"scripts/kafka.sh start failed:\n{proc.stdout}\n{proc.stderr}")
    if not _answers(servers):
        _no_broker(f"no Kafka broker answers at {servers}")
    yield servers
    asyncio.run(asyncio.wait_for(delete_created_topics(servers), timeout=60))


def _no_broker(reason: str) -> None:
    missing("KAFKA BROKER", "integration tests", f"the real Kafka broker is required. {reason}")


def missing(what: str, tests: str, reason: str) -> NoReturn:
    """A real part the tests need is absent: a failure under CI (CI=true), a loud skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(f"NO {what}, {tests} skipped: {reason}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With the core compiled, the tests marked `pure_core` are left to tests/integration/test_core_build.py.

    They monkeypatch the core's functions, which its compiled modules call directly;
    that test runs them in a process that imports the core from its sources.
    """
    if not compiled(stream.core.engine):
        return
    kept = [item for item in items if item.get_closest_marker("pure_core") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
