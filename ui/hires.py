"""Text to Image's Hires. fix: a first pass at the size set above, an upscale (in latent space or by a pixel upscaler),
then a second pass at the large size with its own steps and denoising strength (A1111's controls and names).

The accordion sits under the size controls; its label and a line inside say the sizes ("512×512 → 1024×1024"), worked
out by the engine's own rules (``pipelines.request.hires_size``), so the label and the picture always agree.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.errors import AtelierError
from pipelines.registry import UPSCALER_SD_X4
from pipelines.request import MAX_HR_SCALE, MAX_SIZE, MAX_STEPS, MIN_HR_SCALE, GenerationRequest, hires_size
from pipelines.samplers import SAMPLER_NAMES, SCHEDULE_NAMES

from .common import HR_SAME_SAMPLER, HR_SAME_SCHEDULER, SizeControls, UiContext, float_or, int_or
from .controls import labelled_slider

log = logging.getLogger(__name__)

ACCORDION_LABEL = "Hires. fix"
DEFAULT_UPSCALER = "Latent"
DEFAULT_DENOISE = 0.7  # A1111's


@dataclass
class HiresControls:
    accordion: gr.Accordion
    enable: gr.Checkbox
    upscaler: gr.Dropdown
    scale: gr.Slider
    steps: gr.Slider
    denoise: gr.Slider
    resize_x: gr.Slider
    resize_y: gr.Slider
    size: gr.HTML
    options: gr.Accordion
    sampler: gr.Dropdown
    scheduler: gr.Dropdown
    prompt: gr.Textbox
    negative: gr.Textbox

    def value_components(self) -> dict[str, Any]:
        """Form field name → component (``ui.common.request_fields`` reads these names)."""
        return {
            "hr_enable": self.enable,
            "hr_upscaler": self.upscaler,
            "hr_scale": self.scale,
            "hr_steps": self.steps,
            "hr_denoise": self.denoise,
            "hr_resize_x": self.resize_x,
            "hr_resize_y": self.resize_y,
            "hr_sampler": self.sampler,
            "hr_scheduler": self.scheduler,
            "hr_prompt": self.prompt,
            "hr_negative": self.negative,
        }


def hires_upscaler_choices(manager: Any) -> list[str]:
    """The hires fix's upscalers: A1111's latent modes, then every pixel upscaler (the built-ins and the model files;
    not the SD x4 upscaler, a diffusion model of its own)."""
    try:
        latent = list(manager.latent_upscale_modes())
    except Exception as exc:  # a broken engine must not break the page
        log.warning("Could not list the latent upscale modes: %s", exc)
        latent = [DEFAULT_UPSCALER]
    try:
        pixel = [info.name for info in manager.all_upscalers() if getattr(info, "family", None) != UPSCALER_SD_X4]
    except Exception as exc:
        log.warning("Could not list the upscalers: %s", exc)
        pixel = []
    return [*latent, *pixel]


def hires_sizes(width: Any, height: Any, scale: Any, resize_x: Any, resize_y: Any) -> tuple[str, str]:
    """``("512×512", "1024×1024")``: the first pass's size and the picture's, by the engine's rules; the second is
    the engine's message (what to change) when the values cannot make a picture."""
    first = f"{int_or(width, 0)}×{int_or(height, 0)}"
    try:
        request = GenerationRequest.create(
            task="txt2img", steps=1, width=int_or(width, 0), height=int_or(height, 0), enable_hr=True,
            hr_scale=float_or(scale, 0.0), hr_resize_x=int_or(resize_x, 0), hr_resize_y=int_or(resize_y, 0))
    except AtelierError as exc:
        return first, str(exc)
    size = hires_size(request)
    final = f"{size.width}×{size.height}"
    if size.cropped:
        final += f" (upscaled to {size.upscale_width}×{size.upscale_height}, centre cropped)"
    return first, final


def hires_size_html(enabled: bool, width: Any, height: Any, scale: Any, resize_x: Any, resize_y: Any) -> str:
    """The live size line: "512×512 → 1024×1024" (muted while the hires fix is off), or why there is no size."""
    first, final = hires_sizes(width, height, scale, resize_x, resize_y)
    if "×" not in final.split(" ", 1)[0]:  # the engine's message
        return f'<div class="hires-size invalid">{html.escape(final)}</div>'
    state = "on" if enabled else "off"
    hint = "" if enabled else '<span class="hires-hint">(tick Enable to use it)</span>'
    return (f'<div class="hires-size {state}">{html.escape(first)} → <b>{html.escape(final)}</b> {hint}</div>')


