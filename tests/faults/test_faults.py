"""Never wrong, never lossy: the worker under crashes, restarts, rebalances, broker loss and bad input.

Each scenario ends with the independent verifier reporting zero violations, zero
losses and zero minimisation problems once the worker has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest

from stream.config import DEV_PSEUDONYM_KEY, Settings
from stream.verifier.verify import render, verify
from stream.workload.generator import MalformedKind, Record, RecordKind, TopicKind, Workload
from tests.conftest import ROOT
from tests.integration.harness import (
    content_consumed,
    free_port,
    http_get,
    js,
    make_topics,
    process_env,
    read_all,
    read_until,
    send,
    send_markers,
    send_workload,
    unique_settings,
)

from .conftest import FIGURES

pytestmark = pytest.mark.integration

UTC = dt.UTC


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float

    async def ready(self, timeout: float = 120.0) -> float:
        """Seconds from start to /ready answering 200."""
        async with asyncio.timeout(timeout):
            while (await http_get(f"http://127.0.0.1:{self.port}/ready"))[0] != 200:
                assert self.proc.poll() is None, f"worker exited: {self.log.read_text()[-3000:]}"
                await asyncio.sleep(0.1)
        return time.monotonic() - self.started

    async def partitions(self) -> list[int]:
        """The partitions `/ready` names (held now, ready or not)."""
        _, body = await http_get(f"http://127.0.0.1:{self.port}/ready")
        return list(orjson.loads(body)["partitions"])

    async def metric(self, name: str) -> float:
        """One unlabelled sample of the worker's `/metrics`."""
        status, body = await http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")


def start_worker(settings: Settings, name: str, **env: str) -> Worker:
    port = free_port()
    log = settings.data_dir.parent / f"{name}.log"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=process_env(settings, STREAM_WEB_PORT=str(port), **env),
    )
    return Worker(proc, port, log, time.monotonic())


def stop(worker: Worker, sig: int = signal.SIGTERM, timeout: float = 60.0) -> float:
    """Signal the worker and wait for it; seconds it took to exit."""
    started = time.monotonic()
    if worker.proc.poll() is None:
        worker.proc.send_signal(sig)
        worker.proc.wait(timeout)
    return time.monotonic() - started


@asynccontextmanager
async def workers() -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    try:
        yield started
    finally:
        for w in started:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(30)


def workload(seed: int, accounts: int = 800, malformed_share: float = 0.01) -> Workload:
    # `now` an hour back keeps every generated notice ("shown now") in the past for the worker.
    return Workload(
        seed=seed,
        accounts=accounts,
        now=dt.datetime.now(UTC) - dt.timedelta(hours=1),
        malformed_share=malformed_share,
        run=uuid.uuid4().hex[:8],
    )


def split(w: Workload, count: int) -> tuple[list[Record], list[Record]]:
    return [i.record for i in w.setup()], [i.record for i in w.stream(count)]


async def verified(settings: Settings, scenario: str, checked: str, events: int, recovery: str) -> None:
    """Wait until the worker caught up, run the verifier, assert it found nothing, record the figures."""
    await send_markers(settings, uuid.uuid4().hex[:6])
    await content_consumed(settings, timeout=180)
    # The worker processes run in development mode: the public development key.
    report = await verify(replace(settings, pseudonym_key=DEV_PSEUDONYM_KEY))
    feed = await read_all(settings, settings.topics.feed)
    seen = Counter((r.key, r.json()["source_event_id"]) for r in feed if r.value is not None)
    FIGURES.append(
        {
            "scenario": scenario,
            "checked": checked,
            "events": events,
            "violations": report.violation_count,
            "losses": report.losses.count,
            "duplicates": sum(n - 1 for n in seen.values()),
            "recovery": recovery,
        }
    )
    assert (report.violation_count, report.losses.count, report.minimisation_count) == (0, 0, 0), render(report)
    # Every retraction of the feed is on training.retractions (and back), whatever the fault.
    assert report.retraction_problem_count == 0, render(report)
    tombstoned = {r.key for r in feed if r.value is None}
    recorded = {r.key for r in await read_all(settings, settings.topics.retractions)}
    assert tombstoned <= recorded, f"{len(tombstoned - recorded)} feed tombstones without a retraction record"
    assert report.expected_eligible > 0


