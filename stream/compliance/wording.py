"""The audit log's codes in plain words: one sentence per reason, skip reason and retraction cause.

What a privacy officer reads instead of the contract: `explain` and `subject` print
these beside the code. tests/unit/test_compliance.py checks that every value
of the contract's enums (the schema of `eligibility.decisions` and the filter's own
enums) has its sentence here, so a new reason cannot reach the audit log unexplained.
"""

from __future__ import annotations

from typing import Final

# `reason` of a `decide` record: the first rule of the contract that applied.
DECIDE_REASONS: Final[dict[str, str]] = {
    "eligible": (
        "Used for training: public content of an adult living where training is allowed, who had been "
        "told about AI training, had not objected, and was an adult when it was created."
    ),
    "private_message": "Not used: it is a private message, and private messages are never used.",
    "not_public": "Not used: the author did not share it publicly (friends only, or private).",
    "content_type_not_enabled": "Not used: the policy in force does not allow this kind of content to be used.",
    "account_unknown": (
        "Not used: there was no profile for the author (an unknown, deleted or unreadable account), "
        "so their age and country could not be checked; such content is never used."
    ),
    "objected": "Not used: the author had objected to the use of their content for AI training.",
    "country_unknown": "Not used: the author's country of residence is not known.",
    "jurisdiction_not_enabled": (
        "Not used: the author lives in a country where the policy in force does not allow training on their content."
    ),
    "not_notified": "Not used: the author had not yet been shown the notice about AI training and how to object.",
    "notice_period_running": (
        "Not used yet: the author was shown the notice too recently, and their country's waiting period "
        "had not passed. The item is held and decided again when the period ends."
    ),
    "age_unknown": "Not used: the author's date of birth is not known, so they cannot be shown to be an adult.",
    "minor": "Not used: the author was under 18 on the day of the decision.",
    "created_while_minor": (
        "Not used: the author was under 18 when the content was created; such content is never used, "
        "even after the author turns 18."
    ),
}

# `reason` of a `skip` record: the event changed nothing (contract: "Order per item").
SKIP_REASONS: Final[dict[str, str]] = {
    "superseded": (
        "Ignored: this change arrived again, or arrived after a newer change of the item had been applied; "
        "it changed nothing."
    ),
    "deleted": "Ignored: the author had already deleted the item, and a deletion is final; it changed nothing.",
}

# `cause` of a `retract` record: why the item left the training feed.
RETRACT_CAUSES: Final[dict[str, str]] = {
    "objection": "Withdrawn from training: the author objected to the use of their content for AI training.",
    "account_deleted": "Withdrawn from training: the author's account was deleted.",
    "account_changed": (
        "Withdrawn from training: the author's profile changed so that the item no longer qualifies "
        "(for example a corrected date of birth, or a move to a country where training is not allowed)."
    ),
    "content_deleted": (
        "The author deleted the item: it was withdrawn from training if it had been used, and is never used again."
    ),
    "visibility_changed": "Withdrawn from training: the author stopped sharing the item publicly.",
    "unreadable_update": (
        "Withdrawn from training: a later change to the item could not be read, so the earlier version "
        "was withdrawn to be safe."
    ),
}

ACTIONS: Final[dict[str, str]] = {
    "decide": "decided",
    "skip": "ignored",
    "retract": "withdrawn",
}


def sentence(action: str | None, reason: str | None, cause: str | None) -> str:
    """The plain sentence for one audit record; an unknown code is said to be unknown, never hidden."""
    if action == "decide":
        table, code = DECIDE_REASONS, reason
    elif action == "skip":
        table, code = SKIP_REASONS, reason
    elif action == "retract":
        table, code = RETRACT_CAUSES, cause
    else:
        return f"An audit record of an unknown kind ({action!r}): see the contract."
    if code in table:
        return table[code]
    return f"A code this tool does not know ({code!r}): see the contract."
