"""Load the Kubernetes manifests and render kustomizations without a cluster or a kustomize binary.

`render()` implements exactly the kustomize features deploy/k8s uses: `resources` (files and
directories), `components` (whose own kustomization may only list `resources`), `namespace`,
`images`, `replicas` and `patches` given as inline JSON 6902 operations on a target kind and name.
Any other field fails loudly, so a manifest change that needs more cannot pass silently;
`test_manifests.py` checks the result against `kubectl kustomize` where kubectl is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO_ROOT

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
BASE_DIR = K8S_DIR / "base"
OVERLAYS = ("dev", "prod")

Doc = dict[str, Any]

_SUPPORTED = {
    "Kustomization": {"apiVersion", "kind", "namespace", "resources", "components", "images"}
    | {"replicas", "patches"},
    "Component": {"apiVersion", "kind", "resources", "patches"},
}
# Kinds the namespace transformer leaves alone (the cluster-scoped ones we could meet).
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
_SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet"}


def load_docs(path: Path) -> list[Doc]:
    """Every non-empty YAML document in a file."""
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def _kustomization(directory: Path) -> Doc:
    doc = load_docs(directory / "kustomization.yaml")[0]
    kind = doc.get("kind", "Kustomization")
    unknown = set(doc) - _SUPPORTED[kind]
    if unknown:
        raise NotImplementedError(f"{directory}: kustomize fields {sorted(unknown)} not supported")
    return doc


def _load_resources(directory: Path, entries: list[str]) -> list[Doc]:
    docs: list[Doc] = []
    for entry in entries:
        path = (directory / entry).resolve()
        docs.extend(render(path) if path.is_dir() else load_docs(path))
    return docs


def render(directory: Path) -> list[Doc]:
    """The objects `kubectl kustomize directory` would print (order aside)."""
    k = _kustomization(directory)
    docs = copy.deepcopy(_load_resources(directory, k.get("resources", [])))
    for component in k.get("components", []):
        component_dir = (directory / component).resolve()
        ck = _kustomization(component_dir)
        if ck.get("kind") != "Component":
            raise ValueError(f"{component_dir} is not a kustomize Component")
        docs.extend(copy.deepcopy(_load_resources(component_dir, ck.get("resources", []))))
        for patch in ck.get("patches", []):  # a component patches what it was added to
            _apply_patch(docs, patch)
    for patch in k.get("patches", []):
        _apply_patch(docs, patch)
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in _CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for doc in docs:
            _set_image(doc, image)
    for replicas in k.get("replicas", []):
        targets = [
            d for d in docs if d["kind"] in _SCALABLE and d["metadata"]["name"] == replicas["name"]
        ]
        if not targets:
            raise ValueError(f"replicas: no workload named {replicas['name']}")
        for doc in targets:
            doc["spec"]["replicas"] = replicas["count"]
    return docs


def _set_image(node: Any, image: Doc) -> None:
    if isinstance(node, list):
        for item in node:
            _set_image(item, image)
        return
    if not isinstance(node, dict):
        return
    for key in ("containers", "initContainers"):
        for container in node.get(key, []):
            name, tag = _split_image(container["image"])
            if name == image["name"]:
                new_tag = image.get("newTag", tag)
                new_name = image.get("newName", name)
                container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
    for value in node.values():
        _set_image(value, image)


def _split_image(ref: str) -> tuple[str, str | None]:
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
        return name, tag
    return ref, None


def _apply_patch(docs: list[Doc], patch: Doc) -> None:
    if set(patch) != {"target", "patch"} or set(patch["target"]) - {"kind", "name"}:
        raise NotImplementedError(f"only inline JSON 6902 patches on kind+name: {patch}")
    target = patch["target"]
    matches = [
        d
        for d in docs
        if d["kind"] == target.get("kind", d["kind"])
        and d["metadata"]["name"] == target.get("name", d["metadata"]["name"])
    ]
    if not matches:
        raise ValueError(f"patch target not found: {target}")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise NotImplementedError("only JSON 6902 patches (a list of operations)")
    for doc in matches:
        for op in operations:
            _json_patch(doc, op)


def _json_patch(doc: Doc, op: Doc) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent: Any = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op["op"] == "add":
            parent.insert(index, op["value"])
        elif op["op"] == "replace":
            parent[index] = op["value"]
        elif op["op"] == "remove":
            del parent[index]
        else:
            raise NotImplementedError(op["op"])
        return
    if op["op"] == "replace" and last not in parent:
        raise KeyError(f"replace of missing path {op['path']}")
    if op["op"] in ("add", "replace"):
        parent[last] = op["value"]
    elif op["op"] == "remove":
        del parent[last]
    else:
        raise NotImplementedError(op["op"])


def key(doc: Doc) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def base_files() -> list[Path]:
    return sorted(BASE_DIR.glob("*.yaml"))


def manifest_files() -> list[Path]:
    """Every YAML file of object manifests under deploy/k8s (kustomization files excluded)."""
    return sorted(p for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")
