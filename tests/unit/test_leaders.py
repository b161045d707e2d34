"""The one private aiokafka attribute the worker reads (stream/runtime/leaders.py): fails if aiokafka changes it."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.protocol.metadata import MetadataResponse_v0

from stream.runtime.leaders import leader_lookup


async def test_leader_lookup_unknown_partition_no_leader() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # never started: no connection
    leader_of = leader_lookup(consumer)

    assert leader_of(TopicPartition("content.events", 0)) is None


async def test_leader_lookup_reads_the_metadata_the_client_keeps_updated() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    leader_of = leader_lookup(consumer)
    # The metadata aiokafka's client keeps: a MetadataResponse as the broker sends it,
    # one broker (id 7) leading partition 0 of one topic.
    response = MetadataResponse_v0([(7, "localhost", 9092)], [(0, "content.events", [(0, 0, 7, [7], [7])])])
    # The same private path as the wrapper: fed here, it must come out of the wrapper.
    cluster = consumer._client.cluster  # noqa: SLF001, RUF100
    assert isinstance(cluster, ClusterMetadata)
    cluster.update_metadata(response)

    assert leader_of(TopicPartition("content.events", 0)) == 7
    assert leader_of(TopicPartition("content.events", 1)) is None
