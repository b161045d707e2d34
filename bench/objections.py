"""Objection propagation benchmark (issue 4): how fast an objection takes effect.

Under background load at 80 % of the sustainable rate that the rate ladder recorded in
bench/results/results.json (`make bench` runs this after `python -m bench all`; `--rate`
sets another), canary users post content continuously;
objections are written at recorded times; an observer reading the feed reports,
per objection:
- the leak window: feed items of that user whose content was acknowledged by the
  broker after the objection was (must be zero);
- the propagation latency: from the objection's append to `accounts.objections`
  to the append of the last of that user's tombstones on `training.feed` (both
  topics use LogAppendTime here, so both times are the broker's clock).

    python -m bench.objections [--objections 220] [--rate EVENTS_PER_S] [--quick]

Results go to the `objections` block of docs/benchmarks.md and to results.json's
`objections` (the targets table of `python -m bench report` reads it there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench import load, report
from bench import run as harness
from bench.common import create_run_topics, delete_topics, process_env
from stream.config import DEV_PSEUDONYM_KEY, Settings, TopicNames
from stream.runtime.topics import topic_specs

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- objections:begin -->", "<!-- objections:end -->"
# Without a sustainable rate on record (no rate ladder has run): the background rate, events/s.
DEFAULT_RATE = 2000.0
QUICK_RATE = 300.0


@dataclass(frozen=True)
class Background:
    """The background content rate of a run, and where it comes from."""

    rate: float
    source: str  # "sustainable" (the share of the recorded sustainable rate), "option", "default" or "quick"
    sustainable: int | None = None  # the recorded sustainable rate it was taken from

    def describe(self) -> str:
        """The rate and its origin, for the report."""
        if self.source == "sustainable":
            share = 100 * report.TARGETS["objection_rate_share"]
            return f"{self.rate:,.0f} content events/s ({share:g} % of the sustainable rate, {self.sustainable:,}/s)"
        why = {"option": "given by --rate", "quick": "a --quick run", "default": "no sustainable rate recorded"}
        return f"{self.rate:,.0f} content events/s ({why.get(self.source, self.source)})"


def background(given: float | None, results: dict[str, Any], *, quick: bool = False) -> Background:
    """The background rate: `given` (`--rate`) if set, else the target's share of the recorded sustainable rate."""
    if given is not None:
        if given <= 0:
            raise ValueError(f"--rate must be a positive number of events/s, not {given:g}")
        return Background(float(given), "option")
    if quick:
        return Background(QUICK_RATE, "quick")
    sustainable = (results.get("rate") or {}).get("sustainable")
    if not sustainable:
        return Background(DEFAULT_RATE, "default")
    return Background(float(report.objection_rate(sustainable)), "sustainable", int(sustainable))


@dataclass
class Canary:
    """An account whose posts are published, then objected to: its retractions are timed."""

    account: str
    posts: list[tuple[str, int]] = field(default_factory=list)  # (content id, ack time ms)
    objected_at: int | None = None  # broker append time of the objection (ms)


def _profile(account: str) -> bytes:
    return orjson.dumps(
        {
            "account_id": account,
            "birth_date": "1985-03-03",
            "country": "GB",
            "notified_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z",
        }
    )


def _post(account: str, content_id: str, n: int) -> bytes:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return orjson.dumps(
        {
            "event_id": f"e-{content_id}",
            "op": "upsert",
            "content_id": content_id,
            "content_type": "post",
            "platform": "facebook",
            "author_id": account,
            "visibility": "public",
            "created_at": "2026-01-01T00:00:00Z",
            "event_time": now,
            "text": f"canary post {n}",
            "media_uri": None,
            "language": "en",
        }
    )


async def log_append_time(settings: Settings, topics: list[str]) -> None:
    """Stamp `topics`' records with the broker's append time, their other configs (`topic_specs`) kept.

    AlterConfigs (the request aiokafka's admin client sends) sets a topic's whole
    config: one it does not name goes back to the broker's default, so the product's
    own (a compacted topic's cleanup policy) are named again here.
    """
    specs = {spec.name: spec.configs for spec in topic_specs(settings)}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    t,
                    configs={**specs.get(t, {}), "message.timestamp.type": "LogAppendTime"},
                )
                for t in topics
            ]
        )
    finally:
        await admin.close()


async def _delete_topics(settings: Settings) -> None:
    t = settings.topics
    # And the topic the worker's Faust host made for itself (`<group>-host-__assignor-__leader`),
    # which each run used to leave behind.
    await delete_topics(
        settings.bootstrap_servers, [getattr(t, f) for f in t.__dataclass_fields__], prefix=f"{settings.group_id}-"
    )


