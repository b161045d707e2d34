"""The rule: may this content event go to training? Pure: no clock, no I/O.

`decide()` evaluates the contract's rule in its order and returns a `Decision`
value; "ineligible" is an answer, never an exception. The policy is a versioned
TOML file shipped in the package (`policy.toml`), overridable by path.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, final

from stream.core.models import ContentEvent, ContentType, Objection, ObjectionStatus, Profile, Reason, Visibility
from stream.errors import ConfigError

_UTC: Final = dt.UTC

# Upper bounds of the policy's numbers: with them, the rule's date arithmetic on any
# date the codec accepts (up to `codec.MAX_YEAR`) stays inside Python's years 1-9999.
MAX_MINIMUM_AGE: Final = 150
MAX_NOTICE_PERIOD_DAYS: Final = 3650


@dataclass(frozen=True, slots=True)
class Jurisdiction:
    """A jurisdiction the policy enables, with its notice period."""

    code: str
    notice_period: dt.timedelta


@dataclass(frozen=True, slots=True)
class Policy:
    """The policy in force (`policy.toml`), read once at start-up: what the rule is parameterised by."""

    version: str
    content_types: frozenset[ContentType]
    minimum_age: int
    jurisdictions: dict[str, Jurisdiction]


@final
@dataclass(init=False)
class Decision:
    """The outcome of the rule for one upsert.

    `jurisdiction` is set only when eligible; `retry_at` only for
    `notice_period_running` (when the period ends and the item may be decided again).
    Immutable like the models built per event (`models.ContentEvent` says why not frozen).
    """

    eligible: Final[bool]
    reason: Final[Reason]
    policy_version: Final[str]
    jurisdiction: Final[str | None]
    retry_at: Final[dt.datetime | None]

    def __init__(
        self,
        eligible: bool,
        reason: Reason,
        policy_version: str,
        jurisdiction: str | None = None,
        retry_at: dt.datetime | None = None,
    ) -> None:
        self.eligible = eligible
        self.reason = reason
        self.policy_version = policy_version
        self.jurisdiction = jurisdiction
        self.retry_at = retry_at


def load_policy(path: Path | None = None) -> Policy:
    """Read the packaged policy, or the file at `path`; raise ConfigError if invalid."""
    where = "packaged policy.toml" if path is None else str(path)
    try:
        if path is None:
            raw = resources.files("stream").joinpath("policy.toml").read_bytes()
        else:
            raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read policy {where}: {exc}") from exc
    try:
        version = data["version"]
        if not isinstance(version, str) or not version:
            raise ValueError("`version` must be a non-empty string")
        types = frozenset(ContentType(t) for t in data["content_types"])
        if ContentType.MESSAGE in types:
            raise ValueError("`content_types` may not contain `message`: private messages are never used")
        minimum_age = _whole_number(data["minimum_age"], "`minimum_age`")
        if not 18 <= minimum_age <= MAX_MINIMUM_AGE:
            raise ValueError(f"`minimum_age` must be 18 to {MAX_MINIMUM_AGE}, not {minimum_age}")
        jurisdictions: dict[str, Jurisdiction] = {}
        tables = data.get("jurisdictions", {})
        if not isinstance(tables, dict):
            raise ValueError("`jurisdictions` must be a table of `[jurisdictions.XX]` sections")
        for code, spec in tables.items():
            if len(code) != 2 or not (code.isascii() and code.isalpha() and code.isupper()):
                raise ValueError(f"jurisdiction {code!r} is not an ISO 3166-1 alpha-2 code")
            days = _whole_number(spec["notice_period_days"], f"jurisdiction {code}: `notice_period_days`")
            if not 0 <= days <= MAX_NOTICE_PERIOD_DAYS:
                raise ValueError(
                    f"jurisdiction {code}: `notice_period_days` must be 0 to {MAX_NOTICE_PERIOD_DAYS}, not {days}"
                )
            jurisdictions[code] = Jurisdiction(code, dt.timedelta(days=days))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid policy in {where}: {exc}") from exc
    return Policy(version, types, minimum_age, jurisdictions)


def _whole_number(value: object, what: str) -> int:
    # int() would truncate 29.5 to 29 and turn `true` into 1: a notice period shorter
    # than the one written down. Refuse anything but a TOML integer.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    return value


def attains_age_on(birth_date: dt.date, age: int) -> dt.date:
    """The day (from its UTC start) on which someone born on `birth_date` is `age` years old.

    A 29 February birthday is celebrated on 1 March in common years.
    """
    year = birth_date.year + age
    try:
        return birth_date.replace(year=year)
    except ValueError:  # 29 February in a common year
        return dt.date(year, 3, 1)


def decide(
    event: ContentEvent,
    profile: Profile | None,
    objection: Objection | None,
    policy: Policy,
    now: dt.datetime,
) -> Decision:
    """Apply the contract's rule to an upsert; the first rule that applies gives the reason."""
    refusal = refuse_content(event, policy)
    return refusal if refusal is not None else decide_account(event, profile, objection, policy, now)


def refuse_content(event: ContentEvent, policy: Policy) -> Decision | None:
    """The rule's first steps, which read only the event: a refusal, or None to go on.

    Split out so a caller can skip looking up the author's account for an event
    these steps already refuse (a third of a typical stream: messages, non-public).
    """
    if event.content_type is ContentType.MESSAGE:
        return Decision(False, Reason.PRIVATE_MESSAGE, policy.version)
    if event.visibility is not Visibility.PUBLIC:
        return Decision(False, Reason.NOT_PUBLIC, policy.version)
    if event.content_type not in policy.content_types:
        # Not in the contract's list: only a policy that disables a public type reaches it.
        return Decision(False, Reason.CONTENT_TYPE_NOT_ENABLED, policy.version)
    return None


def decide_account(
    event: ContentEvent,
    profile: Profile | None,
    objection: Objection | None,
    policy: Policy,
    now: dt.datetime,
) -> Decision:
    """The rule's remaining steps, for an upsert `refuse_content` let through."""
    version = policy.version
    if profile is None:
        return Decision(False, Reason.ACCOUNT_UNKNOWN, version)
    if objection is not None and objection.status is ObjectionStatus.OBJECTED:
        return Decision(False, Reason.OBJECTED, version)
    if profile.country is None:
        return Decision(False, Reason.COUNTRY_UNKNOWN, version)
    jurisdiction = policy.jurisdictions.get(profile.country)
    if jurisdiction is None:
        return Decision(False, Reason.JURISDICTION_NOT_ENABLED, version)
    if profile.notified_at is None:
        return Decision(False, Reason.NOT_NOTIFIED, version)
    notice_ends = profile.notified_at + jurisdiction.notice_period
    if now < notice_ends:
        return Decision(False, Reason.NOTICE_PERIOD_RUNNING, version, None, notice_ends)
    if profile.birth_date is None:
        return Decision(False, Reason.AGE_UNKNOWN, version)
    adult_from = attains_age_on(profile.birth_date, policy.minimum_age)
    if now.astimezone(_UTC).date() < adult_from:
        return Decision(False, Reason.MINOR, version)
    created_at = event.created_at
    if created_at is None or created_at.astimezone(_UTC).date() < adult_from:
        # A missing created_at cannot prove the item was made as an adult: fail closed.
        return Decision(False, Reason.CREATED_WHILE_MINOR, version)
    return Decision(True, Reason.ELIGIBLE, policy.version, jurisdiction.code)
