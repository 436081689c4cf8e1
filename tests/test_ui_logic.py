"""The UI's handlers without a browser: requests built from the form, progress text, Stop, errors as toasts,
PNG Info parsing, settings saved without overwriting command-line flags, last values remembered.

The engine stand-in of tests/fakes.py (the ``Engine`` interface of ``pipelines.manager.PipelineManager``) makes
images of the requested size instantly, so these tests need no model and run in about a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
from fakes import FakeManager, FakeRegistry, write_embedding, write_lora
from PIL import Image, PngImagePlugin

from pipelines.errors import InvalidRequest
from pipelines.interface import EngineStatus
from pipelines.progress import ProgressEvent
from pipelines.request import GenerationRequest, output_size
from pipelines.settings import Settings
from ui import build_ui
from ui.common import (
    count_prompt,
    count_tokens,
    override_chips,
    preset_size,
    remembered_values,
    request_fields,
    style_names,
    styles_hint,
    token_label,
)
from ui.img2img import is_depth_checkpoint
from ui.inpaint import (
    MASK_MODES,
    NO_PICTURE,
    editor_mask,
    editor_picture,
    inpaint_fields,
    outpaint_sides,
    size_for_editor,
)
from ui.jobs import SessionJobs, follow_job, info_html, progress_text
from ui.networks import NetworkShelf, cards_html, click_card, find_preview, network_cards
from ui.persist import SettingsFile
from ui.pnginfo import parse_parameters, read_parameters, txt2img_values
from ui.settings_tab import collect_changes, save_settings
from ui.status import DEMO_LABEL, status_html

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        outputs_dir=tmp_path / "outputs",
        models_dir=tmp_path / "models",
        cache_dir=tmp_path / "cache",
        settings_file=tmp_path / "settings.json",
        demo=True,
    )


@pytest.fixture
def manager(settings: Settings) -> Iterator[FakeManager]:
    registry = FakeRegistry(checkpoints=("demo-sd15", "other"), vaes=("demo-vae",), upscalers=("demo-x4-upscaler",))
    fake = FakeManager(settings, registry)
    yield fake
    fake.close()


def run_async(coroutine: Any) -> Any:
    """Run a coroutine on its own loop in a worker thread: the browser tests' Playwright (sync API) keeps an
    event loop running in the main thread when both files run in one session."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _collect(manager: FakeManager, request: GenerationRequest, session: SessionJobs, tab: str) -> list:
    return [view async for view in follow_job(manager, request, session, tab)]


# --------------------------------------------------------------------------------------------- tests


def test_form_values_become_a_validated_request() -> None:
    values = {
        "prompt": "a cat",
        "negative": "blurry",
        "sampler": "DPM++ 2M Karras",
        "steps": 4.0,
        "cfg": 6.5,
        "width": 64,
        "height": 128,
        "seed": 42,
        "batch_count": 2,
        "batch_size": 1,
    }
    request = GenerationRequest.create(**request_fields("txt2img", values, "demo-sd15", "Automatic"))
    assert (request.width, request.height, request.steps, request.seed) == (64, 128, 4, 42)
    assert request.sampler == "DPM++ 2M Karras" and request.checkpoint == "demo-sd15"
    assert request.negative_prompt == "blurry" and request.total_images == 2


def test_a_width_that_is_not_a_multiple_of_8_is_a_toast_naming_the_field() -> None:
    from ui.common import create_request

    fields = request_fields("txt2img", {"prompt": "x", "steps": 2, "width": 100, "height": 64, "seed": -1})
    with pytest.raises(gr.Error) as caught:
        create_request(**fields)
    assert "width" in str(caught.value) and "multiple of 8" in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_empty_number_field_is_a_toast() -> None:
    with pytest.raises(gr.Error, match="Steps must be a number"):
        request_fields("txt2img", {"prompt": "x", "steps": None, "seed": -1})


def test_token_counter_counts_clip_tokens_and_grows_by_chunks() -> None:
    assert count_tokens("") == 0
    assert count_tokens("a photo of a cat") == 5
    assert token_label(5).endswith(">5/75</span>")
    assert ">80/150<" in token_label(80) and "over" in token_label(80)


def test_presets_keep_the_short_side_and_swap_orientation() -> None:
    assert preset_size("768", 512, 512) == (768, 768)
    assert preset_size("2:3", 512, 640) == (512, 768)
    assert preset_size("3:2", 512, 512) == (768, 512)


def test_progress_text_shows_queue_step_batch_and_eta() -> None:
    assert progress_text(None, 2) == "Queued: 2 jobs ahead of yours"
    event = ProgressEvent("j", "running", step=3, total_steps=20, batch_index=1, batch_count=2, eta_s=75)
    assert progress_text(event, 0) == "Step 3/20 · batch 2/2 · ETA 1 min 15 s"


def test_follow_job_streams_progress_then_the_result(manager: FakeManager) -> None:
    manager.step_delay = 0.02
    request = GenerationRequest.create(prompt="x", steps=20, width=64, height=64, seed=7)
    views = run_async(_collect(manager, request, SessionJobs(), "txt2img"))
    assert any("Step" in v.progress for v in views[:-1])
    final = views[-1].result
    assert final is not None and final.seeds == [7] and final.images[0].size == (64, 64)
    assert "Seed: 7" in info_html(final)


def test_stop_ends_a_long_run_early_and_keeps_finished_images(manager: FakeManager) -> None:
    manager.step_delay = 0.01
    session = SessionJobs()
    request = GenerationRequest.create(prompt="x", steps=5, batch_count=16, width=64, height=64, seed=1)

    async def run_then_stop() -> list:
        views = []
        async for view in follow_job(manager, request, session, "txt2img"):
            views.append(view)
            job = session.jobs.get("txt2img")
            if job is not None and job.progress.batch_index >= 1:
                job.cancel()
        return views

    started = time.monotonic()
    views = run_async(run_then_stop())
    assert time.monotonic() - started < 0.05 * 16 * 5  # far less than the full run
    result = views[-1].result
    assert result is not None and result.cancelled and 1 <= len(result.images) < 16
    assert "Stopped" in views[-1].progress and "txt2img" not in session.jobs


