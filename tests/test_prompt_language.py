"""A1111's prompt language through the engine, on the tiny SD 1.x model: the same prompt gives the same picture
for the rules an artist relies on (weights, editing, long prompts, clip skip, styles, AND), and LoRAs and
embeddings written by the tests in their real formats (kohya LoRA .safetensors, A1111 embedding .pt) are loaded
by the real loading code (diffusers' ``load_lora_weights``, safe unpickling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from manager_fixtures import FakeRegistry, TinyLoader, make_manager
from PIL import Image
from safetensors.torch import save_file

from pipelines.errors import InvalidRequest
from pipelines.infotext import parse_infotext
from pipelines.request import GenerationRequest
from pipelines.tiny import tiny_sd15_components

SEED = 1234


def req(prompt: str, **fields) -> GenerationRequest:
    base = dict(prompt=prompt, negative_prompt="", steps=3, width=64, height=64, seed=SEED, cfg_scale=7.0)
    base.update(fields)
    return GenerationRequest.create(**base)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def same(a, b) -> bool:
    return np.array_equal(pixels(a.images[0]), pixels(b.images[0]))


def write_kohya_lora(path: Path, seed: int, scale: float = 0.5, sdxl_names: bool = False) -> Path:
    """A LoRA with kohya's original-layout names (``lora_unet_…``, ``lora_te_…`` or SDXL's ``lora_te1_…``) for
    every attention and MLP linear of the tiny model, as kohya's trainer writes them (down, up, alpha)."""
    components = tiny_sd15_components(0)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    rank = 4

    def add(prefix: str, module_name: str, module: torch.nn.Linear) -> None:
        key = prefix + module_name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * scale
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))

    for name, module in components["unet"].named_modules():
        if isinstance(module, torch.nn.Linear) and "transformer_blocks" in name:
            add("lora_unet_", name, module)
    te_prefix = "lora_te1_text_model_" if sdxl_names else "lora_te_text_model_"
    for name, module in components["text_encoder"].named_modules():
        if isinstance(module, torch.nn.Linear) and ("self_attn" in name or "mlp" in name):
            add(te_prefix, name, module)
    save_file(tensors, str(path), metadata={"ss_network_dim": str(rank)})
    return path


