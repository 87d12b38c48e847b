"""The container image recipe: hadolint-clean, multi-stage, non-root, one image for all.

These read the recipe; `make image-test` (tests/deploy/test_image.py) builds the image and runs
every component from it. The commands the manifests give it are also run here against the
installed project, which needs no image.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
import warnings

import pytest

from tests.conftest import REPO_ROOT
from tests.deploy import tools
from tests.deploy.manifests import COMPONENTS

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def _stages() -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) grouped by stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [tools.hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_build_with_a_slim_python_3_11_base() -> None:
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base and re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base.group(1))
    wheelhouse, builder, runtime = _stages()
    assert wheelhouse[0] == "FROM scratch AS wheelhouse"  # --build-context wheelhouse=DIR
    assert builder[0] == "FROM ${PYTHON_IMAGE} AS builder"
    assert runtime[0] == "FROM ${PYTHON_IMAGE} AS runtime"


def test_builder_installs_the_dependencies_only_never_the_project_or_its_extras() -> None:
    """`pip install .` would also install the `dropwatch` console script, whose cli/ package is
    not shipped; the extras are the development tools."""
    builder = _stages()[1]
    runs = " ".join(i for i in builder if i.startswith("RUN "))
    assert '["project"]["dependencies"]' in runs
    assert 'pip install --no-cache-dir "$@" -r requirements.txt' in runs
    assert "--no-index --find-links /wheels" in runs
    assert not re.search(r"pip install[^&]* \.(\s|\[|$)", runs), runs
    assert "COPY --from=wheelhouse / /wheels/" in builder
    assert "unchecked-hash" in runs  # bytecode stays valid whatever COPY does to file times


def test_runtime_stage_copies_the_venv_runs_as_10001_and_installs_nothing() -> None:
    runtime = _stages()[-1]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert "COPY --from=builder /opt/dropwatch /opt/dropwatch" in runtime
    assert any("PYTHONPATH=/opt/dropwatch" in i for i in runtime if i.startswith("ENV "))
    runs = " ".join(i for i in runtime if i.startswith("RUN "))
    for tool in ("apt-get", "apk", "pip", "gcc", "build-essential"):
        assert tool not in runs, tool
    assert [i for i in runtime if i.startswith("USER ")] == ["USER 10001:10001"]
    assert runtime[-2:] == ['ENTRYPOINT ["python", "-m"]', 'CMD ["services.feed"]']
    assert "--uid 10001" in runs
    assert "compileall" in runs  # the base's standard library, compiled once at build time


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "shared", "services"}
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M))
    sources = {word for group in copied for word in group.split()}
    assert sources <= allowed, sources - allowed


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_the_image_commands_of_the_manifests_exist(
    component: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m MODULE ... --help` as the manifests run it, in-process (runpy is `-m`)."""
    python, flag, module, *args = COMPONENTS[component]["command"]
    assert (python, flag) == ("python", "-m")
    monkeypatch.setattr(sys, "argv", [module, *args, "--help"])
    with warnings.catch_warnings():
        # runpy notes that the module was imported before; harmless for --help.
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(SystemExit) as exited:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