def test_stop_before_the_first_image_says_so_instead_of_failing(manager: FakeManager) -> None:
    manager.step_delay = 0.05
    session = SessionJobs()
    request = GenerationRequest.create(prompt="x", steps=40, width=64, height=64)

    async def stop_at_once() -> list:
        views = []
        async for view in follow_job(manager, request, session, "txt2img"):
            views.append(view)
            session.jobs["txt2img"].cancel()
        return views

    views = run_async(stop_at_once())
    assert views[-1].result is None and "Stopped before" in views[-1].progress


def test_engine_errors_become_toasts_not_tracebacks(manager: FakeManager) -> None:
    request = GenerationRequest.create(prompt="x", steps=2, width=64, height=64, checkpoint="missing")
    with pytest.raises(gr.Error, match="Unknown checkpoint 'missing'"):
        run_async(_collect(manager, request, SessionJobs(), "txt2img"))


def test_second_job_waits_and_shows_its_queue_position(manager: FakeManager) -> None:
    manager.step_delay = 0.02
    first = manager.submit(GenerationRequest.create(prompt="a", steps=20, width=64, height=64))
    views = run_async(
        _collect(manager, GenerationRequest.create(prompt="b", steps=2, width=64, height=64), SessionJobs(), "txt2img")
    )
    assert "Queued: 1 job ahead of yours" in views[0].progress
    assert first.wait(5).images and views[-1].result is not None


def test_png_info_reads_a1111_parameters_and_fills_txt2img(tmp_path: Path) -> None:
    text = (
        'a "quoted" castle, night\nwith two lines\nNegative prompt: fog, rain\nSteps: 4, Sampler: DPM++ 2M, '
        "Schedule type: Karras, CFG scale: 5.5, Seed: 1234, Size: 64x96, Model hash: 0123456789, "
        'Model: demo, Lora hashes: "a: 1, b: 2", Version: v1.10.1'
    )
    path = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 96)).save(path, pnginfo=info)
    assert read_parameters(path) == text
    fields = parse_parameters(text)
    assert fields["Prompt"] == 'a "quoted" castle, night\nwith two lines'
    assert fields["Negative prompt"] == "fog, rain"
    assert fields["Lora hashes"] == "a: 1, b: 2"
    values = txt2img_values(fields)
    assert values == {
        "prompt": 'a "quoted" castle, night\nwith two lines',
        "negative": "fog, rain",
        "sampler": "DPM++ 2M Karras",
        "scheduler": "Automatic",  # the image's schedule type (Karras is part of the combined sampler label here)
        "steps": 4,
        "cfg": 5.5,
        "seed": 1234,
        "width": 64,
        "height": 96,
        "tiling": False,  # an image made without them switches tiling and the Hires. fix off
        "hr_enable": False,
    }


def test_png_without_parameters_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    assert read_parameters(path) is None


def test_saving_settings_applies_live_and_never_writes_command_line_fields(
    manager: FakeManager, settings: Settings
) -> None:
    settings.from_cli = {"outputs_dir", "memory_mode"}
    settings.memory_mode = "offload"
    store = SettingsFile(settings)
    store.save_last_values("txt2img", {"prompt": "kept"})
    values = {
        "memory_mode": "full",
        "default_steps": 12.0,
        "default_sampler": "DDIM",
        "vram_slots": 1,
        "ram_slots": 0,
        "xformers": False,
        "fast": False,
    }
    assert collect_changes(settings, values) == {"default_steps": 12, "default_sampler": "DDIM"}
    report = save_settings(manager, settings, store, values)
    assert manager.applied == [{"default_steps": 12, "default_sampler": "DDIM"}]
    assert settings.default_steps == 12 and settings.memory_mode == "offload"
    saved = json.loads(settings.settings_file.read_text())
    assert saved["default_steps"] == 12 and "outputs_dir" not in saved and "memory_mode" not in saved
    assert saved["last_values"]["txt2img"] == {"prompt": "kept"}
    assert "Saved to" in report and "default_steps" in report


def test_a_broken_settings_file_is_not_fatal(settings: Settings) -> None:
    settings.settings_file.write_text("{not json")
    store = SettingsFile(settings)
    assert store.last_values("txt2img") == {}
    store.save_last_values("txt2img", {"prompt": "again"})
    assert SettingsFile(settings).last_values("txt2img") == {"prompt": "again"}


def test_status_bar_shows_device_checkpoint_and_demo_label(manager: FakeManager, settings: Settings) -> None:
    bar = status_html(manager, settings)
    assert DEMO_LABEL in bar and "cpu" in bar and "demo-sd15" in bar
    settings.demo = False
    manager.settings.demo = False
    assert DEMO_LABEL not in status_html(manager, settings)


def test_status_bar_names_the_upscaler_beside_the_checkpoint() -> None:
    from ui.status import status_items

    items = dict(status_items(EngineStatus(loaded_checkpoint="sd15", loaded_upscaler="x4")))
    assert (items["Checkpoint"], items["Upscaler"]) == ("sd15", "x4")
    assert "Upscaler" not in dict(status_items(EngineStatus(loaded_checkpoint="sd15", loaded_upscaler=None)))


def test_build_ui_has_every_contract_id_and_tab_label(manager: FakeManager, settings: Settings) -> None:
    blocks = build_ui(manager, settings)
    config = blocks.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    labels = {c["props"].get("label") for c in config["components"] if c.get("type") == "tabitem"}
    contract = [
        "txt2img-prompt",
        "txt2img-negative",
        "txt2img-sampler",
        "txt2img-steps",
        "txt2img-cfg",
        "txt2img-width",
        "txt2img-height",
        "txt2img-seed",
        "txt2img-batch-count",
        "txt2img-batch-size",
        "txt2img-generate",
        "txt2img-interrupt",
        "txt2img-gallery",
        "txt2img-info",
        "img2img-init",
        "img2img-prompt",
        "img2img-negative",
        "img2img-strength",
        "img2img-steps",
        "img2img-seed",
        "img2img-generate",
        "img2img-interrupt",
        "img2img-gallery",
        "img2img-info",
        "upscale-input",
        "upscale-prompt",
        "upscale-negative",
        "upscale-steps",
        "upscale-generate",
        "upscale-output",
        "upscale-info",
        "model-select",
        "model-refresh",
        "vae-select",
        "status-bar",
        "png-info-input",
        "png-info-output",
    ]
    assert not [i for i in contract if i not in ids]
    assert {"Text to Image", "Image to Image", "Upscale 4x", "PNG Info", "Settings"} <= labels