def write_a1111_embedding(path: Path, vectors: torch.Tensor) -> Path:
    """An embedding as A1111's trainer saves it (a .pt with ``string_to_param``)."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors.clone()}, "name": path.stem,
                "step": 42, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "tiny-a"}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("networks")
    components = tiny_sd15_components(TinyLoader.seed_for("tiny-a"))
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    ids = tokenizer("castle", add_special_tokens=False).input_ids
    table = text_encoder.get_input_embeddings().weight.detach()
    (root / "broken.safetensors").write_bytes(b"not a safetensors file at all")
    return {
        "style": write_kohya_lora(root / "style.safetensors", seed=1),
        "detail": write_kohya_lora(root / "detail.safetensors", seed=2),
        "xl": write_kohya_lora(root / "xl-only.safetensors", seed=3, sdxl_names=True),
        "broken": root / "broken.safetensors",
        "castle_copy": write_a1111_embedding(root / "castlecopy.pt", table[ids]),
        "styles": root / "styles.csv",
    }


@pytest.fixture(scope="module")
def manager(tmp_path_factory, files):
    files["styles"].write_text('name,prompt,negative_prompt\n"Oil","{prompt}, oil painting, thick brushwork",'
                               '"blurry"\n"Moody","dark, moody light",""\n', encoding="utf-8")
    registry = FakeRegistry(loras=(files["style"], files["detail"], files["xl"], files["broken"]),
                            embeddings=(files["castle_copy"],))
    mgr = make_manager(tmp_path_factory.mktemp("out"), registry=registry, styles_file=files["styles"])
    yield mgr
    mgr.close()


# --- weights, editing, long prompts, clip skip ----------------------------------------------------------------
def test_weight_one_draws_the_plain_word_and_another_weight_does_not(manager):
    plain = manager.run(req("a castle"))
    assert same(manager.run(req("a (castle:1.0)")), plain)
    assert not same(manager.run(req("a (castle:1.5)")), plain)
    assert not same(manager.run(req("a [castle]")), plain)


def test_prompt_editing_at_step_zero_draws_the_second_text(manager):
    assert same(manager.run(req("[a lighthouse:a castle:0]")), manager.run(req("a castle")))
    halfway = manager.run(req("[a lighthouse:a castle:0.5]"))
    assert not same(halfway, manager.run(req("a castle")))
    assert not same(halfway, manager.run(req("a lighthouse")))


def test_a_word_after_token_75_changes_the_picture(manager):
    long = ", ".join(["stone"] * 40)  # 79 tokens: the last ones land in a second 75-token chunk
    assert not same(manager.run(req(long)), manager.run(req(long + ", moss")))


def test_clip_skip_two_differs_and_is_written_down(manager):
    one, two = manager.run(req("a castle")), manager.run(req("a castle", clip_skip=2))
    assert not same(one, two)
    assert parse_infotext(two.infotexts[0])["Clip skip"] == "2"
    assert "Clip skip" not in parse_infotext(one.infotexts[0])


def test_and_runs_one_prediction_per_part(manager):
    both = manager.run(req("a castle AND a lighthouse"))
    assert not same(both, manager.run(req("a castle")))
    assert same(manager.run(req("a castle :1")), manager.run(req("a castle")))  # one part at weight 1 is plain


def test_a_style_applies_as_its_text_written_out(manager):
    styled = manager.run(req("a castle", styles=["Oil"]))
    written = manager.run(req("a castle, oil painting, thick brushwork", negative_prompt="blurry"))
    assert same(styled, written)
    fields = parse_infotext(styled.infotexts[0])
    assert fields["Prompt"] == "a castle, oil painting, thick brushwork" and fields["Negative prompt"] == "blurry"
    missing = manager.run(req("a castle", styles=["Nope"]))
    assert missing.warnings == ["Style not found: Nope"] and same(missing, manager.run(req("a castle")))


# --- LoRA ------------------------------------------------------------------------------------------------------
def test_a_kohya_lora_changes_the_picture_and_leaves_no_trace(manager):
    baseline = manager.run(req("a castle"))
    with_lora = manager.run(req("a castle <lora:style:1>"))
    assert not same(with_lora, baseline)
    assert "<lora:style:1>" in with_lora.infotexts[0]  # the prompt as written, tag included (as A1111)
    assert parse_infotext(with_lora.infotexts[0])["Lora hashes"].startswith("style: ")
    assert same(manager.run(req("a castle <lora:style:0>")), baseline)  # weight 0: exactly the baseline
    assert same(manager.run(req("a castle")), baseline)  # the next request without it: exactly the baseline
    assert same(manager.run(req("a castle <lora:style:1>")), with_lora)  # kept loaded, same picture again


def test_two_loras_combine_and_a_missing_one_is_a_warning(manager):
    style = manager.run(req("a castle <lora:style:0.8>"))
    detail = manager.run(req("a castle <lora:detail:0.8>"))
    both = manager.run(req("a castle <lora:style:0.8> <lora:detail:0.8>"))
    assert not same(both, style) and not same(both, detail)
    missing = manager.run(req("a castle <lora:nowhere:1>"))
    assert missing.warnings == ["LoRA not found: nowhere"]
    assert same(missing, manager.run(req("a castle")))


def test_an_sdxl_lora_on_sd15_or_a_broken_file_is_422_and_the_checkpoint_stays_usable(manager):
    with pytest.raises(InvalidRequest, match="xl-only.safetensors is made for SDXL") as info:
        manager.submit(req("a castle <lora:xl-only:1>"))
    assert info.value.http_status == 422 and info.value.field == "prompt"
    with pytest.raises(InvalidRequest, match="broken.safetensors") as info:
        manager.run(req("a castle <lora:broken:1>"))
    assert info.value.http_status == 422
    assert same(manager.run(req("a castle")), manager.run(req("a castle")))
    assert manager.run(req("a castle <lora:style:1>")).images


def test_a_lora_weight_that_is_not_a_number_is_422(manager):
    with pytest.raises(InvalidRequest) as info:
        manager.submit(req("a castle <lora:style:strong>"))
    assert info.value.field == "prompt"


# --- embeddings ------------------------------------------------------------------------------------------------
def test_an_embedding_that_copies_a_word_draws_exactly_that_word(manager, files):
    by_name = manager.run(req("a castlecopy"))
    assert same(by_name, manager.run(req("a castle")))
    ti = parse_infotext(by_name.infotexts[0])["TI hashes"]
    assert ti.startswith("castlecopy: ") and len(ti.split(": ")[1]) == 12


def test_the_engine_lists_styles_loras_and_embeddings_for_the_front_doors(manager):
    manager.run(req("a castle"))  # a checkpoint is loaded: embeddings are judged against its text encoder
    assert [style.name for style in manager.styles()] == ["Oil", "Moody"]
    assert {info.name for info in manager.loras()} == {"style", "detail", "xl-only", "broken"}
    report = manager.embeddings()
    assert list(report.loaded) == ["castlecopy"] and not report.skipped
    castle = report.loaded["castlecopy"]
    assert (castle.vector_count, castle.widths, castle.step, castle.sd_checkpoint_name) == (1, (32,), 42, "tiny-a")
