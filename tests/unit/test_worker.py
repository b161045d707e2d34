"""The worker's loop as a whole, without a broker: what it is before start and after stop.

Its parts are tested through their public methods in their own files (test_gate,
test_offsets, test_cycle, test_sender, test_writer, test_recovery_steps,
test_deferrals, test_partitions, test_health, test_leaders); the loop with a real
broker in tests/integration.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import Settings
from stream.core.engine import Engine
from stream.core.policy import load_policy
from stream.runtime.metrics import Metrics
from stream.runtime.worker import FilterWorker


def _worker(tmp_path: Path) -> FilterWorker:
    settings = Settings(data_dir=tmp_path)
    return FilterWorker(settings, Engine(load_policy(None), b"k", settings.topics), Metrics.create())


def test_worker_not_started_holds_nothing_and_is_not_ready(tmp_path: Path) -> None:
    worker = _worker(tmp_path)

    assert worker.consumer is None and worker.producer is None
    assert worker.assigned == frozenset()
    assert not worker.ready and not worker.stuck and not worker.is_ready


async def test_worker_run_before_start_refused(tmp_path: Path) -> None:
    worker = _worker(tmp_path)

    with pytest.raises(RuntimeError, match="before start"):
        await worker.run()


async def test_worker_stop_before_start_leaves_it_not_ready(tmp_path: Path) -> None:
    worker = _worker(tmp_path)

    await worker.stop()

    assert not worker.is_ready
    assert worker.metrics.registry.get_sample_value("eligibility_ready") == 0
