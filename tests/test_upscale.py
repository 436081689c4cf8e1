"""x4 upscale: tiles cover the image, blends without seams, the manager saves it; a missing model is explained."""

from __future__ import annotations

import numpy as np
import pytest
from manager_fixtures import FakeRegistry, make_manager
from PIL import Image

from pipelines.errors import ModelNotFound
from pipelines.infotext import parse_infotext
from pipelines.request import GenerationRequest
from pipelines.upscale import count_tiles, plan_tiles, upscale_tiled

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 90.0)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def nearest_x4(tile: Image.Image, index: int) -> np.ndarray:
    """A stand-in upscaler: exact 4x nearest-neighbour, as floats in [0, 1]."""
    return np.asarray(tile.resize((tile.width * 4, tile.height * 4), Image.Resampling.NEAREST), np.float32) / 255.0


@pytest.mark.parametrize("width, height", [(64, 64), (100, 52), (130, 200)])
def test_tiles_cover_every_pixel_with_overlap(width, height):
    tiles = plan_tiles(width, height, tile=48, overlap=16)
    covered = np.zeros((height, width), dtype=int)
    for t in tiles:
        assert t.right - t.left <= 48 and t.bottom - t.top <= 48
        covered[t.top:t.bottom, t.left:t.right] += 1
    assert covered.min() >= 1
    if len(tiles) > 1:
        assert covered.max() >= 2  # neighbours overlap


def test_small_images_are_one_tile():
    assert len(plan_tiles(32, 40, tile=128, overlap=32)) == 1


def test_blending_tiles_reproduces_a_whole_image_upscale():
    image = gradient(100, 60)  # not a multiple of 8: padded, then cropped back
    tiled = upscale_tiled(nearest_x4, image, tile=32, overlap=8)
    whole = image.resize((400, 240), Image.Resampling.NEAREST)
    assert tiled.size == (400, 240)
    assert np.abs(np.asarray(tiled, np.int16) - np.asarray(whole, np.int16)).max() <= 1


def test_feathering_hides_tile_seams():
    """Tiles that disagree (each a different brightness) still blend without a hard edge in the overlaps."""
    def uneven(tile, index):
        return np.clip(nearest_x4(tile, index) + (0.2 if index % 2 else -0.2), 0, 1)

    out = np.asarray(upscale_tiled(uneven, Image.new("RGB", (96, 32), (128, 128, 128)), tile=32, overlap=16),
                     np.float32)
    row = out[64, :, 0]
    assert np.abs(np.diff(row)).max() < 0.2 * 255 / 4  # the 0.4 step is spread over the overlap


def test_upscale_through_the_manager_saves_a_4x_png(tmp_path):
    manager = make_manager(tmp_path)
    try:
        events = []
        image = gradient(40, 32)
        request = GenerationRequest.create(task="upscale", image=image, prompt="crisp", negative_prompt="blur",
                                           steps=2, noise_level=30, seed=12)
        result = manager.run(request, on_progress=events.append)
        assert result.images[0].size == (160, 128)
        assert result.paths[0].exists() and result.paths[0].parent.parent.name == "upscale"
        fields = parse_infotext(result.infotexts[0])
        assert fields["Prompt"] == "crisp" and fields["Noise level"] == "30" and fields["Model"] == "tiny-x4"
        tiles = count_tiles(image, manager.upscale_tile, manager.upscale_overlap)
        assert tiles > 1 and fields["Tiles"] == str(tiles)
        steps = [e.step for e in events if e.state == "running"]
        assert steps[-1] == 2 * tiles and all(e.total_steps == 2 * tiles for e in events if e.state == "running")
        again = manager.run(request)
        assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))
    finally:
        manager.close()


def test_missing_upscaler_says_which_model_and_where(tmp_path):
    manager = make_manager(tmp_path, registry=FakeRegistry(upscalers=()))
    with pytest.raises(ModelNotFound) as info:
        manager.submit(GenerationRequest.create(task="upscale", image=Image.new("RGB", (32, 32)), steps=2))
    message = str(info.value)
    assert "stabilityai/stable-diffusion-x4-upscaler" in message and "models/upscale_models/" in message
    assert info.value.field == "upscaler"
