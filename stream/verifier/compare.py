"""The comparison: every difference between the feed (and the held items) and the verifier's rule. Pure.

`compare` reads the state the inputs built, the compacted feed and the live held
items, and returns a `Report`: violations, losses, minimisation problems, and what
is reported without failing (excused, pending, stale, unverifiable).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from stream.verifier.inputs import (
    Invalid,
    held_copy,
    json_object,
    key_text,
    parse_retraction,
    parse_timestamp,
    split_held_key,
)
from stream.verifier.rule import (
    PSEUDONYM,
    VIOLATION_REASONS,
    Policy,
    PseudonymKeys,
    Reason,
    is_pseudonym_of,
    judge,
    notice_end,
    notice_end_of,
    pseudonym,
)
from stream.verifier.state import InputCounts, State

DEFAULT_EXAMPLES: Final = 10
# Broker timestamps are producer clocks (CreateTime), and records on different
# topics may be appended in another order than they were stamped: a state change
# stamped up to this long before an upsert may still have reached the filter after it.
CLOCK_SLACK: Final = dt.timedelta(seconds=1)


class Problem(StrEnum):
    """What is wrong with a feed value under data minimisation."""

    NOT_JSON = "not_json"  # not a UTF-8 JSON object
    FIELDS = "fields"  # not exactly the contract's field set
    PSEUDONYM_FORMAT = "pseudonym_format"  # not 64 lower-case hex digits
    PSEUDONYM_MISMATCH = "pseudonym_mismatch"  # not HMAC-SHA256(key, author of the content)
    PSEUDONYM_KEY_UNKNOWN = "pseudonym_key_unknown"  # its key id header names neither configured key
    RAW_ACCOUNT_ID = "raw_account_id"  # a field value equals a known account id
    JURISDICTION = "jurisdiction"  # not an enabled jurisdiction


class RetractionProblem(StrEnum):
    """What is wrong between the feed's tombstones and `training.retractions`, or with a retraction record."""

    # A tombstone on the feed (as far as compaction still shows it) with no retraction
    # record of its content id: a trainer holding an old dataset would never learn of it.
    UNRECORDED = "unrecorded"
    # A retraction record whose item is still on the feed from a decision made before
    # it: the tombstone that must go with the record is missing.
    NOT_TOMBSTONED = "not_tombstoned"
    # Not exactly the schema's four fields of their types, or a content id unlike the key.
    MALFORMED = "malformed"
    # A field value equals a known account id.
    RAW_ACCOUNT_ID = "raw_account_id"


# A record of `training.retractions` as read: key, value, broker time.
RetractionRecord = tuple[bytes | None, bytes | None, dt.datetime]


FEED_FIELDS: Final = frozenset(
    {
        "content_id",
        "content_type",
        "platform",
        "author_pseudonym",
        "created_at",
        "text",
        "media_uri",
        "language",
        "jurisdiction",
        "policy_version",
        "decided_at",
        "source_event_id",
        "schema_version",
    }
)
# The layout before `schema_version` (a feed written by an earlier filter keeps such
# records until they are replaced): accepted as it is, a field fewer is no leak.
FEED_FIELDS_UNVERSIONED: Final = FEED_FIELDS - {"schema_version"}


# --- the comparison -----------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """A count and the first few content ids counted."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, content_id: str, limit: int) -> None:
        """Count `content_id`, keeping it as an example while fewer than `limit` are kept."""
        self.count += 1
        if len(self.examples) < limit:
            self.examples.append(content_id)


@dataclass(slots=True)
class Report:
    """Every difference between the feed and the verifier's rule, as counts and content-id examples."""

    checked_at: dt.datetime
    policy_version: str
    grace_seconds: float
    inputs: InputCounts
    content_truncated: bool  # time retention removed content events: `unverifiable` replaces `unknown_content`
    feed_items: int = 0
    held_items: int = 0  # live records on the filter's deferred changelog
    expected_eligible: int = 0
    violations: dict[Reason, Tally] = field(default_factory=lambda: {r: Tally() for r in VIOLATION_REASONS})
    losses: Tally = field(default_factory=Tally)
    excused: Tally = field(default_factory=Tally)  # missing, but the author's state changed since the upsert
    pending: Tally = field(default_factory=Tally)  # a difference younger than the grace
    stale: Tally = field(default_factory=Tally)  # on the feed from an older upsert than the latest
    unverifiable: Tally = field(default_factory=Tally)
    minimisation: dict[Problem, Tally] = field(default_factory=lambda: {p: Tally() for p in Problem})
    retraction_records: int = 0  # records read on training.retractions
    retraction_problems: dict[RetractionProblem, Tally] = field(
        default_factory=lambda: {p: Tally() for p in RetractionProblem}
    )

    @property
    def violation_count(self) -> int:
        """Feed or held items the rule refuses, over every reason."""
        return sum(t.count for t in self.violations.values())

    @property
    def minimisation_count(self) -> int:
        """Feed values breaking data minimisation, over every kind."""
        return sum(t.count for t in self.minimisation.values())

    @property
    def retraction_problem_count(self) -> int:
        """Differences between the feed's tombstones and training.retractions, and bad retraction records."""
        return sum(t.count for t in self.retraction_problems.values())

    @property
    def ok(self) -> bool:
        """No violation, loss, minimisation or retraction problem (the rest does not fail a run)."""
        return (
            self.violation_count == 0
            and self.losses.count == 0
            and self.minimisation_count == 0
            and self.retraction_problem_count == 0
        )

    @property
    def exit_status(self) -> int:
        """The command's exit status: 0 when `ok`, else 1."""
        return 0 if self.ok else 1


