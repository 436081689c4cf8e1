"""``--pool``: a local Ray cluster of two CPU replicas (one thread each) behind one UI and API, as a person starts
it (``app.py --demo --pool auto --pool-replicas 2``), driven through the A1111 API and in Chromium.

One app serves the whole module (starting Ray and two replicas takes about 20 s on 2 cores). The tests run in file
order on it: parallel throughput first (on a quiet pool), then pixels, routing, Stop, a replica killed mid-job, the UI.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import AppProcess, spawn_app
from PIL import Image

from pipelines.request import GenerationRequest, Result

pytest.importorskip("ray", reason="requirements-pool.txt is not installed (./launch.sh --test installs it)")

POOL_START_TIMEOUT_S = 180
SECOND = "second copy"  # a second checkpoint name (the demo checkpoint under another name), for the routing test
# A request whose time is the denoising loop's CPU work (the demo UNet is tiny: many steps; a small picture, so that
# the PNG encoding the API answer needs in the front process is a small share)
HEAVY = {"prompt": "a lighthouse", "width": 512, "height": 512, "steps": 150, "sampler_name": "Euler",
         "cfg_scale": 7, "seed": 5}


@pytest.fixture(scope="module")
def pool_app(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("pool_app")
    demo_checkpoint = _demo_checkpoint()
    (workdir / "models" / "checkpoints").mkdir(parents=True)
    shutil.copyfile(demo_checkpoint, workdir / "models" / "checkpoints" / f"{SECOND}.safetensors")
    import conftest

    timeout, conftest.APP_START_TIMEOUT_S = conftest.APP_START_TIMEOUT_S, POOL_START_TIMEOUT_S
    try:
        app = spawn_app(workdir, "--demo", "--pool", "auto", "--pool-replicas", "2",
                        "--checkpoint", demo_checkpoint.stem)
    finally:
        conftest.APP_START_TIMEOUT_S = timeout
    yield app
    assert app.stop(timeout=60) == 0, app.text[-3000:]


def _demo_checkpoint() -> Path:
    from pipelines.demo import ensure_demo_models
    from pipelines.settings import Settings

    root = Path(ensure_demo_models(Settings().cache_dir))
    return next((root / "checkpoints").glob("*.safetensors"))


def sdapi(app: AppProcess, route: str) -> str:
    return f"{app.url}/sdapi/v1/{route}"


def txt2img(app: AppProcess, **fields: Any) -> dict[str, Any]:
    resp = requests.post(sdapi(app, "txt2img"), json=fields, timeout=240)
    assert resp.status_code == 200, resp.text[:2000]
    return resp.json()


def pixels(body: dict[str, Any], index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][index]))).convert("RGB"))


def pool_report(app: AppProcess) -> list[dict[str, Any]]:
    report = requests.get(sdapi(app, "progress"), params={"skip_current_image": "true"}, timeout=30).json()["pool"]
    assert report is not None, "the progress answer has no pool"
    return report


def wait_until_running(app: AppProcess, timeout: float = 60) -> dict[str, Any]:
    """The replica running a job, once that job has made a step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = requests.get(sdapi(app, "progress"), params={"skip_current_image": "true"}, timeout=30).json()
        busy = [replica for replica in progress["pool"] if replica["job"]]
        if busy and progress["state"]["sampling_step"] >= 1:
            return busy[0]
        time.sleep(0.1)
    pytest.fail("no job reached its first step on a replica")


