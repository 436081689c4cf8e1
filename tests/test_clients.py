"""The programs artists connect, replayed request by request from their sources against Atelier (issue 27).

Each test follows one client's code path (the file is named in its docstring) with the exact calls, headers and
bodies it sends, and checks what that client reads back:

* Open WebUI (``backend/open_webui/routers/images.py``): its A1111 engine reads the options, POSTs the whole dict
  back with a new ``sd_model_checkpoint``, then calls txt2img; its OpenAI engine calls ``/v1/images/generations``;
* SillyTavern (``src/endpoints/stable-diffusion.js``): the listing calls, a model switch followed by ``/progress``
  polls until ``progress == 0 and job_count == 0``, txt2img, and ``/interrupt`` when its own client goes away;
* openOutpaint (``js/index.js``, ``js/ui/tool/dream.js``): its start-up calls from another origin (CORS), the
  upscaler list read from a purposely wrong ``extra-single-image/`` answer, ``options/`` with a trailing slash, the
  checkpoint's hash matched to ``sd-models``, txt2img with ``seed: "-1"`` and ``mask: ""``, progress polls with
  ``skip_current_image``;
* text-generation-webui (``extensions/sd_api_pictures/script.py``): ``unload-checkpoint`` / ``reload-checkpoint``
  to lend the VRAM to an LLM, around its txt2img;
* Dify (``api/core/tools/provider/builtin/stablediffusion/tools/stable_diffusion.py``): options posted without a
  Content-Type, ``sampler_index: "DPM++ SDE Karras"`` and A1111's full field set;
* AUTOMATIC1111's own API test (``test/test_utils.py``): options write of ``send_seed``.

The engine is the real ``PipelineManager`` on tiny random-weight models (``manager_fixtures``) where the client
depends on what the engine does (loads, unloads, steps, previews, Stop), the test stand-in elsewhere. CORS and the
Gradio app itself: an ``app.py --demo`` started with the CORS flags, the UI driven in Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import AppProcess, spawn_app
from fakes import FakeManager, FakeRegistry
from fastapi import FastAPI
from fastapi.testclient import TestClient
from manager_fixtures import TinyLoader, make_manager
from PIL import Image

from api import mount
from api.cors import CorsPolicy
from pipelines.infotext import parse_infotext
from pipelines.settings import Settings

API = "/sdapi/v1"
OUTPAINT_ORIGIN = "http://127.0.0.1:3456"  # openOutpaint's own server (its README: --cors-allow-origins=...)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


# --- the engines and the clients ----------------------------------------------------------------------------------
class GatedLoader(TinyLoader):
    """The tiny loader, holding a load of the checkpoints in ``slow`` until ``gate`` is set (a load that takes time,
    as a real checkpoint's does)."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: set[str] = set()
        self.gate = threading.Event()

    def __call__(self, info: Any, dtype: Any, vae: Any = None) -> Any:
        if info.name in self.slow:
            assert self.gate.wait(60), "the test never opened the gate"
        return super().__call__(info, dtype, vae)


@pytest.fixture
def loader() -> GatedLoader:
    return GatedLoader()


@pytest.fixture
def engine(tmp_path: Path, loader: GatedLoader) -> Iterator[Any]:
    """The real pipeline manager over two tiny checkpoints (``tiny-a``, ``tiny-b``)."""
    manager = make_manager(tmp_path, loader=loader, queue_size=8, default_steps=2)
    manager.start()
    yield manager
    manager.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeManager]:
    registry = FakeRegistry(checkpoints=("dreamshaper_8", "juggernaut"),
                            hashes={"dreamshaper_8": "879db523c3", "juggernaut": "d91d35736d"})
    manager = FakeManager(Settings(queue_size=8, default_steps=2, outputs_dir=tmp_path / "outputs"), registry)
    yield manager
    manager.close()


def client_for(manager: Any, auth: dict[str, str] | None = None, cors: CorsPolicy | None = None) -> TestClient:
    app = FastAPI()
    mount(app, manager, manager.settings, auth, cors=cors)
    return TestClient(app, raise_server_exceptions=False)


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1])))
    image.load()
    return image


