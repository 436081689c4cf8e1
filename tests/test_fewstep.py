"""Few-step generation (issue 28): the TCD sampler, A1111's "SGM Uniform" schedule, CFG 1 as one UNet pass per step
with the negative prompt left out, the speed presets and their automatic choice, the thread-count setting.

What a user would notice: a few-step model's sampler/schedule runs and is written into the infotext; CFG 1 makes each
step one UNet pass (about twice as fast) and gives plain diffusers' pixels; a preset sets what it says; an LCM,
Turbo, Lightning, Hyper-SD or TCD checkpoint or LoRA chooses its preset by itself, by name or by its metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from fakes import FakeRegistry, write_lora
from manager_fixtures import TinyLoader, make_manager
from transformers import CLIPTextModel

from pipelines import presets
from pipelines.errors import InvalidRequest
from pipelines.infotext import parse_infotext
from pipelines.request import GenerationRequest
from pipelines.samplers import (
    SAMPLER_NAMES,
    SCHEDULE_NAMES,
    make_scheduler,
    resolve_sampler,
    resolve_schedule,
    sampler_call_arguments,
)
from pipelines.tiny import SD15_SCHEDULER_CONFIG, tiny_sd15_components

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

LONG_NEGATIVE = ", ".join(f"bad thing {i}" for i in range(40))  # > 75 tokens: two chunks when it is encoded


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory):
    mgr = make_manager(tmp_path_factory.mktemp("fewstep"))
    yield mgr
    mgr.close()


def run(manager: Any, **fields: Any) -> Any:
    base = dict(prompt="a lighthouse at dusk", width=64, height=64, seed=11)
    return manager.run(GenerationRequest.create(**{**base, **fields}))


def pixels(result: Any) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


class UNetCalls:
    """Counts UNet forward calls and their batch sizes (every UNet of the process, for one test)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.batches: list[int] = []
        plain = UNet2DConditionModel.forward

        def forward(unet: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.batches.append(int(sample.shape[0]))
            return plain(unet, sample, *args, **kwargs)

        monkeypatch.setattr(UNet2DConditionModel, "forward", forward)


class TextEncoderCalls:
    """Counts CLIP text-encoder forward calls (each batch of prompt chunks is one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        plain = CLIPTextModel.forward

        def forward(model: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return plain(model, *args, **kwargs)

        monkeypatch.setattr(CLIPTextModel, "forward", forward)


# --- samplers and schedules ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sampler", "schedule", "steps"), [
    ("TCD", "Automatic", 2), ("Euler a", "SGM Uniform", 1), ("Euler", "SGM Uniform", 2), ("DDIM", "SGM Uniform", 2),
    ("DPM++ 2M", "SGM Uniform", 2),
])
def test_each_new_sampler_and_schedule_runs_and_is_recorded(manager, sampler: str, schedule: str, steps: int) -> None:
    result = run(manager, sampler=sampler, scheduler=schedule, steps=steps, cfg_scale=1.0)
    image = pixels(result)
    assert image.shape == (64, 64, 3) and image.std() > 0
    fields = parse_infotext(result.infotexts[0])
    assert fields["Sampler"] == sampler and fields["Steps"] == str(steps)
    assert fields.get("Schedule type", "Automatic") == schedule


def test_the_new_names_are_offered_and_read_in_a1111s_spellings() -> None:
    assert "TCD" in SAMPLER_NAMES and "SGM Uniform" in SCHEDULE_NAMES
    assert resolve_sampler("tcd") == ("TCD", "Automatic")
    for spelling in ("SGM Uniform", "sgm_uniform", "SGMUniform", "sgm uniform"):
        assert resolve_schedule(spelling) == "SGM Uniform"
    assert resolve_sampler("Euler a", "sgm_uniform") == ("Euler a", "SGM Uniform")
    # LCM and TCD space their own timesteps: another spacing is refused, naming the field
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(sampler="LCM", scheduler="SGM Uniform")
    assert info.value.field == "scheduler" and "SGM Uniform" in str(info.value)
    with pytest.raises(InvalidRequest, match="Unknown schedule type"):
        resolve_schedule("SGM Normal")


def test_sgm_uniform_is_trailing_timesteps_as_a1111_spaces_them() -> None:
    trailing = make_scheduler("Euler", "SGM Uniform", SD15_SCHEDULER_CONFIG)
    trailing.set_timesteps(4)
    # A1111's sgm_uniform: linspace(999, 0, n + 1)[:-1] = 999, 749.25, 499.5, 249.75; diffusers' "trailing"
    assert [round(float(t)) for t in trailing.timesteps] == [999, 749, 499, 249]
    leading = make_scheduler("Euler", "Automatic", SD15_SCHEDULER_CONFIG)
    leading.set_timesteps(4)
    assert round(float(leading.timesteps[0])) == 751  # the checkpoint's own "leading" spacing, unchanged
    turbo = make_scheduler("Euler a", "SGM Uniform", SD15_SCHEDULER_CONFIG)
    turbo.set_timesteps(1)
    assert [round(float(t)) for t in turbo.timesteps] == [999]  # one step from pure noise, as SD-Turbo wants


def test_tcd_runs_with_its_gamma(manager, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import TCDScheduler

    seen: list[float] = []
    plain = TCDScheduler.step

    def step(self: Any, *args: Any, eta: float = 0.3, **kwargs: Any) -> Any:
        seen.append(eta)
        return plain(self, *args, eta=eta, **kwargs)

    monkeypatch.setattr(TCDScheduler, "step", step)
    assert sampler_call_arguments("TCD") == {"eta": 0.3} and sampler_call_arguments("Euler") == {}
    run(manager, sampler="TCD", steps=2, cfg_scale=1.0)
    assert seen == [0.3, 0.3]  # not the SD pipelines' own eta=0


# --- CFG 1: one UNet pass per step ---------------------------------------------------------------------------------
def test_cfg_1_calls_the_unet_once_per_step_and_skips_the_negative(manager, monkeypatch: pytest.MonkeyPatch) -> None:
    unet, text = UNetCalls(monkeypatch), TextEncoderCalls(monkeypatch)
    run(manager, sampler="LCM", steps=4, cfg_scale=1.0, negative_prompt="blurry")
    assert unet.batches == [1, 1, 1, 1]  # four steps, one pass each, one image: no negative pass
    assert text.calls == 1  # the prompt only: the negative prompt is not even encoded
    unet.batches.clear()
    text.calls = 0
    run(manager, sampler="Euler", steps=3, cfg_scale=7.0, negative_prompt="blurry")
    assert unet.batches == [2, 2, 2]  # with CFG: negative and prompt in one batch per step
    assert text.calls == 2


def test_cfg_1_gives_plain_diffusers_pixels_whatever_the_negative(manager) -> None:
    """The negative prompt is unused at CFG 1: a two-chunk negative no longer pads the prompt to its length, so the
    picture is plain diffusers' (prompt only, guidance_scale 1)."""
    from diffusers import LCMScheduler, StableDiffusionPipeline

    result = run(manager, sampler="LCM", steps=3, cfg_scale=1.0, negative_prompt=LONG_NEGATIVE)
    components = tiny_sd15_components(TinyLoader.seed_for("tiny-a"))
    pipe = StableDiffusionPipeline(**{k: v for k, v in components.items() if k != "image_encoder"},
                                   requires_safety_checker=False)
    pipe.scheduler = LCMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe("a lighthouse at dusk", num_inference_steps=3, guidance_scale=1.0, height=64, width=64,
                 generator=torch.Generator("cpu").manual_seed(11)).images[0]
    assert np.array_equal(pixels(result), np.asarray(plain, dtype=np.int16))
    with_short_negative = run(manager, sampler="LCM", steps=3, cfg_scale=1.0, negative_prompt="blurry")
    assert np.array_equal(pixels(result), pixels(with_short_negative))


def test_and_prompts_at_cfg_1_run_the_uncond_only_when_their_weights_need_it(manager,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import prompt_encoding

    unet = UNetCalls(monkeypatch)
    halves = run(manager, prompt="a red house :0.5 AND a blue boat :0.5", sampler="Euler", steps=2, cfg_scale=1.0)
    assert unet.batches == [2, 2]  # the two parts; weights adding up to 1 cancel the uncond out
    unet.batches.clear()
    run(manager, prompt="a red house AND a blue boat", sampler="Euler", steps=2, cfg_scale=1.0)
    assert unet.batches == [3, 3]  # uncond + 2 parts: A1111's uncond + Σ wᵢ (condᵢ − uncond) keeps −1 · uncond
    # the shortcut is the same sum: against the uncond-including path, fp32 noise at most
    monkeypatch.setattr(prompt_encoding, "needs_negative", lambda guidance, weights: True)
    unet.batches.clear()
    full = run(manager, prompt="a red house :0.5 AND a blue boat :0.5", sampler="Euler", steps=2, cfg_scale=1.0,
               seed=11, negative_prompt="x")
    assert unet.batches == [3, 3]
    assert np.abs(pixels(halves) - pixels(full)).max() <= 1


# --- presets ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "expected"), [
    ("LCM (4 steps)", ("LCM", "Automatic", 4, 1.0)),
    ("Turbo (1 step)", ("Euler a", "SGM Uniform", 1, 1.0)),
    ("Lightning / Hyper (4–8 steps)", ("Euler", "SGM Uniform", 4, 1.0)),
    ("TCD (4 steps)", ("TCD", "Automatic", 4, 1.0)),
    ("Standard", ("DPM++ 2M", "Automatic", 25, 7.0)),  # the Settings' default sampler and steps
])
def test_each_preset_sets_what_it_says_and_runs(manager, name: str, expected: tuple) -> None:
    from pipelines.settings import Settings
    from ui.common import chosen_preset, preset_updates

    settings = Settings(default_sampler="DPM++ 2M", default_steps=25)
    preset = chosen_preset(name, settings)
    assert (preset.sampler, preset.schedule, preset.steps, preset.cfg_scale) == expected
    assert preset_updates(preset) == list(expected)
    result = run(manager, sampler=preset.sampler, scheduler=preset.schedule, steps=min(preset.steps, 4),
                 cfg_scale=preset.cfg_scale)
    fields = parse_infotext(result.infotexts[0])
    assert (fields["Sampler"], fields["CFG scale"]) == (expected[0], f"{expected[3]:g}")
    assert presets.PRESET_NAMES[:4] == ("Standard", "LCM (4 steps)", "Turbo (1 step)",
                                         "Lightning / Hyper (4–8 steps)")


