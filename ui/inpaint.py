"""Inpaint: paint over part of a picture and redraw only that part, or extend the canvas (outpainting).

A1111's img2img inpaint, in a tab of its own: the picture and its mask come from one ``gr.ImageEditor`` (the brush
paints the mask on a layer over the picture; eraser and clear are the editor's own), or the mask from an uploaded
file (white = redraw); A1111's mask blur, masked content, inpaint area with its padding and mask mode; the outpaint
sliders grow the canvas. The prompt, sampler, size, seed and batch controls, the result panel, live progress, Stop
and the queue position are Text to Image's (``ui.common``); the engine's request is an img2img with a ``mask`` and
an ``outpaint`` (``pipelines.request``), saved with the other img2img pictures, as A1111 saves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image, ImageChops

from pipelines.masks import MASK_THRESHOLD, MASKED_CONTENT, SIDES, read_mask, resize_image
from pipelines.request import MAX_INPAINT_PADDING, MAX_MASK_BLUR

from .common import (
    GenerationForm,
    ResultPanel,
    StyleControls,
    UiContext,
    as_int,
    build_action_buttons,
    build_generation_controls,
    build_prompt_controls,
    build_result_panel,
    build_style_controls,
    float_or,
    int_or,
    wire_generate,
)
from .controls import labelled_slider
from .img2img import fit_size

TAB = "inpaint"
TASK = "img2img"  # an inpaint is an img2img request with a mask; its pictures go to outputs/img2img/, as A1111's
AREAS = ("Whole picture", "Only masked")  # A1111's "Inpaint area"
MASK_MODES = ("Inpaint masked", "Inpaint not masked")  # A1111's "Mask mode"
MAX_OUTPAINT = 512  # px a side from the sliders (the request allows more; the picture's size limit decides)
BRUSH_COLORS = ["#ffffff", "#000000", "#ff3366"]  # opaque: a stroke's alpha is the mask, whatever its colour
NO_PICTURE = "Inpaint needs a picture: drop one into the editor (or send one here from another tab), then paint over " \
             "what to redraw."


@dataclass
class InpaintTab:
    form: GenerationForm
    panel: ResultPanel
    editor: gr.ImageEditor
    mask_upload: gr.Image
    styles: StyleControls
    outpaint: dict[str, gr.Slider]


# --------------------------------------------------------------------------------------------- the editor's value


def _as_image(value: Any) -> Image.Image | None:
    """A PIL image, a file path or a numpy array (what Gradio hands over) as a PIL image; None for nothing."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, str):
        with Image.open(value) as opened:
            return opened.copy()
    return Image.fromarray(value)


def editor_picture(value: dict[str, Any] | None) -> Image.Image | None:
    """The picture under the strokes: the editor's ``background`` (not its ``composite``, which has them painted
    in); None when no picture was dropped in."""
    return _as_image((value or {}).get("background"))


def editor_mask(value: dict[str, Any] | None) -> Image.Image | None:
    """The mask painted in the editor (``L``, white = redraw): where any layer's alpha is above 128, as A1111 reads a
    brush layer (``create_binary_mask``), at the picture's size; None when there is no layer."""
    value = value or {}
    layers = [image for image in map(_as_image, value.get("layers") or []) if image is not None]
    if not layers:
        return None
    picture = editor_picture(value)
    size = picture.size if picture is not None else layers[0].size
    alpha = Image.new("L", size, 0)
    for layer in layers:
        channel = layer.convert("RGBA").getchannel("A")
        if channel.size != size:
            channel = channel.resize(size, Image.Resampling.BILINEAR)
        alpha = ImageChops.lighter(alpha, channel)
    return alpha.point(lambda v: 255 if v > MASK_THRESHOLD else 0)


def combined_mask(painted: Image.Image | None, uploaded: Any, size: tuple[int, int]) -> Image.Image:
    """What to redraw: the strokes and an uploaded mask (white = redraw, or a brush layer's alpha, read as the API
    reads a ``mask``), both at ``size``; black (nothing) when neither says anything."""
    mask = Image.new("L", size, 0)
    for part in (painted, _as_image(uploaded)):
        if part is None:
            continue
        part = read_mask(part)
        if part.size != size:
            part = resize_image(part, *size)
        mask = ImageChops.lighter(mask, part)
    return mask


def outpaint_sides(values: dict[str, Any]) -> dict[str, int]:
    """The outpaint sliders as the request's ``outpaint`` (px a side, 0 where a slider is left at 0)."""
    return {side: as_int(values.get(f"outpaint_{side}") or 0, f"Outpaint {side}") for side in SIDES}


