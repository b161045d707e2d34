"""Operator commands: `python -m stream worker | topics | generate | verify | watch | export | retractions`,
and the privacy staff's `explain | subject | evidence`, and the `canary` objectors.

Each command reads the settings once, turns a StreamError into one clear line on
stderr and exit status 2, and never re-implements the rule.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence

import orjson
from aiokafka.errors import KafkaError

from stream import logs, zstd_codec
from stream.config import LogFormat, Settings
from stream.connection import client_options
from stream.errors import ConfigError, StreamError

log = logging.getLogger("stream")

# Blocks at least this large are mapped and unmapped on their own (see tune_malloc).
MMAP_THRESHOLD_BYTES = 128 << 10
# The collector's young generation is collected after this many more container objects
# were allocated than freed (Python's default: 700); see tune_collector.
YOUNG_COLLECTION_THRESHOLD = 100_000
# The allocator every process of the image runs on (the Dockerfile sets this environment;
# the benchmark gives its processes the same where the library is installed). With glibc's
# malloc the worker's heap fragments as RocksDB's cached blocks come and go between
# Python's batch allocations, and its resident memory keeps creeping over a long run;
# with jemalloc it stays flat (bench/notes.md, "The allocator").
# - background_thread: a thread of jemalloc's returns freed pages on time, not only
#   when the worker next calls malloc;
# - dirty_decay_ms 1000, muzzy_decay_ms 0: freed pages go back to the system within a
#   second (by default ten seconds, which holds ~30 MiB more at the soak's peaks; the
#   faster return costs a few per cent of CPU when draining at full speed);
# - narenas 2: one busy Python thread and RocksDB's few need no more (glibc's cap too).
JEMALLOC_ENV = {
    "LD_PRELOAD": "libjemalloc.so.2",
    "MALLOC_CONF": "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one operator command; its exit status (2 for a StreamError or a Kafka failure, 130 when interrupted)."""
    args = _parser().parse_args(argv)
    try:
        if args.command in TRAINER_COMMANDS:
            settings = _trainer_settings()
        elif args.command in KEYLESS_COMMANDS:
            from stream.compliance.canary import canary_settings  # no pseudonym key: neither pseudonymises

            settings = canary_settings()
        else:
            settings = Settings.from_env()
    except StreamError as exc:
        _error_line(str(exc), os.environ.get("STREAM_LOG_FORMAT", "").strip().lower() == LogFormat.JSON)
        return 2
    logs.configure(args.log_level, settings.log_format)
    # Every command's Kafka clients compress and decompress zstd batches on reused
    # contexts (stream/zstd_codec.py): the worker's outputs, the trainers' reads.
    zstd_codec.install()
    if args.command != "worker":
        # The worker stops on SIGTERM through Faust's own handler. The other commands
        # would ignore it as a container's PID 1 (no default action there), and a pod
        # would wait out its grace period: SIGTERM ends them like Ctrl-C.
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run(settings, args)
    except StreamError as exc:
        _error_line(str(exc), settings.log_format is LogFormat.JSON)
        return 2
    except KafkaError as exc:
        # Unreachable, or refused: TLS (a wrong CA, a name the certificate does not
        # carry), SASL credentials or an ACL. aiokafka logs a TLS or SASL cause on the
        # line before; this line names the broker and the protocol tried.
        _error_line(
            f"Kafka at {settings.bootstrap_servers} ({settings.kafka_security.protocol}): {exc}",
            settings.log_format is LogFormat.JSON,
        )
        return 2
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the command unwinds like an interrupt and exits 143."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def _error_line(message: str, as_json: bool) -> None:
    """A StreamError as one line on stderr: `error: ...`, or a JSON line under STREAM_LOG_FORMAT=json.

    When the settings themselves cannot be read, the format comes from the raw variable:
    a log pipeline must still get this one line as JSON.
    """
    print(logs.json_error_line(message) if as_json else f"error: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    """The commands and their options."""
    parser = argparse.ArgumentParser(prog="python -m stream", description=__doc__)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run the filter (Faust worker with /metrics, /healthz, /ready)")
    worker.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes in the group under one supervisor, at most the partition count "
        "[STREAM_WORKER_PROCESSES, 1]",
    )

    topics = sub.add_parser("topics", help="create or check the contract's topics")
    topics.add_argument("action", choices=["create", "check"])

    gen = sub.add_parser("generate", help="produce a seeded synthetic workload")
    gen.add_argument("--count", type=int, default=None, help="content events to send [unbounded]")
    gen.add_argument("--rate", type=float, default=None, help="content events per second [as fast as possible]")
    gen.add_argument("--accounts", type=int, default=10_000, help="accounts in the population [10000]")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--malformed-share", type=float, default=0.005)
    gen.add_argument("--no-progress", action="store_true")

    verify = sub.add_parser("verify", help="independent compliance check of the feed against the inputs")
    verify.add_argument("--once", action="store_true", help="one check, then exit 1 on any violation or loss")
    verify.add_argument("--interval", type=float, default=300.0, help="seconds between checks [300]")
    verify.add_argument("--port", type=int, default=6067, help="port of the verifier's /metrics [6067]")
    verify.add_argument("--json", default=None, help="write the machine-readable report here (- for stdout)")
    verify.add_argument("--grace", type=float, default=None, help="seconds a difference may be pending [0 once, 60]")
    verify.add_argument("--examples", type=int, default=10, help="content ids listed per category [10]")

    canary = sub.add_parser("canary", help="canary objectors: probe the live filter, serve the failures")
    canary.add_argument("--port", type=int, default=6068, help="port of the canary's /metrics [6068]")
    canary.add_argument("--post-interval", type=float, default=30.0, help="seconds between objectors' posts [30]")
    canary.add_argument("--probe-interval", type=float, default=60.0, help="seconds between probe cycles [60]")
    canary.add_argument("--deadline", type=float, default=5.0, help="seconds an objection may take [5]")
    canary.add_argument("--country", default="GB", help="the canaries' country, an enabled jurisdiction [GB]")

    export = sub.add_parser("export", help="a snapshot of the training feed as Parquet, with its manifest")
    export.add_argument("--out", required=True, help="directory to write feed.parquet and manifest.json to")
    bar = export.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None, help="show the progress bar [on a terminal]")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")

    retractions = sub.add_parser("retractions", help="the content ids retracted since an export's manifest")
    retractions.add_argument("--since", required=True, help="the export's manifest.json")
    retractions.add_argument("--json", action="store_true", help="one JSON object: ids, causes, offsets")

    explain = sub.add_parser("explain", help="why an item was used or not: its audit records in plain words")
    explain.add_argument("content_id", help="the content id")
    explain.add_argument("--json", action="store_true", help="one JSON object instead of the text")

    subject = sub.add_parser("subject", help="an access or objection request: one account's state and items")
    subject.add_argument("account_id", help="the raw account id (printed on stdout only, never logged)")
    subject.add_argument("--json", action="store_true", help="one JSON object instead of the text")

    evidence = sub.add_parser("evidence", help="the compliance evidence report of a period, as one HTML file")
    evidence.add_argument("--since", required=True, help="start: 2026-12-01 (UTC) or 2026-12-01T09:00:00Z")
    evidence.add_argument("--until", default=None, help="end of the period, the same way [now]")
    evidence.add_argument("--out", required=True, help="the HTML file to write (with --figure: the figure's PNG)")
    evidence.add_argument("--json", default=None, help="also write the report's numbers here, as JSON")
    evidence.add_argument("--prometheus", default=None, help="Prometheus URL: the canaries' and the verifier's series")
    evidence.add_argument("--figure", default=None, help="write only this figure (decisions, retractions, ...)")
    evidence.add_argument("--no-verify", action="store_true", help="do not run the verifier in-process")

    remove = sub.add_parser(
        "remove-members",
        help="remove static members that will not come back (a scale-in) from STREAM_GROUP_ID, "
        "so their partitions move now rather than after the session timeout",
    )
    remove.add_argument("instance_ids", nargs="+", metavar="INSTANCE_ID", help="their STREAM_GROUP_INSTANCE_IDs")

    watch = sub.add_parser("watch", help="live counts of decisions by reason, read from the audit log")
    watch.add_argument("--interval", type=float, default=2.0)
    watch.add_argument("--from-beginning", action="store_true")

    return parser


def _run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the parsed command with the settings read once."""
    if args.command == "worker":
        processes = settings.worker_processes if args.processes is None else args.processes
        if processes < 1:
            raise ConfigError(f"--processes {processes}: at least 1")
        if processes > 1:
            from stream.runtime.supervisor import supervise

            return supervise(settings, processes, args.log_level)
        return _worker(settings, args.log_level)
    if args.command == "topics":
        return asyncio.run(_topics(settings, args.action))
    if args.command == "generate":
        return asyncio.run(_generate(settings, args))
    if args.command == "verify":
        from pathlib import Path

        from stream.verifier.verify import main_verify

        return main_verify(
            settings,
            Path(args.json) if args.json else None,
            args.once,
            args.interval,
            port=args.port,
            grace_seconds=args.grace,
            examples=args.examples,
        )
    if args.command == "canary":
        from stream.compliance.canary import CanaryOptions, main_canary

        options = CanaryOptions(args.post_interval, args.probe_interval, args.deadline, args.country)
        return main_canary(settings, options, args.port)
    if args.command == "watch":
        return asyncio.run(_watch(settings, args.interval, args.from_beginning))
    if args.command == "export":
        return _export(settings, args.out, args.progress)
    if args.command == "retractions":
        return _retractions(settings, args.since, args.json)
    if args.command == "evidence":
        return _evidence(settings, args)
    if args.command == "explain":
        return _compliance(settings, "explain", args.content_id, args.json)
    if args.command == "subject":
        return _compliance(settings, "subject", args.account_id, args.json)
    if args.command == "remove-members":
        return asyncio.run(_remove_members(settings, args.instance_ids))
    return 0


async def _remove_members(settings: Settings, instance_ids: list[str]) -> int:
    """One line per instance id: removed, or not a member (already gone: nothing to do). 0 either way."""
    from stream.runtime.members import Removal, remove_static_members

    outcomes = await remove_static_members(settings, instance_ids)
    for instance_id, outcome in outcomes.items():
        if outcome is Removal.REMOVED:
            print(f"{instance_id}: removed from group {settings.group_id}", flush=True)
        else:
            print(f"{instance_id}: not a member of group {settings.group_id} (nothing to remove)", flush=True)
    return 0


# The trainers' commands read only the brokers, the security settings and the topic
# names (stream.feed.reader_settings): a trainer has no pseudonym key.
TRAINER_COMMANDS = frozenset({"export", "retractions"})

# Commands that never pseudonymise, so need no pseudonym key (least privilege): the
# canary, and the removal of group members an operator runs.
KEYLESS_COMMANDS = frozenset({"canary", "remove-members"})


def _trainer_settings() -> Settings:
    from stream.feed import reader_settings

    # The reader assigns partitions one after another, and aiokafka logs each assignment
    # at INFO: lines between a trainer's progress bar, with nothing to act on.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    return reader_settings()


def _export(settings: Settings, out: str, progress: bool | None) -> int:
    """`export --out DIR`: DIR/feed.parquet and DIR/manifest.json; a summary line on stdout."""
    from pathlib import Path

    from stream.feed.export import export

    manifest = export(Path(out), settings, progress=progress)
    print(
        f"exported {manifest.items} items to {out} (policy versions {', '.join(manifest.policy_versions) or '-'}, "
        f"{manifest.content_hash})",
        flush=True,
    )
    return 0


def _retractions(settings: Settings, since: str, as_json: bool) -> int:
    """`retractions --since DIR/manifest.json`: the ids to delete from that dataset, one a line (or JSON)."""
    from pathlib import Path

    from stream.feed import Manifest, ManifestError, retracted_since

    try:
        manifest = Manifest.from_json(Path(since).read_bytes())
    except OSError as exc:
        raise ManifestError(f"cannot read {since}: {exc.strerror}") from None
    retracted = retracted_since(manifest, settings)
    if as_json:
        body = {
            "since": manifest.taken_at,
            "content_ids": sorted(retracted.content_ids),
            "causes": dict(sorted(retracted.causes.items())),
            "offsets": {str(p): o for p, o in sorted(retracted.offsets.items())},
        }
        sys.stdout.buffer.write(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
        sys.stdout.flush()
        return 0
    for content_id in sorted(retracted.content_ids):
        print(content_id if content_id.isprintable() else ascii(content_id))
    return 0


def _compliance(settings: Settings, command: str, name: str, as_json: bool) -> int:
    """`explain CONTENT_ID` / `subject ACCOUNT_ID`: the answer on stdout; 1 when the topics know nothing of it."""
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        # aiokafka logs each assignment at INFO: lines around the answer with nothing to act on.
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if command == "explain":
        from stream.compliance import explain

        item = asyncio.run(explain.explain(settings, name))
        found, out = item.found, explain.to_json(item) if as_json else explain.render(item).encode("utf-8")
    else:
        from stream.compliance import subject

        account = asyncio.run(subject.subject(settings, name))
        found, out = account.found, subject.to_json(account) if as_json else subject.render(account).encode("utf-8")
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return 0 if found else 1


def _evidence(settings: Settings, args: argparse.Namespace) -> int:
    """`evidence --since DATE --out FILE.html`: the report, with the verifier run in-process; one line on stdout."""
    from pathlib import Path

    from stream.compliance.evidence import make_report, utc_text

    # The reader assigns partitions, and aiokafka logs each assignment at INFO: nothing to act on.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)

    def run_verifier() -> dict[str, object]:
        from stream.verifier.verify import to_json, verify

        report: dict[str, object] = orjson.loads(to_json(asyncio.run(verify(settings))))
        return report

    evidence = make_report(
        settings,
        since=args.since,
        until=args.until,
        out=Path(args.out),
        json_path=Path(args.json) if args.json else None,
        prometheus=args.prometheus,
        figure=args.figure,
        run_verifier=None if args.no_verify else run_verifier,
    )
    period = f"{utc_text(evidence.period.since)} to {utc_text(evidence.period.until)}"
    print(f"{evidence.verdict.title}: the evidence for {period} is in {args.out}", flush=True)
    return 0


def use_event_loop(name: str) -> None:
    """Choose the worker's event loop, before any exists: `uvloop` (default) or `asyncio`.

    As Faust's `mode.loop.use("uvloop")` does, by the event loop policy (set here
    rather than as a side effect of importing mode's module, so it can be undone).
    uvloop's transports and handles are C; at 4,000 events/s each batch makes several
    broker requests and a dozen task switches, and with uvloop the latency p99 was
    lower (docs/benchmarks.md).
    """
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)  # asyncio's default


def _worker(settings: Settings, level: str) -> int:
    tune_malloc()
    tune_collector()
    log.info("memory allocator: %s", allocator())
    import faust

    from stream.runtime.app import build_app
    from stream.runtime.topics import check_layout

    use_event_loop(settings.event_loop)
    asyncio.run(check_layout(settings))
    app, _ = build_app(settings)
    # mode's Worker sets the root logger up again when it starts: in the same format.
    worker = faust.Worker(app, loglevel=level, logging_config=logs.faust_logging_config(level, settings.log_format))
    # No terminal spinner: at a level of warning or above Faust would hang it on the
    # root logger and set that to DEBUG, so every library debug call in the hot path
    # would build a log record (9 % of the worker's CPU once; docs/benchmarks.md).
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def allocator(maps: str | None = None) -> str:
    """The malloc this process runs on: "jemalloc" when it is loaded (JEMALLOC_ENV), else "system".

    Read from the process's mappings (`maps`, by default /proc/self/maps): what the
    dynamic linker loaded, not what the environment asked for (a preload it cannot
    find is skipped with a warning).
    """
    if maps is None:
        try:
            with open("/proc/self/maps", encoding="utf-8") as f:
                maps = f.read()
        except OSError:
            return "system"  # no /proc (macOS): nothing preloaded by us
    return "jemalloc" if "/libjemalloc" in maps else "system"


def tune_malloc() -> None:
    """Keep glibc's malloc from holding on to memory the worker has freed (nothing to do under jemalloc).

    - Arenas capped at two (unless MALLOC_ARENA_MAX says otherwise): glibc gives
      threads that allocate concurrently arenas of their own (up to eight per core)
      and seldom returns their memory.
    - A fixed mmap threshold of 128 KiB (unless GLIBC_TUNABLES or
      MALLOC_MMAP_THRESHOLD_ set one): by default glibc raises the threshold to the
      size of every large block freed, so after RocksDB's first memtable flush its
      2 MiB arena blocks and the fetched record buffers come from the heap, where
      they interleave with long-lived objects and the heap can no longer shrink
      (~10 MiB of resident memory at 1-2M events of the soak; docs/benchmarks.md,
      "Memory").

    Must run before threads start.
    """
    if allocator() == "jemalloc":
        return  # glibc's malloc serves nothing: JEMALLOC_ENV tunes jemalloc
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (musl, macOS): nothing to tune
    if not os.environ.get("MALLOC_ARENA_MAX"):
        m_arena_max = -8  # from glibc's malloc.h
        libc.mallopt(m_arena_max, 2)
    if not os.environ.get("MALLOC_MMAP_THRESHOLD_") and "mmap_threshold" not in os.environ.get("GLIBC_TUNABLES", ""):
        m_mmap_threshold = -3  # from glibc's malloc.h; setting it turns the dynamic threshold off
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)


