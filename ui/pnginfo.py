"""PNG Info: drop any image made by Atelier or A1111, read its generation parameters, send them to txt2img (with its
styles found and taken out of the prompts, and its clip skip and emphasis as "Override settings", as A1111 does).

Parameters live in the PNG text chunk ``parameters`` (A1111's format, DESIGN.md "Output files"); JPEG/WebP
files from A1111 carry them in the EXIF UserComment. Reading and parsing are the engine's
(``pipelines.outputs.read_parameters``, ``pipelines.infotext.parse_infotext``), so the tab and the files agree.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.errors import AtelierError
from pipelines.infotext import parse_infotext
from pipelines.outputs import read_parameters
from pipelines.prompt_encoding import EMPHASIS_MODES
from pipelines.prompt_parser import PromptStyle, extract_styles
from pipelines.samplers import resolve_sampler

from .common import HR_SAME_SAMPLER, HR_SAME_SCHEDULER, OVERRIDE_KEYS, UiContext, override_chips
from .hires import hires_upscaler_choices
from .txt2img import Txt2ImgTab

PNG_INFO_ROUTE = "png_info_read"  # Gradio's /gradio_api/call/<route> for the reader


def parse_parameters(text: str) -> dict[str, str]:
    """A1111 infotext → {"Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size", …}."""
    return _join_sizes({str(k): str(v) for k, v in parse_infotext(text).items()})


def _join_sizes(fields: dict[str, str]) -> dict[str, str]:
    # The engine splits "Size: 64x96" into "Size-1"/"Size-2" (as A1111 does); show and use it as one field.
    out: dict[str, str] = {}
    for key, value in fields.items():
        if key.endswith("-1") and f"{key[:-2]}-2" in fields:
            out[key[:-2]] = f"{value}x{fields[key[:-2] + '-2']}"
        elif not (key.endswith("-2") and f"{key[:-2]}-1" in fields):
            out[key] = value
    return out


# What an infotext without these keys was made with (A1111 writes them only when they differ).
INFOTEXT_DEFAULTS = {"Clip skip": "1", "Emphasis": "Original"}


def txt2img_values(fields: dict[str, str], styles: Mapping[str, PromptStyle] | None = None,
                   settings: Any = None) -> dict[str, Any]:
    """What "Send to Text to Image" fills: prompt, negative, sampler, steps, CFG, size, seed, tiling and the Hires.
    fix (``hires_values``).

    With ``styles`` (the styles file, by name), the styles the prompts were made with are found and taken out of
    them (A1111's ``extract_styles_from_prompt``): ``styles`` is the picker's new value. With ``settings``,
    ``overrides`` holds A1111's "Override settings" chips for the clip skip and emphasis the image was made with,
    where they differ from the Settings, and the seed and size come along only while ``send_seed`` / ``send_size`` are
    on (A1111's options). ``<lora:...>`` tags stay in the prompt. Values that are missing or unusable are left out (the
    txt2img field keeps what it had).
    """
    out: dict[str, Any] = {"prompt": fields.get("Prompt", ""), "negative": fields.get("Negative prompt", "")}
    if styles is not None:
        out["styles"], out["prompt"], out["negative"] = extract_styles(out["prompt"], out["negative"], styles)
    if settings is not None:
        out["overrides"] = infotext_overrides(fields, settings)
    if "Sampler" in fields:
        with contextlib.suppress(AtelierError):  # a sampler we do not have: keep the current one
            out["sampler"], out["scheduler"] = resolve_sampler(fields["Sampler"], fields.get("Schedule type"))
    for key, name, kind in (("Steps", "steps", int), ("CFG scale", "cfg", float), ("Seed", "seed", int)):
        with contextlib.suppress(KeyError, ValueError):
            out[name] = kind(float(fields[key])) if kind is int else kind(fields[key])
    size = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", fields.get("Size", ""))
    if size:
        out["width"], out["height"] = int(size.group(1)), int(size.group(2))
    out["tiling"] = fields.get("Tiling", "").strip().lower() == "true"
    out.update(hires_values(fields))
    if settings is not None and not getattr(settings, "send_seed", True):  # A1111's send_seed / send_size options
        out.pop("seed", None)
    if settings is not None and not getattr(settings, "send_size", True):
        out.pop("width", None)
        out.pop("height", None)
    return out


HIRES_KEYS = ("Hires upscale", "Hires resize", "Hires upscaler")


def hires_values(fields: dict[str, str]) -> dict[str, Any]:
    """The Hires. fix controls for a pasted infotext (A1111's keys: ``Hires upscale``/``Hires resize``, ``Hires
    steps``, ``Hires upscaler``, ``Denoising strength``, ``Hires sampler``/``schedule type``/``prompt``); an image
    made without it switches the hires fix off and leaves its other controls as they are."""
    if not any(key in fields for key in HIRES_KEYS):
        return {"hr_enable": False}
    out: dict[str, Any] = {"hr_enable": True, "hr_upscaler": fields.get("Hires upscaler", "Latent"),
                           "hr_prompt": fields.get("Hires prompt", ""),
                           "hr_negative": fields.get("Hires negative prompt", "")}
    resize = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", fields.get("Hires resize", ""))
    out["hr_resize_x"], out["hr_resize_y"] = (int(resize.group(1)), int(resize.group(2))) if resize else (0, 0)
    for key, name, kind, default in (("Hires upscale", "hr_scale", float, 2.0), ("Hires steps", "hr_steps", int, 0),
                                     ("Denoising strength", "hr_denoise", float, 0.7)):
        try:
            out[name] = kind(float(fields[key])) if kind is int else kind(fields[key])
        except (KeyError, ValueError):
            out[name] = default
    out["hr_sampler"], out["hr_scheduler"] = HR_SAME_SAMPLER, HR_SAME_SCHEDULER
    if "Hires sampler" in fields:
        with contextlib.suppress(AtelierError):  # a sampler we do not have: the first pass's
            label, schedule = resolve_sampler(fields["Hires sampler"], fields.get("Hires schedule type"))
            out["hr_sampler"] = label
            if schedule != "Automatic":
                out["hr_scheduler"] = schedule
    elif fields.get("Hires schedule type"):
        out["hr_scheduler"] = fields["Hires schedule type"]
    return out


def infotext_overrides(fields: dict[str, str], settings: Any) -> list[str]:
    """A1111's "Override settings" chips for a pasted infotext: "Clip skip: 2", "Emphasis: No norm" where the
    image's value (its default when the infotext leaves it out) differs from the Settings'."""
    chips = {}
    for key, name in OVERRIDE_KEYS.items():
        value = fields.get(key, INFOTEXT_DEFAULTS[key]).strip()
        current = str(getattr(settings, name, INFOTEXT_DEFAULTS[key]))
        if key == "Clip skip":
            try:
                value = str(int(float(value)))
            except ValueError:
                continue
        elif value not in EMPHASIS_MODES:
            continue
        if value != current:
            chips[key] = value
    return override_chips(chips)


def fields_html(fields: dict[str, str]) -> str:
    """The parsed fields as a two-column table."""
    if not fields:
        return ""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in fields.items() if v != "")
    return f'<table class="png-info-fields">{rows}</table>'


def _styles(manager: Any) -> list[PromptStyle]:
    try:
        return list(manager.styles())
    except Exception:  # an unreadable styles file: the prompt goes across as it is
        return []


@dataclass
class PngInfoTab:
    image: gr.Image
    output: gr.Textbox
    fields: gr.HTML
    send: gr.Button


def build_pnginfo_tab(ctx: UiContext, txt2img: Txt2ImgTab) -> PngInfoTab:
    """Lay out the PNG Info tab; "Send to Text to Image" fills txt2img's fields and switches tab."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            image = gr.Image(
                label="Drop a PNG made by Atelier or A1111",
                type="filepath",
                image_mode=None,  # keep the uploaded file as is: converting would drop its text chunks
                sources=["upload", "clipboard"],
                height=420,
                elem_id="png-info-input",
            )
        with gr.Column(scale=1):
            output = gr.Textbox(
                label="Parameters",
                lines=6,
                max_lines=20,
                interactive=False,
                buttons=["copy"],
                elem_id="png-info-output",
            )
            fields = gr.HTML("", elem_id="png-info-fields", js_on_load=None)
            send = gr.Button("Send to Text to Image", variant="primary", elem_id="png-info-send-txt2img")
    parsed = gr.State({})

    def read(path: str | None) -> tuple[str, str, dict[str, str]]:
        if not path:
            return "", "", {}
        try:
            text = read_parameters(path)
        except Exception:  # not an image Pillow can open: say so, do not crash
            raise gr.Error("This file could not be read as an image.", print_exception=False) from None
        if not text:
            return "This image carries no generation parameters.", "", {}
        found = parse_parameters(text)
        return text, fields_html(found), found

    # A named route, so that the security test that calls it (naming a server path) cannot silently miss it.
    image.change(read, inputs=image, outputs=[output, fields, parsed], queue=False, show_progress="hidden",
                 api_name=PNG_INFO_ROUTE)

    form = txt2img.form
    targets = {
        "prompt": form.prompts.prompt,
        "negative": form.prompts.negative,
        "sampler": form.sampler.sampler,
        "scheduler": form.sampler.scheduler,
        "steps": form.sampler.steps,
        "cfg": form.sampler.cfg,
        "width": form.size.width if form.size else None,
        "height": form.size.height if form.size else None,
        "seed": form.seed.seed,
        "styles": txt2img.styles.styles,
        "overrides": txt2img.styles.overrides,
        "tiling": form.batch.tiling if form.batch else None,
        **txt2img.hires.value_components(),
    }
    targets = {k: v for k, v in targets.items() if v is not None}

    def send_to_txt2img(found: dict[str, str]) -> list[Any]:
        if not found:
            raise gr.Error("Drop an image with generation parameters first.", print_exception=False)
        styles = {style.name: style for style in _styles(ctx.manager)}
        values = txt2img_values(found, styles, ctx.settings)
        chips = values.pop("overrides", [])
        values["overrides"] = gr.Dropdown(choices=chips, value=chips, visible=bool(chips))
        if "styles" in values:  # the picker lists the file's styles as they are now
            values["styles"] = gr.Dropdown(choices=list(styles), value=values["styles"])
        if "hr_upscaler" in values and values["hr_upscaler"] not in hires_upscaler_choices(ctx.manager):
            gr.Warning(f"The image's hires upscaler {values.pop('hr_upscaler')!r} is not installed here; the Hires. "
                       "fix keeps the upscaler it had.")
        updates = [values.get(name, gr.skip()) for name in targets]
        # the Hires. fix opens when the image was made with it
        hires = gr.Accordion(open=True) if values.get("hr_enable") else gr.skip()
        return [*updates, hires, gr.Tabs(selected="txt2img")]

    send.click(send_to_txt2img, inputs=parsed, outputs=[*targets.values(), txt2img.hires.accordion, ctx.tabs],
               queue=False)
    return PngInfoTab(image, output, fields, send)