def _env(settings: Settings, port: int) -> dict[str, str]:
    # The harness's one definition of a worker's environment: every topic, ours included.
    return process_env(settings, STREAM_WEB_PORT=str(port))


async def _caught_up(settings: Settings, timeout: float = 300.0) -> None:
    """Wait until the worker's group has committed the content topic to its end (bounded)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topics.content, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if (await consumer.committed(tp) or 0) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not catch up")
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("worker exited during start-up")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise TimeoutError("worker not ready")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure objection propagation against a worker on fresh topics; the figures as a dict."""
    tag = uuid.uuid4().hex[:8]
    base = TopicNames()
    topics = TopicNames(**{f: f"bo{tag}.{getattr(base, f)}" for f in base.__dataclass_fields__})
    data = Path(tempfile.mkdtemp(prefix="bench-objections-"))
    settings = Settings(
        bootstrap_servers=args.bootstrap,
        data_dir=data,
        partitions=4,
        group_id=f"bo-{tag}",
        topics=topics,
        dev_mode=True,
    )
    await create_run_topics(settings)
    await log_append_time(settings, [topics.objections, topics.feed])
    rng = random.Random(7)  # noqa: S311 (a benchmark's schedule, not a secret)
    canaries = [Canary(f"canary-{tag}-{i:04d}") for i in range(args.objections)]
    pseudonym_of = {hmac.new(DEV_PSEUDONYM_KEY, c.account.encode(), hashlib.sha256).hexdigest(): c for c in canaries}
    owner = {}

    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=1)
    await producer.start()
    await asyncio.gather(
        *[await producer.send(topics.profiles, key=c.account.encode(), value=_profile(c.account)) for c in canaries]
    )
    port = 20000 + rng.randrange(20000)
    log = (data / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker"], env=_env(settings, port), stdout=log, stderr=subprocess.STDOUT
    )
    background: asyncio.Task[object] | None = None
    try:
        await _wait_ready(port, worker)
        # The background content: the lean open-loop load of the latency run (bench/load.py),
        # every profile first; it runs until cancelled below.
        workload = load.workload_for(1, args.accounts, args.rate, malformed_share=0.0)
        await load.setup(settings, workload)
        background = asyncio.create_task(load.paced(settings, workload, rate=args.rate, count=1 << 40))

        async def post(c: Canary, n: int) -> None:
            cid = f"{c.account}-p{n}"
            owner[cid.encode()] = c
            meta = await (await producer.send(topics.content, key=c.account.encode(), value=_post(c.account, cid, n)))
            c.posts.append((cid, int(time.time() * 1000) if meta.timestamp == -1 else meta.timestamp))

        # Warm-up: every canary has items on the feed before anyone objects.
        for n in range(args.posts_before):
            await asyncio.gather(*[post(c, n) for c in canaries])
        # Objections start once the worker has caught up with the warm-up and the
        # background population: what is measured is propagation, not a start-up backlog.
        await _caught_up(settings)
        pending = list(canaries)
        rng.shuffle(pending)
        n = args.posts_before
        started = time.monotonic()
        while pending:
            c = pending.pop()
            objection = orjson.dumps(
                {
                    "account_id": c.account,
                    "status": "objected",
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "source": "form",
                    "request_id": f"req-{c.account}",
                }
            )
            meta = await (await producer.send(topics.objections, key=c.account.encode(), value=objection))
            c.objected_at = meta.timestamp
            # Canaries keep posting right after their objection: none of it may reach the feed.
            await asyncio.gather(*[post(x, n) for x in rng.sample(canaries, min(20, len(canaries)))])
            n += 1
            await asyncio.sleep(args.interval)
        elapsed = time.monotonic() - started
        if background.done():
            await background  # it ended early only by failing: raise that
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background
        await _caught_up(settings)  # every content event committed: all retractions have landed
    finally:
        if background is not None:
            background.cancel()
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(30)
        log.close()
        await producer.stop()

    # Observe the feed: live records and tombstones with their broker append times.
    consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, group_id=None)
    await consumer.start()
    tps = [TopicPartition(topics.feed, p) for p in range(4)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    records = []
    while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
    await consumer.stop()

    last_tombstone: dict[str, int] = {}
    leaks = 0
    for r in records:
        author = owner.get(r.key)
        if author is None or author.objected_at is None:
            continue
        if r.value is None:
            last_tombstone[author.account] = max(last_tombstone.get(author.account, 0), r.timestamp)
        else:
            item = orjson.loads(r.value)
            assert pseudonym_of[item["author_pseudonym"]] is author
            acked = dict(author.posts).get(r.key.decode())
            if acked is not None and acked > author.objected_at:
                leaks += 1
    latencies = [
        (last_tombstone[c.account] - c.objected_at) / 1000
        for c in canaries
        if c.objected_at is not None and c.account in last_tombstone
    ]
    missing = [c.account for c in canaries if c.account not in last_tombstone]
    await _delete_topics(settings)
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {
        "objections": len(canaries),
        "measured": len(latencies),
        "without_tombstones": len(missing),
        "p50_ms": pct(0.50) * 1000,
        "p99_ms": pct(0.99) * 1000,
        "max_ms": latencies[-1] * 1000 if latencies else 0,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else 0,
        "leaks": leaks,
        "rate": args.rate,
        "accounts": args.accounts,
        "interval_s": args.interval,
        "elapsed_s": elapsed,
        "posts_before": args.posts_before,
        "load": f"{os.getloadavg()[0]:.2f}",
    }


def write(result: dict[str, Any]) -> None:
    """Write the result into its section of docs/benchmarks.md."""
    goal = report.TARGETS["objection_p99_ms"]
    rate = Background(result["rate"], result.get("rate_source", "option"), result.get("sustainable"))
    at_share = rate.source == "sustainable"
    verdict_p99 = ("met" if float(result["p99_ms"]) <= goal else "MISSED") if at_share else "no verdict at this rate"
    verdict_leak = "met" if result["leaks"] == 0 else "MISSED"
    share = 100 * report.TARGETS["objection_rate_share"]
    block = f"""{BEGIN}
## Objection propagation (issue 4)

Run `python -m bench.objections` (this block is rewritten by it; `make bench` runs it after
`python -m bench all`, at {share:g} % of the sustainable rate that run recorded). Machine:
{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()};
broker on the same machine. Background load: `bench/load.py` (the latency run's open-loop
load, {result.get("accounts", "?")} accounts) at {rate.describe()};
{result["objections"]} canary users each posted {result["posts_before"]} items, then objected one after another every
{result["interval_s"]} s while canaries kept posting.

| measure | value | target |
|---|---|---|
| objections measured (had items on the feed) | {result["measured"]} of {result["objections"]} | >= 200 |
| propagation p50 | {float(result["p50_ms"]):.1f} ms | |
| propagation p99 | {float(result["p99_ms"]):.1f} ms | <= {goal:g} ms: {verdict_p99} |
| propagation max | {float(result["max_ms"]):.1f} ms | |
| items emitted from content acknowledged after the objection | {result["leaks"]} | 0: {verdict_leak} |

Whole-machine load during the run: {result["load"]} (1-minute load average, 2 cores;
the run's own generator, worker and broker account for most of it: check that nothing
else ran, see the list of other processes at the top).
Propagation is measured from the objection's append to `accounts.objections` to
the append of the last of that user's tombstones on `training.feed` (both topics
set to LogAppendTime, so one clock). The worker exports the same quantity as
`eligibility_objection_propagation_seconds`.
{END}"""
    report.write_block(block)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.objections`: run, print and record the objection benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench.objections")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--objections", type=int, default=220)
    parser.add_argument(
        "--rate",
        type=float,
        help=f"background content events/s [{100 * report.TARGETS['objection_rate_share']:g} %% of the sustainable "
        f"rate in bench/results/results.json; without one {DEFAULT_RATE:,.0f}]",
    )
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--posts-before", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between objections")
    parser.add_argument(
        "--quick", action="store_true", help=f"30 objections, {QUICK_RATE:,.0f} events/s unless --rate: a smoke run"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the result only: docs/benchmarks.md and results.json unchanged"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.objections, args.accounts = 30, 2000
    try:
        rate = background(args.rate, harness.load_results(), quick=args.quick)
    except ValueError as exc:
        parser.error(str(exc))
    if rate.source == "default":
        print(
            f"bench.objections: no sustainable rate in {harness.RESULTS.relative_to(ROOT)} (no rate ladder has run; "
            f"`python -m bench rate` or `make bench` records one): background at {DEFAULT_RATE:,.0f} events/s, "
            "and the targets table gives this run no verdict",
            file=sys.stderr,
        )
    args.rate = rate.rate
    print(f"bench.objections: background {rate.describe()}", flush=True)
    result = asyncio.run(run(args))
    result.update(rate_source=rate.source, sustainable=rate.sustainable)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if not args.no_write and not args.quick:
        write(result)
        harness.record("objections", result)
    return 0 if result["leaks"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
