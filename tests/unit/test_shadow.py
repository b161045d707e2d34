"""Shadow mode in the core: a second policy's differences, and nothing else changed.

The independent count decides each `decide` record's event under both policies with
the verifier's own rule (`stream.verifier.rule.judge`, its own parsing of the
profile bytes), never with `stream.core.policy`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from stream.config import TopicNames
from stream.core.engine import BatchResult, Engine, OutputTopic
from stream.core.models import ContentType, Reason
from stream.core.policy import Jurisdiction, Policy, load_policy
from stream.core.shadow import load_shadow_policy
from stream.errors import ConfigError
from stream.runtime.metrics import Metrics
from stream.runtime.store import MemoryPartitionStore
from stream.verifier import rule as vrule
from stream.verifier.inputs import parse_profile
from stream.verifier.state import Account

UTC = dt.UTC
POLICY = load_policy()
KEY = b"unit-test-pseudonym-key"
TOPICS = TopicNames()
NOW = dt.datetime(2026, 11, 28, 9, 15, tzinfo=UTC)
BROKER_MS = int(NOW.timestamp() * 1000) - 60_000
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "eligibility.shadow.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=FormatChecker())

# The packaged policy with DE enabled (no notice period): the change a rollout would try.
WITH_DE = Policy(
    "shadow-with-de",
    POLICY.content_types,
    POLICY.minimum_age,
    {**POLICY.jurisdictions, "DE": Jurisdiction("DE", dt.timedelta(0))},
)


class Rec:
    """A consumed record as the engine reads it."""

    def __init__(self, topic: str, offset: int, key: str, value: bytes | None) -> None:
        self.topic, self.partition, self.offset = topic, 0, offset
        self.key, self.value, self.timestamp = key.encode(), value, BROKER_MS


def ts(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def profile(account: str, country: str | None, birth: str | None, notified: str | None) -> bytes:
    return orjson.dumps(
        {
            "account_id": account,
            "birth_date": birth,
            "country": country,
            "notified_at": notified,
            "updated_at": "2025-01-01T00:00:00Z",
        }
    )


def objection(account: str, status: str) -> bytes:
    return orjson.dumps(
        {"account_id": account, "status": status, "at": "2026-11-01T00:00:00Z", "source": "form", "request_id": "r"}
    )


def upsert(content_id: str, author: str, content_type: str = "post", visibility: str = "public", **kw: Any) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e-{content_id}",
            "op": "upsert",
            "content_id": content_id,
            "content_type": content_type,
            "platform": "facebook",
            "author_id": author,
            "visibility": visibility,
            "created_at": kw.get("created_at", "2026-01-02T03:04:05Z"),
            "event_time": "2026-11-28T09:10:00Z",
            "text": "some text",
            "media_uri": None,
            "language": "en",
        }
    )


def run(
    batches: list[tuple[list[Rec], list[Rec]]], shadow: Policy | None, now: dt.datetime = NOW
) -> tuple[Engine, dict[int, MemoryPartitionStore], list[BatchResult]]:
    """The batches decided and performed in order against a fresh store."""
    engine = Engine(POLICY, KEY, TOPICS, shadow=shadow)
    stores = {0: MemoryPartitionStore()}
    results = []
    for state, content in batches:
        result = engine.process(stores, state, content, now)
        for updates in result.pre_updates.values():
            stores[0].apply(updates)
        for updates in result.post_updates.values():
            stores[0].apply(updates)
        results.append(result)
    return engine, stores, results


def in_force_part(result: BatchResult) -> tuple[Any, ...]:
    """Everything a result holds but the shadow's part."""
    return (
        result.first,
        result.produce,
        result.last,
        result.pre_updates,
        result.post_updates,
        result.pre_counts,
        result.post_counts,
        result.state_offsets,
        result.decisions,
        result.skips,
        result.dead_letters,
        result.retractions,
        result.released,
        result.event_times,
        result.objections,
    )


def stored(store: MemoryPartitionStore) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in store.scan(b"") if k != b"\x00touched_at"]


def shadow_records(results: list[BatchResult]) -> list[dict[str, Any]]:
    out = []
    for result in results:
        for p in result.shadow:
            assert p.topic is OutputTopic.SHADOW and p.value is not None
            record = orjson.loads(p.value)
            assert p.key == record["content_id"].encode()
            assert not list(VALIDATOR.iter_errors(record)), record
            out.append(record)
    return out


# -- a shadow that enables one country ------------------------------------------------


