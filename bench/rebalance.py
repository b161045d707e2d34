"""Rebalance benchmark: what a worker joining or leaving the group costs a live stream.

Under a steady open-loop load (`bench/load.py`, the latency run's: every upsert carries
its scheduled send time), one worker holds all partitions; then a second one joins
with an empty data directory (a scale-out onto a new volume), leaves (SIGTERM: a
scale-in), joins again on its data directory (a pod back after its session ran out),
and leaves again, removed from the group as it stops, as a worker stopped by a
StatefulSet's scale-in removes itself (`stream/runtime/scalein.py`) and `python -m
stream remove-members` removes another (both `stream.runtime.members`). Both run as
the chart runs them: static members (`STREAM_GROUP_INSTANCE_ID`).
For each change, from the moment it is made:

- *settled*: every running worker's `/ready` answers 200 and the partitions are
  shared out among them, each held once (polled every 50 ms);
- the latency of the decisions of the events scheduled from the change to the
  settling (and 5 s more): what the stream's consumers see of it, beside the steady
  latency before the first change.

    python -m bench.rebalance [--accounts 200000] [--rate 2000] [--quick] [--no-write]

A leave alone waits out the session timeout (30 s): a static member that stops sends no
LeaveGroup, so its partitions move only once the broker gives up on it. That is the
cost of the restarts static membership makes free (docs/deploy.md, "Rolling deploys"),
and what removing the member saves a scale-in.

Results go to the `rebalance` block of docs/benchmarks.md and to results.json's
`rebalance`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import common, load, report
from bench import run as harness
from bench.common import Proc, Run
from stream.config import Settings
from stream.runtime import members

BEGIN, END = "<!-- rebalance:begin -->", "<!-- rebalance:end -->"
# After a change settles, its window goes on this long: the backlog it left is worked off then.
AFTER_SETTLED_S = 5.0
REMOVED_ID = "bench-worker-1"  # the second worker's instance id, removed as it leaves the last time
SETTLE_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Change:
    """One change of the group's members and what it cost."""

    name: str
    at: float  # unix time the change was made
    joiner_ready_s: float | None  # the joining worker's start to its first /ready 200 (None: none joined)
    settled_s: float  # the change to the group settled

    def window(self) -> tuple[float, float]:
        """The unix times of the events whose latency is the change's: from it to 5 s after it settled."""
        return self.at, self.at + self.settled_s + AFTER_SETTLED_S


def settled(answers: Sequence[tuple[int, bytes]], partitions: int) -> bool:
    """Every worker ready, and the partitions shared out among them, each held once."""
    held: list[int] = []
    for status, body in answers:
        if status != 200:
            return False
        held.extend(orjson.loads(body).get("partitions", []))
    return sorted(held) == list(range(partitions))


