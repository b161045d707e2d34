"""Print which core this process runs (compiled or sources) and a digest of everything it decides.

`python -m tests.core_digest [EVENTS]`: the generator's workload (malformed records
included) through `Engine.process` in batches over four in-memory partitions, each
result's store writes performed; the SHA-256 of every result field, in order.
tests/integration/test_core_build.py runs it on both cores and compares.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys

from tests.pure_core import PURE_ENV, compiled, source_first

if os.environ.get(PURE_ENV) == "1":
    source_first()

import stream.core.engine
from bench.engine_cost import batches_of, write
from stream.config import TopicNames
from stream.core.engine import BatchResult, Engine
from stream.core.policy import load_policy
from stream.runtime.store import MemoryPartitionStore
from stream.workload.generator import Workload

NOW = dt.datetime(2026, 11, 28, 9, 15, tzinfo=dt.UTC)


def _fields(result: BatchResult) -> list[object]:
    produced = [
        [(p.topic.value, p.key, p.value, p.partition, p.headers) for p in ps]
        for ps in (result.first, result.produce, result.shadow, result.last)
    ]
    return [
        produced,
        sorted(result.pre_updates.items()),
        sorted(result.post_updates.items()),
        sorted((p, sorted(c.items())) for p, c in result.pre_counts.items()),
        sorted((p, sorted(c.items())) for p, c in result.post_counts.items()),
        sorted((p, sorted(o.items())) for p, o in result.state_offsets.items()),
        *(sorted(c.items()) for c in (result.decisions, result.skips, result.dead_letters, result.retractions)),
        result.released,
        result.isolated,
        result.event_times,
        result.objections,
    ]


def digest(events: int) -> str:
    """The SHA-256 of every result of deciding `events` generated content events (and their accounts)."""
    topics = TopicNames()
    workload = Workload(seed=7, accounts=2_000, now=NOW, malformed_share=0.02)
    batches = batches_of([r.record for r in workload.setup()], topics, 4, 500)
    batches += batches_of([r.record for r in workload.stream(events)], topics, 4, 500)
    engine = Engine(load_policy(), b"core-digest-key", topics)
    stores = {p: MemoryPartitionStore() for p in range(4)}
    sha = hashlib.sha256()
    for n, (state, content) in enumerate(batches):
        result = engine.process(stores, state, content, NOW + dt.timedelta(hours=n))
        sha.update(repr(_fields(result)).encode())
        write(stores, result)
    return sha.hexdigest()


if __name__ == "__main__":
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    print("compiled" if compiled(stream.core.engine) else "sources", digest(events))
