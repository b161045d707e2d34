"""The output sender's own CPU cost per content event, in process: `python -m bench.sender_cost`.

No broker: a generated workload (`bench.engine_cost`'s) is decided by the engine on
in-memory stores, and each batch's three sends (the published index's new entries,
the records, what must follow them) go through `OutputSender.send` on a producer
that is never started, whose `send_batch` returns an acknowledged future at once.
What is timed is the sender's own work: placing each record on its output partition
and appending it to a producer batch. Compression and the network are the producer's
and are not in it. The figure is CPU time (`time.process_time`) over every batch's
sends divided by the content events, the best of several repetitions.
`--sender PATH` times another version of `stream/runtime/sender.py` (a file), for a
comparison in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.engine_cost import _KEY, _NOW, batches_of, write
from stream.config import TopicNames
from stream.core.engine import Engine, Produce
from stream.core.policy import load_policy
from stream.runtime import sender as current
from stream.runtime.store import MemoryPartitionStore
from stream.workload.generator import Workload


def sends_of(accounts: int, events: int, partitions: int = 4, batch: int = 5000) -> tuple[list[list[Produce]], int]:
    """Every batch's three sends, in order, for a workload of `events` content events; and that event count."""
    topics = TopicNames()
    workload = Workload(seed=21, accounts=accounts, now=_NOW)
    setup = batches_of([labelled.record for labelled in workload.setup()], topics, partitions, batch)
    stream = batches_of([labelled.record for labelled in workload.stream(events)], topics, partitions, batch)
    engine = Engine(load_policy(), _KEY, topics)
    stores = {p: MemoryPartitionStore() for p in range(partitions)}
    sends: list[list[Produce]] = []
    for n, (state, content) in enumerate([*setup, *stream]):
        result = engine.process(stores, state, content, _NOW + dt.timedelta(seconds=n))
        write(stores, result)
        if n >= len(setup):
            sends += [result.first, [*result.produce], result.last]
    return sends, sum(len(content) for _, content in stream)


def _module(path: Path | None) -> ModuleType:
    if path is None:
        return current
    spec = importlib.util.spec_from_file_location("bench_sender_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def measure(module: ModuleType, sends: list[list[Produce]], events: int, repeat: int) -> float:
    """Best CPU microseconds per content event of `module.OutputSender.send` over `sends`."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", compression_type="zstd", max_batch_size=512 << 10)

    async def send_batch(batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def partitions_for(topic: str) -> set[int]:
        return set(range(4))

    # Instance attributes of a producer that is never started: no broker, nothing sent.
    producer.send_batch = send_batch
    producer.partitions_for = partitions_for
    sender = module.OutputSender(producer, TopicNames())
    best = float("inf")
    try:
        for _ in range(repeat):
            start = time.process_time()
            for records in sends:
                await sender.send(records)
            best = min(best, time.process_time() - start)
    finally:
        await producer.stop()  # never started: releases what its constructor made
    return best / events * 1e6


def main(argv: list[str] | None = None) -> None:
    """Print the sender's CPU per event (and another version's, with `--sender`), alternating."""
    parser = argparse.ArgumentParser(prog="python -m bench.sender_cost", description=__doc__)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the versions compared")
    parser.add_argument("--sender", type=Path, help="another sender.py to time beside the installed one")
    args = parser.parse_args(argv)
    sends, events = sends_of(args.accounts, args.events)
    versions = [("stream/runtime/sender.py", _module(None))]
    if args.sender is not None:
        versions.append((str(args.sender), _module(args.sender)))
    for _ in range(args.rounds):
        for name, module in versions:
            us = asyncio.run(measure(module, sends, events, args.repeat))
            print(f"{name}: {us:.2f} us/event over {events:,} content events (best of {args.repeat})")


if __name__ == "__main__":
    main()
