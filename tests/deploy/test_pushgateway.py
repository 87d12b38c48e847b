"""The monitoring component's Pushgateway keeps its memory across restarts (persistence on a
volume), the maintenance run pushes to it, and only that run and Prometheus reach it."""

from __future__ import annotations

from tests.deploy.manifests import RENDERED, config_maps, one, pod_spec


def test_the_pushgateway_persists_to_a_volume() -> None:
    docs = RENDERED["prod"]
    deployment = one(docs, "Deployment", "dropwatch-pushgateway")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    image = container["image"]
    assert image.startswith("prom/pushgateway:v") and not image.endswith(":latest")
    args = dict(a.split("=", 1) for a in container["args"])
    data_file = args["--persistence.file"]
    (mount,) = [m for m in container["volumeMounts"] if data_file.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert args["--persistence.interval"] == "1m"


def test_the_maintenance_run_pushes_to_it_and_may_reach_it() -> None:
    docs = RENDERED["prod"]
    url = config_maps(docs)["dropwatch-maintenance-config"]["DROPWATCH_PUSHGATEWAY_URL"]
    service = one(docs, "Service", "dropwatch-pushgateway")
    (port,) = service["spec"]["ports"]
    assert url == f"http://{service['metadata']['name']}:{port['port']}"
    egress = one(docs, "NetworkPolicy", "dropwatch-maintenance-pushgateway")["spec"]
    assert egress["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "dropwatch-maintenance"
    }
    (rule,) = egress["egress"]
    assert rule["to"][0]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    ingress = one(docs, "NetworkPolicy", "dropwatch-pushgateway")["spec"]
    (allowed,) = ingress["ingress"]
    sources = [f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for f in allowed["from"]]
    assert sorted(sources) == ["dropwatch-maintenance", "prometheus"]
    assert "egress" not in ingress


def test_without_the_component_the_external_pushgateway_is_used() -> None:
    url = config_maps(RENDERED["dev"])["dropwatch-maintenance-config"]["DROPWATCH_PUSHGATEWAY_URL"]
    assert url == "http://pushgateway.monitoring.svc:9091"
    assert not [d for d in RENDERED["dev"] if d["metadata"]["name"] == "dropwatch-pushgateway"]
