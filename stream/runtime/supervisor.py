"""`python -m stream worker --processes N`: N worker processes in one consumer group, one pod's face.

The worker decides, encodes and writes on one Python thread, so one process uses about
one core. The supervisor starts N ordinary workers (`python -m stream worker`, the
same code as with one process) as child processes in the same consumer group, and is
what the orchestrator sees:

- Each child has its own data directory (`STREAM_DATA_DIR/<i>`: its RocksDB stores),
  with static membership its own `STREAM_GROUP_INSTANCE_ID` (`<id>-<i>`), and its web
  server on an ephemeral port bound to loopback only.
- SIGTERM or SIGINT is forwarded to every child as SIGTERM; each drains and commits
  its batch in hand (bounded by STREAM_SHUTDOWN_TIMEOUT), and the supervisor exits 0
  when all did.
- A child that exits on its own (a crash, an OOM kill, `kill -9`) stops the others the
  same way and the supervisor exits 1. It does not restart the child itself: the
  orchestrator then restarts the pod with its back-off, counts the restart and shows a
  crash loop, where a restart inside the pod would hide one. The group rebalances the
  dead child's partitions either way, and nothing committed is lost.
- One `/healthz` (alive when every child answers its own), one `/ready` (ready when
  every child is) and one `/metrics` on STREAM_WEB_PORT. `/metrics` scrapes the
  children over loopback and merges their series into the names and labels one
  worker exports (rules in `merge_metrics`), so the dashboards and alerts read a pod
  with N processes as they read one worker.
  prometheus_client's multiprocess mode was not used: it changes the gauges' meaning
  (a `pid` label, or a mode chosen per gauge), drops the process and Python
  collectors (`process_cpu_seconds_total`, resident memory) and `Info` series, and
  needs a shared directory of memory-mapped files cleaned at each start.
- More processes than the content topic has partitions is refused: the extra
  processes could only wait idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from stream.config import Settings
from stream.errors import ConfigError
from stream.runtime.topics import check_layout

log = logging.getLogger(__name__)

# Seconds a child may take beyond its own drain bound before it is killed.
KILL_MARGIN_SECONDS = 10.0
SCRAPE_TIMEOUT_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1  # from linux/prctl.h


@dataclass
class Child:
    """One worker process: its index, web port and process handle."""

    index: int
    port: int
    process: asyncio.subprocess.Process | None = None
    exited: asyncio.Task[int] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The child's web server, on loopback."""
        return f"http://127.0.0.1:{self.port}"


def child_env(settings: Settings, index: int, port: int, base: dict[str, str]) -> dict[str, str]:
    """The environment of child `index`: one process, its own data dir, instance id and loopback port."""
    env = dict(base)
    env.update(
        STREAM_WORKER_PROCESSES="1",
        STREAM_DATA_DIR=str(settings.data_dir / str(index)),
        STREAM_WEB_PORT=str(port),
        WEB_BIND="127.0.0.1",  # Faust's web_bind: the child's pages are the supervisor's only
        # Explicit either way: in a pod the default would be the pod's name, the same for every child.
        STREAM_GROUP_INSTANCE_ID=f"{settings.group_instance_id}-{index}" if settings.group_instance_id else "none",
    )
    return env


def supervise(settings: Settings, processes: int, level: str) -> int:
    """Run `processes` workers under one supervisor until a signal or a child's exit; the exit status."""
    return asyncio.run(Supervisor(settings, processes, level).run())