def content_count(stream: list[Record]) -> int:
    return sum(1 for r in stream if r.topic is TopicKind.CONTENT)


@pytest.mark.parametrize("when", [1000, 3500], ids=["early", "late"])
async def test_fault_kill_9_while_deciding_restart_loses_and_leaks_nothing(
    bootstrap: str, tmp_path: Path, when: int
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=4)
    await make_topics(settings)
    setup, stream = split(workload(seed=when), 5000)
    async with workers() as running:
        running.append(a := start_worker(settings, "a"))
        await a.ready()
        load = asyncio.create_task(send_workload(settings, setup, stream))
        await read_until(settings, settings.topics.decisions, when, timeout=120)
        a.proc.kill()  # SIGKILL mid-batch: nothing drains, nothing commits
        a.proc.wait(30)
        await load
        running.append(b := start_worker(settings, "b"))
        recovery = await b.ready()
        await verified(
            settings,
            f"kill -9 while deciding ({when} decisions in)",
            "restart on the same data directory",
            content_count(stream),
            f"{recovery:.1f} s",
        )


async def test_fault_kill_9_while_retracting_objection_storm_restart_retracts_everything(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=4)
    await make_topics(settings)
    w = workload(seed=2)
    setup, stream = split(w, 4000)
    await send_workload(settings, setup, stream)
    async with workers() as running:
        running.append(a := start_worker(settings, "a"))
        await a.ready()
        await content_consumed(settings)
        # 10% of users object at once; the worker is killed while retracting.
        objectors = random.Random(3).sample(w.account_ids, len(w.account_ids) // 10)
        await send(settings, settings.topics.objections, [_objection(u) for u in objectors])
        await read_until(settings, settings.topics.decisions, 4000 + 20, timeout=60)
        a.proc.kill()
        a.proc.wait(30)
        running.append(b := start_worker(settings, "b"))
        recovery = await b.ready()
        await verified(
            settings,
            "kill -9 while retracting (objection storm)",
            f"{len(objectors)} objections, restart",
            content_count(stream),
            f"{recovery:.1f} s",
        )


async def test_fault_sigterm_during_load_drains_in_bounded_time_and_loses_nothing(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=4)
    await make_topics(settings)
    setup, stream = split(workload(seed=4), 5000)
    await send_workload(settings, setup, stream)
    async with workers() as running:
        running.append(a := start_worker(settings, "a"))
        await a.ready()
        await read_until(settings, settings.topics.decisions, 1500, timeout=120)
        drained = stop(a, signal.SIGTERM, timeout=45)
        assert a.proc.returncode == 0, a.log.read_text()[-3000:]
        assert drained < 35  # the shutdown bound (STREAM_SHUTDOWN_TIMEOUT=30) plus process exit
        running.append(b := start_worker(settings, "b"))
        await b.ready()
        await verified(
            settings,
            "SIGTERM during load",
            "graceful drain, exit 0, restart",
            content_count(stream),
            f"drain {drained:.1f} s",
        )


async def test_fault_scale_out_and_in_under_load_rebalances_lose_and_leak_nothing(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "a", partitions=4)
    other = replace(settings, data_dir=tmp_path / "b")  # a second pod: its own disk
    await make_topics(settings)
    w = workload(seed=5)
    setup, stream = split(w, 6000)
    async with workers() as running:
        running.append(a := start_worker(settings, "a"))
        await a.ready()
        load = asyncio.create_task(send_workload(settings, setup, stream))
        await read_until(settings, settings.topics.decisions, 1500, timeout=120)
        running.append(b := start_worker(other, "b"))  # 1 -> 2
        recovery = await b.ready()
        await read_until(settings, settings.topics.decisions, 3000, timeout=120)
        await send(
            settings, settings.topics.objections, [_objection(u) for u in random.Random(6).sample(w.account_ids, 40)]
        )
        stop(b)  # 2 -> 1: b's partitions move back to a, with b's published items
        await load
        await verified(
            settings,
            "scale out and in under load (1 -> 2 -> 1)",
            "two rebalances, objections between",
            content_count(stream),
            f"{recovery:.1f} s (second worker)",
        )


async def test_fault_broker_stopped_and_restarted_under_load_worker_recovers(tmp_path: Path) -> None:
    port, controller = free_port(), free_port()
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_STATE_DIR": str(tmp_path / "broker"),
        "KAFKA_FORCE_LOCAL": "1",
        "KAFKA_HEAP": "512m",
    }
    kafka = [str(ROOT / "scripts" / "kafka.sh")]
    assert subprocess.run([*kafka, "start"], env=env, capture_output=True, check=False).returncode == 0
    try:
        settings = unique_settings(f"127.0.0.1:{port}", tmp_path / "data", partitions=4)
        await make_topics(settings)
        setup, stream = split(workload(seed=7), 5000)
        await send_workload(settings, setup, stream)
        async with workers() as running:
            running.append(a := start_worker(settings, "a"))
            await a.ready()
            await read_until(settings, settings.topics.decisions, 1500, timeout=120)
            assert subprocess.run([*kafka, "stop"], env=env, capture_output=True, check=False).returncode == 0
            outage = time.monotonic()
            assert subprocess.run([*kafka, "start"], env=env, capture_output=True, check=False).returncode == 0
            back = time.monotonic() - outage
            await verified(
                settings,
                "broker stopped and restarted under load",
                f"worker kept running through a {back:.0f} s outage",
                content_count(stream),
                "no restart needed",
            )
            assert a.proc.poll() is None, "the worker must survive a broker outage"
    finally:
        subprocess.run([*kafka, "stop"], env=env, capture_output=True, check=False)


