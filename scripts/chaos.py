"""The chaos run (`make chaos`): worker processes under load, upstream disorder and random faults.

Owns one long end-to-end check, run by hand and never in CI: on the local broker it
creates uuid-named topics, starts several `python -m stream worker` processes in one
consumer group, and for `--minutes` (10) drives a seeded workload (stream/workload/generator.py:
content, profile and objection changes, a small share of malformed records) at a
modest rate, mixing in what an at-least-once, reordering upstream delivers:

- duplicates: a content record re-sent as it was, soon or several seconds later;
  and profile or objection records re-sent at once;
- reorders: after an edit of an item, its previous upsert re-sent (older
  `event_time`); after a delete, the item's last upsert re-sent.

20 to 40 s (seeded) after the previous fault is done it injects the next: kill -9 of
a random worker (restarted at once, or left down until a later start), SIGTERM of one
(restarted once it has drained), a stop (SIGTERM, left down; never the last running worker), or the start of
a stopped one. A kill -9 may leave no worker running until the next fault, which is
then a start.

At the end it restarts every worker, waits (on the group's committed offsets and the
workers' own lag gauges, never on a fixed sleep) until all have caught up, runs the
independent verifier (`stream.verifier.verify`), checks that every input record left a trace
(a decision, a skip or a dead letter per record), and reports the figures. Exit
status 1 on any violation, loss, minimisation problem, untraced input or worker that
exits without a signal from the run; for each content id the verifier names, the
sequence of its events, decisions and feed records and its author's state changes is
written to `forensics.txt` in the run directory.
`--docs PATH` rewrites the chaos section of that file (between the `chaos:begin` and
`chaos:end` markers) and nothing else.

It drives the worker from outside, as an operator and an upstream would: it imports
the generator, the verifier and topic creation, never the worker or the rule.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import heapq
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, OrderedDict, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.codec import has_zstd

from stream.config import DEV_PSEUDONYM_KEY, Settings, TopicNames
from stream.runtime.topics import create_topics
from stream.verifier.verify import Report, render, to_json, verify
from stream.workload.generator import RecordKind, TopicKind, Workload

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.UTC
BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"

# How long the end of the run waits for each step before it gives up (and fails).
READY_TIMEOUT_S = 300.0
CATCH_UP_TIMEOUT_S = 900.0
DRAIN_TIMEOUT_S = 60.0  # a SIGTERM drains within STREAM_SHUTDOWN_TIMEOUT (30 s); past this it is killed
POLL_S = 0.25
SAMPLE_S = 2.0
PROGRESS_S = 60.0
# Items the load remembers for reorders: edits and deletes of older items get none.
HISTORY_ITEMS = 60_000
SETTLE_EVERY = 1000  # records in flight before the producer waits for the previous batch's acks


class Fault(StrEnum):
    """One fault injected into the fleet."""

    KILL_RESTART = "kill -9 and restart at once"
    KILL_DOWN = "kill -9 (left down)"
    SIGTERM_RESTART = "SIGTERM and restart after the drain"
    STOP = "stop (SIGTERM, left down)"
    START = "start of a stopped worker"


class Injection(StrEnum):
    """Upstream disorder mixed into the load."""

    DUPLICATE = "duplicate content record"
    STATE_DUPLICATE = "duplicate profile/objection record"
    REORDER = "older upsert re-sent after an edit"
    RESURRECT = "upsert re-sent after the item's delete"


# --- the fleet -----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET on loopback; status 0 when nothing answers."""

    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a fixed http://127.0.0.1 URL
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except OSError:
            return 0, b""

    return await asyncio.to_thread(get)


