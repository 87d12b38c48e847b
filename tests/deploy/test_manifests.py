"""The Kubernetes manifests: schema-valid, secure on every workload, consistent with the code.

Schemas: Kubernetes 1.30 (strict: unknown fields fail), via the `kubernetes-validate` package.
prometheus-operator kinds (PodMonitor, PrometheusRule) have no core schema; they are checked by
structure here and in test_monitoring.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.feed.server import SERVICE_NAME as FEED_HEALTH_SERVICE
from services.feed.settings import FeedSettings
from services.maintenance.settings import MaintenanceSettings
from services.poller.app import HEALTH_SERVICE as POLLER_HEALTH_SERVICE
from services.poller.settings import PollerSettings
from shared.settings import ENV_PREFIX, Settings, load_settings
from tests.deploy import tools
from tests.deploy.kustomize import (
    BASE_DIR,
    K8S_DIR,
    OVERLAYS,
    Doc,
    base_files,
    key,
    load_docs,
    manifest_files,
    render,
)

KUBERNETES_VERSION = "1.30.0"
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
UID = 10001
SECRET_NAME = "dropwatch-secrets"
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"

# What each component runs, with which settings class and (for servers) which gRPC health
# service its probes must ask for: the names come from the code, not from the manifests.
COMPONENTS: dict[str, dict[str, Any]] = {
    "dropwatch-feed": {
        "command": ["python", "-m", "services.feed"],
        "settings": FeedSettings,
        "grpc": ("grpc", FEED_HEALTH_SERVICE, "DROPWATCH_FEED_PORT"),
    },
    "dropwatch-poller": {
        "command": ["python", "-m", "services.poller"],
        "settings": PollerSettings,
        "grpc": ("health", POLLER_HEALTH_SERVICE, "DROPWATCH_HEALTH_PORT"),
    },
    "dropwatch-maintenance": {
        "command": ["python", "-m", "services.maintenance", "run"],
        "settings": MaintenanceSettings,
        "grpc": None,
    },
    "dropwatch-migrate": {
        "command": ["python", "-m", "cli.main", "migrate"],
        "settings": Settings,
        "grpc": None,
    },
}


def _sources() -> dict[str, list[Doc]]:
    sources = {f"file {p.relative_to(K8S_DIR)}": load_docs(p) for p in manifest_files()}
    for overlay in OVERLAYS:
        sources[f"overlay {overlay}"] = render(K8S_DIR / "overlays" / overlay)
    return sources


SOURCES = _sources()
RENDERED = {name.split()[1]: docs for name, docs in SOURCES.items() if name.startswith("overlay")}
APPLIED = {name: docs for name, docs in SOURCES.items() if name != "file secret.example.yaml"}


def pod_spec(doc: Doc) -> Doc:
    kind = doc["kind"]
    if kind == "Pod":
        return dict(doc["spec"])
    if kind == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(doc["spec"]["template"]["spec"])


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc


def _mentions_containers(node: Any) -> bool:
    if isinstance(node, dict):
        return "containers" in node or any(_mentions_containers(v) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_containers(v) for v in node)
    return False


def _config_maps(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


# --- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_object_is_valid_for_kubernetes_1_30(source: str) -> None:
    checked = 0
    for doc in SOURCES[source]:
        if doc["kind"] in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1", key(doc)
            assert doc["metadata"]["name"] and isinstance(doc["spec"], dict), key(doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{source} {key(doc)}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked or source.endswith("monitoring.yaml")


def test_base_kustomization_lists_every_base_file() -> None:
    listed = load_docs(BASE_DIR / "kustomization.yaml")[0]["resources"]
    assert sorted(listed) == sorted(p.name for p in base_files() if p.name != "kustomization.yaml")


def test_every_manifest_file_is_applied_by_some_overlay_except_the_secret_example() -> None:
    applied = {key(d)[0::2] for docs in RENDERED.values() for d in docs}
    for path in manifest_files():
        if path == SECRET_EXAMPLE:
            continue
        for doc in load_docs(path):
            assert (doc["kind"], doc["metadata"]["name"]) in applied, (path, key(doc))


@pytest.mark.skipif(
    tools.kubectl() is None, reason="kubectl (with built-in kustomize) not installed"
)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_test_renderer_agrees_with_kubectl_kustomize(overlay: str) -> None:
    kubectl = tools.kubectl()
    assert kubectl is not None
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    theirs = sorted((d for d in yaml.safe_load_all(out) if d), key=key)
    ours = sorted(RENDERED[overlay], key=key)
    assert [key(d) for d in ours] == [key(d) for d in theirs]
    for mine, real in zip(ours, theirs, strict=True):
        assert mine == real, key(mine)


# --- security: every workload, wherever it is defined ----------------------------------------


@pytest.mark.parametrize("source", sorted(APPLIED))
def test_every_workload_is_locked_down(source: str) -> None:
    docs = APPLIED[source]
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            # A new kind that carries pods must be taught to pod_spec(), not slip past.
            assert not _mentions_containers(doc), f"unknown workload kind {key(doc)}"
            continue
        where = f"{source} {key(doc)}"
        spec = pod_spec(doc)
        assert spec.get("automountServiceAccountToken") is False, where
        account = spec.get("serviceAccountName")
        assert account and account != "default", where
        assert account in accounts, f"{where}: its ServiceAccount belongs in the same file"
        assert accounts[account].get("automountServiceAccountToken") is False, where
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser") == UID, where
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        containers = spec.get("containers", []) + spec.get("initContainers", [])
        assert containers, where
        for c in containers:
            cwhere = f"{where} container {c['name']}"
            sc = {**pod_sc, **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, cwhere
            assert sc.get("runAsUser") == UID, cwhere
            assert sc.get("readOnlyRootFilesystem") is True, cwhere
            assert sc.get("allowPrivilegeEscalation") is False, cwhere
            assert sc.get("privileged", False) is False, cwhere
            assert sc.get("capabilities") == {"drop": ["ALL"]}, cwhere
            assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, cwhere
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                assert set(resources.get(part, {})) >= {"cpu", "memory"}, f"{cwhere} {part}"
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{cwhere}: /tmp emptyDir"


@pytest.mark.parametrize("source", sorted(APPLIED))
def test_configuration_comes_only_from_config_maps_and_secret_references(source: str) -> None:
    for doc in workloads(APPLIED[source]):
        for c in pod_spec(doc)["containers"]:
            where = f"{source} {key(doc)} {c['name']}"
            for ref in c.get("envFrom", []):
                assert set(ref) == {"configMapRef"}, where
            for var in c.get("env", []):
                assert "value" not in var, f"{where}: {var['name']} is a literal"
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["name"] == SECRET_NAME and ref.get("optional") is not True, where


@pytest.mark.parametrize("source", sorted(APPLIED))
def test_components_run_their_command_and_probe_grpc_health(source: str) -> None:
    docs = APPLIED[source]
    maps = _config_maps([d for ds in APPLIED.values() for d in ds])
    for doc in workloads(docs):
        name = doc["metadata"]["name"]
        assert name in COMPONENTS, f"{key(doc)}: add it to COMPONENTS with its checks"
        expected = COMPONENTS[name]
        (container,) = pod_spec(doc)["containers"]
        assert container["command"] == expected["command"], name
        assert "args" not in container, name
        env = {
            k: v
            for ref in container["envFrom"]
            for k, v in maps[ref["configMapRef"]["name"]].items()
        }
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if expected["grpc"] is None:
            assert not ports, name
            continue
        port_name, health_service, port_var = expected["grpc"]
        assert ports[port_name] == int(env[port_var]), name
        assert ports["metrics"] == int(env["DROPWATCH_METRICS_PORT"]), name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {
                "port": ports[port_name],
                "service": health_service,
            }, f"{name} {probe}"
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == str(ports["metrics"]), name
        assert annotations["prometheus.io/path"] == "/metrics", name
        grace = pod_spec(doc)["terminationGracePeriodSeconds"]
        assert float(env["DROPWATCH_SHUTDOWN_GRACE_SECONDS"]) + 10 <= grace, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlays_pin_a_tagged_image_and_define_no_secret(overlay: str) -> None:
    docs = RENDERED[overlay]
    assert not [d for d in docs if d["kind"] == "Secret"]
    images = {c["image"] for d in workloads(docs) for c in pod_spec(d)["containers"]}
    assert len(images) == 1, images
    (image,) = images
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    assert len(namespaces) == 1
    ns = namespaces[0]["metadata"]
    assert ns["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        ns["name"]
    }


# --- configuration ------------------------------------------------------------------------

CONFIG_FOR = {
    "dropwatch-feed": "dropwatch-feed-config",
    "dropwatch-poller": "dropwatch-poller-config",
    "dropwatch-maintenance": "dropwatch-maintenance-config",
    "dropwatch-migrate": "dropwatch-migrate-config",
}


def _env_of(doc: Doc, maps: dict[str, dict[str, str]]) -> tuple[dict[str, str], list[str]]:
    (container,) = pod_spec(doc)["containers"]
    names = [ref["configMapRef"]["name"] for ref in container["envFrom"]]
    env: dict[str, str] = {}
    for name in names:
        overlap = set(env) & set(maps[name])
        assert not overlap, f"{name} repeats {overlap}"
        env.update(maps[name])
    return env, names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_config_key_is_a_setting_of_its_component_and_loads(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt key would be ignored silently (extra="ignore"): check each one, then load."""
    docs = RENDERED[overlay]
    maps = _config_maps(docs)
    secrets = _secret_example()
    for doc in workloads(docs):
        name = doc["metadata"]["name"]
        cls = COMPONENTS[name]["settings"]
        env, used = _env_of(doc, maps)
        assert used == ["dropwatch-config", CONFIG_FOR[name]], name
        fields = {f"{ENV_PREFIX}{field.upper()}" for field in cls.model_fields}
        assert set(env) <= fields, f"{name}: not settings: {sorted(set(env) - fields)}"
        (container,) = pod_spec(doc)["containers"]
        for var in container.get("env", []):
            assert var["name"] in fields, var["name"]
            env[var["name"]] = secrets[var["valueFrom"]["secretKeyRef"]["key"]]
        for variable in list(os.environ):
            if variable.startswith(ENV_PREFIX):
                monkeypatch.delenv(variable)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        settings = load_settings(cls)
        assert settings.database_url is not None, name


