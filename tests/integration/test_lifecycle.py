"""A search over the workers' lifecycle on the real broker: starts, stops, wiped disks and traffic in any order.

A hypothesis state machine drives up to three in-process workers of one group on
four partitions. Its steps start a worker (on the data directory it left, or one
wiped), stop one (SIGTERM's path: drain, commit, close), stop one as another joins
(once the rebalance reaches it), send content, objections, withdrawals and profile
changes, or let the group settle. The workers run on an event loop of their own
thread, so a step lands wherever the others are: in a batch, a rebalance, a
recovery. Each stop must end well within the shutdown timeout (a stop that held
the loop's lock while closing the consumer would wait for the rebalance listener,
and fails here as `start, stop`), and no worker's loop may end in an error. Each run
ends with one worker at least, markers on every partition consumed, and the
independent verifier over the inputs and the compacted feed: zero violations, zero
losses. Chaos (`make chaos`) searches the same with processes and kill -9; this one
shrinks what it finds to the fewest steps.

Bounded for `make test` (10 runs of up to 15 steps, ~2 s a run); HYPOTHESIS_PROFILE=long
(`make faults`) runs 100.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from stream.config import Settings
from stream.runtime.worker import FilterWorker
from stream.verifier.verify import render, verify

from .harness import (
    build_worker,
    content_consumed,
    loop_in_a_thread,
    make_topics,
    send,
    send_markers,
    unique_settings,
    until,
)
from .test_filter_scenario import objection, profile, upsert
from .test_topology import send_state

pytestmark = pytest.mark.integration

T = TypeVar("T")

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
ACCOUNTS = tuple(f"acct-{i}" for i in range(8))
WORKERS = 3
# A stop drains one batch and closes the clients once a rebalance in flight ends; a
# stop that takes longer than this waits for something it should not.
STOP_SECONDS = 20.0
STEP_SECONDS = 120.0


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, for the workers; the machine's steps submit to it."""
    with loop_in_a_thread("lifecycle") as running:
        yield running


async def spawn(worker: FilterWorker) -> asyncio.Task[None]:
    """The worker's loop as a task of the running loop."""
    return asyncio.create_task(worker.run())


def stack(task: asyncio.Task[None]) -> str:
    """Where a worker's loop is (each coroutine down to the future awaited), or how it ended: for failure messages."""
    if task.done():
        return repr(task.exception())
    where: list[str] = []
    awaiting: Any = task.get_coro()
    while awaiting is not None:  # a coroutine's frame, then what it awaits, down to a future
        frame = getattr(awaiting, "cr_frame", None)
        if frame is not None:
            where.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaiting = getattr(awaiting, "cr_await", None)
    return "\n".join(where) or repr(task)