def test_shadow_enabling_a_country_differs_exactly_on_that_countrys_upserts() -> None:
    state = [
        Rec(TOPICS.profiles, 0, "a-gb", profile("a-gb", "GB", "1980-01-01", "2025-01-01T00:00:00Z")),
        Rec(TOPICS.profiles, 1, "a-de", profile("a-de", "DE", "1980-01-01", "2025-01-01T00:00:00Z")),
        Rec(TOPICS.profiles, 2, "a-de-minor", profile("a-de-minor", "DE", "2015-01-01", "2025-01-01T00:00:00Z")),
        Rec(TOPICS.profiles, 3, "a-fr", profile("a-fr", "FR", "1980-01-01", "2025-01-01T00:00:00Z")),
    ]
    content = [
        Rec(TOPICS.content, 0, "a-gb", upsert("c-gb", "a-gb")),
        Rec(TOPICS.content, 1, "a-de", upsert("c-de-1", "a-de")),
        Rec(TOPICS.content, 2, "a-de", upsert("c-de-2", "a-de", content_type="photo")),
        Rec(TOPICS.content, 3, "a-de", upsert("c-de-private", "a-de", visibility="private")),
        Rec(TOPICS.content, 4, "a-de-minor", upsert("c-de-minor", "a-de-minor")),
        Rec(TOPICS.content, 5, "a-fr", upsert("c-fr", "a-fr")),
    ]
    _, _, (result,) = run([(state, content)], WITH_DE)

    jne, eligible = Reason.JURISDICTION_NOT_ENABLED, Reason.ELIGIBLE
    assert result.shadow_differences == Counter({(jne, eligible): 2, (jne, Reason.MINOR): 1})
    records = shadow_records([result])
    assert sorted(records, key=lambda r: r["content_id"]) == [
        {
            "content_id": cid,
            "event_id": f"e-{cid}",
            "in_force_reason": "jurisdiction_not_enabled",
            "in_force_policy_version": POLICY.version,
            "shadow_reason": shadow_reason,
            "shadow_policy_version": "shadow-with-de",
            "decided_at": "2026-11-28T09:15:00Z",
        }
        for cid, shadow_reason in (("c-de-1", "eligible"), ("c-de-2", "eligible"), ("c-de-minor", "minor"))
    ]
    # Minimisation: no account id, no text, in any diff record.
    for p in result.shadow:
        assert p.value is not None and b"a-de" not in p.value and b"some text" not in p.value
    # The shadow put nothing on the feed: the only feed record is the GB item's.
    assert [p.key for p in result.produce if p.topic is OutputTopic.FEED] == [b"c-gb"]


def test_shadow_result_in_force_records_and_writes_identical_to_a_run_without_shadow() -> None:
    state = [Rec(TOPICS.profiles, 0, "a-de", profile("a-de", "DE", "1980-01-01", "2025-01-01T00:00:00Z"))]
    content = [Rec(TOPICS.content, i, "a-de", upsert(f"c-{i}", "a-de")) for i in range(3)]
    objected = [Rec(TOPICS.objections, 0, "a-de", objection("a-de", "objected"))]
    batches = [(state, content), (objected, [Rec(TOPICS.content, 3, "a-de", upsert("c-3", "a-de"))])]
    _, plain_stores, plain = run(batches, None)
    _, shadow_stores, shadowed = run(batches, WITH_DE)

    assert [in_force_part(r) for r in shadowed] == [in_force_part(r) for r in plain]
    # The stores hold the same entries (but the wall-clock time each store was last written).
    assert stored(shadow_stores[0]) == stored(plain_stores[0])
    assert all(not r.shadow and not r.shadow_differences for r in plain)
    # Three differences in the first batch (DE enabled); none in the second, where the
    # author objected: `objected` under both policies.
    assert [sum(r.shadow_differences.values()) for r in shadowed] == [3, 0]


def test_shadow_held_item_falling_due_is_decided_under_the_shadow_too() -> None:
    # BR's notice period is 30 days in force; the shadow makes it 60.
    longer = Policy(
        "shadow-br-60", POLICY.content_types, 18, {**POLICY.jurisdictions, "BR": Jurisdiction("BR", dt.timedelta(60))}
    )
    notified = NOW - dt.timedelta(days=10)
    state = [Rec(TOPICS.profiles, 0, "a-br", profile("a-br", "BR", "1980-01-01", ts(notified)))]
    content = [Rec(TOPICS.content, 0, "a-br", upsert("c-br", "a-br"))]
    engine, stores, (first,) = run([(state, content)], longer)
    assert first.shadow_differences == Counter()  # both hold it: notice_period_running either way
    due = engine.process_due(stores[0], 0, NOW + dt.timedelta(days=21), limit=100)
    assert due.decisions == Counter({Reason.ELIGIBLE: 1})
    assert due.shadow_differences == Counter({(Reason.ELIGIBLE, Reason.NOTICE_PERIOD_RUNNING): 1})
    (record,) = shadow_records([due])
    assert record["content_id"] == "c-br" and record["shadow_policy_version"] == "shadow-br-60"