@dataclass
class Worker:
    """One worker slot: its own data directory, web port and log, restarted in place."""

    name: str
    data_dir: Path
    port: int
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    generation: int = 0
    signalled: bool = False  # this run sent the current process a signal: its exit is no surprise

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.generation += 1
        self.signalled = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            log.write(f"\n=== chaos: start #{self.generation} at {dt.datetime.now(UTC):%H:%M:%S} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream", "worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, "STREAM_WEB_PORT": str(self.port)},
                cwd=ROOT,
            )
        self.started = time.monotonic()

    async def end(self, sig: signal.Signals) -> tuple[float, bool]:
        """Signal this worker's process and wait for it: seconds it took, and whether it had to be killed."""
        proc = self.proc
        assert proc is not None
        began = time.monotonic()
        if proc.poll() is None:
            self.signalled = True
            proc.send_signal(sig)
            try:
                await asyncio.to_thread(proc.wait, DRAIN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 30)
                return time.monotonic() - began, True
        return time.monotonic() - began, False

    async def ready(self) -> bool:
        return self.running and (await http_get(f"http://127.0.0.1:{self.port}/ready"))[0] == 200

    async def lag(self) -> dict[tuple[str, str], float] | None:
        """The worker's `eligibility_consumer_lag_records` by (input, partition); None if it does not answer."""
        status, body = await http_get(f"http://127.0.0.1:{self.port}/metrics")
        if status != 200:
            return None
        lag: dict[tuple[str, str], float] = {}
        for line in body.decode().splitlines():
            if line.startswith("eligibility_consumer_lag_records{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                lag[(labels.get("input", ""), labels.get("partition", ""))] = float(line.rsplit(" ", 1)[1])
        return lag


class Phase(StrEnum):
    """Why a worker was started or sent SIGTERM."""

    FIRST = "first start"
    FAULT = "fault"
    FINAL = "final restart"


@dataclass
class Recoveries:
    """Starts of a worker and how long each took to answer /ready, by why it was started."""

    seconds: dict[Phase, list[float]] = field(default_factory=lambda: {p: [] for p in Phase})
    interrupted: int = 0  # stopped or killed again before it became ready
    timed_out: int = 0


async def await_ready(worker: Worker, phase: Phase, recoveries: Recoveries) -> None:
    """Record the seconds from this start of the worker to its /ready answering 200."""
    generation, began = worker.generation, worker.started
    while True:
        if worker.generation != generation or not worker.running:
            recoveries.interrupted += 1
            return
        if await worker.ready():
            recoveries.seconds[phase].append(time.monotonic() - began)
            return
        if time.monotonic() - began > READY_TIMEOUT_S:
            recoveries.timed_out += 1
            return
        await asyncio.sleep(POLL_S)


@dataclass
class FaultLog:
    by_kind: Counter[Fault] = field(default_factory=Counter)
    drains: dict[Phase, list[float]] = field(default_factory=lambda: {p: [] for p in Phase})  # SIGTERM to exit
    forced_kills: int = 0  # SIGTERMs that did not end the process within DRAIN_TIMEOUT_S
    timeline: list[str] = field(default_factory=list)


class Fleet:
    """The worker slots, the faults applied to them, and the watchers of their recoveries."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.recoveries = Recoveries()
        self.faults = FaultLog()
        self.exits: list[str] = []  # workers that exited with no signal from this run
        self._watchers: list[asyncio.Task[None]] = []
        self._t0 = time.monotonic()

    def running(self) -> list[Worker]:
        return [w for w in self.workers if w.running]

    def note_exits(self) -> None:
        """Record each worker process that ended on its own (a crash, not a fault of this run)."""
        for w in self.workers:
            if w.proc is not None and not w.signalled and w.proc.poll() is not None:
                w.signalled = True  # recorded once
                line = f"{time.monotonic() - self._t0:6.1f}s {w.name} EXITED ON ITS OWN, status {w.proc.returncode}"
                self.exits.append(line)
                self.faults.timeline.append(line)
                print(f"chaos: {line}", flush=True)

    def start(self, worker: Worker, phase: Phase) -> None:
        worker.start()
        self._watchers.append(asyncio.create_task(await_ready(worker, phase, self.recoveries)))

    async def sigterm(self, worker: Worker, phase: Phase) -> None:
        seconds, killed = await worker.end(signal.SIGTERM)
        self.faults.drains[phase].append(seconds)
        self.faults.forced_kills += killed

    def choose(self, rng: random.Random) -> tuple[Fault, Worker]:
        running, stopped = self.running(), [w for w in self.workers if not w.running]
        if not running:
            return Fault.START, rng.choice(stopped)
        weights: dict[Fault, int] = {Fault.KILL_RESTART: 2, Fault.KILL_DOWN: 2, Fault.SIGTERM_RESTART: 3}
        if len(running) > 1:
            weights[Fault.STOP] = 2
        if stopped:
            weights[Fault.START] = 4
        fault = rng.choices(list(weights), weights=list(weights.values()))[0]
        return fault, rng.choice(stopped if fault is Fault.START else running)

    async def inject(self, fault: Fault, worker: Worker) -> None:
        self.faults.by_kind[fault] += 1
        at = time.monotonic() - self._t0
        before = len(self.running())
        if fault in (Fault.KILL_RESTART, Fault.KILL_DOWN):
            await worker.end(signal.SIGKILL)
        elif fault in (Fault.SIGTERM_RESTART, Fault.STOP):
            await self.sigterm(worker, Phase.FAULT)
        if fault in (Fault.KILL_RESTART, Fault.SIGTERM_RESTART, Fault.START):
            self.start(worker, Phase.FAULT)
        line = f"{at:6.1f}s {fault.value:<36} {worker.name}  running {before} -> {len(self.running())}"
        self.faults.timeline.append(line)
        print(f"chaos: {line}", flush=True)

    async def restart_all(self) -> None:
        """SIGTERM every running worker at once, then start them all."""
        self.note_exits()
        await asyncio.gather(*(self.sigterm(w, Phase.FINAL) for w in self.running()))
        for w in self.workers:
            self.start(w, Phase.FINAL)

    async def all_ready(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not all([await w.ready() for w in self.workers]):
                dead = [w.name for w in self.workers if not w.running]
                if dead:
                    raise RuntimeError(f"workers exited: {dead} (see their logs)")
                await asyncio.sleep(POLL_S)

    async def settle_watchers(self) -> None:
        await asyncio.gather(*self._watchers)
        self._watchers.clear()

    def kill_everything(self) -> None:
        """Last resort on the way out: SIGKILL the processes this run started, by their own handles."""
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(30)


async def chaos(fleet: Fleet, rng: random.Random, deadline: float, low: float, high: float) -> None:
    """One fault `low` to `high` s after the previous one is done (a drain takes up to 30 s), until the deadline."""
    due = time.monotonic() + rng.uniform(low, high)
    while due < deadline:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        fleet.note_exits()  # before choosing: a crashed worker counts as stopped
        fault, worker = fleet.choose(rng)
        await fleet.inject(fault, worker)
        due = time.monotonic() + rng.uniform(low, high)


@dataclass
class Health:
    """What the sampler saw of the fleet and the group's progress during the load."""

    samples: int = 0
    none_ready: int = 0  # samples with no worker answering /ready 200
    longest_none_ready: float = 0.0
    max_backlog: int = 0  # content records not yet committed by the group, all partitions
    longest_stall: float = 0.0  # the longest a content partition with a backlog saw no commit


async def sample(fleet: Fleet, settings: Settings, health: Health, load: Load, stop: asyncio.Event) -> None:
    """Every SAMPLE_S: which workers are ready, and how far the group's commits trail the content topic.

    The commits, not the workers' gauges: a partition whose owner was killed has no
    gauge until the group gives it to another worker (up to the 30 s session timeout).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id, enable_auto_commit=False
    )
    await consumer.start()
    tps = [TopicPartition(settings.topics.content, p) for p in range(settings.partitions)]
    last: dict[TopicPartition, tuple[int, float]] = {}  # committed offset, and since when
    none_since: float | None = None
    began = reported = time.monotonic()
    try:
        while not stop.is_set():
            fleet.note_exits()
            ready = [await w.ready() for w in fleet.workers]
            ends = await consumer.end_offsets(tps)
            now = time.monotonic()
            health.samples += 1
            if any(ready):
                none_since = None
            else:
                health.none_ready += 1
                none_since = now if none_since is None else none_since
                health.longest_none_ready = max(health.longest_none_ready, now - none_since)
            backlog = 0
            for tp in tps:
                committed = await consumer.committed(tp) or 0
                backlog += max(0, ends[tp] - committed)
                if tp not in last or last[tp][0] != committed or committed >= ends[tp]:
                    last[tp] = (committed, now)
                else:
                    health.longest_stall = max(health.longest_stall, now - last[tp][1])
            health.max_backlog = max(health.max_backlog, backlog)
            if now - reported >= PROGRESS_S:
                reported = now
                print(
                    f"chaos: {now - began:6.1f}s sent {load.content_records:,} content records; "
                    f"{len(fleet.running())} workers running, {sum(ready)} ready; uncommitted {backlog:,}",
                    flush=True,
                )
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_S)
            except TimeoutError:
                pass
    finally:
        await consumer.stop()


# --- the load ------------------------------------------------------------------------


@dataclass
class Load:
    """What was sent."""

    setup: Counter[RecordKind] = field(default_factory=Counter)  # the population before the stream
    by_kind: Counter[RecordKind] = field(default_factory=Counter)  # the stream
    injected: Counter[Injection] = field(default_factory=Counter)
    content_records: int = 0  # every record sent to the content topic, injected ones included
    state_records: int = 0
    seconds: float = 0.0
    # Event id -> what each re-send of it was, for the forensics.
    resent: dict[str, list[Injection]] = field(default_factory=lambda: defaultdict(list))


@dataclass(frozen=True, slots=True)
class Sent:
    key: bytes | None
    value: bytes
    op: str
    event_id: str


class Sender:
    """One idempotent producer; waits for acknowledgements a batch behind."""

    def __init__(self, producer: AIOKafkaProducer, topics: dict[TopicKind, str]) -> None:
        self.producer = producer
        self.topics = topics
        self.current: list[asyncio.Future[Any]] = []
        self.previous: list[asyncio.Future[Any]] = []

    async def send(self, topic: TopicKind, key: bytes | None, value: bytes | None, timestamp_ms: int | None) -> None:
        self.current.append(
            await self.producer.send(self.topics[topic], key=key, value=value, timestamp_ms=timestamp_ms)
        )
        if len(self.current) >= SETTLE_EVERY:
            await asyncio.gather(*self.previous)  # raises if the broker refused one: the run is void
            self.previous, self.current = self.current, []

    async def flush(self) -> None:
        await asyncio.gather(*self.previous, *self.current)
        self.previous, self.current = [], []


@dataclass(frozen=True)
class LoadOptions:
    rate: float
    accounts: int
    seed: int
    malformed_share: float
    duplicate_share: float  # of content records: re-sent as they were
    state_duplicate_share: float  # of profile and objection records: re-sent at once
    reorder_share: float  # of edits: the previous upsert re-sent after them
    resurrect_share: float  # of deletes: the last upsert re-sent after them


def resend_delay(rng: random.Random, rate: float) -> int:
    """How many generated events later a re-send goes out: mostly soon, sometimes past a fault."""
    seconds = rng.uniform(0, 0.5) if rng.random() < 0.6 else rng.uniform(0.5, 30)
    return int(seconds * rate)


async def drive_load(settings: Settings, opts: LoadOptions, run: str, deadline: float, load: Load) -> None:
    """Send the workload's setup, then its stream at `opts.rate` with duplicates and reorders until `deadline`."""
    rng = random.Random(opts.seed ^ 0x5EED)  # noqa: S311 - reproducible test traffic, not a secret
    # `now` an hour back, as in the fault suite: every notice the stream "shows now" is
    # already in the past for the worker and the verifier.
    now = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    workload = Workload(
        seed=opts.seed,
        accounts=opts.accounts,
        now=now,
        malformed_share=opts.malformed_share,
        step=dt.timedelta(seconds=1 / opts.rate),
        run=run,
    )
    topics = {
        TopicKind.CONTENT: settings.topics.content,
        TopicKind.PROFILES: settings.topics.profiles,
        TopicKind.OBJECTIONS: settings.topics.objections,
    }
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        compression_type="zstd" if has_zstd() else None,
    )
    await producer.start()
    sender = Sender(producer, topics)
    began = time.monotonic()
    try:
        # The population exists before the stream: stamped an hour back, like its `now`.
        hour_ago_ms = int(now.timestamp() * 1000)
        for item in workload.setup():
            await sender.send(item.record.topic, item.record.key, item.record.value, hour_ago_ms)
            load.setup[item.kind] += 1
            load.state_records += 1
        await sender.flush()

        history: OrderedDict[str, Sent] = OrderedDict()  # content id -> its latest generated event
        later: list[tuple[int, int, Sent, Injection]] = []  # (due at generated event n, seq, record, why)
        seq = 0
        n = 0
        loop = asyncio.get_running_loop()
        interval = 1 / opts.rate
        t0 = loop.time()

        def schedule(record: Sent, why: Injection) -> None:
            nonlocal seq
            seq += 1
            heapq.heappush(later, (n + resend_delay(rng, opts.rate), seq, record, why))

        for item in workload.stream(None):
            topic, key, value = item.record
            if topic is not TopicKind.CONTENT:
                await sender.send(topic, key, value, None)
                load.by_kind[item.kind] += 1
                load.state_records += 1
                if rng.random() < opts.state_duplicate_share:
                    await sender.send(topic, key, value, None)
                    load.injected[Injection.STATE_DUPLICATE] += 1
                    load.state_records += 1
                continue
            delay = t0 + n * interval - loop.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
            if time.monotonic() >= deadline:
                break
            n += 1
            await sender.send(topic, key, value, None)
            load.by_kind[item.kind] += 1
            load.content_records += 1
            if item.kind is not RecordKind.MALFORMED and value is not None:
                event = orjson.loads(value)
                sent = Sent(key, value, str(event["op"]), str(event["event_id"]))
                cid = str(event["content_id"])
                previous = history.pop(cid, None)
                history[cid] = sent
                if len(history) > HISTORY_ITEMS:
                    history.popitem(last=False)
                if previous is not None and previous.op == "upsert":
                    if sent.op == "delete" and rng.random() < opts.resurrect_share:
                        schedule(previous, Injection.RESURRECT)
                    elif sent.op == "upsert" and rng.random() < opts.reorder_share:
                        schedule(previous, Injection.REORDER)
                if rng.random() < opts.duplicate_share:
                    schedule(sent, Injection.DUPLICATE)
            while later and later[0][0] <= n:
                _, _, record, why = heapq.heappop(later)
                await sender.send(TopicKind.CONTENT, record.key, record.value, None)
                load.injected[why] += 1
                load.resent[record.event_id].append(why)
                load.content_records += 1
        # Re-sends still waiting go out now: the upstream delivers them late, not never.
        for _, _, record, why in sorted(later):
            await sender.send(TopicKind.CONTENT, record.key, record.value, None)
            load.injected[why] += 1
            load.resent[record.event_id].append(why)
            load.content_records += 1
        await sender.flush()
    finally:
        await producer.stop()
        load.seconds = time.monotonic() - began