def test_last_values_come_back_after_a_restart(manager: FakeManager, settings: Settings) -> None:
    SettingsFile(settings).save_last_values("txt2img", {"prompt": "a lighthouse", "steps": 9, "width": 320})
    config = build_ui(manager, settings).get_config_file()
    by_id = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert by_id["txt2img-prompt"]["value"] == "a lighthouse"
    assert by_id["txt2img-steps"]["value"] == 9 and by_id["txt2img-width"]["value"] == 320
    assert by_id["img2img-prompt"]["value"] == ""


def test_init_image_size_follows_the_image_within_limits() -> None:
    from ui.img2img import fit_size

    assert fit_size(64, 100) == (64, 96)
    assert fit_size(4000, 3000) == (1024, 768)
    assert fit_size(20, 20) == (64, 64)


def test_stopping_a_waiting_job_removes_it_from_the_queue(manager: FakeManager) -> None:
    manager.step_delay = 0.02
    first = manager.submit(GenerationRequest.create(prompt="a", steps=30, width=64, height=64))
    session = SessionJobs()

    async def queue_then_stop() -> list:
        views = []
        async for view in follow_job(manager, GenerationRequest.create(prompt="b", steps=2), session, "txt2img"):
            views.append(view)
            if "Queued" in view.progress:
                session.jobs["txt2img"].cancel()
        return views

    views = run_async(queue_then_stop())
    assert "Removed from the queue." in views[-1].progress and views[-1].result is None
    assert first.wait(5).images


def test_importing_the_ui_loads_no_torch_or_diffusers() -> None:
    import subprocess
    import sys

    code = "import sys, ui; print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_settings_tab_speedup_switches_are_typed_and_shown_in_the_status_bar() -> None:
    from ui.settings_tab import collect_changes
    from ui.status import speedup_label

    settings = Settings()
    changes = collect_changes(settings, {"deep_cache": True, "deep_cache_interval": 4.0, "token_merging": 0.5})
    assert changes == {"deep_cache": True, "deep_cache_interval": 4, "token_merging": 0.5}
    assert isinstance(changes["deep_cache_interval"], int)
    assert speedup_label(settings) is None
    settings.update(changes)
    assert speedup_label(settings) == "DeepCache every 4 · ToMe 0.5"


def test_a_missing_model_toast_adds_the_uis_refresh_hint_and_other_errors_do_not():
    from pipelines.errors import ModelNotFound, OutputWriteError
    from ui.jobs import REFRESH_HINT, user_error

    missing = user_error(ModelNotFound("No checkpoint named 'gone' in /models. Known: a.", field="checkpoint"))
    assert str(missing.message).endswith(REFRESH_HINT) and "'gone'" in str(missing.message)
    disk = user_error(OutputWriteError("The disk holding /out is full; the image was not saved."))
    assert REFRESH_HINT not in str(disk.message)


# --------------------------------------------------------------------------------------------- the prompt language

STYLES_CSV = (
    'name,prompt,negative_prompt\n'
    '"Oil","{prompt}, oil painting, thick brushwork","blurry"\n'
    '"Moody","dark, moody light",""\n'
)