def wait_until(condition, timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {timeout:.0f} s")
        time.sleep(0.02)


def saved(manager: Any) -> list[Path]:
    return sorted(Path(manager.settings.outputs_dir).rglob("*.png"))


# --- Open WebUI ---------------------------------------------------------------------------------------------------
def test_open_webui_posts_the_whole_options_dict_back_to_switch_and_then_draws(engine) -> None:
    """images.py: get_models → set_image_model (GET options, POST them all back) → image_generations (txt2img)."""
    client = client_for(engine)
    headers = {"authorization": ""}  # get_automatic1111_api_auth() without a login set
    listed = client.get(f"{API}/sd-models", headers=headers).json()
    models = [{"id": m["title"], "name": m["model_name"]} for m in listed]
    assert [m["name"] for m in models] == ["tiny-a", "tiny-b"]
    before = client.get(f"{API}/options", headers=headers).json()
    assert before["sd_model_checkpoint"] == models[0]["id"]
    model = models[1]["id"]
    options = client.get(f"{API}/options", headers=headers).json()
    if model != options["sd_model_checkpoint"]:
        options["sd_model_checkpoint"] = model
        response = client.post(f"{API}/options", json=options, headers=headers)
        assert response.status_code == 200, response.text
    after = client.get(f"{API}/options", headers=headers).json()
    assert after["sd_model_checkpoint"] == model
    switched = ("sd_model_checkpoint", "sd_checkpoint_hash")
    unchanged = {key: value for key, value in before.items() if key not in switched}
    assert {key: after[key] for key in unchanged} == unchanged  # the round trip set nothing else
    data = {"prompt": "a lighthouse at dusk", "batch_size": 2, "width": 64, "height": 64, "steps": 2}
    res = client.post(f"{API}/txt2img", json=data, headers=headers).json()
    info = json.loads(res["info"])  # kept with each image
    assert [png(image).size for image in res["images"]] == [(64, 64), (64, 64)]
    assert info["sd_model_name"] == "tiny-b" and info["warnings"] == []


def test_open_webui_openai_engine_draws_through_v1_images_generations(engine) -> None:
    """images.py, engine "openai": POST {base}/images/generations with the key as a Bearer token, reads data[].b64_json
    (or a url); GET /v1/models for the model list a user picks from."""
    client = client_for(engine, auth={"artist": "s3cret"})
    bearer = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
    ids = [card["id"] for card in client.get("/v1/models", headers=bearer).json()["data"]]
    assert ids == ["tiny-a", "tiny-b"]
    data = {"model": "tiny-b", "prompt": "a lighthouse", "n": 2, "size": "64x64", "response_format": "b64_json"}
    res = client.post("/v1/images/generations", json=data, headers=bearer)
    assert res.status_code == 200, res.text
    pictures = [png(image["b64_json"]) for image in res.json()["data"]]
    assert [picture.size for picture in pictures] == [(64, 64), (64, 64)]
    fields = parse_infotext(pictures[0].text["parameters"])
    assert (fields["Model"], fields["Steps"], fields["Prompt"]) == ("tiny-b", "2", "a lighthouse")
    assert isinstance(res.json()["created"], int)
    # OpenAI's default model id draws with the current checkpoint; a url is the PNG as a data: URL
    res = client.post("/v1/images/generations", json={**data, "model": "dall-e-3", "n": 1, "response_format": "url"},
                      headers=bearer).json()
    assert res["data"][0]["url"].startswith("data:image/png;base64,")
    assert parse_infotext(png(res["data"][0]["url"]).text["parameters"])["Model"] == "tiny-a"
    # the same login as the rest of the API: Basic works, a wrong key is OpenAI's 401
    assert client.get("/v1/models", auth=("artist", "s3cret")).status_code == 200
    wrong = client.post("/v1/images/generations", json=data, headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    bad = client.post("/v1/images/generations", json={**data, "size": "1000x1001"}, headers=bearer)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "size"
    assert "multiple of 8" in bad.json()["error"]["message"]


# --- SillyTavern --------------------------------------------------------------------------------------------------
def sillytavern_body(**changes: Any) -> dict[str, Any]:
    """generateAutoImage's body: the connection ({url, auth}) travels in it to the server, which posts it all."""
    body = {"url": "http://127.0.0.1:7860", "auth": "", "prompt": "best quality, a knight", "negative_prompt":
            "lowres, bad anatomy", "sampler_name": "DPM++ 2M", "scheduler": "karras", "steps": 2, "cfg_scale": 7,
            "width": 64, "height": 64, "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent",
            "hr_scale": 2.0, "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": -1, "clip_skip": 1,
            "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"},
            "override_settings_restore_afterwards": True, "save_images": True, "send_images": True}
    return {**body, **changes}


def test_sillytavern_lists_switches_waits_for_the_load_draws_and_interrupts(engine, loader) -> None:
    """stable-diffusion.js: /ping, /samplers, /schedulers, /models, /vaes (sd-vae and Forge's sd-modules), /upscalers
    (upscalers and latent modes), /get-model; /set-model: POST options, then progress polls until idle; /generate:
    GET options (Forge?), txt2img; the client's socket closing: POST interrupt."""
    client = client_for(engine)
    auth = {"Authorization": "Basic "}  # getBasicAuthHeader("") when no login is set
    assert client.get(f"{API}/options", headers=auth).status_code == 200  # /ping
    samplers = [s["name"] for s in client.get(f"{API}/samplers", headers=auth).json()]
    schedulers = [s["name"] for s in client.get(f"{API}/schedulers", headers=auth).json()]
    assert "DPM++ 2M" in samplers and "karras" in schedulers
    models = [{"value": m["title"], "text": m["title"]} for m in client.get(f"{API}/sd-models", headers=auth).json()]
    vaes = [v["model_name"] for v in client.get(f"{API}/sd-vae", headers=auth).json()]  # the first that answers
    assert vaes == ["tiny-vae"] and client.get(f"{API}/sd-modules", headers=auth).json() == []
    upscalers = [u["name"] for u in client.get(f"{API}/upscalers", headers=auth).json()]
    latent = [m["name"] for m in client.get(f"{API}/latent-upscale-modes", headers=auth).json()]
    upscalers[1:1] = latent  # 0 = None, then the latent upscalers, then the others
    assert upscalers[:2] == ["None", "Latent"]
    assert client.get(f"{API}/options", headers=auth).json()["sd_model_checkpoint"] == models[0]["value"]

    # /set-model: the switch loads the new checkpoint now; the polls see it until it is loaded
    loader.slow.add("tiny-b")
    response = client.post(f"{API}/options", json={"sd_model_checkpoint": models[1]["value"]}, headers=auth)
    assert response.status_code == 200, response.text
    wait_until(lambda: engine.current_job() is not None, what="the load to start")
    loading = client.get(f"{API}/progress", headers=auth).json()
    assert loading["progress"] == 0.0 and loading["state"]["job_count"] == 1  # a load counts: not idle yet
    assert "tiny-b" in loading["textinfo"]
    loader.gate.set()
    for _attempt in range(200):  # MAX_ATTEMPTS with a shorter CHECK_INTERVAL
        state = client.get(f"{API}/progress", headers=auth).json()
        if state["progress"] == 0.0 and state["state"]["job_count"] == 0:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"never idle after the switch: {state}")
    assert engine.cache.names() == ["tiny-b"]

    # /generate
    assert "forge_preset" not in client.get(f"{API}/options", headers=auth).json()  # not Forge
    res = client.post(f"{API}/txt2img", json=sillytavern_body(), headers=auth)
    assert res.status_code == 200, res.text
    info = json.loads(res.json()["info"])
    assert (info["sd_model_name"], info["sampler_name"]) == ("tiny-b", "DPM++ 2M Karras")
    assert info["warnings"] == ["Unknown field ignored: auth", "Unknown field ignored: url"]
    assert png(res.json()["images"][0]).size == (64, 64)

    # the browser tab closes mid-run: the server posts /interrupt and the run stops within a step
    engine.settings.step_delay_s = 0.2
    files = len(saved(engine))
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.setdefault(
        "response", client.post(f"{API}/txt2img", json=sillytavern_body(steps=30), headers=auth)))
    worker.start()
    wait_until(lambda: client.get(f"{API}/progress").json()["state"]["sampling_step"] >= 1, what="a step")
    assert client.post(f"{API}/interrupt", headers=auth).json() == {}
    worker.join(30)
    assert outcome["response"].status_code == 409 and "Stopped" in outcome["response"].json()["detail"]
    assert len(saved(engine)) == files
    idle = client.get(f"{API}/progress").json()
    assert (idle["progress"], idle["state"]["job_count"]) == (0.0, 0)