# --- reading the topics --------------------------------------------------------------


async def read_topic(settings: Settings, topic: str) -> AsyncIterator[Any]:
    """Every record of `topic` up to the end offsets taken when reading starts."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]  # every topic of the run has these
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = set(tps)
        while True:
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if not remaining:
                return
            fetched = await consumer.getmany(*remaining, timeout_ms=500, max_records=20_000)
            for tp, records in fetched.items():
                for r in records:
                    if r.offset < ends[tp]:
                        yield r
    finally:
        await consumer.stop()


async def send_markers(settings: Settings, tag: str) -> None:
    """A content delete on every partition after everything sent (as the fault suite does).

    Once the group has committed them, every worker's freshness gate has applied every
    state change sent before them, so all their retractions are on the feed.
    """
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        futures = []
        for p in range(settings.partitions):
            author = f"marker-{tag}-{p}"
            value = orjson.dumps(
                {
                    "event_id": author,
                    "op": "delete",
                    "content_id": author,
                    "author_id": author,
                    "event_time": dt.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            )
            futures.append(await producer.send(settings.topics.content, key=author.encode(), value=value, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def content_committed(settings: Settings, timeout: float) -> None:
    """Wait until the group committed the content topic up to its current end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topics.content, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        async with asyncio.timeout(timeout):
            while [tp for tp in tps if (await consumer.committed(tp) or 0) < ends[tp]]:
                await asyncio.sleep(POLL_S)  # polling the committed offsets, not a guess at timing
    finally:
        await consumer.stop()