def _content_id_of_key(key: bytes) -> str:
    text = key_text(key)
    return text if text is not None else "0x" + key.hex()


def _strings(value: object) -> Iterator[str]:
    """Every string inside a parsed JSON value, keys excepted.

    A loop, not recursion: a feed value nested a thousand deep (orjson allows 1024)
    would otherwise stop the verifier with a RecursionError.
    """
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _text(value: object) -> str:
    # Never str() of a parsed value: the repr of a deeply nested list raises RecursionError.
    return value if isinstance(value, str) else ""


def compare(
    state: State,
    feed: Mapping[bytes, bytes],
    policy: Policy,
    *,
    pseudonym_key: bytes,
    now: dt.datetime,
    previous_pseudonym_key: bytes | None = None,
    key_ids: Mapping[bytes, str] | None = None,
    grace_seconds: float = 0.0,
    content_truncated: bool = False,
    examples: int = DEFAULT_EXAMPLES,
    held: Mapping[bytes, bytes] | None = None,
    tombstones: Mapping[bytes, dt.datetime] | None = None,
    retractions: Sequence[RetractionRecord] | None = None,
) -> Report:
    """Diff the compacted feed and the live held items (values only, no tombstones) against the state. Pure.

    With `retractions` (every record of `training.retractions`) and `tombstones` (each
    content id with a tombstone still in the feed's log, and that tombstone's broker
    time), it also checks that each retraction of the feed has its record and each
    record its retraction (`RetractionProblem`).

    `key_ids` maps a feed record's key to its `pseudonym_key_id` header: its pseudonym
    is checked against the key that id names, `pseudonym_key` or, after a rotation,
    `previous_pseudonym_key`; a record without one against either.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    held = held if held is not None else {}
    report = Report(
        now, policy.version, grace_seconds, state.counts, content_truncated, feed_items=len(feed), held_items=len(held)
    )
    keys = PseudonymKeys(pseudonym_key, previous_pseudonym_key)
    comparison = _Comparison(state, policy, keys, key_ids if key_ids is not None else {}, report, examples)
    for key, value in feed.items():
        comparison.feed_item(key, value)
    for key, value in held.items():
        _judge_held(state, key, value, policy, now, content_truncated, comparison.flag)
    comparison.missing(feed)
    if retractions is not None:
        comparison.retractions(feed, tombstones if tombstones is not None else {}, retractions)
    return report


class _Comparison:
    """One run of `compare`: what it reads, and the report it fills in."""

    def __init__(
        self,
        state: State,
        policy: Policy,
        keys: PseudonymKeys,
        key_ids: Mapping[bytes, str],
        report: Report,
        examples: int,
    ) -> None:
        self.state = state
        self.policy = policy
        self.keys = keys
        self.key_ids = key_ids
        self.report = report
        self.examples = examples
        self.now = report.checked_at
        self.recent = self.now - dt.timedelta(seconds=report.grace_seconds)
        self.account_ids = state.account_ids()
        self._by_pseudonym: dict[str, str] | None = None

    def is_recent(self, *stamps: dt.datetime | None) -> bool:
        """Whether a cause of a difference is younger than the grace: the filter may not have caught up."""
        return self.report.grace_seconds > 0 and any(t is not None and t > self.recent for t in stamps)

    def flag(self, reason: Reason, content_id: str, *stamps: dt.datetime | None) -> None:
        """Count a violation, or a pending difference if any of its causes (`stamps`) is recent."""
        if self.is_recent(*stamps):
            self.report.pending.add(content_id, self.examples)
        else:
            self.report.violations[reason].add(content_id, self.examples)

    def feed_item(self, key: bytes, value: bytes) -> None:
        """Judge one live feed record: its minimisation, and whether the rule allows its item."""
        report, examples = self.report, self.examples
        content_id = _content_id_of_key(key)
        fields = json_object(value)
        claimed = fields.get("author_pseudonym") if fields is not None else None
        keys = self.keys.named(self.key_ids.get(key))
        if not keys:
            report.minimisation[Problem.PSEUDONYM_KEY_UNKNOWN].add(content_id, examples)
        author, item = self.state.item_on_feed(content_id, claimed, keys)
        content = item.latest if item is not None else None
        author_id = content.author_id if content is not None else None
        for problem in _minimisation_problems(fields, author_id, self.account_ids, self.policy, keys):
            report.minimisation[problem].add(content_id, examples)
        if content is None:
            if not report.content_truncated:
                report.violations[Reason.UNKNOWN_CONTENT].add(content_id, examples)
            elif (
                item is not None
                and item.unreadable_at is not None
                and author is not None
                and is_pseudonym_of(claimed, author, keys)
            ):
                self.flag(Reason.UNREADABLE_UPDATE, content_id, item.unreadable_at)
            else:
                self._aged_out(content_id, fields if fields is not None else {})
            return
        assert item is not None
        account = self.state.accounts.get(content.author_id)
        if content.op == "delete":
            reason = Reason.CONTENT_DELETED
        elif item.unreadable_at is not None:
            reason = Reason.UNREADABLE_UPDATE
        else:
            reason = judge(content.content_type, content.visibility, content.created_at, account, self.policy, self.now)
        if reason is Reason.ELIGIBLE:
            if fields is not None and fields.get("source_event_id") != content.event_id:
                report.stale.add(content_id, examples)
        else:
            self.flag(reason, content_id, content.at, item.unreadable_at, account.changed_at() if account else None)

    def retractions(
        self, feed: Mapping[bytes, bytes], tombstones: Mapping[bytes, dt.datetime], records: Sequence[RetractionRecord]
    ) -> None:
        """Each feed tombstone against training.retractions and back; each record's minimisation.

        The feed is compacted: a tombstone is seen only while the feed keeps it (7 days),
        so the check is as wide as that. A record whose item is live again on the feed
        from a later decision (a new upsert after the retraction) is in order; one whose
        item is live from a decision made before it lacks its tombstone.
        """
        report, problems = self.report, self.report.retraction_problems
        report.retraction_records = len(records)
        latest: dict[str, dt.datetime] = {}
        for key, value, _ in records:
            fields = json_object(value) if value is not None else None
            if fields is not None and any(s in self.account_ids for s in _strings(fields)):
                problems[RetractionProblem.RAW_ACCOUNT_ID].add(_content_id_of_key(key or b""), self.examples)
            try:
                content_id, retracted_at = parse_retraction(key, value)
            except Invalid:
                problems[RetractionProblem.MALFORMED].add(_content_id_of_key(key or b""), self.examples)
                continue
            latest[content_id] = max(retracted_at, latest.get(content_id, retracted_at))
        for key, at in tombstones.items():
            content_id = _content_id_of_key(key)
            if content_id in latest:
                continue
            if self.is_recent(at):
                report.pending.add(content_id, self.examples)
            else:
                problems[RetractionProblem.UNRECORDED].add(content_id, self.examples)
        for content_id, retracted_at in latest.items():
            value = feed.get(content_id.encode("utf-8"))
            fields = json_object(value) if value is not None else None
            if fields is None:
                continue  # not on the feed: retracted (or never readable: a feed problem of its own)
            try:
                decided_at = parse_timestamp(fields.get("decided_at"))
            except Invalid:
                continue  # a feed value the minimisation check already counts
            # Strictly before: an item published, retracted and published again within one
            # batch has both times equal, and is rightly on the feed.
            if decided_at < retracted_at:
                if self.is_recent(retracted_at):
                    report.pending.add(content_id, self.examples)
                else:
                    problems[RetractionProblem.NOT_TOMBSTONED].add(content_id, self.examples)

    def _aged_out(self, content_id: str, fields: dict[str, Any]) -> None:
        """A feed item whose content events aged out: judge what its record and the author's state still tell."""
        if self._by_pseudonym is None:
            accounts = self.state.accounts
            self._by_pseudonym = {
                pseudonym(k, a): a for k in self.keys.all for a, acc in accounts.items() if acc.profile
            }
        account_id = self._by_pseudonym.get(_text(fields.get("author_pseudonym")))
        account = self.state.accounts.get(account_id) if account_id is not None else None
        try:
            created_at: dt.datetime | None = parse_timestamp(fields.get("created_at"))
        except Invalid:
            created_at = None
        # The feed does not carry the visibility; the item is taken as public as it claims.
        reason = judge(_text(fields.get("content_type")), "public", created_at, account, self.policy, self.now)
        if reason is Reason.ELIGIBLE:
            self.report.unverifiable.add(content_id, self.examples)
        else:
            self.flag(reason, content_id, account.changed_at() if account is not None else None)

    def missing(self, feed: Mapping[bytes, bytes]) -> None:
        """Every item the rule allows that is not on the feed: a loss, or excused, or pending."""
        report, examples, state = self.report, self.examples, self.state
        for content_id, content in state.contents.items():
            if content.op != "upsert" or state.items[content_id][content.author_id].unreadable_at is not None:
                continue  # deleted, or retracted (and released) by the unreadable record since
            account = state.accounts.get(content.author_id)
            reason = judge(content.content_type, content.visibility, content.created_at, account, self.policy, self.now)
            if reason is not Reason.ELIGIBLE:
                continue
            report.expected_eligible += 1
            if content_id.encode("utf-8") in feed:
                continue
            assert account is not None and account.profile is not None and account.profile.notified_at is not None
            country = account.profile.country
            assert country is not None
            ends = notice_end(account.profile.notified_at, self.policy.notice_periods[country])
            assert ends is not None  # eligible: the notice period has ended
            # Due from the later of the upsert and the end of the notice period (a deferred decision).
            due = max(content.at, ends)
            changed = account.changed_at()
            if due > self.recent:
                report.pending.add(content_id, examples)
            elif changed is not None and changed >= content.at - CLOCK_SLACK:
                report.excused.add(content_id, examples)
            else:
                report.losses.add(content_id, examples)


