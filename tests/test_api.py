"""The A1111-compatible REST API (api/) in-process, on a small stand-in for the pipeline manager.

These tests pin what an A1111 client sees: field names and response shapes, errors as JSON that name the
field (never a 5xx or an HTML page for anything a client sends), auth, the full-queue answer and the OpenAPI
schema. The same behaviour against the real server and the real demo models: tests/test_api_webuiapi.py.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import FakeManager, FakeRegistry, write_embedding, write_lora
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from api import mount
from pipelines.errors import OutputWriteError
from pipelines.infotext import parse_infotext
from pipelines.progress import ProgressEvent
from pipelines.request import GenerationRequest
from pipelines.settings import Settings

API = "/sdapi/v1"


# --- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture
def manager(tmp_path: Path) -> Iterator[FakeManager]:
    """The engine stand-in (tests/fakes.py): two checkpoints, one VAE and one x4 upscaler with A1111 hashes."""
    registry = FakeRegistry(
        checkpoints=("demo", "other"),
        vaes=("vae-ft",),
        upscalers=("x4-demo",),
        hashes={"demo": "0123456789", "other": "abcdefabcd", "vae-ft": "1111111111", "x4-demo": "2222222222"},
    )
    fake = FakeManager(Settings(queue_size=4, default_steps=20, outputs_dir=tmp_path / "outputs"), registry)
    yield fake
    fake.close()


def make_client(manager: FakeManager, auth: dict[str, str] | None = None, **app_kwargs: Any) -> TestClient:
    app = FastAPI(**app_kwargs)
    mount(app, manager, manager.settings, auth)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(manager: FakeManager) -> TestClient:
    return make_client(manager)


def png_b64(size: tuple[int, int] = (64, 64), parameters: str | None = None, data_url: bool = False) -> str:
    image = Image.new("RGB", size, (200, 50, 50))
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    image.save(buffer, format="PNG", pnginfo=info)
    raw = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/png;base64,{raw}" if data_url else raw


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


# What webuiapi 0.9 sends for txt2img with its defaults: many fields Atelier does not use.
WEBUIAPI_TXT2IMG = {
    "enable_hr": False,
    "hr_scale": 2,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_checkpoint_name": None,
    "hr_sampler_name": None,
    "hr_scheduler": None,
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "denoising_strength": 0.7,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "prompt": "a red fox",
    "styles": [],
    "seed": 42,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_h": 0,
    "seed_resize_from_w": 0,
    "batch_size": 1,
    "n_iter": 2,
    "steps": 2,
    "cfg_scale": 7.0,
    "width": 64,
    "height": 64,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "negative_prompt": "blurry",
    "eta": 1.0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 1,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "sampler_name": "Euler a",
    "scheduler": "automatic",
    "sampler_index": "Euler a",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "some_future_field": {"nested": True},
}


# --- txt2img / img2img ---------------------------------------------------------------------------------------
def test_txt2img_answers_in_a1111_shape(client: TestClient, manager: FakeManager) -> None:
    resp = client.post(f"{API}/txt2img", json=WEBUIAPI_TXT2IMG)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["images"]) == 2
    assert body["parameters"]["prompt"] == "a red fox"
    assert body["parameters"]["n_iter"] == 2
    info = json.loads(body["info"])
    for key in (
        "prompt",
        "all_prompts",
        "negative_prompt",
        "seed",
        "all_seeds",
        "subseed",
        "all_subseeds",
        "width",
        "height",
        "sampler_name",
        "cfg_scale",
        "steps",
        "batch_size",
        "sd_model_name",
        "sd_model_hash",
        "infotexts",
        "job_timestamp",
    ):
        assert key in info, key
    assert info["all_seeds"] == [42, 43]
    assert info["seed"] == 42
    assert info["sd_model_name"] == "demo" and info["sd_model_hash"] == "0123456789"
    assert info["width"] == 64 and info["sampler_name"] == "Euler a"
    # The request the manager saw: A1111 names mapped onto GenerationRequest.
    request = manager.submitted[-1]
    assert (request.task, request.batch_count, request.steps, request.negative_prompt) == ("txt2img", 2, 2, "blurry")


def test_returned_pngs_carry_the_same_parameters_as_the_saved_files(client: TestClient, manager: FakeManager) -> None:
    resp = client.post(f"{API}/txt2img", json={"prompt": "cat", "steps": 2, "width": 64, "height": 64})
    body = resp.json()
    info = json.loads(body["info"])
    image = decode_png(body["images"][0])
    assert image.size == (64, 64)
    assert image.text["parameters"] == info["infotexts"][0]
    saved = sorted((manager.settings.outputs_dir / "txt2img").rglob("*.png"))[0]
    assert Image.open(saved).text["parameters"] == image.text["parameters"]


def test_sampler_index_is_an_alias_and_scheduler_automatic_is_accepted(client: TestClient, manager) -> None:
    resp = client.post(
        f"{API}/txt2img",
        json={"sampler_index": "DPM++ 2M Karras", "scheduler": "automatic", "steps": 2, "width": 64, "height": 64},
    )
    assert resp.status_code == 200, resp.text
    assert manager.submitted[-1].sampler == "DPM++ 2M Karras"
    # sampler_name wins over sampler_index, as in A1111.
    client.post(
        f"{API}/txt2img",
        json={"sampler_name": "DDIM", "sampler_index": "Euler a", "steps": 2, "width": 64, "height": 64},
    )
    assert manager.submitted[-1].sampler == "DDIM"


def test_defaults_come_from_the_server_settings(client: TestClient, manager: FakeManager) -> None:
    resp = client.post(f"{API}/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": None})
    assert resp.status_code == 200, resp.text
    request = manager.submitted[-1]
    assert (request.steps, request.sampler, request.checkpoint) == (20, "Euler a", None)


def test_send_images_false_returns_no_images(client: TestClient) -> None:
    resp = client.post(f"{API}/txt2img", json={"steps": 2, "width": 64, "height": 64, "send_images": False})
    assert resp.status_code == 200
    assert resp.json()["images"] == []


@pytest.mark.parametrize("data_url", [False, True], ids=["raw-base64", "data-url"])
def test_img2img_takes_raw_base64_or_data_urls(client: TestClient, manager: FakeManager, data_url: bool) -> None:
    payload = {
        "init_images": [png_b64((96, 64), data_url=data_url)],
        "denoising_strength": 0.5,
        "steps": 2,
        "width": 64,
        "height": 64,
        "resize_mode": 1,
        "prompt": "fox",
        "include_init_images": False,
    }
    resp = client.post(f"{API}/img2img", json=payload)
    assert resp.status_code == 200, resp.text
    request = manager.submitted[-1]
    assert request.task == "img2img"
    assert request.init_image.size == (96, 64)
    assert request.denoising_strength == 0.5 and request.resize_mode == "crop and resize"
    body = resp.json()
    assert body["parameters"]["init_images"] is None  # not echoed unless include_init_images
    assert json.loads(body["info"])["denoising_strength"] == 0.5


def test_override_settings_switch_checkpoint_and_vae_for_one_request(client: TestClient, manager) -> None:
    payload = {
        "steps": 2,
        "width": 64,
        "height": 64,
        "override_settings": {"sd_model_checkpoint": "other [abcdefabcd]", "sd_vae": "None", "CLIP_stop": 2},
    }
    resp = client.post(f"{API}/txt2img", json=payload)
    assert resp.status_code == 200, resp.text
    request = manager.submitted[-1]
    assert (request.checkpoint, request.vae) == ("other [abcdefabcd]", "Automatic")
    assert manager.default_checkpoint().name == "demo"  # the default did not change


def test_speedup_switches_in_override_settings_reach_the_request(client: TestClient, manager) -> None:
    payload = {**BASE, "override_settings": {"token_merging_ratio": 0.5, "deep_cache": True}}
    resp = client.post(f"{API}/txt2img", json=payload)
    assert resp.status_code == 200, resp.text
    request = manager.submitted[-1]
    assert (request.token_merging, request.deep_cache) == (0.5, True)

    resp = client.post(f"{API}/txt2img", json={**BASE, "override_settings": {"token_merging_ratio": 0.9}})
    assert resp.status_code == 422
    assert resp.json()["field"] == "override_settings.token_merging_ratio"


def test_unknown_checkpoint_override_names_the_field(client: TestClient) -> None:
    resp = client.post(
        f"{API}/txt2img",
        json={"override_settings": {"sd_model_checkpoint": "nope"}, "steps": 2, "width": 64, "height": 64},
    )
    assert resp.status_code == 422
    assert resp.json()["field"] == "override_settings.sd_model_checkpoint"
    assert "nope" in resp.json()["detail"]


# --- invalid input: 422 naming the field, and the server still answers ----------------------------------------
BASE = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
INVALID = [
    ("txt2img", {**BASE, "steps": -1}, "steps"),
    ("txt2img", {**BASE, "width": 7}, "width"),
    ("txt2img", {**BASE, "height": 100}, "height"),
    ("txt2img", {**BASE, "cfg_scale": 99}, "cfg_scale"),
    ("txt2img", {**BASE, "sampler_name": "Warp Drive"}, "sampler_name"),
    ("txt2img", {**BASE, "scheduler": "sideways"}, "scheduler"),
    ("txt2img", {**BASE, "n_iter": 500}, "n_iter"),
    ("txt2img", {**BASE, "steps": "many"}, "steps"),
    ("txt2img", {**BASE, "enable_hr": True, "hr_scale": 5}, "hr_scale"),
    ("txt2img", {**BASE, "enable_hr": True, "hr_resize_x": 4096}, "hr_resize_x"),
    ("txt2img", {**BASE, "enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),
    ("txt2img", {**BASE, "enable_hr": True, "hr_upscaler": "x4-demo"}, "hr_upscaler"),
    ("txt2img", {**BASE, "enable_hr": True, "hr_sampler_name": "Warp Drive"}, "hr_sampler_name"),
    ("txt2img", {**BASE, "enable_hr": True, "hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
    ("txt2img", {**BASE, "enable_hr": True, "width": 2048, "height": 2048, "steps": 150}, "hr_scale"),
    ("txt2img", {**BASE, "firstpass_image": png_b64()}, "firstpass_image"),
    ("txt2img", {**BASE, "script_name": "sd upscale"}, "script_name"),
    (
        "txt2img",
        {**BASE, "alwayson_scripts": {"ControlNet": {"args": [{"enabled": True, "model": "x"}]}}},
        "alwayson_scripts",
    ),
    ("txt2img", {**BASE, "script_name": "x/y/z plot"}, "script_name"),
    ("txt2img", {**BASE, "restore_faces": True}, "restore_faces"),
    ("txt2img", {**BASE, "styles": "cinematic"}, "styles"),
    ("txt2img", {**BASE, "clip_skip": 0}, "clip_skip"),
    ("txt2img", {**BASE, "override_settings": {"CLIP_stop_at_last_layers": 13}},
     "override_settings.CLIP_stop_at_last_layers"),
    ("txt2img", {**BASE, "override_settings": {"emphasis": "Loud"}}, "override_settings.emphasis"),
    ("txt2img", {**BASE, "override_settings": {"sd_model_checkpoint": 5}}, "override_settings.sd_model_checkpoint"),
    ("img2img", {**BASE, "init_images": [png_b64()], "denoising_strength": 2}, "denoising_strength"),
    ("img2img", {**BASE, "init_images": [base64.b64encode(b"not an image at all").decode()]}, "init_images"),
    ("img2img", {**BASE, "init_images": ["@@@ not base64 @@@"]}, "init_images"),
    ("img2img", {**BASE, "init_images": []}, "init_images"),
    ("img2img", {**BASE, "init_images": [png_b64(), png_b64()]}, "init_images"),
    ("img2img", {**BASE, "init_images": [png_b64()], "mask": png_b64()}, "mask"),
    ("img2img", {**BASE, "init_images": [png_b64()], "resize_mode": 9}, "resize_mode"),
    ("img2img", {**BASE, "init_images": [png_b64()], "script_name": "loopback"}, "script_name"),
    ("img2img", {**BASE, "init_images": [png_b64()], "script_name": "sd upscale", "script_args": ["", 64, 99, 2]},
     "script_args[2]"),
    ("img2img", {**BASE, "init_images": [png_b64()], "script_name": "sd upscale",
                 "script_args": ["", 64, "Bicubic++", 2]}, "script_args[2]"),
    ("img2img", {**BASE, "init_images": [png_b64()], "script_name": "SD upscale",
                 "script_args": ["", 64, "x4-demo", 2]}, "script_args[2]"),
    ("img2img", {**BASE, "init_images": [png_b64()], "script_name": "sd upscale",
                 "script_args": ["", 64, "Lanczos", 8]}, "script_args[3]"),
    ("img2img", {**BASE, "init_images": [png_b64()], "script_name": "sd upscale",
                 "script_args": ["", 999, "Lanczos", 2]}, "script_args[1]"),
]


@pytest.mark.parametrize(("route", "payload", "field_name"), INVALID, ids=[f"{r}-{f}" for r, _, f in INVALID])
def test_invalid_input_is_422_naming_the_field(client: TestClient, route: str, payload: dict, field_name: str) -> None:
    resp = client.post(f"{API}/{route}", json=payload)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["field"] == field_name
    assert field_name.split(".")[-1] in body["detail"]
    assert client.get(f"{API}/samplers").status_code == 200  # the server still answers


def test_disabled_extension_entries_are_accepted(client: TestClient) -> None:
    scripts = {"ControlNet": {"args": []}, "ADetailer": {"args": [False]}, "x": {"args": [{"enabled": False}]}}
    resp = client.post(f"{API}/txt2img", json={**BASE, "alwayson_scripts": scripts})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2, 3]", b"", b'"just a string"'],
    ids=["broken-json", "a-list", "empty", "a-string"],
)
def test_malformed_bodies_are_422_json(client: TestClient, raw: bytes) -> None:
    resp = client.post(f"{API}/txt2img", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["detail"].startswith("Invalid request")


def test_non_finite_numbers_never_break_the_answer(client: TestClient) -> None:
    # Python's JSON reader accepts NaN/Infinity; echoing them back must not turn into a server error.
    raw = b'{"prompt": "x", "steps": 2, "width": 64, "height": 64, "eta": NaN, "s_noise": Infinity}'
    resp = client.post(f"{API}/txt2img", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["parameters"]["eta"] is None
    raw = b'{"prompt": "x", "steps": 2, "width": 64, "height": 64, "cfg_scale": NaN}'
    resp = client.post(f"{API}/txt2img", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["field"] == "cfg_scale"


def test_queue_full_is_429(client: TestClient, manager: FakeManager) -> None:
    manager.settings.queue_size = 0
    resp = client.post(f"{API}/txt2img", json=BASE)
    assert resp.status_code == 429
    assert resp.json()["error"] == "QueueFull"
    assert "queue is full" in resp.json()["detail"]


def test_engine_errors_keep_their_status_and_a_server_fault_is_json(client: TestClient, manager) -> None:
    manager.fail_with = OutputWriteError("The outputs folder is full: free some disk space.")
    resp = client.post(f"{API}/txt2img", json=BASE)
    assert resp.status_code == 507
    assert resp.json() == {
        "error": "OutputWriteError",
        "detail": "The outputs folder is full: free some disk space.",
        "field": None,
    }
    manager.fail_with = RuntimeError("a bug")
    resp = client.post(f"{API}/txt2img", json=BASE)
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith("application/json")
    assert "a bug" not in resp.text and "Traceback" not in resp.text


def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    resp = client.get(f"{API}/no-such-thing")
    assert resp.status_code == 404 and "txt2img" in resp.json()["detail"]
    resp = client.get(f"{API}/txt2img")
    assert resp.status_code == 405 and "POST" in resp.json()["detail"]


# --- models, options, lists ----------------------------------------------------------------------------------
def test_sd_models_lists_checkpoints_as_a1111(client: TestClient) -> None:
    models = client.get(f"{API}/sd-models").json()
    assert [m["title"] for m in models] == ["demo [0123456789]", "other [abcdefabcd]"]
    first = models[0]
    assert set(first) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert (first["model_name"], first["hash"], first["config"]) == ("demo", "0123456789", None)
    assert first["filename"].endswith("demo.safetensors")


@pytest.mark.parametrize("name", ["other", "other [abcdefabcd]", "other.safetensors"])
def test_options_switch_the_default_checkpoint(client: TestClient, manager: FakeManager, name: str) -> None:
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] == "demo [0123456789]"
    resp = client.post(f"{API}/options", json={"sd_model_checkpoint": name, "unrelated_a1111_option": 1})
    assert resp.status_code == 200, resp.text
    assert manager.default_checkpoint().name == "other"
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] == "other [abcdefabcd]"


def test_options_unknown_names_are_422_listing_valid_names(client: TestClient, manager: FakeManager) -> None:
    resp = client.post(f"{API}/options", json={"sd_model_checkpoint": "missing", "sd_vae": "Automatic"})
    assert resp.status_code == 422
    body = resp.json()
    assert body["field"] == "sd_model_checkpoint"
    assert "demo [0123456789]" in body["detail"] and "other [abcdefabcd]" in body["detail"]
    resp = client.post(f"{API}/options", json={"sd_model_checkpoint": "other", "sd_vae": "nope"})
    assert resp.status_code == 422 and resp.json()["field"] == "sd_vae" and "vae-ft" in resp.json()["detail"]
    assert manager.default_checkpoint().name == "demo"  # nothing applied when one name is wrong
    assert client.get(f"{API}/options").json()["sd_vae"] == "Automatic"
    assert client.post(f"{API}/options", json={"sd_vae": "vae-ft"}).status_code == 200
    assert client.get(f"{API}/options").json()["sd_vae"] == "vae-ft"


def test_options_set_the_speedup_switches_and_check_their_range(client: TestClient, manager: FakeManager) -> None:
    options = client.get(f"{API}/options").json()
    assert (options["token_merging_ratio"], options["deep_cache"], options["deep_cache_interval"]) == (0.0, False, 3)
    resp = client.post(f"{API}/options", json={"token_merging_ratio": 0.5, "deep_cache": True,
                                                "deep_cache_interval": 5})
    assert resp.status_code == 200, resp.text
    assert (manager.settings.token_merging, manager.settings.deep_cache, manager.settings.deep_cache_interval) == (
        0.5, True, 5)
    assert client.get(f"{API}/options").json()["deep_cache_interval"] == 5
    for key, value in (("token_merging_ratio", 0.9), ("deep_cache_interval", 11)):
        resp = client.post(f"{API}/options", json={key: value})
        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == key and key in resp.json()["detail"]
    assert (manager.settings.token_merging, manager.settings.deep_cache_interval) == (0.5, 5)  # unchanged


def test_samplers_schedulers_upscalers_scripts(client: TestClient) -> None:
    samplers = client.get(f"{API}/samplers").json()
    assert {"name": "Euler a", "aliases": ["euler_ancestral", "k_euler_a"], "options": {}} in samplers
    schedulers = client.get(f"{API}/schedulers").json()
    assert "automatic" in [s["name"] for s in schedulers]
    upscalers = client.get(f"{API}/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest", "x4-demo"]
    assert upscalers[0] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    assert upscalers[3]["scale"] == 4 and upscalers[3]["model_url"] is None
    assert upscalers[3]["model_path"].endswith("x4-demo")
    assert client.get(f"{API}/scripts").json() == {"txt2img": [], "img2img": ["sd upscale"]}


# --- progress / interrupt ------------------------------------------------------------------------------------
def test_progress_idle_matches_what_clients_poll_for(client: TestClient, manager: FakeManager) -> None:
    body = client.get(f"{API}/progress").json()
    assert body["progress"] == 0 and body["state"]["job_count"] == 0  # webuiapi's util_wait_for_ready
    assert body["current_image"] is None
    manager.pause()  # jobs queued but none picked up yet: not idle
    jobs = [manager.submit(GenerationRequest.create(**BASE)) for _ in range(2)]
    assert client.get(f"{API}/progress").json()["state"]["job_count"] == 2
    manager.resume()
    for job in jobs:
        job.wait(10)
    assert client.get(f"{API}/progress").json()["state"]["job_count"] == 0


def test_progress_reports_the_running_job_with_a_preview(client: TestClient, manager: FakeManager) -> None:
    manager.hold()  # the job starts, then waits before its first step: its progress is the test's
    results: list = []
    worker = threading.Thread(target=lambda: results.append(client.post(f"{API}/txt2img", json=BASE)))
    worker.start()
    try:
        for _ in range(200):
            if manager.current_job() is not None:
                break
            threading.Event().wait(0.02)
        job = manager.current_job()
        job.progress = ProgressEvent(
            job_id=job.id,
            state="running",
            step=1,
            total_steps=4,
            batch_index=0,
            batch_count=2,
            eta_s=3.5,
            preview=Image.new("RGB", (8, 8), "blue"),
        )
        body = client.get(f"{API}/progress").json()
        assert body["progress"] == pytest.approx(0.125)
        assert body["eta_relative"] == 3.5
        assert body["state"]["sampling_step"] == 1 and body["state"]["sampling_steps"] == 4
        assert body["state"]["job_count"] == 2 and body["state"]["job"] == job.id
        assert decode_png(body["current_image"]).size == (8, 8)
        assert client.get(f"{API}/progress", params={"skip_current_image": True}).json()["current_image"] is None
        assert client.post(f"{API}/interrupt").status_code == 200
        assert manager.interrupted == 1
    finally:
        manager.release()
        worker.join(10)
    assert results[0].status_code == 200


# --- png-info / extras ---------------------------------------------------------------------------------------
def test_png_info_reads_back_a1111_parameters(client: TestClient) -> None:
    text = "a fox\nNegative prompt: blur\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"
    resp = client.post(f"{API}/png-info", json={"image": png_b64(parameters=text, data_url=True)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["info"] == text
    assert body["parameters"] == parse_infotext(text)
    assert body["parameters"]["Steps"] == "2" and body["parameters"]["Size-1"] == "64"
    assert client.post(f"{API}/png-info", json={"image": png_b64()}).json()["info"] == ""
    bad = client.post(f"{API}/png-info", json={"image": "bm90IGFuIGltYWdl"})
    assert bad.status_code == 422 and bad.json()["field"] == "image"


def test_extra_single_image_runs_the_x4_upscaler(client: TestClient, manager: FakeManager) -> None:
    payload = {
        "image": png_b64((32, 24), data_url=True),
        "upscaler_1": "x4-demo",
        "upscaling_resize": 4,
        "gfpgan_visibility": 0,
        "codeformer_visibility": 0,
        "upscaler_2": "None",
    }
    resp = client.post(f"{API}/extra-single-image", json=payload)
    assert resp.status_code == 200, resp.text
    image = decode_png(resp.json()["image"])
    assert image.size == (128, 96)
    assert image.text["parameters"] == resp.json()["html_info"] != ""
    assert manager.submitted[-1].task == "upscale" and manager.submitted[-1].upscaler == "x4-demo"
    assert manager.submitted[-1].steps == 20  # the server's default steps
    # Atelier's optional upscaler fields
    client.post(f"{API}/extra-single-image", json={**payload, "steps": 3, "prompt": "crisp", "noise_level": 50})
    assert (manager.submitted[-1].steps, manager.submitted[-1].prompt, manager.submitted[-1].noise_level) == (
        3,
        "crisp",
        50,
    )
    # scale 2: the x4 result resized, keeping its parameters
    half = decode_png(client.post(f"{API}/extra-single-image", json={**payload, "upscaling_resize": 2}).json()["image"])
    assert half.size == (64, 48) and half.text["parameters"]
    # "None": a plain resize (a job of the engine's, as every upscaler)
    plain = client.post(f"{API}/extra-single-image", json={**payload, "upscaler_1": "None", "upscaling_resize": 2})
    assert decode_png(plain.json()["image"]).size == (64, 48)
    assert manager.submitted[-1].upscaler == "None" and manager.submitted[-1].upscale_scale == 2


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1"),
        ({"upscaling_resize": 9}, "upscaling_resize"),
        ({"upscaling_resize": 0.5}, "upscaling_resize"),
        ({"resize_mode": 1, "upscaling_resize_w": 5000}, "upscaling_resize_w"),
        ({"resize_mode": 2}, "resize_mode"),
        ({"upscaler_2": "Nope", "extras_upscaler_2_visibility": 0.5}, "upscaler_2"),
        ({"upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 2}, "extras_upscaler_2_visibility"),
        ({"gfpgan_visibility": 1}, "gfpgan_visibility"),
        ({"steps": 0}, "steps"),
        ({"image": "bm90IGFuIGltYWdl"}, "image"),
    ],
)
def test_extra_single_image_refuses_what_it_cannot_do(client: TestClient, changes: dict, field_name: str) -> None:
    payload = {"image": png_b64((32, 32)), "upscaler_1": "x4-demo", **changes}
    resp = client.post(f"{API}/extra-single-image", json=payload)
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == field_name


# --- auth ----------------------------------------------------------------------------------------------------
def test_auth_is_required_on_every_route(manager: FakeManager) -> None:
    client = make_client(manager, auth={"u": "p", "ünï": "cödé"})
    for method, path in [
        ("get", "sd-models"),
        ("get", "progress"),
        ("post", "txt2img"),
        ("get", "options"),
        ("post", "interrupt"),
        ("get", "nowhere"),
    ]:
        resp = client.request(method, f"{API}/{path}", json=BASE if method == "post" else None)
        assert resp.status_code == 401, path
        assert resp.headers["www-authenticate"].startswith("Basic")
        assert resp.headers["content-type"].startswith("application/json")
    assert client.get(f"{API}/sd-models", auth=("u", "wrong")).status_code == 401
    assert client.get(f"{API}/sd-models", auth=("x", "p")).status_code == 401
    assert client.get(f"{API}/sd-models", auth=("u", "p")).status_code == 200
    assert client.get(f"{API}/sd-models", auth=("ünï", "cödé")).status_code == 200
    # the login is checked before the body: a stranger gets 401, not a validation message
    resp = client.post(f"{API}/txt2img", content=b"{broken", headers={"content-type": "application/json"})
    assert resp.status_code == 401
    assert client.post(f"{API}/txt2img", json=BASE, auth=("u", "p")).status_code == 200


# --- OpenAPI -------------------------------------------------------------------------------------------------
ROUTES = [
    ("post", "txt2img"),
    ("post", "img2img"),
    ("get", "sd-models"),
    ("get", "options"),
    ("post", "options"),
    ("get", "samplers"),
    ("get", "progress"),
    ("post", "interrupt"),
    ("post", "png-info"),
    ("get", "upscalers"),
    ("post", "extra-single-image"),
    ("post", "extra-batch-images"),
    ("get", "realesrgan-models"),
    ("get", "latent-upscale-modes"),
    ("get", "scripts"),
    ("get", "script-info"),
    ("get", "loras"),
    ("post", "refresh-loras"),
    ("get", "embeddings"),
    ("post", "refresh-embeddings"),
    ("get", "prompt-styles"),
]


@pytest.mark.parametrize("openapi_url", ["/openapi.json", None], ids=["fastapi-default", "app-without-openapi"])
def test_openapi_documents_every_route(manager: FakeManager, openapi_url: str | None) -> None:
    client = make_client(manager, openapi_url=openapi_url)
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    for method, path in ROUTES:
        assert method in schema["paths"][f"{API}/{path}"], (method, path)
    components = schema["components"]["schemas"]
    for model in (
        "Txt2ImgRequest",
        "Img2ImgRequest",
        "TextToImageResponse",
        "ProgressResponse",
        "SDModelItem",
        "ExtrasSingleImageRequest",
        "PNGInfoResponse",
        "UpscalerItem",
        "ExtrasBatchImagesRequest",
        "ScriptInfo",
        "Options",
        "LoraItem",
        "EmbeddingsResponse",
        "PromptStyleItem",
    ):
        assert model in components, model


# --- the prompt language: styles, clip skip, emphasis, LoRAs, embeddings ---------------------------------------
STYLES_CSV = (
    'name,prompt,negative_prompt\n'
    '"Oil","{prompt}, oil painting, thick brushwork","blurry"\n'
    '"Moody","dark, moody light",""\n'
)


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[FakeManager]:
    """An engine stand-in with LoRAs (one for SD 1.x with kohya metadata, one for SDXL), embeddings (one for SD 1.x,
    one for SD 2.x, one for SDXL) and a styles file."""
    import torch

    folder = tmp_path / "models"
    folder.mkdir()
    tag_frequency = json.dumps({"1_castle": {"castle": 12}})
    loras = (
        write_lora(folder / "paint.safetensors", "sd1", {"ss_output_name": "PaintStyle", "ss_network_dim": "4",
                                                         "ss_tag_frequency": tag_frequency}),
        write_lora(folder / "xl-only.safetensors", "sdxl"),
    )
    embeddings = (
        write_embedding(folder / "castle-ti.pt", torch.zeros(2, 768)),
        write_embedding(folder / "sd2-ti.pt", torch.zeros(1, 1024), step=None),
        write_embedding(folder / "xl-ti.safetensors", {"clip_l": torch.zeros(3, 768), "clip_g": torch.zeros(3, 1280)}),
    )
    styles = tmp_path / "styles.csv"
    styles.write_text(STYLES_CSV, encoding="utf-8")
    registry = FakeRegistry(checkpoints=("demo",), hashes={"demo": "0123456789"}, loras=loras, embeddings=embeddings)
    settings = Settings(queue_size=4, outputs_dir=tmp_path / "outputs", settings_file=tmp_path / "settings.json",
                        styles_file=styles)
    fake = FakeManager(settings, registry)
    yield fake
    fake.close()


def test_loras_list_names_aliases_paths_and_metadata_as_a1111(networks: FakeManager) -> None:
    client = make_client(networks)
    loras = client.get(f"{API}/loras").json()
    assert [lora["name"] for lora in loras] == ["paint", "xl-only"]
    paint, xl = loras
    assert set(paint) == {"name", "alias", "path", "metadata"}
    assert paint["alias"] == "PaintStyle" and paint["path"].endswith("paint.safetensors")
    assert paint["metadata"]["ss_network_dim"] == "4"
    assert paint["metadata"]["ss_tag_frequency"] == {"1_castle": {"castle": 12}}  # JSON text read, as A1111 does
    assert (xl["alias"], xl["metadata"]) == ("xl-only", {})
    resp = client.post(f"{API}/refresh-loras")
    assert resp.status_code == 200 and resp.json() is None


def test_embeddings_split_by_the_default_checkpoint_as_a1111(networks: FakeManager) -> None:
    client = make_client(networks)
    body = client.get(f"{API}/embeddings").json()
    assert body["loaded"] == {"castle-ti": {"step": 42, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "demo",
                                            "shape": 768, "vectors": 2}}
    assert body["skipped"]["sd2-ti"] == {"step": None, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "demo",
                                         "shape": 1024, "vectors": 1}
    assert (body["skipped"]["xl-ti"]["shape"], body["skipped"]["xl-ti"]["vectors"]) == (2048, 3)
    resp = client.post(f"{API}/refresh-embeddings")
    assert resp.status_code == 200 and resp.json() is None


def test_prompt_styles_list_the_styles_file(networks: FakeManager, client: TestClient) -> None:
    styles = make_client(networks).get(f"{API}/prompt-styles").json()
    assert styles == [
        {"name": "Oil", "prompt": "{prompt}, oil painting, thick brushwork", "negative_prompt": "blurry"},
        {"name": "Moody", "prompt": "dark, moody light", "negative_prompt": ""},
    ]
    assert client.get(f"{API}/prompt-styles").json() == []  # no styles file: no styles


def test_styles_clip_skip_and_emphasis_reach_the_request_and_the_info(networks: FakeManager) -> None:
    client = make_client(networks)
    payload = {**BASE, "prompt": "a castle <lora:paint:0.8>", "styles": ["Oil", "Moody"],
               "override_settings": {"CLIP_stop_at_last_layers": 2, "emphasis": "No norm"}}
    resp = client.post(f"{API}/txt2img", json=payload)
    assert resp.status_code == 200, resp.text
    request = networks.submitted[-1]
    assert (request.styles, request.clip_skip, request.emphasis) == (["Oil", "Moody"], 2, "No norm")
    info = json.loads(resp.json()["info"])
    assert info["styles"] == ["Oil", "Moody"] and info["clip_skip"] == 2
    assert info["prompt"] == "a castle <lora:paint:0.8>"  # A1111: as sent; all_prompts with the styles applied
    assert info["all_prompts"] == ["a castle <lora:paint:0.8>, oil painting, thick brushwork, dark, moody light"]
    assert info["all_negative_prompts"] == ["blurry"]
    assert info["warnings"] == []
    assert info["infotexts"][0].startswith("a castle <lora:paint:0.8>, oil painting")
    assert 'Lora hashes: "paint: ' in info["infotexts"][0]
    assert resp.json()["parameters"]["styles"] == ["Oil", "Moody"]


def test_a_top_level_clip_skip_is_read_and_override_settings_wins(client: TestClient, manager: FakeManager) -> None:
    assert client.post(f"{API}/txt2img", json={**BASE, "clip_skip": 3}).status_code == 200
    assert manager.submitted[-1].clip_skip == 3
    both = {**BASE, "clip_skip": 3, "override_settings": {"CLIP_stop_at_last_layers": 2}}
    info = json.loads(client.post(f"{API}/img2img", json={**both, "init_images": [png_b64()]}).json()["info"])
    assert manager.submitted[-1].clip_skip == 2 and info["clip_skip"] == 2
    info = json.loads(client.post(f"{API}/txt2img", json=BASE).json()["info"])
    assert manager.submitted[-1].clip_skip is None and info["clip_skip"] == 1  # the Settings' value


def test_a_lora_or_style_not_found_is_a_warning_in_the_info(networks: FakeManager) -> None:
    client = make_client(networks)
    for route, extra in (("txt2img", {}), ("img2img", {"init_images": [png_b64()]})):
        resp = client.post(f"{API}/{route}", json={**BASE, **extra, "prompt": "a castle <lora:nope:1>",
                                                   "styles": ["Oil", "Gone"]})
        assert resp.status_code == 200, resp.text
        info = json.loads(resp.json()["info"])
        assert info["warnings"] == ["Style not found: Gone", "LoRA not found: nope"]
        assert "Lora hashes" not in info["infotexts"][0]


def test_a_lora_for_another_model_is_422_naming_the_file(networks: FakeManager) -> None:
    client = make_client(networks)
    resp = client.post(f"{API}/txt2img", json={**BASE, "prompt": "a castle <lora:xl-only:1>"})
    assert resp.status_code == 422, resp.text
    assert "xl-only.safetensors" in resp.json()["detail"] and "SDXL" in resp.json()["detail"]
    resp = client.post(f"{API}/txt2img", json={**BASE, "prompt": "a castle <lora:paint:much>"})
    assert resp.status_code == 422 and resp.json()["field"] == "prompt"
    assert client.post(f"{API}/txt2img", json={**BASE, "prompt": "a castle <lora:paint:1>"}).status_code == 200


def test_options_get_and_set_clip_skip_and_emphasis(client: TestClient, manager: FakeManager) -> None:
    options = client.get(f"{API}/options").json()
    assert (options["CLIP_stop_at_last_layers"], options["emphasis"]) == (1, "Original")
    resp = client.post(f"{API}/options", json={"CLIP_stop_at_last_layers": 2, "emphasis": "No norm"})
    assert resp.status_code == 200, resp.text
    assert manager.applied[-1] == {"clip_skip": 2, "emphasis": "No norm"}
    assert (manager.settings.clip_skip, manager.settings.emphasis) == (2, "No norm")
    options = client.get(f"{API}/options").json()
    assert (options["CLIP_stop_at_last_layers"], options["emphasis"]) == (2, "No norm")
    for key, value in (("CLIP_stop_at_last_layers", 0), ("CLIP_stop_at_last_layers", 13), ("emphasis", "Loud"),
                       ("CLIP_stop_at_last_layers", "two")):
        resp = client.post(f"{API}/options", json={key: value})
        assert resp.status_code == 422, (key, value, resp.text)
        assert resp.json()["field"] == key and key in resp.json()["detail"]
    assert (manager.settings.clip_skip, manager.settings.emphasis) == (2, "No norm")  # unchanged


# --- bigger pictures: the hires fix, every upscaler, the SD upscale script, seamless tiling ------------------------
def checkerboard(size: tuple[int, int] = (16, 12)) -> Image.Image:
    """Black and white squares: PIL's Nearest and Lanczos enlarge it differently."""
    image = Image.new("RGB", size)
    image.putdata([(255, 255, 255) if (x // 2 + y // 2) % 2 else (0, 0, 0)
                   for y in range(size[1]) for x in range(size[0])])
    return image


def image_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a1111s_hires_request_with_its_defaults_doubles_the_picture(client: TestClient, manager) -> None:
    # A1111's own test request: enable_hr with everything else as webuiapi sends it
    resp = client.post(f"{API}/txt2img", json={**WEBUIAPI_TXT2IMG, "enable_hr": True, "n_iter": 1})
    assert resp.status_code == 200, resp.text
    assert decode_png(resp.json()["images"][0]).size == (128, 128)
    request = manager.submitted[-1]
    assert (request.enable_hr, request.hr_scale, request.hr_upscaler, request.hr_second_pass_steps) == (
        True, 2.0, "Latent", 0)
    assert request.denoising_strength == 0.7 and (request.width, request.height) == (64, 64)
    info = json.loads(resp.json()["info"])
    assert (info["width"], info["height"], info["denoising_strength"]) == (64, 64, 0.7)
    assert info["extra_generation_params"] == {"Hires upscale": 2.0, "Hires upscaler": "Latent"}
    # PNG Info reads the hires keys back as A1111 writes them
    fields = client.post(f"{API}/png-info", json={"image": resp.json()["images"][0]}).json()["parameters"]
    assert (fields["Hires upscale"], fields["Hires upscaler"], fields["Denoising strength"]) == ("2", "Latent", "0.7")
    # without denoising_strength the hires pass takes A1111's API default (StableDiffusionProcessingTxt2Img: 0.75;
    # 0.7 is what its UI and webuiapi send)
    client.post(f"{API}/txt2img", json={**BASE, "enable_hr": True})
    assert manager.submitted[-1].denoising_strength == 0.75


def test_every_hires_field_reaches_the_request_and_the_infotext(client: TestClient, manager) -> None:
    body = {**BASE, "enable_hr": True, "hr_upscaler": "Lanczos", "hr_resize_x": 128, "hr_resize_y": 96,
            "hr_second_pass_steps": 3, "denoising_strength": 0.45, "hr_sampler_name": "DPM++ 2M",
            "hr_scheduler": "Karras", "hr_prompt": "sharper", "hr_negative_prompt": "soft",
            "hr_checkpoint_name": "Use same checkpoint", "tiling": True}
    resp = client.post(f"{API}/txt2img", json=body)
    assert resp.status_code == 200, resp.text
    assert decode_png(resp.json()["images"][0]).size == (128, 96)
    request = manager.submitted[-1]
    assert (request.hr_upscaler, request.hr_resize_x, request.hr_resize_y, request.hr_second_pass_steps) == (
        "Lanczos", 128, 96, 3)
    assert (request.hr_sampler_name, request.hr_prompt, request.hr_negative_prompt, request.tiling) == (
        "DPM++ 2M Karras", "sharper", "soft", True)
    fields = parse_infotext(json.loads(resp.json()["info"])["infotexts"][0])
    assert (fields["Hires resize-1"], fields["Hires resize-2"], fields["Hires steps"]) == ("128", "96", "3")
    assert (fields["Hires upscaler"], fields["Denoising strength"], fields["Tiling"]) == ("Lanczos", "0.45", "True")
    assert fields["Hires prompt"] == "sharper" and fields["Hires sampler"] == "DPM++ 2M Karras"


def test_the_legacy_firstphase_fields_draw_small_then_reach_width_and_height(client: TestClient, manager) -> None:
    body = {**BASE, "enable_hr": True, "firstphase_width": 64, "firstphase_height": 64, "width": 128, "height": 96}
    resp = client.post(f"{API}/txt2img", json=body)
    assert resp.status_code == 200, resp.text
    request = manager.submitted[-1]
    assert (request.width, request.height, request.hr_resize_x, request.hr_resize_y) == (64, 64, 128, 96)
    assert decode_png(resp.json()["images"][0]).size == (128, 96)


def test_an_unknown_hires_upscaler_lists_the_latent_modes_and_the_upscalers(client: TestClient) -> None:
    resp = client.post(f"{API}/txt2img", json={**BASE, "enable_hr": True, "hr_upscaler": "4x-UltraSharp"})
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert "Latent (bicubic antialiased)" in detail and "Lanczos" in detail and "x4-demo" not in detail


def test_tiling_reaches_txt2img_and_img2img(client: TestClient, manager) -> None:
    for route, extra in (("txt2img", {}), ("img2img", {"init_images": [png_b64()]})):
        resp = client.post(f"{API}/{route}", json={**BASE, **extra, "tiling": True})
        assert resp.status_code == 200, resp.text
        assert manager.submitted[-1].tiling is True
        assert "Tiling: True" in json.loads(resp.json()["info"])["infotexts"][0]
    client.post(f"{API}/txt2img", json={**BASE, "tiling": False})
    assert manager.submitted[-1].tiling is False


@pytest.mark.parametrize("upscaler", ["Lanczos", 1], ids=["by-name", "by-a1111-index"])
def test_the_sd_upscale_script_enlarges_the_init_image(client: TestClient, manager, upscaler) -> None:
    body = {**BASE, "init_images": [png_b64((64, 48))], "denoising_strength": 0.5, "script_name": "SD upscale",
            "script_args": ["", 16, upscaler, 2]}
    resp = client.post(f"{API}/img2img", json=body)
    assert resp.status_code == 200, resp.text
    assert decode_png(resp.json()["images"][0]).size == (128, 96)
    request = manager.submitted[-1]
    assert (request.script_name, request.sd_upscale_overlap, request.sd_upscale_upscaler, request.sd_upscale_scale) == (
        "sd upscale", 16, "Lanczos", 2.0)
    info = json.loads(resp.json()["info"])
    assert info["extra_generation_params"] == {"SD upscale overlap": 16, "SD upscale upscaler": "Lanczos"}
    assert "SD upscale upscaler: Lanczos" in info["infotexts"][0]


def test_scripts_script_info_latent_modes_and_realesrgan_models(client: TestClient, manager, tmp_path) -> None:
    from pipelines.registry import UPSCALER_MODEL, ModelInfo

    assert [m["name"] for m in client.get(f"{API}/latent-upscale-modes").json()] == [
        "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
        "Latent (nearest-exact)"]
    [script] = client.get(f"{API}/script-info").json()
    assert (script["name"], script["is_img2img"], script["is_alwayson"]) == ("sd upscale", True, False)
    assert [arg["label"] for arg in script["args"]] == [None, "Tile overlap", "Upscaler", "Scale Factor"]
    assert script["args"][2]["choices"] == ["None", "Lanczos", "Nearest", "x4-demo"]
    assert client.get(f"{API}/realesrgan-models").json() == []
    manager.registry.model_upscaler_infos = [
        ModelInfo("RealESRGAN_x4plus", tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.pth", "upscaler", "pth", 1,
                  UPSCALER_MODEL, "keys", scale=4, architecture="ESRGAN"),
        ModelInfo("4x-UltraSharp", tmp_path / "ESRGAN" / "4x-UltraSharp.pth", "upscaler", "pth", 1, UPSCALER_MODEL,
                  "keys", scale=4, architecture="ESRGAN"),
        ModelInfo("realesr-general-x4v3", tmp_path / "upscale_models" / "general.pth", "upscaler", "pth", 1,
                  UPSCALER_MODEL, "keys", scale=4, architecture="RealESRGAN Compact"),
    ]
    upscalers = client.get(f"{API}/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest", "RealESRGAN_x4plus", "4x-UltraSharp",
                                              "realesr-general-x4v3", "x4-demo"]
    assert upscalers[4] == {"name": "4x-UltraSharp", "model_name": "ESRGAN",
                            "model_path": str(tmp_path / "ESRGAN" / "4x-UltraSharp.pth"), "model_url": None,
                            "scale": 4}
    models = client.get(f"{API}/realesrgan-models").json()
    assert [(m["name"], m["scale"]) for m in models] == [("RealESRGAN_x4plus", 4), ("realesr-general-x4v3", 4)]


def test_a1111s_extras_request_with_lanczos_upscales_by_the_factor(client: TestClient, manager) -> None:
    # A1111's own test request: upscaler_1 "Lanczos", its default upscaling_resize (2)
    source = checkerboard()
    resp = client.post(f"{API}/extra-single-image", json={"image": image_b64(source), "upscaler_1": "Lanczos"})
    assert resp.status_code == 200, resp.text
    image = decode_png(resp.json()["image"])
    assert image.size == (32, 24)
    assert np.array_equal(np.asarray(image.convert("RGB")),
                          np.asarray(source.resize((32, 24), Image.Resampling.LANCZOS)))
    fields = parse_infotext(resp.json()["html_info"])
    assert (fields["Postprocess upscaler"], fields["Postprocess upscale by"]) == ("Lanczos", "2")
    assert manager.submitted[-1].task == "upscale" and manager.submitted[-1].upscaler == "Lanczos"


def test_extras_scale_to_a_size_crops_to_it_or_keeps_the_aspect(client: TestClient) -> None:
    payload = {"image": image_b64(checkerboard((16, 12))), "upscaler_1": "Nearest", "resize_mode": 1,
               "upscaling_resize_w": 40, "upscaling_resize_h": 40}
    cropped = decode_png(client.post(f"{API}/extra-single-image", json=payload).json()["image"])
    assert cropped.size == (40, 40)
    whole = decode_png(client.post(f"{API}/extra-single-image",
                                   json={**payload, "upscaling_crop": False}).json()["image"])
    assert whole.size == (53, 40)  # by the larger ratio, aspect kept (A1111's extras)


def test_a_second_upscaler_is_blended_over_the_first(client: TestClient, manager) -> None:
    source = checkerboard()
    payload = {"image": image_b64(source), "upscaler_1": "Nearest", "upscaler_2": "Lanczos",
               "extras_upscaler_2_visibility": 0.25, "upscaling_resize": 3}
    resp = client.post(f"{API}/extra-single-image", json=payload)
    assert resp.status_code == 200, resp.text
    image = decode_png(resp.json()["image"])
    expected = Image.blend(source.resize((48, 36), Image.Resampling.NEAREST),
                           source.resize((48, 36), Image.Resampling.LANCZOS), 0.25)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))
    assert [r.upscaler for r in manager.submitted[-2:]] == ["Nearest", "Lanczos"]
    fields = parse_infotext(image.text["parameters"])
    assert (fields["Postprocess upscaler"], fields["Postprocess upscaler 2"]) == ("Nearest", "Lanczos")
    # visibility 0 (A1111's default): upscaler_2 is not run
    count = len(manager.submitted)
    client.post(f"{API}/extra-single-image", json={**payload, "extras_upscaler_2_visibility": 0})
    assert len(manager.submitted) == count + 1


