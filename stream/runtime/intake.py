"""The intake: fetched records sorted into a batch's state and content, and counted per input.

Records of partitions no longer held (revoked while their fetch was in flight) are
dropped here: their new owner reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition

from stream.config import TopicNames
from stream.core.engine import InputRecord
from stream.core.state import PartitionStore
from stream.runtime.metrics import Metrics


class Intake:
    """Sorts fetches by topic; `stores` is the worker's live mapping of held partitions."""

    def __init__(self, topics: TopicNames, stores: Mapping[int, PartitionStore], metrics: Metrics) -> None:
        self._content = topics.content
        self._objections = topics.objections
        self._input_of_topic = {topics.content: "content", topics.profiles: "profiles", topics.objections: "objections"}
        self._stores = stores
        self._metrics = metrics

    def sort(
        self,
        fetched: Mapping[TopicPartition, list[Any]],
        state: list[InputRecord],
        content: list[InputRecord],
        content_partitions: set[int],
    ) -> None:
        """Add fetched records to the batch's state and content (and their partitions), and count them."""
        for tp, records in fetched.items():
            if tp.partition not in self._stores:
                continue  # revoked while the fetch was in flight; the new owner reads it
            self._metrics.records_in.labels(input=self._input_of_topic[tp.topic]).inc(len(records))
            if tp.topic == self._content:
                content.extend(records)
                content_partitions.add(tp.partition)
            else:
                state.extend(records)

    def holds_objection(self, state: Sequence[InputRecord]) -> bool:
        """Whether `state` holds a record of the objections topic."""
        objections = self._objections
        return any(record.topic == objections for record in state)

    def count(self, tp: TopicPartition, records: int) -> None:
        """Count records read outside a batch (the recovery replay)."""
        self._metrics.records_in.labels(input=self._input_of_topic[tp.topic]).inc(records)
