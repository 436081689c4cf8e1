"""What a person sees at the edges: the out-of-memory message names the memory that ran out (never "the GPU" on a
CPU), and the UI's sliders and number fields name themselves when a script sends a value out of their range.

The work budget itself is tested in ``test_request.py`` (messages) and ``test_fuzz_api.py`` (API 422, UI toast and
the largest request at the limits on the demo model).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from manager_fixtures import make_manager

from pipelines.errors import OutOfMemoryEverywhere
from pipelines.request import GenerationRequest


def req(**fields: Any) -> GenerationRequest:
    return GenerationRequest.create(**{"prompt": "a lighthouse", "seed": 7, "width": 64, "height": 64, "steps": 2,
                                       **fields})


# --- out of memory on the last rung ------------------------------------------------------------------------------
@pytest.mark.parametrize(("device", "rung", "gpu", "ram"), [
    ("cuda", "sliced", True, False),
    ("cuda", "cpu", False, True),  # the last rung of a GPU machine runs on the CPU: its RAM ran out
    ("cpu", "cpu", False, True),
    ("mps", "offload", False, True),
])
def test_out_of_memory_message_names_the_memory_that_ran_out(device: str, rung: str, gpu: bool, ram: bool) -> None:
    message = str(OutOfMemoryEverywhere.on(device, rung))
    assert f"even in {rung} mode" in message and "smaller size or batch size" in message
    assert ("GPU" in message) == gpu, message
    assert ("RAM" in message) == ram, message


def _cpu_out_of_memory(*_args: Any, **_kwargs: Any) -> None:
    import torch

    raise torch.OutOfMemoryError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes")


def test_out_of_memory_on_the_cpu_does_not_talk_about_the_gpu(tmp_path, monkeypatch) -> None:
    from diffusers import UNet2DConditionModel

    manager = make_manager(tmp_path, device="cpu")
    try:
        assert manager.choice.device.type == "cpu"
        with monkeypatch.context() as patch:
            patch.setattr(UNet2DConditionModel, "forward", _cpu_out_of_memory)
            with pytest.raises(OutOfMemoryEverywhere) as caught:
                manager.run(req(width=512, height=512))
        message = str(caught.value)
        assert "GPU" not in message and "RAM" in message and "smaller size" in message, message
        assert manager.run(req()).images  # and the manager still works
    finally:
        manager.close()


# --- the UI's numeric controls -------------------------------------------------------------------------------------
def test_out_of_range_ui_values_name_the_control() -> None:
    import gradio as gr

    from ui.controls import labelled_number, labelled_slider

    height = labelled_slider(64, 2048, step=8, label="Height")
    seed = labelled_number(label="Seed (-1: random)", precision=0, minimum=-1, maximum=2**32 - 1)
    cases = [
        (height, 4096, "Height must be between 64 and 2048 (got 4096)."),
        (height, 8.5, "Height must be between 64 and 2048 (got 8.5)."),
        (height, 1e300, "Height must be between 64 and 2048 (got 1e+300)."),
        (height, math.nan, "Height must be a finite number (got nan)."),
        (height, "tall", "Height must be a finite number (got 'tall')."),
        (seed, 2**70, f"Seed (-1: random) must be between -1 and 4294967295 (got {2**70})."),
        (seed, -math.inf, "Seed (-1: random) must be a finite number (got -inf)."),
    ]
    for control, value, message in cases:
        with pytest.raises(gr.Error) as caught:
            control.preprocess(value)
        assert caught.value.message == message
    assert height.preprocess(512) == 512 and seed.preprocess(None) is None and seed.preprocess(7.0) == 7


def test_the_labelled_controls_are_gradio_s_own_and_leave_no_stub_files() -> None:
    from pathlib import Path

    import ui.controls
    from ui.controls import labelled_number, labelled_slider

    steps = labelled_slider(1, 10, label="Steps")
    assert type(steps).__name__ == "Slider" and steps.get_block_name() == "slider"
    assert labelled_number(label="Seed").get_block_name() == "number"
    assert not Path(ui.controls.__file__).with_suffix(".pyi").exists()  # Gradio writes one for a subclass
