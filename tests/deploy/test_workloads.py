"""Every workload is locked down, runs its component's command and probes its gRPC health;
each component has the shape it needs (replicas, autoscaler, disruption budget, schedule)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.kustomize import BASE_DIR, key, load_docs
from tests.deploy.manifests import (
    APPLIED,
    COMPONENTS,
    RENDERED,
    SECRET_NAME,
    WORKLOAD_KINDS,
    config_maps,
    one,
    pod_spec,
    workloads,
)

UID = 10001


def _mentions_containers(node: Any) -> bool:
    if isinstance(node, dict):
        return "containers" in node or any(_mentions_containers(v) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_containers(v) for v in node)
    return False


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
    maps = config_maps([d for ds in APPLIED.values() for d in ds])
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


# --- the individual components --------------------------------------------------------------


def test_maintenance_cron_job() -> None:
    cron = one(load_docs(BASE_DIR / "maintenance.yaml"), "CronJob", "dropwatch-maintenance")
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
    deployment = one(docs, "Deployment", "dropwatch-feed")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"
    service = one(docs, "Service", "dropwatch-feed")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("grpc", 50051),
        ("metrics", 9102),
    }
    hpa = one(docs, "HorizontalPodAutoscaler", "dropwatch-feed")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "dropwatch-feed"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget", "dropwatch-feed")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_poller_runs_several_replicas_with_a_disruption_budget() -> None:
    docs = load_docs(BASE_DIR / "poller.yaml")
    deployment = one(docs, "Deployment", "dropwatch-poller")
    assert deployment["spec"]["replicas"] >= 2
    pdb = one(docs, "PodDisruptionBudget", "dropwatch-poller")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert one(RENDERED["dev"], "Deployment", "dropwatch-poller")["spec"]["replicas"] == 1
    assert one(RENDERED["prod"], "Deployment", "dropwatch-poller")["spec"]["replicas"] == 2


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
