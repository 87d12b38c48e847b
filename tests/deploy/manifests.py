"""The manifests as the deploy tests see them: every file and overlay loaded once, plus what
each component must run (taken from the code, not from the manifests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.feed.server import SERVICE_NAME as FEED_HEALTH_SERVICE
from services.feed.settings import FeedSettings
from services.maintenance.settings import MaintenanceSettings
from services.poller.app import HEALTH_SERVICE as POLLER_HEALTH_SERVICE
from services.poller.settings import PollerSettings
from shared.settings import Settings
from tests.deploy.kustomize import K8S_DIR, OVERLAYS, Doc, load_docs, manifest_files, render

OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
SECRET_NAME = "dropwatch-secrets"
# Workloads of other projects' images (components/monitoring): locked down like ours, but not
# running the dropwatch image or its settings.
THIRD_PARTY = {"dropwatch-pushgateway"}
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
        "command": ["python", "-m", "shared.db.migrate"],
        "settings": Settings,
        "grpc": None,
    },
}


def _sources() -> dict[str, list[Doc]]:
    sources = {f"file {p.relative_to(K8S_DIR)}": load_docs(p) for p in manifest_files()}
    for overlay in OVERLAYS:
        sources[f"overlay {overlay}"] = render(K8S_DIR / "overlays" / overlay)
    return sources


# Every manifest file on its own and every rendered overlay, by a readable name.
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
    """dropwatch's own workloads (the third-party ones are checked on their own)."""
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS and doc["metadata"]["name"] not in THIRD_PARTY:
            yield doc


def config_maps(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def secret_example() -> dict[str, str]:
    (secret,) = load_docs(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET_NAME
    values: dict[str, str] = secret["stringData"]
    assert all("CHANGE-ME" in v for v in values.values()), "placeholders only"
    return values
