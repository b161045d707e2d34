"""Whether the batch in hand may go on: a stop or a starting rebalance makes it give up, uncommitted.

The parts that wait for records (the freshness gate, the recovery replay, the
re-evaluation pass) check it between reads, so the rebalance's callback, which waits
for the loop's lock, is not held up: the batch given up is replayed by whoever owns
its partitions next. This module owns only the flags, not what they interrupt.
"""

from __future__ import annotations


class GiveUp(Exception):
    """Raised inside the loop when a rebalance or a stop began: the batch in hand is given up, uncommitted."""


class Interruption:
    """Set by a stop (for good) or by a starting rebalance (until its assignment); read by the loop's parts."""

    def __init__(self) -> None:
        self._stopping = False
        self._rebalancing = False

    @property
    def stopping(self) -> bool:
        """True once the worker was asked to stop."""
        return self._stopping

    @property
    def interrupted(self) -> bool:
        """A stop or a rebalance began: the loop starts no batch."""
        return self._stopping or self._rebalancing

    def stop(self) -> None:
        """Ask the batch in hand to give up at its next wait: the worker is stopping."""
        self._stopping = True

    def rebalance_started(self) -> None:
        """A rebalance began: waits for records give up so the revocation is not blocked."""
        self._rebalancing = True

    def rebalance_ended(self) -> None:
        """The rebalance is over: waits for records go on again."""
        self._rebalancing = False

    def check(self) -> None:
        """Raise `GiveUp` when a rebalance or a stop began: the batch is replayed, never half-gated."""
        if self._rebalancing:
            raise GiveUp("rebalance started")
        if self._stopping:
            raise GiveUp("stopping")
