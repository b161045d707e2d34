"""Readiness and the replay policy (stream/runtime/health.py), and giving a batch up (interrupt.py)."""

from __future__ import annotations

import pytest

from stream.runtime.health import LOOP_STALL_SECONDS, RETRY_BACKOFF_SECONDS, STUCK_AFTER_FAILURES, Health, Replays
from stream.runtime.interrupt import Cut, GiveUp, Interruption
from stream.runtime.metrics import Metrics


def _gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def test_health_caught_up_and_not_stuck_is_ready() -> None:
    metrics = Metrics.create()
    health = Health(metrics)

    health.set_ready(True)

    assert health.is_ready and _gauge(metrics, "eligibility_ready") == 1


def test_health_stalled_loop_is_not_ready_and_shows_when_scraped() -> None:
    metrics = Metrics.create()
    step = [0.0]
    health = Health(metrics, lambda: step[0])
    health.set_ready(True)
    assert health.readiness([1, 0]) == (200, {"status": "ready", "partitions": [0, 1]})

    step[0] = LOOP_STALL_SECONDS - 0.1
    assert health.is_ready and not health.stalled

    step[0] = LOOP_STALL_SECONDS  # nothing set the gauges since: they are read when scraped
    assert health.stalled and health.ready and not health.is_ready
    assert health.readiness([0]) == (503, {"status": "stalled", "partitions": [0]})
    assert _gauge(metrics, "eligibility_ready") == 0
    assert _gauge(metrics, "eligibility_loop_step_seconds") == LOOP_STALL_SECONDS

    step[0] = 0.0  # the step ended
    assert health.is_ready and _gauge(metrics, "eligibility_ready") == 1


def test_health_readiness_names_stuck_and_not_ready() -> None:
    health = Health(Metrics.create())
    assert health.readiness([]) == (503, {"status": "not ready", "partitions": []})
    health.set_ready(True)
    health.set_stuck(True)
    assert health.readiness([2]) == (503, {"status": "stuck", "partitions": [2]})


def test_replays_back_off_grows_to_its_last_step_and_the_worker_is_stuck_after_three() -> None:
    metrics = Metrics.create()
    health = Health(metrics)
    health.set_ready(True)
    replays = Replays(health, metrics)

    delays = [replays.failed(RuntimeError("refused")) for _ in range(len(RETRY_BACKOFF_SECONDS) + 1)]

    assert delays == [*RETRY_BACKOFF_SECONDS, RETRY_BACKOFF_SECONDS[-1]]
    assert health.stuck and health.ready and not health.is_ready
    assert _gauge(metrics, "eligibility_worker_stuck") == 1 and _gauge(metrics, "eligibility_ready") == 0
    assert _gauge(metrics, "eligibility_batch_replays_total") == len(delays)


def test_replays_fewer_failures_than_the_limit_not_stuck() -> None:
    metrics = Metrics.create()
    health = Health(metrics)
    replays = Replays(health, metrics)

    for _ in range(STUCK_AFTER_FAILURES - 1):
        replays.failed(RuntimeError("refused"))

    assert not health.stuck and _gauge(metrics, "eligibility_worker_stuck") == 0


def test_replays_success_after_failures_clears_stuck_and_restarts_the_back_off() -> None:
    metrics = Metrics.create()
    health = Health(metrics)
    health.set_ready(True)
    replays = Replays(health, metrics)
    for _ in range(STUCK_AFTER_FAILURES):
        replays.failed(RuntimeError("refused"))

    replays.succeeded()

    assert health.is_ready and replays.failures == 0
    assert _gauge(metrics, "eligibility_ready") == 1 and _gauge(metrics, "eligibility_worker_stuck") == 0
    assert replays.failed(RuntimeError("again")) == RETRY_BACKOFF_SECONDS[0]


def test_interruption_rebalance_interrupts_until_it_ends() -> None:
    interruption = Interruption()
    interruption.check()  # nothing begun: goes on

    interruption.rebalance_started()
    assert interruption.interrupted
    with pytest.raises(GiveUp, match="rebalance started") as given_up:
        interruption.check()
    assert given_up.value.cause is Cut.REBALANCE

    interruption.rebalance_ended()
    assert not interruption.interrupted


def test_interruption_stop_is_for_good() -> None:
    interruption = Interruption()

    interruption.stop()
    interruption.rebalance_ended()

    assert interruption.stopping and interruption.interrupted
    with pytest.raises(GiveUp, match="stopping") as given_up:
        interruption.check()
    assert given_up.value.cause is Cut.STOP
