"""The integration harness's own helpers, where a mistake would change what other tests test."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.runtime.topics import topic_specs

from .harness import make_topics, set_topic_config, topic_configs, unique_settings

pytestmark = pytest.mark.integration


async def test_set_topic_config_keeps_the_topics_other_configs(bootstrap: str, tmp_path: Path) -> None:
    # Tests shrink the feed's max.message.bytes to make sends fail, then put it back;
    # the feed must stay the compacted topic of the contract meanwhile and after.
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    feed = settings.topics.feed
    (spec,) = [s for s in topic_specs(settings) if s.name == feed]
    assert spec.configs["cleanup.policy"] == "compact"

    await set_topic_config(bootstrap, feed, {"max.message.bytes": "64"})
    shrunk = await topic_configs(bootstrap, feed)
    assert shrunk["max.message.bytes"] == "64"
    assert {k: shrunk.get(k) for k in spec.configs} == dict(spec.configs)

    await set_topic_config(bootstrap, feed, {"max.message.bytes": "1048588"})
    restored = await topic_configs(bootstrap, feed)
    assert restored["max.message.bytes"] == "1048588"
    assert {k: restored.get(k) for k in spec.configs} == dict(spec.configs)
