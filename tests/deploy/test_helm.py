"""The Helm chart (deploy/helm/eligibility-filter): linted, rendered and validated, without a cluster.

No Kubernetes cluster runs here, so nothing is installed: `helm lint --strict` and
`helm template` run for several value sets, and every rendered object of a built-in
kind is validated against the Kubernetes OpenAPI schemas of the oldest version the
chart supports (its kubeVersion, 1.29) and the newest that the PyPI package
`kubernetes-validate` ships (1.37), strictly (an unknown field is an error). The
custom resources (ServiceMonitor, PrometheusRule, KafkaTopic, KafkaUser) are not in
those schemas: they are checked here structurally (apiVersion, kind, the fields their
operators require, and what they must say), which proves less than an install would.

Helm is built from the Go module proxy by scripts/helm.sh (cached outside git).
Locally a helm that cannot be built skips these tests loudly; under CI=true it is a
failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stream.config import Settings
from stream.runtime import scalein
from stream.runtime.topics import topic_specs
from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "eligibility-filter"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
APP = ROOT / "stream" / "runtime" / "app.py"
CONFIG = ROOT / "stream" / "config.py"

# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.29", "1.37")
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
    ("kafka.strimzi.io/v1beta2", "KafkaUser"),
}
IMAGE_UID = 10001

SASL_CREDENTIALS = {
    "saslUsername": "filter",
    "saslPasswordSecret": {"name": "filter-kafka", "key": "password"},
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    # The defaults with only what has no default: the pseudonym key and, for the default
    # SASL_SSL, each program's SASL user and password Secret.
    "defaults": {
        "pseudonymKey": {"existingSecret": "pseudonym"},
        "worker": {"credentials": SASL_CREDENTIALS},
        "verifier": {"credentials": {**SASL_CREDENTIALS, "saslUsername": "verifier"}},
    },
    # Strimzi topics and users (SCRAM), the whole monitoring, the optional principals,
    # a policy file and a renamed input topic.
    "strimzi-monitoring": {
        "pseudonymKey": {"existingSecret": "pseudonym"},
        "policy": 'version = "test-1"\n',
        "topics": {"names": {"content": "upstream.content.events"}},
        "strimzi": {
            "enabled": True,
            "topics": {"extraConfig": {"min.insync.replicas": "2"}},
            "users": {"trainer": {"enabled": True}, "objectionProducer": {"enabled": True}},
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True},
        "dashboards": {"enabled": True},
    },
    # Any Kafka over SASL_SSL with every credential from explicit Secrets: CA, client
    # certificate and key, SASL password; a longer drain.
    "sasl-ssl-secrets": {
        "pseudonymKey": {
            "existingSecret": "pseudonym",
            "key": "hmac",
            "previousSecret": {"name": "old", "key": "hmac"},
        },
        "kafka": {
            "bootstrapServers": "kafka-0.example:9094",
            "sasl": {"mechanism": "SCRAM-SHA-256"},
            "tls": {"caSecret": {"name": "kafka-ca", "key": "ca.pem"}},
        },
        "worker": {
            "shutdownTimeoutSeconds": 90,
            "credentials": {
                **SASL_CREDENTIALS,
                "tlsClientSecret": {"name": "filter-cert", "certKey": "tls.crt", "keyKey": "tls.key"},
            },
        },
        "verifier": {"credentials": {**SASL_CREDENTIALS, "saslUsername": "verifier"}},
    },
    # Strimzi with mutual TLS users over SSL.
    "strimzi-tls": {
        "pseudonymKey": {"existingSecret": "pseudonym"},
        "kafka": {"securityProtocol": "SSL"},
        "strimzi": {"enabled": True, "users": {"authentication": "tls"}, "topics": {"skip": ["content"]}},
    },
    # The canary objectors on, with Strimzi users (SCRAM), its ServiceMonitor and a prefix of its own.
    "canary": {
        "pseudonymKey": {"existingSecret": "pseudonym"},
        "strimzi": {"enabled": True},
        "canary": {"enabled": True, "prefix": "synthetic-canary-", "deadlineSeconds": 2.5},
        "serviceMonitor": {"enabled": True},
    },
    # No verifier, no disruption budget, plaintext and the development key (a demo cluster).
    "verifier-off": {
        "devMode": True,
        "kafka": {"securityProtocol": "PLAINTEXT", "bootstrapServers": "kafka:9092"},
        "verifier": {"enabled": False},
        "worker": {"replicas": 1, "podDisruptionBudget": {"enabled": False}},
        "serviceMonitor": {"enabled": True},
    },
}


@pytest.fixture(scope="module")
def helm() -> str:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "helm.sh")], capture_output=True, text=True, timeout=1200, check=False
    )
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not os.access(path, os.X_OK):
        missing("HELM", "Helm chart tests", f"scripts/helm.sh could not build helm:\n{proc.stderr[-2000:]}")
    return path


def _run_helm(helm: str, verb: str, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        f.flush()
        args = [helm, verb, "--strict", str(CHART)] if verb == "lint" else [helm, verb, "test", str(CHART)]
        return subprocess.run(
            [*args, "--namespace", "filter", "-f", f.name], capture_output=True, text=True, timeout=120, check=False
        )


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def _render(helm: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    proc = _run_helm(helm, "template", values)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def rendered(helm: str, name: str) -> list[dict[str, Any]]:
    if name not in _RENDERED:
        _RENDERED[name] = _render(helm, VALUE_SETS[name])
    return _RENDERED[name]


def _all_rendered(helm: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in VALUE_SETS:
        for obj in rendered(helm, name):
            yield name, obj


def _one(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{kind} *{name_suffix}: {[o['metadata']['name'] for o in found]}"
    return found[0]


def _of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _pod_templates(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"] for o in objs if o["kind"] in ("StatefulSet", "Deployment")]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _worker(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(objs, "StatefulSet")


def _worker_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = _worker(objs)["spec"]["template"]["spec"]["containers"]
    return containers[0]


# -- lint, render, schemas ---------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_lint_strict_passes(helm: str, name: str) -> None:
    proc = _run_helm(helm, "lint", VALUE_SETS[name])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_every_builtin_object_validates_against_kubernetes_schemas(helm: str, name: str) -> None:
    objs = rendered(helm, name)
    assert objs
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']} invalid for {version}: {exc.message}")


def test_kubernetes_validate_rejects_an_unknown_field() -> None:
    # The validation above is strict: a misspelt field is an error, not ignored.
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "x"},
        "spec": {"maxUnavailabel": 1, "selector": {"matchLabels": {"a": "b"}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, KUBERNETES_VERSIONS[-1], strict=True)


def test_chart_renders_only_builtin_kinds_or_the_checked_custom_resources(helm: str) -> None:
    kinds = {(o["apiVersion"], o["kind"]) for _, o in _all_rendered(helm)}
    builtin = ("apps/", "policy/", "rbac.authorization.k8s.io/")
    custom = {k for k in kinds if "." in k[0].split("/")[0] and not k[0].startswith(builtin)}
    assert custom == CRD_KINDS, "every custom resource kind the chart renders is checked below, and each is rendered"


def test_chart_servicemonitors_select_a_rendered_service_port(helm: str) -> None:
    for name in ("strimzi-monitoring", "verifier-off"):
        objs = rendered(helm, name)
        monitors = _of_kind(objs, "ServiceMonitor")
        assert monitors, name
        services = _of_kind(objs, "Service")
        for sm in monitors:
            selector = sm["spec"]["selector"]["matchLabels"]
            matched = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
            assert len(matched) == 1, (name, sm["metadata"]["name"])
            ports = {p["name"] for p in matched[0]["spec"]["ports"]}
            for endpoint in sm["spec"]["endpoints"]:
                assert endpoint["port"] in ports
                assert endpoint["path"] == "/metrics"
                assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
                assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"job"}
            assert sm["metadata"]["labels"].get("release") == (
                "kube-prometheus-stack" if name != "verifier-off" else None
            )


def test_chart_job_labels_are_the_jobs_the_rules_and_prometheus_config_select(helm: str) -> None:
    objs = rendered(helm, "strimzi-monitoring")
    jobs = {}
    for component in ("worker", "verifier"):
        (relabel,) = _one(objs, "ServiceMonitor", f"-{component}")["spec"]["endpoints"][0]["relabelings"]
        jobs[component] = relabel["replacement"]
    in_rules = set(re.findall(r'job="([^"]+)"', RULES.read_text()))
    assert jobs["worker"] in in_rules and in_rules <= set(jobs.values())
    # The compose stack's scrape jobs are the same names.
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert set(jobs.values()) <= {job["job_name"] for job in scrape}


def test_chart_prometheusrule_groups_equal_deploy_rules(helm: str) -> None:
    rule = _one(rendered(helm, "strimzi-monitoring"), "PrometheusRule")
    groups = rule["spec"]["groups"]
    assert groups == yaml.safe_load(RULES.read_text())["groups"]
    for group in groups:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("record" in r) != ("alert" in r) and r["expr"]


def test_chart_prometheusrule_runbook_links_get_the_base_url(helm: str) -> None:
    base = "https://git.example/eligibility-filter/blob/main"
    values = _merge(VALUE_SETS["strimzi-monitoring"], {"prometheusRule": {"runbookBaseUrl": base + "/"}})
    groups = _one(_render(helm, values), "PrometheusRule")["spec"]["groups"]
    source = yaml.safe_load(RULES.read_text())["groups"]
    for group, original in zip(groups, source, strict=True):
        for rule, before in zip(group["rules"], original["rules"], strict=True):
            url = before.get("annotations", {}).get("runbook_url")
            if url is not None:
                assert rule["annotations"]["runbook_url"] == f"{base}/{url}"
            rule.get("annotations", {}).pop("runbook_url", None)
            before.get("annotations", {}).pop("runbook_url", None)
    assert groups == source, "nothing but the runbook links changes"


def test_chart_dashboard_configmaps_equal_dashboards_and_carry_the_sidecar_label(helm: str) -> None:
    maps = [
        cm
        for cm in _of_kind(rendered(helm, "strimzi-monitoring"), "ConfigMap")
        if "-dashboard-" in cm["metadata"]["name"]
    ]
    boards = sorted((ROOT / "dashboards").glob("*.json"))
    assert len(maps) == len(boards) >= 2
    shown = {}
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        shown.update(cm["data"])
    assert {n: json.loads(t) for n, t in shown.items()} == {b.name: json.loads(b.read_text()) for b in boards}


def test_chart_kafkatopics_are_the_topic_specs(helm: str) -> None:
    objs = rendered(helm, "strimzi-monitoring")
    topics = {t["spec"]["topicName"]: t for t in _of_kind(objs, "KafkaTopic")}
    specs = {s.name: s.configs for s in topic_specs(Settings())}
    renamed = {"content.events": "upstream.content.events"}
    assert set(topics) == {renamed.get(n, n) for n in specs}
    for name, configs in specs.items():
        topic = topics[renamed.get(name, name)]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "my-cluster"
        assert topic["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", topic["metadata"]["name"])
        assert topic["spec"]["partitions"] == 12 and topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"] == {**configs, "min.insync.replicas": "2"}
        assert all(isinstance(v, str) for v in topic["spec"]["config"].values())


def test_chart_kafkatopics_leave_out_skipped_topics(helm: str) -> None:
    names = {t["spec"]["topicName"] for t in _of_kind(rendered(helm, "strimzi-tls"), "KafkaTopic")}
    assert "content.events" not in names and "accounts.profiles" in names


STRIMZI_OPERATIONS = {"Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction", "AlterConfigs"}
STRIMZI_OPERATIONS |= {"DescribeConfigs", "IdempotentWrite", "All"}


def _acls(user: dict[str, Any]) -> dict[tuple[str, str, str], set[str]]:
    assert user["spec"]["authorization"]["type"] == "simple"
    out: dict[tuple[str, str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        assert res["type"] in ("topic", "group", "cluster", "transactionalId")
        assert res["patternType"] in ("literal", "prefix")
        assert set(acl["operations"]) <= STRIMZI_OPERATIONS
        out[(res["type"], res["name"], res["patternType"])] = set(acl["operations"])
    return out


# The README's principals (its "Secured Kafka" table) and the chart's KafkaUser of each.
README_PRINCIPALS = {
    "worker": "worker",
    "verifier": "verifier",
    "trainer": "trainer",
    "objection form": "objections",
    "canary": "canary",
}


def _readme_acls() -> dict[str, dict[tuple[str, str, str], set[str]]]:
    """The README's ACL table per chart user, as the chart grants it (Read and Write with Describe)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Secured Kafka" in text, "the README has no Secured Kafka section with the ACL table"
    section = text.split("## Secured Kafka", 1)[1].split("\n## ", 1)[0]
    out: dict[str, dict[tuple[str, str, str], set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[1] not in ("Topic", "Group"):
            continue
        principal, resource_type, names, operations = cells
        user = out.setdefault(README_PRINCIPALS[principal], {})
        for name in re.findall(r"`([^`]+)`", names):
            user[(resource_type.lower(), name, "literal")] = {o.strip() for o in operations.split(",")} | {"Describe"}
    return out


def test_chart_kafkausers_grant_exactly_the_readme_acls(helm: str) -> None:
    objs = _of_kind(rendered(helm, "strimzi-tls"), "KafkaUser")
    values = {
        "strimzi": {"users": {"trainer": {"enabled": True}, "objectionProducer": {"enabled": True}}},
        "canary": {"enabled": True},
    }
    all_users = _render(helm, _merge(VALUE_SETS["strimzi-tls"], values))
    users = {
        u["metadata"]["name"].removeprefix("test-eligibility-filter-"): u for u in _of_kind(all_users, "KafkaUser")
    }
    assert {u["metadata"]["name"] for u in objs} == {
        "test-eligibility-filter-worker",
        "test-eligibility-filter-verifier",
    }
    readme = _readme_acls()
    assert set(users) == set(readme) == set(README_PRINCIPALS.values())
    for name, user in users.items():
        assert user["spec"]["authentication"]["type"] == "tls"
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "my-cluster"
        granted = _acls(user)
        if name == "trainer":  # the README: "plus Read on its own consumer group"
            assert granted.pop(("group", "training-", "prefix")) == {"Read", "Describe"}
        assert granted == readme[name], name
    assert all(ops <= {"Read", "Describe"} for ops in _acls(users["verifier"]).values())


def test_chart_kafkausers_follow_renamed_topics(helm: str) -> None:
    users = {u["metadata"]["name"]: u for u in _of_kind(rendered(helm, "strimzi-monitoring"), "KafkaUser")}
    assert len(users) == 4
    for user in users.values():
        names = {res[1] for res in _acls(user)}
        assert "content.events" not in names
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    worker = _acls(users["test-eligibility-filter-worker"])
    assert worker[("topic", "upstream.content.events", "literal")] == {"Read", "Describe"}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_chart_strimzi_users_are_the_programs_credentials(helm: str) -> None:
    objs = rendered(helm, "strimzi-monitoring")
    for kind, component in (("StatefulSet", "worker"), ("Deployment", "verifier")):
        pod = _one(objs, kind)["spec"]["template"]["spec"]
        env = _env(pod["containers"][0])
        assert env["KAFKA_SASL_USERNAME"] == f"test-eligibility-filter-{component}"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["kafka-sasl"]["secret"]["secretName"] == f"test-eligibility-filter-{component}"
        assert volumes["kafka-ca"]["secret"]["secretName"] == "my-cluster-cluster-ca-cert"
    tls = _worker(rendered(helm, "strimzi-tls"))["spec"]["template"]["spec"]
    assert {v["name"]: v for v in tls["volumes"]}["kafka-client"]["secret"][
        "secretName"
    ] == "test-eligibility-filter-worker"
    assert "KAFKA_SASL_USERNAME" not in _env(tls["containers"][0])


# -- what the pods must be -------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_pods_run_non_root_read_only_without_privileges(helm: str, name: str) -> None:
    templates = _pod_templates(rendered(helm, name))
    assert len(templates) == {"verifier-off": 1, "canary": 3}.get(name, 2)
    for template in templates:
        pod = template["spec"]
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == sc["runAsGroup"] == sc["fsGroup"] == IMAGE_UID
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        # Only the workers mount a token: it reads their own StatefulSet at SIGTERM (below).
        is_worker = template["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
        assert pod["automountServiceAccountToken"] is is_worker
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            csc = container["securityContext"]
            assert csc["readOnlyRootFilesystem"] is True
            assert csc["allowPrivilegeEscalation"] is False
            assert csc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]
            for mount in container["volumeMounts"]:
                if mount["mountPath"].startswith("/etc/"):
                    assert mount["readOnly"] is True


def test_chart_user_is_the_images_numeric_user() -> None:
    user = re.search(r"^USER (\d+)(?::(\d+))?\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None, "the Dockerfile's USER is not numeric: runAsNonRoot cannot check a name"
    assert int(user.group(1)) == IMAGE_UID
    assert user.group(2) is None or int(user.group(2)) == IMAGE_UID
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == values["podSecurityContext"]["runAsGroup"] == IMAGE_UID


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_grace_period_exceeds_the_shutdown_timeout(helm: str, name: str) -> None:
    pod = _worker(rendered(helm, name))["spec"]["template"]["spec"]
    timeout = int(_env(pod["containers"][0])["STREAM_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > timeout
    assert timeout == VALUE_SETS[name].get("worker", {}).get("shutdownTimeoutSeconds", 30)


def test_chart_worker_state_on_a_volume_claim_and_static_membership(helm: str) -> None:
    sts = _worker(rendered(helm, "defaults"))
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    container = _worker_container(rendered(helm, "defaults"))
    env = _env(container)
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[claim["metadata"]["name"]] == "/data"
    assert env["STREAM_DATA_DIR"] == "/data"
    assert env["STREAM_GROUP_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}  # one pod at a time
    assert sts["spec"]["serviceName"] == _one(rendered(helm, "defaults"), "Service", "-headless")["metadata"]["name"]
    pdb = _one(rendered(helm, "defaults"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert container["command"] + container["args"] == ["python", "-m", "stream", "worker"]


def test_chart_workers_may_read_their_statefulset_and_nothing_else(helm: str) -> None:
    objects = rendered(helm, "defaults")
    sts = _worker(objects)
    pod = sts["spec"]["template"]["spec"]
    account = _one(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False  # mounted by the worker's pod alone
    (role,) = [o for o in objects if o["kind"] == "Role"]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["statefulsets"],
            "resourceNames": [sts["metadata"]["name"]],
            "verbs": ["get"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("ServiceAccount", account["metadata"]["name"])]
    env = _env(pod["containers"][0])
    assert Settings.from_env(
        {"STREAM_DEV_MODE": "1", "STREAM_LEAVE_ON_SCALE_IN": env["STREAM_LEAVE_ON_SCALE_IN"]}
    ).leave_on_scale_in
    # The worker's pod is named <statefulset>-<ordinal>: what scalein.Pod reads as its StatefulSet.
    assert scalein.Pod.from_env(
        {"HOSTNAME": sts["metadata"]["name"] + "-2", "STREAM_KUBERNETES_API": "https://api", "POD_NAMESPACE": "ns"},
        ROOT / "no-service-account",
    ) == scalein.Pod("https://api", "ns", sts["metadata"]["name"], 2, None, None)


def test_chart_without_the_scale_in_leave_mounts_no_token_and_grants_nothing(helm: str) -> None:
    values = {"devMode": True, "kafka": {"securityProtocol": "PLAINTEXT"}, "worker": {"leaveGroupOnScaleIn": False}}
    objects = _render(helm, values)
    pod = _worker(objects)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert not [o for o in objects if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    env = _env(pod["containers"][0])
    assert not Settings.from_env(
        {"STREAM_DEV_MODE": "1", "STREAM_LEAVE_ON_SCALE_IN": env["STREAM_LEAVE_ON_SCALE_IN"]}
    ).leave_on_scale_in


def _pages() -> set[str]:
    return set(re.findall(r'@app\.page\("([^"]+)"\)', APP.read_text()))


def test_chart_worker_processes_become_the_setting(helm: str) -> None:
    assert _env(_worker_container(rendered(helm, "defaults")))["STREAM_WORKER_PROCESSES"] == "1"
    values = {
        "devMode": True,
        "kafka": {"securityProtocol": "PLAINTEXT"},
        "worker": {"processes": 4, "resources": {"requests": {"cpu": "4000m", "memory": "2Gi"}}},
    }
    processes = _env(_worker_container(_render(helm, values)))["STREAM_WORKER_PROCESSES"]
    assert Settings.from_env({"STREAM_DEV_MODE": "1", "STREAM_WORKER_PROCESSES": processes}).worker_processes == 4


def test_chart_store_memory_becomes_the_setting(helm: str) -> None:
    assert _env(_worker_container(rendered(helm, "defaults")))["STREAM_STORE_MEMORY_MIB"] == "96"
    values = {"devMode": True, "kafka": {"securityProtocol": "PLAINTEXT"}, "worker": {"storeMemoryMiB": 384}}
    mib = _env(_worker_container(_render(helm, values)))["STREAM_STORE_MEMORY_MIB"]
    assert Settings.from_env({"STREAM_DEV_MODE": "1", "STREAM_STORE_MEMORY_MIB": mib}).store_memory_mib == 384


def test_chart_worker_probes_use_pages_the_app_serves(helm: str) -> None:
    container = _worker_container(rendered(helm, "defaults"))
    paths = {
        probe: container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert paths == {"startupProbe": "/healthz", "readinessProbe": "/ready", "livenessProbe": "/healthz"}
    assert set(paths.values()) <= _pages()
    (port,) = container["ports"]
    assert all(container[p]["httpGet"]["port"] == port["name"] for p in paths)
    assert int(_env(container)["STREAM_WEB_PORT"]) == port["containerPort"] == Settings().web_port


def test_chart_verifier_runs_the_verify_command_on_its_port(helm: str) -> None:
    deployment = _one(rendered(helm, "defaults"), "Deployment", "-verifier")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    help_text = subprocess.run(
        [sys.executable, "-m", "stream", "verify", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert container["args"][0] == "verify"
    for arg in container["args"][1:]:
        assert arg.split("=")[0] in help_text
    assert "--port=6067" in container["args"]
    assert container["ports"][0]["containerPort"] == 6067
    assert deployment["spec"]["replicas"] == 1


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_env_names_are_settings_the_program_reads(helm: str, name: str) -> None:
    known = set(re.findall(r'"((?:STREAM|KAFKA)_[A-Z_]+)"', CONFIG.read_text()))
    for template in _pod_templates(rendered(helm, name)):
        for container in template["spec"]["containers"]:
            assert set(_env(container)) <= known, f"{name}: variables stream/config.py never reads"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_secret_files_are_mounted_where_the_variables_point(helm: str, name: str) -> None:
    for template in _pod_templates(rendered(helm, name)):
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            for var, value in _env(container).items():
                if not var.endswith(("_FILE", "_PATH")) or var == "STREAM_DATA_DIR":
                    continue
                directory, _, filename = value.rpartition("/")
                volume = volumes[mounts[directory]]
                source = volume.get("secret") or volume["configMap"]
                if "items" in source:
                    assert filename in {item["path"] for item in source["items"]}, (name, var)
                else:
                    assert filename == "policy.toml", (name, var)
                if "secret" in volume:
                    assert volume["secret"]["defaultMode"] == 0o440


def test_chart_sasl_ssl_secrets_reach_every_variable(helm: str) -> None:
    objs = rendered(helm, "sasl-ssl-secrets")
    env = _env(_worker_container(objs))
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
    assert env["KAFKA_SASL_USERNAME"] == "filter"
    for var in ("KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE"):
        assert env[var].startswith("/etc/eligibility-filter/")
    assert env["KAFKA_SSL_CHECK_HOSTNAME"] == "1"
    assert env["STREAM_PSEUDONYM_KEY_FILE"] == "/etc/eligibility-filter/pseudonym/key"
    assert "STREAM_DEV_MODE" not in env and "STREAM_PSEUDONYM_KEY" not in env
    volumes = {v["name"]: v["secret"] for v in _worker(objs)["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert volumes["pseudonym-key"]["items"] == [{"key": "hmac", "path": "key"}]
    assert volumes["kafka-ca"] == {
        "secretName": "kafka-ca",
        "defaultMode": 0o440,
        "items": [{"key": "ca.pem", "path": "ca.crt"}],
    }
    assert {i["path"] for i in volumes["kafka-client"]["items"]} == {"tls.crt", "tls.key"}
    verifier_env = _env(_one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert verifier_env["KAFKA_SASL_USERNAME"] == "verifier"
    # After a rotation the verifier, and only it, reads the previous key too.
    assert verifier_env["STREAM_PSEUDONYM_PREVIOUS_KEY_FILE"] == "/etc/eligibility-filter/pseudonym-previous/key"
    assert "STREAM_PSEUDONYM_PREVIOUS_KEY_FILE" not in env
    assert "KAFKA_SSL_CERT_FILE" not in verifier_env


def test_chart_settings_the_workers_read_are_valid_for_stream_config(helm: str) -> None:
    # The worker's environment as rendered, with the secret files made here, is accepted by Settings.
    objs = rendered(helm, "sasl-ssl-secrets")
    env = {k: v for k, v in _env(_worker_container(objs)).items() if isinstance(v, str)}
    with tempfile.TemporaryDirectory() as tmp:
        for var in ("KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE"):
            path = Path(tmp) / var
            path.write_text("secret-material")
            env[var] = str(path)
        key = Path(tmp) / "key"
        key.write_bytes(b"k" * 32)
        env["STREAM_PSEUDONYM_KEY_FILE"] = str(key)
        settings = Settings.from_env(env)
    assert settings.shutdown_timeout == 90
    assert settings.kafka_security.sasl_username == "filter"
    assert str(settings.data_dir) == "/data"


def test_chart_renamed_topic_reaches_worker_and_verifier(helm: str) -> None:
    objs = rendered(helm, "strimzi-monitoring")
    for template in _pod_templates(objs):
        env = _env(template["spec"]["containers"][0])
        assert env["STREAM_TOPIC_CONTENT_EVENTS"] == "upstream.content.events"
        renames = {k: v for k, v in env.items() if k.startswith("STREAM_TOPIC_")}
        assert Settings.from_env({"STREAM_DEV_MODE": "1", **renames}).topics.content == "upstream.content.events"


def test_chart_policy_is_a_configmap_both_programs_read(helm: str) -> None:
    objs = rendered(helm, "strimzi-monitoring")
    cm = _one(objs, "ConfigMap", "-policy")
    assert cm["data"]["policy.toml"].strip() == 'version = "test-1"'
    for template in _pod_templates(objs):
        assert _env(template["spec"]["containers"][0])["STREAM_POLICY_PATH"].endswith("/policy.toml")
        assert template["metadata"]["annotations"]["checksum/policy"]


# -- bad values get a clear error ------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "pseudonymKey.existingSecret"),
        ({"pseudonymKey": {"existingSecret": "p"}}, "worker.credentials.saslUsername"),
        ({"devMode": True, "kafka": {"securityProtocol": "SASL"}}, "/kafka/securityProtocol"),
        (
            {"devMode": True, "kafka": {"securityProtocol": "PLAINTEXT"}, "worker": {"replicas": 13}},
            "worker.replicas=13 exceeds topics.partitions=12",
        ),
        (
            {"devMode": True, "kafka": {"securityProtocol": "PLAINTEXT"}, "worker": {"logFormat": "xml"}},
            "/worker/logFormat",
        ),
        (
            {"devMode": True, "kafka": {"securityProtocol": "PLAINTEXT"}, "worker": {"processes": 5}},
            "worker.replicas=3 x worker.processes=5 exceeds topics.partitions=12",
        ),
        (
            {"devMode": True, "kafka": {"securityProtocol": "PLAINTEXT"}, "worker": {"processes": 2}},
            "worker.processes=2 needs worker.resources.requests.cpu of at least 2 (one core per process), not 1",
        ),
        (
            {
                "devMode": True,
                "kafka": {"securityProtocol": "PLAINTEXT"},
                "worker": {"processes": 2, "resources": {"requests": {"cpu": "1500m"}}},
            },
            "worker.processes=2 needs worker.resources.requests.cpu of at least 2 (one core per process), not 1500m",
        ),
    ],
)
def test_chart_bad_values_fail_with_a_message_naming_the_value(helm: str, values: dict[str, Any], message: str) -> None:
    proc = _run_helm(helm, "template", values)
    assert proc.returncode != 0
    assert message in proc.stderr


# -- the chart's copies ----------------------------------------------------------------


def _sync_chart() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_chart", ROOT / "scripts" / "sync_chart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _differences() -> list[str]:
    diff: list[str] = _sync_chart().differences()
    return diff


def test_chart_copies_equal_deploy_dashboards_and_topic_specs() -> None:
    assert _differences() == [], "the chart's files/ differ from their sources: run `make chart`"


def test_chart_copies_cover_rules_dashboards_and_topics() -> None:
    files = CHART / "files"
    assert (files / "rules.yml").read_bytes() == RULES.read_bytes()
    assert sorted(p.name for p in (files / "dashboards").glob("*.json")) == sorted(
        p.name for p in (ROOT / "dashboards").glob("*.json")
    )
    topics = yaml.safe_load((files / "topics.yaml").read_text())["topics"]
    assert [t["name"] for t in topics] == [s.name for s in topic_specs(Settings())]


def test_chart_canary_is_off_by_default(helm: str) -> None:
    objs = rendered(helm, "defaults")
    assert not [o for o in objs if o["metadata"]["name"].endswith("-canary")]


def test_chart_canary_runs_the_canary_command_without_the_pseudonym_key(helm: str) -> None:
    from stream.compliance.canary import canary_settings

    objs = rendered(helm, "canary")
    deployment = _one(objs, "Deployment", "-canary")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    help_text = subprocess.run(
        [sys.executable, "-m", "stream", "canary", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert container["args"][0] == "canary"
    for arg in container["args"][1:]:
        assert arg.split("=")[0] in help_text
    assert "--port=6068" in container["args"] and "--deadline=2.5" in container["args"]
    assert container["ports"][0]["containerPort"] == 6068
    env = _env(container)
    assert env["KAFKA_SASL_USERNAME"] == "test-eligibility-filter-canary"
    # The canary never pseudonymises: no key in its environment or its volumes, and it starts without one.
    assert not [k for k in env if k.startswith("STREAM_PSEUDONYM_")]
    assert "pseudonym-key" not in {v["name"] for v in pod["volumes"]}
    plain = {k: v for k, v in env.items() if isinstance(v, str) and not k.startswith("KAFKA_")}
    assert canary_settings(plain).canary_prefix == "synthetic-canary-"
    # Scraped as the job the compose stack's Prometheus and the dashboards use.
    (relabel,) = _one(objs, "ServiceMonitor", "-canary")["spec"]["endpoints"][0]["relabelings"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert relabel["replacement"] == "eligibility-canary" in {job["job_name"] for job in scrape}
    service = _one(objs, "Service", "-canary")
    assert service["metadata"]["labels"]["eligibility-filter/metrics"] == "canary"
    # Its principal: Write on the three inputs, Read on the feed and the retractions (the README's table).
    user = _one(objs, "KafkaUser", "-canary")
    assert _acls(user) == _readme_acls()["canary"]
