"""The simulator as a server: counters, concurrency, stopping, running as a process."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.tools.simulating import (
    HEADERS,
    REPO,
    SEARCH,
    FakeClock,
    body,
    http,
    search,
)
from tools.simulator import faults
from tools.simulator.server import Simulator

# -- control endpoints, counters, lifecycle -------------------------------------------------


def test_control_endpoints(sim: Simulator, client: httpx.Client) -> None:
    with http(sim.base_url, headers={}) as human:  # no browser headers needed
        assert human.get("/_sim/health").json() == {"ok": True, "venues": 300}
        added = human.post(
            "/_sim/faults",
            json={"kind": "rate_limit", "count": 2, "retry_after": 3, "match": {"page": 1}},
        )
        assert added.status_code == 200 and added.json()["queued"][0]["count"] == 2
        assert human.post("/_sim/faults", json={"kind": "teapot"}).status_code == 400
        assert human.post("/_sim/faults", content=b"nope").status_code == 400

        limited = search(client)
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
        assert human.delete("/_sim/faults").json() == {"ok": True}
        assert search(client).status_code == 200

        assert human.post("/_sim/faults", json={"kind": "auth", "default": True}).status_code == 200
        assert [search(client).status_code for _ in range(2)] == [401, 401]
        assert human.get("/_sim/faults").json()["default"]["kind"] == "auth"
        human.delete("/_sim/faults")
        assert search(client).status_code == 200

        assert human.get("/nowhere").status_code == 404
        assert human.get(SEARCH).status_code == 405


def test_request_count_and_log(sim: Simulator, client: httpx.Client) -> None:
    search(client, party_size=4)
    client.post(SEARCH, content=b"{broken")
    with http(sim.base_url, headers={}) as bare:
        assert bare.post(SEARCH, json=body(party_size=6)).status_code == 412
    client.get("/_sim/health")

    assert sim.request_count == 3, "search requests only, whatever their answer"
    assert sim.requests == [body(party_size=4), body(party_size=6)], "every parseable body"

    lower_case_headers = {k.lower(): v for k, v in HEADERS.items()}
    for i in range(1005):
        sim.handle("POST", SEARCH, lower_case_headers, json.dumps({"n": i}).encode())
    assert len(sim.requests) == 1000
    assert sim.requests[-1] == {"n": 1004}
    assert sim.request_count == 1008


def test_concurrent_requests_are_all_counted(sim: Simulator) -> None:
    def poll() -> None:
        with http(sim.base_url) as c:
            for _ in range(5):
                assert c.post(SEARCH, json=body(per_page=5)).status_code == 200

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sim.request_count == 20


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("resy-simulator")]


def test_stop_closes_the_port_and_joins_every_thread(clock: FakeClock) -> None:
    sim = Simulator(venues=20, clock=clock)
    url = sim.start(port=0)
    port = int(url.rsplit(":", 1)[1])
    assert url == f"http://127.0.0.1:{port}" and port > 0

    with http(url) as idle:
        assert idle.post(SEARCH, json=body()).status_code == 200  # leaves a keep-alive open
        sim.faults.add(faults.LATENCY, delay_s=30)
        sleeper = threading.Thread(target=lambda: _swallow(url))
        sleeper.start()
        while sim.request_count < 2:  # the sleeper's request has arrived
            time.sleep(0.005)
        time.sleep(0.02)  # and is now inside its latency fault
        started = time.monotonic()
        sim.stop()
        assert time.monotonic() - started < 2, "stop must not wait for keep-alives or faults"
        # The idle keep-alive is still open on the client side: its server thread must be gone.
        assert _server_threads() == []
        sleeper.join(timeout=5)

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    sim.stop()  # idempotent


def _swallow(url: str) -> None:
    try:
        with http(url, timeout=10) as c:
            c.post(SEARCH, json=body())
    except httpx.HTTPError:
        pass


def test_context_manager_starts_and_stops(clock: FakeClock) -> None:
    with Simulator(venues=10, clock=clock) as sim:
        assert httpx.get(sim.base_url + "/_sim/health", verify=False).json() == {
            "ok": True,
            "venues": 10,
        }
        with pytest.raises(RuntimeError):
            sim.start()
    assert _server_threads() == []
    with pytest.raises(RuntimeError):
        _ = sim.base_url


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_module_runs_as_a_process_and_stops_cleanly(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.simulator", "--port", "0", "--venues", "30"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"simulator listening on (http://127\.0\.0\.1:\d+)$", line.strip())
        assert match, line
        health = httpx.get(match.group(1) + "/_sim/health", timeout=5, verify=False)
        assert health.json() == {"ok": True, "venues": 30}
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