def window_stats(samples: Sequence[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """Latency (ms) of the events scheduled in [start, end): count, p50, p99, max. `samples`: (scheduled, latency s)."""
    inside = sorted(lat for at, lat in samples if start <= at < end)
    if not inside:
        return {"events": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

    def pct(q: float) -> float:
        return round(1000 * inside[min(len(inside) - 1, int(q * len(inside)))], 1)

    return {"events": len(inside), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(1000 * inside[-1], 1)}


class Reader:
    """The decisions topic from its end: each decision's latency from its event's scheduled send time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.sent: dict[bytes, float] = {}
        self.samples: list[tuple[float, float]] = []  # (scheduled send, latency s)
        self._task: asyncio.Task[None] | None = None

    def on_sent(self, event_id: bytes, at: float) -> None:
        """The load sent `event_id`, scheduled at `at`."""
        self.sent[event_id] = at

    async def start(self) -> None:
        """Read from the decisions' end offsets now, on a task of its own."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        tps = [TopicPartition(self._settings.topics.decisions, p) for p in range(common.PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        self._task = asyncio.create_task(self._read(consumer))

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                fetched = await consumer.getmany(timeout_ms=20, max_records=20_000)
                arrival = time.time()
                for eid, _ in load.decisions_in(fetched):
                    at = self.sent.pop(eid, None)
                    if at is not None:
                        self.samples.append((at, arrival - at))
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def _answers(procs: Sequence[Proc]) -> list[tuple[int, bytes]]:
    return [await asyncio.to_thread(common.http_answer, f"http://127.0.0.1:{p.port}/ready") for p in procs]


async def _until_settled(procs: Sequence[Proc], since: float, joiner: Proc | None = None) -> tuple[float, float | None]:
    """Seconds from `since` to the group settled, and the joiner's start to its first /ready 200."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    joiner_ready: float | None = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.log.name} exited with {p.popen.returncode}:\n{p.tail()}")
        answers = await _answers(procs)
        now = time.time()
        if joiner is not None and joiner_ready is None and answers[procs.index(joiner)][0] == 200:
            joiner_ready = now - joiner.started
        if settled(answers, common.PARTITIONS):
            return now - since, joiner_ready
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the group did not settle within {SETTLE_TIMEOUT_S:.0f} s: {await _answers(procs)}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Steady load; a join on an empty disk, a leave, a join on its disk; each change's cost."""
    bench_run = Run(args.bootstrap)
    inputs = bench_run.inputs("rebalance")
    first = bench_run.settings(inputs, "worker", group_instance_id="bench-worker-0")
    second = dataclasses.replace(first, data_dir=bench_run.scratch / "worker-1", group_instance_id=REMOVED_ID)
    logs = bench_run.scratch / "logs"
    changes: list[Change] = []
    try:
        await bench_run.create(first)
        workload = load.workload_for(args.seed, args.accounts, args.rate)
        await load.setup(first, workload)
        reader = Reader(first)
        await reader.start()
        a = common.start_process("worker", first, logs, suffix="-0")
        b: Proc | None = None
        try:
            await common.wait_ready(a, 300)
            await _until_settled([a], time.time())
            # Paced until the last change's window has closed (cancelled then), at most 10 minutes.
            pacing = asyncio.create_task(
                load.paced(first, workload, rate=args.rate, count=int(args.rate * 600), on_sent=reader.on_sent)
            )
            steady_from = time.time() + 5  # the first seconds warm the worker up
            await asyncio.sleep(args.steady)
            steady_window = (steady_from, time.time())  # judged at the end, when all its decisions are in

            async def change(name: str, make: Callable[[], Awaitable[Proc | None]], running: list[Proc]) -> Proc | None:
                at = time.time()
                joiner = await make()
                procs = [*running, joiner] if joiner is not None else running
                settled_s, joiner_ready = await _until_settled(procs, at, joiner)
                changes.append(Change(name, at, joiner_ready, settled_s))
                harness.log(f"rebalance: {name}: settled in {settled_s:.1f} s")
                await asyncio.sleep(AFTER_SETTLED_S + args.phase)  # its window, then a steady stretch
                return joiner

            async def join(suffix: str) -> Proc:
                return common.start_process("worker", second, logs, suffix=suffix)

            async def leave(worker: Proc) -> None:
                await asyncio.to_thread(common.stop_process, worker)  # the drain, off the loop that measures

            async def leave_removed(worker: Proc) -> None:
                await leave(worker)
                removed = await members.remove_static_members(first, [REMOVED_ID])
                if removed != {REMOVED_ID: members.Removal.REMOVED}:
                    raise RuntimeError(f"the stopped worker was not removed from the group: {removed}")

            b = await change("join, empty data directory", lambda: join("-1"), [a])
            assert b is not None
            gone, b = b, None
            await change("leave (SIGTERM)", lambda: leave(gone), [a])
            b = await change("join again, data directory kept", lambda: join("-1b"), [a])
            assert b is not None
            gone, b = b, None
            await change("leave (SIGTERM), then removed", lambda: leave_removed(gone), [a])
            if pacing.done():
                raise RuntimeError("the load ended before the last change's window closed")
            pacing.cancel()
            await asyncio.gather(pacing, return_exceptions=True)
            await asyncio.sleep(2)  # the last decisions reach the reader
        finally:
            await reader.stop()
            for p in (b, a):
                if p is not None:
                    await asyncio.to_thread(common.stop_process, p)
    finally:
        await bench_run.cleanup()
    return {
        "rate": args.rate,
        "accounts": args.accounts,
        "steady": window_stats(reader.samples, *steady_window),
        "changes": [
            {
                **dataclasses.asdict(c),
                "latency": window_stats(reader.samples, *c.window()),
            }
            for c in changes
        ],
        "unmatched": len(reader.sent),
    }


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f} ms"


def write(result: dict[str, Any]) -> None:
    """Write the result into its section of docs/benchmarks.md."""
    steady = result["steady"]
    rows = "\n".join(
        f"| {c['name']} | {_s(c['joiner_ready_s'])} "
        f"| {c['settled_s']:.1f} s | {c['latency']['events']:,} | {_ms(c['latency']['p50_ms'])} "
        f"| {_ms(c['latency']['p99_ms'])} | {_ms(c['latency']['max_ms'])} |"
        for c in result["changes"]
    )
    block = f"""{BEGIN}
## Rebalances: a worker joining or leaving a live stream

Run `python -m bench.rebalance` (this block is rewritten by it; `make bench` runs it).
Machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()};
broker on the same machine. An open-loop load of {result["rate"]:,.0f} events/s over
{result["accounts"]:,} accounts (`bench/load.py`), one worker holding the 4 partitions; then a
second worker joins with an empty data directory, leaves on SIGTERM, joins again on
its data directory, and leaves again, removed from the group as it stops (what a worker
stopped by a StatefulSet's scale-in does, or `python -m stream remove-members`;
docs/deploy.md). Both are static members, as the chart runs them. *Settled*: from
the change until every worker's `/ready` is 200 and the partitions are shared out among
them, each held once. The latency is that of the events scheduled from the change to
{AFTER_SETTLED_S:g} s after it settled (scheduled send to the decision read by a reader).

Steady, before the first change: {steady["events"]:,} events, p50 {_ms(steady["p50_ms"])},
p99 {_ms(steady["p99_ms"])}, max {_ms(steady["max_ms"])}.

| change | joiner's start to its /ready | settled | events in the window | p50 | p99 | max |
|---|---|---|---|---|---|---|
{rows}

A worker that leaves sends no LeaveGroup (static membership): its partitions move once
the broker's session timeout (30 s) has run out, and their events wait that long. That
is the price of the restarts static membership makes free (a pod back within the
session keeps its partitions and causes no rebalance; docs/deploy.md). Removed from the
group as it stops, a worker that will not come back hands its partitions on within seconds
(its drain, the removal and the group's join). A join takes the
new process's start, the group's join (the other members learn of it at their next
heartbeat, every second), and the state of the partitions it takes: rebuilt from the
compacted topics on an empty data directory; on its own data directory, only what it
missed. Every member stops deciding during the join (aiokafka's eager protocol),
which the max of a join's window shows. Runs vary by a second or two here
(bench/notes.md, "Heartbeats").
Events unmatched at the end (sent, no decision read): {result["unmatched"]:,}.
{END}"""
    report.write_block(block)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.rebalance`: run, print and record the rebalance benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench.rebalance")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--rate", type=float, default=2000.0, help="content events/s [2,000]")
    parser.add_argument("--accounts", type=int, default=200_000, help="accounts [200,000]")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of steady load before the first change")
    parser.add_argument("--phase", type=float, default=20.0, help="seconds after each change settled")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="20,000 accounts, 500 events/s, short phases: a smoke run")
    parser.add_argument(
        "--no-write", action="store_true", help="print the result only: docs/benchmarks.md and results.json unchanged"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.accounts, args.rate, args.steady, args.phase = 20_000, 500.0, 10.0, 5.0
    common.ensure_broker(args.bootstrap)
    result = asyncio.run(run(args))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if not args.no_write and not args.quick:
        write(result)
        harness.record("rebalance", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
