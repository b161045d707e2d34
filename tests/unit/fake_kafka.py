"""In-memory stand-ins for the public calls of aiokafka's consumer that the worker's parts make (no internals)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import NamedTuple

from aiokafka import TopicPartition

from stream.config import Settings

T = Settings().topics
C0, C1 = TopicPartition(T.content, 0), TopicPartition(T.content, 1)
P0, P1 = TopicPartition(T.profiles, 0), TopicPartition(T.profiles, 1)
O0, O1 = TopicPartition(T.objections, 0), TopicPartition(T.objections, 1)
# Every partition of the consumers below: a fetch response carries all of them.
ASSIGNED = [C0, C1, P0, P1, O0, O1]


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeConsumer:
    """Consumer calls of the gate, replay, commits and rewind over in-memory logs; a read gives 2 records a partition.

    A `getmany()` of every partition stands for a fetch response: like aiokafka, it
    stamps each partition with the response's arrival time and the stable offset the
    broker read (`stamps`, `stable`). `getmany(*tps)` returns records of those
    partitions only, as aiokafka's does from its buffer.
    """

    def __init__(
        self,
        logs: dict[TopicPartition, int],
        positions: dict[TopicPartition, int] | None = None,
        *,
        stamps: dict[TopicPartition, int] | None = None,
        stable: dict[TopicPartition, int] | None = None,
    ) -> None:
        self.logs = {
            tp: [Record(tp.topic, tp.partition, o, b"k", b"{}", 0) for o in range(n)] for tp, n in logs.items()
        }
        self.positions = dict(positions or {})
        self.stamps = dict(stamps or {})
        self.stable = dict(stable or {})
        self.listed: list[list[TopicPartition]] = []
        self.calls: list[tuple[tuple[TopicPartition, ...], int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        # aiokafka's count of fetches in flight, which stream/runtime/fetches.py mends.
        self._subscription = SimpleNamespace(_fetch_count=0, _last_fetch_ended=0.0)
        self.committed_offsets: dict[TopicPartition, int | None] = {}
        self.seeks: dict[TopicPartition, int | None] = {}  # None: to the beginning

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.listed.append(list(tps))
        return {tp: len(self.logs.get(tp, [])) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.stamps.get(tp)

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.stable.get(tp)

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Record]]:
        self.calls.append((tps, timeout_ms))
        if not tps:  # a fetch response for every partition
            for tp in ASSIGNED:
                self.stamps[tp] = now_ms()
                self.stable[tp] = len(self.logs.get(tp, []))
        out: dict[TopicPartition, list[Record]] = {}
        for tp in tps or self.logs:
            at = self.positions.get(tp, 0)
            got = self.logs.get(tp, [])[at : at + min(2, max_records - sum(map(len, out.values())))]
            if got:
                out[tp] = got
                self.positions[tp] = at + len(got)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return set(ASSIGNED)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks[tp] = None


class SilentConsumer(FakeConsumer):
    """Lists end offsets past the position, then serves no record: a broker that answers but no longer serves."""

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Record]]:
        self.calls.append((tps, timeout_ms))
        return {}
