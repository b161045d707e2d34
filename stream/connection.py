"""How every Kafka client connects: the security settings turned into client options.

One place turns `Settings.kafka_security` into what the clients take: keyword
options for each aiokafka consumer, producer and admin client (`client_options`)
and the Faust host's `broker_credentials` (`faust_credentials`). Every client
construction in `stream/` passes them (tests/unit/test_connection.py fails when one
does not). It also says how many partitions topics have (`partition_counts`), which
every reader outside the worker needs before it reads, and reads partitions to their
end offsets (`read_to_end`), as the verifier, the evidence report and the compliance
scans do. It imports neither Faust nor
aiokafka at import time, so the verifier can use it without pulling in the filter's
shell.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

from stream.config import KafkaSecurity, Settings
from stream.errors import ConfigError, StreamError

# A reader gives up when the partitions it still reads yield no record for this long
# (a broker that answers but no longer serves them): an error, never a wait for ever.
READ_STALL_SECONDS: Final = 60.0


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL connections, None for the others.

    The broker's certificate is checked against KAFKA_SSL_CA_FILE (the system's CAs when
    unset) and, unless KAFKA_SSL_CHECK_HOSTNAME=0, its name against the broker's host
    name. KAFKA_SSL_CERT_FILE and _KEY_FILE are the client's certificate for mutual TLS.
    An unreadable or malformed file raises ConfigError naming the variable.
    """
    if not security.protocol.uses_tls:
        return None
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(security.ssl_ca_file) if security.ssl_ca_file else None
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"KAFKA_SSL_CA_FILE={security.ssl_ca_file}: not a usable CA certificate ({exc})") from None
    context.check_hostname = security.ssl_check_hostname
    # check_hostname off still verifies the chain: only the name is not compared.
    context.verify_mode = ssl.CERT_REQUIRED
    if security.ssl_cert_file is not None and security.ssl_key_file is not None:
        try:
            context.load_cert_chain(str(security.ssl_cert_file), str(security.ssl_key_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"KAFKA_SSL_CERT_FILE={security.ssl_cert_file} / KAFKA_SSL_KEY_FILE={security.ssl_key_file}: "
                f"not a usable certificate and key ({exc})"
            ) from None
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword options for an aiokafka AIOKafkaConsumer, AIOKafkaProducer or AIOKafkaAdminClient.

    The bootstrap servers, the security protocol and, as the protocol needs them, the
    TLS context and the SASL mechanism with its username and password. Contains the
    password: never log it.
    """
    security = settings.kafka_security
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": security.protocol.value,
    }
    context = ssl_context(security)
    if context is not None:
        options["ssl_context"] = context
    if security.protocol.uses_sasl:
        options.update(
            sasl_mechanism=security.sasl_mechanism.value,
            sasl_plain_username=security.sasl_username,
            sasl_plain_password=security.sasl_password,
        )
    return options


def faust_credentials(settings: Settings) -> Any:
    """The Faust app's `broker_credentials`: SASL or SSL credentials, None for PLAINTEXT.

    Faust hands them to each of its own aiokafka clients (its consumer, producer and
    the client it declares topics with), so the host connects as the worker does.
    """
    import faust.auth  # the Faust host's dependency only: the verifier imports this module too

    security = settings.kafka_security
    context = ssl_context(security)
    if security.protocol.uses_sasl:
        return faust.auth.SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password,
            ssl_context=context,
            mechanism=security.sasl_mechanism.value,
        )
    if context is not None:
        return faust.auth.SSLCredentials(context)
    return None


async def partition_counts(
    settings: Settings, names: Sequence[str], *, client_id: str, error: type[StreamError]
) -> dict[str, int]:
    """How many partitions each of `names` has; `error` naming any topic that is missing or undescribable.

    The verifier, the canary, the evidence report and the compliance scans all need
    it before they read; each passes its own error class so its command's message
    and exit status stay its own.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(settings), client_id=client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            raise error(f"topics do not exist: {', '.join(missing)} (see `python -m stream topics check`)")
        described: list[Any] = await admin.describe_topics(list(names))
    finally:
        await admin.close()
    counts = {t["topic"]: len(t["partitions"]) for t in described if t.get("error_code", 0) == 0}
    unreadable = [name for name in names if not counts.get(name)]
    if unreadable:
        raise error(f"cannot describe topics: {', '.join(unreadable)}")
    return counts


async def read_to_end(
    consumer: Any,
    ends: Mapping[Any, int],
    *,
    error: type[StreamError],
    max_records: int = 20_000,
    stall_seconds: float = READ_STALL_SECONDS,
) -> AsyncIterator[tuple[Any, list[Any]]]:
    """Yield `(partition, records)` in offset order until every partition of `ends` reached its end offset there.

    The caller assigns the partitions and places each at its start. A partition at its
    end is paused: what is appended after `ends` were taken is not part of this read,
    and no record at or past its end is yielded. `error` (each command its own) when
    the partitions still to read yield no record for `stall_seconds`.
    """
    remaining = set(ends)
    loop = asyncio.get_running_loop()
    last_progress = loop.time()
    while True:
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
                consumer.pause(tp)
        if not remaining:
            return
        fetched = await consumer.getmany(*remaining, timeout_ms=500, max_records=max_records)
        for tp, records in fetched.items():
            wanted = [r for r in records if r.offset < ends[tp]]
            if wanted:
                last_progress = loop.time()
                yield tp, wanted
        if loop.time() - last_progress > stall_seconds:
            behind = sorted(f"{tp.topic}[{tp.partition}]" for tp in remaining)
            raise error(f"no records for {stall_seconds:.0f}s while reading {', '.join(behind)}")
