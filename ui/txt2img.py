"""Text to Image: prompts, styles, sampler, size, the Hires. fix, seed, batch and tiling on the left, the result panel
on the right."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

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
    wire_generate,
)
from .hires import HiresControls, build_hires_controls

TAB = "txt2img"


@dataclass
class Txt2ImgTab:
    form: GenerationForm
    panel: ResultPanel
    styles: StyleControls
    hires: HiresControls


def build_txt2img_tab(ctx: UiContext) -> Txt2ImgTab:
    """Lay out the Text to Image tab inside the current ``gr.Tab`` and wire Generate/Stop."""
    values = ctx.store.last_values(TAB)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380, elem_classes="controls-column"):
            prompts = build_prompt_controls(TAB, values, ctx)
            styles = build_style_controls(TAB, values, ctx)
            built: dict[str, HiresControls] = {}

            def hires_under(size_controls):  # the Hires. fix accordion right under the size controls
                built["hires"] = build_hires_controls(values, ctx, size_controls, TAB)

            sampler, seed, size, batch = build_generation_controls(TAB, values, ctx, after_size=hires_under,
                                                                   presets=True)
            hires = built["hires"]
        with gr.Column(scale=6, min_width=380, elem_classes="results-column"):
            actions = build_action_buttons(TAB)
            panel = build_result_panel(TAB, ctx, gallery_id="txt2img-gallery", info_id="txt2img-info")
    form = GenerationForm(TAB, prompts, actions, sampler, seed, size=size, batch=batch,
                          extra={"styles": styles.styles, "overrides": styles.overrides,
                                 **hires.value_components()})
    wire_generate(ctx, form, panel)
    return Txt2ImgTab(form, panel, styles, hires)