def test_an_unknown_upscaler_lists_the_available_ones_and_nothing_runs(client: TestClient, manager) -> None:
    count = len(manager.submitted)
    resp = client.post(f"{API}/extra-single-image", json={"image": png_b64((16, 16)), "upscaler_1": "4x-UltraSharp"})
    assert resp.status_code == 422 and resp.json()["field"] == "upscaler_1"
    assert all(name in resp.json()["detail"] for name in ("None", "Lanczos", "Nearest", "x4-demo"))
    resp = client.post(f"{API}/extra-single-image", json={"image": png_b64((16, 16)), "upscaler_1": "Lanczos",
                                                           "upscaler_2": "Bicubic", "extras_upscaler_2_visibility": 1})
    assert resp.status_code == 422 and resp.json()["field"] == "upscaler_2"
    assert len(manager.submitted) == count


def test_extra_batch_images_upscales_each_image_of_the_list(client: TestClient, manager) -> None:
    body = {"imageList": [{"data": png_b64((16, 12)), "name": "a.png"},
                          {"data": png_b64((20, 20), data_url=True), "name": "b.png"}],
            "upscaler_1": "Lanczos", "upscaling_resize": 2}
    resp = client.post(f"{API}/extra-batch-images", json=body)
    assert resp.status_code == 200, resp.text
    assert [decode_png(image).size for image in resp.json()["images"]] == [(32, 24), (40, 40)]
    assert "Postprocess upscaler: Lanczos" in resp.json()["html_info"]
    count = len(manager.submitted)
    bad = {**body, "imageList": [body["imageList"][0], {"data": "bm90IGFuIGltYWdl", "name": "broken.png"}]}
    resp = client.post(f"{API}/extra-batch-images", json=bad)
    assert resp.status_code == 422 and resp.json()["field"] == "imageList[1].data"
    assert len(manager.submitted) == count  # checked before any job ran
    for changes, field_name in (({"imageList": []}, "imageList"), ({"upscaler_1": "Bicubic"}, "upscaler_1"),
                                ({"codeformer_visibility": 1}, "codeformer_visibility")):
        resp = client.post(f"{API}/extra-batch-images", json={**body, **changes})
        assert resp.status_code == 422 and resp.json()["field"] == field_name, resp.text