async def lag_zero(fleet: Fleet, partitions: int, timeout: float) -> None:
    """Wait until the workers' lag gauges cover every input partition and all read 0."""
    wanted = {(i, str(p)) for i in ("content", "profiles", "objections") for p in range(partitions)}
    async with asyncio.timeout(timeout):
        while True:
            seen: dict[tuple[str, str], float] = {}
            for w in fleet.workers:
                seen.update(await w.lag() or {})
            if wanted <= set(seen) and not any(seen.values()):
                return
            await asyncio.sleep(1.0)  # the gauges refresh about once a second


@dataclass
class Traces:
    """Did every content record leave a trace: a decision (or skip) per record, or a dead letter?"""

    content_records: int = 0
    dead_letters: int = 0
    decisions_by_action: Counter[str] = field(default_factory=Counter)
    skips_by_reason: Counter[str] = field(default_factory=Counter)
    untraced: list[tuple[int, int, str]] = field(default_factory=list)  # (partition, offset, content id)


async def check_traces(settings: Settings) -> Traces:
    traces = Traces()
    dead: set[tuple[int, int]] = set()
    async for r in read_topic(settings, settings.topics.dlq):
        traces.dead_letters += 1
        letter = orjson.loads(r.value)
        if letter.get("topic") == settings.topics.content:
            dead.add((int(letter["partition"]), int(letter["offset"])))
    decided: Counter[str] = Counter()
    async for r in read_topic(settings, settings.topics.decisions):
        d = orjson.loads(r.value)
        traces.decisions_by_action[str(d.get("action"))] += 1
        if d.get("action") == "skip":
            traces.skips_by_reason[str(d.get("reason"))] += 1
        if d.get("action") in ("decide", "skip") or d.get("cause") == "content_deleted":
            decided[str(d.get("event_id"))] += 1
    # Each record of an event id needs one record of that id in the audit log
    # (at least once: replays after a crash may have written more).
    by_event: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    async for r in read_topic(settings, settings.topics.content):
        traces.content_records += 1
        if (r.partition, r.offset) in dead:
            continue
        try:
            event = orjson.loads(r.value)
            event_id, content_id = str(event["event_id"]), str(event.get("content_id"))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            traces.untraced.append((r.partition, r.offset, "?"))  # unreadable, and no dead letter names it
            continue
        by_event[event_id].append((r.partition, r.offset, content_id))
    for event_id, records in by_event.items():
        missing = len(records) - decided[event_id]
        if missing > 0:
            traces.untraced.extend(records[-missing:])
    return traces


