"""The engine's own CPU cost per content event, in process: `python -m bench.engine_cost`.

No broker, no RocksDB, no event loop: `Engine.process` over a generated workload
(`stream.workload.generator.Workload`, malformed records included) with in-memory
stores, performed as the worker performs a batch's store writes. The machine is
shared, so an end-to-end drain cannot tell a few microseconds apart; this can. The
figure is CPU time (`time.process_time`) of the `process` calls only, divided by
the content events decided, the best of several repetitions (each from the same
pre-loaded state); and, apart, the CPU time of loading that state (every account's
profile and the objections on record) per state record. docs/benchmarks.md ("Engine cost per event") records it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from dataclasses import dataclass

from stream.config import TopicNames
from stream.core.engine import BatchResult, Engine
from stream.core.partitioning import partition_for
from stream.core.policy import load_policy
from stream.runtime.store import MemoryPartitionStore
from stream.workload.generator import Record, TopicKind, Workload

_NOW = dt.datetime(2026, 11, 28, 9, 15, tzinfo=dt.UTC)
_KEY = b"engine-cost-pseudonym-key"


@dataclass(frozen=True, slots=True)
class _In:
    """A consumed record, as the engine reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


Batch = tuple[list[_In], list[_In]]


def batches_of(records: list[Record], topics: TopicNames, partitions: int, size: int) -> list[Batch]:
    """Records as batches of `size` content records, each with the state records before them."""
    names = {TopicKind.CONTENT: topics.content, TopicKind.PROFILES: topics.profiles}
    names[TopicKind.OBJECTIONS] = topics.objections
    offsets: dict[tuple[str, int], int] = {}
    batches: list[Batch] = []
    state: list[_In] = []
    content: list[_In] = []
    ms = int(_NOW.timestamp() * 1000)
    for record in records:
        topic = names[record.topic]
        partition = partition_for(record.key, partitions) if record.key is not None else 0
        offset = offsets.get((topic, partition), 0)
        offsets[topic, partition] = offset + 1
        one = _In(topic, partition, offset, record.key, record.value, ms)
        (content if record.topic is TopicKind.CONTENT else state).append(one)
        if len(content) >= size:
            batches.append((state, content))
            state, content = [], []
    if state or content:
        batches.append((state, content))
    return batches


def _run(engine: Engine, stores: dict[int, MemoryPartitionStore], batches: list[Batch]) -> float:
    """Process `batches` in order, performing each result's store writes; CPU seconds inside `process`."""
    spent = 0.0
    for n, (state, content) in enumerate(batches):
        now = _NOW + dt.timedelta(seconds=n)
        start = time.process_time()
        result = engine.process(stores, state, content, now)
        spent += time.process_time() - start
        write(stores, result)
    return spent


def write(stores: dict[int, MemoryPartitionStore], result: BatchResult) -> None:
    """Perform a result's store writes as the worker does: the writes before the sends, then the rest."""
    for partition, updates in result.pre_updates.items():
        stores[partition].apply(updates)
    for partition in result.post_updates.keys() | result.state_offsets.keys():
        stores[partition].apply(result.post_updates.get(partition, ()), result.state_offsets.get(partition, {}))


def measure(accounts: int, events: int, repeat: int, batch: int, partitions: int = 4) -> dict[str, float]:
    """Best and median CPU microseconds per content event of `Engine.process` over `repeat` runs.

    Also the best microseconds per state record of loading the accounts before each run.
    """
    topics = TopicNames()
    workload = Workload(seed=21, accounts=accounts, now=_NOW)
    setup = batches_of([labelled.record for labelled in workload.setup()], topics, partitions, batch)
    stream = batches_of([labelled.record for labelled in workload.stream(events)], topics, partitions, batch)
    content = sum(len(c) for _, c in stream)
    engine = Engine(load_policy(), _KEY, topics)
    accounts_records = sum(len(s) for s, _ in setup)
    runs, loads = [], []
    for _ in range(repeat):
        stores = {p: MemoryPartitionStore() for p in range(partitions)}
        loads.append(_run(engine, stores, setup) / accounts_records * 1e6)
        runs.append(_run(engine, stores, stream) / content * 1e6)
    runs.sort()
    loads.sort()
    return {
        "best_us": runs[0],
        "median_us": runs[len(runs) // 2],
        "events": float(content),
        "setup_best_us": loads[0],
        "setup_records": float(accounts_records),
    }


def main(argv: list[str] | None = None) -> None:
    """Print the engine's CPU microseconds per content event (best and median of the repetitions)."""
    parser = argparse.ArgumentParser(prog="python -m bench.engine_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2_000)
    args = parser.parse_args(argv)
    figures = measure(args.accounts, args.events, args.repeat, args.batch)
    print(
        f"{int(figures['events'])} content events, {args.accounts} accounts: "
        f"best {figures['best_us']:.1f} us/event, median {figures['median_us']:.1f} us/event; "
        f"loading {int(figures['setup_records'])} state records: best {figures['setup_best_us']:.1f} us/record"
    )


if __name__ == "__main__":
    main()
