"""A real Prometheus scrapes a running feed and poller and loads the alert rules.

The feed and the poller run in-process against a migrated test database (the poller polls the
simulator); Prometheus (`/usr/bin/prometheus` from Debian's `prometheus` package) runs as a
subprocess on a free loopback port with a 1 s scrape interval and its data in a temporary
directory. Everything is asked through Prometheus' HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from pydantic import SecretStr

from services.feed.server import start_feed
from services.feed.settings import FeedSettings
from services.poller.app import run_poller
from services.poller.settings import PollerSettings
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from shared.metrics_http import serve_metrics
from tests.conftest import free_port
from tests.deploy import tools
from tests.deploy.test_monitoring import RULES
from tests.waiting import wait_until_async
from tools.simulator.server import Simulator

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def _feed(db_url: str) -> AsyncIterator[int]:
    """A feed server plus its /metrics, after one JustOpened call; yields the metrics port."""
    settings = FeedSettings(
        database_url=SecretStr(db_url),
        feed_port=0,
        metrics_port=0,
        page_token_secret=SecretStr("e2e-" + "0" * 32),
    )
    feed = await start_feed(settings, db_url)
    metrics = serve_metrics(feed.registry, 0, addr="127.0.0.1")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{feed.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            await stub.JustOpened(feed_pb2.JustOpenedRequest(), timeout=10)
        yield metrics.port
    finally:
        metrics.stop()
        await feed.stop(0)


@contextlib.asynccontextmanager
async def _poller(db_url: str, sim: Simulator) -> AsyncIterator[int]:
    port = free_port()
    settings = PollerSettings(
        database_url=SecretStr(db_url),
        resy_base_url=sim.base_url,
        metrics_port=port,
        health_port=0,
        window_days=1,
        cooldown_seconds=2,
        tick_seconds=0.5,
        requests_per_second=1000,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_poller(settings, db_url, stop))
    try:
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


@contextlib.contextmanager
def _prometheus(tmp_path: Path, targets: dict[str, int]) -> Any:
    binary = tools.prometheus_tool("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in targets.items()
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_prometheus_scrapes_feed_and_poller_and_loads_the_rules(
    db_url: str, tmp_path: Path
) -> None:
    tools.prometheus_tool("prometheus")
    with Simulator(venues=20, seed=5) as sim:
        async with _feed(db_url) as feed_port, _poller(db_url, sim) as poller_port:
            targets = {"dropwatch-feed": feed_port, "dropwatch-poller": poller_port}
            with _prometheus(tmp_path, targets) as (url, log_path):
                async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                    await _check(http, log_path, targets)


async def _check(http: httpx.AsyncClient, log_path: Path, targets: dict[str, int]) -> None:
    async def ready() -> bool:
        try:
            return (await http.get("/-/ready")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_until_async(ready, lambda: f"Prometheus to start:\n{log_path.read_text()}")

    async def targets_up() -> dict[str, str] | None:
        active = (await http.get("/api/v1/targets")).json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        return health if health == dict.fromkeys(targets, "up") else None

    await wait_until_async(targets_up, "both targets to be up")

    async def query(expr: str) -> list[dict[str, Any]]:
        body = (await http.get("/api/v1/query", params={"query": expr})).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def pools() -> set[str] | None:
        found = {r["metric"]["pool"] for r in await query("dropwatch_db_pool_size")}
        return found if found == {"feed", "poller"} else None

    await wait_until_async(pools, "dropwatch_db_pool_size of both services")
    # Every method's series exists from the start (at zero); the one called has counts.
    buckets = await query("grpc_server_handling_seconds_bucket")
    assert buckets and {r["metric"]["grpc_method"] for r in buckets} == {
        "JustOpened",
        "StillOpen",
        "ListChanges",
        "WatchDrops",
    }
    called = await query('grpc_server_handling_seconds_count{grpc_method="JustOpened"} > 0')
    assert len(called) == 1
    assert {r["metric"]["job"] for r in buckets} == {"dropwatch-feed"}
    assert all(float(r["value"][1]) >= 0 for r in buckets)

    async def fresh_buckets() -> list[dict[str, Any]]:
        return await query("dropwatch_poller_bucket_last_healthy_poll_timestamp_seconds")

    await wait_until_async(fresh_buckets, "a healthy poll recorded by the poller")

    async def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = (await http.get("/api/v1/rules")).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = await wait_until_async(rules_evaluated, "every alert rule to evaluate without error")
    expected = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert [r["name"] for r in rules] == expected

    # And promtool accepts what the running services really serve.
    promtool = tools.prometheus_tool("promtool")
    async with httpx.AsyncClient(timeout=5) as plain:
        for job, port in targets.items():
            text = (await plain.get(f"http://127.0.0.1:{port}/metrics")).text
            checked = subprocess.run(
                [promtool, "check", "metrics"], input=text, capture_output=True, text=True
            )
            assert checked.returncode == 0, (job, checked.stdout + checked.stderr)