# --- forensics -----------------------------------------------------------------------


CONTENT_FIELDS = ("op", "event_id", "event_time", "visibility", "content_type", "created_at")
DECISION_FIELDS = ("action", "reason", "cause", "eligible", "event_id", "event_time", "decided_at")
FEED_FIELDS = ("source_event_id", "jurisdiction", "decided_at")
PROFILE_FIELDS = ("birth_date", "country", "notified_at", "updated_at")
OBJECTION_FIELDS = ("status", "at", "request_id")


def _brief(value: bytes | None, fields: Sequence[str]) -> str:
    if value is None:
        return "TOMBSTONE"
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return f"unreadable {value[:60]!r}"
    if not isinstance(obj, dict):
        return f"not an object {value[:60]!r}"
    return " ".join(f"{f}={obj.get(f)}" for f in fields if f in obj)


def _at(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


async def forensics(settings: Settings, content_ids: set[str], load: Load, path: Path) -> str:
    """The history of each named content id: its events, decisions, feed records and its author's state."""
    events: dict[str, list[str]] = defaultdict(list)
    authors: dict[str, str] = {}
    seen: Counter[str] = Counter()
    async for r in read_topic(settings, settings.topics.content):
        try:
            obj = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or obj.get("content_id") not in content_ids:
            continue
        cid, eid = str(obj["content_id"]), str(obj.get("event_id"))
        authors[cid] = r.key.decode(errors="replace") if r.key else "?"
        seen[eid] += 1
        # An event's records share a key, hence a partition: its k-th repeat there is its k-th re-send.
        resends = load.resent.get(eid, [])
        k = seen[eid] - 2
        note = "" if k < 0 else f"  <- RE-SENT ({resends[k].value if k < len(resends) else 'not by this run'})"
        brief = _brief(r.value, CONTENT_FIELDS)
        events[cid].append(f"{_at(r.timestamp)} content   p{r.partition}@{r.offset} {brief}{note}")
    async for r in read_topic(settings, settings.topics.decisions):
        cid = r.key.decode(errors="replace") if r.key else ""
        if cid in content_ids:
            brief = _brief(r.value, DECISION_FIELDS)
            events[cid].append(f"{_at(r.timestamp)} decision  p{r.partition}@{r.offset} {brief}")
    async for r in read_topic(settings, settings.topics.feed):
        cid = r.key.decode(errors="replace") if r.key else ""
        if cid in content_ids:
            brief = _brief(r.value, FEED_FIELDS)
            events[cid].append(f"{_at(r.timestamp)} feed      p{r.partition}@{r.offset} {brief}")
    wanted = set(authors.values())
    for topic, fields in ((settings.topics.profiles, PROFILE_FIELDS), (settings.topics.objections, OBJECTION_FIELDS)):
        async for r in read_topic(settings, topic):
            author = r.key.decode(errors="replace") if r.key else ""
            if author in wanted:
                line = f"{_at(r.timestamp)} {topic.rsplit('.', 1)[-1]:<9} p{r.partition}@{r.offset} "
                line += _brief(r.value, fields)
                for cid, a in authors.items():
                    if a == author:
                        events[cid].append(line)
    out = []
    for cid in sorted(content_ids):
        out.append(f"== {cid} (author {authors.get(cid, '?')})")
        out.extend(f"   {line}" for line in sorted(events[cid]))
    text = "\n".join(out) + "\n"
    path.write_text(text)
    return text


# --- the report ----------------------------------------------------------------------


@dataclass
class Figures:
    started_at: dt.datetime
    commit: str
    invocation: str
    minutes: float
    workers: int
    partitions: int
    load: Load
    fleet: Fleet
    health: Health
    final_restart_s: float = 0.0
    catch_up_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0
    drains_cut: int = 0  # drains the worker itself ended at STREAM_SHUTDOWN_TIMEOUT
    log_errors: Counter[str] = field(default_factory=Counter)  # ERROR lines of the workers' logs, by message
    report: Report | None = None
    traces: Traces | None = None

    @property
    def failed(self) -> bool:
        r, t = self.report, self.traces
        if r is None or t is None:
            return True
        return bool(r.violation_count or r.losses.count or r.minimisation_count or t.untraced or self.fleet.exits)


_LOG_PREFIX = re.compile(r"^\[[^]]*\] \[\d+\] \[ERROR\] ")


def scan_logs(workers: Sequence[Worker]) -> Counter[str]:
    """The workers' ERROR lines and tracebacks, counted by message (timestamp and pid cut off)."""
    errors: Counter[str] = Counter()
    for w in workers:
        for line in w.log.read_text(errors="replace").splitlines():
            if _LOG_PREFIX.match(line):
                errors[_LOG_PREFIX.sub("", line).strip()] += 1
            elif line.startswith("Traceback"):
                errors["Traceback (see the log)"] += 1
    return errors


def commit_of_worktree() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()  # noqa: S603, S607

    head = git("log", "-1", "--format=%h")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "stream")
    return head + (" (with uncommitted changes under stream/)" if dirty else "")


