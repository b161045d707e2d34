"""Shared machinery of the benchmarks: topics, fast pre-loading, processes, sampling.

Every run uses its own uuid-named topics (`bench-<tag>.<topic>`), deleted when the
run ends, and its own consumer groups and data directories. Every loop here is
bounded in count or time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import dataclasses
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from stream import zstd_codec
from stream.cli import JEMALLOC_ENV
from stream.config import Settings, TopicNames
from stream.runtime.topics import create_topics
from stream.workload.generator import Record, TopicKind

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RESULTS_DIR = ROOT / "bench" / "results"
PARTITIONS = 4
INPUT_FIELDS = ("content", "profiles", "objections")
# The content topic's segment size: Kafka's default, as on a production broker. The local
# broker's default is 16 MiB (scripts/kafka.sh, so that the tests see compaction), at which
# a benchmark's uncompressed content rolls a new segment on every partition within the
# same second, every ~20 s at 8,000 events/s: a stall of every client's requests that a
# production topic has about once in 20 minutes at that rate (bench/notes.md, "Segment rolls").
CONTENT_SEGMENT_BYTES = 1 << 30


def topic_names(topics: TopicNames) -> list[str]:
    """Every topic name of `topics`, inputs, outputs and changelogs."""
    return [getattr(topics, f.name) for f in dataclasses.fields(TopicNames)]


def topic_env(topics: TopicNames) -> dict[str, str]:
    """STREAM_TOPIC_<DEFAULT NAME> for every topic the settings know (content.events -> ..._CONTENT_EVENTS)."""
    base = TopicNames()
    return {
        "STREAM_TOPIC_" + getattr(base, f.name).upper().replace(".", "_"): getattr(topics, f.name)
        for f in dataclasses.fields(TopicNames)
    }


# -- topics ------------------------------------------------------------------------


async def create_run_topics(settings: Settings) -> None:
    """The worker's topics as `topics create` makes them, the content topic with production-sized segments."""
    await create_topics(settings, {settings.topics.content: {"segment.bytes": str(CONTENT_SEGMENT_BYTES)}})


@dataclass
class Run:
    """One benchmark run: its tag, its topics (for clean-up) and its scratch directory."""

    bootstrap: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    created: set[str] = field(default_factory=set)
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))

    def inputs(self, name: str = "in") -> TopicNames:
        """Input topic names of a data set; outputs are filled in per consumer."""
        base = TopicNames()
        prefix = f"bench-{self.tag}-{name}"
        return TopicNames(
            content=f"{prefix}.{base.content}",
            profiles=f"{prefix}.{base.profiles}",
            objections=f"{prefix}.{base.objections}",
        )

    def settings(self, inputs: TopicNames, consumer: str, **overrides: Any) -> Settings:
        """Settings of one consumer: the shared inputs; its own outputs (and any other topic), group and data dir."""
        base = TopicNames()
        prefix = f"bench-{self.tag}-{consumer}"
        own = {
            f.name: f"{prefix}.{getattr(base, f.name)}"
            for f in dataclasses.fields(TopicNames)
            if f.name not in INPUT_FIELDS
        }
        topics = dataclasses.replace(inputs, **own)
        values: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "data_dir": self.scratch / consumer,
            "partitions": PARTITIONS,
            "group_id": f"bench-{self.tag}-{consumer}",
            "dev_mode": True,
            "topics": topics,
        }
        values.update(overrides)
        return Settings(**values)

    async def create(self, settings: Settings) -> None:
        """Create the topics of `settings` and remember them for deletion."""
        await create_run_topics(settings)
        self.created.update(topic_names(settings.topics))

    async def drop(self, settings: Settings) -> None:
        """Delete the topics of one step as soon as it is done.

        The broker removes a deleted topic's files shortly after (`file.delete.delay.ms`,
        1 s on the local broker): during the next step's set-up, not its measurement.
        """
        names = topic_names(settings.topics)
        await delete_topics(self.bootstrap, sorted(names), prefix=f"{settings.group_id}-host-")
        self.created.difference_update(names)

    async def cleanup(self) -> None:
        """Delete every topic this run created, and its scratch directory (keeping the processes' log tails)."""
        logs = self.scratch / "logs"
        if logs.is_dir():
            keep = RESULTS_DIR / "logs" / self.tag
            keep.mkdir(parents=True, exist_ok=True)
            for log in logs.glob("*.log"):
                data = log.read_bytes()
                (keep / log.name).write_bytes(data[-200_000:])
        if self.created:
            # Also what the worker's Faust host made for itself (`<group>-host-__assignor-__leader`).
            await delete_topics(self.bootstrap, sorted(self.created), prefix=f"bench-{self.tag}-")
            # And the Quix peer's changelog topics (`changelog__<group>--<stream id>--<store>`).
            await delete_topics(self.bootstrap, [], prefix=f"changelog__bench-{self.tag}-")
            self.created.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)


