"""Text to Image: prompts, styles, sampler, size, seed and batch on the left, the result panel on the right."""

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

TAB = "txt2img"


@dataclass
class Txt2ImgTab:
    form: GenerationForm
    panel: ResultPanel
    styles: StyleControls


def build_txt2img_tab(ctx: UiContext) -> Txt2ImgTab:
    """Lay out the Text to Image tab inside the current ``gr.Tab`` and wire Generate/Stop."""
    values = ctx.store.last_values(TAB)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380, elem_classes="controls-column"):
            prompts = build_prompt_controls(TAB, values, ctx)
            styles = build_style_controls(TAB, values, ctx)
            sampler, seed, size, batch = build_generation_controls(TAB, values, ctx)
        with gr.Column(scale=6, min_width=380, elem_classes="results-column"):
            actions = build_action_buttons(TAB)
            panel = build_result_panel(TAB, ctx, gallery_id="txt2img-gallery", info_id="txt2img-info")
    form = GenerationForm(TAB, prompts, actions, sampler, seed, size=size, batch=batch,
                          extra={"styles": styles.styles, "overrides": styles.overrides})
    wire_generate(ctx, form, panel)
    return Txt2ImgTab(form, panel, styles)
