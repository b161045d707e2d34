"""The Quix Streams peer of the benchmark (`bench/baseline_quix.py`) writes what `bench/dictfilter.py` writes.

`python -m bench drain --consumers ...,quix` compares the peer's feed with the
worker's; its throughput means something only if it does the same work. Here the
peer runs as the drain runs it (a process, configured from the environment) on a
small generated backlog loaded as the drain loads it (`bench.common.preload` with
the drain's timestamps: the state before the content). The reference is `DictFilter`
handed the same records as read back from the broker, the state topics first (as the
raw baseline takes a pre-loaded backlog). The compacted feed, each content id's
decision records (without `decided_at`) and the dead letters by reason must be equal.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import common
from bench.dictfilter import DECISIONS, DLQ, FEED, DictFilter, Output
from bench.run import state_first_stamps
from stream.config import Settings
from stream.core.policy import load_policy
from stream.workload.generator import Workload
from tests.conftest import missing

from .harness import CREATED_PREFIXES, content_consumed, make_topics, read_all, unique_settings

pytestmark = pytest.mark.integration

EVENTS = 1500
ACCOUNTS = 300


def _require_quixstreams() -> None:
    if importlib.util.find_spec("quixstreams") is None:
        missing("QUIXSTREAMS", "the Quix peer's test", "quixstreams is not installed (the dev extra pins it)")


def _without_decided_at(value: bytes | None) -> Any:
    if value is None:
        return None
    data = orjson.loads(value)
    data.pop("decided_at", None)
    return data


def _summary(
    feed: list[tuple[bytes | None, bytes | None]],
    decisions: list[tuple[bytes | None, bytes | None]],
    dlq: list[bytes | None],
) -> dict[str, Any]:
    compacted: dict[bytes | None, Any] = {}
    for key, value in feed:
        compacted[key] = _without_decided_at(value)
    per_item: dict[bytes | None, list[Any]] = {}
    for key, value in decisions:
        per_item.setdefault(key, []).append(_without_decided_at(value))
    reasons = Counter(orjson.loads(v or b"{}").get("reason") for v in dlq)
    return {"feed": compacted, "decisions": per_item, "dlq": reasons}


async def test_the_quix_peer_writes_what_dictfilter_writes(bootstrap: str, tmp_path: Path) -> None:
    _require_quixstreams()
    settings = unique_settings(bootstrap, tmp_path / "quix", partitions=2)
    CREATED_PREFIXES.append(f"changelog__{settings.group_id}")  # the peer's store changelog, deleted at the end
    await make_topics(settings)
    # The drain's clock: every moment of the workload behind the wall clock, no notice period ending meanwhile.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(milliseconds=EVENTS, minutes=2)
    workload = Workload(seed=7, accounts=ACCOUNTS, now=now, run="quixpeer")
    records = [i.record for i in workload.setup()] + [i.record for i in workload.stream(EVENTS)]
    await common.preload(
        bootstrap,
        settings.topics,
        records,
        partitions=settings.partitions,
        stamp=state_first_stamps(int(time.time() * 1000)),
    )

    env = common.process_env(settings)
    with (tmp_path / "quix.log").open("wb") as log:
        peer = subprocess.Popen(
            [sys.executable, "-m", "bench.baseline_quix"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=common.ROOT,
        )
    try:
        await content_consumed(settings, timeout=120)
    finally:
        peer.terminate()
        peer.wait(30)
    assert peer.returncode == 0, (tmp_path / "quix.log").read_text()[-3000:]

    t = settings.topics
    got = _summary(
        [(o.key, o.value) for o in await read_all(settings, t.feed)],
        [(o.key, o.value) for o in await read_all(settings, t.decisions)],
        [o.value for o in await read_all(settings, t.dlq)],
    )

    # The reference: the same records as the broker holds them, the state first.
    filt = DictFilter(load_policy(None), Settings.from_env(env).pseudonym_key)
    out: list[Output] = []
    reference_now = dt.datetime.now(dt.UTC)
    for topic, apply in (
        (t.profiles, filt.apply_profile),
        (t.objections, filt.apply_objection),
        (t.content, filt.decide_content),
    ):
        for o in await read_all(settings, topic):
            apply(_Rec(topic, o.partition, o.offset, o.key, o.value, 0), reference_now, out)
    want = _summary(
        [(k, v) for kind, k, v in out if kind == FEED],
        [(k, v) for kind, k, v in out if kind == DECISIONS],
        [v for kind, _, v in out if kind == DLQ],
    )

    assert sum(1 for v in want["feed"].values() if v is not None) > 50  # the workload puts items on the feed
    assert any(r and r.get("action") == "retract" for rs in want["decisions"].values() for r in rs)
    assert got["feed"] == want["feed"]
    assert got["decisions"] == want["decisions"]
    assert got["dlq"] == want["dlq"] and sum(want["dlq"].values()) > 0


class _Rec:
    """A record read back, with the fields `DictFilter` reads."""

    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, timestamp: int
    ) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.key, self.value, self.timestamp = key, value, timestamp
