"""Canary objectors: synthetic accounts that probe the live filter end to end (`python -m stream canary`).

Two kinds of synthetic account, one of each per partition of `accounts.objections`
(so every partition, and so every worker, is probed), all with account ids under
STREAM_CANARY_PREFIX and an adult profile in an enabled jurisdiction, notified long
ago: nothing but their objection stands between their content and the feed.

- **Objectors** object and keep posting public content, one item each every
  `post_interval` seconds. None of their items may ever reach the feed: the rule
  refuses objectors. An item of theirs on `training.feed` is a failure
  (`eligibility_canary_failures_total{kind="published"}`).
- **Probes** measure propagation, one probe cycle every `probe_interval` seconds,
  the probe accounts in turn: withdraw the objection, post one item, wait until it is
  on the feed, object, and time how long until both its tombstone on `training.feed`
  and its record on `training.retractions` are read back. That time is
  `eligibility_canary_propagation_seconds`; a cycle whose retraction is not read back
  within `deadline` seconds of the objection is a failure (`kind="propagation"`).
  Between the withdrawal and the tombstone the probe's item is on the feed, as any
  item of a non-objecting adult would be: it is retracted like any other (trainers
  applying `training.retractions` drop it), and its content id starts with the
  canary prefix, so a trainer can also drop it on sight (README, "Canary objectors").

Anything else under the prefix on the feed (an objector's item, a probe's item after
its tombstone, a record no cycle explains) is a `published` failure. The canary
times propagation on its own monotonic clock, from before the objection is sent to
the moment the last of the two records is read: an upper bound of the contract's
propagation (objection appended to tombstone appended) that no clock skew between
hosts can shorten.

It reads only `training.feed` and `training.retractions` (no consumer group) and
writes only the three inputs, with its own synthetic ids; it imports nothing of the
filter (the rule, the codec and the partitioner are the filter's; a canary that
shared them could not catch their bugs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from stream.compliance.scan import partition_for
from stream.config import Settings
from stream.connection import client_options, partition_counts
from stream.errors import StreamError

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 6068
# Seconds. Buckets straddle the objection objective (99% within 250 ms) closely, with a
# boundary exactly at 0.25 s as the worker's propagation histogram has; the tail shows a
# filter that lags.
PROPAGATION_BUCKETS: Final = (0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0)
# How long a probe waits for its item to reach the feed before it objects anyway (a
# filter that is down or far behind); the cycle then counts as `not_published`.
PUBLISH_WAIT_SECONDS: Final = 60.0
# After the deadline a probe keeps waiting this long for its retraction, so the
# histogram still gets the (slow) time; then the cycle ends.
LATE_WAIT_SECONDS: Final = 60.0
# A probe item that was not on the feed when its author objected again may still arrive
# (decided before the objection); after this long it is forgotten, and arriving later is a
# failure like any canary item of an objector.
UNPUBLISHED_WAIT_SECONDS: Final = 3600.0
# Probe cycles whose items are remembered after they ended: a value on the feed for an
# item retracted earlier is a failure, one for an item forgotten is one too.
REMEMBERED_PROBES: Final = 10_000
# Records one read of the feed takes.
FETCH_RECORDS: Final = 10_000
# Synthetic, non-personal text of every canary item.
TEXT: Final = "eligibility-filter canary item: synthetic, never for training"
# Long before any notice period could still be running.
NOTIFIED_AT: Final = "2000-01-01T00:00:00Z"
BIRTH_DATE: Final = "1970-01-01"


class CanaryError(StreamError):
    """Raised when the canary cannot start: a topic missing, or a setting unusable."""


class FailureKind(StrEnum):
    """Why a canary failure was counted: the label of eligibility_canary_failures_total."""

    PUBLISHED = "published"  # a canary item on the feed while its author objects
    PROPAGATION = "propagation"  # an objection whose retraction was not read back within the deadline


class ProbeOutcome(StrEnum):
    """How a probe cycle ended: the label of eligibility_canary_probes_total."""

    RETRACTED = "retracted"  # published, then retracted after the objection (timed)
    NOT_PUBLISHED = "not_published"  # the item never reached the feed in PUBLISH_WAIT_SECONDS: nothing timed
    NOT_RETRACTED = "not_retracted"  # published, and still not retracted LATE_WAIT_SECONDS past the deadline


@dataclass(frozen=True, slots=True)
class CanaryMetrics:
    """The canary's series, in their own registry (served on its own port)."""

    registry: CollectorRegistry
    failures: Counter
    propagation: Histogram
    probes: Counter
    posts: Counter
    canaries: Gauge
    last_check: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> CanaryMetrics:
        """The series in `registry` (a new one with the process collectors by default), every label at zero."""
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        r = registry
        m = cls(
            registry=r,
            failures=Counter(
                "eligibility_canary_failures",
                "Canary failures: a canary item on the feed while its author objects (published), an objection "
                "not retracted within the deadline (propagation)",
                ["kind"],
                registry=r,
            ),
            propagation=Histogram(
                "eligibility_canary_propagation_seconds",
                "Probe cycles: from sending the objection to reading back the item's tombstone and retraction record",
                buckets=PROPAGATION_BUCKETS,
                registry=r,
            ),
            probes=Counter("eligibility_canary_probes", "Probe cycles ended, by outcome", ["outcome"], registry=r),
            posts=Counter("eligibility_canary_posts", "Items posted by objecting canaries", registry=r),
            canaries=Gauge("eligibility_canary_accounts", "Canary accounts, by kind", ["kind"], registry=r),
            last_check=Gauge(
                "eligibility_canary_last_check_timestamp_seconds",
                "When the canary last read training.feed up to its end",
                registry=r,
            ),
        )
        for kind in FailureKind:
            m.failures.labels(kind=kind.value)
        for outcome in ProbeOutcome:
            m.probes.labels(outcome=outcome.value)
        for account_kind in ("objector", "probe"):
            m.canaries.labels(kind=account_kind)
        return m


