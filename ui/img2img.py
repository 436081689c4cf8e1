"""Image to Image: an init image (upload, drop or paste), denoising strength and resize mode, plus the very same
prompt/sampler/size/seed controls as Text to Image (built by ``ui.common``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.families import FAMILIES
from pipelines.request import MIN_SIZE, RESIZE_MODES

from .common import (
    GenerationForm,
    ResultPanel,
    StyleControls,
    UiContext,
    build_action_buttons,
    build_generation_controls,
    build_prompt_controls,
    build_result_panel,
    build_style_controls,
    float_or,
    wire_generate,
)
from .controls import labelled_slider

TAB = "img2img"
FIT_LONG_SIDE = 1024  # a large photo dropped in becomes at most this size, aspect kept


@dataclass
class Img2ImgTab:
    form: GenerationForm
    panel: ResultPanel
    init_image: gr.Image
    styles: StyleControls
    depth_map: gr.Image


def fit_size(width: int, height: int) -> tuple[int, int]:
    """An image's size as img2img width/height: rounded down to 8 px, long side at most 1024, aspect kept."""
    scale = min(1.0, FIT_LONG_SIDE / max(width, height, 1))

    def fit(side: float) -> int:
        return max(MIN_SIZE, int(side * scale) // 8 * 8)

    return fit(width), fit(height)


def is_depth_checkpoint(manager: Any, name: str | None) -> bool:
    """Whether the checkpoint called ``name`` is a depth-to-image one (SD 2's depth model), which reads a depth map."""
    try:
        info = next((info for info in manager.checkpoints() if info.name == name), None)
    except Exception:  # a registry that cannot list: no depth input rather than no tab
        return False
    spec = FAMILIES.get(getattr(info, "family", None) or "")
    return bool(spec is not None and spec.is_depth)


def size_for_image(image: Any) -> tuple[Any, Any]:
    """Width/height that follow a newly uploaded init image (unchanged when there is none)."""
    if image is None or not hasattr(image, "size"):
        return gr.skip(), gr.skip()
    return fit_size(*image.size)


def build_img2img_tab(ctx: UiContext) -> Img2ImgTab:
    """Lay out the Image to Image tab inside the current ``gr.Tab`` and wire Generate/Stop."""
    values = ctx.store.last_values(TAB)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380, elem_classes="controls-column"):
            prompts = build_prompt_controls(TAB, values, ctx)
            styles = build_style_controls(TAB, values, ctx)
            init_image = gr.Image(
                label="Init image (upload, drop or paste)",
                type="pil",
                image_mode="RGB",
                sources=["upload", "clipboard"],
                height=260,
                elem_id="img2img-init",
            )
            depth_map = gr.Image(
                label="Depth map (optional; white = near): without one, the DPT model of models/depth/ estimates it",
                type="pil",
                image_mode=None,  # 16-bit depth maps keep their precision
                sources=["upload", "clipboard"],
                height=200,
                elem_id="img2img-depth",
                visible=is_depth_checkpoint(ctx.manager, ctx.model_select.value),
            )
            with gr.Row():
                strength = labelled_slider(
                    0.0,
                    1.0,
                    value=float_or(values.get("strength"), 0.75),
                    step=0.01,
                    label="Denoising strength",
                    elem_id="img2img-strength",
                    scale=3,
                )
                resize_mode = gr.Dropdown(
                    list(RESIZE_MODES),
                    value=values.get("resize_mode") if values.get("resize_mode") in RESIZE_MODES else RESIZE_MODES[0],
                    label="Resize mode",
                    elem_id="img2img-resize-mode",
                    scale=2,
                )
            sampler, seed, size, batch = build_generation_controls(TAB, values, ctx, presets=True)
        with gr.Column(scale=6, min_width=380, elem_classes="results-column"):
            actions = build_action_buttons(TAB)
            panel = build_result_panel(
                TAB, ctx, gallery_id="img2img-gallery", info_id="img2img-info",
                send_to=("img2img", "inpaint", "upscale"),
            )
    init_image.upload(size_for_image, inputs=init_image, outputs=[size.width, size.height], queue=False)
    # the depth input shows while a depth-to-image checkpoint is chosen (a normal checkpoint reads no depth map)
    ctx.model_select.change(lambda name: gr.Image(visible=is_depth_checkpoint(ctx.manager, name)),
                            inputs=ctx.model_select, outputs=depth_map, queue=False, show_progress="hidden")
    form = GenerationForm(
        TAB,
        prompts,
        actions,
        sampler,
        seed,
        size=size,
        batch=batch,
        extra={"strength": strength, "resize_mode": resize_mode, "styles": styles.styles,
               "overrides": styles.overrides},
    )
    wire_generate(ctx, form, panel, image_fields={"init_image": init_image, "depth_map": depth_map})
    return Img2ImgTab(form, panel, init_image, styles, depth_map)