def _judge_held(
    state: State,
    key: bytes,
    value: bytes,
    policy: Policy,
    now: dt.datetime,
    content_truncated: bool,
    flag: Callable[..., None],
) -> None:
    """Flag a live held item the filter must have released: the contract's "Deferred decisions".

    A held copy may stay only while it is the item's latest applied event, no unreadable
    record named the item since, and the rule refuses it for its notice period alone
    (or allows it: then it falls due and is published, or missing it is a loss).
    """
    names = split_held_key(key)
    if names is None:
        # Not an item id: name it without the author id the key may still contain.
        flag(Reason.HELD_AFTER_RELEASE, "held-key-sha256:" + hashlib.sha256(key).hexdigest()[:16])
        return
    author_id, content_id = names
    copy = held_copy(author_id, content_id, value)
    item = state.items.get(content_id, {}).get(author_id)
    latest = item.latest if item is not None else None
    account = state.accounts.get(author_id)
    changed = account.changed_at() if account is not None else None
    if copy is None:
        flag(Reason.HELD_AFTER_RELEASE, content_id)
        return
    if latest is None:
        if not content_truncated or (item is not None and item.unreadable_at is not None):
            flag(Reason.HELD_AFTER_RELEASE, content_id, changed)
            return
        latest = copy  # its content events aged out: judge the copy itself
    assert item is not None or latest is copy
    unreadable_at = item.unreadable_at if item is not None else None
    if latest.op != "upsert" or unreadable_at is not None or latest.event_id != copy.event_id:
        flag(Reason.HELD_AFTER_RELEASE, content_id, latest.at, unreadable_at, changed)
        return
    reason = judge(latest.content_type, latest.visibility, latest.created_at, account, policy, now)
    if reason not in (Reason.NOTICE_PERIOD_RUNNING, Reason.ELIGIBLE):
        flag(Reason.HELD_AFTER_RELEASE, content_id, latest.at, changed, notice_end_of(account, policy))


def _minimisation_problems(
    item: dict[str, Any] | None,
    author_id: str | None,
    account_ids: set[str],
    policy: Policy,
    keys: Sequence[bytes],
) -> Iterable[Problem]:
    if item is None:
        yield Problem.NOT_JSON
        return
    version = item.get("schema_version", 1)
    if item.keys() not in (FEED_FIELDS, FEED_FIELDS_UNVERSIONED) or type(version) is not int or version < 1:
        yield Problem.FIELDS
    value = item.get("author_pseudonym")
    if type(value) is not str or PSEUDONYM.fullmatch(value) is None:
        yield Problem.PSEUDONYM_FORMAT
    elif author_id is not None and keys and not is_pseudonym_of(value, author_id, keys):
        yield Problem.PSEUDONYM_MISMATCH
    # `text` is the author's own words: a comment that happens to equal some account
    # id is not a leak by the filter, and flagging it would page someone for nothing.
    if any(s in account_ids for name, v in item.items() if name != "text" for s in _strings(v)):
        yield Problem.RAW_ACCOUNT_ID
    jurisdiction = item.get("jurisdiction")
    if type(jurisdiction) is not str or jurisdiction not in policy.notice_periods:
        yield Problem.JURISDICTION