@dataclass(frozen=True, slots=True)
class CanaryOptions:
    """How the canary runs: `python -m stream canary`'s options."""

    post_interval: float = 30.0
    probe_interval: float = 60.0
    deadline: float = 5.0
    country: str = "GB"

    def __post_init__(self) -> None:
        for name in ("post_interval", "probe_interval", "deadline"):
            if not getattr(self, name) > 0:
                raise CanaryError(f"--{name.replace('_', '-')} must be above 0, not {getattr(self, name)}")
        if len(self.country) != 2 or not self.country.isascii() or not self.country.isupper():
            raise CanaryError(f"--country {self.country!r}: expected an ISO 3166-1 alpha-2 code such as GB")


def canary_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from the environment, without the pseudonym key: the canary never pseudonymises.

    Read by `Settings.from_env`, so every other variable is checked as for any command,
    but a missing key does not refuse the canary, and its pod is given none (least privilege).
    """
    env = os.environ if env is None else env
    without_key = {k: v for k, v in env.items() if not k.startswith("STREAM_PSEUDONYM_")}
    return Settings.from_env({**without_key, "STREAM_DEV_MODE": "1"})


def canary_accounts(prefix: str, kind: str, partitions: int) -> list[str]:
    """One account id per partition, `<prefix><kind>-<p>-<n>` with the first n that lands on partition p."""
    accounts = []
    for p in range(partitions):
        account = next(
            a
            for a in (f"{prefix}{kind}-{p}-{n}" for n in itertools.count())
            if partition_for(a.encode(), partitions) == p
        )
        accounts.append(account)
    return accounts


def _now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Probe:
    """One probe cycle's item, from the withdrawal until it is forgotten."""

    content_id: str
    published: asyncio.Event = field(default_factory=asyncio.Event)
    retracted: asyncio.Event = field(default_factory=asyncio.Event)
    tombstoned: bool = False
    recorded: bool = False  # its training.retractions record read
    # When its author objected again (monotonic seconds); None before.
    objected_at: float | None = None
    overdue: bool = False  # counted as published: still on the feed long after the objection

    def note_retraction(self, *, tombstone: bool) -> None:
        """Its tombstone (or its training.retractions record) was read; both make it retracted."""
        if tombstone:
            self.tombstoned = True
        else:
            self.recorded = True
        if self.tombstoned and self.recorded:
            self.retracted.set()


