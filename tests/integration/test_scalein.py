"""A pod stopped for good leaves the group as it stops; a pod stopped for a restart stays (scalein.py).

Two `python -m stream worker` processes on the real broker, static members named as
a StatefulSet's pods (`ef-0`, `ef-1`), ask a stand-in for the Kubernetes API (HTTP on
loopback: there is no cluster here) for their StatefulSet's replicas when SIGTERM
stops them. Scaled to 1, `ef-1` removes itself: `ef-0` holds every partition well
within the session timeout (30 s), which it could not without the removal. Still at
2 replicas, `ef-1` stays a member: `remove-members` then finds it there.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stream.config import Settings
from tests.unit.kube_api import Api, serve

from .harness import free_port, http_get, process_env
from .test_members import SESSION_TIMEOUT_SECONDS, remove_members
from .test_topology import populated

pytestmark = pytest.mark.integration


@pytest.fixture
def kube() -> Iterator[Api]:
    yield from serve()


class PodProcess:
    """One worker process as a StatefulSet's pod `ef-<ordinal>`."""

    def __init__(self, settings: Settings, root: Path, ordinal: int, api: str, processes: int = 1) -> None:
        self.name = f"ef-{ordinal}"
        self.port = free_port()
        self.log = root / f"{self.name}.log"
        env = process_env(
            settings,
            STREAM_DATA_DIR=str(root / self.name),
            STREAM_WEB_PORT=str(self.port),
            STREAM_GROUP_INSTANCE_ID=self.name,
            HOSTNAME=self.name,
            STREAM_KUBERNETES_API=api,
            POD_NAMESPACE="ns",
            STREAM_WORKER_PROCESSES=str(processes),
        )
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    async def partitions(self) -> list[int] | None:
        """The partitions of its /ready while it answers 200, else None."""
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            status, body = await http_get(f"http://127.0.0.1:{self.port}/ready")
        except OSError:
            return None
        if status != 200:
            return None
        parts: list[int] = orjson.loads(body)["partitions"]
        return parts

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, 60)
        assert code == 0, self.log.read_text()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def until_held(pods: list[PodProcess], expected: list[list[int]], timeout: float) -> None:
    """Until each pod's /ready is 200 with the partitions expected of it (in some order of the pods)."""
    async with asyncio.timeout(timeout):
        while True:
            held = [await p.partitions() for p in pods]
            answered = [h for h in held if h is not None]
            if len(answered) == len(pods) and sorted(answered) == sorted(expected):
                return
            await asyncio.sleep(0.1)


async def test_a_pod_scaled_in_leaves_the_group_a_pod_restarted_stays(
    bootstrap: str, tmp_path: Path, kube: Api
) -> None:
    settings = await populated(bootstrap, tmp_path, 2)
    pods = [PodProcess(settings, tmp_path, 0, kube.url), PodProcess(settings, tmp_path, 1, kube.url)]
    try:
        await until_held(pods, [[0], [1]], timeout=120)

        # Still 2 replicas: a restart. ef-1 asks, stays a member, and remove-members finds it.
        kube.body = b'{"spec": {"replicas": 2}}'
        await pods[1].stop()
        assert kube.seen[-1][0] == "/apis/apps/v1/namespaces/ns/statefulsets/ef"
        assert "a restart (ordinal 1, 2 replicas)" in pods[1].log.read_text()
        code, out, err = await remove_members(settings, "ef-1")
        assert (code, out) == (0, f"ef-1: removed from group {settings.group_id}\n"), err
        await until_held(pods[:1], [[0, 1]], timeout=SESSION_TIMEOUT_SECONDS)

        # Back, then scaled to 1 replica: ef-1 removes itself as it stops, and ef-0 takes its
        # partition well before the 30 s session would have run out.
        pods[1] = PodProcess(settings, tmp_path, 1, kube.url)
        await until_held(pods, [[0], [1]], timeout=120)
        kube.body = b'{"spec": {"replicas": 1}}'
        asked = len(kube.seen)
        await pods[1].stop()
        assert len(kube.seen) == asked + 1
        assert "scale-in: left the group" in pods[1].log.read_text()
        await until_held(pods[:1], [[0, 1]], timeout=SESSION_TIMEOUT_SECONDS / 2)
        code, out, _ = await remove_members(settings, "ef-1")
        assert out == f"ef-1: not a member of group {settings.group_id} (nothing to remove)\n"
    finally:
        for p in pods:
            p.kill()


async def test_every_process_of_a_pod_scaled_in_leaves_the_group(bootstrap: str, tmp_path: Path, kube: Api) -> None:
    # `--processes 2`: the children are the members `ef-0-0` and `ef-0-1`; each reads the
    # StatefulSet (pod ef-0) as it stops and, scaled to 0, removes itself.
    settings = await populated(bootstrap, tmp_path, 2)
    pod = PodProcess(settings, tmp_path, 0, kube.url, processes=2)
    try:
        await until_held([pod], [[0, 1]], timeout=120)
        kube.body = b'{"spec": {"replicas": 0}}'
        await pod.stop()
        assert [path for path, _ in kube.seen] == ["/apis/apps/v1/namespaces/ns/statefulsets/ef"] * 2
        code, out, err = await remove_members(settings, "ef-0-0", "ef-0-1")
        assert (code, out) == (
            0,
            f"ef-0-0: not a member of group {settings.group_id} (nothing to remove)\n"
            f"ef-0-1: not a member of group {settings.group_id} (nothing to remove)\n",
        ), err
    finally:
        pod.kill()
