"""The loop's waits and what cuts them short: a stop cuts any, a starting rebalance only a read under the lock.

`LoopModel` searches any sequence of steps, waits, stops, rebalances, cancels and clock
moves for a wait that ends otherwise than the model says, or a stall clock that is off.
On the real broker: tests/integration/test_worker_guarantees.py (a read that gives way
to a rebalance, a stop that ends the loop while the rebalance in flight never assigns).
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stream.runtime import interrupt
from stream.runtime.interrupt import Cut, GiveUp, Interruption


async def _forever() -> dict[str, int]:
    """A read that never ends by itself: aiokafka's getmany waiting for an assignment."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


async def _in_wait(task: asyncio.Task[object]) -> None:
    """Let the task reach its wait."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()


async def test_read_cut_by_a_starting_rebalance_gives_up_and_leaves_the_task_uncancelled() -> None:
    interruption = Interruption()
    cancelling: list[int] = []

    async def batch() -> None:
        try:
            await interruption.read(_forever)
        finally:
            task = asyncio.current_task()
            assert task is not None
            cancelling.append(task.cancelling())

    task = asyncio.create_task(batch())
    await _in_wait(task)
    interruption.rebalance_started()
    with pytest.raises(GiveUp, match="rebalance") as given_up:
        await task
    assert given_up.value.cause is Cut.REBALANCE
    assert cancelling == [0]  # the cut's cancel was taken back: the owner sees none of it


async def test_read_cut_by_a_stop_gives_up() -> None:
    interruption = Interruption()
    task = asyncio.create_task(interruption.read(_forever))
    await _in_wait(task)  # type: ignore[arg-type]
    interruption.stop()
    with pytest.raises(GiveUp, match="stopping") as given_up:
        await task
    assert given_up.value.cause is Cut.STOP


async def test_read_after_a_rebalance_began_gives_up_without_reading() -> None:
    interruption = Interruption()
    interruption.rebalance_started()
    called: list[bool] = []

    async def reading() -> int:
        called.append(True)
        return 1

    with pytest.raises(GiveUp):
        await interruption.read(reading)
    assert called == []


async def test_read_passes_its_arguments_and_returns_what_it_read() -> None:
    async def reading(*partitions: int, limit: int) -> list[int]:
        return [*partitions, limit]

    assert await Interruption().read(reading, 1, 2, limit=3) == [1, 2, 3]


async def test_idle_wait_is_cut_by_a_stop_not_by_a_rebalance() -> None:
    interruption = Interruption()
    task = asyncio.create_task(interruption.idle(_forever()))
    await _in_wait(task)  # type: ignore[arg-type]
    interruption.rebalance_started()  # the loop's fetch waits out a rebalance: it holds no batch
    await _in_wait(task)  # type: ignore[arg-type]
    interruption.stop()
    assert await task is None


async def test_idle_wait_that_ends_by_itself_returns_its_result() -> None:
    async def fetched() -> dict[str, int]:
        return {"records": 3}

    assert await Interruption().idle(fetched()) == {"records": 3}


class _Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_read_that_does_not_end_stalls_the_loop_and_its_end_is_a_step() -> None:
    clock = _Clock()
    interruption = Interruption(clock)
    clock.now += 5
    interruption.check()  # a step between a part's steps
    assert interruption.stalled_for() == 0

    task = asyncio.create_task(interruption.read(_forever))
    await _in_wait(task)  # type: ignore[arg-type]
    clock.now += 300
    assert interruption.stalled_for() == 300  # a read is a step of a batch: it never waits idle

    interruption.stop()
    with pytest.raises(GiveUp):
        await task
    assert interruption.stalled_for() == 0  # the wait's end was a step


async def test_an_idle_wait_is_parked_not_stalled_however_long() -> None:
    # A fetch waits idle for the group's next assignment through a whole rebalance,
    # which other members may hold up: the loop is parked there, not wedged.
    clock = _Clock()
    interruption = Interruption(clock)
    task = asyncio.create_task(interruption.idle(_forever()))
    await _in_wait(task)  # type: ignore[arg-type]
    clock.now += 3600
    assert interruption.stalled_for() == 0

    interruption.stop()
    assert await task is None
    clock.now += 7
    assert interruption.stalled_for() == 7  # from the idle wait's end, the loop is in a step again


async def test_owners_cancel_during_a_cut_is_not_swallowed() -> None:
    interruption = Interruption()
    task = asyncio.create_task(interruption.read(_forever))
    await _in_wait(task)  # type: ignore[arg-type]
    interruption.rebalance_started()
    task.cancel()  # the owner cancels in the same step: both cancels land together
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_wait_after_a_cut_is_still_cut_and_an_owners_cancel_later_still_cancels() -> None:
    interruption = Interruption()
    first = asyncio.create_task(interruption.read(_forever))
    await _in_wait(first)  # type: ignore[arg-type]
    interruption.rebalance_started()
    with pytest.raises(GiveUp):
        await first
    interruption.rebalance_ended()
    second = asyncio.create_task(interruption.idle(_forever()))
    await _in_wait(second)  # type: ignore[arg-type]
    second.cancel()  # no cut pending: the owner's cancel is the owner's
    with pytest.raises(asyncio.CancelledError):
        await second


Step = Callable[[Interruption, "asyncio.Task[object]"], None]
STEPS: dict[str, Step] = {
    "rebalance_started": lambda i, t: i.rebalance_started(),
    "rebalance_ended": lambda i, t: i.rebalance_ended(),
    "stop": lambda i, t: i.stop(),
    "owner_cancel": lambda i, t: t.cancel(),
}


@given(
    read=st.booleans(),
    steps=st.lists(st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=3), max_size=4),
)
def test_any_order_of_stops_rebalances_and_cancels_ends_a_wait_as_the_model_says(
    read: bool, steps: list[list[str]]
) -> None:
    """Each inner list runs in one step of the loop, then the wait gets its turn; the model says how it ends."""
    # The model: a cancel by the owner always wins; else a stop cuts any wait and a
    # starting rebalance cuts a read (each as of the step it happens in); else it waits on.
    expected = "waiting"
    for batch in steps:
        if "owner_cancel" in batch:
            expected = "cancelled"
            break
        if "stop" in batch or (read and "rebalance_started" in batch):
            expected = "given up" if read else "none"
            break

    async def scenario() -> str:
        interruption = Interruption()
        waiting = interruption.read(_forever) if read else interruption.idle(_forever())
        task: asyncio.Task[object] = asyncio.create_task(waiting)  # type: ignore[arg-type]
        await _in_wait(task)
        for batch in steps:
            for step in batch:
                STEPS[step](interruption, task)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if task.done():
                break
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return "waiting"
        if task.cancelled():
            return "cancelled"
        if isinstance(task.exception(), GiveUp):
            return "given up"
        return "none" if task.result() is None else "other"

    assert asyncio.run(scenario()) == expected


def _fetches_outside_the_interruption(source: str) -> list[int]:
    """Lines of `source` that name `getmany`, or `fetch` (fetches.py) other than inside `.read(...)` or `.idle(...)`."""
    tree = ast.parse(source)
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in {"read", "idle"}:
            for argument in node.args:
                allowed.update(id(inner) for inner in ast.walk(argument))
    return [
        node.lineno
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr == "getmany")
        or (isinstance(node, ast.Name) and node.id == "fetch" and id(node) not in allowed)
    ]


def test_every_fetch_of_the_worker_goes_through_the_interruption() -> None:
    # A getmany left to end by itself deadlocks a rebalance under the loop's lock, or
    # outlives a stop (module docstring of interrupt.py); the changelog reader's would
    # hold a stop or a rebalance for a whole restore. Each goes through `fetch`, which
    # uncounts a cancelled fetch (fetches.py), inside `read` or `idle`.
    runtime = Path(interrupt.__file__).parent
    found = {
        path.name: lines
        for path in sorted(runtime.glob("*.py"))
        if path.name != "fetches.py" and (lines := _fetches_outside_the_interruption(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def test_the_fetch_check_finds_a_fetch_left_to_itself() -> None:
    assert _fetches_outside_the_interruption("async def f(c, i):\n    await c.getmany(timeout_ms=5)\n") == [2]
    assert _fetches_outside_the_interruption("async def f(c, i):\n    await i.read(c.getmany, timeout_ms=5)\n") == [2]
    assert _fetches_outside_the_interruption("async def f(c, i):\n    await fetch(c, timeout_ms=5)\n") == [2]
    assert _fetches_outside_the_interruption("async def f(c, i):\n    await i.read(fetch, c, timeout_ms=5)\n") == []
    assert _fetches_outside_the_interruption("async def f(c, i):\n    await i.idle(fetch(c, timeout_ms=5))\n") == []


class LoopModel(RuleBasedStateMachine):
    """The loop's steps, waits, stops, rebalances, cancels and a moving clock, against a small model.

    The model (interrupt.py's docstring, written out): a read checks as it starts and
    gives up at once if a stop or a rebalance began; a stop cuts any wait, a starting
    rebalance cuts a read; an owner's cancel always wins; a wait may also end by itself.
    The stall clock: the loop is stalled for the time since its last step (a check, a
    read's start, a wait's end), and 0 while it is parked in an idle wait.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = _Clock()
        self.interruption = Interruption(self.clock)
        self.task: asyncio.Task[object] | None = None
        self.reading = False
        self.records: asyncio.Future[dict[str, int]] | None = None
        # The model.
        self.stepped_at = self.clock.now
        self.stopping = False
        self.rebalancing = False
        self.expected: str | None = None  # how the wait in hand ends, once it has

    def teardown(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            self._turns()
        self.loop.close()

    def _turns(self, then: Callable[[], object] = lambda: None) -> None:
        """Call `then` in a step of the loop (where the worker calls stops, rebalances, cancels), then turn."""

        async def turns() -> None:
            then()
            for _ in range(4):
                await asyncio.sleep(0)

        self.loop.run_until_complete(turns())

    def _ended(self, how: str) -> None:
        self.expected = how
        self.stepped_at = self.clock.now

    @property
    def waiting(self) -> bool:
        return self.task is not None and self.expected is None

    @rule(seconds=st.integers(min_value=0, max_value=10**6) | st.floats(min_value=0, max_value=1e-3))
    def tick(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: not self.waiting)
    @rule()
    def check(self) -> None:
        self.stepped_at = self.clock.now
        if self.stopping or self.rebalancing:
            with pytest.raises(GiveUp) as raised:
                self.interruption.check()
            assert raised.value.cause is (Cut.REBALANCE if self.rebalancing else Cut.STOP)
        else:
            self.interruption.check()

    @precondition(lambda self: not self.waiting)
    @rule(read=st.booleans())
    def wait(self, read: bool) -> None:
        records: asyncio.Future[dict[str, int]] = self.loop.create_future()

        async def reading() -> dict[str, int]:
            return await records

        self.records, self.reading, self.expected = records, read, None
        waiting = self.interruption.read(reading) if read else self.interruption.idle(records)
        self.task = self.loop.create_task(waiting)  # type: ignore[arg-type]
        if read:
            self.stepped_at = self.clock.now  # the read's own check
            if self.stopping or self.rebalancing:
                self._ended("given up")
        self._turns()

    @precondition(lambda self: self.waiting)
    @rule()
    def records_arrive(self) -> None:
        assert self.records is not None
        self.records.set_result({"records": 1})
        self._ended("read")
        self._turns()

    @rule()
    def stop(self) -> None:
        self.stopping = True
        if self.waiting:
            self._ended("given up" if self.reading else "none")
        self._turns(self.interruption.stop)

    @rule()
    def rebalance_started(self) -> None:
        self.rebalancing = True
        if self.waiting and self.reading:
            self._ended("given up")
        self._turns(self.interruption.rebalance_started)

    @rule()
    def rebalance_ended(self) -> None:
        self.rebalancing = False
        self._turns(self.interruption.rebalance_ended)

    @precondition(lambda self: self.waiting)
    @rule()
    def owner_cancels(self) -> None:
        assert self.task is not None
        self._ended("cancelled")
        self._turns(self.task.cancel)

    @invariant()
    def the_wait_ends_as_the_model_says(self) -> None:
        if self.task is None:
            return
        if not self.task.done():
            assert self.expected is None
        elif self.task.cancelled():
            assert self.expected == "cancelled"
        elif isinstance(self.task.exception(), GiveUp):
            assert self.expected == "given up"
        else:
            assert self.expected == ("none" if self.task.result() is None else "read")

    @invariant()
    def the_loop_is_stalled_for_the_time_since_its_last_step_unless_parked(self) -> None:
        parked = self.waiting and not self.reading
        assert self.interruption.stalled_for() == (0.0 if parked else self.clock.now - self.stepped_at)

    @invariant()
    def a_loop_that_is_interrupted_starts_no_batch(self) -> None:
        assert self.interruption.interrupted == (self.stopping or self.rebalancing)
        assert self.interruption.stopping == self.stopping


TestLoopModel = LoopModel.TestCase
TestLoopModel.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
