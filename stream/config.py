"""Settings, read once from the environment into a frozen object.

Every variable is documented in the README. A bad value fails start-up with a
message that names the variable; the pseudonym key never appears in a repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from stream.errors import ConfigError

# The development key is public knowledge: it only makes local demos and tests run.
DEV_PSEUDONYM_KEY = b"development-only-pseudonym-key"
# The shortest pseudonym key accepted outside development mode: 32 bytes, SHA-256's
# output size (RFC 2104 recommends a key at least as long as the hash's output).
MIN_PSEUDONYM_KEY_BYTES = 32

# The worker's limits other than the fetch's (`Settings.max_batch`, STREAM_MAX_BATCH,
# which also bounds the content top-up that fills a batch). Each bounds the work of one
# await, so that a long restore or pass still lets a rebalance or a stop through
# between steps; none of them changes what is decided.
# Records one read of a changelog takes while a partition's store is restored.
RESTORE_READ_RECORDS = 5000
# Records one read of lagging state partitions takes in the freshness gate.
GATE_READ_RECORDS = 5000
# Records one read of lagging state partitions takes in the recovery replay.
REPLAY_READ_RECORDS = 5000
# Held and published items one step of the re-evaluation pass after a replay judges.
REEVALUATE_STEP_ITEMS = 5000
# Held items of a partition decided again at each look for due ones; the rest wait
# for the next look (`DUE_PERIOD_SECONDS` in `stream.runtime.deferrals`).
DUE_STEP_ITEMS = 5000
# How long the loop's fetch waits when nothing is buffered: the loop's tick on an idle
# stream, at which due items, gauges and paced commits are looked after.
POLL_WAIT_MS = 200
# The least RocksDB budget a worker process may be given (STREAM_STORE_MEMORY_MIB). At
# 32 MiB the memtables' share is ~19 MiB, ~5 MiB a store at four partitions: about the
# flushes of the 64/24 MiB budget that bench/notes.md ("The memtable budget") measured
# slower than the default; below it they come sooner still, and lookups consult ever
# more small files.
MIN_STORE_MEMORY_MIB = 32
# How long a read of state partitions known to lag (gate, replay, restore) waits for
# records before the loop looks again whether to go on (a rebalance, a stop, a stall).
LAGGING_READ_WAIT_MS = 500


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The names of every topic the filter reads and writes; each can be renamed by its STREAM_TOPIC_* variable."""

    content: str = "content.events"
    profiles: str = "accounts.profiles"
    objections: str = "accounts.objections"
    feed: str = "training.feed"
    decisions: str = "eligibility.decisions"
    dlq: str = "content.events.dlq"
    # Ours, not the contract's: the changelog of held decisions (see engine.py), so
    # they survive a partition moving to another worker.
    deferred: str = "eligibility.deferred"
    # Ours too: the changelog of the published-items index, so a partition's new
    # owner knows what to retract.
    published: str = "eligibility.published"
    # Ours too: the latest event applied to each item (order per item: duplicates and
    # late events change nothing), so a partition's next owner keeps the order.
    items: str = "eligibility.items"
    # For trainers: one record per retraction (content id, time, cause, policy
    # version; no account ids), kept 3 years where the feed's tombstones last 7 days.
    retractions: str = "training.retractions"
    # Shadow mode only (STREAM_SHADOW_POLICY_PATH): one record per upsert the shadow
    # policy decides differently from the policy in force (no account ids, no text).
    shadow: str = "eligibility.shadow"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TopicNames:
        """The names, each from its STREAM_TOPIC_* variable where set, else the contract's."""
        defaults = cls()
        return cls(
            content=env.get("STREAM_TOPIC_CONTENT_EVENTS", defaults.content),
            profiles=env.get("STREAM_TOPIC_ACCOUNTS_PROFILES", defaults.profiles),
            objections=env.get("STREAM_TOPIC_ACCOUNTS_OBJECTIONS", defaults.objections),
            feed=env.get("STREAM_TOPIC_TRAINING_FEED", defaults.feed),
            decisions=env.get("STREAM_TOPIC_ELIGIBILITY_DECISIONS", defaults.decisions),
            dlq=env.get("STREAM_TOPIC_CONTENT_EVENTS_DLQ", defaults.dlq),
            deferred=env.get("STREAM_TOPIC_ELIGIBILITY_DEFERRED", defaults.deferred),
            published=env.get("STREAM_TOPIC_ELIGIBILITY_PUBLISHED", defaults.published),
            items=env.get("STREAM_TOPIC_ELIGIBILITY_ITEMS", defaults.items),
            retractions=env.get("STREAM_TOPIC_TRAINING_RETRACTIONS", defaults.retractions),
            shadow=env.get("STREAM_TOPIC_ELIGIBILITY_SHADOW", defaults.shadow),
        )

    def inputs(self) -> tuple[str, str, str]:
        """The three input topics: content, profiles, objections (co-partitioned)."""
        return (self.content, self.profiles, self.objections)

    def changelogs(self) -> tuple[str, str, str]:
        """Our own compacted topics, co-partitioned with the inputs: what a store restores from."""
        return (self.published, self.deferred, self.items)