def tune_collector() -> None:
    """Collect the young generation only once `YOUNG_COLLECTION_THRESHOLD` objects outlive their allocation.

    A batch's objects (its events, decisions and output records: tens of thousands in
    a batch of 5,000 events) live until the batch is performed, then go at once by
    reference counting: the worker makes almost no reference cycles. At Python's 700
    the collector would walk each batch's live objects again and again as they age
    into the older generations, and find nothing; above a batch's live objects it runs
    only when cycles or lasting growth reach the threshold. The older generations keep
    their thresholds; what start-up and recovery build is frozen out of every
    collection (`recovery`). Measured in bench/notes.md, "The collector's young generation".
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


async def _topics(settings: Settings, action: str) -> int:
    from stream.runtime.topics import check_layout, create_topics

    if action == "create":
        for name, outcome in (await create_topics(settings)).items():
            print(f"{name}: {outcome}")
    counts = await check_layout(settings)
    print("layout ok: " + ", ".join(f"{name}={n}" for name, n in counts.items()))
    return 0


async def _generate(settings: Settings, args: argparse.Namespace) -> int:
    from stream.workload.generator import produce

    stats = await produce(
        settings,
        count=args.count,
        rate=args.rate,
        accounts=args.accounts,
        seed=args.seed,
        malformed_share=args.malformed_share,
        # The progress bars write to stderr, which holds only JSON lines under STREAM_LOG_FORMAT=json.
        progress=not args.no_progress and settings.log_format is LogFormat.TEXT,
    )
    print(stats)
    return 0


async def _watch(settings: Settings, interval: float, from_beginning: bool) -> int:
    """Tail the audit log and dead-letter topic; print counts by outcome every interval."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topics.decisions,
        settings.topics.dlq,
        **client_options(settings),
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    counts: Counter[str] = Counter()
    started = time.monotonic()
    last = started
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, records in fetched.items():
                for record in records:
                    counts[_outcome(tp.topic == settings.topics.dlq, record.value)] += 1
            if time.monotonic() - last >= interval:
                last = time.monotonic()
                total = sum(counts.values())
                line = "  ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
                print(f"[{last - started:6.0f}s] total={total}  {line}", flush=True)
    finally:
        await consumer.stop()


def _outcome(is_dlq: bool, value: bytes | None) -> str:
    try:
        data = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return "unreadable"
    if not isinstance(data, dict):
        return "unreadable"
    if is_dlq:
        return f"dlq:{data.get('reason')}"
    if data.get("action") == "retract":
        return f"retract:{data.get('cause')}"
    return str(data.get("reason"))