def inpaint_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The Inpaint tab's own values as request fields: the picture, the mask (painted and uploaded together; an
    empty one lets the engine say "the mask is empty: paint the area to change" unless an outpaint gives the area),
    A1111's mask blur, masked content, inpaint area, padding and mask mode, and the outpaint's sides."""
    picture = editor_picture(values.get("editor"))
    if picture is None:
        raise gr.Error(NO_PICTURE, title="Please check the settings", print_exception=False)
    fill = values.get("inpaint_fill")
    return {
        "init_image": picture,
        "mask": combined_mask(editor_mask(values.get("editor")), values.get("mask_upload"), picture.size),
        "mask_blur": as_int(values.get("mask_blur"), "Mask blur"),
        "inpainting_fill": MASKED_CONTENT.index(fill) if fill in MASKED_CONTENT else 1,
        "inpaint_full_res": values.get("inpaint_area") == AREAS[1],
        "inpaint_full_res_padding": as_int(values.get("inpaint_padding"), "Only masked padding"),
        "inpainting_mask_invert": values.get("inpaint_invert") == MASK_MODES[1],
        "outpaint": outpaint_sides(values),
    }


def size_for_editor(value: dict[str, Any] | None, last: tuple[int, int] | None) -> tuple[Any, Any, Any]:
    """Width, height and the picture's size, for the editor's upload event: width/height follow a picture of another
    size than ``last`` (the one they followed before). Gradio's editor sends that event for every stroke too, and a
    size the artist chose for the picture in hand must not jump back while they paint."""
    picture = editor_picture(value)
    if picture is None or picture.size == (tuple(last) if last else None):
        return gr.skip(), gr.skip(), gr.skip()
    return (*fit_size(*picture.size), picture.size)


# --------------------------------------------------------------------------------------------- the tab


def _choice(value: Any, choices: tuple[str, ...], default: str) -> str:
    return value if value in choices else default


def build_inpaint_tab(ctx: UiContext) -> InpaintTab:
    """Lay out the Inpaint tab inside the current ``gr.Tab`` and wire Generate/Stop."""
    values = ctx.store.last_values(TAB)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380, elem_classes="controls-column"):
            prompts = build_prompt_controls(TAB, values, ctx)
            styles = build_style_controls(TAB, values, ctx)
            editor = gr.ImageEditor(
                label="Picture and mask: drop a picture, then paint over what to redraw",
                type="pil",
                image_mode="RGBA",  # the layers keep their alpha: the strokes are the mask
                sources=["upload", "clipboard"],
                brush=gr.Brush(colors=BRUSH_COLORS, default_color=BRUSH_COLORS[0], color_mode="fixed"),
                eraser=gr.Eraser(),
                layers=False,
                transforms=(),
                format="png",
                height=420,
                elem_id="inpaint-editor",
            )
            with gr.Accordion("Mask from a file", open=False, elem_id="inpaint-mask-accordion"):
                mask_upload = gr.Image(
                    label="Mask (white = redraw; resized to the picture; added to the strokes)",
                    type="pil",
                    image_mode=None,  # as the file is: a brush layer's alpha is read as A1111 reads it
                    sources=["upload", "clipboard"],
                    height=180,
                    elem_id="inpaint-mask-upload",
                )
            with gr.Row():
                mask_blur = labelled_slider(0, MAX_MASK_BLUR, value=int_or(values.get("mask_blur"), 4), step=1,
                                            label="Mask blur", elem_id="inpaint-mask-blur", scale=2)
                strength = labelled_slider(0.0, 1.0, value=float_or(values.get("strength"), 0.75), step=0.01,
                                           label="Denoising strength", elem_id="inpaint-strength", scale=3)
            invert = gr.Radio(list(MASK_MODES), value=_choice(values.get("inpaint_invert"), MASK_MODES, MASK_MODES[0]),
                              label="Mask mode", elem_id="inpaint-invert")
            fill = gr.Radio(list(MASKED_CONTENT),
                            value=_choice(values.get("inpaint_fill"), MASKED_CONTENT, MASKED_CONTENT[1]),
                            label="Masked content", elem_id="inpaint-fill")
            with gr.Row(equal_height=True):
                area = gr.Radio(list(AREAS), value=_choice(values.get("inpaint_area"), AREAS, AREAS[0]),
                                label="Inpaint area", elem_id="inpaint-area", scale=3)
                padding = labelled_slider(0, MAX_INPAINT_PADDING, value=int_or(values.get("inpaint_padding"), 32),
                                          step=4, label="Only masked padding, pixels", elem_id="inpaint-padding",
                                          scale=2)
            with gr.Accordion("Outpaint: extend the canvas", open=False, elem_id="inpaint-outpaint"), gr.Row():
                outpaint = {side: labelled_slider(0, MAX_OUTPAINT, value=0, step=8, label=f"{side.capitalize()}, px",
                                                  elem_id=f"outpaint-{side}", min_width=120) for side in SIDES}
            sampler, seed, size, batch = build_generation_controls(TAB, values, ctx)
        with gr.Column(scale=6, min_width=380, elem_classes="results-column"):
            actions = build_action_buttons(TAB)
            panel = build_result_panel(TAB, ctx, gallery_id="inpaint-gallery", info_id="inpaint-info",
                                       send_to=("img2img", "inpaint", "upscale"), folder=TASK)
    followed = gr.State(None)  # the size of the picture width/height last followed
    editor.upload(size_for_editor, inputs=[editor, followed], outputs=[size.width, size.height, followed], queue=False,
                  show_progress="hidden")
    form = GenerationForm(
        TAB, prompts, actions, sampler, seed, size=size, batch=batch, task=TASK,
        extra={"editor": editor, "mask_upload": mask_upload, "strength": strength, "mask_blur": mask_blur,
               "inpaint_fill": fill, "inpaint_area": area, "inpaint_padding": padding, "inpaint_invert": invert,
               **{f"outpaint_{side}": slider for side, slider in outpaint.items()},
               "styles": styles.styles, "overrides": styles.overrides},
    )
    wire_generate(ctx, form, panel, more_fields=inpaint_fields)
    return InpaintTab(form, panel, editor, mask_upload, styles, outpaint)