@pytest.mark.parametrize(("name", "preset", "steps"), [
    ("lcm-lora-sdv1-5", presets.LCM, 4),
    ("LCM_Dreamshaper_v7", presets.LCM, 4),
    ("sd_turbo", presets.TURBO, 1),
    ("sdxl_turbo_1.0_fp16", presets.TURBO, 1),
    ("sdxl_lightning_8step_lora", presets.LIGHTNING, 8),
    ("Hyper-SD15-1step-lora", presets.LIGHTNING, 1),
    ("Hyper-SD15-8steps-CFG-lora", presets.LIGHTNING, 8),
    ("dreamshaperXL_lightningDPMSDE", presets.LIGHTNING, 4),
    ("TCD-SD15-LoRA", presets.TCD, 4),
    ("HyperRealism_v3", None, None),  # "hyper" alone is not Hyper-SD
    ("v1-5-pruned-emaonly", None, None),
    ("lcmx_merge", None, None),  # "lcm" must start a word, and be one: "lcmx" is something else
])
def test_a_preset_is_read_from_a_model_name(name: str, preset: str | None, steps: int | None) -> None:
    found = presets.preset_from_text(name)
    if preset is None:
        assert found is None
    else:
        assert (found.name, found.steps) == (preset, steps)


def test_the_automatic_preset_comes_from_a_prompt_lora_or_the_checkpoint(tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    lcm = write_lora(loras / "lcm-lora-sdv1-5.safetensors", "sd1")
    plain = write_lora(loras / "paper-style.safetensors", "sd1", {"ss_tag_frequency": '{"turbo car": 3}'})
    speed = write_lora(loras / "speedup.safetensors", "sd1", {"modelspec.title": "Hyper-SD 8 steps", "format": "pt"})
    registry = FakeRegistry(checkpoints=("sdxl_turbo", "dreamshaper_8"), loras=(lcm, plain, speed))
    mgr = make_manager(tmp_path, registry=registry)
    try:
        # the checkpoint's name
        choice = mgr.suggest_preset("sdxl_turbo", "a cat")
        assert choice.preset.name == presets.TURBO and choice.source == "the checkpoint sdxl_turbo"
        assert "its name says Turbo" in choice.message and "Pick another preset" in choice.message
        # a prompt LoRA wins over the checkpoint
        assert mgr.suggest_preset("sdxl_turbo", "a cat <lora:lcm-lora-sdv1-5:1>").preset.name == presets.LCM
        # by its metadata; a dataset's tag counts are not the model's name
        by_metadata = mgr.suggest_preset("dreamshaper_8", "a cat <lora:speedup:1>")
        assert by_metadata.preset.name == presets.LIGHTNING and by_metadata.preset.steps == 8
        assert "metadata (modelspec.title) says Lightning / Hyper" in by_metadata.reason
        assert mgr.suggest_preset("dreamshaper_8", "a cat <lora:paper-style:1>") is None
        assert mgr.suggest_preset("dreamshaper_8", "a cat <lora:not-installed:1>") is None
        assert mgr.suggest_preset("no-such-checkpoint", "a cat") is None
    finally:
        mgr.close()


def test_the_preset_menu_follows_the_models_and_lets_the_user_override() -> None:
    from pipelines.settings import Settings
    from ui.common import automatic_preset

    class Engine:
        choice: Any = None

        def suggest_preset(self, checkpoint: str | None, prompt: str) -> Any:
            return self.choice

    engine, settings = Engine(), Settings()
    engine.choice = presets.PresetChoice(presets.PRESETS[presets.LCM], "the LoRA lcm", "its name says LCM")
    preset, note, key = automatic_preset(engine, settings, "x <lora:lcm:1>", "sd15", "Standard", None)
    assert preset.name == presets.LCM and "LCM (4 steps) chosen" in note
    # the same finding again (the user may have picked another preset since): nothing changes
    assert automatic_preset(engine, settings, "x <lora:lcm:1> more", "sd15", "Standard", key) is None
    # the LoRA taken out while its preset is still chosen: Standard again, said so
    engine.choice = None
    preset, note, new_key = automatic_preset(engine, settings, "x", "sd15", presets.LCM, key)
    assert preset.name == "Standard" and preset.cfg_scale == 7.0 and new_key is None and "Standard again" in note
    # ... but a preset the user picked meanwhile stays
    assert automatic_preset(engine, settings, "x", "sd15", presets.TURBO, key) is None


def test_the_tabs_have_a_preset_menu_a_schedule_menu_and_a_cfg_note(tmp_path: Path) -> None:
    import gradio as gr
    from fakes import FakeManager

    from pipelines.settings import Settings
    from ui import build_ui
    from ui.common import CFG_ONE_NOTE, cfg_note_html, request_fields

    manager = FakeManager(Settings(outputs_dir=tmp_path / "outputs", settings_file=tmp_path / "settings.json"),
                          FakeRegistry())
    try:
        blocks = build_ui(manager, manager.settings)
        ids = {block.elem_id: block for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
        for tab in ("txt2img", "img2img"):
            assert isinstance(ids[f"{tab}-preset"], gr.Dropdown)
            assert list(presets.PRESET_NAMES) == [choice[0] for choice in ids[f"{tab}-preset"].choices]
            assert isinstance(ids[f"{tab}-scheduler"], gr.Dropdown)
            assert "SGM Uniform" in [choice[0] for choice in ids[f"{tab}-scheduler"].choices]
    finally:
        manager.close()
    assert "negative prompt is not used" in cfg_note_html(1) and cfg_note_html(7.0) == ""
    assert "negative prompt is not used" in CFG_ONE_NOTE
    fields = request_fields("txt2img", {"prompt": "x", "steps": 1, "seed": 1, "sampler": "Euler a",
                                        "scheduler": "SGM Uniform", "cfg": 1, "preset": "Turbo (1 step)"})
    request = GenerationRequest.create(**fields)
    assert (request.sampler, request.scheduler, request.cfg_scale) == ("Euler a", "SGM Uniform", 1.0)


def test_png_info_brings_the_schedule_type_back() -> None:
    from ui.pnginfo import parse_parameters, txt2img_values

    values = txt2img_values(parse_parameters(
        "a cat\nSteps: 1, Sampler: Euler a, Schedule type: SGM Uniform, CFG scale: 1, Seed: 5, Size: 64x64"))
    assert (values["sampler"], values["scheduler"], values["steps"], values["cfg"]) == ("Euler a", "SGM Uniform",
                                                                                       1, 1.0)


# --- CPU threads --------------------------------------------------------------------------------------------------
def test_the_thread_count_setting_reaches_the_worker(tmp_path: Path) -> None:
    from ui.settings_tab import collect_changes

    mgr = make_manager(tmp_path, threads=2)
    seen: list[int] = []

    def on_progress(event: Any) -> None:  # called on the worker thread, where torch's count applies
        if event.state == "running":
            seen.append(torch.get_num_threads())

    try:
        mgr.run(GenerationRequest.create(prompt="x", steps=1, width=64, height=64), on_progress=on_progress)
        assert seen and set(seen) == {2}
        assert mgr.apply_settings({"threads": 1}) == ["threads"]
        seen.clear()
        mgr.run(GenerationRequest.create(prompt="x", steps=1, width=64, height=64), on_progress=on_progress)
        assert set(seen) == {1}
        with pytest.raises(InvalidRequest) as info:
            mgr.apply_settings({"threads": -1})
        assert info.value.field == "threads" and mgr.settings.threads == 1
        assert collect_changes(mgr.settings, {"threads": 3.0}) == {"threads": 3}
    finally:
        mgr.close()
