"""A StatefulSet's scale-in told from a restart, so that a pod going for good leaves the group.

A static member that stops sends no LeaveGroup: its partitions wait for it for the
session timeout (30 s), which is what makes a restart free (a rolling update, a pod
deleted, a node drained: the pod comes back under the same name). A scale-in does not
bring it back. The StatefulSet controller lowers `spec.replicas` first and then stops
the pods whose ordinal is at or above it, so at SIGTERM a worker can tell the two
apart: after its drain, it reads its StatefulSet (one GET, which the chart's Role
allows on that StatefulSet alone) and, when its ordinal is no longer below
`spec.replicas` or the StatefulSet is gone or being deleted (`helm uninstall`), removes
its own static member (`members.py`), so its partitions move at once.

Whatever prevents telling (not in a StatefulSet's pod, no service account token, the
API out of reach or refusing, an answer without replicas) leaves the member as it is:
its partitions move after the session timeout, as without this, and a warning says why.
Both steps are bounded (`CHECK_TIMEOUT_SECONDS`, `LEAVE_TIMEOUT_SECONDS`) to stay within
the pod's grace period margin after the drain. `STREAM_LEAVE_ON_SCALE_IN=0` turns it off.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from stream.config import Settings
from stream.errors import ConfigError
from stream.runtime.members import Removal, remove_static_members

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CHECK_TIMEOUT_SECONDS: Final = 5.0
LEAVE_TIMEOUT_SECONDS: Final = 5.0
# A StatefulSet's pod is named `<statefulset>-<ordinal>`.
_POD_NAME: Final = re.compile(r"(?P<set>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)-(?P<ordinal>0|[1-9][0-9]{0,8})")


@dataclass(frozen=True)
class Pod:
    """Where this worker runs: its StatefulSet's API address and names, and how to authenticate."""

    api: str  # https://host:port, or STREAM_KUBERNETES_API (e.g. a local API proxy)
    namespace: str
    statefulset: str
    ordinal: int
    token_file: Path | None
    ca_file: Path | None

    @classmethod
    def from_env(cls, env: Mapping[str, str], account_dir: Path = SERVICE_ACCOUNT_DIR) -> Pod | None:
        """The pod, or None when this is not a StatefulSet's pod with a Kubernetes API to ask."""
        match = _POD_NAME.fullmatch(env.get("HOSTNAME", ""))
        api = env.get("STREAM_KUBERNETES_API", "").strip().rstrip("/")
        if not api and env.get("KUBERNETES_SERVICE_HOST"):
            host = env["KUBERNETES_SERVICE_HOST"]
            host = f"[{host}]" if ":" in host else host
            api = f"https://{host}:{env.get('KUBERNETES_SERVICE_PORT', '443')}"
        if api and not api.startswith(("http://", "https://")):
            raise ConfigError(f"STREAM_KUBERNETES_API={api!r}: expected an http:// or https:// URL")
        namespace = env.get("POD_NAMESPACE", "").strip() or _read(account_dir / "namespace")
        if match is None or not api or not namespace:
            return None
        token = account_dir / "token"
        ca = account_dir / "ca.crt"
        return cls(
            api=api,
            namespace=namespace,
            statefulset=match["set"],
            ordinal=int(match["ordinal"]),
            token_file=token if token.is_file() else None,
            ca_file=ca if ca.is_file() else None,
        )

    @property
    def url(self) -> str:
        """The StatefulSet's URL on the API."""
        ns = urllib.parse.quote(self.namespace, safe="")
        name = urllib.parse.quote(self.statefulset, safe="")
        return f"{self.api}/apis/apps/v1/namespaces/{ns}/statefulsets/{name}"


def going_for_good(ordinal: int, replicas: int | None) -> bool:
    """Whether a pod of this ordinal is stopped for good: the StatefulSet gone (None) or scaled below it."""
    return replicas is None or ordinal >= replicas


class CannotTell(Exception):
    """The StatefulSet's replicas could not be read: the member stays for its session timeout."""


def replicas_of(pod: Pod, timeout: float = CHECK_TIMEOUT_SECONDS) -> int | None:
    """The StatefulSet's `spec.replicas`; None when it is gone or being deleted; CannotTell otherwise."""
    # The scheme is http or https: Pod.from_env refuses any other.
    request = urllib.request.Request(pod.url, headers={"Accept": "application/json"})  # noqa: S310
    if pod.token_file is not None:
        token = _read(pod.token_file)  # read each time: the kubelet rotates it
        if token:
            request.add_header("Authorization", f"Bearer {token}")
    context = None
    if pod.api.startswith("https://"):
        try:
            context = ssl.create_default_context(cafile=str(pod.ca_file) if pod.ca_file else None)
        except (ssl.SSLError, OSError) as exc:
            raise CannotTell(f"the service account's CA is not usable ({exc})") from None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310  # http(s) only
            body = response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None  # the StatefulSet is gone: every pod of it is stopped for good
        raise CannotTell(f"the Kubernetes API answered {exc.code} for the StatefulSet") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException: an answer that is not HTTP, or is cut short.
        raise CannotTell(f"the Kubernetes API is out of reach ({exc!r})") from None
    try:
        document = orjson.loads(body)
        if not isinstance(document, dict):
            raise TypeError("not an object")
        metadata = document.get("metadata", {})
        spec = document.get("spec", {})
        if not isinstance(metadata, dict) or not isinstance(spec, dict):
            raise TypeError("metadata or spec not an object")
        if metadata.get("deletionTimestamp"):
            return None  # being deleted (helm uninstall)
        replicas = spec.get("replicas", 1)  # the API's default
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise CannotTell(f"the StatefulSet's answer is not JSON of one ({exc})") from None
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise CannotTell("the StatefulSet's answer has no spec.replicas")
    return replicas


async def leave_if_scaled_in(settings: Settings, pod: Pod | None) -> bool:
    """After the drain: remove this worker's static member when its pod is stopped for good; whether it did.

    Never raises (but for a cancel): a failure leaves the member for its session timeout and logs why.
    """
    instance_id = settings.group_instance_id
    if not settings.leave_on_scale_in or instance_id is None or pod is None:
        return False
    try:
        replicas = await asyncio.wait_for(asyncio.to_thread(replicas_of, pod), CHECK_TIMEOUT_SECONDS + 1)
    except Exception as exc:  # CannotTell, no answer in time, or a failure unforeseen: never fail the stop
        log.warning(
            "cannot tell a scale-in from a restart (%s): the group keeps this member for its session timeout",
            exc or "no answer in time",
        )
        return False
    if not going_for_good(pod.ordinal, replicas):
        log.info("a restart (ordinal %d, %d replicas): staying a member of the group", pod.ordinal, replicas)
        return False
    try:
        removed = await asyncio.wait_for(remove_static_members(settings, [instance_id]), LEAVE_TIMEOUT_SECONDS)
    except Exception as exc:  # logged: the member then stays for its session timeout
        log.warning("scale-in: could not leave the group (%s): its partitions move after the session timeout", exc)
        return False
    log.info("scale-in: left the group (%s), its partitions move now", removed[instance_id])
    return removed[instance_id] is Removal.REMOVED


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""
