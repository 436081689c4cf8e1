"""Upscale 4x: every upscaler Atelier has (the built-ins, ESRGAN-family model files, the SD x4 upscaler), "Scale by" a
factor or "Scale to" a size (A1111's extras); the SD x4 upscaler's prompt, steps, noise level and seed show only when
it is chosen. The result is shown in the gallery and in a before/after slider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from pipelines.registry import UPSCALER_BUILTIN, UPSCALER_SD_X4
from pipelines.request import MAX_NOISE_LEVEL, MAX_UPSCALE_OUTPUT, MAX_UPSCALE_SCALE

from .common import (
    UPSCALE_BY,
    UPSCALE_TO,
    GenerationForm,
    ResultPanel,
    SamplerControls,
    UiContext,
    build_action_buttons,
    build_prompt_controls,
    build_result_panel,
    build_seed_controls,
    build_steps_slider,
    float_or,
    int_or,
    wire_generate,
)
from .controls import labelled_slider
from .jobs import JobView

TAB = "upscale"
FALLBACK_UPSCALER = "Lanczos"


@dataclass
class UpscaleTab:
    form: GenerationForm
    panel: ResultPanel
    input_image: gr.Image
    compare: gr.ImageSlider
    upscaler: gr.Dropdown
    mode: gr.Radio
    scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    crop: gr.Checkbox
    sd_x4_options: gr.Column


def _upscalers(manager: Any) -> list[Any]:
    try:
        return list(manager.all_upscalers())
    except Exception:  # a registry that cannot scan must not break the page
        return []


def upscaler_choices(manager: Any) -> list[str]:
    """Every upscaler's name, as ``/sdapi/v1/upscalers`` lists them: built-ins, model files, SD x4 folders."""
    return [info.name for info in _upscalers(manager)]


def installed_upscaler_count(manager: Any) -> int:
    """Upscalers found in the models folders (the built-ins are always there)."""
    return sum(getattr(info, "family", None) != UPSCALER_BUILTIN for info in _upscalers(manager))


def default_upscaler(manager: Any, saved: Any = None) -> str | None:
    """The menu's first value: the one used last, else the first SD x4 upscaler (the tab's namesake), else the first
    model file, else Lanczos."""
    infos = _upscalers(manager)
    names = [info.name for info in infos]
    if saved in names:
        return saved
    installed = [info for info in infos if getattr(info, "family", None) != UPSCALER_BUILTIN]
    installed.sort(key=lambda info: getattr(info, "family", None) != UPSCALER_SD_X4)  # stable: SD x4 first
    if installed:
        return installed[0].name
    return FALLBACK_UPSCALER if FALLBACK_UPSCALER in names else (names[0] if names else None)


def upscaler_info(manager: Any, name: str | None) -> Any:
    return next((info for info in _upscalers(manager) if info.name == name), None)


def is_sd_x4(manager: Any, name: str | None) -> bool:
    return getattr(upscaler_info(manager, name), "family", None) == UPSCALER_SD_X4


def upscaler_note(manager: Any, name: str | None) -> str:
    """One line under the menu: what the chosen upscaler is."""
    info = upscaler_info(manager, name)
    if info is None:
        return "No upscaler chosen." if not name else f"{name} is not installed: press ↻."
    family = getattr(info, "family", None)
    scale = getattr(info, "scale", None)
    if family == UPSCALER_SD_X4:
        return "SD x4 upscaler: a diffusion model that redraws detail from a prompt (slow)."
    if family == UPSCALER_BUILTIN:
        return "A plain resize (Lanczos)." if info.name == "None" else f"A plain resize ({info.name})."
    architecture = getattr(info, "architecture", None) or "upscaler model"
    return f"{architecture} model, {scale:g}x: enlarges in tiles, larger sizes by repeating." if scale else (
        f"{architecture} model.")


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
    manager = ctx.manager
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380, elem_classes="controls-column"):
            input_image = gr.Image(
                label="Image to upscale (upload, drop or paste)",
                type="pil",
                image_mode="RGB",
                sources=["upload", "clipboard"],
                height=280,
                elem_id="upscale-input",
            )
            choices = upscaler_choices(manager)
            chosen = default_upscaler(manager, values.get("upscaler"))
            upscaler = gr.Dropdown(
                choices,
                value=chosen,
                label="Upscaler",
                info=upscaler_note(manager, chosen),
                elem_id="upscale-model",
            )
            mode_value = values.get("upscale_mode") if values.get("upscale_mode") in (UPSCALE_BY, UPSCALE_TO) else (
                UPSCALE_BY)
            native = getattr(upscaler_info(manager, chosen), "scale", None) or 4
            by = mode_value == UPSCALE_BY
            with gr.Row(equal_height=True, elem_classes="upscale-size-row"):
                mode = gr.Radio([UPSCALE_BY, UPSCALE_TO], value=mode_value, label="Size", elem_id="upscale-resize-mode",
                                scale=1, min_width=150)
                scale = labelled_slider(1, MAX_UPSCALE_SCALE, value=float_or(values.get("upscale_scale"), native),
                                        step=0.05, label="Scale by", elem_id="upscale-scale", scale=3, visible=by)
            with gr.Row(equal_height=True, visible=not by, elem_id="upscale-size-to") as size_to:
                width = labelled_slider(8, MAX_UPSCALE_OUTPUT, value=int_or(values.get("upscale_width"), 1024),
                                        step=8, label="Width", elem_id="upscale-width", scale=3)
                height = labelled_slider(8, MAX_UPSCALE_OUTPUT, value=int_or(values.get("upscale_height"), 1024),
                                         step=8, label="Height", elem_id="upscale-height", scale=3)
                crop = gr.Checkbox(value=bool(values.get("upscale_crop", True)), label="Crop to fit",
                                   elem_id="upscale-crop", scale=1, min_width=140)
            with gr.Column(visible=is_sd_x4(manager, chosen), elem_id="upscale-sd-x4-options") as sd_x4_options:
                prompts = build_prompt_controls(TAB, values, ctx)
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

    def choose(name: str | None) -> list[Any]:
        """Another upscaler: its note, its own scale as the factor (A1111's extras do so), the SD x4 options."""
        factor = getattr(upscaler_info(manager, name), "scale", None)
        return [gr.Dropdown(info=upscaler_note(manager, name)), factor if factor else gr.skip(),
                gr.Column(visible=is_sd_x4(manager, name))]

    def switch(how: str) -> list[Any]:
        return [gr.Slider(visible=how != UPSCALE_TO), gr.Row(visible=how == UPSCALE_TO)]

    upscaler.input(choose, inputs=upscaler, outputs=[upscaler, scale, sd_x4_options], queue=False,
                   show_progress="hidden")
    upscaler.change(lambda name: gr.Column(visible=is_sd_x4(manager, name)), inputs=upscaler,
                    outputs=sd_x4_options, queue=False, show_progress="hidden")
    mode.change(switch, inputs=mode, outputs=[scale, size_to], queue=False, show_progress="hidden")
    sampler = SamplerControls(None, steps, None)
    form = GenerationForm(
        TAB, prompts, actions, sampler, seed,
        extra={"noise_level": noise_level, "upscaler": upscaler, "upscale_mode": mode, "upscale_scale": scale,
               "upscale_width": width, "upscale_height": height, "upscale_crop": crop},
    )
    wire_generate(
        ctx, form, panel, image_fields={"image": input_image}, extra_outputs=[compare], extra_values=before_after
    )
    return UpscaleTab(form, panel, input_image, compare, upscaler, mode, scale, width, height, crop, sd_x4_options)
