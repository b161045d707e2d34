"""`python -m stream subject ACCOUNT_ID`: an access or objection request answered from the topics.

For one account: its objection state and profile as the compacted topics hold them
now, what the rule makes of that profile (the verifier's own implementation,
`stream.verifier.rule.judge`, for new public content of the account today), every
item of theirs the filter decided, skipped or withdrew (from the audit log), which
of them are on the training feed now, and how long their objection took to take
effect (the objection record's time to the last withdrawal it caused).

How it reads: the account topics are keyed by account id, so only the account's
partition of each is read. The audit log is keyed by content id, so an account's
items can be in any partition: every partition is read, and a record is parsed only
when its bytes contain the account id as the filter writes it (a JSON string), so the
cost is close to the read itself. The feed is read only in the partitions of the
account's items.

The raw account id is printed to the operator (stdout) and never logged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from stream.compliance.explain import AuditRecord, audit_record
from stream.compliance.scan import (
    ComplianceError,
    Found,
    Keep,
    Reader,
    identifier_key,
    keyed,
    partition_for,
    shown,
    utc_text,
)
from stream.compliance.wording import ACTIONS, DECIDE_REASONS
from stream.config import Settings
from stream.verifier.errors import VerifyError
from stream.verifier.inputs import Invalid, Profile, parse_objection, parse_profile
from stream.verifier.rule import is_pseudonym_of, judge, read_policy
from stream.verifier.state import Account

__all__ = ["ComplianceError", "ItemState", "Subject", "render", "subject", "to_json"]

UTC: Final = dt.UTC


@dataclass(frozen=True, slots=True)
class ObjectionState:
    """The account's latest record on `accounts.objections`."""

    # "none": no record (or a tombstone: no objection on record); "objected"; "withdrawn";
    # "unreadable": a record that does not parse, which the filter counts as an objection.
    status: str
    recorded_at: dt.datetime | None = None  # broker time: when it landed on the topic
    at: str | None = None  # when the person made the choice (the record's `at`)
    source: str | None = None
    request_id: str | None = None

    @property
    def objects(self) -> bool:
        """Whether the filter treats the account as objecting (an unreadable record fails closed)."""
        return self.status in ("objected", "unreadable")


@dataclass(frozen=True, slots=True)
class ProfileState:
    """The account's latest record on `accounts.profiles`."""

    # "none": no record; "deleted": a tombstone; "present"; "unreadable" (fails closed: unknown).
    status: str
    profile: Profile | None = None
    recorded_at: dt.datetime | None = None


@dataclass(slots=True)
class ItemState:
    """One item of the account: its audit records, oldest first, and whether it is on the feed now."""

    content_id: str
    records: list[AuditRecord] = field(default_factory=list)
    on_feed: bool = False
    # Whether the live feed record carries this account's pseudonym under the configured
    # key(s). False while on the feed: another author's item under the same content id,
    # or a key this command was not given; it is still reported as on the feed (a privacy
    # answer must not hide an item because a key is missing), with this flag.
    pseudonym_matches: bool = False
    withdrawn_at: dt.datetime | None = None  # broker time of its latest withdrawal, if any
    withdrawn_cause: str | None = None

    @property
    def last(self) -> AuditRecord:
        """The item's latest audit record."""
        return self.records[-1]


@dataclass(slots=True)
class Subject:
    """Everything the topics say about one account."""

    account_id: str
    objection: ObjectionState
    profile: ProfileState
    eligibility: str  # the rule's reason for new public content of the account now
    items: list[ItemState]
    policy_version: str
    checked_at: dt.datetime
    records_read: int = 0
    seconds: float = 0.0

    @property
    def found(self) -> bool:
        """Whether any topic holds anything about the account."""
        return bool(self.items) or self.objection.status != "none" or self.profile.status != "none"

    @property
    def on_feed(self) -> list[ItemState]:
        """The account's items on the training feed now."""
        return [i for i in self.items if i.on_feed]

    def propagation(self) -> tuple[dt.datetime | None, float | None]:
        """The last withdrawal its current objection caused, and seconds from the objection record to it.

        (None, None) without an objection, or when it withdrew nothing (nothing was on the
        feed when it landed).
        """
        since = self.objection.recorded_at
        if not self.objection.objects or since is None:
            return None, None
        times = [
            r.written_at
            for item in self.items
            for r in item.records
            if r.action == "retract" and r.cause == "objection" and r.written_at >= since
        ]
        if not times:
            return None, None
        last = max(times)
        return last, (last - since).total_seconds()


def _objection(records: list[Found], account_id: str) -> ObjectionState:
    if not records:
        return ObjectionState("none")
    last = records[-1]
    if last.value is None:
        return ObjectionState("none", last.at)
    try:
        objected = parse_objection(account_id, last.value)
    except Invalid:
        return ObjectionState("unreadable", last.at)
    obj: dict[str, Any] = orjson.loads(last.value)
    return ObjectionState(
        "objected" if objected else "withdrawn", last.at, obj.get("at"), obj.get("source"), obj.get("request_id")
    )