def test_shadow_metric_counts_the_pairs_of_a_performed_batch() -> None:
    metrics = Metrics.create(shadow=True)
    _, _, (result,) = run(
        [
            (
                [Rec(TOPICS.profiles, 0, "a-de", profile("a-de", "DE", "1980-01-01", "2025-01-01T00:00:00Z"))],
                [Rec(TOPICS.content, 0, "a-de", upsert("c-1", "a-de"))],
            )
        ],
        WITH_DE,
    )
    metrics.count_batch(result)
    labels = {"in_force_reason": "jurisdiction_not_enabled", "shadow_reason": "eligible"}
    assert metrics.registry.get_sample_value("eligibility_shadow_differences_total", labels) == 1
    assert metrics.registry.get_sample_value("eligibility_output_records_total", {"output": "shadow"}) == 1
    other = {"in_force_reason": "eligible", "shadow_reason": "minor"}
    assert metrics.registry.get_sample_value("eligibility_shadow_differences_total", other) == 0
    # Without a shadow the series has no samples at all.
    assert Metrics.create().registry.get_sample_value("eligibility_shadow_differences_total", other) is None


# -- loading --------------------------------------------------------------------------


def test_load_shadow_policy_same_version_refused_naming_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "shadow.toml"
    path.write_text(f'version = "{POLICY.version}"\ncontent_types = ["post"]\nminimum_age = 21\n')
    with pytest.raises(ConfigError, match=r"STREAM_SHADOW_POLICY_PATH=.*same|STREAM_SHADOW_POLICY_PATH=.*version"):
        load_shadow_policy(path, POLICY)


def test_load_shadow_policy_invalid_file_refused_naming_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "shadow.toml"
    path.write_text('version = "v2"\ncontent_types = ["post"]\nminimum_age = 16\n')
    with pytest.raises(ConfigError, match=r"STREAM_SHADOW_POLICY_PATH=.*minimum_age"):
        load_shadow_policy(path, POLICY)
    with pytest.raises(ConfigError, match=r"STREAM_SHADOW_POLICY_PATH=.*cannot read"):
        load_shadow_policy(tmp_path / "missing.toml", POLICY)


def test_load_shadow_policy_new_version_loaded_and_none_without_path(tmp_path: Path) -> None:
    path = tmp_path / "shadow.toml"
    path.write_text(
        'version = "v2"\ncontent_types = ["post"]\nminimum_age = 21\n[jurisdictions.DE]\nnotice_period_days = 0\n'
    )
    shadow = load_shadow_policy(path, POLICY)
    assert shadow is not None and shadow.version == "v2" and shadow.minimum_age == 21
    assert set(shadow.jurisdictions) == {"DE"} and shadow.content_types == frozenset({ContentType.POST})
    assert load_shadow_policy(None, POLICY) is None


# -- the property: the shadow's outputs equal an independent count -------------------

COUNTRIES = ("GB", "BR", "DE", "FR", None)
BIRTHS = (
    *(
        (NOW.date() - dt.timedelta(days=round(years * 365.25))).isoformat()
        for years in (15, 17.9, 18.1, 19.5, 21.2, 40)
    ),
    None,
)
NOTIFIED = (None, *(ts(NOW - dt.timedelta(days=d)) for d in (1, 20, 45, 400)))
CREATED = ("2026-11-01T00:00:00Z", "2010-06-01T00:00:00Z", "2024-03-03T00:00:00Z")
TYPES = ("post", "comment", "photo", "caption", "message")

accounts_st = st.lists(
    st.tuples(
        st.booleans(),  # has a profile
        st.sampled_from(COUNTRIES),
        st.sampled_from(BIRTHS),
        st.sampled_from(NOTIFIED),
        st.sampled_from((None, "objected", "withdrawn")),
    ),
    min_size=1,
    max_size=6,
)
events_st = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.sampled_from(TYPES),
        st.sampled_from(("public", "public", "friends", "private")),
        st.sampled_from(CREATED),
    ),
    min_size=1,
    max_size=25,
)
shadow_st = st.builds(
    lambda types, age, jurisdictions: Policy(
        "shadow-drawn",
        frozenset(ContentType(t) for t in types),
        age,
        {code: Jurisdiction(code, dt.timedelta(days=days)) for code, days in jurisdictions.items()},
    ),
    st.sets(st.sampled_from(TYPES[:4])),
    st.integers(18, 22),
    st.dictionaries(st.sampled_from(("GB", "BR", "DE", "FR")), st.sampled_from((0, 10, 30, 60))),
)
# A change of state in the second batch: at most one per account, so every decision of
# the batch (the new upserts and the held items decided again) sees the batch's final state.
changes_st = st.dictionaries(
    st.integers(0, 5),
    st.sampled_from(("objected", "withdrawn", "deleted", "GB", "DE", "BR")),
)