# --- inpainting and outpainting: A1111's mask fields, Atelier's outpaint ---------------------------------------------
def masked_square(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A mask as A1111's clients send one: white where to redraw, black elsewhere."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def detailed_picture(size: int = 64, seed: int = 3) -> Image.Image:
    """A picture with detail everywhere, so that a change anywhere shows."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def a1111_img2img_request(init: str, **changes: Any) -> dict[str, Any]:
    """A1111's own API test request (test/test_img2img.py ``simple_img2img_request``), with ``changes``."""
    body = {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": [init], "inpaint_full_res": False,
        "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
        "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
        "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }
    body.update(changes)
    return body


def test_a1111s_mask_fields_reach_the_request_with_a1111s_api_defaults(client: TestClient, manager) -> None:
    init, mask = png_b64((64, 64)), image_b64(masked_square((32, 32), (8, 8, 16, 16)))
    resp = client.post(f"{API}/img2img", json=a1111_img2img_request(init, mask=mask))
    assert resp.status_code == 200, resp.text
    request = manager.submitted[-1]
    assert request.inpainting and request.mask.size == (64, 64)  # a mask of another size: resized, as A1111
    pixels = np.asarray(request.mask)
    assert pixels[18:30, 18:30].min() == 255 and pixels[:14].max() == 0 and pixels[34:].max() == 0
    assert (request.mask_blur_xy, request.inpainting_fill, request.inpaint_full_res, request.inpaint_full_res_padding,
            request.inpainting_mask_invert) == ((4, 4), 0, False, 0, False)
    # the fields left out: A1111's API defaults (not its UI's): "Only masked" with 0 px, fill, blur 4 each way
    resp = client.post(f"{API}/img2img", json={**BASE, "init_images": [init], "mask": f"data:image/png;base64,{mask}"})
    assert resp.status_code == 200, resp.text
    request = manager.submitted[-1]
    assert (request.mask_blur_xy, request.inpainting_fill, request.inpaint_full_res, request.inpaint_full_res_padding,
            request.inpainting_mask_invert, request.noise_multiplier) == ((4, 4), 0, True, 0, False, 1.0)
    info = json.loads(resp.json()["info"])
    assert info["extra_generation_params"] == {"Mask blur": 4, "Inpaint area": "Only masked",
                                               "Masked area padding": 0, "Masked content": "fill"}
    fields = parse_infotext(info["infotexts"][0])
    assert (fields["Mask blur"], fields["Inpaint area"], fields["Masked area padding"], fields["Masked content"]) == (
        "4", "Only masked", "0", "fill")
    # mask_blur, when sent, sets both axes over mask_blur_x/_y (A1111's setter); the others as sent, 0/1 for booleans
    sent = {"mask": mask, "mask_blur": 7, "mask_blur_x": 2, "inpaint_full_res": 0, "inpaint_full_res_padding": 24,
            "inpainting_mask_invert": 1, "inpainting_fill": 3, "initial_noise_multiplier": 0.5}
    assert client.post(f"{API}/img2img", json={**BASE, "init_images": [init], **sent}).status_code == 200
    request = manager.submitted[-1]
    assert (request.mask_blur_xy, request.inpaint_full_res, request.inpaint_full_res_padding,
            request.inpainting_mask_invert, request.inpainting_fill, request.noise_multiplier) == (
        (7, 7), False, 24, True, 3, 0.5)
    sent = {"mask": mask, "mask_blur_x": 2, "mask_blur_y": 6, "inpaint_full_res": True}
    resp = client.post(f"{API}/img2img", json={**BASE, "init_images": [init], **sent})
    assert manager.submitted[-1].mask_blur_xy == (2, 6) and manager.submitted[-1].inpaint_full_res is True
    assert "Mask blur" not in json.loads(resp.json()["info"])["extra_generation_params"]  # A1111: only when x == y


@pytest.mark.parametrize("mask", ["", None], ids=["empty-text", "null"])
def test_an_empty_or_null_mask_is_a_plain_img2img(client: TestClient, manager, mask) -> None:
    resp = client.post(f"{API}/img2img", json=a1111_img2img_request(png_b64(), mask=mask))
    assert resp.status_code == 200, resp.text
    request = manager.submitted[-1]
    assert request.mask is None and not request.inpainting
    assert json.loads(resp.json()["info"])["extra_generation_params"] == {}


def test_the_mask_is_echoed_with_the_init_images_or_not_at_all(client: TestClient) -> None:
    init, mask = png_b64(), image_b64(masked_square((64, 64), (0, 0, 32, 32)))
    params = client.post(f"{API}/img2img", json=a1111_img2img_request(init, mask=mask)).json()["parameters"]
    assert params["init_images"] is None and params["mask"] is None
    body = a1111_img2img_request(init, mask=mask, include_init_images=True)
    params = client.post(f"{API}/img2img", json=body).json()["parameters"]
    assert params["init_images"] == [init] and params["mask"] == mask


def test_outpaint_grows_the_picture_by_its_sides(client: TestClient, manager) -> None:
    body = {**BASE, "init_images": [png_b64((48, 48))], "outpaint": {"left": 16, "down": 8}}
    whole = client.post(f"{API}/img2img", json={**body, "inpaint_full_res": False})
    assert whole.status_code == 200, whole.text
    assert decode_png(whole.json()["images"][0]).size == (80, 72)  # drawn at width x height plus the sides
    assert manager.submitted[-1].outpaint.model_dump() == {"left": 16, "right": 0, "up": 0, "down": 8}
    only_masked = client.post(f"{API}/img2img", json=body)  # A1111's API default: "Only masked"
    assert decode_png(only_masked.json()["images"][0]).size == (64, 56)  # the init image plus the sides


EMPTY_MASK = image_b64(masked_square((64, 64), (0, 0, 0, 0)))
BAD_INPAINT = [
    ({"mask": EMPTY_MASK}, "mask", "the mask is empty: paint the area to change"),
    ({"mask": image_b64(masked_square((64, 64), (0, 0, 64, 64))), "inpainting_mask_invert": True}, "mask",
     "the mask is empty: paint the area to change"),
    ({"mask": "bm90IGFuIGltYWdl"}, "mask", "could not be read as an image"),
    ({"mask": "data:image/png;base64,@@@@"}, "mask", "mask"),
    ({"mask": 42}, "mask", "mask"),
    ({"outpaint": {"left": 1024, "right": 1024}, "inpaint_full_res": False}, "outpaint.right", "at most 2048 px"),
    ({"outpaint": {"left": 2048, "right": 2048}}, "outpaint.right", "at most 4096 px"),  # "Only masked"'s limit
    ({"outpaint": {"down": 12}}, "outpaint.down", "multiple of 8"),
    ({"outpaint": {"top": 8}}, "outpaint.top", "outpaint.top"),
    ({"outpaint": {"left": "wide"}}, "outpaint.left", "outpaint.left"),
    ({"mask": image_b64(masked_square((64, 64), (0, 0, 8, 8))), "inpainting_fill": 7}, "inpainting_fill", "0-3"),
    ({"mask": image_b64(masked_square((64, 64), (0, 0, 8, 8))), "inpaint_full_res": 2}, "inpaint_full_res",
     "true or false"),
    ({"mask": image_b64(masked_square((64, 64), (0, 0, 8, 8))), "mask_blur": 65}, "mask_blur", "between 0 and 64"),
    ({"latent_mask": image_b64(masked_square((64, 64), (0, 0, 8, 8)))}, "latent_mask", "not available"),
    ({"depth_map": "bm90IGFuIGltYWdl"}, "depth_map", "could not be read as an image"),
]


@pytest.mark.parametrize(("changes", "field_name", "words"), BAD_INPAINT, ids=[f for _, f, _ in BAD_INPAINT])
def test_bad_masks_and_outpaints_are_422_naming_the_field_and_nothing_is_written(client: TestClient, manager,
                                                                               changes, field_name, words) -> None:
    outputs = manager.settings.outputs_dir
    count = len(manager.submitted)
    resp = client.post(f"{API}/img2img", json={**BASE, "init_images": [png_b64()], **changes})
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == field_name and words in resp.json()["detail"], resp.json()
    assert len(manager.submitted) == count
    assert not outputs.exists() or not any(path.is_file() for path in outputs.rglob("*"))  # nothing half-written


@pytest.fixture(scope="module")
def engine_client(tmp_path_factory) -> Iterator[TestClient]:
    """The API over the real engine on tiny random-weight models (a normal and a 9-channel inpainting checkpoint)."""
    from manager_fixtures import make_manager

    registry = FakeRegistry(checkpoints=("tiny-a", "tiny-inpaint"), families={"tiny-inpaint": "sd15-inpaint"})
    engine = make_manager(tmp_path_factory.mktemp("api-inpaint"), registry=registry)
    yield make_client(engine)
    engine.close()


def changed_pixels(result_b64: str, original: Image.Image) -> np.ndarray:
    image = decode_png(result_b64).convert("RGB")
    assert image.size == original.size
    return np.abs(np.asarray(image, np.int16) - np.asarray(original, np.int16)).max(axis=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize(("checkpoint", "invert"), [("tiny-a", False), ("tiny-a", True), ("tiny-inpaint", False)],
                         ids=["masked", "inverted", "inpainting-checkpoint"])
def test_a1111s_own_inpainting_requests_answer_200_with_the_effect(engine_client: TestClient, checkpoint: str,
                                                                   invert: bool) -> None:
    from pipelines.masks import blur_radius

    # inverted, a larger square: its middle lies farther than the blur from what is redrawn
    init, box, reach = detailed_picture(), (12, 12, 52, 52) if invert else (24, 24, 40, 40), blur_radius(4)
    body = a1111_img2img_request(image_b64(init), mask=image_b64(masked_square((64, 64), box)),
                                 inpainting_mask_invert=invert,
                                 override_settings={"sd_model_checkpoint": checkpoint})
    resp = engine_client.post(f"{API}/img2img", json=body)
    assert resp.status_code == 200, resp.text
    changed = changed_pixels(resp.json()["images"][0], init)
    near = np.zeros((64, 64), dtype=bool)
    near[box[1] - reach:box[3] + reach, box[0] - reach:box[2] + reach] = True
    if invert:  # the painted square, less the blur's reach, is kept; the rest is redrawn
        assert changed[box[1] + reach:box[3] - reach, box[0] + reach:box[2] - reach].max() == 0
        assert changed[~near].mean() > 20
    else:  # beyond the blur, exactly the original's pixels; the painted square redrawn
        assert changed[~near].max() == 0
        assert changed[box[1]:box[3], box[0]:box[2]].mean() > 20
    fields = parse_infotext(json.loads(resp.json()["info"])["infotexts"][0])
    assert fields["Mask blur"] == "4" and fields["Masked content"] == "fill" and "Inpaint area" not in fields
    assert fields.get("Mask mode") == ("Inpaint not masked" if invert else None)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_an_outpaint_request_keeps_the_old_picture_beyond_the_seam(engine_client: TestClient) -> None:
    from pipelines.masks import OUTPAINT_OVERLAP, blur_radius

    init = detailed_picture()
    body = {**BASE, "steps": 3, "seed": 9, "init_images": [image_b64(init)], "outpaint": {"right": 16},
            "inpaint_full_res": False}
    resp = engine_client.post(f"{API}/img2img", json=body)
    assert resp.status_code == 200, resp.text
    image = decode_png(resp.json()["images"][0]).convert("RGB")
    assert image.size == (80, 64)
    changed = changed_pixels(image_b64(image.crop((0, 0, 64, 64))), init)
    seam = OUTPAINT_OVERLAP + blur_radius(4)
    assert changed[:, :64 - seam].max() == 0 and changed[:, 64 - OUTPAINT_OVERLAP:].mean() > 5
