"""A script written for AUTOMATIC1111 runs unchanged against Atelier: the ``webuiapi`` client (A1111's PyPI
client, unmodified) and plain ``requests`` against ``app.py --demo`` on a free port.

Tiny random-weight demo models, 64x64 px, 2 steps: the images are noise, the plumbing is real (queue, manager,
saved files, PNG metadata, auth).
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
import webuiapi
from conftest import AppProcess, spawn_app
from PIL import Image

from pipelines.infotext import parse_infotext

SMALL = {"steps": 2, "width": 64, "height": 64}


def client_for(app: AppProcess, **kwargs) -> webuiapi.WebUIApi:
    url = urlparse(app.url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port, **kwargs)


def sdapi(app: AppProcess, path: str) -> str:
    return f"{app.url.rstrip('/')}/sdapi/v1/{path}"


def saved_parameters(app: AppProcess, task: str) -> list[str]:
    """The ``parameters`` text of every PNG the app saved for ``task``."""
    assert app.workdir is not None
    files = sorted((app.workdir / "outputs" / task).rglob("*.png"))
    return [Image.open(path).text.get("parameters", "") for path in files]


@pytest.fixture(scope="module")
def api(demo_app: AppProcess) -> webuiapi.WebUIApi:
    return client_for(demo_app)


@pytest.fixture(scope="module")
def slow_auth_app(tmp_path_factory: pytest.TempPathFactory):
    """A demo app with a login and slowed-down steps (0.2 s each) so that a run can be interrupted.

    Its saved settings make 2 steps the default, so that calls that cannot choose steps (webuiapi's
    extra_single_image) stay quick on a busy CPU.
    """
    workdir = tmp_path_factory.mktemp("api_auth_app")
    (workdir / "settings.json").write_text(json.dumps({"default_steps": 2}), encoding="utf-8")
    app = spawn_app(workdir, "--demo", "--auth", "u:p", "--step-delay", "0.2")
    yield app
    app.stop()


# --- webuiapi, unchanged -------------------------------------------------------------------------------------
def test_txt2img_with_webuiapi(api: webuiapi.WebUIApi, demo_app: AppProcess) -> None:
    result = api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=1234, cfg_scale=5, n_iter=2, **SMALL)
    assert len(result.images) == 2
    assert all(image.size == (64, 64) for image in result.images)
    assert result.parameters["prompt"] == "a lighthouse"
    info = result.info
    assert info["seed"] == 1234 and len(info["all_seeds"]) == 2 and len(set(info["all_seeds"])) == 2
    assert (info["width"], info["height"], info["steps"], info["sampler_name"]) == (64, 64, 2, "Euler a")
    assert info["sd_model_name"] and re.fullmatch(r"[0-9a-f]{10}", info["sd_model_hash"])
    # The PNGs carry A1111's parameters text, the same as the files saved on disk.
    texts = [image.info["parameters"] for image in result.images]
    assert texts == info["infotexts"]
    parsed = parse_infotext(texts[0])
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["Seed"], parsed["Steps"]) == (
        "a lighthouse",
        "fog",
        "1234",
        "2",
    )
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "64")
    assert set(texts) <= set(saved_parameters(demo_app, "txt2img"))


def test_img2img_with_webuiapi(api: webuiapi.WebUIApi) -> None:
    init = Image.new("RGB", (80, 64), (30, 120, 200))
    result = api.img2img(images=[init], prompt="a blue square", denoising_strength=0.5, seed=7, **SMALL)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert result.info["denoising_strength"] == 0.5
    assert parse_infotext(result.images[0].info["parameters"])["Denoising strength"] == "0.5"


def test_inpainting_with_webuiapi_redraws_only_the_masked_square(api: webuiapi.WebUIApi) -> None:
    import numpy as np

    init = Image.fromarray((np.random.default_rng(5).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    # webuiapi's defaults are A1111's API's: "Only masked" with 0 px padding, masked content "fill", blur 4
    result = api.img2img(images=[init], mask_image=mask, prompt="a red apple", seed=11, **SMALL)
    changed = np.abs(np.asarray(result.images[0].convert("RGB"), np.int16) - np.asarray(init, np.int16)).max(axis=2)
    near = np.zeros((64, 64), dtype=bool)
    near[14:50, 14:50] = True  # the square and the blur's reach (10 px)
    assert changed[~near].max() == 0 and changed[24:40, 24:40].mean() > 20
    fields = parse_infotext(result.images[0].info["parameters"])
    assert (fields["Mask blur"], fields["Inpaint area"], fields["Masked area padding"], fields["Masked content"]) == (
        "4", "Only masked", "0", "fill")


def test_model_names_and_options_with_webuiapi(api: webuiapi.WebUIApi) -> None:
    names = api.util_get_model_names()
    assert names and all(re.fullmatch(r".+ \[[0-9a-f]{10}\]", name) for name in names)
    original = api.util_get_current_model()
    target = names[-1]
    try:
        api.util_set_model(target)  # POST /options {"sd_model_checkpoint": ...}
        assert api.get_options()["sd_model_checkpoint"] == target
        assert api.util_get_current_model() == target
        # the model name without its hash, and its file name, as A1111 accepts them
        bare = target.rsplit(" [", 1)[0]
        filename = Path(next(m["filename"] for m in api.get_sd_models() if m["title"] == target)).name
        for name in (bare, filename):
            assert api.set_options({"sd_model_checkpoint": name}) is None
            assert api.get_options()["sd_model_checkpoint"] == target
        result = api.txt2img(prompt="after switching", **SMALL)
        assert result.info["sd_model_name"] == bare
    finally:  # the demo app is shared with other test files
        api.set_options({"sd_model_checkpoint": original})


def test_unknown_model_names_are_422_listing_the_valid_ones(demo_app: AppProcess) -> None:
    names = [m["title"] for m in requests.get(sdapi(demo_app, "sd-models"), timeout=60).json()]
    resp = requests.post(sdapi(demo_app, "options"), json={"sd_model_checkpoint": "no-such-model"}, timeout=60)
    assert resp.status_code == 422
    assert resp.json()["field"] == "sd_model_checkpoint"
    assert all(name.rsplit(" [", 1)[0] in resp.json()["detail"] for name in names)
    payload = {**SMALL, "override_settings": {"sd_model_checkpoint": "no-such-model"}}
    resp = requests.post(sdapi(demo_app, "txt2img"), json=payload, timeout=60)
    assert resp.status_code == 422 and resp.json()["field"] == "override_settings.sd_model_checkpoint"


def test_lists_with_webuiapi(api: webuiapi.WebUIApi) -> None:
    assert "Euler a" in api.util_get_sampler_names()
    upscalers = api.get_upscalers()
    assert upscalers[0]["name"] == "None" and len(upscalers) >= 2  # the demo x4 upscaler
    assert api.get_progress()["state"]["job_count"] == 0


def test_png_info_with_webuiapi(api: webuiapi.WebUIApi) -> None:
    made = api.txt2img(prompt="read me back", seed=99, **SMALL)
    info = api.png_info(made.image)
    assert info.info == made.info["infotexts"][0]  # webuiapi keeps the text as is (not JSON)
    assert info.parameters["Prompt"] == "read me back" and info.parameters["Seed"] == "99"


# --- bigger pictures: hires fix, tiling, the SD upscale script, every upscaler --------------------------------
def test_hires_fix_and_tiling_with_webuiapi(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a tiled wall", seed=5, enable_hr=True, hr_second_pass_steps=1, tiling=True,
                         **SMALL)  # webuiapi's hires defaults: scale 2, the "Latent" upscaler, strength 0.7
    assert result.image.size == (128, 128)
    parsed = parse_infotext(result.info["infotexts"][0])
    assert (parsed["Size-1"], parsed["Hires upscale"], parsed["Hires upscaler"], parsed["Hires steps"]) == (
        "64", "2", "Latent", "1")
    assert (parsed["Denoising strength"], parsed["Tiling"]) == ("0.7", "True")
    pixel = api.txt2img(prompt="pixels", seed=5, enable_hr=True, hr_upscaler="Lanczos", hr_resize_x=96,
                        hr_resize_y=80, hr_second_pass_steps=1, **SMALL)
    assert pixel.image.size == (96, 80)
    assert "Latent (nearest-exact)" in [mode["name"] for mode in api.get_latent_upscale_modes()]


def test_sd_upscale_script_and_extras_with_webuiapi(api: webuiapi.WebUIApi, demo_app: AppProcess) -> None:
    assert "sd upscale" in api.get_scripts()["img2img"]
    source = Image.new("RGB", (96, 64), (30, 120, 200))
    result = api.img2img(images=[source], prompt="more detail", seed=3, denoising_strength=0.5, steps=2, width=64,
                         height=64, script_name="SD upscale", script_args=["", 16, "Lanczos", 2])
    assert result.image.size == (192, 128)  # 64x64 tiles with 16 px overlap
    assert "SD upscale upscaler: Lanczos" in result.info["infotexts"][0]
    # A1111's extras test request: Lanczos by its default factor (2), and the batch route
    assert api.extra_single_image(image=source, upscaler_1="Lanczos").image.size == (192, 128)
    batch = api.extra_batch_images(images=[source, source.resize((16, 16))], upscaler_1="Nearest",
                                   upscaling_resize=3)
    assert [image.size for image in batch.images] == [(288, 192), (48, 48)]
    info = requests.get(sdapi(demo_app, "script-info"), timeout=30).json()
    assert info[0]["name"] == "sd upscale" and info[0]["args"][2]["choices"][:3] == ["None", "Lanczos", "Nearest"]
    assert requests.get(sdapi(demo_app, "realesrgan-models"), timeout=30).json() == []


# --- requests: errors --------------------------------------------------------------------------------------
def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BAD_REQUESTS = [
    ("txt2img", {**SMALL, "steps": -1}, "steps"),
    ("txt2img", {**SMALL, "width": 7}, "width"),
    ("txt2img", {**SMALL, "sampler_name": "No Such Sampler"}, "sampler_name"),
    ("txt2img", {**SMALL, "enable_hr": True, "hr_scale": 5}, "hr_scale"),
    ("txt2img", {**SMALL, "enable_hr": True, "hr_upscaler": "No Such Upscaler"}, "hr_upscaler"),
    ("img2img", {**SMALL, "init_images": [_png_b64()], "denoising_strength": 2}, "denoising_strength"),
    ("img2img", {**SMALL, "init_images": [base64.b64encode(b"this is not a picture").decode()]}, "init_images"),
]


@pytest.mark.parametrize(("route", "payload", "field"), BAD_REQUESTS, ids=[f for _, _, f in BAD_REQUESTS])
def test_bad_requests_are_422_naming_the_field(demo_app: AppProcess, route: str, payload: dict, field: str) -> None:
    resp = requests.post(sdapi(demo_app, route), json=payload, timeout=60)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["field"] == field and field in resp.json()["detail"]
    assert requests.get(sdapi(demo_app, "progress"), timeout=30).status_code == 200


def test_the_server_still_generates_after_bad_requests(demo_app: AppProcess) -> None:
    for _, payload, _ in BAD_REQUESTS:
        assert (
            requests.post(sdapi(demo_app, "txt2img"), json={**payload, "steps": "NaN"}, timeout=60).status_code == 422
        )
    again = requests.post(sdapi(demo_app, "txt2img"), json={"prompt": "still here", **SMALL}, timeout=300)
    assert again.status_code == 200 and len(again.json()["images"]) == 1


def test_openapi_documents_the_api(demo_app: AppProcess) -> None:
    schema = requests.get(f"{demo_app.url.rstrip('/')}/openapi.json", timeout=60).json()
    for path in (
        "txt2img",
        "img2img",
        "sd-models",
        "options",
        "samplers",
        "progress",
        "interrupt",
        "png-info",
        "upscalers",
        "extra-single-image",
    ):
        assert f"/sdapi/v1/{path}" in schema["paths"], path


# --- auth and interrupt (an app with --auth and slowed-down steps) -------------------------------------------
def test_auth_protects_every_sdapi_route(slow_auth_app: AppProcess) -> None:
    for path in ("sd-models", "options", "progress", "samplers", "upscalers"):
        resp = requests.get(sdapi(slow_auth_app, path), timeout=30)
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.post(sdapi(slow_auth_app, "txt2img"), json=SMALL, timeout=30).status_code == 401
    assert requests.get(sdapi(slow_auth_app, "sd-models"), auth=("u", "wrong"), timeout=30).status_code == 401
    assert requests.get(sdapi(slow_auth_app, "sd-models"), auth=("u", "p"), timeout=30).status_code == 200
    api = client_for(slow_auth_app, username="u", password="p")
    assert len(api.txt2img(prompt="with a login", **SMALL).images) == 1


def test_extra_single_image_runs_the_demo_x4_upscaler(slow_auth_app: AppProcess) -> None:
    api = client_for(slow_auth_app, username="u", password="p")
    upscaler = api.get_upscalers()[-1]["name"]  # the demo SD x4 upscaler, after the built-ins
    source = Image.new("RGB", (16, 12), (200, 80, 20))
    result = api.extra_single_image(image=source, upscaler_1=upscaler, upscaling_resize=2)  # webuiapi unchanged
    assert result.image.size == (32, 24)
    assert parse_infotext(result.image.info["parameters"])["Steps"] == "2"  # the server's default steps
    # Atelier's optional fields (prompt, steps) on the same route; at 4x the answer is the saved file itself
    payload = {
        "image": webuiapi.b64_img(source),
        "upscaler_1": upscaler,
        "upscaling_resize": 4,
        "steps": 1,
        "prompt": "sharp",
    }
    resp = requests.post(sdapi(slow_auth_app, "extra-single-image"), json=payload, auth=("u", "p"), timeout=300)
    assert resp.status_code == 200, resp.text
    image = Image.open(io.BytesIO(base64.b64decode(resp.json()["image"])))
    assert image.size == (64, 48)
    assert image.text["parameters"] in saved_parameters(slow_auth_app, "upscale")
    assert parse_infotext(image.text["parameters"])["Steps"] == "1"


def test_interrupt_stops_a_run_and_keeps_finished_images(slow_auth_app: AppProcess) -> None:
    api = client_for(slow_auth_app, username="u", password="p")
    outcome: dict = {}

    def generate() -> None:
        try:
            outcome["result"] = api.txt2img(prompt="long run", n_iter=3, steps=6, width=64, height=64)
        except RuntimeError as exc:  # webuiapi raises RuntimeError(status, text) for a non-200 answer
            outcome["error"] = exc

    worker = threading.Thread(target=generate)
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the second batch is sampling
        state = api.get_progress()["state"]
        if state["job_no"] >= 1 and state["sampling_step"] >= 1:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the run never reached its second batch: {api.get_progress()}")
    progress = api.get_progress()
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 6
    assert progress["eta_relative"] > 0
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))  # the live preview
    assert preview.format == "PNG" and preview.width > 0
    assert api.interrupt() == {}
    worker.join(60)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert 1 <= len(result.images) < 3  # the first batch is kept, the rest was stopped
    assert result.info["interrupted"] is True
    # the server is idle and still generates
    assert api.get_progress()["state"]["job_count"] == 0
    assert len(api.txt2img(prompt="after the stop", **SMALL).images) == 1


# --- the rest of webuiapi's calls (issue 27) ----------------------------------------------------------------------
def test_webuiapi_util_and_server_calls_all_answer(api: webuiapi.WebUIApi) -> None:
    names = api.util_get_model_names()
    current = api.util_get_current_model()
    assert current in names
    assert "Euler a" in api.util_get_sampler_names() and "karras" in api.util_get_scheduler_names()
    api.util_wait_for_ready(check_interval=0.2)  # returns: progress 0 and job_count 0 when idle
    flags = api.get_cmd_flags()
    assert flags["api"] is True and flags["demo"] is True and flags["gradio_auth"] is None
    memory = api.get_memory()
    assert memory["ram"]["total"] >= memory["ram"]["used"] > 0 and set(memory) == {"ram", "cuda"}
    assert api.get_hypernetworks() == [] and api.get_face_restorers() == []
    assert api.refresh_checkpoints() is None and api.util_get_current_model() == current
    assert api.skip() is None  # nothing runs: nothing to skip
    options = api.get_options()
    assert options["send_seed"] is True and options["samples_format"] == "png"
    sha = {model["title"]: model["sha256"] for model in api.get_sd_models()}
    assert re.fullmatch(r"[0-9a-f]{64}", sha[current]) and options["sd_checkpoint_hash"] == sha[current]
    with pytest.raises(RuntimeError) as refused:  # webuiapi raises for a non-200 answer
        api.interrogate(Image.new("RGB", (8, 8)))
    assert refused.value.args[0] == 422 and "not available" in refused.value.args[1]


def test_skip_with_webuiapi_ends_the_image_being_drawn_and_the_run_goes_on(slow_auth_app: AppProcess) -> None:
    api = client_for(slow_auth_app, username="u", password="p")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault(
        "result", api.txt2img(prompt="three", seed=500, n_iter=3, steps=4, width=64, height=64)))
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = api.get_progress()["state"]
        if state["job_no"] == 1 and state["sampling_step"] >= 1:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the run never reached its second batch: {api.get_progress()}")
    assert api.skip() is None
    worker.join(120)
    result = outcome["result"]
    assert result.info["all_seeds"] == [500, 502] and len(result.images) == 2  # seed 501's picture was skipped
    assert result.info["interrupted"] is False


def test_unload_and_reload_checkpoint_over_http(slow_auth_app: AppProcess) -> None:
    auth = ("u", "p")
    for route in ("unload-checkpoint", "reload-checkpoint", "unload-checkpoint"):
        response = requests.post(sdapi(slow_auth_app, route), json="", auth=auth, timeout=120)
        assert response.status_code == 200 and response.json() == {}, route
    assert requests.post(sdapi(slow_auth_app, "unload-checkpoint"), timeout=30).status_code == 401
    api = client_for(slow_auth_app, username="u", password="p")
    assert len(api.txt2img(prompt="loaded again", **SMALL).images) == 1  # the next image loads it again