class Supervisor:
    """Starts the children, serves the pod's pages, forwards signals and stops all when one ends."""

    def __init__(self, settings: Settings, processes: int, level: str) -> None:
        """`processes` children of `python -m stream worker` at log level `level`."""
        self.settings = settings
        self.level = level
        self.children = [Child(i, _free_port()) for i in range(processes)]
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        """The whole life: check, start, serve, wait, drain; 0 after a signal, 1 after a child's death."""
        counts = await check_layout(self.settings)
        partitions = counts.get(self.settings.topics.content) or 0
        if len(self.children) > partitions:
            raise ConfigError(
                f"STREAM_WORKER_PROCESSES (--processes) is {len(self.children)}, but {self.settings.topics.content} "
                f"has {partitions} partitions: {len(self.children) - partitions} processes would hold none and "
                "wait idle. Use at most the partition count."
            )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        runner = await self._serve()
        try:
            for child in self.children:
                await self._start(child)
            return await self._wait()
        finally:
            await runner.cleanup()

    def _on_signal(self, sig: int) -> None:
        log.info("%s: stopping the %d worker processes", signal.Signals(sig).name, len(self.children))
        self.stopping.set()

    async def _start(self, child: Child) -> None:
        env = child_env(self.settings, child.index, child.port, dict(os.environ))
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stream",
            "--log-level",
            self.level,
            "worker",
            env=env,
            preexec_fn=_die_with_parent,  # only prctl, before exec
        )
        child.exited = asyncio.create_task(child.process.wait())
        log.info(
            "worker process %d started: pid %d, data dir %s, instance id %s",
            child.index,
            child.process.pid,
            env["STREAM_DATA_DIR"],
            env["STREAM_GROUP_INSTANCE_ID"],
        )

    async def _wait(self) -> int:
        exits = {c.exited: c for c in self.children if c.exited is not None}
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([stop, *exits], return_when=asyncio.FIRST_COMPLETED)
        died = [exits[t] for t in done if t in exits]
        for child in died:
            code = child.exited.result() if child.exited else None
            log.error(
                "worker process %d (pid %s) exited on its own with status %s; stopping the others and exiting 1 "
                "so that the orchestrator restarts the pod",
                child.index,
                child.process.pid if child.process else "?",
                _status(code),
            )
        stop.cancel()
        codes = await self._stop_all()
        if died:
            return 1
        failed = {i: c for i, c in codes.items() if c != 0}
        if failed:
            log.error("worker processes did not drain cleanly: %s", {i: _status(c) for i, c in failed.items()})
            return 1
        log.info("all %d worker processes drained and stopped", len(self.children))
        return 0

    async def _stop_all(self) -> dict[int, int | None]:
        """SIGTERM to every running child, then wait for their drain; SIGKILL those that outlast it."""
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        pending = [c.exited for c in self.children if c.exited is not None]
        _, late = await asyncio.wait(pending, timeout=self.settings.shutdown_timeout + KILL_MARGIN_SECONDS)
        for child in self.children:
            if child.exited in late and child.process is not None:
                log.error("worker process %d did not stop in time: killed", child.index)
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
        if late:
            await asyncio.wait(late)
        return {c.index: c.process.returncode if c.process else None for c in self.children}

    async def _serve(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", self.settings.web_port).start()  # noqa: S104 - as Faust's web_bind
        return runner

    async def _healthz(self, request: web.Request) -> web.Response:
        running = all(c.process is not None and c.process.returncode is None for c in self.children)
        if not running or self.stopping.is_set():
            return web.json_response({"status": "stopping"}, status=503)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)) as session:
            answers = await asyncio.gather(*(_get(session, c.url + "/healthz") for c in self.children))
        status, answer = pod_liveness(answers)
        return web.json_response(answer, status=status)

    async def _ready(self, request: web.Request) -> web.Response:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)) as session:
            answers = await asyncio.gather(*(_get(session, c.url + "/ready") for c in self.children))
        status, answer = pod_readiness(answers)
        return web.json_response(answer, status=status)

    async def _metrics(self, request: web.Request) -> web.Response:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)) as session:
            answers = await asyncio.gather(*(_get(session, c.url + "/metrics") for c in self.children))
        if any(status != 200 for status, _ in answers):
            # A partial sum would look like a counter reset to rate(): the scrape fails instead.
            return web.Response(status=503, text="a worker process did not answer its /metrics\n")
        merged = merge_metrics([body.decode() for _, body in answers])
        return web.Response(body=merged, content_type=CONTENT_TYPE_LATEST.split(";")[0])


# -- the pod's probes ---------------------------------------------------------------


def pod_liveness(answers: Sequence[tuple[int, bytes]]) -> tuple[int, dict[str, Any]]:
    """The pod's `/healthz` from its running children's: alive when every child answers its own.

    A child whose event loop is blocked does not answer: that fails the pod's liveness,
    as it would fail the orchestrator's probe of a worker on its own.
    """
    processes = ["alive" if status == 200 else "not answering" for status, _ in answers]
    alive = all(status == 200 for status, _ in answers)
    return (200 if alive else 503), {"status": "alive" if alive else "not answering", "processes": processes}


