"""Hires fix and seamless tiling through the manager on tiny models (CPU, 64 px first passes, 2–3 steps).

What an artist notices: the picture comes out at the hires size (from ``hr_scale`` or from ``hr_resize_x/y`` as
A1111 computes it), with A1111's ``Hires …`` keys that PNG Info reads back; progress counts both passes; Stop in
the second pass keeps the first pass's picture; tiling wraps the picture for that run only; bad values are 422s
that name the field.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from manager_fixtures import make_manager

from pipelines.errors import InvalidRequest, ModelNotFound
from pipelines.infotext import parse_infotext
from pipelines.outputs import read_parameters
from pipelines.request import LATENT_UPSCALE_MODES, MAX_WORK, GenerationRequest, firstphase_fields, hires_size
from pipelines.tasks.hires import second_pass_schedule

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def hires(**fields) -> GenerationRequest:
    base = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", steps=2, width=64, height=64, seed=77,
                enable_hr=True, denoising_strength=0.5, hr_second_pass_steps=2)
    base.update(fields)
    return GenerationRequest.create(**base)


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    mgr = make_manager(tmp_path_factory.mktemp("hires"))
    yield mgr
    mgr.close()


def convs(manager) -> list[torch.nn.Conv2d]:
    entry = manager.cache.current("checkpoint")
    return [m for name in ("unet", "vae") for m in entry.components[name].modules() if isinstance(m, torch.nn.Conv2d)]


# --- sizes -------------------------------------------------------------------------------------------------------
def test_hr_scale_doubles_the_picture_and_png_info_reads_the_hires_keys_back(manager):
    result = manager.run(hires(hr_scale=2))
    assert result.images[0].size == (128, 128)
    fields = parse_infotext(read_parameters(result.paths[0]))
    assert fields["Size-1"] == "64" and fields["Size-2"] == "64"  # A1111 writes the first pass's size
    assert fields["Hires upscale"] == "2" and fields["Hires steps"] == "2" and fields["Hires upscaler"] == "Latent"
    assert fields["Denoising strength"] == "0.5"
    assert "Hires resize-1" not in fields and "Tiling" not in fields


@pytest.mark.parametrize("fields, size", [
    (dict(hr_resize_x=160), (160, 80)),  # one side given: the other keeps the aspect
    (dict(hr_resize_y=96), (192, 96)),
    (dict(hr_resize_x=96, hr_resize_y=96), (96, 96)),  # both: cover, then A1111's centre crop
    (dict(hr_scale=1.5), (192, 96)),
])
def test_resize_to_a_size_as_a1111_computes_it(manager, fields, size):
    result = manager.run(hires(width=128, height=64, hr_upscaler="Lanczos", **fields))
    assert result.images[0].size == size
    parsed = parse_infotext(result.infotexts[0])
    if "hr_scale" in fields:
        assert parsed["Hires upscale"] == "1.5"
    else:  # A1111's "Hires resize: WxH", read back as its two parts
        assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == (str(fields.get("hr_resize_x", 0)),
                                                                         str(fields.get("hr_resize_y", 0)))


def test_hires_sizes_follow_a1111s_calculate_target_resolution():
    size = hires_size(hires(width=512, height=512, hr_resize_x=1024, hr_resize_y=768))
    assert (size.upscale_width, size.upscale_height, size.width, size.height) == (1024, 1024, 1024, 768)
    assert (size.left, size.top) == (0, 128)
    size = hires_size(hires(width=512, height=768, hr_resize_x=1000))
    assert (size.width, size.height) == (1000, 1496)  # 1000 x 1500, latents of 8 px
    assert hires_size(hires(width=512, height=512, hr_scale=1.3)).width == 664  # int(665.6) // 8 * 8


@pytest.mark.parametrize("upscaler", [*LATENT_UPSCALE_MODES, "Lanczos", "Nearest", "None"])
def test_every_latent_mode_and_pixel_builtin_upscales(manager, upscaler):
    result = manager.run(hires(hr_upscaler=upscaler, steps=1, hr_second_pass_steps=1))
    assert result.images[0].size == (128, 128)
    assert parse_infotext(result.infotexts[0])["Hires upscaler"] == upscaler
    assert np.asarray(result.images[0]).std() > 1  # a picture, not a flat colour


@pytest.mark.parametrize("upscaler", ["latent (nearest)", "Lanczos"])
def test_a_batch_of_two_is_upscaled_image_by_image(manager, upscaler):
    result = manager.run(hires(batch_size=2, hr_upscaler=upscaler, steps=1, hr_second_pass_steps=1))
    assert [image.size for image in result.images] == [(128, 128)] * 2 and result.seeds == [77, 78]
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))
    assert parse_infotext(result.infotexts[1])["Hires upscaler"] == ("Latent (nearest)" if "atent" in upscaler
                                                                     else upscaler)


def test_a1111s_legacy_firstphase_fields_become_a_resize():
    assert firstphase_fields(1024, 768) == {"width": 1024, "height": 768}
    fields = firstphase_fields(1024, 768, 512, 384)
    request = hires(**fields)
    assert (request.width, request.height) == (512, 384)
    assert (hires_size(request).width, hires_size(request).height) == (1024, 768)


def test_own_sampler_prompt_and_same_seed_reproduce(manager):
    request = hires(hr_sampler_name="DPM++ 2M", hr_scheduler="Karras", hr_prompt="a lighthouse, sharp",
                    hr_negative_prompt="soft")
    first, again = manager.run(request), manager.run(request)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    fields = parse_infotext(first.infotexts[0])
    assert fields["Hires sampler"] == "DPM++ 2M Karras"
    assert fields["Hires prompt"] == "a lighthouse, sharp" and fields["Hires negative prompt"] == "soft"
    plain = manager.run(hires())
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(first.images[0]))


def test_the_second_pass_runs_exactly_its_steps_as_a1111():
    for steps, strength in ((10, 0.7), (20, 0.3), (5, 1.0), (150, 0.05), (1, 0.5)):
        scheduled, run_strength = second_pass_schedule(steps, strength)
        assert min(int(scheduled * run_strength), scheduled) == steps  # diffusers' get_timesteps
        assert scheduled <= 1000
    assert second_pass_schedule(10, 0.7)[0] == 14  # A1111: int(10 / 0.7)


# --- progress and Stop -------------------------------------------------------------------------------------------
def test_progress_counts_both_passes_and_names_them(manager):
    events = []
    manager.run(hires(steps=3, hr_second_pass_steps=2), on_progress=events.append)
    running = [e for e in events if e.state == "running"]
    assert {e.total_steps for e in running} == {5}
    assert [e.step for e in running if e.phase == "first pass"] == [1, 2, 3]
    assert [e.step for e in running if e.phase == "hires pass"] == [4, 5]
    assert any(e.phase == "upscaling" for e in running)
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in running)


def test_stop_during_the_second_pass_keeps_the_first_pass_picture(manager):
    holder: dict = {}
    stopped = threading.Event()

    def on_progress(event):
        if event.phase == "hires pass" and not stopped.is_set():
            stopped.set()
            holder["job"].cancel()

    manager.settings.step_delay_s = 0.05
    try:
        holder["job"] = manager.submit(hires(steps=2, hr_second_pass_steps=3), on_progress=on_progress)
        result = holder["job"].wait(120)
    finally:
        manager.settings.step_delay_s = 0.0
    assert stopped.is_set() and result.cancelled
    assert len(result.images) == 1 and result.images[0].size == (64, 64)  # the first pass's picture
    assert result.paths[0].exists()
    fields = parse_infotext(read_parameters(result.paths[0]))
    assert "Hires upscale" not in fields and "Denoising strength" not in fields  # a plain txt2img's infotext
    assert any("first pass" in note for note in result.notes)


# --- seamless tiling ---------------------------------------------------------------------------------------------
def test_tiling_pads_circularly_during_the_run_only(manager):
    manager.run(hires(enable_hr=False))  # the checkpoint loaded
    before = [layer.padding_mode for layer in convs(manager)]
    assert set(before) == {"zeros"}
    seen: list[set[str]] = []
    result = manager.run(hires(enable_hr=False, tiling=True),
                         on_progress=lambda e: seen.append({m.padding_mode for m in convs(manager)})
                         if e.state == "running" else None)
    assert seen and all(modes == {"circular"} for modes in seen)
    assert [layer.padding_mode for layer in convs(manager)] == before
    assert parse_infotext(result.infotexts[0])["Tiling"] == "True"
    plain = manager.run(hires(enable_hr=False))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(result.images[0]))


def test_tiling_is_restored_after_a_stop_and_covers_the_hires_pass(manager):
    holder: dict = {}
    modes: list[set[str]] = []

    def on_progress(event):
        if event.state == "running":
            modes.append({m.padding_mode for m in convs(manager)})
            if event.phase == "hires pass":
                holder["job"].cancel()

    holder["job"] = manager.submit(hires(tiling=True, hr_upscaler="Lanczos"), on_progress=on_progress)
    result = holder["job"].wait(120)
    assert result.cancelled and modes and all(m == {"circular"} for m in modes)
    assert {layer.padding_mode for layer in convs(manager)} == {"zeros"}


# --- bad input: 422 naming the field -----------------------------------------------------------------------------
@pytest.mark.parametrize("fields, field", [
    (dict(hr_scale=0.5), "hr_scale"),
    (dict(hr_scale=4.5), "hr_scale"),
    (dict(width=1536, height=512, hr_scale=2), "hr_scale"),
    (dict(hr_resize_x=4096), "hr_resize_x"),
    (dict(width=64, height=2048, hr_resize_x=2048, hr_resize_y=64), "hr_resize_y"),  # would upscale to 2048x65536
    (dict(hr_second_pass_steps=151), "hr_second_pass_steps"),
    (dict(hr_sampler_name="Nope"), "hr_sampler_name"),
    (dict(hr_scheduler="Nope"), "hr_scheduler"),
    (dict(width=2048, height=2048, steps=150, hr_scale=1, hr_second_pass_steps=0), "hr_second_pass_steps"),
    (dict(batch_count=16, batch_size=8, width=512, height=512, steps=20, hr_scale=2, hr_second_pass_steps=20),
     "batch_count"),
])
def test_bad_hires_values_are_422_naming_the_field(fields, field):
    with pytest.raises(InvalidRequest) as info:
        hires(**fields)
    assert info.value.field == field and info.value.http_status == 422


def test_a_second_pass_over_the_work_budget_is_refused_though_the_first_fits():
    first = hires(enable_hr=False, width=2048, height=2048, steps=150)
    assert first.work <= MAX_WORK
    with pytest.raises(InvalidRequest) as info:
        hires(width=2048, height=2048, steps=150, hr_scale=1, hr_second_pass_steps=150)
    assert "hires pass" in str(info.value)


def test_hires_belongs_to_txt2img_and_scripts_to_img2img():
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(task="img2img", init_image=np.zeros((8, 8, 3), np.uint8).tobytes(), enable_hr=True)
    assert info.value.field == "enable_hr"
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(script_name="sd upscale")
    assert info.value.field == "script_name"
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(script_name="x/y/z plot")
    assert info.value.field == "script_name"


def test_an_unknown_hires_upscaler_lists_the_available_ones(manager):
    with pytest.raises(ModelNotFound) as info:
        manager.submit(hires(hr_upscaler="4x-NotInstalled"))
    message = str(info.value)
    assert info.value.field == "hr_upscaler" and info.value.http_status == 422
    assert "Latent (bicubic antialiased)" in message and "Lanczos" in message and "Nearest" in message


def test_the_sd_x4_model_is_not_a_hires_upscaler(manager):
    with pytest.raises(ModelNotFound) as info:
        manager.submit(hires(hr_upscaler="tiny-x4"))
    assert info.value.field == "hr_upscaler" and "SD x4" in str(info.value)