async def delete_topics(bootstrap: str, names: list[str], *, prefix: str | None = None) -> None:
    """Delete the named topics that exist, and every topic whose name starts with `prefix`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = sorted({n for n in names if n in existing} | {n for n in existing if prefix and n.startswith(prefix)})
        for i in range(0, len(doomed), 20):
            await admin.delete_topics(doomed[i : i + 20], timeout_ms=60000)
    finally:
        await admin.close()


# -- the broker --------------------------------------------------------------------


def broker_answers(bootstrap: str) -> bool:
    """Whether something accepts TCP connections at the first bootstrap address."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2):
            return True
    except OSError:
        return False


def ensure_broker(bootstrap: str) -> None:
    """Start the local broker (scripts/kafka.sh) unless one answers."""
    if broker_answers(bootstrap):
        return
    print(f"no broker at {bootstrap}: starting scripts/kafka.sh", flush=True)
    # S603/S607: the project's own script, by a fixed path.
    subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "start"], check=True, timeout=600)  # noqa: S603, S607
    if not broker_answers(bootstrap):
        raise SystemExit(f"no Kafka broker answers at {bootstrap}")


def broker_process(bootstrap: str) -> psutil.Process | None:
    """The process listening on the broker's port, for its CPU and memory, if it can be found."""
    port = int(bootstrap.split(",")[0].rpartition(":")[2])
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            # `laddr` is an empty tuple for a socket without an address.
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


def kafka_version(bootstrap: str) -> str:
    """The broker's version, from the kafka jar on its class path (local broker only)."""
    proc = broker_process(bootstrap)
    if proc is None:
        return "unknown (broker process not found)"
    with contextlib.suppress(psutil.Error, ValueError, IndexError):
        cmd = proc.cmdline()
        cwd = Path(proc.cwd())
        classpath = cmd[cmd.index("-cp") + 1]
        for entry in classpath.split(":"):
            folder = Path(entry.rstrip("*"))
            folder = folder if folder.is_absolute() else cwd / folder
            for jar in sorted(folder.glob("kafka_2.*-*.jar")):
                name = jar.name.removesuffix(".jar")
                if not any(name.endswith(s) for s in ("-test", "-sources", "-javadoc")):
                    return name.split("-", 1)[1] + f" (Apache Kafka, KRaft, {jar.name.split('-')[0]})"
    return "unknown"


# -- pre-loading -------------------------------------------------------------------


@dataclass
class Loaded:
    """What a load step sent: records per topic and how long it took."""

    counts: dict[str, int]
    seconds: float


