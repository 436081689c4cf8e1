"""Upscale 4x: the SD x4 upscaler with prompt, negative, steps and noise level; the result is shown in the
gallery and in a before/after slider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from pipelines.request import MAX_NOISE_LEVEL

from .common import (
    GenerationForm,
    ResultPanel,
    SamplerControls,
    UiContext,
    build_action_buttons,
    build_prompt_controls,
    build_result_panel,
    build_seed_controls,
    build_steps_slider,
    int_or,
    wire_generate,
)
from .controls import labelled_slider
from .jobs import JobView

TAB = "upscale"


@dataclass
class UpscaleTab:
    form: GenerationForm
    panel: ResultPanel
    input_image: gr.Image
    compare: gr.ImageSlider
    upscaler: gr.Dropdown


def upscaler_choices(manager: Any) -> list[str]:
    """Names of the installed SD x4 upscalers (empty when none is installed)."""
    try:
        return [info.name for info in manager.upscalers()]
    except Exception:  # a registry that cannot scan must not break the page
        return []


def before_after(view: JobView) -> list[Any]:
    """The slider pair: the input scaled to the result's size (Lanczos, as a plain resize would) and the result."""
    result = view.result
    request = getattr(result, "request", None)
    source = getattr(request, "image", None)
    if result is None or not result.images or not isinstance(source, Image.Image):
        return [gr.skip()]
    after = result.images[0]
    before = source.convert("RGB").resize(after.size, Image.Resampling.LANCZOS)
    return [(before, after)]


def build_upscale_tab(ctx: UiContext) -> UpscaleTab:
    """Lay out the Upscale 4x tab inside the current ``gr.Tab`` and wire Generate/Stop."""
    values = ctx.store.last_values(TAB)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380, elem_classes="controls-column"):
            prompts = build_prompt_controls(TAB, values, ctx)
            input_image = gr.Image(
                label="Image to upscale (upload, drop or paste)",
                type="pil",
                image_mode="RGB",
                sources=["upload", "clipboard"],
                height=280,
                elem_id="upscale-input",
            )
            choices = upscaler_choices(ctx.manager)
            upscaler = gr.Dropdown(
                choices,
                value=choices[0] if choices else None,
                label="Upscaler",
                info=None if choices else "No SD x4 upscaler found in models/upscale_models/.",
                elem_id="upscale-model",
            )
            with gr.Row():
                steps = build_steps_slider(TAB, values, ctx.settings)
                noise_level = labelled_slider(
                    0,
                    MAX_NOISE_LEVEL,
                    value=int_or(values.get("noise_level"), 20),
                    step=1,
                    label="Noise level",
                    info="More noise: more new detail, less faithful to the input.",
                    elem_id="upscale-noise",
                )
            seed = build_seed_controls(TAB, values, ctx, TAB)
        with gr.Column(scale=6, min_width=380, elem_classes="results-column"):
            actions = build_action_buttons(TAB)
            panel = build_result_panel(
                TAB, ctx, gallery_id="upscale-output", info_id="upscale-info", send_to=("img2img",)
            )
            compare = gr.ImageSlider(
                label="Before / after",
                type="pil",
                interactive=False,
                elem_id="upscale-compare",
                max_height=420,
            )
    sampler = SamplerControls(None, steps, None)
    form = GenerationForm(
        TAB, prompts, actions, sampler, seed, extra={"noise_level": noise_level, "upscaler": upscaler}
    )
    wire_generate(
        ctx, form, panel, image_fields={"image": input_image}, extra_outputs=[compare], extra_values=before_after
    )
    return UpscaleTab(form, panel, input_image, compare, upscaler)
