"""Network policies: the feed takes calls only from labelled clients, the poller reaches only
DNS, the database and the provider, and everything else is denied by default."""

from __future__ import annotations

from tests.deploy.kustomize import BASE_DIR, Doc, key, load_docs
from tests.deploy.manifests import RENDERED, workloads


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