@pytest.fixture
def networks(settings: Settings, tmp_path: Path) -> Iterator[FakeManager]:
    """The stand-in with a styles file, two LoRAs (SD 1.x with a preview image, SDXL) and two embeddings (SD 1.x,
    SDXL)."""
    import torch

    folder = tmp_path / "files"
    folder.mkdir()
    loras = (write_lora(folder / "paint.safetensors", "sd1"), write_lora(folder / "xl-only.safetensors", "sdxl"))
    Image.new("RGB", (16, 24), "teal").save(folder / "paint.preview.png")
    embeddings = (
        write_embedding(folder / "castle-ti.pt", torch.zeros(2, 768)),
        write_embedding(folder / "xl-ti.safetensors", {"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}),
    )
    settings.settings_file.with_name("styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    registry = FakeRegistry(checkpoints=("demo-sd15",), loras=loras, embeddings=embeddings)
    fake = FakeManager(settings, registry)
    yield fake
    fake.close()


def test_the_token_counter_shows_the_engines_count_and_chunk_limit(manager: FakeManager) -> None:
    assert count_prompt("a photo of a cat <lora:paint:0.8>", manager) == (5, 75)  # the tag is not sent to CLIP
    assert count_prompt("a cat BREAK a dog", manager) == (77, 150)  # BREAK fills the chunk, as A1111 counts it
    long = ", ".join(["stone"] * 45)
    assert count_prompt(long, manager) == (89, 150)
    assert ">89/150<" in token_label(*count_prompt(long, manager))
    assert token_label(3, 150).endswith(">3/150</span>") and "over" in token_label(3, 150)
    assert count_prompt("", manager) == (0, 75)


def test_styles_and_override_chips_become_request_fields() -> None:
    values = {"prompt": "a cat", "steps": 4, "seed": 1, "styles": ["Oil", "Moody"],
              "overrides": ["Clip skip: 2", "Emphasis: No norm"]}
    fields = request_fields("txt2img", values)
    assert (fields["styles"], fields["clip_skip"], fields["emphasis"]) == (["Oil", "Moody"], 2, "No norm")
    request = GenerationRequest.create(**fields)
    assert (request.styles, request.clip_skip, request.emphasis) == (["Oil", "Moody"], 2, "No norm")
    plain = request_fields("txt2img", {"prompt": "a cat", "steps": 4, "seed": 1, "styles": [], "overrides": []})
    assert "styles" not in plain and "clip_skip" not in plain
    with pytest.raises(gr.Error, match="Override settings"):
        request_fields("txt2img", {**values, "overrides": ["Sampler: DDIM"]})
    assert override_chips({"Clip skip": 2, "Emphasis": None}) == ["Clip skip: 2"]
    assert remembered_values({"prompt": "x", "styles": ["Oil"], "init": object()}) == {"prompt": "x", "styles": ["Oil"]}


def test_the_style_pickers_list_the_styles_file_and_the_panel_is_built(networks: FakeManager,
                                                                        settings: Settings) -> None:
    SettingsFile(settings).save_last_values("txt2img", {"prompt": "x", "styles": ["Moody", "Gone"]})
    config = build_ui(networks, settings).get_config_file()
    by_id = {c["props"].get("elem_id"): c for c in config["components"]}
    for prefix in ("txt2img", "img2img"):
        picker = by_id[f"{prefix}-styles"]["props"]
        assert picker["multiselect"] and [choice[0] for choice in picker["choices"]] == ["Oil", "Moody"]
        assert by_id[f"{prefix}-override-settings"]["props"]["visible"] is False
    assert by_id["txt2img-styles"]["props"]["value"] == ["Moody"]  # remembered, and a style no longer there dropped
    assert by_id["img2img-styles"]["props"]["value"] == []
    assert by_id["extra-networks"]["type"] == "accordion"
    cards = by_id["extra-networks-cards"]["props"]["value"]
    assert 'data-key="lora:paint"' in cards and 'data-key="embedding:castle-ti"' in cards
    assert "paint.preview.png" in cards and cards.count('loading="lazy"') == 1
    for setting in ("settings-clip-skip", "settings-emphasis", "settings-styles-file"):
        assert setting in by_id
    assert by_id["settings-clip-skip"]["props"]["label"] == "Clip skip"
    assert by_id["settings-styles-file"]["props"]["value"].endswith("styles.csv")


def test_a_styles_file_that_is_missing_says_where_to_write_it(manager: FakeManager, settings: Settings) -> None:
    assert style_names(manager) == []
    hint = styles_hint([], settings)
    assert str(settings.settings_file.with_name("styles.csv")) in hint and "name,prompt,negative_prompt" in hint
    settings.styles_file = Path("/somewhere/my-styles.csv")
    assert "/somewhere/my-styles.csv" in styles_hint([], settings)
    assert styles_hint(["Oil"], settings) == ""


def test_network_cards_show_previews_and_say_which_model_a_file_is_for(networks: FakeManager) -> None:
    cards = {card.key: card for card in network_cards(networks)}
    assert list(cards) == ["lora:paint", "lora:xl-only", "embedding:castle-ti", "embedding:xl-ti"]
    paint = cards["lora:paint"]
    assert (paint.insert, paint.detail, paint.problem) == ("<lora:paint:1>", "SD 1.x", "")
    assert paint.preview is not None and paint.preview.name == "paint.preview.png"
    assert "made for SDXL checkpoints; the current checkpoint is SD 1.x" in cards["lora:xl-only"].problem
    assert (cards["embedding:castle-ti"].insert, cards["embedding:castle-ti"].detail) == ("castle-ti", "2 vectors")
    assert "another model" in cards["embedding:xl-ti"].problem
    html_text = cards_html(list(cards.values()))
    assert html_text.count('class="network-card unusable"') == 2
    assert cards_html([], "/m").count("None yet: put files in") == 2


def test_find_preview_follows_a1111s_names(tmp_path: Path) -> None:
    model = tmp_path / "thing.safetensors"
    model.write_bytes(b"x")
    assert find_preview(model) is None
    (tmp_path / "thing.png").write_bytes(b"x")
    assert find_preview(model) == tmp_path / "thing.png"
    (tmp_path / "thing.preview.webp").write_bytes(b"x")
    assert find_preview(model) == tmp_path / "thing.preview.webp"  # ".preview." wins
    (tmp_path / "thing.preview.png").write_bytes(b"x")
    assert find_preview(model) == tmp_path / "thing.preview.png"


def test_a_card_click_adds_its_tag_to_the_tab_in_use_and_a_second_click_takes_it_out(networks: FakeManager) -> None:
    shelf = NetworkShelf(networks)
    paint, castle = shelf.find("lora:paint"), shelf.find("embedding:castle-ti")
    click = click_card(paint, "img2img", "a castle")
    assert (click.tab, click.prompt) == ("img2img", "a castle <lora:paint:1>")
    assert click.message == "Added <lora:paint:1> to the Image to Image prompt."
    assert click_card(paint, "txt2img", "").prompt == "<lora:paint:1>"
    # a second click takes it out, whatever weight the artist gave it since
    assert click_card(paint, "txt2img", "a castle <lora:paint:0.6>, at night").prompt == "a castle, at night"
    assert click_card(castle, "txt2img", "a castle").prompt == "a castle castle-ti"
    assert click_card(castle, "txt2img", "a castle castle-ti, dusk").prompt == "a castle, dusk"
    assert click_card(castle, "txt2img", "castle-tiles").prompt == "castle-tiles castle-ti"  # whole names only
    refused = click_card(shelf.find("lora:xl-only"), "txt2img", "a castle")
    assert refused.tab is None and refused.prompt is None and "SDXL" in refused.message
    assert click_card(None, "txt2img", "x").tab is None
    assert click_card(paint, "upscale", "x").tab == "txt2img"  # not a generation tab: Text to Image


def test_refreshing_the_shelf_finds_new_files(networks: FakeManager, tmp_path: Path) -> None:
    shelf = NetworkShelf(networks)
    assert "Found 2 LoRA(s) and 2 embedding(s)" in shelf.summary()
    networks.registry._loras.append(networks.registry._loras[0].__class__(
        "new-one", write_lora(tmp_path / "new-one.safetensors", "sd1"), kind="lora", family="sd1"))
    assert shelf.find("lora:new-one") is None
    shelf.reload(rescan=True)
    assert shelf.find("lora:new-one") is not None and 'data-key="lora:new-one"' in shelf.html()


def test_result_warnings_are_shown_above_the_infotext(networks: FakeManager) -> None:
    request = GenerationRequest.create(prompt="a castle <lora:nope:1>", styles=["Oil", "Gone"], steps=2, width=64,
                                       height=64)
    result = networks.run(request)
    assert result.warnings == ["Style not found: Gone", "LoRA not found: nope"]
    shown = info_html(result)
    assert shown.index('class="run-warnings"') < shown.index('class="infotext"')
    assert "<li>LoRA not found: nope</li>" in shown
    assert "a castle &lt;lora:nope:1&gt;, oil painting, thick brushwork" in shown  # the infotext has the style
    assert 'class="run-warnings"' not in info_html(networks.run(request.model_copy(update={"prompt": "x",
                                                                                           "styles": []})))


def test_png_info_finds_the_styles_and_carries_clip_skip_and_lora_tags(networks: FakeManager,
                                                                        settings: Settings) -> None:
    styles = {style.name: style for style in networks.styles()}
    text = ("a castle <lora:paint:0.7>, oil painting, thick brushwork, dark, moody light\n"
            "Negative prompt: fog, blurry\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, "
            "Clip skip: 2, Emphasis: No norm")
    values = txt2img_values(parse_parameters(text), styles, settings)
    assert values["prompt"] == "a castle <lora:paint:0.7>" and values["negative"] == "fog"
    assert values["styles"] == ["Oil", "Moody"]
    assert values["overrides"] == ["Clip skip: 2", "Emphasis: No norm"]
    # A1111 writes clip skip 1 and Original emphasis by leaving them out: a chip only where the Settings differ
    plain = "a castle\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"
    assert txt2img_values(parse_parameters(plain), styles, settings)["overrides"] == []
    assert txt2img_values(parse_parameters(plain), styles, settings)["styles"] == []
    settings.clip_skip = 2
    assert txt2img_values(parse_parameters(plain), styles, settings)["overrides"] == ["Clip skip: 1"]


def test_settings_tab_saves_clip_skip_and_emphasis_through_the_engine(manager: FakeManager, settings: Settings) -> None:
    store = SettingsFile(settings)
    report = save_settings(manager, settings, store, {"clip_skip": 2.0, "emphasis": "No norm"})
    assert manager.applied[-1] == {"clip_skip": 2, "emphasis": "No norm"} and "clip_skip" in report
    saved = json.loads(settings.settings_file.read_text())
    assert (saved["clip_skip"], saved["emphasis"]) == (2, "No norm")
    with pytest.raises(InvalidRequest, match="emphasis"):
        save_settings(manager, settings, store, {"emphasis": "Loud"})
    assert settings.emphasis == "No norm"


# --------------------------------------------------------------------------------------------- bigger pictures

HIRES_FORM = {
    "prompt": "a castle", "negative": "", "sampler": "Euler a", "steps": 4, "cfg": 7, "width": 64, "height": 64,
    "seed": 5, "batch_count": 1, "batch_size": 1, "tiling": True, "hr_enable": True, "hr_scale": 2.0,
    "hr_upscaler": "Latent (bicubic)", "hr_steps": 2, "hr_denoise": 0.55, "hr_resize_x": 0, "hr_resize_y": 0,
    "hr_sampler": "Use same sampler", "hr_scheduler": "Use same scheduler", "hr_prompt": "", "hr_negative": "",
}


def test_the_hires_controls_and_tiling_become_request_fields() -> None:
    request = GenerationRequest.create(**request_fields("txt2img", HIRES_FORM))
    assert (request.enable_hr, request.hr_scale, request.hr_upscaler, request.hr_second_pass_steps) == (
        True, 2.0, "Latent (bicubic)", 2)
    assert (request.denoising_strength, request.hr_sampler_name, request.hr_scheduler, request.tiling) == (
        0.55, None, None, True)
    own = {**HIRES_FORM, "hr_sampler": "DDIM", "hr_scheduler": "Uniform", "hr_prompt": "sharp", "hr_resize_x": 128,
           "hr_resize_y": 96}
    request = GenerationRequest.create(**request_fields("txt2img", own))
    assert (request.hr_sampler_name, request.hr_scheduler, request.hr_prompt) == ("DDIM", "Uniform", "sharp")
    assert (request.hr_resize_x, request.hr_resize_y) == (128, 96)
    off = GenerationRequest.create(**request_fields("txt2img", {**HIRES_FORM, "hr_enable": False, "tiling": False}))
    assert not off.enable_hr and not off.tiling and off.hr_scale == 2.0
    with pytest.raises(gr.Error, match="Upscale by must be a number"):
        request_fields("txt2img", {**HIRES_FORM, "hr_scale": None})
    assert remembered_values(HIRES_FORM)["hr_upscaler"] == "Latent (bicubic)"


def test_the_hires_size_line_and_title_follow_the_engines_sizes() -> None:
    from ui.hires import accordion_label, hires_size_html

    assert "512×512 → <b>1024×1024</b>" in hires_size_html(True, 512, 512, 2, 0, 0)
    assert 'class="hires-size off"' in hires_size_html(False, 512, 512, 2, 0, 0)
    assert "512×768 → <b>768×1152</b>" in hires_size_html(True, 512, 768, 1.5, 0, 0)
    cropped = hires_size_html(True, 512, 512, 2, 1024, 768)
    assert "1024×768 (upscaled to 1024×1024, centre cropped)" in cropped
    assert "640×480" in hires_size_html(True, 512, 384, 2, 640, 0)  # one side given: the aspect kept
    too_big = hires_size_html(True, 1536, 1536, 2, 0, 0)
    assert 'class="hires-size invalid"' in too_big and "hr_scale" in too_big
    assert accordion_label(False, 512, 512, 2, 0, 0) == "Hires. fix"
    assert accordion_label(True, 512, 512, 2, 0, 0) == "Hires. fix: on · 512×512 → 1024×1024"


def test_the_hires_upscaler_menu_lists_latent_modes_and_pixel_upscalers_not_the_sd_x4(manager) -> None:
    from ui.hires import hires_upscaler_choices

    choices = hires_upscaler_choices(manager)
    assert choices[:6] == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                           "Latent (nearest)", "Latent (nearest-exact)"]
    assert choices[6:] == ["None", "Lanczos", "Nearest"] and "demo-x4-upscaler" not in choices


def test_progress_names_the_pass_of_the_hires_fix() -> None:
    event = ProgressEvent("j", "running", step=5, total_steps=6, eta_s=2, phase="hires pass")
    assert progress_text(event, 0) == "Hires pass · Step 5/6 · ETA 2 s"
    assert progress_text(ProgressEvent("j", "running", step=3, total_steps=6, phase="upscaling"), 0).startswith(
        "Upscaling · Step 3/6")


def test_a_hires_run_shows_both_passes_and_doubles_the_picture(manager: FakeManager) -> None:
    manager.step_delay = 0.15  # each pass lasts longer than two polls of the progress
    request = GenerationRequest.create(**request_fields("txt2img", {**HIRES_FORM, "hr_steps": 4}))
    views = run_async(_collect(manager, request, SessionJobs(), "txt2img"))
    texts = " | ".join(view.progress for view in views)
    assert "First pass · Step" in texts and "Hires pass · Step" in texts
    final = views[-1].result
    assert final.images[0].size == (128, 128)
    assert "Hires upscale: 2" in info_html(final) and "Tiling: True" in info_html(final)


def test_stop_in_the_hires_pass_keeps_and_shows_the_first_pass_picture(manager: FakeManager) -> None:
    manager.step_delay = 0.02
    session = SessionJobs()
    request = GenerationRequest.create(**request_fields("txt2img", {**HIRES_FORM, "hr_steps": 40}))

    async def stop_in_the_second_pass() -> list:
        views = []
        async for view in follow_job(manager, request, session, "txt2img"):
            views.append(view)
            job = session.jobs.get("txt2img")
            if job is not None and job.progress.phase == "hires pass":
                job.cancel()
        return views

    views = run_async(stop_in_the_second_pass())
    result = views[-1].result
    assert result is not None and result.cancelled and result.images[0].size == (64, 64)
    assert "Stopped in the hires pass: kept the first pass&#x27;s picture." in views[-1].progress
    assert "first pass&#x27;s picture was kept" in info_html(result)
    assert "Hires upscale" not in result.infotexts[0]  # the first pass's own parameters


def test_png_info_carries_the_hires_fix_and_tiling_to_txt2img() -> None:
    text = ("a castle\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, Model: demo, "
            "Denoising strength: 0.45, Tiling: True, Hires sampler: DPM++ 2M, Hires schedule type: Karras, "
            'Hires prompt: "sharp, detailed", Hires resize: 128x96, Hires steps: 3, Hires upscaler: Lanczos, '
            "Version: v1.10.1")
    values = txt2img_values(parse_parameters(text))
    assert values["tiling"] is True and values["hr_enable"] is True
    assert (values["hr_resize_x"], values["hr_resize_y"], values["hr_steps"], values["hr_upscaler"]) == (
        128, 96, 3, "Lanczos")
    assert (values["hr_denoise"], values["hr_scale"], values["hr_prompt"]) == (0.45, 2.0, "sharp, detailed")
    assert (values["hr_sampler"], values["hr_scheduler"]) == ("DPM++ 2M Karras", "Use same scheduler")
    by_scale = txt2img_values(parse_parameters(
        "x\nSteps: 4, Sampler: Euler a, Seed: 5, Size: 64x64, Denoising strength: 0.7, Hires upscale: 1.5, "
        "Hires upscaler: Latent"))
    assert (by_scale["hr_scale"], by_scale["hr_resize_x"], by_scale["hr_steps"], by_scale["hr_sampler"]) == (
        1.5, 0, 0, "Use same sampler")
    # the same request built back from those values runs the same hires fix
    form = {**HIRES_FORM, **values, "negative": ""}
    request = GenerationRequest.create(**request_fields("txt2img", form))
    assert (request.hr_resize_x, request.hr_upscaler, request.denoising_strength, request.tiling) == (
        128, "Lanczos", 0.45, True)


def test_the_upscale_tab_sizes_by_a_factor_or_to_a_size() -> None:
    base = {"prompt": "", "steps": 20, "seed": -1, "upscaler": "Lanczos", "upscale_scale": 2.5,
            "upscale_width": 100, "upscale_height": 80, "upscale_crop": False}
    by = request_fields("upscale", {**base, "upscale_mode": "Scale by"})
    assert by["upscale_scale"] == 2.5 and "upscale_width" not in by and by["upscaler"] == "Lanczos"
    to = request_fields("upscale", {**base, "upscale_mode": "Scale to"})
    assert (to["upscale_width"], to["upscale_height"], to["upscale_crop"]) == (100, 80, False)
    assert "upscale_scale" not in to


def test_the_upscale_tab_runs_any_upscaler_and_lists_every_kind(manager: FakeManager, settings: Settings) -> None:
    from ui.upscale import default_upscaler, installed_upscaler_count, upscaler_choices, upscaler_note

    assert upscaler_choices(manager) == ["None", "Lanczos", "Nearest", "demo-x4-upscaler"]
    assert default_upscaler(manager) == "demo-x4-upscaler" and default_upscaler(manager, "Nearest") == "Nearest"
    assert installed_upscaler_count(manager) == 1
    assert "prompt" in upscaler_note(manager, "demo-x4-upscaler") and "resize" in upscaler_note(manager, "Lanczos")
    source = Image.new("RGB", (24, 16), (10, 200, 30))
    fields = request_fields("upscale", {"prompt": "", "steps": 20, "seed": -1, "upscaler": "Lanczos",
                                        "upscale_mode": "Scale by", "upscale_scale": 2})
    request = GenerationRequest.create(**fields, image=source)
    views = run_async(_collect(manager, request, SessionJobs(), "upscale"))
    result = views[-1].result
    assert result.images[0].size == (48, 32) and "Postprocess upscaler: Lanczos" in info_html(result)


def test_the_new_contract_ids_are_built_and_the_sd_x4_options_follow_the_upscaler(manager: FakeManager,
                                                                                 settings: Settings) -> None:
    config = build_ui(manager, settings).get_config_file()
    by_id = {c["props"].get("elem_id"): c for c in config["components"]}
    for elem_id in ("txt2img-hr-enable", "txt2img-hr-scale", "txt2img-hr-upscaler", "txt2img-hr-steps",
                    "txt2img-hr-denoise", "txt2img-tiling", "img2img-tiling", "upscale-model", "upscale-scale",
                    "upscale-input", "upscale-prompt", "upscale-negative", "upscale-steps", "upscale-generate",
                    "upscale-output", "upscale-info"):
        assert elem_id in by_id, elem_id
    hr_scale = by_id["txt2img-hr-scale"]["props"]
    assert (hr_scale["minimum"], hr_scale["maximum"], hr_scale["value"]) == (1, 4, 2)
    assert by_id["txt2img-hr-denoise"]["props"]["value"] == 0.7 and by_id["txt2img-hr-steps"]["props"]["value"] == 0
    assert by_id["txt2img-hr-enable"]["props"]["value"] is False
    assert by_id["txt2img-hr"]["props"]["label"] == "Hires. fix" and by_id["txt2img-hr"]["props"]["open"] is False
    choices = [c[0] for c in by_id["upscale-model"]["props"]["choices"]]
    assert choices == ["None", "Lanczos", "Nearest", "demo-x4-upscaler"]
    assert by_id["upscale-model"]["props"]["value"] == "demo-x4-upscaler"
    assert by_id["upscale-sd-x4-options"]["props"]["visible"] is True  # the SD x4 upscaler is chosen
    assert by_id["upscale-scale"]["props"]["value"] == 4
    # chosen last time: Lanczos, by 2 → the SD x4 options hidden, the hires fix open
    SettingsFile(settings).save_last_values("upscale", {"upscaler": "Lanczos", "upscale_scale": 2})
    SettingsFile(settings).save_last_values("txt2img", {"hr_enable": True, "hr_upscaler": "Nearest"})
    by_id = {c["props"].get("elem_id"): c for c in build_ui(manager, settings).get_config_file()["components"]}
    assert by_id["upscale-sd-x4-options"]["props"]["visible"] is False
    assert by_id["upscale-scale"]["props"]["value"] == 2
    assert by_id["txt2img-hr"]["props"]["open"] is True
    assert by_id["txt2img-hr"]["props"]["label"] == "Hires. fix: on · 512×512 → 1024×1024"
    assert by_id["txt2img-hr-upscaler"]["props"]["value"] == "Nearest"


# --------------------------------------------------------------------------------------------- inpainting


def stroke_layer(size: tuple[int, int], box: tuple[int, int, int, int], alpha: int = 255,
                 color: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """A brush layer as the editor hands it over: transparent, with an opaque stroke over ``box``."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((*color, alpha), box)
    return layer


def editor_value(picture: Image.Image, *layers: Image.Image) -> dict[str, Any]:
    """``gr.ImageEditor``'s value (``type="pil"``, ``image_mode="RGBA"``): the picture, its layers, both composed."""
    composite = picture.convert("RGBA")
    for layer in layers:
        composite = Image.alpha_composite(composite, layer.resize(composite.size))
    return {"background": picture.convert("RGBA"), "layers": list(layers), "composite": composite}


def inpaint_form(picture: Image.Image, *layers: Image.Image, **changes: Any) -> dict[str, Any]:
    """The Inpaint tab's values as ``wire_generate`` reads them (by form field name)."""
    values = {"prompt": "a red apple", "negative": "", "sampler": "Euler a", "steps": 4, "cfg": 7, "seed": 7,
              "width": 64, "height": 64, "batch_count": 1, "batch_size": 1, "tiling": False, "strength": 0.6,
              "editor": editor_value(picture, *layers), "mask_upload": None, "mask_blur": 6,
              "inpaint_fill": "latent noise", "inpaint_area": "Only masked", "inpaint_padding": 24,
              "inpaint_invert": MASK_MODES[1], "outpaint_left": 0, "outpaint_right": 0, "outpaint_up": 0,
              "outpaint_down": 0}
    values.update(changes)
    return values


def inpaint_request(values: dict[str, Any]) -> GenerationRequest:
    """What the Inpaint tab's Generate builds: an img2img request with the tab's own fields."""
    return GenerationRequest.create(**request_fields("img2img", values), **inpaint_fields(values))


def test_the_editor_strokes_are_the_mask_as_a1111_reads_a_brush_layer() -> None:
    picture = Image.new("RGB", (96, 64), (10, 120, 200))
    stroke = stroke_layer((96, 64), (10, 10, 30, 20))
    stroke.paste((255, 255, 255, 128), (30, 10, 40, 20))  # a soft edge at alpha 128: A1111 repaints above 128 only
    half = stroke_layer((48, 32), (40, 20, 48, 32), color=(255, 0, 0))  # a second layer, at half the picture's size
    value = editor_value(picture, stroke, half)
    mask = editor_mask(value)
    pixels = np.asarray(mask)
    assert mask.mode == "L" and mask.size == (96, 64) and set(np.unique(pixels)) == {0, 255}
    assert pixels[10:20, 10:30].min() == 255 and pixels[10:20, 30:40].max() == 0
    assert pixels[42:64, 82:96].min() == 255  # the half-size layer, scaled to the picture
    assert pixels[:, :10].max() == 0 and pixels[25:38, :].max() == 0
    assert editor_picture(value).size == (96, 64)  # the picture under the strokes, not the composite
    assert np.array_equal(np.asarray(editor_picture(value).convert("RGB")), np.asarray(picture))
    assert editor_mask(editor_value(picture)) is None  # no layer: nothing painted
    assert editor_picture(None) is None and editor_mask(None) is None


def test_the_inpaint_form_becomes_an_img2img_request_with_a1111s_mask_fields(manager: FakeManager) -> None:
    picture = Image.new("RGB", (64, 48), (90, 90, 90))
    upload = Image.new("L", (32, 24), 0)
    upload.paste(255, (0, 0, 8, 8))  # white = redraw, at another size than the picture
    values = inpaint_form(picture, stroke_layer((64, 48), (40, 30, 60, 44)), mask_upload=upload)
    request = inpaint_request(values)
    assert request.task == "img2img" and request.inpainting and request.outpaint is None
    mask = np.asarray(request.mask)
    assert mask[0:14, 0:14].min() == 255 and mask[30:44, 40:60].min() == 255  # the upload and the stroke together
    assert mask[20:28, :].max() == 0 and mask[:, 24:36].max() == 0
    assert (request.mask_blur_xy, request.inpainting_fill, request.inpaint_full_res, request.inpaint_full_res_padding,
            request.inpainting_mask_invert, request.denoising_strength) == ((6, 6), 2, True, 24, True, 0.6)
    # the outpaint sliders grow the canvas: "whole picture" draws at width x height plus the sides
    # (a 64x48 picture drawn at 64x64)
    values.update(outpaint_left=16.0, outpaint_down=8, inpaint_area="Whole picture", inpaint_invert=MASK_MODES[0])
    request = inpaint_request(values)
    assert request.outpaint.model_dump() == {"left": 16, "right": 0, "up": 0, "down": 8}
    assert not request.inpaint_full_res and not request.inpainting_mask_invert
    assert output_size(request) == (80, 72)
    views = run_async(_collect(manager, request, SessionJobs(), "inpaint"))
    result = views[-1].result
    assert result.images[0].size == (80, 72)  # the grown picture, as the engine makes it
    assert result.paths[0].parent.parent.name == "img2img"  # saved with img2img's pictures, as A1111 does
    assert "Mask blur: 6" in result.infotexts[0] and "Masked content: latent noise" in result.infotexts[0]
    remembered = remembered_values(values)
    assert {key: remembered[key] for key in ("mask_blur", "inpaint_fill", "inpaint_area", "inpaint_padding")} == {
        "mask_blur": 6, "inpaint_fill": "latent noise", "inpaint_area": "Whole picture", "inpaint_padding": 24}
    assert not {"editor", "mask_upload", "outpaint_left"} & set(remembered)  # a picture's, not the artist's habits


def test_an_inpaint_without_strokes_says_the_mask_is_empty_unless_it_outpaints() -> None:
    picture = Image.new("RGB", (64, 48), (90, 90, 90))
    untouched = Image.new("RGBA", (64, 48), (0, 0, 0, 0))  # the editor's layer before any stroke
    values = inpaint_form(picture, untouched, inpaint_invert=MASK_MODES[0])
    with pytest.raises(InvalidRequest) as info:
        inpaint_request(values)
    assert info.value.field == "mask" and "the mask is empty: paint the area to change" in str(info.value)
    values["outpaint_right"] = 32  # the outpaint alone says what to redraw
    request = inpaint_request(values)
    assert request.mask is None and output_size(request) == (96, 48)
    values["outpaint_right"] = 12
    with pytest.raises(InvalidRequest) as info:
        inpaint_request(values)
    assert info.value.field == "outpaint.right" and "multiple of 8" in str(info.value)
    with pytest.raises(gr.Error) as error:
        inpaint_fields({**values, "editor": None})
    assert error.value.message == NO_PICTURE
    assert outpaint_sides({"outpaint_left": 24.0, "outpaint_up": None}) == {"left": 24, "right": 0, "up": 0, "down": 0}


def test_width_and_height_follow_a_new_picture_but_not_each_stroke() -> None:
    picture = Image.new("RGB", (1600, 900), (90, 90, 90))
    value = editor_value(picture)
    assert size_for_editor(value, None) == (1024, 576, (1600, 900))  # fitted: long side 1024, multiples of 8
    stroke = editor_value(picture, stroke_layer((1600, 900), (10, 10, 50, 50)))
    assert size_for_editor(stroke, (1600, 900)) == (gr.skip(),) * 3  # the same picture, painted on: unchanged
    assert size_for_editor(editor_value(Image.new("RGB", (64, 100))), (1600, 900))[:2] == (64, 96)
    assert size_for_editor(None, None) == (gr.skip(),) * 3


def test_the_inpaint_tab_has_its_contract_ids_and_a1111s_defaults(manager: FakeManager, settings: Settings) -> None:
    config = build_ui(manager, settings).get_config_file()
    by_id = {c["props"].get("elem_id"): c for c in config["components"]}
    for elem_id in ("inpaint-editor", "inpaint-mask-upload", "inpaint-prompt", "inpaint-negative", "inpaint-strength",
                    "inpaint-mask-blur", "inpaint-fill", "inpaint-area", "inpaint-padding", "inpaint-invert",
                    "inpaint-steps", "inpaint-seed", "inpaint-generate", "inpaint-interrupt", "inpaint-gallery",
                    "inpaint-info", "outpaint-left", "outpaint-right", "outpaint-up", "outpaint-down", "img2img-depth"):
        assert elem_id in by_id, elem_id
    labels = [c["props"].get("label") for c in config["components"] if c.get("type") == "tabitem"]
    assert labels.index("Inpaint") == labels.index("Image to Image") + 1

    def props(elem_id: str) -> dict[str, Any]:
        return by_id[elem_id]["props"]

    def choices(elem_id: str) -> list[str]:
        return [choice[0] for choice in props(elem_id)["choices"]]

    assert by_id["inpaint-editor"]["type"] == "imageeditor"
    defaults = [props(elem_id)["value"] for elem_id in ("inpaint-strength", "inpaint-mask-blur", "inpaint-padding")]
    assert defaults == [0.75, 4, 32]
    assert choices("inpaint-fill") == ["fill", "original", "latent noise", "latent nothing"]
    assert props("inpaint-fill")["value"] == "original"  # A1111's UI default
    assert choices("inpaint-area") == ["Whole picture", "Only masked"]
    assert props("inpaint-area")["value"] == "Whole picture"
    assert choices("inpaint-invert") == ["Inpaint masked", "Inpaint not masked"]
    for side in ("left", "right", "up", "down"):
        assert (props(f"outpaint-{side}")["step"], props(f"outpaint-{side}")["value"]) == (8, 0)
    for tab in ("txt2img", "img2img", "inpaint"):  # "Send to Inpaint" beside the other send-to buttons
        assert props(f"{tab}-send-inpaint")["value"] == "Send to Inpaint"
        assert f"{tab}-send-upscale" in by_id
    assert props("img2img-depth")["visible"] is False  # not a depth checkpoint
    # the artist's habits come back after a restart
    SettingsFile(settings).save_last_values("inpaint", {"mask_blur": 9, "inpaint_fill": "fill",
                                                        "inpaint_area": "Only masked", "inpaint_padding": 64})
    by_id = {c["props"].get("elem_id"): c for c in build_ui(manager, settings).get_config_file()["components"]}
    assert (props("inpaint-mask-blur")["value"], props("inpaint-fill")["value"], props("inpaint-area")["value"],
            props("inpaint-padding")["value"]) == (9, "fill", "Only masked", 64)


def test_the_depth_map_input_shows_while_a_depth_checkpoint_is_chosen(settings: Settings) -> None:
    registry = FakeRegistry(checkpoints=("depth-512", "plain"), families={"depth-512": "sd2-depth"})
    fake = FakeManager(settings, registry)
    try:
        assert is_depth_checkpoint(fake, "depth-512") and not is_depth_checkpoint(fake, "plain")
        assert not is_depth_checkpoint(fake, None) and not is_depth_checkpoint(fake, "gone")
        config = build_ui(fake, settings).get_config_file()
        by_id = {c["props"].get("elem_id"): c for c in config["components"]}
        assert by_id["model-select"]["props"]["value"] == "depth-512"
        assert by_id["img2img-depth"]["props"]["visible"] is True
    finally:
        fake.close()


def test_a_card_click_in_the_inpaint_tab_edits_the_inpaint_prompt(networks: FakeManager) -> None:
    click = click_card(NetworkShelf(networks).find("lora:paint"), "inpaint", "a red apple")
    assert (click.tab, click.prompt) == ("inpaint", "a red apple <lora:paint:1>")
    assert click.message == "Added <lora:paint:1> to the Inpaint prompt."
