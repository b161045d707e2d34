"""The output partitioner: Kafka's murmur2, exactly, for every key (it is compiled with native ints)."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import example, given
from hypothesis import strategies as st

from stream.core.batch import CHANGELOGS, OutputTopic, Produce
from stream.core.partitioning import by_partition, murmur2, partition_for


def test_murmur2_of_the_java_clients_own_vectors() -> None:
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed ints there).
    vectors = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, signed in vectors.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data


@given(st.binary(max_size=600))
@example(b"")
@example(b"\xff" * 64)
@example(b"\x80\x81\x82\x83\x84\x85\x86")
def test_murmur2_agrees_with_aiokafkas_for_any_bytes(data: bytes) -> None:
    # Every length modulo 4 and every byte value: the words' products overflow 64 bits
    # in C before they are masked, and the tail's bytes are folded in one by one.
    assert murmur2(data) == aiokafka_murmur2(data) & 0xFFFFFFFF


@given(st.binary(min_size=1, max_size=100), st.integers(min_value=1, max_value=10_000))
def test_partition_for_is_the_default_partitioners_choice(key: bytes, partitions: int) -> None:
    assert partition_for(key, partitions) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions


_RECORDS = st.lists(
    st.builds(
        Produce,
        st.sampled_from(list(OutputTopic)),
        st.none() | st.binary(max_size=40),
        st.none() | st.binary(max_size=8),
        st.integers(min_value=0, max_value=63),
    ),
    max_size=60,
)


@given(_RECORDS, st.fixed_dictionaries({topic: st.integers(1, 24) for topic in OutputTopic}))
def test_by_partition_puts_each_record_where_kafka_would_and_keeps_each_partitions_order(
    records: list[Produce], counts: dict[OutputTopic, int]
) -> None:
    # The model: each record alone, as the sender placed them one by one. Grouped, every
    # record is in exactly one group, each group in the records' own order, so each
    # output partition receives its records in the order the engine made them.
    def where(p: Produce) -> tuple[OutputTopic, int]:
        n = counts[p.topic]
        if p.topic in CHANGELOGS or p.key is None:
            return p.topic, p.partition % n
        return p.topic, (aiokafka_murmur2(p.key) & 0x7FFFFFFF) % n

    groups = by_partition(records, counts)
    assert {place: [id(p) for p in group] for place, group in groups.items()} == {
        place: [id(p) for p in records if where(p) == place] for place in {where(p) for p in records}
    }
