"""The Kubernetes manifests render and validate: every file and overlay is schema-valid,
applied by some overlay, rendered as `kubectl kustomize` would, and pins one tagged image.

Schemas: Kubernetes 1.30 (strict: unknown fields fail), via the `kubernetes-validate` package.
prometheus-operator kinds (PodMonitor, PrometheusRule) have no core schema; they are checked by
structure here and in test_monitoring.py. The workloads' security and commands are in
test_workloads.py, their configuration in test_configuration.py, the network policies in
test_network_policies.py.
"""

from __future__ import annotations

import re
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.deploy import tools
from tests.deploy.kustomize import (
    BASE_DIR,
    K8S_DIR,
    OVERLAYS,
    base_files,
    key,
    load_docs,
    manifest_files,
)
from tests.deploy.manifests import (
    OPERATOR_KINDS,
    RENDERED,
    SECRET_EXAMPLE,
    SOURCES,
    pod_spec,
    workloads,
)

KUBERNETES_VERSION = "1.30.0"


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


def test_secret_example_is_in_no_kustomization() -> None:
    for path in K8S_DIR.rglob("kustomization.yaml"):
        assert "secret.example" not in path.read_text(), path


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


def test_monitoring_component_only_in_prod() -> None:
    assert not [d for d in RENDERED["dev"] if d["kind"] in OPERATOR_KINDS]
    kinds = sorted(d["kind"] for d in RENDERED["prod"] if d["kind"] in OPERATOR_KINDS)
    assert kinds == ["PodMonitor", "PodMonitor", "PodMonitor", "PrometheusRule"]


def test_pod_monitors_scrape_a_named_metrics_port_of_their_pods() -> None:
    docs = RENDERED["prod"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {
        "dropwatch-feed",
        "dropwatch-poller",
        "dropwatch-pushgateway",
    }
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
