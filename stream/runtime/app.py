"""The composition root: settings -> policy -> engine -> worker, hosted by a Faust app.

Faust owns the process: lifecycle and signals (a SIGTERM drains the batch in hand
and commits it), the web server with `/metrics`, `/healthz` and `/ready`, and
logging. The filter's own loop (`worker.py`) is a Faust service. Faust's
table-browsing pages are disabled: they would expose personal data.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from typing import Any

import faust
import mode
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.config import Settings
from stream.connection import faust_credentials
from stream.core.engine import Engine
from stream.core.policy import load_policy
from stream.core.records import pseudonym_key_id
from stream.core.shadow import load_shadow_policy
from stream.runtime.metrics import Metrics
from stream.runtime.scalein import Pod, leave_if_scaled_in
from stream.runtime.store import configure_memory
from stream.runtime.worker import FilterWorker

log = logging.getLogger(__name__)


def build_app(settings: Settings) -> tuple[faust.App, FilterWorker]:
    """The composition root: policy, metrics, engine and worker, hosted by a Faust app with its web pages."""
    policy = load_policy(settings.policy_path)
    shadow = load_shadow_policy(settings.shadow_policy_path, policy)
    metrics = Metrics.create(policy_version=policy.version, shadow=shadow is not None)
    _announce_pseudonym_key(settings, metrics)
    if shadow is not None:
        log.info(
            "shadow policy %s beside %s in force: its differences go to %s and eligibility_shadow_differences_total, "
            "never to the feed",
            shadow.version,
            policy.version,
            settings.topics.shadow,
        )
    engine = Engine(
        policy,
        settings.pseudonym_key,
        settings.topics,
        item_memory=dt.timedelta(days=settings.item_memory_days),
        shadow=shadow,
    )
    # Before the worker opens a store: every store of the process shares this budget.
    configure_memory(settings.store_memory_mib << 20)
    worker = FilterWorker(settings, engine, metrics)
    pod = Pod.from_env(os.environ)  # a StatefulSet's pod, or None: read once, used at the stop

    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.group_id}-host",
        broker=f"kafka://{settings.bootstrap_servers}",
        # Faust's own Kafka clients are off (the boot strategy below); should a Faust
        # release open one all the same, it connects as the worker's clients do.
        broker_credentials=faust_credentials(settings),
        datadir=str(settings.data_dir / "faust"),
        processing_guarantee="at_least_once",
        web_port=settings.web_port,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_router_enabled=False,
        web_metrics_enabled=False,
        store="memory://",
    )
    # Faust's own Kafka clients stay off: no consumer group, no producer, no topics of
    # its own. The worker's clients do all of the Kafka work. Faust starts this app's
    # services only after its tables' recovery, which waits for its consumer group's
    # assignment; after a kill -9 that group waited for the dead member's session (30 s)
    # before the worker even started, static membership or not.
    app.boot_strategy = BootStrategy(app, enable_kafka=False)

    @app.service
    class FilterService(mode.Service):
        """Runs the filter loop inside the Faust worker's lifecycle."""

        async def on_start(self) -> None:
            await worker.start()
            self.add_future(worker.run())

        async def on_stop(self) -> None:
            # Bounded, so a stuck broker cannot outlast the orchestrator's grace
            # period: a batch cut short is not committed and is replayed on restart.
            try:
                await asyncio.wait_for(worker.stop(), timeout=settings.shutdown_timeout)
            except TimeoutError:
                log.error(
                    "drain did not finish in %.0fs; exiting, the last batch will be replayed", settings.shutdown_timeout
                )
            else:
                # Drained and closed: a pod stopped for good (a scale-in) leaves the group now.
                await leave_if_scaled_in(settings, pod)

    _add_pages(app, worker, metrics)
    return app, worker


def _announce_pseudonym_key(settings: Settings, metrics: Metrics) -> None:
    """Log the pseudonym key's id; with the public development key, a loud warning and the gauge at 1."""
    log.info("pseudonym key id %s", pseudonym_key_id(settings.pseudonym_key))
    if settings.uses_dev_pseudonym_key:
        log.warning(
            "PSEUDONYMS ARE NOT PRIVATE: the public development key is in use (STREAM_DEV_MODE=1, no key set); "
            "anyone can reverse the feed's author_pseudonym. Never run this on real data: set "
            "STREAM_PSEUDONYM_KEY_FILE"
        )
        metrics.dev_pseudonym_key.set(1)


def _add_pages(app: faust.App, worker: FilterWorker, metrics: Metrics) -> None:
    """The web pages: `/metrics` for Prometheus, `/healthz` (alive) and `/ready`."""

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def liveness(web: Any, request: Any) -> Any:
        return web.json({"status": "alive"})

    @app.page("/ready")
    async def readiness(web: Any, request: Any) -> Any:
        status, body = worker.readiness()
        return web.json(body, status=status)
