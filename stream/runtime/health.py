"""The worker's readiness and the replay policy for failed batches: when to retry, when it is stuck.

Owns the `eligibility_ready`, `eligibility_worker_stuck` and `eligibility_loop_step_seconds`
gauges and the replay counters; it decides nothing about a batch and touches no client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from stream.runtime.metrics import Metrics

log = logging.getLogger(__name__)

# The waits before each replay of a failed batch; the last repeats.
RETRY_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)
# After this many failed attempts in a row at the same batch the worker reports
# itself stuck: not ready, and `eligibility_worker_stuck` 1 (an alert), until one succeeds.
STUCK_AFTER_FAILURES = 3
# A loop that has spent this long in one step is stalled: not ready. With the broker
# up, its longest step is a batch whose outputs the broker is slow to acknowledge
# (the producer gives up after its request_timeout_ms, 30 s in worker.py, and the
# batch is replayed); every read and every step of a recovery ends much sooner. With
# the broker out of reach, a commit waits for it (aiokafka retries until the group's
# coordinator answers): the worker is then rightly not ready either. The same 2
# minutes as the EligibilityNoProgress alert.
LOOP_STALL_SECONDS = 120.0


class Health:
    """Ready once its partitions are caught up; not while stuck or stalled (`/ready` answers 503).

    `stalled_for` is the loop's time in its current step (`Interruption.stalled_for`).
    The ready gauge is read when scraped, so a stalled loop, which runs no code that
    could set it, still shows. A stall does not fail liveness: a broker out of reach
    stalls every worker's commit, and restarting them all would turn an outage into a
    crash loop whose back-off outlasts it. A wedge is a bug, paged by the
    EligibilityWorkerStalled alert and restarted by hand (docs/runbooks.md).
    """

    def __init__(self, metrics: Metrics, stalled_for: Callable[[], float] = lambda: 0.0) -> None:
        self._metrics = metrics
        self._stalled_for = stalled_for
        self.ready = False
        self.stuck = False
        metrics.ready.set_function(lambda: 1.0 if self.is_ready else 0.0)
        metrics.loop_step.set_function(stalled_for)

    @property
    def stalled(self) -> bool:
        """The loop has been in one step for `LOOP_STALL_SECONDS`: it makes no progress."""
        return self._stalled_for() >= LOOP_STALL_SECONDS

    @property
    def is_ready(self) -> bool:
        """Partitions assigned, their state caught up, batches succeeding, and the loop stepping."""
        return self.ready and not self.stuck and not self.stalled

    def set_ready(self, ready: bool) -> None:
        """Record whether every assigned partition has caught up; `/ready` also needs it neither stuck nor stalled."""
        self.ready = ready

    def set_stuck(self, stuck: bool) -> None:
        """A worker whose batches keep failing cannot make progress: it is not ready."""
        self.stuck = stuck
        self._metrics.stuck.set(1 if stuck else 0)

    def readiness(self, partitions: Iterable[int]) -> tuple[int, dict[str, object]]:
        """`/ready`'s status code and body: 200 when ready; 503 stalled, stuck or not ready."""
        if self.is_ready:
            return 200, {"status": "ready", "partitions": sorted(partitions)}
        # Stalled or stuck, it holds its partitions but makes no progress: a wedged
        # step, or batches that keep failing and are replayed.
        status = "stalled" if self.stalled else "stuck" if self.stuck else "not ready"
        return 503, {"status": status, "partitions": sorted(partitions)}


class Replays:
    """Counts failed attempts at a batch: the back-off before its replay, and being stuck."""

    def __init__(self, health: Health, metrics: Metrics) -> None:
        self._health = health
        self._metrics = metrics
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failed attempts in a row at the batch in hand."""
        return self._failures

    def succeeded(self) -> None:
        """A batch succeeded: the failure count starts again and the worker is no longer stuck."""
        if self._failures:
            log.info("a batch succeeded after %d failed attempts; no longer stuck", self._failures)
            self._failures = 0
            self._health.set_stuck(False)

    def failed(self, exc: Exception) -> float:
        """Count a failed attempt; return the seconds to wait before replaying from the last commit."""
        delay = RETRY_BACKOFF_SECONDS[min(self._failures, len(RETRY_BACKOFF_SECONDS) - 1)]
        self._failures += 1
        self._metrics.delivery_failures.inc()
        self._metrics.batch_replays.inc()
        if self._failures >= STUCK_AFTER_FAILURES:
            self._health.set_stuck(True)
        log.error(
            "batch failed (%s: %s), attempt %d; replaying from the last commit in %.1fs",
            type(exc).__name__,
            exc,
            self._failures,
            delay,
        )
        return delay
