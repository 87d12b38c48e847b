"""Rollouts hold their order by themselves: a single `kubectl apply -k` (or a GitOps sync) of
any overlay starts no service pod before the schema is at its image's revision, and the
migrate Job can be recreated by GitOps tools (its pod template is immutable). Also: the feed's
requests cover what it was measured to use."""

from __future__ import annotations

from typing import Any

import pytest

from services.feed.settings import FeedSettings
from shared.db.migrate import main as migrate_main
from tests.conftest import REPO_ROOT
from tests.deploy.kustomize import key
from tests.deploy.manifests import RENDERED, config_maps, one, pod_spec, workloads

GATED = ("dropwatch-feed", "dropwatch-poller", "dropwatch-maintenance")
DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"


def _database_key(container: dict[str, Any]) -> str:
    (var,) = [v for v in container["env"] if v["name"] == "DROPWATCH_DATABASE_URL"]
    ref: str = var["valueFrom"]["secretKeyRef"]["key"]
    return ref


@pytest.mark.parametrize("overlay", sorted(RENDERED))
def test_every_service_pod_waits_for_its_schema_first(overlay: str) -> None:
    docs = RENDERED[overlay]
    gated = {d["metadata"]["name"]: d for d in workloads(docs) if d["metadata"]["name"] in GATED}
    assert sorted(gated) == sorted(GATED), overlay
    for doc in gated.values():
        spec = pod_spec(doc)
        (main,) = spec["containers"]
        (gate,) = spec["initContainers"]
        where = f"{overlay} {key(doc)}"
        command = gate["command"]
        assert command[:4] == ["python", "-m", "shared.db.migrate", "--wait"], where
        timeout = float(command[command.index("--timeout") + 1])
        assert 0 < timeout <= 900, f"{where}: the wait must be bounded"
        # The same image (its head revision is what is waited for) and the same database.
        assert gate["image"] == main["image"], where
        assert _database_key(gate) == _database_key(main), where


def test_the_gate_command_is_one_the_migrate_entry_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = one(RENDERED["prod"], "Deployment", "dropwatch-feed")
    (gate,) = pod_spec(doc)["initContainers"]
    with pytest.raises(SystemExit) as exited:
        migrate_main([*gate["command"][3:], "--help"])
    assert exited.value.code == 0
    assert "--wait" in capsys.readouterr().out


@pytest.mark.parametrize("overlay", sorted(RENDERED))
def test_gitops_tools_recreate_the_migrate_job(overlay: str) -> None:
    job = one(RENDERED[overlay], "Job", "dropwatch-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "Sync"
    assert annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
    assert annotations["kustomize.toolkit.fluxcd.io/force"] == "enabled"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    (migrate,) = pod_spec(job)["containers"]
    assert migrate["command"] == ["python", "-m", "shared.db.migrate"]
    assert "initContainers" not in pod_spec(job), "the migrator must not wait for itself"


def test_deploy_doc_describes_the_one_apply_rollout_and_the_gitops_path() -> None:
    text = " ".join(DEPLOY_DOC.read_text().split())
    assert "kubectl -n $NS delete job dropwatch-migrate --ignore-not-found" in text
    assert "kubectl apply -k $OVERLAY -l 'app.kubernetes.io/component in" not in text
    assert "GitOps (Argo CD, Flux)" in text
    assert "python -m shared.db.migrate --wait" in text
    assert 'psql "$OWNER_URL" -v ON_ERROR_STOP=1 -f deploy/sql/roles.sql' in text


MEASURED_FEED_MIB = 162  # a busy feed replica, about 170 MB (docs/deploy.md, "Scaling")
_UNITS = {"Mi": 1, "Gi": 1024}


def _mib(quantity: str) -> float:
    return float(quantity[:-2]) * _UNITS[quantity[-2:]]


def _millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


@pytest.mark.parametrize("overlay", sorted(RENDERED))
def test_feed_requests_cover_its_measured_use_and_its_cache(overlay: str) -> None:
    docs = RENDERED[overlay]
    (feed,) = pod_spec(one(docs, "Deployment", "dropwatch-feed"))["containers"]
    maps = config_maps(docs)
    env = {k: v for ref in feed["envFrom"] for k, v in maps[ref["configMapRef"]["name"]].items()}
    cache_mib = int(
        env.get("DROPWATCH_CACHE_MAX_MB", FeedSettings.model_fields["cache_max_mb"].default)
    )
    resources = feed["resources"]
    assert _mib(resources["requests"]["memory"]) >= MEASURED_FEED_MIB + cache_mib
    assert _mib(resources["limits"]["memory"]) > _mib(resources["requests"]["memory"])
    # The autoscaler adds a replica before a pod's one core is half used.
    hpa = one(docs, "HorizontalPodAutoscaler", "dropwatch-feed")
    (metric,) = hpa["spec"]["metrics"]
    scale_at = (
        _millicores(resources["requests"]["cpu"])
        * metric["resource"]["target"]["averageUtilization"]
        / 100
    )
    assert 200 <= scale_at <= 500 <= _millicores(resources["limits"]["cpu"])