def in_parallel(app: AppProcess, bodies: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """Post the txt2img bodies at once; the wall time and the answers."""
    answers: list[Any] = [None] * len(bodies)

    def post(index: int) -> None:
        answers[index] = txt2img(app, **bodies[index])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, answers


# --------------------------------------------------------------------------------------------- tests


def test_the_app_says_the_pool_is_up_with_two_replicas(pool_app) -> None:
    assert "Pool ready: 2 replica(s), 1 CPU thread(s) each." in pool_app.text
    assert len(pool_report(pool_app)) == 2


def test_two_requests_run_on_two_replicas_in_parallel(pool_app) -> None:
    in_parallel(pool_app, [HEAVY, HEAVY])  # both replicas load the checkpoint
    work = {**HEAVY, "n_iter": 2}  # seconds of CPU work, so that the pool's own polling is a small share
    started = time.perf_counter()
    txt2img(pool_app, **work)
    one = time.perf_counter() - started
    two, answers = in_parallel(pool_app, [work, {**work, "seed": 6}])
    print(f"pool of 2 replicas, 1 thread each: one request {one:.2f} s, two at once {two:.2f} s ({two / one:.2f}x)")
    assert one > 0.5, "the request is too light to tell parallel from serial"
    assert two < 1.5 * one, f"two requests took {two:.2f} s against {one:.2f} s for one: not in parallel"
    assert not np.array_equal(pixels(answers[0]), pixels(answers[1]))
    report = pool_report(pool_app)
    assert all(replica["jobs_done"] >= 2 for replica in report), report


def test_the_same_seed_gives_the_same_pixels_as_without_a_pool(pool_app, tmp_path) -> None:
    body = {"prompt": "a red boat", "negative_prompt": "blurry", "width": 64, "height": 96, "steps": 3,
            "sampler_name": "Euler a", "cfg_scale": 6, "seed": 1234, "batch_size": 2}
    pooled = txt2img(pool_app, **body)
    single = single_process_run(tmp_path, GenerationRequest.create(
        prompt="a red boat", negative_prompt="blurry", width=64, height=96, steps=3, sampler="Euler a",
        cfg_scale=6, seed=1234, batch_size=2, checkpoint=_demo_checkpoint().stem))
    for index in range(2):
        assert np.array_equal(pixels(pooled, index), np.asarray(single.images[index].convert("RGB")))
    for pooled_text, single_text in zip(json.loads(pooled["info"])["infotexts"], single.infotexts, strict=True):
        assert pooled_text == single_text


def single_process_run(tmp_path: Path, request: GenerationRequest) -> Result:
    """The request on a plain ``PipelineManager`` in this process, with one CPU thread as each replica has (fp32
    sums in another thread count may differ in the last bit)."""
    from pipelines.demo import ensure_demo_models
    from pipelines.manager import PipelineManager
    from pipelines.registry import ModelRegistry
    from pipelines.settings import Settings

    settings = Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", demo=True, threads=1)
    registry = ModelRegistry(settings.models_dir, settings.cache_dir,
                             extra_dirs=(ensure_demo_models(settings.cache_dir),))
    import torch

    threads = torch.get_num_threads()
    manager = PipelineManager(settings, registry)
    try:
        return manager.run(request)
    finally:
        manager.close()
        torch.set_num_threads(threads)  # the thread count is the process's: give the other tests theirs back


def test_the_front_process_writes_the_pictures_with_their_infotext(pool_app) -> None:
    body = txt2img(pool_app, prompt="a saved picture", width=64, height=64, steps=2, seed=77)
    saved = sorted((pool_app.workdir / "outputs" / "txt2img").rglob("*-77.png"))
    assert saved, "the picture is not in the front's outputs folder"
    assert Image.open(saved[-1]).info["parameters"] == json.loads(body["info"])["infotexts"][0]


def test_a_repeated_checkpoint_goes_to_the_replica_that_holds_it(pool_app) -> None:
    body = {"prompt": "routing", "width": 64, "height": 64, "steps": 2,
            "override_settings": {"sd_model_checkpoint": SECOND}}
    before = {replica["name"]: replica["jobs_done"] for replica in pool_report(pool_app)}
    for seed in range(4):
        txt2img(pool_app, **body, seed=seed)
        time.sleep(1.0)  # a replica tells Serve's router what it holds within a fraction of a second
    after = {replica["name"]: replica for replica in pool_report(pool_app)}
    holders = [name for name, replica in after.items() if replica["checkpoint"] == SECOND]
    assert len(holders) == 1, after
    assert after[holders[0]]["jobs_done"] - before.get(holders[0], 0) == 4, (before, after)


def test_a_checkpoint_added_after_the_start_runs_after_refresh(pool_app) -> None:
    small = {"prompt": "scan", "width": 64, "height": 64, "steps": 2}
    in_parallel(pool_app, [small, small])  # both replicas have read the models folder before the file comes
    added = pool_app.workdir / "models" / "checkpoints" / "added later.safetensors"
    shutil.copyfile(_demo_checkpoint(), added)
    assert requests.post(sdapi(pool_app, "refresh-checkpoints"), timeout=60).status_code == 200
    body = txt2img(pool_app, prompt="new", width=64, height=64, steps=2, seed=8,
                   override_settings={"sd_model_checkpoint": "added later"})
    assert "Model: added later" in json.loads(body["info"])["infotexts"][0]


def test_stop_reaches_the_replica_running_the_job(pool_app) -> None:
    long_job = {**HEAVY, "n_iter": 8, "seed": 9}
    answer: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: answer.update(resp=requests.post(sdapi(pool_app, "txt2img"),
                                                                              json=long_job, timeout=240)))
    thread.start()
    wait_until_running(pool_app)
    stopped = time.perf_counter()
    assert requests.post(sdapi(pool_app, "interrupt"), timeout=30).status_code == 200
    thread.join(60)
    took = time.perf_counter() - stopped
    assert not thread.is_alive()
    assert took < 8, f"the job ended {took:.1f} s after Stop"
    resp = answer["resp"]
    assert resp.status_code in (200, 409), resp.text[:500]
    if resp.status_code == 200:  # stopped after some batches: fewer pictures than asked
        assert len(resp.json()["images"]) < 8
    assert all(replica["job"] is None for replica in pool_report(pool_app))


def test_a_replica_killed_mid_job_still_yields_the_image(pool_app) -> None:
    answer: dict[str, Any] = {}
    body = {**HEAVY, "n_iter": 2, "seed": 11}
    thread = threading.Thread(target=lambda: answer.update(body=txt2img(pool_app, **body)))
    thread.start()
    victim = wait_until_running(pool_app)
    os.kill(victim["pid"], signal.SIGKILL)
    thread.join(180)
    assert not thread.is_alive(), "the request never came back"
    result = answer["body"]
    assert len(result["images"]) == 2
    notes = json.loads(result["info"])["notes"]
    assert any("stopped during this job" in note for note in notes), notes
    # Serve starts a new replica: the pool is back to two, and the new one takes work
    deadline = time.monotonic() + 120
    while len(pool_report(pool_app)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    in_parallel(pool_app, [{**HEAVY, "seed": 12}, {**HEAVY, "seed": 13}])
    names = [replica["name"] for replica in pool_report(pool_app)]
    assert victim["name"] not in names and len(names) == 2, names


def test_the_status_bar_shows_the_pool_in_the_browser(pool_app, page, artifacts_dir) -> None:
    from test_ui_browser import generate_txt2img, open_studio

    open_studio(page, pool_app.url)
    generate_txt2img(page, "a pooled picture", seed=31)
    page.wait_for_function(
        "() => (document.querySelector('.status-line') || {}).innerText?.includes('2 replica(s)')", timeout=30_000)
    bar = page.inner_text(".status-line")
    page.screenshot(path=str(artifacts_dir / "ui-pool-status.png"), full_page=True)
    assert "Pool" in bar and bar.count("Replica") == 2, bar
    assert "jobs done" in bar or "job(s) done" in bar, bar