class Lifecycle(RuleBasedStateMachine):
    """Up to three workers of one group; each run on topics of its own."""

    def __init__(self, bootstrap: str, root: Path, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.root = root / uuid.uuid4().hex[:8]
        self.settings = unique_settings(bootstrap, self.root, partitions=4)
        self.running: dict[int, tuple[FilterWorker, asyncio.Task[None]]] = {}
        self.sent = 0
        self.run(make_topics(self.settings))
        self.run(send_state(self.settings, [("profiles", profile(a)) for a in ACCOUNTS]))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = STEP_SECONDS) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def worker_settings(self, i: int) -> Settings:
        return replace(self.settings, data_dir=self.root / f"worker-{i}")

    # -- the workers ---------------------------------------------------------------------

    @precondition(lambda self: len(self.running) < WORKERS)
    @rule(data=st.data(), wiped=st.booleans())
    def start(self, data: st.DataObject, wiped: bool) -> None:
        self.start_worker(data.draw(st.sampled_from(self.stopped())), wiped=wiped)

    def stopped(self) -> list[int]:
        return [i for i in range(WORKERS) if i not in self.running]

    def start_worker(self, i: int, *, wiped: bool = False) -> None:
        if wiped:
            shutil.rmtree(self.worker_settings(i).data_dir, ignore_errors=True)
        worker = build_worker(self.worker_settings(i))
        self.run(worker.start())
        self.running[i] = (worker, self.run(spawn(worker)))

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        self.stop_worker(data.draw(st.sampled_from(sorted(self.running))))

    def stop_worker(self, i: int) -> None:
        worker, task = self.running.pop(i)
        try:
            self.run(worker.stop(), timeout=STOP_SECONDS)
        except TimeoutError:
            raise AssertionError(f"worker {i}'s stop took over {STOP_SECONDS} s: {stack(task)}") from None
        try:  # its loop ends, and not in an error
            self.run(asyncio.wait_for(asyncio.shield(task), STOP_SECONDS))
        except TimeoutError:
            raise AssertionError(f"worker {i}'s loop still runs after its stop: {stack(task)}") from None

    @precondition(lambda self: 0 < len(self.running) < WORKERS)
    @rule(data=st.data())
    def stop_one_as_another_joins(self, data: st.DataObject) -> None:
        """A new worker joins; a running one is stopped once the rebalance reaches it (it turns not ready)."""
        i = data.draw(st.sampled_from(sorted(self.running)))
        worker, _task = self.running[i]
        self.start_worker(data.draw(st.sampled_from(self.stopped())))
        try:
            self.run(until(lambda: not worker.is_ready, timeout=15.0))
        except TimeoutError:
            pass  # the rebalance passed it by unseen (or took longer): the stop lands wherever it is
        self.stop_worker(i)

    @precondition(lambda self: bool(self.running))
    @rule()
    def settle(self) -> None:
        """Everything sent so far decided and committed: a step may land on a quiet group, too."""
        self.run(send_markers(self.settings, f"settle-{self.sent}"))
        self.run(content_consumed(self.settings))

    # -- the traffic ---------------------------------------------------------------------

    @rule(author=st.sampled_from(ACCOUNTS), count=st.integers(1, 30))
    def content(self, author: str, count: int) -> None:
        items = [upsert(f"c-{self.sent + n}-{author}", author) for n in range(count)]
        self.sent += count
        self.run(send(self.settings, self.settings.topics.content, items))

    @rule(account=st.sampled_from(ACCOUNTS), status=st.sampled_from(["objected", "withdrawn"]))
    def choice(self, account: str, status: str) -> None:
        self.run(send(self.settings, self.settings.topics.objections, [objection(account, status)]))

    @rule(
        account=st.sampled_from(ACCOUNTS),
        change=st.sampled_from(["adult in GB", "adult in BR", "minor", "in DE", "deleted"]),
    )
    def account(self, account: str, change: str) -> None:
        record = {
            "adult in GB": profile(account, country="GB"),
            "adult in BR": profile(account, country="BR"),
            "minor": profile(account, birth="2015-01-01"),
            "in DE": profile(account, country="DE"),
            "deleted": (account.encode(), None),
        }[change]
        self.run(send(self.settings, self.settings.topics.profiles, [record]))

    # -- the end of a run ----------------------------------------------------------------

    def teardown(self) -> None:
        try:
            for i, (_worker, task) in self.running.items():
                assert not task.done() or task.exception() is None, f"worker {i}'s loop ended: {stack(task)}"
            if not self.running:
                self.start_worker(0)
            self.run(send_markers(self.settings, "end"))
            self.run(content_consumed(self.settings))
            report = self.run(verify(self.settings))
            assert (report.violation_count, report.losses.count) == (0, 0), render(report)
        finally:
            for i in list(self.running):
                self.stop_worker(i)


def test_lifecycle_any_order_of_starts_stops_wipes_and_traffic_ends_with_the_verifier_at_zero(
    bootstrap: str, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    class OnThisBroker(Lifecycle):
        def __init__(self) -> None:
            super().__init__(bootstrap, tmp_path, loop)

    run_state_machine_as_test(
        OnThisBroker,
        settings=settings(
            max_examples=100 if LONG else 10,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
