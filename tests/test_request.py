"""GenerationRequest: one validated request for every front door; messages name the field and the range."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from pipelines.errors import InvalidRequest
from pipelines.request import MAX_SIZE, MAX_STEPS, GenerationRequest, ProgressEvent, decode_image


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
