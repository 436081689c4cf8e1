"""GenerationRequest: one validated request for every front door; messages name the field and the range."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from pipelines.errors import InvalidRequest
from pipelines.progress import ProgressEvent
from pipelines.request import MAX_SIZE, MAX_STEPS, GenerationRequest, decode_image


def png_bytes(size=(32, 32), mode="RGB", color=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("field, value, words", [
    ("width", 500, "multiple of 8"),
    ("height", 4096, f"between 64 and {MAX_SIZE}"),
    ("steps", 0, f"between 1 and {MAX_STEPS}"),
    ("cfg_scale", 31.0, "between 1 and 30"),
    ("cfg_scale", float("nan"), "finite"),
    ("denoising_strength", 1.5, "between 0 and 1"),
    ("seed", -2, "-1 (random)"),
    ("batch_size", 9, "between 1 and 8"),
    ("batch_count", 0, "between 1 and 16"),
    ("noise_level", 400, "between 0 and 350"),
])
def test_out_of_range_values_name_the_field_and_range(field, value, words):
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(**{field: value})
    assert info.value.field == field
    assert field in str(info.value) and words in str(info.value)


def test_unknown_fields_are_refused():
    with pytest.raises(InvalidRequest, match="not a known field"):
        GenerationRequest.create(stepz=20)


def test_img2img_needs_an_init_image_and_decodes_what_clients_send():
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(task="img2img")
    assert info.value.field == "init_image"
    data = png_bytes()
    for sent in (data, base64.b64encode(data).decode(), "data:image/png;base64," + base64.b64encode(data).decode()):
        request = GenerationRequest.create(task="img2img", init_image=sent)
        assert request.init_image.size == (32, 32) and request.init_image.mode == "RGB"


def test_transparent_images_are_flattened_on_white():
    image = decode_image(png_bytes(mode="RGBA", color=(0, 0, 0, 0)))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


def test_garbage_images_are_a_field_error():
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(task="img2img", init_image="bm90IGFuIGltYWdl")
    assert info.value.field == "init_image"


def test_a1111_resize_mode_numbers_and_sampler_aliases():
    request = GenerationRequest.create(task="img2img", init_image=png_bytes(), resize_mode=1, sampler="k_dpmpp_2m")
    assert request.resize_mode == "crop and resize" and request.sampler == "DPM++ 2M"


def test_upscale_input_limit_names_the_output_size():
    big = Image.new("RGB", (1100, 600))
    with pytest.raises(InvalidRequest, match="4400x2400") as info:
        GenerationRequest.create(task="upscale", image=big)
    assert info.value.field == "image"


def test_seed_minus_one_draws_a_seed_and_totals():
    request = GenerationRequest.create(seed=-1, batch_count=3, batch_size=2)
    assert 0 <= request.resolved_seed() < 2**32 and request.total_images == 6


def test_progress_fraction_spans_batches():
    event = ProgressEvent(job_id="j", state="running", step=5, total_steps=10, batch_index=1, batch_count=2)
    assert event.fraction == pytest.approx(0.75)


# --- the work budget: width x height x steps run x images -------------------------------------------------------
def test_everyday_batches_and_one_largest_image_fit_the_work_budget():
    from pipelines.request import MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_WORK

    everyday = GenerationRequest.create(width=512, height=512, steps=32, batch_size=MAX_BATCH_SIZE,
                                        batch_count=MAX_BATCH_COUNT)
    assert everyday.work == MAX_WORK  # 16 x 8 images of 512² at 32 steps: exactly at the budget
    largest = GenerationRequest.create(width=MAX_SIZE, height=MAX_SIZE, steps=MAX_STEPS)
    assert largest.total_images == 1 and largest.work <= MAX_WORK
    GenerationRequest.create(width=MAX_SIZE, height=MAX_SIZE, steps=128, batch_size=2)  # two at 128 steps fit too


@pytest.mark.parametrize("fields, field_name, words", [
    ({"width": 512, "height": 512, "steps": 33, "batch_size": 8, "batch_count": 16}, "batch_count",
     ["16 × 8 images of 512×512 px at 33 steps", "4,224 steps of a 512×512 image", "limit is 4,096"]),
    ({"width": MAX_SIZE, "height": MAX_SIZE, "steps": MAX_STEPS, "batch_size": 2}, "batch_size",
     ["2 images of 2048×2048 px at 150 steps", "4,800 steps"]),
    ({"width": MAX_SIZE, "height": MAX_SIZE, "steps": MAX_STEPS, "batch_size": 8, "batch_count": 16}, "batch_count",
     ["16 × 8 images", "307,200 steps"]),
])
def test_a_request_over_the_work_budget_says_what_it_amounts_to_and_what_to_lower(fields, field_name, words):
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(**fields)
    message = str(info.value)
    assert info.value.field == field_name and info.value.http_status == 422
    for part in words + ["Lower the batch count, batch size, steps or size"]:
        assert part in message, message


def test_img2img_counts_the_steps_its_strength_runs():
    image = png_bytes((64, 64))
    # 150 steps at strength 0.5 run 75: two 2048² images (4,800 steps at full strength) fit the budget.
    request = GenerationRequest.create(task="img2img", init_image=image, width=MAX_SIZE, height=MAX_SIZE,
                                       steps=MAX_STEPS, batch_size=2, denoising_strength=0.5)
    assert request.steps_run == 75
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(task="img2img", init_image=image, width=MAX_SIZE, height=MAX_SIZE, steps=MAX_STEPS,
                                 batch_size=2, denoising_strength=0.9)
    assert info.value.field == "batch_size"
    assert "135 steps (150 steps × denoising strength 0.9)" in str(info.value)


def test_upscale_requests_are_not_counted_against_the_generation_budget():
    request = GenerationRequest.create(task="upscale", image=png_bytes((64, 64)), steps=MAX_STEPS, width=MAX_SIZE,
                                       height=MAX_SIZE, batch_size=8, batch_count=16)
    assert request.task == "upscale"
