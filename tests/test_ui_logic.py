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
import pytest
from fakes import FakeManager, FakeRegistry
from PIL import Image, PngImagePlugin

from pipelines.interface import EngineStatus
from pipelines.progress import ProgressEvent
from pipelines.request import GenerationRequest
from pipelines.settings import Settings
from ui import build_ui
from ui.common import count_tokens, preset_size, request_fields, token_label
from ui.jobs import SessionJobs, follow_job, info_html, progress_text
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
        "steps": 4,
        "cfg": 5.5,
        "seed": 1234,
        "width": 64,
        "height": 96,
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
