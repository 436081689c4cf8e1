"""``--pool HOST:PORT`` and ``--pool ray://HOST:PORT``: joining a Ray cluster started apart (``ray start --head``), as
the README tells a studio to do, with Ray's token authentication on (its default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import pick_free_port, spawn_app

pytest.importorskip("ray", reason="requirements-pool.txt is not installed (./launch.sh --test installs it)")

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """A Ray head on loopback, started with Ray's own command; stopped (with every Ray process here) after."""
    port, client_port = pick_free_port(), pick_free_port()
    started = subprocess.run(
        [str(RAY), "start", "--head", "--port", str(port), "--ray-client-server-port", str(client_port),
         "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
        capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    yield port, client_port
    subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)


# Ray Client's per-client server sometimes misses Ray's own start-up timeout on a loaded 2-core machine (seen once in
# a full run: "Starting Ray client server failed", grpc FutureTimeoutError), so that case runs with --long only.
@pytest.mark.parametrize("how", ["address", pytest.param("ray-client", marks=pytest.mark.long)])
def test_a_front_joins_a_running_cluster_and_gets_its_picture(ray_head, tmp_path, how) -> None:
    port, client_port = ray_head
    address = f"127.0.0.1:{port}" if how == "address" else f"ray://127.0.0.1:{client_port}"
    import conftest

    timeout, conftest.APP_START_TIMEOUT_S = conftest.APP_START_TIMEOUT_S, 180
    try:
        app = spawn_app(tmp_path / how, "--demo", "--pool", address, "--pool-replicas", "1")
    finally:
        conftest.APP_START_TIMEOUT_S = timeout
    try:
        assert "Pool ready: 1 replica(s)" in app.text
        resp = requests.post(f"{app.url}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64,
                                                                   "steps": 2, "seed": 3}, timeout=180)
        assert resp.status_code == 200, resp.text[:1000]
        assert len(resp.json()["images"]) == 1
        assert list((tmp_path / how / "outputs" / "txt2img").rglob("*-3.png"))
    finally:
        assert app.stop(timeout=60) == 0, app.text[-3000:]
