"""The worker's readiness and the replay policy for failed batches: when to retry, when it is stuck.

Owns the `eligibility_ready` and `eligibility_worker_stuck` gauges and the replay
counters; it decides nothing about a batch and touches no client.
"""

from __future__ import annotations

import logging

from stream.runtime.metrics import Metrics

log = logging.getLogger(__name__)

# The waits before each replay of a failed batch; the last repeats.
RETRY_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)
# After this many failed attempts in a row at the same batch the worker reports
# itself stuck: not ready, and `eligibility_worker_stuck` 1 (an alert), until one succeeds.
STUCK_AFTER_FAILURES = 3


class Health:
    """Ready once its partitions are caught up; not ready while stuck (`/ready` answers 503)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.ready = False
        self.stuck = False

    @property
    def is_ready(self) -> bool:
        """Partitions assigned, their state caught up, and batches succeeding."""
        return self.ready and not self.stuck

    def set_ready(self, ready: bool) -> None:
        """Record whether every assigned partition has caught up; `/ready` also needs the worker not stuck."""
        self.ready = ready
        self._metrics.ready.set(1 if self.is_ready else 0)

    def set_stuck(self, stuck: bool) -> None:
        """A worker whose batches keep failing cannot make progress: it is not ready."""
        self.stuck = stuck
        self._metrics.stuck.set(1 if stuck else 0)
        self._metrics.ready.set(1 if self.is_ready else 0)


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