def accordion_label(enabled: bool, width: Any, height: Any, scale: Any, resize_x: Any, resize_y: Any) -> str:
    """The accordion's title says whether the hires fix is on and its sizes, so it reads even when folded."""
    if not enabled:
        return ACCORDION_LABEL
    first, final = hires_sizes(width, height, scale, resize_x, resize_y)
    if "×" not in final.split(" ", 1)[0]:
        return f"{ACCORDION_LABEL}: on (check its sizes)"
    return f"{ACCORDION_LABEL}: on · {first} → {final.split(' ', 1)[0]}"


def build_hires_controls(values: dict[str, Any], ctx: UiContext, size: SizeControls, prefix: str = "txt2img"
                         ) -> HiresControls:
    """The Hires. fix accordion (open when it was on last time), wired to update its size line and title."""
    enabled = bool(values.get("hr_enable", False))
    choices = hires_upscaler_choices(ctx.manager)
    upscaler_value = values.get("hr_upscaler") if values.get("hr_upscaler") in choices else DEFAULT_UPSCALER
    samplers = [HR_SAME_SAMPLER, *SAMPLER_NAMES]
    schedulers = [HR_SAME_SCHEDULER, *SCHEDULE_NAMES]
    initial = (enabled, values.get("width", 512), values.get("height", 512), values.get("hr_scale", 2.0),
               values.get("hr_resize_x", 0), values.get("hr_resize_y", 0))
    with gr.Accordion(accordion_label(*initial), open=enabled, elem_id=f"{prefix}-hr") as accordion:
        enable = gr.Checkbox(value=enabled, label="Enable", elem_id=f"{prefix}-hr-enable")
        with gr.Row(equal_height=True):
            upscaler = gr.Dropdown(choices, value=upscaler_value if upscaler_value in choices else None,
                                   label="Upscaler", elem_id=f"{prefix}-hr-upscaler", min_width=160)
            steps = labelled_slider(0, MAX_STEPS, value=int_or(values.get("hr_steps"), 0), step=1,
                                    label="Hires steps (0: as Steps)", elem_id=f"{prefix}-hr-steps", min_width=160)
        with gr.Row():
            scale = labelled_slider(MIN_HR_SCALE, MAX_HR_SCALE, value=float_or(values.get("hr_scale"), 2.0),
                                    step=0.05, label="Upscale by", elem_id=f"{prefix}-hr-scale")
            denoise = labelled_slider(0.0, 1.0, value=float_or(values.get("hr_denoise"), DEFAULT_DENOISE), step=0.01,
                                      label="Denoising strength", elem_id=f"{prefix}-hr-denoise")
        with gr.Row():
            resize_x = labelled_slider(0, MAX_SIZE, value=int_or(values.get("hr_resize_x"), 0), step=8,
                                       label="Resize width to", info="0: from Upscale by",
                                       elem_id=f"{prefix}-hr-resize-x")
            resize_y = labelled_slider(0, MAX_SIZE, value=int_or(values.get("hr_resize_y"), 0), step=8,
                                       label="Resize height to", info="0: from Upscale by",
                                       elem_id=f"{prefix}-hr-resize-y")
        size_line = gr.HTML(hires_size_html(*initial), elem_id=f"{prefix}-hr-size", js_on_load=None)
        with gr.Accordion("Hires sampler and prompts", open=False, elem_id=f"{prefix}-hr-options") as options:
            with gr.Row():
                sampler = gr.Dropdown(samplers, value=values.get("hr_sampler") if values.get("hr_sampler") in samplers
                                      else HR_SAME_SAMPLER, label="Hires sampler", elem_id=f"{prefix}-hr-sampler")
                scheduler = gr.Dropdown(schedulers, value=values.get("hr_scheduler")
                                        if values.get("hr_scheduler") in schedulers else HR_SAME_SCHEDULER,
                                        label="Hires schedule type", elem_id=f"{prefix}-hr-scheduler")
            prompt = gr.Textbox(value=str(values.get("hr_prompt", "")), label="Hires prompt", lines=2,
                                placeholder="Empty: the prompt above", elem_id=f"{prefix}-hr-prompt")
            negative = gr.Textbox(value=str(values.get("hr_negative", "")), label="Hires negative prompt", lines=2,
                                  placeholder="Empty: the negative prompt above", elem_id=f"{prefix}-hr-negative")
    controls = HiresControls(accordion, enable, upscaler, scale, steps, denoise, resize_x, resize_y, size_line,
                             options, sampler, scheduler, prompt, negative)

    def refresh(on: bool, width: Any, height: Any, by: Any, to_x: Any, to_y: Any) -> list[Any]:
        return [hires_size_html(bool(on), width, height, by, to_x, to_y),
                gr.Accordion(label=accordion_label(bool(on), width, height, by, to_x, to_y))]

    sources = [enable, size.width, size.height, scale, resize_x, resize_y]
    for source in sources:
        source.change(refresh, inputs=sources, outputs=[size_line, accordion], queue=False, show_progress="hidden",
                      trigger_mode="always_last")
    return controls
