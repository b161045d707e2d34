"""A search over the workers' lifecycle on the real broker: starts, stops, wiped disks and traffic in any order.

A hypothesis state machine drives up to three in-process workers of one group on
four partitions. Its steps start a worker (on the data directory it left, or one
wiped), stop one (SIGTERM's path: drain, commit, close), stop one as another joins
(once the rebalance reaches it), send content, objections, withdrawals and profile
changes, turn a steady flow of content on or off, or let the group settle. The
workers run on an event loop of their own thread, and the flow on another, so a
step lands wherever the workers are: in a batch and its reads under the loop's
lock, a rebalance, a recovery. The flow runs from the start of each run, so that
most joins land while batches are being read.

Each stop must end well within the shutdown timeout (a stop that held the loop's
lock while closing the consumer would wait for the rebalance listener, and fails
here as `start, stop`), and no worker's loop may end in an error. Whenever the group
is let settle (a step of its own, optionally after a start, and at the end of each
run), every running worker must be ready and the partitions shared out among them,
each once, within a minute: a worker wedged in a rebalance is dropped from the group
after the session timeout and then reports itself ready with partitions another
holds. Each run ends with markers on every partition consumed and the independent
verifier over the inputs and the compacted feed: zero violations, zero losses.
Chaos (`make chaos`) searches the same with processes and kill -9; this one shrinks
what it finds to the fewest steps.

Bounded for `make test` (10 runs of up to 15 steps, ~5-12 s a run); HYPOTHESIS_PROFILE=long
(`make faults`) runs 100.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaProducer
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
# A join, its rebalance and the recovery of a few records take ~3 s here. A member
# wedged in a rebalance is dropped after the session timeout (30 s), and from then on
# holds partitions that another member holds too.
SETTLE_SECONDS = 60.0
# The flow's pause between records (each sent without linger): a batch's top-up read
# then finds records arriving, which is what keeps a wedged read waiting.
TRICKLE_PAUSE = 0.001


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, for the workers; the machine's steps submit to it."""
    with loop_in_a_thread("lifecycle") as running:
        yield running


@pytest.fixture
def traffic_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """Another thread's event loop, for the flow of content: a producer of its own, as upstream is."""
    with loop_in_a_thread("traffic") as running:
        yield running


async def trickle(settings: Settings, author: str, ended: asyncio.Event) -> int:
    """Content by `author`, a record every millisecond or two, until `ended` is set; returns how many were sent."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=0)
    await producer.start()
    sent: list[asyncio.Future[Any]] = []
    try:
        while not ended.is_set():
            record = upsert(f"t-{uuid.uuid4().hex[:12]}-{author}", author)
            sent.append(await producer.send(settings.topics.content, key=record[0], value=record[1]))
            await asyncio.sleep(TRICKLE_PAUSE)  # a pace, not a synchronisation
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return len(sent)


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

    def __init__(
        self, bootstrap: str, root: Path, loop: asyncio.AbstractEventLoop, traffic_loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__()
        self.loop = loop
        self.traffic_loop = traffic_loop
        self.trickle: tuple[asyncio.Event, concurrent.futures.Future[int]] | None = None
        self.root = root / uuid.uuid4().hex[:8]
        self.settings = unique_settings(bootstrap, self.root, partitions=4)
        self.running: dict[int, tuple[FilterWorker, asyncio.Task[None]]] = {}
        self.sent = 0
        self.run(make_topics(self.settings))
        self.run(send_state(self.settings, [("profiles", profile(a)) for a in ACCOUNTS]))
        self.start_traffic(ACCOUNTS[0])

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = STEP_SECONDS) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def worker_settings(self, i: int) -> Settings:
        return replace(self.settings, data_dir=self.root / f"worker-{i}")

    # -- the workers ---------------------------------------------------------------------

    @precondition(lambda self: len(self.running) < WORKERS)
    @rule(data=st.data(), wiped=st.booleans(), then_settle=st.booleans())
    def start(self, data: st.DataObject, wiped: bool, then_settle: bool) -> None:
        """A worker starts; the next step lands in its join and recovery, or (`then_settle`) after them."""
        self.start_worker(data.draw(st.sampled_from(self.stopped())), wiped=wiped)
        if then_settle:
            self.settled()

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
        self.settled()
        self.run(send_markers(self.settings, f"settle-{self.sent}"))
        self.run(content_consumed(self.settings))

    def settled(self) -> None:
        """Within `SETTLE_SECONDS`, every running worker ready and the partitions shared out among them, once each.

        A worker wedged in a rebalance (its revocation waiting for a read that waits for
        the next assignment) holds its group there until the broker drops it from the
        group; the others then share its partitions while it still reports itself
        ready with the ones it had. A later stop would end the wedge, so only a check
        between the steps finds it.
        """
        everything = list(range(self.settings.partitions))

        def shared_out() -> bool:
            workers = [worker for worker, _task in self.running.values()]
            held = sorted(p for worker in workers for p in worker.assigned)
            return all(worker.is_ready for worker in workers) and held == everything

        try:
            self.run(until(shared_out, timeout=SETTLE_SECONDS))
        except TimeoutError:
            where = {i: (sorted(w.assigned), w.is_ready, stack(task)) for i, (w, task) in self.running.items()}
            raise AssertionError(f"the group did not settle in {SETTLE_SECONDS} s: {where}") from None

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

    @precondition(lambda self: self.trickle is None)
    @rule(author=st.sampled_from(ACCOUNTS))
    def traffic(self, author: str) -> None:
        """Content flows again, by `author`."""
        self.start_traffic(author)

    def start_traffic(self, author: str) -> None:
        """Content flows without a pause from here on: the steps that follow land inside batches and their reads."""
        ended = asyncio.Event()
        flowing = asyncio.run_coroutine_threadsafe(trickle(self.settings, author, ended), self.traffic_loop)
        self.trickle = (ended, flowing)

    @precondition(lambda self: self.trickle is not None)
    @rule()
    def quiet(self) -> None:
        """The flow of content stops (once its records in flight are acknowledged)."""
        self.stop_traffic()

    def stop_traffic(self) -> None:
        if self.trickle is None:
            return
        ended, flowing = self.trickle
        self.trickle = None
        self.traffic_loop.call_soon_threadsafe(ended.set)
        self.sent += flowing.result(STEP_SECONDS)

    # -- the end of a run ----------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self.stop_traffic()
            for i, (_worker, task) in self.running.items():
                assert not task.done() or task.exception() is None, f"worker {i}'s loop ended: {stack(task)}"
            if not self.running:
                self.start_worker(0)
            self.settled()
            self.run(send_markers(self.settings, "end"))
            self.run(content_consumed(self.settings))
            report = self.run(verify(self.settings))
            assert (report.violation_count, report.losses.count) == (0, 0), render(report)
        finally:
            for i in list(self.running):
                self.stop_worker(i)


def test_lifecycle_any_order_of_starts_stops_wipes_and_traffic_ends_with_the_verifier_at_zero(
    bootstrap: str, tmp_path: Path, loop: asyncio.AbstractEventLoop, traffic_loop: asyncio.AbstractEventLoop
) -> None:
    class OnThisBroker(Lifecycle):
        def __init__(self) -> None:
            super().__init__(bootstrap, tmp_path, loop, traffic_loop)

    run_state_machine_as_test(
        OnThisBroker,
        settings=settings(
            max_examples=100 if LONG else 10,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
