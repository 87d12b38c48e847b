"""The poller as a process: health, metrics, polling the simulator, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Engine, text

from tests.conftest import REPO_ROOT, free_port
from tests.waiting import wait_until
from tools.simulator.server import Simulator

pytestmark = pytest.mark.slow  # each test starts processes


def test_poller_process_polls_serves_health_and_metrics_and_stops_on_sigterm(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    metrics_port, health_port = free_port(), free_port()
    with Simulator(venues=60, seed=3, speed=600.0) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
        env.update(
            DROPWATCH_DATABASE_URL=db_url,
            DROPWATCH_RESY_BASE_URL=sim.base_url,
            DROPWATCH_RESY_API_KEY="sekrit-key-123",
            DROPWATCH_COOLDOWN_SECONDS="2",
            DROPWATCH_TICK_SECONDS="0.5",
            DROPWATCH_WINDOW_DAYS="2",
            DROPWATCH_LOG_LEVEL="DEBUG",
        )
        log_path = tmp_path / "poller.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.poller",
                    "--metrics-port",
                    str(metrics_port),
                    "--health-port",
                    str(health_port),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:

                def every_bucket_polled() -> bool:
                    with engine.connect() as conn:
                        polled = conn.execute(
                            text(
                                "SELECT count(*) FROM discovery_buckets"
                                " WHERE last_healthy_poll_at IS NOT NULL"
                            )
                        ).scalar_one()
                    return bool(polled == 4)

                wait_until(
                    every_bucket_polled,
                    lambda: f"a healthy poll of all 4 buckets:\n{log_path.read_text()}",
                )
                with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    for service in ("", "dropwatch.poller"):
                        reply = stub.Check(
                            health_pb2.HealthCheckRequest(service=service), timeout=5
                        )
                        assert reply.status == health_pb2.HealthCheckResponse.SERVING
                body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
                for name in (
                    "dropwatch_poller_poll_duration_seconds_bucket",
                    'dropwatch_poller_fetch_outcomes_total{reason="healthy"}',
                    'dropwatch_poller_upstream_requests_total{status_class="2xx"}',
                    "dropwatch_poller_bucket_last_healthy_poll_timestamp_seconds",
                    'dropwatch_db_pool_size{pool="poller"}',
                    "dropwatch_db_pool_checkout_wait_seconds_bucket",
                ):
                    assert name in body, name
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=20) == 0
                assert time.monotonic() - started < 15
            finally:
                if proc.poll() is None:
                    proc.kill()
        output = log_path.read_text()
        assert "sekrit-key-123" not in output
        assert "poller stopped" in output


def test_poll_once_cli_polls_one_bucket_regardless_of_cooldown(db_url: str) -> None:
    with Simulator(venues=30, seed=5) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
        env.update(
            DROPWATCH_DATABASE_URL=db_url,
            DROPWATCH_RESY_BASE_URL=sim.base_url,
            DROPWATCH_WINDOW_DAYS="2",
        )
        first = subprocess.run(
            [sys.executable, "-m", "cli.main", "poll", "--once"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert first.returncode == 0, first.stderr
        assert "4 bucket(s) polled" in first.stdout
        bucket = first.stdout.split()[0]
        again = subprocess.run(
            [sys.executable, "-m", "cli.main", "poll", "--once", "--bucket", bucket],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith(bucket) and "1 bucket(s) polled" in again.stdout
        missing = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "poll",
                "--once",
                "--bucket",
                "1999-01-01_19:00",
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode == 2 and "does not exist" in missing.stderr