class SecurityProtocol(StrEnum):
    """How every client talks to the brokers (KAFKA_SECURITY_PROTOCOL); the values are Kafka's."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_tls(self) -> bool:
        """Whether the connection is encrypted (SSL or SASL_SSL)."""
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        """Whether the client authenticates with SASL (SASL_PLAINTEXT or SASL_SSL)."""
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)


class SaslMechanism(StrEnum):
    """The SASL mechanism (KAFKA_SASL_MECHANISM); the values are Kafka's."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class LogFormat(StrEnum):
    """How log lines are written (STREAM_LOG_FORMAT): text for people, json for a log pipeline."""

    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How every client (worker, Faust host, topics, verify, generate, watch) connects to Kafka.

    One set of settings read once, secrets only from files: the SASL password from
    KAFKA_SASL_PASSWORD_FILE (never an environment variable, which `ps e` and crash
    dumps show), TLS material from KAFKA_SSL_CA_FILE / _CERT_FILE / _KEY_FILE.
    Hostname verification is on unless KAFKA_SSL_CHECK_HOSTNAME=0.
    """

    protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism = SaslMechanism.SCRAM_SHA_512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_check_hostname: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSecurity:
        """Read the KAFKA_* security variables; an incomplete or contradictory set raises ConfigError."""
        protocol = _choice(env, "KAFKA_SECURITY_PROTOCOL", SecurityProtocol, SecurityProtocol.PLAINTEXT)
        mechanism = _choice(env, "KAFKA_SASL_MECHANISM", SaslMechanism, SaslMechanism.SCRAM_SHA_512)
        username = env.get("KAFKA_SASL_USERNAME") or None
        password = _secret_file(env, "KAFKA_SASL_PASSWORD_FILE")
        if protocol.uses_sasl and (username is None or password is None):
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL={protocol}: set KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE"
            )
        if not protocol.uses_sasl and (username is not None or password is not None):
            raise ConfigError(
                f"KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD_FILE are set but KAFKA_SECURITY_PROTOCOL={protocol} "
                "does not use SASL (SASL_PLAINTEXT or SASL_SSL)"
            )
        ca, cert, key = (_readable_file(env, name) for name in _SSL_FILES)
        if (cert is None) != (key is None):
            raise ConfigError("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together: set both or neither")
        if not protocol.uses_tls and (ca or cert):
            raise ConfigError(
                f"KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS (SSL or SASL_SSL)"
            )
        return cls(
            protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=username,
            sasl_password=password,
            ssl_ca_file=ca,
            ssl_cert_file=cert,
            ssl_key_file=key,
            ssl_check_hostname=_flag(env, "KAFKA_SSL_CHECK_HOSTNAME", default=True),
        )


_E = TypeVar("_E", bound=StrEnum)
_SSL_FILES = ("KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a worker, read once from the environment (README, "Configuration")."""

    bootstrap_servers: str = "localhost:9092"
    data_dir: Path = Path("./data")
    pseudonym_key: bytes = field(default=DEV_PSEUDONYM_KEY, repr=False)
    # The key before the last rotation (STREAM_PSEUDONYM_PREVIOUS_KEY_FILE): only the
    # verifier reads it, to accept feed records made before the rotation (README).
    previous_pseudonym_key: bytes | None = field(default=None, repr=False)
    policy_path: Path | None = None
    # A second policy run beside the one in force (STREAM_SHADOW_POLICY_PATH): its
    # differences are counted and recorded, never published (docs/policy-rollout.md).
    shadow_policy_path: Path | None = None
    partitions: int = 4
    replication_factor: int = 1
    web_port: int = 6066
    group_id: str = "eligibility-filter"
    dev_mode: bool = False
    topics: TopicNames = field(default_factory=TopicNames)
    max_batch: int = 5000
    linger_ms: int = 5
    compression: str | None = "zstd"
    commit_interval_ms: int = 1000
    shutdown_timeout: float = 30.0
    event_loop: str = "uvloop"
    # How long each item's latest applied event is kept (order per item): at least the
    # retention of content.events (7 days as `topics create` makes it).
    item_memory_days: int = 8
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # Static membership (KIP-345): a worker that comes back under the same id within the
    # session timeout gets its partitions back without a rebalance of the others.
    group_instance_id: str | None = None
    # A static member whose StatefulSet was scaled below its pod's ordinal leaves the
    # group as it stops (STREAM_LEAVE_ON_SCALE_IN, `stream/runtime/scalein.py`), so its
    # partitions do not wait out its session timeout.
    leave_on_scale_in: bool = True
    log_format: LogFormat = LogFormat.TEXT
    # Trainers' consumer groups on training.retractions (STREAM_TRAINER_GROUPS): the
    # verifier exports how many retractions each has not acknowledged, and how old the
    # oldest is; STREAM_TRAINER_ACK_HOURS is how long a trainer may take to apply one.
    trainer_groups: tuple[str, ...] = ()
    trainer_ack_hours: int = 24
    # How long `topics create` makes training.retractions keep a record
    # (STREAM_RETRACTIONS_RETENTION_DAYS): the oldest dataset a trainer can still clean.
    retractions_retention_days: int = 3 * 365
    # Account ids (and so content ids) of the canary objectors start with this
    # (STREAM_CANARY_PREFIX): `python -m stream canary` (README, "Canary objectors").
    canary_prefix: str = "eligibility-canary-"
    # Worker processes in one consumer group under one supervisor (STREAM_WORKER_PROCESSES,
    # `worker --processes`): one process uses about one core (README, "Using a pod's cores").
    worker_processes: int = 1
    # RocksDB's memory budget of each worker process, shared by all its partition stores
    # (STREAM_STORE_MEMORY_MIB): block cache and memtables (`stream/runtime/store.py`).
    store_memory_mib: int = 96

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from `env` (the process environment by default); a bad value raises ConfigError."""
        env = os.environ if env is None else env
        dev_mode = _flag(env, "STREAM_DEV_MODE")
        return cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            data_dir=Path(env.get("STREAM_DATA_DIR", "./data")),
            pseudonym_key=_pseudonym_key(env, dev_mode),
            previous_pseudonym_key=_previous_pseudonym_key(env, dev_mode),
            policy_path=Path(env["STREAM_POLICY_PATH"]) if env.get("STREAM_POLICY_PATH") else None,
            shadow_policy_path=Path(env["STREAM_SHADOW_POLICY_PATH"]) if env.get("STREAM_SHADOW_POLICY_PATH") else None,
            partitions=_int(env, "STREAM_PARTITIONS", 4, minimum=1),
            replication_factor=_int(env, "STREAM_REPLICATION_FACTOR", 1, minimum=1),
            web_port=_int(env, "STREAM_WEB_PORT", 6066, minimum=0),
            group_id=env.get("STREAM_GROUP_ID", "eligibility-filter"),
            dev_mode=dev_mode,
            topics=TopicNames.from_env(env),
            max_batch=_int(env, "STREAM_MAX_BATCH", 5000, minimum=1),
            linger_ms=_int(env, "STREAM_PRODUCER_LINGER_MS", 5, minimum=0),
            compression=_compression(env),
            commit_interval_ms=_int(env, "STREAM_COMMIT_INTERVAL_MS", 1000, minimum=0),
            shutdown_timeout=float(_int(env, "STREAM_SHUTDOWN_TIMEOUT", 30, minimum=1)),
            event_loop=_event_loop(env),
            item_memory_days=_int(env, "STREAM_ITEM_MEMORY_DAYS", 8, minimum=1),
            kafka_security=KafkaSecurity.from_env(env),
            group_instance_id=_group_instance_id(env),
            leave_on_scale_in=_flag(env, "STREAM_LEAVE_ON_SCALE_IN", default=True),
            log_format=_choice(env, "STREAM_LOG_FORMAT", LogFormat, LogFormat.TEXT),
            trainer_groups=_trainer_groups(env),
            trainer_ack_hours=_int(env, "STREAM_TRAINER_ACK_HOURS", 24, minimum=1),
            retractions_retention_days=_int(env, "STREAM_RETRACTIONS_RETENTION_DAYS", 3 * 365, minimum=1),
            canary_prefix=_canary_prefix(env),
            worker_processes=_int(env, "STREAM_WORKER_PROCESSES", 1, minimum=1),
            store_memory_mib=_int(env, "STREAM_STORE_MEMORY_MIB", 96, minimum=MIN_STORE_MEMORY_MIB),
        )

    @property
    def uses_dev_pseudonym_key(self) -> bool:
        """Whether pseudonyms are made with the public development key (anyone can reverse them)."""
        return self.pseudonym_key == DEV_PSEUDONYM_KEY


def _flag(env: Mapping[str, str], name: str, *, default: bool = False) -> bool:
    value = env.get(name, "").strip().lower()
    if value == "":
        return default
    if value in ("0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name}={value!r}: expected 1/0, true/false or yes/no")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below its minimum {minimum}")
    return value


def _trainer_groups(env: Mapping[str, str]) -> tuple[str, ...]:
    """STREAM_TRAINER_GROUPS: comma-separated consumer group ids, each at most once."""
    raw = env.get("STREAM_TRAINER_GROUPS", "")
    groups = tuple(g.strip() for g in raw.split(",")) if raw.strip() else ()
    if any(not g for g in groups):
        raise ConfigError(f"STREAM_TRAINER_GROUPS={raw!r}: an empty group name (a stray comma?)")
    if len(set(groups)) != len(groups):
        raise ConfigError(f"STREAM_TRAINER_GROUPS={raw!r}: a group named twice")
    return groups


def _canary_prefix(env: Mapping[str, str]) -> str:
    """STREAM_CANARY_PREFIX: non-empty, printable, no spaces (it starts synthetic ids that trainers match)."""
    raw = env.get("STREAM_CANARY_PREFIX", "eligibility-canary-")
    if not raw or not raw.isprintable() or any(c.isspace() for c in raw):
        raise ConfigError(f"STREAM_CANARY_PREFIX={raw!r}: expected a non-empty prefix without spaces")
    return raw


def _compression(env: Mapping[str, str]) -> str | None:
    value = env.get("STREAM_PRODUCER_COMPRESSION", "zstd").strip().lower()
    if value in ("", "none"):
        return None
    if value not in ("gzip", "snappy", "lz4", "zstd"):
        raise ConfigError(f"STREAM_PRODUCER_COMPRESSION={value!r}: expected none, gzip, snappy, lz4 or zstd")
    return value


def _event_loop(env: Mapping[str, str]) -> str:
    value = env.get("STREAM_EVENT_LOOP", "uvloop").strip().lower() or "uvloop"
    if value not in ("uvloop", "asyncio"):
        raise ConfigError(f"STREAM_EVENT_LOOP={value!r}: expected uvloop or asyncio")
    return value


def _pseudonym_key(env: Mapping[str, str], dev_mode: bool) -> bytes:
    key = env.get("STREAM_PSEUDONYM_KEY")
    path = env.get("STREAM_PSEUDONYM_KEY_FILE")
    if key and path:
        raise ConfigError("set STREAM_PSEUDONYM_KEY or STREAM_PSEUDONYM_KEY_FILE, not both")
    if path:
        return _key_file("STREAM_PSEUDONYM_KEY_FILE", path, dev_mode)
    if key:
        return _long_enough("STREAM_PSEUDONYM_KEY", key.encode("utf-8"), dev_mode)
    if dev_mode:
        return DEV_PSEUDONYM_KEY
    raise ConfigError(
        "no pseudonym key: set STREAM_PSEUDONYM_KEY or STREAM_PSEUDONYM_KEY_FILE "
        "(or STREAM_DEV_MODE=1 for a local demo with a public development key)"
    )


def _previous_pseudonym_key(env: Mapping[str, str], dev_mode: bool) -> bytes | None:
    path = env.get("STREAM_PSEUDONYM_PREVIOUS_KEY_FILE")
    return _key_file("STREAM_PSEUDONYM_PREVIOUS_KEY_FILE", path, dev_mode) if path else None


def _key_file(name: str, path: str, dev_mode: bool) -> bytes:
    """A key from a file, surrounding whitespace (a trailing newline) stripped."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{name}={path}: {exc.strerror}") from None
    if not data:
        raise ConfigError(f"{name}={path} is empty")
    return _long_enough(f"{name}={path}", data, dev_mode)