async def preload(
    bootstrap: str,
    inputs: TopicNames,
    records: Iterable[Record],
    *,
    partitions: int = PARTITIONS,
    progress: str = "",
    stamp: Callable[[TopicKind], int | None] | None = None,
) -> Loaded:
    """Send `records` as fast as the broker takes them: per-partition BatchBuilders, lz4, few awaits.

    lz4 is the upstream's compression here, not the worker's (zstd by default).
    `stamp` gives a record's timestamp (ms) by its topic; without it, or when it
    returns None, the time it is appended.

    Keys are partitioned with murmur2 like every Kafka client's default partitioner, so
    the worker finds an account's content, profile and objection in the same partition.
    """
    topic_of = {
        TopicKind.CONTENT: inputs.content,
        TopicKind.PROFILES: inputs.profiles,
        TopicKind.OBJECTIONS: inputs.objections,
    }
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type="lz4",
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
        linger_ms=50,
        request_timeout_ms=120000,
    )
    await producer.start()
    counts = dict.fromkeys(topic_of.values(), 0)
    started = time.monotonic()
    builders: dict[tuple[str, int], Any] = {}
    inflight: list[asyncio.Future[Any]] = []
    n = 0
    try:
        for kind, key, value in records:
            topic = topic_of[kind]
            p = (murmur2(key) & 0x7FFFFFFF) % partitions if key is not None else 0
            tp = (topic, p)
            builder = builders.get(tp)
            if builder is None:
                builder = builders[tp] = producer.create_batch()
            ts = stamp(kind) if stamp is not None else None
            if builder.append(key=key, value=value, timestamp=ts) is None:
                inflight.append(await producer.send_batch(builder, topic, partition=p))
                builder = builders[tp] = producer.create_batch()
                builder.append(key=key, value=value, timestamp=ts)
                if len(inflight) >= 32:
                    await asyncio.gather(*inflight)
                    inflight.clear()
            counts[topic] += 1
            n += 1
            if progress and n % 200_000 == 0:
                print(f"  {progress}: {n:,} records sent ({n / (time.monotonic() - started):,.0f}/s)", flush=True)
        for (topic, p), builder in builders.items():
            if builder.record_count():
                inflight.append(await producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*inflight)
    finally:
        await producer.stop()
    return Loaded(counts, time.monotonic() - started)


# -- offsets -----------------------------------------------------------------------


class Offsets:
    """End offsets of a topic and a group's committed offsets on it, cheaply and repeatedly."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
        self.bootstrap = bootstrap
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> Offsets:
        await self._consumer.start()
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def end(self) -> int:
        """The content topic's end offsets, summed."""
        ends = await self._consumer.end_offsets(self.tps)
        return sum(ends.values())

    async def committed(self, group: str) -> int:
        """The group's committed content offsets, summed (0 before its first commit)."""
        try:
            offsets = await self._admin.list_consumer_group_offsets(group, partitions=self.tps)
        except Exception:  # the group may not exist yet (coordinator not loaded): nothing committed
            return 0
        return sum(max(0, o.offset) for o in offsets.values())


# -- processes ---------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def allocator_env() -> dict[str, str]:
    """The image's allocator environment (jemalloc, `stream.cli.JEMALLOC_ENV`) where the library is installed.

    Every consumer of a run gets it, the peers too, so their figures differ by their
    code, not their malloc. Empty where jemalloc is missing (Debian: `apt-get install
    libjemalloc2`) or the caller preloads something of its own; `machine()` records
    which one ran.
    """
    if "LD_PRELOAD" in os.environ or not ctypes.util.find_library("jemalloc"):
        return {}
    return dict(JEMALLOC_ENV)


def allocator_name() -> str:
    """The malloc the consumers run on, as `machine()` records it: what `process_env` preloads, else the system's."""
    return allocator_env().get("LD_PRELOAD") or os.environ.get("LD_PRELOAD") or "the system's malloc"


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment an operator would set for a worker with these settings (the image's allocator included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    env.update(allocator_env())
    env.update(topic_env(settings.topics))
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        STREAM_DATA_DIR=str(settings.data_dir),
        STREAM_PARTITIONS=str(settings.partitions),
        STREAM_GROUP_ID=settings.group_id,
        STREAM_DEV_MODE="1",
        PYTHONPATH=str(ROOT),
    )
    if settings.group_instance_id:  # a static member, as the chart runs each worker
        env["STREAM_GROUP_INSTANCE_ID"] = settings.group_instance_id
    env.update(extra)
    return env


