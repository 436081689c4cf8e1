"""Inpainting and outpainting through the manager on tiny models (CPU, 64 px, 2-3 steps), a normal (4-channel) and an
inpainting (9-channel) checkpoint.

What an artist notices: only the painted area changes, and the picture beyond the mask's blur is exactly the one they
gave; the inverted mask changes the rest instead; "Only masked" redraws a small corner and puts it back in place;
outpainting makes a larger picture that keeps the old one; every "Masked content" does something of its own; the
infotext has A1111's keys; bad masks and outpaints are 422s that name the field; nothing half-written is left.
"""

from __future__ import annotations

import numpy as np
import pytest
from manager_fixtures import FakeRegistry, make_manager
from PIL import Image

from pipelines import masks
from pipelines.errors import AtelierError, Cancelled, InvalidRequest
from pipelines.infotext import parse_infotext
from pipelines.outputs import read_parameters
from pipelines.request import GenerationRequest, output_size
from pipelines.tasks import inpaint

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

NORMAL, INPAINTING = "tiny-a", "tiny-inpaint"
BLUR = 4
REACH = masks.blur_radius(BLUR)  # how far the blur of 4 reaches: 10 px


def picture(size: int = 64, seed: int = 3) -> Image.Image:
    """A picture with detail everywhere (a change anywhere shows)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def square(size: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


def near(box: tuple[int, int, int, int], shape: tuple[int, int], reach: int) -> np.ndarray:
    """True within ``reach`` px of ``box`` (the area a blurred mask may touch)."""
    inside = np.zeros(shape, dtype=bool)
    x1, y1, x2, y2 = box
    inside[max(0, y1 - reach):y2 + reach, max(0, x1 - reach):x2 + reach] = True
    return inside


def diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max(axis=2)


def req(**fields) -> GenerationRequest:
    base = dict(task="img2img", prompt="a red apple", negative_prompt="blurry", steps=3, width=64, height=64,
                seed=1234, init_image=picture(), mask=square(64, (24, 24, 40, 40)), mask_blur=BLUR)
    base.update(fields)
    return GenerationRequest.create(**base)


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    mgr = make_manager(tmp_path_factory.mktemp("inpaint"),
                       registry=FakeRegistry(checkpoints=(NORMAL, INPAINTING), families={INPAINTING: "sd15-inpaint"}))
    yield mgr
    mgr.close()


@pytest.fixture
def plans(monkeypatch):
    """The plans the inpaint task made (what it drew, at which size, where)."""
    made: list[inpaint.InpaintPlan] = []
    real = inpaint.make_plan

    def spy(request, seed):
        made.append(real(request, seed))
        return made[-1]

    monkeypatch.setattr(inpaint, "make_plan", spy)
    return made


# --- the mask --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint", [NORMAL, INPAINTING])
def test_pixels_beyond_the_blur_are_exactly_the_originals_and_the_masked_area_changes(manager, checkpoint):
    request = req(checkpoint=checkpoint, batch_size=2)
    result = manager.run(request)
    assert [image.size for image in result.images] == [(64, 64)] * 2
    touched = near((24, 24, 40, 40), (64, 64), REACH)
    for image in result.images:
        changed = diff(image, request.init_image)
        assert changed[~touched].max() == 0  # exactly the original's
        assert changed[24:40, 24:40].mean() > 20  # the painted area was redrawn
    assert result.paths[0].parent.parent.name == "img2img"  # A1111 keeps inpaints with img2img's
    assert diff(result.images[0], result.images[1])[24:40, 24:40].mean() > 1  # seed + 1 draws another


@pytest.mark.parametrize("checkpoint", [NORMAL, INPAINTING])
def test_the_inverted_mask_changes_the_rest_and_keeps_the_painted_area(manager, checkpoint):
    request = req(checkpoint=checkpoint, mask=square(64, (16, 16, 48, 48)), inpainting_mask_invert=1)
    result = manager.run(request)
    changed = diff(result.images[0], request.init_image)
    kept = ~near((0, 0, 64, 64), (64, 64), 0)
    kept[16 + REACH:48 - REACH, 16 + REACH:48 - REACH] = True  # the painted square less the blur's reach
    assert changed[kept].max() == 0
    assert changed[:8].mean() > 20 and changed[:, :8].mean() > 20  # what was not painted was redrawn
    fields = parse_infotext(result.infotexts[0])
    assert fields["Mask mode"] == "Inpaint not masked"


def test_a_mask_of_another_size_is_resized_to_the_picture(manager):
    request = req(mask=square(32, (12, 12, 20, 20)), mask_blur=0)
    assert request.mask.size == (64, 64)
    changed = diff(manager.run(request).images[0], request.init_image)
    assert changed[~near((24, 24, 40, 40), (64, 64), 2)].max() == 0
    assert changed[26:38, 26:38].mean() > 20


def test_a_brush_layer_mask_is_read_by_its_alpha(manager):
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (24, 24, 40, 40))  # a red stroke on a transparent layer (the editor's brush)
    request = req(mask=layer)
    assert np.array_equal(np.asarray(request.mask), np.asarray(square(64, (24, 24, 40, 40))))


# --- only masked -------------------------------------------------------------------------------------------------
def test_only_masked_redraws_a_small_corner_at_the_request_size_and_puts_it_back_there(manager, plans):
    init = picture(128)
    mask_box = (100, 104, 116, 120)  # 16 px, bottom-right corner of a 128 px picture
    request = req(init_image=init, mask=square(128, mask_box), inpaint_full_res=True, inpaint_full_res_padding=8)
    result = manager.run(request)
    assert result.images[0].size == (128, 128) == output_size(request)
    [plan] = plans
    assert plan.size == (64, 64)  # the corner was drawn at the request's size ...
    x1, y1, x2, y2 = plan.box
    assert x2 - x1 == y2 - y1 < 64  # ... from a square crop (the request's aspect) smaller than that
    assert x1 <= mask_box[0] - REACH and y1 <= mask_box[1] - REACH and (x2, y2) == (128, 128)
    changed = diff(result.images[0], init)
    assert changed[~near(mask_box, (128, 128), REACH)].max() == 0  # nothing else changed
    assert changed[mask_box[1]:mask_box[3], mask_box[0]:mask_box[2]].mean() > 20  # the patch is where the mask was
    ys, xs = np.nonzero(changed)
    assert xs.min() >= mask_box[0] - REACH and ys.min() >= mask_box[1] - REACH
    fields = parse_infotext(read_parameters(result.paths[0]))  # PNG Info reads A1111's keys back
    assert fields["Inpaint area"] == "Only masked" and fields["Masked area padding"] == "8"
    assert (fields["Size-1"], fields["Size-2"]) == ("64", "64") and fields["Mask blur"] == "4"


def test_only_masked_on_an_inpainting_checkpoint(manager):
    init = picture(96)
    request = req(checkpoint=INPAINTING, init_image=init, mask=square(96, (8, 8, 24, 24)), inpaint_full_res=True)
    changed = diff(manager.run(request).images[0], init)
    assert changed[~near((8, 8, 24, 24), (96, 96), REACH)].max() == 0
    assert changed[8:24, 8:24].mean() > 20


# --- outpainting -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint", [NORMAL, INPAINTING])
def test_outpaint_grows_the_canvas_and_keeps_the_old_picture_outside_the_overlap(manager, checkpoint):
    init = picture()
    request = req(checkpoint=checkpoint, init_image=init, mask=None, outpaint={"left": 16, "down": 8})
    result = manager.run(request)
    assert result.images[0].size == (80, 72) == output_size(request)
    old = result.images[0].crop((16, 0, 80, 64))
    changed = diff(old, init)
    seam = masks.OUTPAINT_OVERLAP + REACH
    assert changed[:64 - seam, seam:].max() == 0  # the old picture, beyond the seam and its blur
    assert changed[:, :masks.OUTPAINT_OVERLAP].mean() > 5  # the seam was redrawn
    fields = parse_infotext(result.infotexts[0])
    assert (fields["Size-1"], fields["Size-2"]) == ("80", "72")  # drawn at the grown size, as A1111's outpainting


def test_outpaint_with_a_mask_and_only_masked_keeps_the_picture_size_plus_the_sides(manager):
    init = picture()
    request = req(init_image=init, mask=square(64, (4, 4, 12, 12)), outpaint={"right": 32},
                  inpaint_full_res=True)
    result = manager.run(request)
    assert result.images[0].size == (96, 64)
    changed = diff(result.images[0].crop((0, 0, 64, 64)), init)
    keep = ~near((4, 4, 12, 12), (64, 64), REACH)
    keep[:, 64 - masks.OUTPAINT_OVERLAP - REACH:] = False
    assert changed[keep].max() == 0
    assert changed[4:12, 4:12].mean() > 20


# --- masked content, infotext ------------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint", [NORMAL, INPAINTING])
def test_every_masked_content_draws_its_own_start_and_says_so(manager, checkpoint):
    request = req(checkpoint=checkpoint)
    drawn = {}
    for fill, name in enumerate(masks.MASKED_CONTENT):
        result = manager.run(req(checkpoint=checkpoint, inpainting_fill=name if fill % 2 else fill))
        changed = diff(result.images[0], request.init_image)
        assert changed[~near((24, 24, 40, 40), (64, 64), REACH)].max() == 0
        fields = parse_infotext(result.infotexts[0])
        assert fields.get("Masked content") == (None if name == "original" else name)  # A1111 writes no "original"
        drawn[name] = np.asarray(result.images[0], np.int16)[24:40, 24:40]
    names = list(drawn)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert np.abs(drawn[first] - drawn[second]).mean() > 1, (first, second)


def test_fill_paints_the_masked_area_from_its_surroundings():
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    image.paste((0, 0, 255), (24, 24, 40, 40))  # a blue square where the mask is
    filled = masks.fill(image, square(64, (24, 24, 40, 40)))
    inside = np.asarray(filled, np.int16)[28:36, 28:36]
    assert np.abs(inside - np.array([200, 40, 40])).max() <= 8  # the red around it, not the blue under it
    assert np.array_equal(np.asarray(filled)[:20], np.asarray(image)[:20])


def test_noise_multiplier_and_blur_keys_as_a1111_writes_them(manager):
    base = manager.run(req())
    same = manager.run(req(initial_noise_multiplier=1.0))
    assert np.array_equal(np.asarray(base.images[0]), np.asarray(same.images[0]))
    less = manager.run(req(initial_noise_multiplier=0.5))
    fields = parse_infotext(less.infotexts[0])
    assert fields["Noise multiplier"] == "0.5" and "Noise multiplier" not in parse_infotext(base.infotexts[0])
    assert np.abs(np.asarray(less.images[0], np.int16) - np.asarray(base.images[0], np.int16)).mean() > 0.5
    uneven = parse_infotext(manager.run(req(mask_blur_x=2, mask_blur_y=6)).infotexts[0])
    assert "Mask blur" not in uneven  # A1111 writes one blur only when x and y agree
    assert parse_infotext(base.infotexts[0])["Denoising strength"] == "0.75"


def test_the_noise_multiplier_applies_once_also_at_full_strength(manager, monkeypatch):
    """At strength 1 the starting latents already carry the multiplier, and diffusers' 4-channel path re-noises the
    kept area with those same latents: the scheduler must not multiply them again (that would be the square)."""
    factors: list[float] = []
    real = inpaint.denoise.noise_multiplier

    def spy(scheduler, factor):
        factors.append(factor)
        return real(scheduler, factor)

    monkeypatch.setattr(inpaint.denoise, "noise_multiplier", spy)
    manager.run(req(initial_noise_multiplier=0.5, denoising_strength=1.0))
    manager.run(req(initial_noise_multiplier=0.5, denoising_strength=0.75))
    assert factors == [1.0, 0.5]


def test_the_mask_is_blurred_at_the_pictures_size_then_resized_as_a1111():
    """A1111 (processing.py, img2img init) blurs the mask at the init image's size, then resizes it to width x
    height: a 4 px blur on a 128 px picture drawn at 64 px is a 2 px blur there, not a 4 px one."""
    request = req(init_image=picture(128), mask=square(128, (48, 48, 80, 80)))
    plan = inpaint.make_plan(request, request.seed)
    expected = masks.resize_image(masks.blur(request.mask, BLUR, BLUR), 64, 64)
    assert plan.mask.size == (64, 64)
    assert np.array_equal(np.asarray(plan.mask), np.asarray(expected))
    assert not np.array_equal(np.asarray(plan.mask), np.asarray(masks.blur(masks.resize_image(request.mask, 64, 64),
                                                                            BLUR, BLUR)))


def test_plain_img2img_is_unchanged_by_the_inpaint_fields_it_does_not_use(manager):
    plain = dict(task="img2img", prompt="a red apple", steps=3, width=64, height=64, seed=5, init_image=picture())
    first = manager.run(GenerationRequest.create(**plain))
    again = manager.run(GenerationRequest.create(**plain, mask_blur=9, inpainting_fill=0, inpaint_full_res=True))
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert "Mask blur" not in first.infotexts[0] and "Mask blur" not in again.infotexts[0]


# --- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [
    dict(mask=Image.new("L", (64, 64), 0)),
    dict(mask=Image.new("L", (64, 64), 100)),  # grey under the threshold repaints nothing
    dict(mask=Image.new("L", (64, 64), 255), inpainting_mask_invert=True),
    dict(mask=Image.new("RGBA", (64, 64), (255, 255, 255, 0))),  # an untouched brush layer
])
def test_an_empty_mask_is_a_422_naming_mask(fields):
    with pytest.raises(InvalidRequest) as info:
        req(**fields)
    assert info.value.field == "mask" and "the mask is empty: paint the area to change" in str(info.value)
    assert info.value.http_status == 422


@pytest.mark.parametrize("value", ["bm90IGFuIGltYWdl", b"\x89PNG broken", "data:image/png;base64,AAAA", 42])
def test_an_undecodable_mask_is_a_422_naming_mask(value):
    with pytest.raises(InvalidRequest) as info:
        req(mask=value)
    assert info.value.field == "mask"


@pytest.mark.parametrize("outpaint, side", [
    ({"left": 1024, "right": 1024}, "outpaint.right"),
    ({"left": 2000}, "outpaint.left"),
    ({"up": 1992, "down": 8}, "outpaint.up"),
    ({"down": 12}, "outpaint.down"),  # not a multiple of 8
    ({"right": -8}, "outpaint.right"),
])
def test_an_outpaint_past_the_limits_is_a_422_naming_the_side(outpaint, side):
    with pytest.raises(InvalidRequest) as info:
        req(mask=None, outpaint=outpaint)
    assert info.value.field == side and side in str(info.value)


def test_inpaint_fields_on_another_task_are_a_422_naming_them():
    for name, value in (("mask", square(64, (0, 0, 8, 8))), ("outpaint", {"left": 8})):
        with pytest.raises(InvalidRequest) as info:
            GenerationRequest.create(**{name: value})  # a txt2img request
        assert info.value.field == name
        with pytest.raises(InvalidRequest) as info:
            req(**{"mask": None, name: value}, script_name="sd upscale")
        assert info.value.field == name


def test_nothing_half_written_in_outputs_when_an_inpaint_fails(manager, monkeypatch):
    folder = manager.settings.outputs_dir
    before = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []

    def broken(plan, drawn):
        raise OSError("disk gone")

    monkeypatch.setattr(inpaint, "composite", broken)
    with pytest.raises(AtelierError, match="disk gone"):
        manager.run(req(batch_size=2))
    after = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    assert after == before


def test_stop_during_an_inpaint_stops_within_a_step_and_saves_nothing(manager):
    folder = manager.settings.outputs_dir
    before = set(folder.rglob("*.png")) if folder.exists() else set()
    steps_seen: list[int] = []
    box = {}

    def on_progress(event):
        if event.state == "running":
            steps_seen.append(event.step)
            if event.step == 1:
                box["job"].cancel()

    manager.settings.step_delay_s = 0.1
    try:
        box["job"] = manager.submit(req(steps=10, denoising_strength=1.0), on_progress=on_progress)
        with pytest.raises(Cancelled):
            box["job"].wait(timeout=60)
    finally:
        manager.settings.step_delay_s = 0.0
    assert max(steps_seen) <= 2
    assert (set(folder.rglob("*.png")) if folder.exists() else set()) == before


def test_the_prompt_language_steers_the_inpainted_area(manager):
    plain = manager.run(req(prompt="a red apple"))
    edited = manager.run(req(prompt="a [red:green:0.5] apple AND a (pear:1.3)"))
    changed = diff(edited.images[0], plain.images[0])
    assert changed[~near((24, 24, 40, 40), (64, 64), REACH)].max() == 0
    assert changed[24:40, 24:40].mean() > 1
    assert edited.infotexts[0].startswith("a [red:green:0.5] apple AND a (pear:1.3)")


def test_nan_from_the_vae_encode_is_redone_in_fp32(manager, monkeypatch):
    manager.run(req())
    vae = manager.cache.get(manager.registry.find_checkpoint(NORMAL).path).components["vae"]
    real_encode = vae.encode
    calls = []

    def nan_once(pixels, *args, **kwargs):
        calls.append(pixels.dtype)
        out = real_encode(pixels, *args, **kwargs)
        if len(calls) == 1:  # what a half-precision VAE does on some pictures
            out.latent_dist.mean.fill_(float("nan"))
        return out

    monkeypatch.setattr(vae, "encode", nan_once)
    request = req(seed=8)
    result = manager.run(request)
    assert len(calls) == 2
    assert parse_infotext(result.infotexts[0])["NaN guard"] == "VAE encoded in fp32"
    assert diff(result.images[0], request.init_image)[~near((24, 24, 40, 40), (64, 64), REACH)].max() == 0


def test_an_sdxl_checkpoint_inpaints_through_its_own_inpaint_pipeline(tmp_path):
    mgr = make_manager(tmp_path, registry=FakeRegistry(checkpoints=("tiny-xl",), families={"tiny-xl": "sdxl"}))
    try:
        request = req(checkpoint="tiny-xl", inpainting_fill=2)
        result = mgr.run(request)
        changed = diff(result.images[0], request.init_image)
        assert changed[~near((24, 24, 40, 40), (64, 64), REACH)].max() == 0
        assert changed[24:40, 24:40].mean() > 20
        entry = mgr.cache.current("checkpoint")
        assert type(entry.pipelines["inpaint"]).__name__ == "StableDiffusionXLInpaintPipeline"
    finally:
        mgr.close()