def seconds(xs: list[float]) -> str:
    if not xs:
        return "none"
    return f"median {statistics.median(xs):.1f} s, max {max(xs):.1f} s"


def summary_rows(f: Figures) -> list[tuple[str, str]]:
    load, fleet, r, t = f.load, f.fleet, f.report, f.traces
    inj = load.injected
    rec = fleet.recoveries
    generated = sum(
        n for k, n in load.by_kind.items() if k in (RecordKind.UPSERT, RecordKind.DELETE, RecordKind.MALFORMED)
    )
    rows = [
        (
            "content events sent",
            f"{load.content_records:,} ({generated:,} generated: {load.by_kind[RecordKind.UPSERT]:,} upserts, "
            f"{load.by_kind[RecordKind.DELETE]:,} deletes, {load.by_kind[RecordKind.MALFORMED]:,} malformed; "
            f"plus the re-sends below)",
        ),
        (
            "profile and objection records sent",
            f"{load.state_records:,} ({load.setup[RecordKind.PROFILE]:,} profiles and "
            f"{load.setup[RecordKind.OBJECTION]:,} objections before the stream; during it "
            f"{load.by_kind[RecordKind.OBJECTION] + load.by_kind[RecordKind.OBJECTION_TOMBSTONE]:,} objection and "
            f"{load.by_kind[RecordKind.PROFILE]:,} profile changes, {load.by_kind[RecordKind.ACCOUNT_DELETED]:,} "
            "account deletions, and the duplicates below)",
        ),
        (
            "duplicates injected",
            f"{inj[Injection.DUPLICATE]:,} content, {inj[Injection.STATE_DUPLICATE]:,} profile/objection",
        ),
        (
            "reorders injected",
            f"{inj[Injection.REORDER] + inj[Injection.RESURRECT]:,} ({inj[Injection.REORDER]:,} older upserts after an "
            f"edit, {inj[Injection.RESURRECT]:,} upserts after the item's delete)",
        ),
        (
            "faults injected",
            f"{sum(fleet.faults.by_kind.values())}: "
            + "; ".join(f"{fault.value} {fleet.faults.by_kind[fault]}" for fault in Fault),
        ),
        (
            "recoveries: a worker started by a fault answering /ready",
            f"{len(rec.seconds[Phase.FAULT])} ({seconds(rec.seconds[Phase.FAULT])}); {rec.interrupted} starts "
            f"ended (by a later fault or the final restart) before ready; {rec.timed_out} not ready within "
            f"{READY_TIMEOUT_S:.0f} s; "
            f"final restart: {seconds(rec.seconds[Phase.FINAL])}",
        ),
        ("workers that exited on their own", f"{len(fleet.exits)}"),
        (
            "SIGTERM drains (to the process's exit)",
            f"faults: {len(fleet.faults.drains[Phase.FAULT])} ({seconds(fleet.faults.drains[Phase.FAULT])}); "
            f"final restart: {len(fleet.faults.drains[Phase.FINAL])} ({seconds(fleet.faults.drains[Phase.FINAL])}); "
            f"{f.drains_cut} cut at the worker's shutdown timeout; {fleet.faults.forced_kills} had to be killed",
        ),
        (
            "fleet during the load",
            f"no worker ready in {f.health.none_ready} of {f.health.samples} samples "
            f"(longest {f.health.longest_none_ready:.0f} s); uncommitted content at most "
            f"{f.health.max_backlog:,} records; the longest a partition waited for a commit: "
            f"{f.health.longest_stall:.0f} s",
        ),
    ]
    if t is not None:
        rows += [
            ("dead letters", f"{t.dead_letters:,}"),
            (
                "audit records",
                ", ".join(f"{a} {n:,}" for a, n in sorted(t.decisions_by_action.items()))
                + " (skips: "
                + ", ".join(f"{k} {n:,}" for k, n in sorted(t.skips_by_reason.items()))
                + ")",
            ),
            ("content records without a trace", f"{len(t.untraced)}"),
        ]
    if r is not None:
        rows += [
            ("feed items / expected eligible", f"{r.feed_items:,} / {r.expected_eligible:,}"),
            ("**violations**", f"**{r.violation_count}**"),
            ("**losses**", f"**{r.losses.count}**"),
            ("minimisation problems", f"{r.minimisation_count}"),
            ("excused / stale / pending", f"{r.excused.count} / {r.stale.count} / {r.pending.count}"),
        ]
    return rows