# --- openOutpaint ----------------------------------------------------------------------------------------------------
def test_openoutpaint_starts_from_its_own_origin_and_draws(engine) -> None:
    """index.js startup (checkConnection, getConfig, getStyles, getSamplers, getUpscalers, getModels) and dream.js,
    from a page on another origin: the answers carry the CORS header, the POSTs are accepted."""
    client = client_for(engine, cors=CorsPolicy.from_flags(f"{OUTPAINT_ORIGIN}/", None))  # its README's form
    page = {"Origin": OUTPAINT_ORIGIN}
    preflight = client.options(f"{API}/options/", headers={**page, "Access-Control-Request-Method": "POST",
                                                            "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == OUTPAINT_ORIGIN
    response = client.get(f"{API}/options", headers=page)
    assert response.headers["access-control-allow-origin"] == OUTPAINT_ORIGIN
    options = response.json()
    assert not options.get("use_scale_latent_for_hires_fix")  # not the old hires fix
    # getConfig: the recommended values are there already; its POST of them is accepted
    assert options["img2img_color_correction"] is False and options["inpainting_mask_weight"] >= 1.0
    assert client.post(f"{API}/options", json={"img2img_color_correction": False, "inpainting_mask_weight": 1.0},
                       headers=page).status_code == 200
    assert client.get(f"{API}/prompt-styles", headers=page).json() == []
    assert client.get(f"{API}/samplers", headers=page).status_code == 200
    # getUpscalers: a made-up upscaler on purpose, the list read from the 422's detail after ": "
    wrong = {"resize-mode": 0, "upscaling_resize": 2, "upscaler_1": "fake_upscaler", "image": ""}
    detail = client.post(f"{API}/extra-single-image/", json=wrong, headers=page).json()["detail"]
    listed = [name.strip() for name in detail.split(": ")[1].split(",")]
    assert listed == [u["name"] for u in client.get(f"{API}/upscalers").json()]
    # getModels: the titles, the current one; its hash matches the listing's sha256 (webuiapi and openOutpaint match it)
    models = client.get(f"{API}/sd-models", headers=page).json()
    current = client.get(f"{API}/options", headers=page).json()
    assert current["sd_model_checkpoint"] in [m["title"] for m in models]
    by_hash = [m["title"] for m in models if m["sha256"] == current["sd_checkpoint_hash"]]
    assert by_hash == [current["sd_model_checkpoint"]]
    # the model picker posts to options/ (with the slash)
    response = client.post(f"{API}/options/", json={"sd_model_checkpoint": models[1]["title"]}, headers=page)
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == OUTPAINT_ORIGIN
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] == models[1]["title"]
    for path in ("loras", "schedulers", "scripts"):  # dream.js
        assert client.get(f"{API}/{path}", headers=page).status_code == 200, path

    # dream.js: stableDiffusionData (the seed straight from its text box), progress polls while it draws
    engine.settings.step_delay_s = 0.15
    body = {"prompt": "a castle", "negative_prompt": "", "seed": "-1", "cfg_scale": 7, "sampler_index": "DDIM",
            "steps": 6, "denoising_strength": 1, "mask_blur": 0, "batch_size": 1, "width": 64, "height": 64,
            "n_iter": 1, "mask": "", "init_images": [], "inpaint_full_res": False, "inpainting_fill": 1,
            "outpainting_fill": 2, "enable_hr": False, "restore_faces": False, "hr_scale": 2.0,
            "hr_upscaler": "None", "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
            "hr_square_aspect": False, "styles": []}
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.setdefault(
        "response", client.post(f"{API}/txt2img", json=body, headers=page)))
    worker.start()
    wait_until(lambda: client.get(f"{API}/progress").json()["state"]["sampling_step"] >= 1, what="a step")
    quiet = client.get(f"{API}/progress?skip_current_image=true", headers=page).json()
    live = client.get(f"{API}/progress?skip_current_image=false", headers=page).json()
    assert quiet["current_image"] is None and png(live["current_image"]).format == "PNG"
    assert 0 < live["progress"] < 1 and live["state"]["sampling_steps"] == 6 and live["eta_relative"] > 0
    worker.join(60)
    response = outcome["response"]
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["sampler_name"] == "DDIM" and info["seed"] >= 0  # "-1": a random seed, as a number