def _long_enough(name: str, key: bytes, dev_mode: bool) -> bytes:
    """The key, unless it is shorter than MIN_PSEUDONYM_KEY_BYTES outside development mode.

    A short key can be guessed, and with it every author's pseudonym on the feed
    reversed by hashing the known account ids; the key's value is never in the message.
    """
    if len(key) < MIN_PSEUDONYM_KEY_BYTES and not dev_mode:
        raise ConfigError(
            f"{name}: the pseudonym key has {len(key)} bytes, fewer than {MIN_PSEUDONYM_KEY_BYTES}; "
            f"use a random key of at least {MIN_PSEUDONYM_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)"
        )
    return key


def _choice(env: Mapping[str, str], name: str, enum: type[_E], default: _E) -> _E:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    for member in enum:
        if raw.upper() == member.value.upper():
            return member
    raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(m.value for m in enum)}")


def _readable_file(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if not raw:
        return None
    path = Path(raw)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name}={raw}: {exc.strerror}") from None
    return path


def _secret_file(env: Mapping[str, str], name: str) -> str | None:
    path = _readable_file(env, name)
    if path is None:
        return None
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{name}={path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{name}={path} is empty")
    return secret


def _group_instance_id(env: Mapping[str, str]) -> str | None:
    """STREAM_GROUP_INSTANCE_ID; in a Kubernetes pod it defaults to the pod's name.

    A StatefulSet's pod names are stable (`eligibility-filter-0`, ...) and its HOSTNAME
    is that name, so a restarted pod rejoins as the same static member. Outside a pod
    the default is none (dynamic membership): two local workers on one host would
    otherwise share an id and fence each other. `none` turns it off in a pod too.
    """
    raw = env.get("STREAM_GROUP_INSTANCE_ID", "").strip()
    if raw.lower() == "none":
        return None
    if raw:
        return raw
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("HOSTNAME"):
        return env["HOSTNAME"]
    return None
