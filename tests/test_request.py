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


# --- inpainting fields (A1111's img2img mask fields, Atelier's outpaint) -----------------------------------------
def inpaint_request(**fields) -> GenerationRequest:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 24, 24))
    base = dict(task="img2img", init_image=Image.new("RGB", (64, 64), (9, 9, 9)), width=64, height=64, mask=mask)
    base.update(fields)
    return GenerationRequest.create(**base)


def test_inpaint_defaults_are_a1111s_ui_defaults_and_a_mask_makes_it_an_inpaint():
    request = inpaint_request()
    assert request.inpainting and request.pipeline_task == "inpaint" and request.task == "img2img"
    assert request.mask_blur_xy == (4, 4) and request.inpainting_fill == 1 and request.noise_multiplier == 1.0
    assert (request.inpaint_full_res, request.inpaint_full_res_padding, request.inpainting_mask_invert) == (
        False, 32, False)
    plain = GenerationRequest.create(task="img2img", init_image=Image.new("RGB", (64, 64)), mask_blur=8)
    assert not plain.inpainting and plain.pipeline_task == "img2img"


@pytest.mark.parametrize("value, expected", [(0, 0), (3, 3), ("fill", 0), ("Latent Noise", 2), ("latent_nothing", 3),
                                             ("1", 1), ("original", 1)])
def test_masked_content_takes_a1111s_numbers_and_names(value, expected):
    assert inpaint_request(inpainting_fill=value).inpainting_fill == expected


@pytest.mark.parametrize("field, value", [
    ("inpainting_fill", 4), ("inpainting_fill", "blur"), ("inpainting_fill", True), ("mask_blur", 65),
    ("mask_blur_x", -1), ("inpaint_full_res_padding", 300), ("initial_noise_multiplier", 2.0),
    ("initial_noise_multiplier", float("nan")), ("inpaint_full_res", 2), ("inpainting_mask_invert", "maybe"),
])
def test_inpaint_fields_out_of_range_name_the_field(field, value):
    with pytest.raises(InvalidRequest) as info:
        inpaint_request(**{field: value})
    assert info.value.field == field


def test_bools_take_a1111s_0_and_1_and_blur_x_y_override_the_blur():
    request = inpaint_request(inpaint_full_res=1, inpainting_mask_invert=0, mask_blur=6, mask_blur_y=2)
    assert request.inpaint_full_res is True and request.inpainting_mask_invert is False
    assert request.mask_blur_xy == (6, 2)


def test_a_mask_is_read_as_a1111_reads_it_and_resized_to_the_init_image():
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((10, 200, 10, 255), (0, 0, 16, 16))  # a brush stroke: its alpha is the mask, whatever its colour
    request = inpaint_request(mask=base64.b64encode(png_bytes_of(layer)).decode())
    assert request.mask.mode == "L" and request.mask.size == (64, 64)
    assert request.mask.getpixel((4, 4)) == 255 and request.mask.getpixel((60, 60)) == 0


def png_bytes_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_outpaint_sizes_and_all_zero_sides_are_no_outpaint():
    from pipelines.request import output_size, processing_size

    request = inpaint_request(mask=None, outpaint={"left": 64, "up": 8})
    assert processing_size(request) == output_size(request) == (128, 72)
    assert request.work == 128 * 72 * request.steps_run
    only = inpaint_request(outpaint={"right": 32}, inpaint_full_res=True, init_image=Image.new("RGB", (100, 50)))
    assert processing_size(only) == (64, 64) and output_size(only) == (132, 50)
    none = GenerationRequest.create(task="img2img", init_image=Image.new("RGB", (64, 64)), outpaint={"left": 0})
    assert none.outpaint is None and not none.inpainting
    with pytest.raises(InvalidRequest) as info:
        inpaint_request(outpaint={"left": 8, "center": 8})
    assert info.value.field == "outpaint"
