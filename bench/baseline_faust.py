"""Baseline floor: the naive faust-streaming design, one event at a time.

`@app.agent` over the content topic (`value_serializer="raw"`), in-memory dict
tables fed by two more agents on the profile and objection topics, the same rule
and record builders (`bench.dictfilter`), and `await topic.send(...)` per output.
Faust's defaults otherwise (at_least_once, its own commit cadence), as a team new
to Faust would write it.

One concession so its feed can be compared with the worker's: the content agent
waits until the state agents have read the state topics up to their end offsets
as of start-up (a pre-loaded drain then sees the same state as the worker). While
it waits, Faust's per-partition back-pressure pauses the content partitions, so
the state agents keep flowing; `stream_buffer_maxsize` is raised so that what was
already fetched fits (with the default, a full buffer blocks the whole fetch loop).

Configured from the same environment as the worker (`Settings.from_env`); the
Faust app id, and so its consumer group, is `STREAM_GROUP_ID`.

    python -m bench.baseline_faust
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.dictfilter import DECISIONS, DLQ, FEED, DictFilter, Output
from stream.config import Settings
from stream.core.policy import load_policy

log = logging.getLogger("bench.baseline_faust")


@dataclass(frozen=True, slots=True)
class _Rec:
    """A Faust message seen through the fields `DictFilter` reads (timestamp in ms)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def _rec(message: Any) -> _Rec:
    return _Rec(
        message.topic, message.partition, message.offset, message.key, message.value, int(message.timestamp * 1000)
    )


def build(settings: Settings) -> faust.App:
    """The baseline: the same decisions as a plain Faust agent with Faust's own tables."""
    t = settings.topics
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.group_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        datadir=str(settings.data_dir / "faust"),  # the consumer's own scratch dir, removed with the run
        store="memory://",
        processing_guarantee="at_least_once",
        key_serializer="raw",
        value_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        # Room for what one fetch returns while the content agent waits for the state: with the
        # default 4096, a full content buffer blocks Faust's whole fetch loop, the state agents too.
        stream_buffer_maxsize=65536,
    )

    def raw_topic(name: str) -> faust.TopicT:
        """A topic of bytes in and out: we decode and encode ourselves, as the worker does."""
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    content_topic = raw_topic(t.content)
    profiles_topic = raw_topic(t.profiles)
    objections_topic = raw_topic(t.objections)
    outputs = {FEED: raw_topic(t.feed), DECISIONS: raw_topic(t.decisions), DLQ: raw_topic(t.dlq)}
    filt = DictFilter(load_policy(settings.policy_path), settings.pseudonym_key)

    targets: dict[tuple[str, int], int] = {}
    progress: dict[tuple[str, int], int] = {}
    loaded = asyncio.Event()
    targets_known = asyncio.Event()

    def check_loaded() -> None:
        if (
            not loaded.is_set()
            and targets_known.is_set()
            and all(progress.get(tp, 0) >= end for tp, end in targets.items())
        ):
            loaded.set()
            log.warning(
                "state loaded: %d profiles, %d objections; deciding content", len(filt.profiles), len(filt.objections)
            )

    async def read_state_ends() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)  # for its metadata look-up
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None)
        await producer.start()
        await consumer.start()
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in (t.profiles, t.objections)
                for p in sorted(await producer.partitions_for(topic))
            ]
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
            await producer.stop()
        targets.update({(tp.topic, tp.partition): end for tp, end in ends.items()})
        targets_known.set()
        log.warning("state end offsets: %s", sorted(targets.items()))
        check_loaded()

    # Registered by a call, not as a decorator: faust's `task` decorator is untyped and
    # would make the function untyped for mypy.
    app.task(read_state_ends)

    async def send_all(out: list[Output]) -> None:
        for kind, key, value in out:
            await outputs[kind].send(key=key, value=value)

    @app.agent(profiles_topic)
    async def profiles_agent(stream: Any) -> None:
        async for event in stream.events():
            out: list[Output] = []
            record = _rec(event.message)
            filt.apply_profile(record, dt.datetime.now(dt.UTC), out)
            await send_all(out)
            progress[(record.topic, record.partition)] = record.offset + 1
            check_loaded()

    @app.agent(objections_topic)
    async def objections_agent(stream: Any) -> None:
        async for event in stream.events():
            out: list[Output] = []
            record = _rec(event.message)
            filt.apply_objection(record, dt.datetime.now(dt.UTC), out)
            await send_all(out)
            progress[(record.topic, record.partition)] = record.offset + 1
            check_loaded()

    @app.agent(content_topic)
    async def content_agent(stream: Any) -> None:
        async for event in stream.events():
            if not loaded.is_set():
                await loaded.wait()
            out: list[Output] = []
            filt.decide_content(_rec(event.message), dt.datetime.now(dt.UTC), out)
            await send_all(out)

    return app


def main() -> int:
    """Run the Faust baseline worker until stopped."""
    settings = Settings.from_env()
    app = build(settings)
    faust.Worker(app, loglevel="warning").execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