def _profile(records: list[Found], account_id: str) -> ProfileState:
    if not records:
        return ProfileState("none")
    last = records[-1]
    if last.value is None:
        return ProfileState("deleted", None, last.at)
    try:
        return ProfileState("present", parse_profile(account_id, last.value), last.at)
    except Invalid:
        return ProfileState("unreadable", None, last.at)


def _authored_by(account_id: str) -> Keep:
    """Keep the audit records whose `author_id` is the account: a byte search first, a parse only on a hit."""
    needle = orjson.dumps(account_id)  # the id as a JSON string, as the filter writes it (orjson)

    def keep(_topic: str, _key: bytes | None, value: bytes | None) -> bool:
        if value is None or needle not in value:
            return False
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False
        return isinstance(obj, dict) and obj.get("author_id") == account_id

    return keep


async def subject(settings: Settings, account_id: str, now: dt.datetime | None = None) -> Subject:
    """Read the account's state, its items in the audit log and on the feed; ComplianceError if unusable."""
    key = identifier_key(account_id, "account id")
    now = dt.datetime.now(UTC) if now is None else now
    try:
        policy = read_policy(settings.policy_path)
    except VerifyError as exc:
        raise ComplianceError(str(exc)) from None
    topics = settings.topics
    async with Reader(settings) as reader:
        accounts = await reader.scan(
            {
                topics.profiles: [await reader.partition_of(topics.profiles, key)],
                topics.objections: [await reader.partition_of(topics.objections, key)],
            },
            keyed(key),
        )
        audit = await reader.scan(
            {topics.decisions: list(range(await reader.partition_count(topics.decisions)))},
            _authored_by(account_id),
        )
        items: dict[str, ItemState] = {}
        for found in audit.found:
            content_id = found.key.decode("utf-8", "replace") if found.key is not None else "?"
            items.setdefault(content_id, ItemState(content_id)).records.append(audit_record(found))
        feed_partitions = await reader.partition_count(topics.feed)
        wanted = {cid.encode("utf-8", "surrogatepass") for cid in items}
        feed = await reader.scan(
            {topics.feed: sorted({partition_for(k, feed_partitions) for k in wanted})},
            lambda _t, k, _v: k in wanted,
        )
    latest: dict[bytes | None, Found] = {f.key: f for f in feed.found}
    keys = [settings.pseudonym_key] + ([settings.previous_pseudonym_key] if settings.previous_pseudonym_key else [])
    for item in items.values():
        record = latest.get(item.content_id.encode("utf-8", "surrogatepass"))
        if record is not None and record.value is not None:
            try:
                claimed = orjson.loads(record.value).get("author_pseudonym")
            except (orjson.JSONDecodeError, AttributeError):
                claimed = None
            item.on_feed = True
            item.pseudonym_matches = is_pseudonym_of(claimed, account_id, keys)
        withdrawals = [r for r in item.records if r.action == "retract"]
        if withdrawals:
            item.withdrawn_at, item.withdrawn_cause = withdrawals[-1].written_at, withdrawals[-1].cause
    objection = _objection(accounts.of(topics.objections), account_id)
    profile = _profile(accounts.of(topics.profiles), account_id)
    account = Account(profile=profile.profile, objected=objection.objects)
    eligibility = judge("post", "public", now, account, policy, now)
    ordered = sorted(items.values(), key=lambda i: (i.records[0].written_at, i.content_id))
    return Subject(
        account_id,
        objection,
        profile,
        str(eligibility),
        ordered,
        policy.version,
        now,
        accounts.read + audit.read + feed.read,
        accounts.seconds + audit.seconds + feed.seconds,
    )


def _objection_words(o: ObjectionState) -> str:
    if o.status == "none":
        return "no objection on record" + (
            f" (the last one was cleared at {utc_text(o.recorded_at)})" if o.recorded_at else ""
        )
    if o.status == "unreadable":
        return (
            f"a record that cannot be read (landed {utc_text(o.recorded_at) if o.recorded_at else '?'}); "
            "the filter treats it as an objection"
        )
    verb = "OBJECTS to" if o.status == "objected" else "withdrew their objection to"
    return (
        f"{verb} the use of their content for AI training: chosen at {o.at or '?'} via {o.source or '?'} "
        f"(request {shown(str(o.request_id))}), recorded {utc_text(o.recorded_at) if o.recorded_at else '?'}"
    )


def _profile_words(p: ProfileState) -> str:
    if p.status == "none":
        return "no profile on record (unknown account)"
    if p.status == "deleted":
        return f"the account was deleted ({utc_text(p.recorded_at) if p.recorded_at else '?'})"
    if p.status == "unreadable":
        return "a profile record that cannot be read; the filter treats the account as unknown"
    if p.profile is None:  # "present" always carries its profile
        return "a profile"
    notified = utc_text(p.profile.notified_at) if p.profile.notified_at else "not yet"
    return (
        f"country {p.profile.country or 'unknown'}, born {p.profile.birth_date or 'unknown'}, "
        f"shown the notice about AI training: {notified}"
    )


