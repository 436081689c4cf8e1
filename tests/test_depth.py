"""SD 2's depth-to-image on tiny models (CPU, 64 px): a 5-channel UNet with its depth map estimated by a tiny random
DPT model folder (``models/depth/``) or taken from an uploaded picture.

What an artist notices: an Image to Image run with a depth checkpoint works without any extra step when a depth model
is installed, an uploaded depth map steers the picture (another map, another picture) and needs no depth model, and
the checkpoint says plainly what it cannot do (txt2img, inpainting) and what it needs (a depth map or a DPT folder).
"""

from __future__ import annotations

import numpy as np
import pytest
from manager_fixtures import FakeRegistry, make_manager
from PIL import Image

from pipelines.errors import InvalidRequest, ModelLoadError
from pipelines.request import GenerationRequest
from pipelines.tiny import write_tiny_dpt

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

DEPTH, NORMAL = "tiny-depth", "tiny-a"


def picture(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(11)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def req(**fields) -> GenerationRequest:
    base = dict(task="img2img", prompt="a stone bridge", steps=3, width=64, height=64, seed=21, checkpoint=DEPTH,
                init_image=picture(), denoising_strength=0.8)
    base.update(fields)
    return GenerationRequest.create(**base)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], np.int16)


@pytest.fixture(scope="module")
def dpt_folder(tmp_path_factory):
    return write_tiny_dpt(tmp_path_factory.mktemp("models") / "depth" / "tiny-dpt")


@pytest.fixture(scope="module")
def manager(tmp_path_factory, dpt_folder):
    registry = FakeRegistry(checkpoints=(DEPTH, NORMAL), families={DEPTH: "sd2-depth"}, depth=(dpt_folder,))
    mgr = make_manager(tmp_path_factory.mktemp("depth"), registry=registry)
    yield mgr
    mgr.close()


def test_depth_checkpoint_runs_img2img_with_the_depth_estimated_by_the_dpt_folder(manager, monkeypatch):
    from pipelines import depth

    seen = []
    real = depth.DepthLibrary._estimate
    monkeypatch.setattr(depth.DepthLibrary, "_estimate",
                        lambda self, info, image: seen.append((info.name, image.size)) or real(self, info, image))
    result = manager.run(req(batch_size=2))
    assert [image.size for image in result.images] == [(64, 64)] * 2
    assert seen == [("tiny-dpt", (64, 64))]  # one estimate for the batch, from the installed DPT folder
    assert manager.depth_library.loads == 1
    assert [info.name for info in manager.depth_models()] == ["tiny-dpt"]
    again = manager.run(req())
    assert np.array_equal(pixels(again), np.asarray(result.images[0], np.int16))  # same seed, same picture
    assert manager.depth_library.loads == 1  # the model stays loaded


def test_an_uploaded_depth_map_steers_the_picture_and_needs_no_depth_model(tmp_path):
    registry = FakeRegistry(checkpoints=(DEPTH,), families={DEPTH: "sd2-depth"})  # no DPT folder installed
    mgr = make_manager(tmp_path, registry=registry)
    try:
        near_left = Image.linear_gradient("L").rotate(90).resize((64, 64))
        first = mgr.run(req(depth_map=near_left))
        other = mgr.run(req(depth_map=near_left.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
        assert first.images[0].size == (64, 64)
        assert np.abs(pixels(first) - pixels(other)).mean() > 0.5  # another depth map, another picture
        sixteen = Image.fromarray((np.asarray(near_left, np.uint16) * 257).astype(np.uint16))  # a 16-bit PNG's map
        assert np.array_equal(pixels(mgr.run(req(depth_map=sixteen))), pixels(first))  # the same depths, scaled
        assert mgr.depth_library.loads == 0
        with pytest.raises(InvalidRequest) as info:  # neither a map nor a DPT folder: said at submit
            mgr.submit(req())
        assert info.value.field == "depth_map" and "models/depth" in str(info.value)
    finally:
        mgr.close()


@pytest.mark.parametrize("fields, words", [
    (dict(task="txt2img", init_image=None, denoising_strength=0.75), "Text to Image"),
    (dict(mask=Image.new("L", (64, 64), 255)), "inpainting"),
    (dict(task="txt2img", init_image=None, enable_hr=True, denoising_strength=0.5), "Text to Image"),
])
def test_a_depth_checkpoint_says_what_it_cannot_do(manager, fields, words):
    with pytest.raises(InvalidRequest) as info:
        manager.submit(req(**fields))
    assert info.value.field == "checkpoint" and words in str(info.value) and "Image to Image only" in str(info.value)


def test_depth_map_is_refused_outside_img2img_and_an_undecodable_one_names_it():
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(depth_map=Image.new("L", (8, 8)))
    assert info.value.field == "depth_map"
    with pytest.raises(InvalidRequest) as info:
        req(depth_map="bm90IGFuIGltYWdl")
    assert info.value.field == "depth_map"


def test_a_broken_depth_folder_is_a_clear_error(tmp_path):
    broken = tmp_path / "depth" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"model_type": "dpt"}')
    mgr = make_manager(tmp_path, registry=FakeRegistry(checkpoints=(DEPTH,), families={DEPTH: "sd2-depth"},
                                                       depth=(broken,)))
    try:
        with pytest.raises(ModelLoadError) as info:
            mgr.run(req())
        assert "broken" in str(info.value) and info.value.field == "depth_map"
    finally:
        mgr.close()


def test_a_normal_checkpoint_ignores_a_depth_map(manager):
    plain = manager.run(req(checkpoint=NORMAL))
    with_map = manager.run(req(checkpoint=NORMAL, depth_map=Image.new("L", (64, 64), 128)))
    assert np.array_equal(pixels(plain), pixels(with_map))
