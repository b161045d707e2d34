"""The private aiokafka attributes membership.py reads, on the real broker: fails if aiokafka changes them."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.runtime.membership import membership

from .harness import CREATED_PREFIXES

pytestmark = pytest.mark.integration


async def test_membership_of_a_static_member_is_its_generation_and_an_id_after_its_instance_id(
    bootstrap: str,
) -> None:
    tag = uuid.uuid4().hex[:10]
    CREATED_PREFIXES.append(f"t{tag}.")
    topic = f"t{tag}.membership"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"t{tag}.group", group_instance_id="w-0")
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)  # the join happens inside the fetch loop
        seen = membership(consumer)
        assert seen is not None
        generation, member_id = seen
        assert generation >= 1
        assert member_id.startswith("w-0-")  # the broker names a static member after its instance id
    finally:
        await consumer.stop()
