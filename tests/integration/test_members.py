"""`python -m stream remove-members` on the real broker, with workers of one group in this event loop.

A static member that stops sends no LeaveGroup: its partitions stay with it for the
session timeout (30 s). Removed by the command, they move to the other worker at once:
the test waits for that for half the session timeout, so it fails if the removal does
nothing. Removing a worker that still runs costs one rebalance: it joins again in a
later generation and is not taken for another process under its instance id.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from stream.config import Settings
from stream.runtime.membership import membership
from stream.runtime.worker import FilterWorker

from .harness import process_env, running_worker, until
from .test_topology import held, populated, until_stable, whole_numbers

pytestmark = pytest.mark.integration

SESSION_TIMEOUT_SECONDS = 30.0  # the worker's consumer (worker.py)


async def remove_members(settings: Settings, *ids: str, **extra: str) -> tuple[int, str, str]:
    """Run the command as an operator would, with no pseudonym key in its environment (plus `extra`)."""
    env = process_env(settings, **extra)
    del env["STREAM_DEV_MODE"]  # it needs no key: refused for one, this would exit 2
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stream",
        "remove-members",
        *ids,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def member(settings: Settings, root: Path, instance: str) -> contextlib.AbstractAsyncContextManager[FilterWorker]:
    return running_worker(replace(settings, data_dir=root / instance, group_instance_id=instance))


def holds_all(settings: Settings, worker: FilterWorker) -> bool:
    return whole_numbers(settings, held(worker)) == set(range(settings.partitions)) and worker.is_ready


async def test_a_removed_member_s_partitions_move_before_its_session_runs_out(bootstrap: str, tmp_path: Path) -> None:
    settings = await populated(bootstrap, tmp_path, 2)
    async with member(settings, tmp_path, "w-0") as w0:
        async with member(settings, tmp_path, "w-1") as w1:
            numbers = await until_stable(settings, [w0, w1])
            assert sorted(len(ns) for ns in numbers) == [1, 1]
        # w-1 stopped without leaving: its number waits for it, and w-0 keeps only its own.
        assert not holds_all(settings, w0)
        code, out, err = await remove_members(settings, "w-1", "w-9")
        assert code == 0, err
        assert out.splitlines() == [
            f"w-1: removed from group {settings.group_id}",
            f"w-9: not a member of group {settings.group_id} (nothing to remove)",
        ]
        await until(lambda: holds_all(settings, w0), timeout=SESSION_TIMEOUT_SECONDS / 2)
        # Asked again, it is no longer a member: nothing to do, and no error.
        code, out, _ = await remove_members(settings, "w-1")
        assert (code, out) == (0, f"w-1: not a member of group {settings.group_id} (nothing to remove)\n")


async def test_a_running_member_removed_joins_again_and_goes_on(bootstrap: str, tmp_path: Path) -> None:
    settings = await populated(bootstrap, tmp_path, 2)
    async with member(settings, tmp_path, "w-0") as w0, member(settings, tmp_path, "w-1") as w1:
        await until_stable(settings, [w0, w1])
        assert w0.consumer is not None
        before = membership(w0.consumer)
        assert before is not None
        code, out, err = await remove_members(settings, "w-0")
        assert (code, out) == (0, f"w-0: removed from group {settings.group_id}\n"), err

        def rejoined() -> bool:
            assert w0.consumer is not None
            now = membership(w0.consumer)
            return now is not None and now[0] > before[0] and now[1] != before[1]

        await until(rejoined, timeout=SESSION_TIMEOUT_SECONDS)
        # Both hold a number each again, ready: w-0 did not stop on an instance id clash.
        numbers = await until_stable(settings, [w0, w1])
        assert sorted(len(ns) for ns in numbers) == [1, 1]
