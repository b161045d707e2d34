"""Whether the batch in hand may go on, and the loop's waits that a stop or a starting rebalance cuts short.

A stop or a starting rebalance makes the batch in hand give up, uncommitted: the
rebalance's callback and the stop wait for the loop's lock, and the batch given up
is replayed by whoever owns its partitions next. The parts that work in steps (the
freshness gate, the recovery replay, the re-evaluation pass) `check` between steps.

A wait for records cannot be left to end by itself. Once a rebalance has begun,
aiokafka's getmany waits for the next assignment, and a getmany already waiting goes
back to that wait when records arrive. So a read under the loop's lock (`read`)
would deadlock the revocation, which waits for that lock; and the loop's own fetch
(`idle`) would run on after a stop, since closing the consumer does not wake that
wait when the rebalance ends without an assignment. Both are cut short by cancelling
the loop's task inside the wait, and only there: the cancel is taken back once
it has landed, so the task's owner sees none of it. Every fetch goes through
`fetches.fetch`, which uncounts a cancelled fetch (aiokafka would count it as in
flight for ever).

Since every step of the loop passes through here (a wait ends, or a part checks
between its steps), this is also where a loop that stopped stepping shows
(`stalled_for`): the worker is then not ready, whatever its partitions' state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")


class Cut(StrEnum):
    """What made the loop give up its batch: the `cause` label of `eligibility_batches_given_up_total`."""

    REBALANCE = "rebalance"
    STOP = "stop"


class GiveUp(Exception):
    """Raised inside the loop when a rebalance or a stop began: the batch in hand is given up, uncommitted."""

    def __init__(self, cause: Cut) -> None:
        super().__init__("a rebalance started" if cause is Cut.REBALANCE else "the worker is stopping")
        self.cause = cause


class Interruption:
    """Set by a stop (for good) or by a starting rebalance (until its assignment); the loop's waits go through it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stopping = False
        self._rebalancing = False
        # When the loop last took a step, and whether it is parked in an idle wait now.
        self._stepped_at = clock()
        self._parked = False
        # The task in a wait that may be cut, and whether a starting rebalance cuts it too.
        self._waiting: tuple[asyncio.Task[object], bool] | None = None
        self._cutting = False

    @property
    def stopping(self) -> bool:
        """True once the worker was asked to stop."""
        return self._stopping

    @property
    def interrupted(self) -> bool:
        """A stop or a rebalance began: the loop starts no batch."""
        return self._stopping or self._rebalancing

    def stop(self) -> None:
        """The worker is stopping: the batch in hand gives up, and any wait of the loop's is cut short."""
        self._stopping = True
        self._cut(by_rebalance=False)

    def rebalance_started(self) -> None:
        """A rebalance began: the batch in hand gives up, and a read under the loop's lock is cut short."""
        self._rebalancing = True
        self._cut(by_rebalance=True)

    def rebalance_ended(self) -> None:
        """The rebalance is over: reads go on again."""
        self._rebalancing = False

    def stalled_for(self) -> float:
        """Seconds the loop has spent in its current step; 0 while it is parked in an idle wait.

        An idle wait is parked, not stalled, however long it lasts: a fetch waits there for
        the group's next assignment through a whole rebalance, which other members may hold
        up, and a restart of this one would only prolong it.
        """
        return 0.0 if self._parked else self._clock() - self._stepped_at

    def check(self) -> None:
        """Raise `GiveUp` when a rebalance or a stop began: the batch is replayed, never half-gated."""
        self._stepped_at = self._clock()
        if self._rebalancing:
            raise GiveUp(Cut.REBALANCE)
        if self._stopping:
            raise GiveUp(Cut.STOP)

    async def read(self, reading: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """`reading(*args, **kwargs)`: records read under the loop's lock; `GiveUp` if a rebalance or a stop cuts in."""
        self.check()  # the read starts in this same step: no rebalance can begin in between
        done, result = await self._wait(reading(*args, **kwargs), cut_by_rebalance=True)
        if not done:
            self.check()
            raise GiveUp(Cut.REBALANCE)  # and ended while the read was being cut
        return result  # type: ignore[return-value]  # done: the read's own result

    async def idle(self, waiting: Awaitable[T]) -> T | None:
        """A wait of the loop's that holds no batch (its fetch, a back-off): None if a stop cuts it short."""
        _done, result = await self._wait(waiting, cut_by_rebalance=False)
        return result

    async def _wait(self, waiting: Awaitable[T], *, cut_by_rebalance: bool) -> tuple[bool, T | None]:
        task = asyncio.current_task()
        assert task is not None  # the loop's waits run in its task
        self._waiting = (task, cut_by_rebalance)
        self._parked = not cut_by_rebalance  # an idle wait (a read is a step of a batch)
        try:
            result = await waiting
        except asyncio.CancelledError:
            if self._cutting:
                self._cutting = False
                if task.uncancel() == 0:  # the cut's cancel alone: taken back
                    return False, None
            raise  # the task's owner cancelled it too
        else:
            if self._cutting:  # the wait swallowed the cut's cancel: take it back all the same
                self._cutting = False
                task.uncancel()
            return True, result
        finally:
            self._waiting = None
            self._parked = False
            self._stepped_at = self._clock()

    def _cut(self, *, by_rebalance: bool) -> None:
        if self._waiting is None or self._cutting:
            return
        task, cut_by_rebalance = self._waiting
        if (cut_by_rebalance or not by_rebalance) and task is not asyncio.current_task():
            self._cutting = True
            task.cancel()