class Canary:
    """The canary's state and loops; `run()` until `stop` is set."""

    def __init__(self, settings: Settings, options: CanaryOptions, metrics: CanaryMetrics) -> None:
        self.settings = settings
        self.options = options
        self.metrics = metrics
        self.prefix = settings.canary_prefix
        self.objectors: list[str] = []
        self.probe_accounts: list[str] = []
        self.probes: dict[str, Probe] = {}
        # Probes whose author objected again and whose tombstone is not read yet.
        self.awaiting: dict[str, Probe] = {}
        # Set once the accounts are set up and the feed was read to its end once.
        self.started = asyncio.Event()
        # Canary items live on the feed when the canary started (a cycle cut short by a
        # restart, or a failure): each must be gone by its deadline (monotonic seconds).
        self.suspects: dict[str, float] = {}
        self._producer: Any = None
        self._consumer: Any = None

    # -- set-up ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Set the accounts up, then post, probe and watch the feed until `stop` is set."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        self._producer = AIOKafkaProducer(
            **client_options(self.settings), client_id="eligibility-canary", acks="all", enable_idempotence=True
        )
        self._consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            client_id="eligibility-canary",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._producer.start()
        try:
            await self._consumer.start()
            try:
                await self._set_up()
                tasks = [
                    asyncio.create_task(self._watch(), name="canary-watch"),
                    asyncio.create_task(self._post(), name="canary-post"),
                    asyncio.create_task(self._probe(), name="canary-probe"),
                ]
                stopped = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
                for task in [*tasks, stopped]:
                    task.cancel()
                await asyncio.gather(*tasks, stopped, return_exceptions=True)
                failed = [t.exception() for t in done if t is not stopped and not t.cancelled()]
                for exc in failed:
                    if exc is not None:
                        raise exc
            finally:
                await self._consumer.stop()
        finally:
            await self._producer.stop()

    async def _set_up(self) -> None:
        topics = self.settings.topics
        partitions = await partition_counts(
            self.settings,
            [topics.objections, topics.feed, topics.retractions, topics.content, topics.profiles],
            client_id="eligibility-canary",
            error=CanaryError,
        )
        n = partitions[topics.objections]
        self.objectors = canary_accounts(self.prefix, "objector", n)
        self.probe_accounts = canary_accounts(self.prefix, "probe", n)
        self.metrics.canaries.labels(kind="objector").set(len(self.objectors))
        self.metrics.canaries.labels(kind="probe").set(len(self.probe_accounts))
        # Profiles first, then the objections, each acknowledged before any post: the
        # filter's freshness gate then decides every post with the objection applied.
        accounts = [*self.objectors, *self.probe_accounts]
        await self._send_all(topics.profiles, ((a, self._profile(a)) for a in accounts))
        await self._send_all(topics.objections, ((a, self._objection(a, "objected")) for a in accounts))

        from aiokafka import TopicPartition

        assigned = [TopicPartition(topics.feed, p) for p in range(partitions[topics.feed])]
        assigned += [TopicPartition(topics.retractions, p) for p in range(partitions[topics.retractions])]
        self._consumer.assign(assigned)
        feed = assigned[: partitions[topics.feed]]
        await self._consumer.seek_to_beginning(*feed)
        await self._consumer.seek_to_end(*assigned[partitions[topics.feed] :])
        ends = await self._consumer.end_offsets(feed)
        live: dict[str, bool] = {}
        while [tp for tp, end in ends.items() if await self._consumer.position(tp) < end]:
            fetched = await self._consumer.getmany(*feed, timeout_ms=500, max_records=FETCH_RECORDS)
            for records in fetched.values():
                for r in records:
                    content_id = self._canary_id(r.key)
                    if content_id is not None:
                        live[content_id] = r.value is not None
        leftovers = sorted(c for c, on in live.items() if on)
        # The objections above retract them, if the filter put them there: within the deadline.
        due = time.monotonic() + self.options.deadline
        self.suspects = dict.fromkeys(leftovers, due)
        log.info(
            "canary: %d objectors and %d probes (prefix %s) on %d partitions; %d canary items on the feed at start",
            len(self.objectors),
            len(self.probe_accounts),
            self.prefix,
            n,
            len(leftovers),
        )
        self.metrics.last_check.set(time.time())
        self.started.set()

    def _profile(self, account: str) -> bytes:
        return orjson.dumps(
            {
                "account_id": account,
                "birth_date": BIRTH_DATE,
                "country": self.options.country,
                "notified_at": NOTIFIED_AT,
                "updated_at": _now_text(),
            }
        )

    def _objection(self, account: str, status: str) -> bytes:
        return orjson.dumps(
            {
                "account_id": account,
                "status": status,
                "at": _now_text(),
                "source": "canary",
                "request_id": f"canary-{uuid.uuid4().hex}",
            }
        )

    def _content(self, account: str, content_id: str) -> bytes:
        now = _now_text()
        return orjson.dumps(
            {
                "event_id": f"{content_id}-upsert",
                "op": "upsert",
                "content_id": content_id,
                "content_type": "post",
                "platform": "facebook",
                "author_id": account,
                "visibility": "public",
                "created_at": now,
                "event_time": now,
                "text": TEXT,
                "media_uri": None,
                "language": "en",
            }
        )

    async def _send_all(self, topic: str, records: Iterable[tuple[str, bytes]]) -> None:
        """Send and await every record (acks=all): the set-up is durable before it is relied on."""
        futures = [await self._producer.send(topic, key=k.encode(), value=v) for k, v in records]
        await asyncio.gather(*futures)

    def _canary_id(self, key: bytes | None) -> str | None:
        if key is None:
            return None
        text = key.decode("utf-8", "replace")
        return text if text.startswith(self.prefix) else None

    # -- the feed ------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Read the feed and training.retractions as they grow; judge every canary record."""
        topics = self.settings.topics
        while True:
            fetched = await self._consumer.getmany(timeout_ms=200, max_records=FETCH_RECORDS)
            for tp, records in fetched.items():
                for r in records:
                    if tp.topic == topics.feed:
                        self.on_feed(r.key, r.value)
                    elif tp.topic == topics.retractions:
                        self.on_retraction(r.key)
            self.check_overdue()
            if sum(len(records) for records in fetched.values()) < FETCH_RECORDS:
                self.metrics.last_check.set(time.time())  # nothing left behind by this read

    def on_feed(self, key: bytes | None, value: bytes | None) -> None:
        """Judge a feed record: of a canary item, a value is a failure unless a probe cycle expects it."""
        content_id = self._canary_id(key)
        if content_id is None:
            return  # not a canary item: none of the canary's business
        probe = self.probes.get(content_id)
        if value is None:
            self.suspects.pop(content_id, None)
            self.awaiting.pop(content_id, None)
            if probe is not None:
                probe.note_retraction(tombstone=True)
            return
        if probe is not None and not probe.tombstoned:
            probe.published.set()  # a probe's item while its cycle allows it (a replay may repeat it)
            return
        self.suspects.pop(content_id, None)
        self._fail(FailureKind.PUBLISHED, content_id)

    def on_retraction(self, key: bytes | None) -> None:
        """Note a training.retractions record of a canary item (a probe's retraction needs it and its tombstone)."""
        content_id = self._canary_id(key)
        probe = self.probes.get(content_id) if content_id is not None else None
        if probe is not None:
            probe.note_retraction(tombstone=False)

    def check_overdue(self) -> None:
        """Items on the feed at start that outlived their deadline; probes not retracted long after theirs."""
        now = time.monotonic()
        for content_id, due in list(self.suspects.items()):
            if now >= due:
                del self.suspects[content_id]
                self._fail(FailureKind.PUBLISHED, content_id)
        late = self.options.deadline + LATE_WAIT_SECONDS
        for content_id, probe in list(self.awaiting.items()):
            objected_at = probe.objected_at if probe.objected_at is not None else now
            if probe.published.is_set() and not probe.overdue and now >= objected_at + late:
                # Its author objects, and the item is still on the feed: what the canaries exist to catch.
                probe.overdue = True
                del self.awaiting[content_id]
                self._fail(FailureKind.PUBLISHED, content_id)
            elif not probe.published.is_set() and now >= objected_at + UNPUBLISHED_WAIT_SECONDS:
                # Never published (the filter was down): forgotten, so that its item appearing
                # on the feed now, long after its author objected, counts as published.
                del self.awaiting[content_id]
                self.probes.pop(content_id, None)

    def _fail(self, kind: FailureKind, content_id: str) -> None:
        self.metrics.failures.labels(kind=kind.value).inc()
        # A canary's content id is synthetic, not personal data: it is what the operator looks up.
        log.error("canary failure (%s): canary item %s", kind.value, content_id)

    # -- the objectors' posts ------------------------------------------------------------

    async def _post(self) -> None:
        """Each objector posts one public item every post interval."""
        while True:
            records = [(a, f"{a}-post-{uuid.uuid4().hex[:12]}") for a in self.objectors]
            await self._send_all(self.settings.topics.content, ((a, self._content(a, c)) for a, c in records))
            self.metrics.posts.inc(len(records))
            await asyncio.sleep(self.options.post_interval)

    # -- the probes ------------------------------------------------------------------------

    async def _probe(self) -> None:
        """One probe cycle every probe interval, the probe accounts in turn."""
        for account in itertools.cycle(self.probe_accounts):
            started = time.monotonic()
            await self.probe_once(account)
            await asyncio.sleep(max(0.0, self.options.probe_interval - (time.monotonic() - started)))

    async def probe_once(self, account: str) -> ProbeOutcome:
        """Withdraw, post, see the item on the feed, object, time its retraction; the cycle's outcome."""
        topics = self.settings.topics
        probe = Probe(f"{account}-probe-{uuid.uuid4().hex[:12]}")
        self._remember(probe)
        await self._send_all(topics.objections, [(account, self._objection(account, "withdrawn"))])
        await self._send_all(topics.content, [(account, self._content(account, probe.content_id))])
        try:
            await asyncio.wait_for(probe.published.wait(), PUBLISH_WAIT_SECONDS)
            published = True
        except TimeoutError:
            published = False
        probe.objected_at = time.monotonic()
        self.awaiting[probe.content_id] = probe
        await self._send_all(topics.objections, [(account, self._objection(account, "objected"))])
        if not published:
            # Nothing to time. If the item reaches the feed later, its tombstone must follow
            # (the overdue check counts it otherwise).
            self.metrics.probes.labels(outcome=ProbeOutcome.NOT_PUBLISHED.value).inc()
            log.warning("canary: probe item not on the feed after %.0fs; no propagation measured", PUBLISH_WAIT_SECONDS)
            return ProbeOutcome.NOT_PUBLISHED
        try:
            await asyncio.wait_for(probe.retracted.wait(), self.options.deadline)
        except TimeoutError:
            self._fail(FailureKind.PROPAGATION, probe.content_id)
            try:
                await asyncio.wait_for(probe.retracted.wait(), LATE_WAIT_SECONDS)
            except TimeoutError:
                self.metrics.probes.labels(outcome=ProbeOutcome.NOT_RETRACTED.value).inc()
                return ProbeOutcome.NOT_RETRACTED
        seconds = time.monotonic() - probe.objected_at
        self.metrics.propagation.observe(seconds)
        self.metrics.probes.labels(outcome=ProbeOutcome.RETRACTED.value).inc()
        log.info("canary: probe retracted %.3fs after the objection", seconds)
        return ProbeOutcome.RETRACTED

    def _remember(self, probe: Probe) -> None:
        self.probes[probe.content_id] = probe
        while len(self.probes) > REMEMBERED_PROBES:
            del self.probes[next(iter(self.probes))]


def main_canary(settings: Settings, options: CanaryOptions, port: int) -> int:
    """`python -m stream canary`: serve the metrics on `port` and run until interrupted."""
    from prometheus_client import start_http_server

    metrics = CanaryMetrics.create()
    server, _ = start_http_server(port, registry=metrics.registry)
    log.info(
        "canary: metrics on port %d, a post every %.0fs, a probe every %.0fs, deadline %.1fs",
        port,
        options.post_interval,
        options.probe_interval,
        options.deadline,
    )
    try:
        asyncio.run(Canary(settings, options, metrics).run(asyncio.Event()))
    finally:
        server.shutdown()
        server.server_close()
    return 0