def render(s: Subject) -> str:
    """The answer as text for the operator (it carries the raw account id: stdout only)."""
    lines = [f"Account {shown(s.account_id)} (as of {utc_text(s.checked_at)}, policy {s.policy_version})"]
    if not s.found:
        lines.append(
            "The filter has no record of this account: no profile, no objection, and no item of theirs in the "
            f"audit log (read {s.records_read} records in {s.seconds:.2f} s)."
        )
        return "\n".join(lines) + "\n"
    lines.append(f"Objection: {_objection_words(s.objection)}")
    lines.append(f"Profile: {_profile_words(s.profile)}")
    lines.append(f"New public content of theirs today: {s.eligibility}: {DECIDE_REASONS.get(s.eligibility, '?')}")
    on_feed = s.on_feed
    lines.append(
        f"Items the filter decided: {len(s.items)}; on the training feed now: {len(on_feed)}"
        + (" (AN OBJECTING ACCOUNT WITH ITEMS ON THE FEED)" if on_feed and s.objection.objects else "")
    )
    last, seconds = s.propagation()
    if s.objection.objects:
        if last is not None and seconds is not None:
            lines.append(
                f"Objection propagation: {seconds:.3f} s, from the objection record "
                f"({utc_text(s.objection.recorded_at) if s.objection.recorded_at else '?'}) to the last withdrawal "
                f"it caused ({utc_text(last)})"
            )
        else:
            lines.append("Objection propagation: nothing of theirs was on the feed when it landed; nothing to withdraw")
    lines.append("")
    for item in s.items:
        r = item.last
        if item.on_feed and item.pseudonym_matches:
            status = "ON THE FEED"
        elif item.on_feed:
            status = (
                "ON THE FEED under another pseudonym than this account's (another author's item with the same "
                "content id, or the pseudonym key this command was given is not the worker's)"
            )
        elif item.withdrawn_at is not None:
            status = f"withdrawn at {utc_text(item.withdrawn_at)} ({item.withdrawn_cause})"
        else:
            status = "never on the feed" if not any(x.eligible for x in item.records) else "not on the feed"
        what = ACTIONS.get(r.action or "", r.action or "?")
        lines.append(
            f"- {shown(item.content_id)}: {status}; last {what}: {r.code or '?'} at {r.decided_at or '?'} "
            f"({len(item.records)} audit record{'' if len(item.records) == 1 else 's'}; `explain` gives each)"
        )
    lines.append("")
    lines.append(f"Read {s.records_read} records in {s.seconds:.2f} s.")
    return "\n".join(lines) + "\n"


def to_json(s: Subject) -> bytes:
    """The answer as one JSON object (indented), for scripts."""
    last, seconds = s.propagation()
    p = s.profile.profile
    body = {
        "account_id": s.account_id,
        "found": s.found,
        "checked_at": utc_text(s.checked_at),
        "policy_version": s.policy_version,
        "objection": {
            "status": s.objection.status,
            "objects": s.objection.objects,
            "recorded_at": utc_text(s.objection.recorded_at) if s.objection.recorded_at else None,
            "at": s.objection.at,
            "source": s.objection.source,
            "request_id": s.objection.request_id,
        },
        "profile": {
            "status": s.profile.status,
            "country": p.country if p else None,
            "birth_date": p.birth_date.isoformat() if p and p.birth_date else None,
            "notified_at": utc_text(p.notified_at) if p and p.notified_at else None,
            "recorded_at": utc_text(s.profile.recorded_at) if s.profile.recorded_at else None,
        },
        "eligibility": {"reason": s.eligibility, "explanation": DECIDE_REASONS.get(s.eligibility)},
        "items": [
            {
                "content_id": i.content_id,
                "on_feed": i.on_feed,
                "pseudonym_matches": i.pseudonym_matches if i.on_feed else None,
                "withdrawn_at": utc_text(i.withdrawn_at) if i.withdrawn_at else None,
                "withdrawn_cause": i.withdrawn_cause,
                "last_action": i.last.action,
                "last_code": i.last.code,
                "last_decided_at": i.last.decided_at,
                "policy_versions": sorted({r.policy_version for r in i.records if r.policy_version}),
                "records": [
                    {
                        "action": r.action,
                        "code": r.code,
                        "eligible": r.eligible,
                        "decided_at": r.decided_at,
                        "written_at": utc_text(r.written_at),
                        "event_id": r.event_id,
                        "policy_version": r.policy_version,
                    }
                    for r in i.records
                ],
            }
            for i in s.items
        ],
        "on_feed": [i.content_id for i in s.on_feed],
        "propagation": {
            "last_withdrawal_at": utc_text(last) if last else None,
            "seconds": round(seconds, 3) if seconds is not None else None,
        },
        "scan": {"records_read": s.records_read, "seconds": round(s.seconds, 3)},
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