def test_every_config_map_is_used_and_every_secret_key_is_documented() -> None:
    docs = RENDERED["dev"]
    used_maps: set[str] = set()
    used_keys: set[str] = set()
    for doc in workloads(docs):
        for c in pod_spec(doc)["containers"]:
            used_maps |= {ref["configMapRef"]["name"] for ref in c["envFrom"]}
            used_keys |= {v["valueFrom"]["secretKeyRef"]["key"] for v in c.get("env", [])}
    assert used_maps == set(_config_maps(docs))
    assert used_keys == set(_secret_example())
    docs_text = (K8S_DIR.parents[1] / "docs" / "deploy.md").read_text()
    for secret_key in used_keys:
        assert f"`{secret_key}`" in docs_text, secret_key


def _secret_example() -> dict[str, str]:
    (secret,) = load_docs(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET_NAME
    values: dict[str, str] = secret["stringData"]
    assert all("CHANGE-ME" in v for v in values.values()), "placeholders only"
    return values


def test_secret_example_is_in_no_kustomization() -> None:
    for path in K8S_DIR.rglob("kustomization.yaml"):
        assert "secret.example" not in path.read_text(), path


# --- the individual components --------------------------------------------------------------


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_maintenance_cron_job() -> None:
    cron = _one(load_docs(BASE_DIR / "maintenance.yaml"), "CronJob", "dropwatch-maintenance")
    spec = cron["spec"]
    assert spec["schedule"] == "5 7 * * *"
    assert spec["timeZone"] == "America/New_York"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1
    assert job["activeDeadlineSeconds"] > 0
    assert job["ttlSecondsAfterFinished"] > 0
    assert job["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_feed_service_autoscaler_and_disruption_budget() -> None:
    docs = load_docs(BASE_DIR / "feed.yaml")
    deployment = _one(docs, "Deployment", "dropwatch-feed")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"
    service = _one(docs, "Service", "dropwatch-feed")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("grpc", 50051),
        ("metrics", 9102),
    }
    hpa = _one(docs, "HorizontalPodAutoscaler", "dropwatch-feed")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "dropwatch-feed"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = _one(docs, "PodDisruptionBudget", "dropwatch-feed")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_poller_runs_several_replicas_with_a_disruption_budget() -> None:
    docs = load_docs(BASE_DIR / "poller.yaml")
    deployment = _one(docs, "Deployment", "dropwatch-poller")
    assert deployment["spec"]["replicas"] >= 2
    pdb = _one(docs, "PodDisruptionBudget", "dropwatch-poller")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert _one(RENDERED["dev"], "Deployment", "dropwatch-poller")["spec"]["replicas"] == 1
    assert _one(RENDERED["prod"], "Deployment", "dropwatch-poller")["spec"]["replicas"] == 2


def test_selectors_match_their_pods() -> None:
    for docs in RENDERED.values():
        labels = {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs
            if d["kind"] == "Deployment"
        }
        for doc in docs:
            if doc["kind"] == "Service":
                selector = doc["spec"]["selector"]
            elif doc["kind"] in ("PodDisruptionBudget", "Deployment", "PodMonitor"):
                selector = doc["spec"]["selector"]["matchLabels"]
            else:
                continue
            matched = [n for n, pod in labels.items() if selector.items() <= pod.items()]
            assert len(matched) == 1, (key(doc), matched)


def test_first_deploy_phase_selects_namespace_config_and_migrations_only() -> None:
    """docs/deploy.md applies `-l app.kubernetes.io/component in (namespace,config,migrate)`
    first and waits for the migration Job before applying everything else."""
    docs_text = (K8S_DIR.parents[1] / "docs" / "deploy.md").read_text()
    selector = "app.kubernetes.io/component in (namespace,config,migrate)"
    assert selector in docs_text
    for docs in RENDERED.values():
        first = [
            d
            for d in docs
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
            in ("namespace", "config", "migrate")
        ]
        kinds = sorted({d["kind"] for d in first})
        assert kinds == ["ConfigMap", "Job", "Namespace", "ServiceAccount"], kinds
        assert {d["metadata"]["name"] for d in first if d["kind"] == "Job"} == {"dropwatch-migrate"}
        configs = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
        assert configs <= {d["metadata"]["name"] for d in first}


# --- network policies ----------------------------------------------------------------------


def _policies() -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in load_docs(BASE_DIR / "networkpolicy.yaml")}