async def test_fault_data_directory_wiped_between_runs_state_rebuilt_from_topics(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=4)
    await make_topics(settings)
    w = workload(seed=8)
    setup, stream = split(w, 6000)
    first, second = stream[:3000], stream[3000:]
    async with workers() as running:
        running.append(a := start_worker(settings, "a"))
        await a.ready()
        await send_workload(settings, setup, first)
        await content_consumed(settings)
        stop(a)
        shutil.rmtree(settings.data_dir)
        await send_workload(settings, [], second)
        await send(
            settings, settings.topics.objections, [_objection(u) for u in random.Random(9).sample(w.account_ids, 40)]
        )
        running.append(b := start_worker(settings, "b"))
        recovery = await b.ready()
        await verified(
            settings,
            "data directory wiped between runs",
            "state, index, deferrals rebuilt from topics",
            content_count(stream),
            f"{recovery:.1f} s",
        )


async def test_fault_duplicated_out_of_order_updates_and_tombstones_apply_latest(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=4)
    await make_topics(settings)
    w = workload(seed=10)
    setup, stream = split(w, 4000)
    rng = random.Random(11)
    state = [r for r in setup + stream if r.topic is not TopicKind.CONTENT]
    # Replays of earlier versions (duplicates, and older values appended after newer
    # ones), then tombstones: the latest record of each key is what counts.
    replays = rng.sample(state, min(300, len(state)))
    tombstones = [Record(TopicKind.PROFILES, a.encode(), None) for a in rng.sample(w.account_ids, 20)]
    tombstones += [Record(TopicKind.OBJECTIONS, a.encode(), None) for a in rng.sample(w.account_ids, 20)]
    async with workers() as running:
        running.append(a := start_worker(settings, "a"))
        await a.ready()
        await send_workload(settings, setup, stream)
        await send_workload(settings, [], replays + tombstones + replays[:50])
        await verified(
            settings,
            "duplicated and out-of-order profile/objection updates, tombstones",
            f"{len(replays) + 50} replays, {len(tombstones)} tombstones",
            content_count(stream),
            "n/a",
        )