def markdown(f: Figures) -> str:
    table = "\n".join(f"| {k} | {v} |" for k, v in summary_rows(f))
    timeline = "\n".join(f.fleet.faults.timeline)
    return f"""{BEGIN}
## Chaos run

`make chaos`, by hand: not part of `make test` or CI (`scripts/chaos.py`; `--help`
lists its options). On the local broker it creates uuid-named topics with
{f.partitions} partitions and starts {f.workers} worker processes (`python -m stream worker`,
each with its own data directory and port, one consumer group). For {f.minutes:g} minutes it
sends a seeded workload from the generator (content, edits and deletes, profile and
objection changes, account deletions, malformed records) and mixes in what an
at-least-once, reordering upstream delivers: content records re-sent as they were (at
once or up to 30 s later), profile and objection records re-sent, an item's previous
upsert re-sent after an edit (older `event_time`), and its last upsert re-sent after its
delete. 20 to 40 s (seeded) after the previous fault is done it injects the next: kill -9
of a random worker (restarted at once, or left down until a later start), SIGTERM and
restart, a stop, or the start of a stopped worker; a kill -9 may leave no worker running
until the next fault. At the end it restarts every worker, waits until the group has
committed every content record (a marker on each partition) and the workers' lag gauges
read 0 on every input, and runs the verifier. It also checks that every content record
left its own trace: an audit record (a skip included) for each record of an event id, or
a dead letter. The exit status is 1 on any violation, loss, minimisation problem,
untraced record or worker that exits without a signal from the run, and the history of
every content id the verifier names goes to `forensics.txt` in the run directory
(`data/chaos/<run>/`, with the workers' logs and the verifier's report).

Last run: {f.started_at:%Y-%m-%d %H:%M} UTC, commit `{f.commit}`: **{"FAILED" if f.failed else "passed"}**.
Invocation: `{f.invocation}`. {os.cpu_count()} cores shared with other work, Python {platform.python_version()}.
Durations: load {f.load.seconds / 60:.1f} min; final restart to every worker ready {f.final_restart_s:.0f} s;
catch-up after that {f.catch_up_s:.0f} s; verifier {f.verify_s:.0f} s; the whole run {f.total_s / 60:.1f} min.

| figure | value |
|---|---|
{table}

The faults in order (seconds since the workers were first started; running workers
before -> after):

```
{timeline}
```
{END}"""


def write_docs(path: Path, section: str) -> None:
    text = path.read_text()
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers to write between")
    path.write_text(text[:begin] + section + text[end + len(END) :])


# --- the run -------------------------------------------------------------------------


def topic_settings(bootstrap: str, tag: str, partitions: int, workdir: Path) -> Settings:
    base = TopicNames()
    topics = TopicNames(**{f: f"chaos-{tag}.{getattr(base, f)}" for f in base.__dataclass_fields__})
    return Settings(
        bootstrap_servers=bootstrap,
        data_dir=workdir,
        pseudonym_key=DEV_PSEUDONYM_KEY,  # the workers run in development mode
        partitions=partitions,
        group_id=f"chaos-{tag}",
        topics=topics,
        dev_mode=True,
    )


def worker_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    base = TopicNames()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    env.update(
        {
            "STREAM_TOPIC_" + getattr(base, f).upper().replace(".", "_"): getattr(settings.topics, f)
            for f in base.__dataclass_fields__
        }
    )
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        STREAM_DATA_DIR=str(data_dir),
        STREAM_PARTITIONS=str(settings.partitions),
        STREAM_GROUP_ID=settings.group_id,
        STREAM_DEV_MODE="1",
    )
    return env


async def delete_topics(bootstrap: str, prefix: str) -> int:
    """Delete this run's topics and the Faust host's topics of its group (all named after `prefix`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="chaos-cleanup")
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
        return len(doomed)
    finally:
        await admin.close()


async def run(args: argparse.Namespace, invocation: str) -> int:
    """Set up a run's topics and workers, run it, and clean up after it whatever happened."""
    tag = uuid.uuid4().hex[:8]
    workdir = (args.workdir or ROOT / "data" / "chaos") / tag
    workdir.mkdir(parents=True, exist_ok=True)
    settings = topic_settings(args.bootstrap, tag, args.partitions, workdir)
    print(f"chaos: run {tag}, topics chaos-{tag}.*, logs in {workdir}", flush=True)
    await create_topics(settings)
    workers = [
        Worker(f"w{i}", workdir / f"w{i}", free_port(), workdir / f"w{i}.log", worker_env(settings, workdir / f"w{i}"))
        for i in range(args.workers)
    ]
    fleet = Fleet(workers)
    failed = True
    try:
        figures = await run_and_judge(args, invocation, settings, fleet, tag)
        failed = figures.failed
    finally:
        fleet.kill_everything()
        if args.keep_topics:
            print(f"chaos: topics chaos-{tag}.* and the workers' data directories kept", flush=True)
        else:
            # Left behind, a run's 40 partitions slow the shared local broker; the
            # forensics, the verifier's report and the logs stay in the run directory.
            await delete_topics(args.bootstrap, f"chaos-{tag}")
            for w in workers:
                shutil.rmtree(w.data_dir, ignore_errors=True)
    return 1 if failed else 0