def _verifier_policy(p: Policy) -> vrule.Policy:
    return vrule.Policy(
        p.version,
        frozenset(t.value for t in p.content_types),
        p.minimum_age,
        {code: j.notice_period for code, j in p.jurisdictions.items()},
    )


@settings(max_examples=150, deadline=None)
@given(accounts=accounts_st, first=events_st, second=events_st, changes=changes_st, shadow=shadow_st)
def test_shadow_outputs_equal_independent_count_and_in_force_outputs_unchanged(
    accounts: list[tuple[bool, str | None, str | None, str | None, str | None]],
    first: list[tuple[int, str, str, str]],
    second: list[tuple[int, str, str, str]],
    changes: dict[int, str],
    shadow: Policy,
) -> None:
    names = [f"acct-{i}" for i in range(len(accounts))]
    offsets: Counter[str] = Counter()

    def rec(topic: str, key: str, value: bytes | None) -> Rec:
        offsets[topic] += 1
        return Rec(topic, offsets[topic] - 1, key, value)

    # The verifier's view of each account, from the same bytes the engine gets.
    view: dict[str, Account] = {}
    state: list[Rec] = []
    for name, (has_profile, country, birth, notified, status) in zip(names, accounts, strict=True):
        account = view[name] = Account()
        if has_profile:
            value = profile(name, country, birth, notified)
            state.append(rec(TOPICS.profiles, name, value))
            account.profile = parse_profile(name, value)
        if status is not None:
            state.append(rec(TOPICS.objections, name, objection(name, status)))
            account.objected = status == "objected"
    events: dict[str, tuple[str, str, str, str]] = {}

    def content(batch: list[tuple[int, str, str, str]], tag: str) -> list[Rec]:
        out = []
        for n, (author, content_type, visibility, created) in enumerate(batch):
            name = names[author % len(names)]
            cid = f"c-{tag}-{n}"
            events[cid] = (name, content_type, visibility, created)
            out.append(rec(TOPICS.content, name, upsert(cid, name, content_type, visibility, created_at=created)))
        return out

    batch1 = (state, content(first, "1"))
    state2: list[Rec] = []
    views_after: dict[str, Account] = {name: Account(a.profile, a.objected) for name, a in view.items()}
    for index, change in changes.items():
        name = names[index % len(names)]
        if any(r.key == name.encode() for r in state2):
            continue
        after = views_after[name]
        if change in ("objected", "withdrawn"):
            state2.append(rec(TOPICS.objections, name, objection(name, change)))
            after.objected = change == "objected"
        elif change == "deleted":
            state2.append(rec(TOPICS.profiles, name, None))
            after.profile = None
        else:
            value = profile(name, change, "1980-01-01", "2025-01-01T00:00:00Z")
            state2.append(rec(TOPICS.profiles, name, value))
            after.profile = parse_profile(name, value)
    batch2 = (state2, content(second, "2"))

    _, _, plain = run([batch1, batch2], None)
    _, _, shadowed = run([batch1, batch2], shadow)

    # The policy in force decided exactly as without a shadow.
    assert [in_force_part(r) for r in shadowed] == [in_force_part(r) for r in plain]

    # The independent count: every `decide` record's event judged under both policies by the verifier's rule.
    in_force_v, shadow_v = _verifier_policy(POLICY), _verifier_policy(shadow)
    expected: Counter[tuple[str, str]] = Counter()
    expected_records = []
    for batch_view, result in zip((view, views_after), shadowed, strict=True):
        for p in result.produce:
            if p.topic is not OutputTopic.DECISIONS or p.value is None:
                continue
            decision = orjson.loads(p.value)
            if decision["action"] != "decide":
                continue
            author, content_type, visibility, created = events[decision["content_id"]]
            created_at = dt.datetime.fromisoformat(created)
            who = batch_view.get(author)
            ours = vrule.judge(content_type, visibility, created_at, who, in_force_v, NOW)
            theirs = vrule.judge(content_type, visibility, created_at, who, shadow_v, NOW)
            assert ours.value == decision["reason"]  # the verifier agrees with the decision in force
            if ours is not theirs:
                expected[ours.value, theirs.value] += 1
                expected_records.append((decision["content_id"], decision["event_id"], ours.value, theirs.value))
    event("some differences" if expected else "no difference")  # --hypothesis-show-statistics: not vacuous
    counted: Counter[tuple[str, str]] = Counter()
    for result in shadowed:
        for (a, b), n in result.shadow_differences.items():
            counted[a.value, b.value] += n
    assert counted == expected
    records = shadow_records(shadowed)
    assert sorted(
        (r["content_id"], r["event_id"], r["in_force_reason"], r["shadow_reason"]) for r in records
    ) == sorted(expected_records)
    assert {(r["in_force_policy_version"], r["shadow_policy_version"]) for r in records} <= {
        (POLICY.version, "shadow-drawn")
    }
