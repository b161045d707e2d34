"""The compliance tools without a broker: every code in plain words, the partitioner copy, id checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from stream.compliance.scan import ComplianceError, identifier_key, partition_for, shown
from stream.compliance.wording import DECIDE_REASONS, RETRACT_CAUSES, SKIP_REASONS, sentence
from stream.core import partitioning
from stream.core.models import Reason, RetractCause, SkipReason

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "eligibility.decisions.schema.json").read_text())


def test_wording_every_reason_and_cause_of_the_schema_has_its_sentence() -> None:
    reasons = {r for r in SCHEMA["properties"]["reason"]["enum"] if r is not None}
    causes = {c for c in SCHEMA["properties"]["cause"]["enum"] if c is not None}
    assert reasons == set(DECIDE_REASONS) | set(SKIP_REASONS)
    assert causes == set(RETRACT_CAUSES)


def test_wording_every_value_of_the_filters_enums_has_its_sentence() -> None:
    assert {r.value for r in Reason} == set(DECIDE_REASONS)
    assert {r.value for r in SkipReason} == set(SKIP_REASONS)
    assert {c.value for c in RetractCause} == set(RETRACT_CAUSES)


def test_wording_sentences_are_distinct_and_name_no_code() -> None:
    sentences = [*DECIDE_REASONS.values(), *SKIP_REASONS.values(), *RETRACT_CAUSES.values()]
    assert len(set(sentences)) == len(sentences)
    codes = [*DECIDE_REASONS, *SKIP_REASONS, *RETRACT_CAUSES]
    for text in sentences:
        assert text.endswith(".") and "_" not in text  # plain words, not the contract's codes
        assert not any(code in text.split() for code in codes if "_" in code)


@pytest.mark.parametrize(
    ("action", "reason", "cause", "expected"),
    [
        ("decide", "minor", None, DECIDE_REASONS["minor"]),
        ("skip", "deleted", None, SKIP_REASONS["deleted"]),
        ("retract", None, "objection", RETRACT_CAUSES["objection"]),
        ("decide", "a_new_reason", None, "A code this tool does not know ('a_new_reason'): see the contract."),
        ("promote", None, None, "An audit record of an unknown kind ('promote'): see the contract."),
    ],
)
def test_sentence_known_and_unknown_codes(action: str, reason: str | None, cause: str | None, expected: str) -> None:
    assert sentence(action, reason, cause) == expected


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=1000))
def test_partition_for_agrees_with_the_filter_and_aiokafka(key: bytes, partitions: int) -> None:
    ours = partition_for(key, partitions)
    assert ours == partitioning.partition_for(key, partitions)
    assert ours == (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("x" * 257, "at most 256 characters; this one has 257"),
        ("c-\udcff", "not valid UTF-8"),
    ],
)
def test_identifier_key_unusable_id_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ComplianceError, match=message):
        identifier_key(text, "content id")


def test_identifier_key_and_shown_odd_unicode() -> None:
    odd = "c-\u00e9\U0001f600\u202e"
    assert identifier_key(odd, "content id") == odd.encode("utf-8")
    assert identifier_key("x" * 256, "content id") == b"x" * 256
    assert shown("c-\u00e9") == "c-\u00e9"
    assert shown(odd) == ascii(odd) and "\u202e" not in shown(odd)