def test_feed_accepts_calls_only_from_labelled_clients_and_scrapes_from_prometheus() -> None:
    policy = _policies()["dropwatch-feed"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "dropwatch-feed"
    }
    rules = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(rules) == {50051, 9102}
    (clients,) = rules[50051]
    assert clients["podSelector"]["matchLabels"] == {"dropwatch.io/feed-client": "true"}
    (prometheus,) = rules[9102]
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "namespaceSelector" in prometheus


def test_poller_may_reach_only_dns_the_database_and_the_provider() -> None:
    policy = _policies()["dropwatch-poller"]
    assert "Egress" in policy["spec"]["policyTypes"]
    ports = {(p["port"], p["protocol"]) for r in policy["spec"]["egress"] for p in r["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (443, "TCP")}


def test_everything_else_is_denied_by_default() -> None:
    deny = _policies()["dropwatch-default-deny"]["spec"]
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "dropwatch"}
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    for doc in workloads(RENDERED["prod"]):
        labels = (
            doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
            if doc["kind"] == "CronJob"
            else doc["spec"]["template"]["metadata"]["labels"]
        )
        assert labels["app.kubernetes.io/part-of"] == "dropwatch", key(doc)


def test_monitoring_component_only_in_prod() -> None:
    assert not [d for d in RENDERED["dev"] if d["kind"] in OPERATOR_KINDS]
    kinds = sorted(d["kind"] for d in RENDERED["prod"] if d["kind"] in OPERATOR_KINDS)
    assert kinds == ["PodMonitor", "PodMonitor", "PrometheusRule"]


def test_pod_monitors_scrape_a_named_metrics_port_of_their_pods() -> None:
    docs = RENDERED["prod"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"dropwatch-feed", "dropwatch-poller"}
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        (deployment,) = [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {p["name"] for c in pod_spec(deployment)["containers"] for p in c["ports"]}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics", key(monitor)
