"""Output files and their A1111 metadata: names, atomic writes, faults, and the round trip through readers."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from pipelines import outputs
from pipelines.errors import OutputWriteError
from pipelines.infotext import build_infotext, generation_params, parse_infotext, quote

A1111_TEXT = (
    "a castle on a hill, golden hour\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
    "Model hash: 0123456789, Model: dreamy: v2, Denoising strength: 0.75, Version: atelier-0.1.0"
)


def sample_params(**overrides):
    base = dict(steps=20, sampler="DPM++ 2M", schedule="Karras", cfg_scale=7.0, seed=1234, width=512, height=768,
                model_hash="0123456789", model="dreamy: v2", denoising_strength=0.75)
    base.update(overrides)
    return generation_params(**base)


def test_infotext_is_written_exactly_as_a1111_writes_it():
    text = build_infotext("a castle on a hill, golden hour", "blurry, lowres", sample_params())
    assert text == A1111_TEXT.replace("Model: dreamy: v2", 'Model: "dreamy: v2"')


def test_infotext_leaves_out_what_does_not_apply():
    text = build_infotext("cat", "", sample_params(schedule="Automatic", denoising_strength=None, model_hash=None))
    assert text.splitlines() == [
        "cat",
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1234, Size: 512x768, Model: \"dreamy: v2\", "
        "Version: atelier-0.1.0",
    ]


def test_parse_reads_every_field_back_including_quoted_values():
    params = sample_params(extra={"NaN guard": "VAE decoded in fp32", "Note": 'has "quotes", commas\nand lines'})
    text = build_infotext("line one\nline two, with comma", "neg: colon", params)
    fields = parse_infotext(text)
    assert fields["Prompt"] == "line one\nline two, with comma"
    assert fields["Negative prompt"] == "neg: colon"
    assert fields["Steps"] == "20" and fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras"
    assert fields["CFG scale"] == "7" and fields["Seed"] == "1234"
    assert (fields["Size-1"], fields["Size-2"]) == ("512", "768")
    assert fields["Model"] == "dreamy: v2" and fields["Model hash"] == "0123456789"
    assert fields["Denoising strength"] == "0.75"
    assert fields["NaN guard"] == "VAE decoded in fp32"
    assert fields["Note"] == 'has "quotes", commas\nand lines'
    assert fields["Version"] == "atelier-0.1.0"


def test_text_without_parameters_is_all_prompt():
    assert parse_infotext("just a prompt, nothing else") == {
        "Prompt": "just a prompt, nothing else", "Negative prompt": ""}


def test_quote_only_when_needed():
    assert quote("Euler a") == "Euler a"
    assert quote("a, b") == '"a, b"'
    assert quote("x: y") == '"x: y"'


def test_png_round_trips_through_sd_parsers_and_png_info(tmp_path):
    from sd_parsers import ParserManager

    text = build_infotext("a red fox in snow", "ugly", sample_params(model="tiny-sd15"))
    path = outputs.write_png_with_parameters(Image.new("RGB", (64, 64), "red"), text, tmp_path, seed=1234)
    assert outputs.read_parameters(path) == text
    assert outputs.read_parameters(path.read_bytes()) == text
    with Image.open(path) as image:
        assert outputs.read_parameters(image) == text

    info = ParserManager().parse(str(path))
    assert info is not None and info.generator.name == "AUTOMATIC1111"
    sampler = info.samplers[0]
    assert sampler.name == "DPM++ 2M"
    assert sampler.parameters["cfg_scale"] == "7" and sampler.parameters["seed"] == "1234"
    assert sampler.parameters["steps"] == "20" and sampler.parameters["scheduler"] == "Karras"
    assert sampler.model.name == "tiny-sd15" and sampler.model.hash == "0123456789"
    assert [p.value for p in sampler.prompts] == ["a red fox in snow"]
    assert [p.value for p in sampler.negative_prompts] == ["ugly"]
    assert info.metadata["Size"] == "512x768" and info.metadata["Denoising strength"] == "0.75"


def test_plain_png_has_no_parameters(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    assert outputs.read_parameters(buffer.getvalue()) is None


def test_names_use_the_next_free_counter_and_the_seed(tmp_path):
    folder = outputs.output_folder(tmp_path, "txt2img")
    assert folder.parent.name == "txt2img" and len(folder.name) == 10  # YYYY-MM-DD
    first = outputs.write_png_with_parameters(Image.new("RGB", (8, 8)), "x", folder, seed=5)
    assert first.name == "00000-5.png"
    (folder / "00041-9.png").write_bytes(b"")  # a gap left by a deleted file: counting continues after the highest
    second = outputs.write_png_with_parameters(Image.new("RGB", (8, 8)), "x", folder, seed=6)
    assert second.name == "00042-6.png"


def _entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputWriteError, match="full") as info:
        outputs.write_png_with_parameters(Image.new("RGB", (64, 64)), "x", folder, seed=1)
    assert info.value.http_status == 507
    assert _entries(folder) == []


def test_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    real_open = open

    def deny(file, mode="r", *args, **kwargs):
        if "w" in mode and str(tmp_path) in str(file):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(OutputWriteError, match="may not write"):
        outputs.write_png_with_parameters(Image.new("RGB", (8, 8)), "x", tmp_path / "out", seed=1)
    assert _entries(tmp_path / "out") == []


def test_a_failed_rename_removes_the_temp_file(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputWriteError):
        outputs.write_png_with_parameters(Image.new("RGB", (8, 8)), "x", tmp_path, seed=1)
    assert _entries(tmp_path) == []