def test_a_page_of_another_origin_is_refused_unless_allowed(fake) -> None:
    client = client_for(fake, cors=CorsPolicy.from_flags(OUTPAINT_ORIGIN, r"https://.*\.example\.org"))
    preflight = {"Access-Control-Request-Method": "POST"}
    for origin in (OUTPAINT_ORIGIN, "https://studio.example.org"):
        answer = client.options(f"{API}/txt2img", headers={"Origin": origin, **preflight})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == origin
    for origin in ("http://evil.example", "null", "http://127.0.0.1:3457"):
        answer = client.options(f"{API}/txt2img", headers={"Origin": origin, **preflight})
        assert answer.status_code == 400 and "access-control-allow-origin" not in answer.headers, origin
    # a page that sends its request anyway (no preflight for a "simple" POST): refused before anything runs
    for origin, why in (("null", "Origin 'null'"), ("http://evil.example", "--cors-allow-origins http://evil.example")):
        answer = client.post(f"{API}/interrupt", headers={"Origin": origin})
        assert answer.status_code == 403 and why in answer.json()["detail"], answer.text
    assert fake.interrupted == 0
    # a GET answers, but without the header the browser would need to let that page read it
    answer = client.get(f"{API}/options", headers={"Origin": "http://evil.example"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    # the server's own page, programs without an Origin, an allowed page: accepted
    for headers in ({"Origin": "http://testserver"}, {}, {"Origin": "https://studio.example.org"}):
        assert client.post(f"{API}/interrupt", headers=headers).status_code == 200, headers
    assert fake.interrupted == 3


def test_a_broken_origin_or_host_header_is_refused_not_a_server_error(fake) -> None:
    client = client_for(fake)
    for headers in ({"Origin": "http://[x"}, {"Origin": "http://[x]:99999"}, {"Origin": "http://a", "Host": "[zz"}):
        answer = client.post(f"{API}/interrupt", headers=headers)
        assert answer.status_code == 403 and "Refused" in answer.json()["detail"], (headers, answer.text)
    assert fake.interrupted == 0


def test_any_origin_allowed_never_comes_with_the_browsers_login(fake) -> None:
    preflight = {"Origin": "http://any.example", "Access-Control-Request-Method": "POST"}
    wide = client_for(fake, cors=CorsPolicy.from_flags("*", None)).options(f"{API}/txt2img", headers=preflight)
    assert wide.status_code == 200 and "access-control-allow-credentials" not in wide.headers
    named = client_for(fake, cors=CorsPolicy.from_flags("http://any.example", None)).options(
        f"{API}/txt2img", headers=preflight)
    assert named.headers["access-control-allow-credentials"] == "true"


def test_with_no_cors_flag_no_other_origin_may_call(fake) -> None:
    client = client_for(fake)
    answer = client.options(f"{API}/txt2img", headers={"Origin": "http://localhost:3000",
                                                         "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in answer.headers
    refused = client.post(f"{API}/options", json={"send_seed": False}, headers={"Origin": "http://localhost:3000"})
    assert refused.status_code == 403 and fake.settings.send_seed is True
    assert client.post(f"{API}/options", json={"send_seed": False}, headers={"Origin": "http://testserver"}).is_success
    assert fake.settings.send_seed is False


@pytest.mark.parametrize(("origins", "regex", "error"), [
    ("127.0.0.1:3456", None, "not an origin"),
    ("http://a.example/path", None, "not an origin"),
    (None, "([unclosed", "not a regular expression"),
])
def test_bad_cors_flags_are_refused_with_the_reason(origins, regex, error) -> None:
    with pytest.raises(ValueError, match=error):
        CorsPolicy.from_flags(origins, regex)


# --- text-generation-webui --------------------------------------------------------------------------------------
def test_text_generation_webui_lends_the_vram_to_an_llm_and_takes_it_back(engine, loader) -> None:
    """script.py give_VRAM_priority: 'set' → unload; get_SD_pictures: 'SD' → reload, txt2img, 'LLM' → unload. Each
    POST sends json='' (a JSON empty string), as requests does with it."""
    client = client_for(engine)
    assert client.post(f"{API}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64}).status_code == 200
    assert engine.cache.names() == ["tiny-a"] and loader.loads == ["tiny-a"]
    response = client.post(f"{API}/unload-checkpoint", json="")  # 'set'
    assert response.status_code == 200 and response.json() == {}
    assert engine.cache.names() == [] and engine.status().loaded_checkpoint is None  # the VRAM is the LLM's now
    assert client.post(f"{API}/reload-checkpoint", json="").json() == {}  # 'SD'
    assert engine.cache.names() == ["tiny-a"] and loader.loads == ["tiny-a", "tiny-a"]
    payload = {"prompt": "(Masterpiece:1.1), detailed, intricate, colorful(a cat on a sofa:1)", "seed": -1.0,
               "sampler_name": "DPM++ 2M", "enable_hr": False, "hr_scale": "1.0", "hr_upscaler": "ESRGAN_4x",
               "denoising_strength": 0.61, "steps": 2, "cfg_scale": 7, "width": 64, "height": 64,
               "restore_faces": False, "override_settings_restore_afterwards": True,
               "negative_prompt": "(worst quality, low quality:1.3)"}
    response = client.post(f"{API}/txt2img", json=payload)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0].split(",", 1)[0])))
    assert image.size == (64, 64) and loader.loads == ["tiny-a", "tiny-a"]  # it was loaded: no third load
    assert client.post(f"{API}/unload-checkpoint", json="").json() == {}  # 'LLM'
    assert engine.cache.names() == []
    # an image asked for while unloaded waits for the checkpoint to load again, then a reload has nothing to do
    assert client.post(f"{API}/txt2img", json=payload).status_code == 200
    assert loader.loads == ["tiny-a"] * 3
    assert client.post(f"{API}/reload-checkpoint", json="").json() == {} and loader.loads == ["tiny-a"] * 3


# --- Dify and A1111's own test ---------------------------------------------------------------------------------------
DIFY_DRAW_TEXT_OPTIONS = {
    "prompt": "", "negative_prompt": "", "seed": -1, "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": -1,
    "sampler_index": "DPM++ SDE Karras", "seed_resize_from_w": -1, "batch_size": 1, "n_iter": 1, "steps": 10,
    "cfg_scale": 7, "width": 1024, "height": 1024, "restore_faces": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "eta": 0, "denoising_strength": 0, "s_min_uncond": 0, "s_churn": 0, "s_tmax": 0,
    "s_tmin": 0, "s_noise": 0, "override_settings": {}, "override_settings_restore_afterwards": True,
    "refiner_switch_at": 0, "disable_extra_networks": False, "comments": {}, "enable_hr": False,
    "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2, "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_prompt": "", "hr_negative_prompt": "", "script_args": [], "send_images": True,
    "save_images": False, "alwayson_scripts": {},
}


def test_dify_sets_the_model_without_a_content_type_and_sends_old_sampler_names(fake) -> None:
    """stable_diffusion.py: validate_models (sd-models → model_name), _invoke (POST options with data=json.dumps:
    no Content-Type), text2img (DRAW_TEXT_OPTIONS), img2img (a stray script_args without a script)."""
    client = client_for(fake)
    models = [d["model_name"] for d in client.get(f"{API}/sd-models").json()]
    model = models[1]
    response = client.post(f"{API}/options", content=json.dumps({"sd_model_checkpoint": model}))
    assert response.status_code == 200, response.text
    assert fake.default_checkpoint().name == "juggernaut"
    draw = json.loads(json.dumps(DIFY_DRAW_TEXT_OPTIONS))
    draw.update(prompt="a cat", width=1024, height=1024, steps=10, negative_prompt="")
    draw["override_settings"]["sd_model_checkpoint"] = model
    response = client.post(f"{API}/txt2img", content=json.dumps(draw))
    assert response.status_code == 200, response.text
    request = fake.submitted[-1]
    assert (request.sampler, request.checkpoint, request.width) == ("DPM++ SDE Karras", "juggernaut", 1024)
    assert json.loads(response.json()["info"])["warnings"] == []  # every field is one of A1111's
    assert png(response.json()["images"][0]).size == (1024, 1024)
    init = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(init, format="PNG")
    draw_options = {"init_images": [base64.b64encode(init.getvalue()).decode()], "prompt": "a cat",
                    "negative_prompt": "", "denoising_strength": 0.9, "width": 64, "height": 64, "cfg_scale": 7,
                    "sampler_name": "Euler a", "restore_faces": False, "steps": 2,
                    "script_args": ["outpainting mk2"], "override_settings": {"sd_model_checkpoint": model}}
    response = client.post(f"{API}/img2img", content=json.dumps(draw_options))
    assert response.status_code == 200, response.text
    assert fake.submitted[-1].task == "img2img" and not fake.submitted[-1].script_name


def test_a1111s_own_options_test_reads_and_writes_send_seed(fake) -> None:
    """A1111 test/test_utils.py: test_options_write (GET, POST the opposite of send_seed, GET it back, restore)."""
    client = client_for(fake)
    pre_value = client.get(f"{API}/options").json()["send_seed"]
    assert client.post(f"{API}/options", json={"send_seed": not pre_value}).status_code == 200
    assert client.get(f"{API}/options").json()["send_seed"] == (not pre_value)
    assert fake.settings.send_seed == (not pre_value)
    assert client.post(f"{API}/options", json={"send_seed": pre_value}).status_code == 200
    # what the two options do: PNG Info's "Send to Text to Image" brings the seed and the size along, or not
    from ui.pnginfo import parse_parameters, txt2img_values

    fields = parse_parameters("a cat\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 64x72")
    sent = txt2img_values(fields, None, fake.settings)
    assert (sent["seed"], sent["width"], sent["height"]) == (42, 64, 72)
    assert client.post(f"{API}/options", json={"send_seed": False, "send_size": "false"}).status_code == 200
    sent = txt2img_values(fields, None, fake.settings)
    assert "seed" not in sent and "width" not in sent and "height" not in sent and sent["steps"] == 3
    for path in ("cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks", "face-restorers",
                 "realesrgan-models", "prompt-styles", "embeddings"):  # test_utils.py's GETs
        assert client.get(f"{API}/{path}").status_code == 200, path


# --- the real server with the CORS flags ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cors_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    """``app.py --demo`` with openOutpaint's origin allowed (2 steps by default, so the UI draws quickly)."""
    workdir = tmp_path_factory.mktemp("cors_app")
    (workdir / "settings.json").write_text(json.dumps({"default_steps": 2}), encoding="utf-8")
    app = spawn_app(workdir, "--demo", "--cors-allow-origins", OUTPAINT_ORIGIN)
    yield app
    app.stop()


def test_the_real_server_answers_only_the_allowed_origin(cors_app: AppProcess) -> None:
    url = cors_app.url.rstrip("/")
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = requests.options(f"{url}{API}/txt2img", headers={"Origin": OUTPAINT_ORIGIN, **preflight}, timeout=30)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == OUTPAINT_ORIGIN
    # Gradio's own CORS policy let any localhost page read every answer: gone, for its routes too
    for path in (f"{API}/txt2img", "/config"):
        other = requests.options(f"{url}{path}", headers={"Origin": "http://localhost:9999", **preflight}, timeout=30)
        assert "access-control-allow-origin" not in other.headers, path
    assert "access-control-allow-origin" not in requests.get(
        f"{url}/config", headers={"Origin": "http://localhost:9999"}, timeout=30).headers
    small = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    refused = requests.post(f"{url}{API}/txt2img", json=small, headers={"Origin": "null"}, timeout=60)
    assert refused.status_code == 403 and "null" in refused.json()["detail"]
    same = requests.post(f"{url}{API}/txt2img", json=small, headers={"Origin": url}, timeout=300)
    assert same.status_code == 200, same.text
    page = requests.post(f"{url}{API}/txt2img", json=small, headers={"Origin": OUTPAINT_ORIGIN}, timeout=300)
    assert page.status_code == 200 and page.headers["access-control-allow-origin"] == OUTPAINT_ORIGIN
    flags = requests.get(f"{url}{API}/cmd-flags", timeout=30).json()
    assert flags["cors_allow_origins"] == OUTPAINT_ORIGIN and flags["gradio_auth"] is None


@pytest.mark.browser
def test_the_ui_still_draws_in_chromium_with_the_cors_flags_on(cors_app: AppProcess, page) -> None:
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(cors_app.url)
    page.wait_for_selector("#txt2img-generate")
    page.locator("#txt2img-prompt textarea").fill("a lighthouse")
    for elem_id, value in (("txt2img-width", 64), ("txt2img-height", 64), ("txt2img-steps", 2)):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    page.locator("#txt2img-seed input").fill("2718")
    page.click("#txt2img-generate")
    page.wait_for_function(
        "() => (document.querySelector('#txt2img-info .infotext') || {}).innerText?.includes('Seed: 2718')",
        timeout=90_000)
    assert page.locator("#txt2img-gallery img").count() >= 1


def test_a_bad_cors_flag_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    import subprocess

    from conftest import app_command

    done = subprocess.run(app_command("--no-browser", "--outputs-dir", str(tmp_path / "outputs"),
                                      "--cors-allow-origins", "127.0.0.1:3456"),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "--cors-allow-origins: '127.0.0.1:3456' is not an origin" in done.stderr


# --- what every client relies on: options round trips, progress counts, the routes and their login ---------------
def test_options_keep_unknown_keys_apply_known_ones_and_name_a_bad_key(fake, caplog) -> None:
    client = client_for(fake)
    options = client.get(f"{API}/options").json()
    for key in ("sd_model_checkpoint", "sd_checkpoint_hash", "sd_vae", "CLIP_stop_at_last_layers", "samples_format",
                "send_seed", "send_size", "eta_noise_seed_delta", "img2img_color_correction", "inpainting_mask_weight",
                "return_grid", "save_images", "outdir_samples", "memory_mode", "token_merging_ratio", "deep_cache",
                "fast_decode", "threads"):
        assert key in options, key
    assert options["sd_checkpoint_hash"] == client.get(f"{API}/sd-models").json()[0]["sha256"]
    caplog.set_level("INFO", logger="atelier.api")
    full = {**options, "show_progress_every_n_steps": 10, "quicksettings_list": ["sd_model_checkpoint"],
            "CLIP_stop_at_last_layers": "2", "send_size": 0, "fast_decode": 1}  # numbers as text, 0/1 booleans
    for _ in range(2):
        assert client.post(f"{API}/options", json=full).status_code == 200
    after = client.get(f"{API}/options").json()
    assert (after["show_progress_every_n_steps"], after["quicksettings_list"]) == (10, ["sd_model_checkpoint"])
    assert (after["CLIP_stop_at_last_layers"], after["send_size"]) == (2, False)
    assert (fake.settings.clip_skip, fake.settings.send_size, fake.settings.fast_decode) == (2, False, True)
    said = [record.getMessage() for record in caplog.records if "show_progress_every_n_steps" in record.getMessage()]
    assert len(said) == 1 and "not used" in said[0]  # logged once
    # a bad value is a 422 naming its key, and nothing of that body is applied
    for body, key in (({"send_seed": False, "deep_cache_interval": 99}, "deep_cache_interval"),
                      ({"send_seed": "maybe"}, "send_seed"), ({"memory_mode": "turbo"}, "memory_mode"),
                      ({"return_grid": True}, "return_grid"), ({"outdir_samples": "/tmp/elsewhere"}, "outdir_samples"),
                      ({"eta_noise_seed_delta": 31337}, "eta_noise_seed_delta"),
                      ({"sd_model_checkpoint": "missing"}, "sd_model_checkpoint")):
        answer = client.post(f"{API}/options", json=body)
        assert answer.status_code == 422 and answer.json()["field"] == key and key in answer.json()["detail"], body
    assert fake.settings.send_seed is True and fake.settings.deep_cache_interval == 3
    # what only reports is ignored; A1111's "" folder is the default; NaN is kept as null
    for body in ({"sd_checkpoint_hash": "deadbeef"}, {"return_grid": 0}, {"outdir_samples": ""}):
        assert client.post(f"{API}/options", json=body).status_code == 200, body
    assert client.get(f"{API}/options").json()["sd_checkpoint_hash"] == options["sd_checkpoint_hash"]
    raw = client.post(f"{API}/options", content=b'{"brand_new": NaN}', headers={"content-type": "application/json"})
    assert raw.status_code == 200 and client.get(f"{API}/options").json()["brand_new"] is None
    # a checkpoint by short hash or sha256, as openOutpaint and webuiapi match them
    listed = client.get(f"{API}/sd-models").json()
    for name in (listed[1]["hash"], listed[1]["sha256"], listed[1]["model_name"]):
        assert client.post(f"{API}/options", json={"sd_model_checkpoint": name}).status_code == 200, name
        assert client.get(f"{API}/options").json()["sd_model_checkpoint"] == listed[1]["title"]
        fake.set_default_checkpoint(listed[0]["model_name"])


def test_progress_counts_the_running_batches_and_the_waiting_jobs(fake) -> None:
    from pipelines.request import GenerationRequest

    client = client_for(fake)
    idle = client.get(f"{API}/progress").json()
    assert (idle["progress"], idle["state"]["job_count"], idle["state"]["job"]) == (0.0, 0, "")
    fake.step_delay = 0.2
    running = fake.submit(GenerationRequest.create(prompt="x", steps=20, width=64, height=64, batch_count=2))
    waiting = fake.submit(GenerationRequest.create(prompt="y", steps=2, width=64, height=64))
    wait_until(lambda: running.progress.step >= 1, what="a step")
    state = client.get(f"{API}/progress").json()
    assert state["state"]["job_count"] == 3 and state["state"]["job"] == running.id  # 2 batches + 1 waiting
    assert state["state"]["sampling_steps"] == 20 and state["state"]["job_timestamp"] != "0"
    assert 0 < state["progress"] < 0.5 and state["eta_relative"] > 0
    client.post(f"{API}/skip")
    wait_until(lambda: running.progress.batch_index == 1, what="the second batch")
    state = client.get(f"{API}/progress").json()["state"]
    assert (state["job_count"], state["job_no"]) == (3, 1)  # A1111's count: the job's batches, not the ones left
    fake.step_delay = 0.0
    waiting.wait(30)
    assert len(running.wait(30).images) == 1 and fake.skipped == 1


NEW_ROUTES = [("post", f"{API}/skip"), ("get", f"{API}/cmd-flags"), ("get", f"{API}/memory"),
              ("get", f"{API}/sd-modules"), ("post", f"{API}/refresh-vae"), ("post", f"{API}/unload-checkpoint"),
              ("post", f"{API}/reload-checkpoint"), ("get", f"{API}/hypernetworks"), ("get", f"{API}/face-restorers"),
              ("post", f"{API}/interrogate"), ("post", "/v1/images/generations"), ("get", "/v1/models")]


def test_every_route_is_documented_and_needs_the_login_with_or_without_a_slash(fake) -> None:
    client = client_for(fake, auth={"u": "p"})
    paths = client.get("/openapi.json").json()["paths"]
    for method, path in NEW_ROUTES:
        assert method in paths.get(path, {}), (method, path)
    assert not any(path.endswith("/") for path in paths)  # the slashed twins answer, undocumented
    empty = {"Authorization": "Basic "}  # what SillyTavern sends without a login: not a login
    for path, methods in paths.items():
        for method in methods:
            for url in (path, f"{path}/"):
                answer = client.request(method.upper(), url, json={}, headers=empty)
                assert answer.status_code == 401, (method, url, answer.status_code)
    assert fake.unloads == 0 and fake.skipped == 0
    assert client.get(f"{API}/memory/", auth=("u", "p")).json()["cuda"] == {"error": "unavailable"}


def test_lenient_inputs_are_read_as_a1111_reads_them(fake) -> None:
    client = client_for(fake)
    body = {"prompt": "x", "steps": "2", "width": "64", "height": 64.0, "seed": "-1", "cfg_scale": "7",
            "tiling": 1, "enable_hr": 0, "restore_faces": 0, "hr_scale": "1.0", "sampler_name": None,
            "sampler_index": "DPM++ 2M Karras", "scheduler": "Automatic", "firstpass_image": "",
            "some_future_field": {"nested": True}}
    response = client.post(f"{API}/txt2img/", json=body)
    assert response.status_code == 200, response.text
    request = fake.submitted[-1]
    assert (request.steps, request.width, request.height, request.tiling) == (2, 64, 64, True)
    assert request.sampler == "DPM++ 2M Karras" and not request.enable_hr
    assert json.loads(response.json()["info"])["warnings"] == ["Unknown field ignored: some_future_field"]
    for schedule in ("Karras", "karras"):  # the schedule type by label or by name
        client.post(f"{API}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                            "sampler_name": "DPM++ 2M", "scheduler": schedule})
        assert fake.submitted[-1].sampler == "DPM++ 2M Karras"
    # an A1111 schedule type Atelier does not draw (SillyTavern's default "normal"): A1111's own fallback, said
    for schedule in ("normal", "Align Your Steps"):
        response = client.post(f"{API}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                       "scheduler": schedule, "hr_scheduler": "simple",
                                                       "enable_hr": True, "denoising_strength": 0.5})
        assert response.status_code == 200, response.text
        assert (fake.submitted[-1].scheduler, fake.submitted[-1].hr_scheduler) == ("Automatic", "Automatic")
        assert json.loads(response.json()["info"])["warnings"] == [
            f"scheduler '{schedule}' is not available: drawn with 'Automatic'",
            "hr_scheduler 'simple' is not available: drawn with 'Automatic'"]
    assert client.post(f"{API}/txt2img", json={"prompt": "x", "scheduler": "wobbly"}).status_code == 422
    init = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(init, format="PNG")
    for mask in ("", None):  # an empty optional image is no image
        response = client.post(f"{API}/img2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                       "init_images": [base64.b64encode(init.getvalue()).decode()],
                                                       "mask": mask, "inpainting_mask_invert": 0})
        assert response.status_code == 200, response.text
        assert fake.submitted[-1].mask is None