COMMANDS = {
    # The default log level (info) on purpose: at warning or above, Faust's worker installs its
    # terminal spinner and sets the root logger to DEBUG, so every aiokafka `log.debug` in the
    # per-record send path builds a LogRecord (about 9 % of the worker's CPU; docs/benchmarks.md).
    "worker": [PYTHON, "-m", "stream", "worker"],
    # Two worker processes in one group under the supervisor (`--processes 2`, issue #21).
    "workers2": [PYTHON, "-m", "stream", "worker", "--processes", "2"],
    "raw": [PYTHON, "-m", "bench.baseline_raw"],
    "faust": [PYTHON, "-m", "bench.baseline_faust"],
    "quix": [PYTHON, "-m", "bench.baseline_quix"],
    # The latency floors: content echoed as decisions, nothing decided (`bench/baseline_echo.py`);
    # the second with the worker's crash-safe order of acknowledged steps around the echo.
    "echo": [PYTHON, "-m", "bench.baseline_echo"],
    "echo-ordered": [PYTHON, "-m", "bench.baseline_echo", "--ordered"],
}


# The kinds with a /ready page.
SERVES_READY = frozenset({"worker", "workers2"})


@dataclass
class Proc:
    """A started worker or baseline process, with its log."""

    popen: subprocess.Popen[bytes]
    started: float  # time.time() just before the process was started
    log: Path
    port: int

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def tail(self, chars: int = 3000) -> str:
        """The end of the process's log, for a failure message."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_process(kind: str, settings: Settings, log_dir: Path, *, suffix: str = "") -> Proc:
    """Start a worker or baseline (`kind`) with `settings` in the environment, logging to `log_dir`."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{kind}{suffix}.log"
    env = process_env(settings, STREAM_WEB_PORT=str(port))
    with log.open("wb") as out:
        started = time.time()
        popen = subprocess.Popen(COMMANDS[kind], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)  # noqa: S603
    return Proc(popen, started, log, port)


def stop_process(proc: Proc, timeout: float = 30.0) -> float:
    """SIGTERM (the graceful drain), then SIGKILL after `timeout`; returns seconds taken."""
    started = time.monotonic()
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
    return time.monotonic() - started


def http_answer(url: str) -> tuple[int, bytes]:
    """The status and body of a GET of `url`, an error's included (0 and empty when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except OSError:
        return 0, b""


def http_status(url: str) -> int:
    """The HTTP status of a GET of `url` (0 when nothing answers)."""
    return http_answer(url)[0]


class Stalled(RuntimeError):
    """Raised when a process under test stops making progress (no input consumed for `STALL_SECONDS`)."""


STALL_SECONDS = 90.0


def http_get(url: str) -> bytes:
    """The body of a successful GET of `url` (empty when nothing answers, or answers an error)."""
    status, body = http_answer(url)
    return body if 200 <= status < 300 else b""


def inputs_consumed(port: int) -> float | None:
    """The worker's `eligibility_input_records_total`, summed over inputs (None if unreadable)."""
    text = http_get(f"http://127.0.0.1:{port}/metrics").decode(errors="replace")
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("eligibility_input_records_total{")
    ]
    return sum(values) if values else None


def py_spy_dump(pid: int) -> str:
    """The stacks of every thread of process `pid`, by py-spy, for a run that stalls."""
    exe = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    try:
        out = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)  # noqa: S603
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy dump failed: {exc}"