async def run_and_judge(
    args: argparse.Namespace, invocation: str, settings: Settings, fleet: Fleet, tag: str
) -> Figures:
    workdir = settings.data_dir
    load, health = Load(), Health()
    figures = Figures(
        started_at=dt.datetime.now(UTC),
        commit=commit_of_worktree(),
        invocation=invocation,
        minutes=args.minutes,
        workers=len(fleet.workers),
        partitions=settings.partitions,
        load=load,
        fleet=fleet,
        health=health,
    )
    began = time.monotonic()
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible fault schedule, not a secret
    opts = LoadOptions(
        rate=args.rate,
        accounts=args.accounts,
        seed=args.seed,
        malformed_share=args.malformed_share,
        duplicate_share=args.duplicate_share,
        state_duplicate_share=args.state_duplicate_share,
        reorder_share=args.reorder_share,
        resurrect_share=args.resurrect_share,
    )
    for w in fleet.workers:
        fleet.start(w, Phase.FIRST)
    await fleet.all_ready(READY_TIMEOUT_S)
    print(f"chaos: {len(fleet.workers)} workers ready; load for {args.minutes:g} min", flush=True)
    deadline = time.monotonic() + args.minutes * 60
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample(fleet, settings, health, load, stop_sampling))
    faults = asyncio.create_task(chaos(fleet, rng, deadline, args.fault_min, args.fault_max))
    await drive_load(settings, opts, tag, deadline, load)
    await faults
    stop_sampling.set()
    await sampler
    print(
        f"chaos: load done: {load.content_records:,} content records in {load.seconds:.0f} s, "
        f"{sum(fleet.faults.by_kind.values())} faults; restarting every worker",
        flush=True,
    )

    step = time.monotonic()
    await fleet.restart_all()
    await fleet.all_ready(READY_TIMEOUT_S)
    figures.final_restart_s = time.monotonic() - step
    step = time.monotonic()
    await send_markers(settings, tag)
    await content_committed(settings, CATCH_UP_TIMEOUT_S)
    await lag_zero(fleet, settings.partitions, CATCH_UP_TIMEOUT_S)
    figures.catch_up_s = time.monotonic() - step
    await fleet.settle_watchers()
    print(f"chaos: caught up {figures.catch_up_s:.1f} s after the markers; verifying", flush=True)

    step = time.monotonic()
    report = await verify(settings, examples=args.examples)
    figures.verify_s = time.monotonic() - step
    figures.report = report
    (workdir / "verify.json").write_bytes(to_json(report))
    (workdir / "verify.txt").write_text(render(report) + "\n")
    traces = figures.traces = await check_traces(settings)
    figures.total_s = time.monotonic() - began
    figures.log_errors = scan_logs(fleet.workers)
    figures.drains_cut = sum(n for m, n in figures.log_errors.items() if m.startswith("drain did not finish"))

    print(render(report), flush=True)
    for k, v in summary_rows(figures):
        print(f"  {k.strip('*')}: {v.strip('*')}")
    for w in fleet.workers:
        print(f"  {w.name}: {w.generation} starts, log {w.log}")
    for message, n in figures.log_errors.most_common(10):
        print(f"  {n} x in the workers' logs: {message}")
    if figures.failed:
        named = {cid for t in report.violations.values() for cid in t.examples} | set(report.losses.examples)
        named |= {cid for t in report.minimisation.values() for cid in t.examples}
        named |= {cid for _, _, cid in traces.untraced[: args.examples]}
        if traces.untraced:
            print(f"chaos: content records without a trace (partition, offset, content id): {traces.untraced[:20]}")
        if named:
            path = workdir / "forensics.txt"
            text = await forensics(settings, named, load, path)
            print(f"chaos: the history of {len(named)} named content ids is in {path}; the first lines:")
            print("\n".join(text.splitlines()[:120]))
    if args.docs:
        write_docs(args.docs, markdown(figures))
        print(f"chaos: wrote the chaos section of {args.docs}")
    print(
        f"chaos: {'FAILED' if figures.failed else 'passed'}: {report.violation_count} violations, "
        f"{report.losses.count} losses, {report.minimisation_count} minimisation problems, "
        f"{len(traces.untraced)} content records without a trace, {len(fleet.exits)} workers exited on their own",
        flush=True,
    )
    return figures


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/chaos.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=10.0, help="minutes of load and faults [10]")
    p.add_argument("--rate", type=float, default=400.0, help="generated content events per second [400]")
    p.add_argument("--accounts", type=int, default=5000, help="accounts in the population [5000]")
    p.add_argument("--seed", type=int, default=16, help="seed of the workload, the disorder and the faults [16]")
    p.add_argument("--workers", type=int, default=3, help="worker processes [3]")
    p.add_argument("--partitions", type=int, default=4, help="partitions of every topic [4]")
    p.add_argument("--fault-min", type=float, default=20.0, help="least seconds between two faults [20]")
    p.add_argument("--fault-max", type=float, default=40.0, help="most seconds between two faults [40]")
    p.add_argument("--malformed-share", type=float, default=0.005, help="malformed content records [0.005]")
    p.add_argument("--duplicate-share", type=float, default=0.03, help="content records re-sent as they were [0.03]")
    p.add_argument("--state-duplicate-share", type=float, default=0.1, help="profile/objection records re-sent [0.1]")
    p.add_argument("--reorder-share", type=float, default=0.25, help="edits followed by the previous upsert [0.25]")
    p.add_argument("--resurrect-share", type=float, default=0.3, help="deletes followed by the last upsert [0.3]")
    p.add_argument("--examples", type=int, default=50, help="content ids the verifier names per category [50]")
    p.add_argument("--workdir", type=Path, default=None, help="run directories go here [data/chaos]")
    p.add_argument(
        "--docs", type=Path, default=None, help="rewrite the chaos section of this file (docs/reliability.md)"
    )
    p.add_argument(
        "--keep-topics",
        action="store_true",
        help="keep the run's topics and the workers' data directories (deleted by default, even on failure)",
    )
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="brokers [$KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092]",
    )
    args = p.parse_args(argv)
    if not 0 < args.fault_min <= args.fault_max:
        p.error("need 0 < --fault-min <= --fault-max")
    if args.rate <= 0 or args.minutes <= 0 or args.workers < 1:
        p.error("--rate, --minutes and --workers must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    invocation = "scripts/chaos.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return asyncio.run(run(args, invocation.strip()))


if __name__ == "__main__":
    sys.exit(main())