def pod_readiness(answers: Sequence[tuple[int, bytes]]) -> tuple[int, dict[str, Any]]:
    """The pod's `/ready` from its children's: ready when every child is; the body lists each child's status."""
    processes: list[dict[str, Any]] = []
    for status, body in answers:
        data: dict[str, Any] = _json(body)
        processes.append(
            {
                "status": str(data.get("status", "not ready")) if status else "not running",
                "partitions": data.get("partitions", []),
            }
        )
    ready = all(status == 200 for status, _ in answers)
    statuses = {p["status"] for p in processes}
    overall = "ready" if ready else next((s for s in ("stalled", "stuck") if s in statuses), "not ready")
    partitions = sorted(n for p in processes for n in p["partitions"])
    return (200 if ready else 503), {"status": overall, "partitions": partitions, "processes": processes}


# -- one /metrics for all -----------------------------------------------------------

LAST_BATCH = "eligibility_last_batch_timestamp_seconds"
LAG = "eligibility_consumer_lag_records"
# Gauges that are not a pod total: readiness (ready only when every process is), the
# process's start and limits, and 1-valued info series.
_MIN_GAUGES = frozenset({"eligibility_ready", "process_start_time_seconds", "process_max_fds"})
_MAX_GAUGES = frozenset(
    {
        "eligibility_recovering",
        "eligibility_worker_stuck",
        "eligibility_loop_step_seconds",
        "eligibility_dev_pseudonym_key",
    }
)


def merge_metrics(texts: Sequence[str]) -> bytes:
    """The children's expositions as one worker's: the same names and labels, values combined.

    Counters and histograms (and the process's CPU seconds, memory and file descriptors,
    the consumer lag per partition, the state and memory gauges) are summed: a pod's
    totals, as the dashboards' `rate()` and `sum()` expect. `eligibility_ready` is the
    minimum (ready only when every process is); `recovering`, `stuck` and the loop's
    step time the maximum;
    `*_created`, the start time and `process_max_fds` the minimum; `*_info` series the
    maximum (1). The last batch's time is the oldest among processes that have lag (the
    alert "lag and no batch for 2 minutes" fires when any process stalls), or the newest
    when none has.
    """
    parsed = [list(text_string_to_metric_families(t)) for t in texts]
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for child in parsed:
        for family in child:
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                values[family.name].setdefault(key, []).append(s.value)
    for name, metric in families.items():
        for (sample_name, labels), vs in values[name].items():
            value = _last_batch(parsed) if name == LAST_BATCH else _combine(metric, sample_name, vs)
            metric.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


def _combine(metric: Metric, sample_name: str, vs: list[float]) -> float:
    if metric.type == "gauge":
        if sample_name.endswith("_created") or metric.name in _MIN_GAUGES:
            return min(vs)
        if sample_name.endswith("_info") or metric.name in _MAX_GAUGES:
            return max(vs)
    return sum(vs)


def _last_batch(parsed: list[list[Metric]]) -> float:
    stamps: list[tuple[float, float]] = []  # (lag, last batch) per child
    for child in parsed:
        lag = sum(s.value for f in child if f.name == LAG for s in f.samples)
        batch = [s.value for f in child if f.name == LAST_BATCH for s in f.samples]
        if batch:
            stamps.append((lag, batch[0]))
    behind = [t for lag, t in stamps if lag > 0]
    return min(behind) if behind else max((t for _, t in stamps), default=0.0)


class _Fixed:
    """A collector that yields the merged families (prometheus_client's registry protocol)."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterable[Metric]:
        return self._metrics


# -- small parts -----------------------------------------------------------------------


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    """Status and body of a GET; status 0 when the process does not answer."""
    try:
        async with session.get(url) as response:
            return response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError):
        return 0, b""


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _status(code: int | None) -> str:
    if code is None:
        return "unknown"
    return f"signal {signal.Signals(-code).name}" if code < 0 else str(code)


def _free_port() -> int:
    """An ephemeral loopback port for a child's web server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (even by SIGKILL), so no worker is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