def run_baseline(loop_of: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> int:
    """A baseline process's main: its loop on the worker's settings (`Settings.from_env`) until SIGTERM or SIGINT.

    On uvloop, the event loop the worker runs on (STREAM_EVENT_LOOP's default), and with
    the zstd codec every command of the worker's installs (stream/zstd_codec.py): like for like.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    zstd_codec.install()

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await loop_of(settings, stop)

    uvloop.run(go())
    return 0


async def wait_log(proc: Proc, text: str, *, timeout: float) -> None:
    """Wait until the process's log holds `text` (a baseline without a /ready page); raise if it exits or times out."""
    deadline = time.monotonic() + timeout
    needle = text.encode()
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.log.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if proc.log.exists() and needle in proc.log.read_bytes():
            return
        await asyncio.sleep(0.05)
    raise Stalled(f"{proc.log.name}: no {text!r} in its log after {timeout:.0f} s:\n{proc.tail()}")


async def wait_ready(proc: Proc, timeout: float) -> float:
    """Seconds from the process's start until `/ready` answered 200 (polled every 50 ms).

    Raises `Stalled` when the worker's consumed-input counter stands still for
    `STALL_SECONDS` before it is ready (a stuck recovery would otherwise use up `timeout`).
    """
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{proc.port}/ready"
    last_count: float | None = None
    last_change = time.monotonic()
    next_check = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.log.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if await asyncio.to_thread(http_status, url) == 200:
            return time.time() - proc.started
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 5
            count = await asyncio.to_thread(inputs_consumed, proc.port)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > STALL_SECONDS:
                raise Stalled(
                    f"{proc.log.name}: not ready and no input consumed for {STALL_SECONDS:.0f}s "
                    f"(eligibility_input_records_total={count}); py-spy dump:\n{py_spy_dump(proc.pid)}\n"
                    f"log tail:\n{proc.tail()}"
                )
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{proc.log.name}: not ready after {timeout:.0f}s:\n{proc.tail()}")


def cpu_seconds(p: psutil.Process) -> float:
    """User plus system CPU seconds the process has used."""
    t = p.cpu_times()
    return float(t.user + t.system)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return list(proc.children(recursive=True))
    return []


@dataclass
class Sample:
    """One sample of progress and resource use during a run."""

    t: float  # time.time()
    committed: int  # the group's committed content offsets, summed
    end: int  # the content topic's end offsets, summed
    cpu: float  # CPU seconds of the sampled process
    rss: int  # resident bytes of the sampled process


async def sample(offsets: Offsets, group: str, proc: psutil.Process | None) -> Sample:
    """Take a `Sample` now: committed and end offsets, and the process's CPU and memory."""
    cpu, rss = 0.0, 0
    if proc is not None:
        # With its child processes (the supervisor's workers): the CPU and memory of the whole pod.
        for p in (proc, *_children(proc)):
            with contextlib.suppress(psutil.Error):
                cpu, rss = cpu + cpu_seconds(p), rss + p.memory_info().rss
    end = await offsets.end()
    committed = await offsets.committed(group)
    return Sample(time.time(), committed, end, cpu, rss)


# -- reading outputs ---------------------------------------------------------------


@dataclass
class Out:
    """One output record as read back, for checking the feed."""

    key: bytes | None
    value: bytes | None
    timestamp: int  # ms


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    values: bool = True,
    timeout: float = 600.0,
    partitions: int = PARTITIONS,
    on_value: Callable[[bytes | None], None] | None = None,
) -> list[Out]:
    """Everything on `topic` up to its end offsets as of now (bounded by `timeout`)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    out: list[Out] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                break
            fetched = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for records in fetched.values():
                if on_value is not None:
                    for r in records:
                        on_value(r.value)
                if values:
                    out.extend(Out(r.key, r.value, r.timestamp) for r in records)
                else:
                    out.extend(Out(None, None, r.timestamp) for r in records)
        else:
            raise TimeoutError(f"{topic}: read {len(out)} records in {timeout:.0f}s, not to the end")
    finally:
        await consumer.stop()
    return out


def outcome(value: bytes | None) -> str:
    """A decision record's outcome: its reason, or `retract:<cause>`."""
    data = orjson.loads(value or b"{}")
    if data.get("action") == "retract":
        return f"retract:{data.get('cause')}"
    return str(data.get("reason"))


def feed_set(records: Iterable[Out]) -> set[tuple[bytes | None, bytes | None]]:
    """The compacted feed as a set of (content id, latest value without `decided_at`); a tombstone keeps None.

    The latest value per key, not every record: the feed topic is compacted while the
    consumers run (16 MB segments on the local broker), so how many superseded versions
    are still on it depends on how long a consumer took, not on what it decided.
    """
    result: set[tuple[bytes | None, bytes | None]] = set()
    for key, value in compacted(records).items():
        if value is None:
            result.add((key, None))
            continue
        data = orjson.loads(value)
        data.pop("decided_at", None)
        result.add((key, orjson.dumps(data, option=orjson.OPT_SORT_KEYS)))
    return result


