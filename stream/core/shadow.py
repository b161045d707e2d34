"""Shadow mode: a second policy decides every upsert beside the one in force, and only says where it differs.

Owns the shadow policy's check at start-up and the shadow's one step: for each
`decide` the engine makes (`items.ItemDecider.decide_event`, the one place a content
event meets the rule and its author's account), the same event, with the same
account state and the same `now`, is decided under the shadow policy with the same
pure rule (`policy.decide`). Where the reasons differ, the batch result gets a
count by reason pair (`BatchResult.shadow_differences`, the metric
`eligibility_shadow_differences_total`) and one compact record for the diff topic
(`BatchResult.shadow`). Nothing else: the shadow never publishes, holds, retracts,
releases or stores anything, and the in-force records (`first`, `produce`, `last`)
and store writes are the same with and without it.

What the shadow covers: every `decide` record, i.e. the direct decision of each
upsert, a held item decided when its notice period ends, and a held item decided
again after its author's account changed. What it does not: the re-evaluation of
*published* items (retractions after an account change, and the pass after a
recovery), because whether the shadow would retract an item depends on what the
shadow would have published, a feed the shadow does not keep; and its own held
items (an upsert the shadow would hold for a notice period the policy in force does
not have is recorded once, as `notice_period_running`, and not decided again when
that period ends).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Final

from stream.core.batch import BatchResult, OutputTopic, Produce
from stream.core.models import ContentEvent, Objection, Profile
from stream.core.policy import Decision, Policy, decide, load_policy
from stream.core.records import shadow_value
from stream.errors import ConfigError

SHADOW_POLICY_VARIABLE: Final = "STREAM_SHADOW_POLICY_PATH"


def load_shadow_policy(path: Path | None, in_force: Policy) -> Policy | None:
    """The shadow policy at `path` (None: no shadow), validated as the policy in force is.

    A shadow with the same version as the policy in force is refused: every diff record
    and audit record names a policy by its version, and two different rule sets under
    one version would make them say nothing.
    """
    if path is None:
        return None
    try:
        shadow = load_policy(path)
    except ConfigError as exc:
        raise ConfigError(f"{SHADOW_POLICY_VARIABLE}={path}: {exc}") from None
    if shadow.version == in_force.version:
        raise ConfigError(
            f"{SHADOW_POLICY_VARIABLE}={path}: the shadow policy has version {shadow.version!r}, the version of "
            "the policy in force; give the new policy a new `version` (docs/policy-rollout.md)"
        )
    return shadow


class ShadowDecider:
    """Decides an upsert under the shadow policy and records a difference from the decision in force."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def compare(
        self,
        event: ContentEvent,
        in_force: Decision,
        profile: Profile | None,
        objection: Objection | None,
        now: dt.datetime,
        partition: int,
        result: BatchResult,
    ) -> None:
        """Decide `event` under the shadow; where its reason differs from `in_force`, count and record it.

        `profile` and `objection` are the author's account as the decision in force read
        it (the caller reads them for the shadow when the policy in force did not need them).
        """
        shadow = decide(event, profile, objection, self.policy, now)
        if shadow.reason is in_force.reason:
            return
        result.shadow_differences[in_force.reason, shadow.reason] += 1
        value = shadow_value(event, in_force, shadow, decided_at=now)
        result.shadow.append(Produce(OutputTopic.SHADOW, event.content_id.encode(), value, partition))