async def test_fault_objection_storm_during_load_leaves_no_objector_on_the_feed(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=4)
    await make_topics(settings)
    w = workload(seed=12, accounts=1500)
    setup, stream = split(w, 6000)
    async with workers() as running:
        running.append(a := start_worker(settings, "a"))
        await a.ready()
        load = asyncio.create_task(send_workload(settings, setup, stream))
        await read_until(settings, settings.topics.decisions, 2000, timeout=120)
        objectors = random.Random(13).sample(w.account_ids, len(w.account_ids) // 10)
        storm = time.monotonic()
        await send(settings, settings.topics.objections, [_objection(u) for u in objectors])
        assert time.monotonic() - storm < 1.0  # 10% of users object within a second
        await load
        await verified(
            settings,
            "objection storm during load",
            f"{len(objectors)} objections in under a second",
            content_count(stream),
            "n/a",
        )


async def test_fault_poison_input_at_high_rate_every_record_accounted_for(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=4)
    await make_topics(settings)
    w = workload(seed=14, malformed_share=0.3)
    labelled = list(w.stream(6000))
    setup = [i.record for i in w.setup()]
    stream = [i.record for i in labelled]
    malformed = sum(1 for i in labelled if i.kind is RecordKind.MALFORMED)
    garbage = [Record(TopicKind.CONTENT, os.urandom(8), os.urandom(rng_len)) for rng_len in range(1, 200)]
    async with workers() as running:
        running.append(a := start_worker(settings, "a"))
        await a.ready()
        await send_workload(settings, setup, stream + garbage)
        await verified(
            settings,
            "poison input at a high rate (30% malformed + garbage)",
            "every bad record dead-lettered, worker kept consuming",
            content_count(stream),
            "n/a",
        )
        assert a.proc.poll() is None
    dead = await read_all(settings, settings.topics.dlq)
    assert len(dead) == malformed + len(garbage)
    reasons = Counter(d.json()["reason"] for d in dead)
    assert set(reasons) == {"malformed_json", "not_an_object", "schema_violation", "key_mismatch"}
    assert {i.malformed for i in labelled if i.malformed} == set(MalformedKind)


async def test_fault_static_member_restarted_within_session_gets_its_partitions_back_without_rebalancing_the_other(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "a", partitions=4)
    other = replace(settings, data_dir=tmp_path / "b")
    await make_topics(settings)
    setup, stream = split(workload(seed=15), 5000)
    async with workers() as running:
        running.append(a := start_worker(settings, "a", STREAM_GROUP_INSTANCE_ID="worker-0"))
        await a.ready()
        running.append(b := start_worker(other, "b", STREAM_GROUP_INSTANCE_ID="worker-1"))
        await b.ready()
        await until_async(lambda: _split_evenly(a, b))  # a gave b its half: the group is stable
        a_partitions, b_partitions = await a.partitions(), await b.partitions()
        b_rebalances = await b.metric("eligibility_rebalances_total")
        load = asyncio.create_task(send_workload(settings, setup, stream))
        await read_until(settings, settings.topics.decisions, 1500, timeout=120)
        watch = asyncio.create_task(_ready_throughout(b))
        drained = stop(a)  # SIGTERM: a static member leaves no LeaveGroup, its partitions wait for it
        assert a.proc.returncode == 0, a.log.read_text()[-3000:]
        running.append(a2 := start_worker(settings, "a2", STREAM_GROUP_INSTANCE_ID="worker-0"))
        back = await a2.ready()
        assert not watch.done(), f"b left /ready during a's restart: {watch.exception()!r}"
        watch.cancel()
        assert await a2.partitions() == a_partitions  # its own partitions back, its store still current
        assert await b.partitions() == b_partitions
        # No rebalance reached b: no assignment received, and /ready never left 200.
        assert await b.metric("eligibility_rebalances_total") == b_rebalances
        await load
        await verified(
            settings,
            "static member (STREAM_GROUP_INSTANCE_ID) restarted, one of two workers",
            "SIGTERM and restart within the session: the other worker not rebalanced, same partitions back",
            content_count(stream),
            f"{back:.1f} s (drain {drained:.1f} s)",
        )


async def test_fault_kill_9_of_static_member_replacement_ready_within_10_s_loses_nothing(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=4)
    await make_topics(settings)
    setup, stream = split(workload(seed=16), 5000)
    async with workers() as running:
        running.append(a := start_worker(settings, "a", STREAM_GROUP_INSTANCE_ID="worker-0"))
        await a.ready()
        load = asyncio.create_task(send_workload(settings, setup, stream))
        await read_until(settings, settings.topics.decisions, 2000, timeout=120)
        a.proc.kill()
        a.proc.wait(30)
        running.append(b := start_worker(settings, "b", STREAM_GROUP_INSTANCE_ID="worker-0"))
        recovery = await b.ready()
        # Without an instance id the replacement waits for the dead member's session (30 s).
        assert recovery <= 10.0, b.log.read_text()[-3000:]
        await load
        await verified(
            settings,
            "kill -9 of a static member (STREAM_GROUP_INSTANCE_ID), replacement under the same id",
            "restart on the same data directory, no wait for the dead session",
            content_count(stream),
            f"{recovery:.1f} s",
        )


async def test_fault_two_processes_under_one_instance_id_stop_naming_it_until_one_holds_it_alone(
    bootstrap: str, tmp_path: Path
) -> None:
    """Two processes under one id never go on sharing it: each that sees its membership taken stops, naming the id.

    Usually both stop, each at its own rejoin. When their joins cross (the second's
    first JoinGroup is answered with an error because the first took the id back
    within milliseconds, which a loaded machine makes likelier), the first stops before it
    ever takes the id from the second again: the second then runs as the id's only
    process, holding every partition, the clash shown by the first's exit.
    """
    settings = unique_settings(bootstrap, tmp_path / "a", partitions=4)
    await make_topics(settings)
    async with workers() as running:
        running.append(a := start_worker(settings, "a", STREAM_GROUP_INSTANCE_ID="worker-0"))
        await a.ready()
        # A second process under the same id (a misconfiguration): each would take the
        # membership from the other in turn; instead each stops at its next rejoin.
        running.append(
            b := start_worker(replace(settings, data_dir=tmp_path / "b"), "b", STREAM_GROUP_INSTANCE_ID="worker-0")
        )
        pair = (a, b)
        async with asyncio.timeout(90):
            while all(w.proc.poll() is None for w in pair):
                await asyncio.sleep(0.2)  # polling the processes' own state
        # The other stops at its own rejoin, which follows within seconds, unless their
        # joins crossed; then it holds the id alone.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while any(w.proc.poll() is None for w in pair):
                    await asyncio.sleep(0.2)
        stopped = [w for w in pair if w.proc.poll() is not None]
        for w in stopped:
            log = w.log.read_text()
            assert w.proc.returncode != 0, log[-3000:]
            assert "STREAM_GROUP_INSTANCE_ID='worker-0'" in log, log[-3000:]
            assert "two processes must never share an instance id" in log
        for w in pair:
            if w not in stopped:  # the id's one process now: every partition, and ready
                await w.ready(timeout=60)
                assert await w.partitions() == [0, 1, 2, 3], w.log.read_text()[-3000:]


async def _split_evenly(a: Worker, b: Worker) -> bool:
    held = [await a.partitions(), await b.partitions()]
    return sorted(held[0] + held[1]) == [0, 1, 2, 3] and all(len(p) == 2 for p in held)


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.2)  # polling the workers' own answers, not a guess at timing


async def _ready_throughout(w: Worker) -> None:
    """Fail (the task's exception) the moment `w`'s /ready stops answering 200."""
    while True:
        status, body = await http_get(f"http://127.0.0.1:{w.port}/ready")
        assert status == 200, body
        await asyncio.sleep(0.1)


def _objection(account: str) -> tuple[bytes, bytes]:
    return account.encode(), js(
        {
            "account_id": account,
            "status": "objected",
            "at": "2026-11-28T09:00:00Z",
            "source": "form",
            "request_id": f"storm-{account}",
        }
    )