def compacted(records: Iterable[Out]) -> dict[bytes | None, bytes | None]:
    """What a compacted topic holds once compacted: each key's last value (tombstones included)."""
    view: dict[bytes | None, bytes | None] = {}
    for r in records:  # read partition by partition in offset order: the last one wins
        view[r.key] = r.value
    return view


# -- the machine -------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name, for the results' machine description."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(bootstrap: str) -> dict[str, Any]:
    """The machine and the versions a run measured, recorded beside its results."""
    from importlib.metadata import version

    import aiokafka
    import faust
    import rocksdict  # noqa: F401

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version() + " (" + platform.python_implementation() + ")",
        "kafka": kafka_version(bootstrap),
        "aiokafka": aiokafka.__version__,
        "faust_streaming": faust.__version__,
        "rocksdict": version("rocksdict"),
        "orjson": version("orjson"),
        "quixstreams": _version_or_none("quixstreams"),
        "confluent_kafka": _version_or_none("confluent-kafka"),
        "bootstrap": bootstrap,
        "allocator": allocator_name(),
    }


def _version_or_none(package: str) -> str | None:
    """The installed version of `package`, or None: the Quix peer's packages are bench-only."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def code_version() -> dict[str, Any]:
    """The commit, and a hash of uncommitted changes under stream/ (the lead edits it while we measure)."""

    def git(*args: str) -> str:
        try:
            git_args = ["git", *args]  # git from PATH, fixed arguments
            return subprocess.run(git_args, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()  # noqa: S603
        except (OSError, subprocess.TimeoutExpired):
            return ""

    import hashlib

    diff = git("diff", "HEAD", "--", "stream")
    untracked = git("ls-files", "--others", "--exclude-standard", "stream")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "stream_uncommitted": hashlib.sha256((diff + untracked).encode()).hexdigest()[:12]
        if diff or untracked
        else None,
        "stream_changed_files": git("status", "--short", "--", "stream").splitlines(),
    }


def busy_others(exclude: Iterable[int] = ()) -> list[tuple[str, float]]:
    """Processes other than ours using CPU right now (percent over 1 s), for the report."""
    skip = {os.getpid(), *exclude}
    procs = [p for p in psutil.process_iter(["name", "cmdline"]) if p.pid not in skip]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(1.0)
    busy: list[tuple[str, float]] = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            pct = p.cpu_percent(None)
            if pct >= 5.0:
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])[:80]
                busy.append((cmd, pct))
    return sorted(busy, key=lambda x: -x[1])


class SystemCpu:
    """System-wide CPU use over a stretch of time (all cores, percent of the machine)."""

    def __init__(self) -> None:
        self._start = psutil.cpu_times()
        self._load_start = os.getloadavg()

    def result(self) -> dict[str, Any]:
        """CPU use and load since this was created."""
        end = psutil.cpu_times()
        busy = (sum(end) - end.idle - getattr(end, "iowait", 0)) - (
            sum(self._start) - self._start.idle - getattr(self._start, "iowait", 0)
        )
        total = sum(end) - sum(self._start)
        return {
            "system_cpu_percent": round(100 * busy / total, 1) if total else None,
            "loadavg_start": [round(x, 2) for x in self._load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }


@contextlib.asynccontextmanager
async def running(
    kind: str, settings: Settings, log_dir: Path, *, ready_timeout: float = 300, suffix: str = ""
) -> AsyncIterator[Proc]:
    """A worker (or baseline) process for the block; waits for /ready when it has one."""
    proc = start_process(kind, settings, log_dir, suffix=suffix)
    try:
        if kind in SERVES_READY:
            await wait_ready(proc, ready_timeout)
        yield proc
    finally:
        stop_process(proc)


def chunks(it: Iterator[Any], n: int) -> Iterator[list[Any]]:
    """`it` in lists of up to `n` items."""
    while True:
        block = [x for _, x in zip(range(n), it, strict=False)]
        if not block:
            return
        yield block
