"""Configuration: every ConfigMap key is a setting of the component that reads it (a misspelt
one would be ignored silently), every map is used and every secret key is documented."""

from __future__ import annotations

import os

import pytest

from shared.settings import ENV_PREFIX, load_settings
from tests.deploy.kustomize import K8S_DIR, OVERLAYS, Doc
from tests.deploy.manifests import (
    COMPONENTS,
    RENDERED,
    config_maps,
    pod_spec,
    secret_example,
    workloads,
)

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
    maps = config_maps(docs)
    secrets = secret_example()
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
    assert used_maps == set(config_maps(docs))
    assert used_keys == set(secret_example())
    docs_text = (K8S_DIR.parents[1] / "docs" / "deploy.md").read_text()
    for secret_key in used_keys:
        assert f"`{secret_key}`" in docs_text, secret_key
