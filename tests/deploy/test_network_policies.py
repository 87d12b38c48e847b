"""Network policies: the feed takes calls only from labelled clients, the poller reaches only
DNS, the database and the provider, and everything else is denied by default."""

from __future__ import annotations

import ipaddress

import pytest

from tests.deploy.kustomize import BASE_DIR, OVERLAYS, Doc, key, load_docs
from tests.deploy.manifests import RENDERED, one, pod_spec, workloads

_ANYWHERE = [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]


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
    # Only namespaces an administrator allowed, not any namespace.
    assert clients["namespaceSelector"]["matchLabels"] == {"dropwatch.io/feed-clients": "allowed"}
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


def _external_ports(policy: Doc, address: str) -> set[int]:
    """Ports the policy lets the pod reach at `address` through an ipBlock rule."""
    ip = ipaddress.ip_address(address)
    ports: set[int] = set()
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to", _ANYWHERE):
            block = peer.get("ipBlock")
            if block is None or ip.version != ipaddress.ip_network(block["cidr"]).version:
                continue
            inside = ip in ipaddress.ip_network(block["cidr"])
            if inside and not any(ip in ipaddress.ip_network(c) for c in block.get("except", [])):
                ports |= {p["port"] for p in rule["ports"]}
    return ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_poller_egress_is_https_outside_the_cluster_and_the_database_only(overlay: str) -> None:
    policy = one(RENDERED[overlay], "NetworkPolicy", "dropwatch-poller")
    for address in ("93.184.216.34", "2606:2800:220:1::1"):
        assert _external_ports(policy, address) == {443}, address
    for address in (
        "10.96.0.10",  # a cluster service
        "172.20.1.1",
        "192.168.1.10",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.169.254",  # the cloud metadata service
        "fd00::1",
        "fe80::1",
    ):
        assert _external_ports(policy, address) == set(), address
    (database,) = [r for r in policy["spec"]["egress"] if r["ports"][0]["port"] == 5432]
    (peer,) = database["to"]
    assert peer["podSelector"]["matchLabels"] == {"dropwatch.io/database": "true"}


@pytest.mark.parametrize(("overlay", "reflection"), [("prod", "false"), ("dev", "true")])
def test_reflection_is_off_in_prod_and_on_in_dev(overlay: str, reflection: str) -> None:
    config = one(RENDERED[overlay], "ConfigMap", "dropwatch-feed-config")
    assert config["data"]["DROPWATCH_FEED_REFLECTION"] == reflection


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_feed_requires_caller_tokens(overlay: str) -> None:
    (container,) = pod_spec(one(RENDERED[overlay], "Deployment", "dropwatch-feed"))["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["DROPWATCH_FEED_AUTH_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "feed-auth-secret" and not ref.get("optional")
