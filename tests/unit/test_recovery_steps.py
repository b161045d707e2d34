"""The recovery part's steps (stream/runtime/recovery.py): the state replay and the re-evaluation pass.

The changelog restore reads with a consumer of its own: tests/integration covers it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from stream.config import Settings
from stream.core.engine import BatchResult, Engine, InputRecord
from stream.core.policy import load_policy
from stream.core.state import REEVALUATE_KEY
from stream.runtime.intake import Intake
from stream.runtime.interrupt import GiveUp, Interruption
from stream.runtime.metrics import Metrics
from stream.runtime.recovery import Recovery
from stream.runtime.store import MemoryPartitionStore
from stream.runtime.writer import StoreWriter

from .fake_kafka import O0, P0, P1, FakeConsumer


class _Recovering:
    def __init__(self, consumer: FakeConsumer, stores: dict[int, MemoryPartitionStore]) -> None:
        settings = Settings()
        self.applied: list[list[InputRecord]] = []
        self.performed: list[BatchResult] = []
        self.metrics = Metrics.create()
        self.interruption = Interruption()
        self.writer = StoreWriter(stores)
        self.recovery = Recovery(
            settings,
            consumer,
            stores,
            Engine(load_policy(None), b"k", settings.topics),
            apply_state=self._apply,
            perform=self._perform,
            writer=self.writer,
            intake=Intake(settings.topics, stores, self.metrics),
            interruption=self.interruption,
            metrics=self.metrics,
        )

    async def _apply(self, records: Sequence[InputRecord]) -> None:
        self.applied.append(list(records))

    async def _perform(self, result: BatchResult) -> None:
        self.performed.append(result)


async def test_replay_applies_the_state_up_to_the_end_offsets_listed_at_its_start() -> None:
    consumer = FakeConsumer({P0: 5, O0: 3, P1: 4}, {P0: 1})
    steps = _Recovering(consumer, {0: MemoryPartitionStore()})

    await steps.recovery.replay([0])

    replayed = [(r.topic, r.offset) for batch in steps.applied for r in batch]
    assert sorted(replayed) == sorted([(P0.topic, o) for o in range(1, 5)] + [(O0.topic, o) for o in range(3)])
    assert consumer.listed == [[P0, O0]]  # partition 1 is not being recovered
    assert steps.metrics.registry.get_sample_value("eligibility_input_records_total", {"input": "profiles"}) == 4
    steps.writer.close()


async def test_replay_gives_up_when_a_rebalance_begins() -> None:
    steps = _Recovering(FakeConsumer({P0: 5}), {0: MemoryPartitionStore()})
    steps.interruption.rebalance_started()

    with pytest.raises(GiveUp):
        await steps.recovery.replay([0])
    assert steps.applied == []
    steps.writer.close()


async def test_reevaluate_flagged_store_judged_in_steps_and_the_flag_cleared() -> None:
    flagged, clean = MemoryPartitionStore(), MemoryPartitionStore()
    flagged.apply([(REEVALUATE_KEY, b"1")])
    steps = _Recovering(FakeConsumer({}), {0: flagged, 1: clean})

    await steps.recovery.reevaluate(step=10)

    assert len(steps.performed) == 1  # one (empty) step for the flagged store, none for the other
    assert flagged.get(REEVALUATE_KEY) is None
    steps.writer.close()


def test_recovery_requested_after_an_assignment_is_needed() -> None:
    steps = _Recovering(FakeConsumer({}), {})

    steps.recovery.request()

    assert steps.recovery.needed
    steps.writer.close()
