"""Controls shared by the generation tabs: prompt boxes, sampler, size, seed, batch, the result panel, and
``wire_generate`` that connects a tab's form to the manager (the job loop itself is in ``ui.jobs``).

Every tab builds its form from these functions with its own id prefix (``txt2img-…``, ``img2img-…``), so the
element ids of DESIGN.md come out of one place and img2img reuses txt2img's controls instead of copying them.
Nothing here touches torch: a tab builds a ``GenerationRequest`` and hands it to the manager.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines.errors import AtelierError
from pipelines.presets import PRESET_NAMES, preset_for, standard_preset
from pipelines.presets import STANDARD as STANDARD_PRESET
from pipelines.request import (
    MAX_BATCH_COUNT,
    MAX_BATCH_SIZE,
    MAX_CFG,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MIN_CFG,
    MIN_SIZE,
    GenerationRequest,
)
from pipelines.samplers import SAMPLER_NAMES, SCHEDULE_NAMES
from pipelines.settings import Settings

from .controls import labelled_number, labelled_slider
from .jobs import (
    FINISHED_STATES,
    SessionJobs,
    follow_job,
    gallery_items,
    info_html,
    unexpected_error,
    user_error,
)
from .persist import SettingsFile
from .status import status_html

log = logging.getLogger(__name__)

TOKENS_PER_CHUNK = 75  # CLIP's 77 minus start/end markers; longer prompts are processed in chunks of 75
GENERATE_CONCURRENCY_ID = "generate"
LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass
class UiContext:
    """What every tab needs while it is being built: the engine, settings, the saved-values file and the
    components shared across tabs (session state, model pickers, the tab strip)."""

    manager: Any
    settings: Settings
    store: SettingsFile
    session: gr.State
    model_select: gr.Dropdown
    vae_select: gr.Dropdown
    status_bar: gr.HTML | None = None
    tabs: gr.Tabs | None = None
    local_only_buttons: list[gr.Button] = field(default_factory=list)

    @property
    def concurrency_limit(self) -> int:
        """Gradio lets this many Generate events run at once: at least the manager's queue size, so that
        the manager's FIFO (shared with REST jobs) decides the order, not Gradio's queue."""
        return max(1, int(self.settings.queue_size)) + 1


# --------------------------------------------------------------------------------------------- requests


def create_request(**fields: Any) -> GenerationRequest:
    """``GenerationRequest.create`` with its ``InvalidRequest`` turned into a toast; the form keeps its values."""
    try:
        return GenerationRequest.create(**fields)
    except AtelierError as exc:
        raise user_error(exc) from None


# --------------------------------------------------------------------------------------------- token counter


def chunk_limit(count: int) -> int:
    """The token limit of the 75-token chunks ``count`` tokens fill (75, 150, ...)."""
    return max(1, math.ceil(count / TOKENS_PER_CHUNK)) * TOKENS_PER_CHUNK


def count_prompt(text: str, manager: Any = None) -> tuple[int, int]:
    """A1111's counter for a prompt box: (tokens, limit). The manager's counter when it offers one (it reads the
    prompt language: weights, ``BREAK``, ``<lora:...>`` tags left out), else the bundled CLIP tokenizer, else a
    word/punctuation estimate (never an error while someone types)."""
    if not text:
        return 0, TOKENS_PER_CHUNK
    counter = getattr(manager, "count_tokens", None)
    try:
        if callable(counter):
            counted = counter(text)
            if isinstance(counted, tuple):
                return int(counted[0]), int(counted[1])
            return int(counted), chunk_limit(int(counted))
        from pipelines.tokenizers import count_tokens as clip_count

        count = int(clip_count(text))
    except Exception:  # tokenizer files missing or broken: the estimate is good enough for a counter
        count = len(re.findall(r"\w+|[^\w\s]", text))
    return count, chunk_limit(count)


def count_tokens(text: str, manager: Any = None) -> int:
    """CLIP tokens in ``text`` (see ``count_prompt``)."""
    return count_prompt(text, manager)[0]


def token_label(count: int, limit: int | None = None) -> str:
    """A1111's counter: "n/75", then "n/150" once a second chunk starts (``limit`` as the engine counts it: a
    ``BREAK`` starts a chunk too)."""
    limit = chunk_limit(count) if limit is None else limit
    over = " over" if limit > TOKENS_PER_CHUNK else ""
    return f'<span class="token-count{over}" title="CLIP tokens (75 per chunk)">{count}/{limit}</span>'


# --------------------------------------------------------------------------------------------- control groups


@dataclass
class PromptControls:
    prompt: gr.Textbox
    negative: gr.Textbox
    prompt_tokens: gr.HTML
    negative_tokens: gr.HTML


@dataclass
class SamplerControls:
    sampler: gr.Dropdown | None
    steps: gr.Slider
    cfg: gr.Slider | None
    scheduler: gr.Dropdown | None = None  # A1111's "Schedule type"
    preset: gr.Dropdown | None = None  # the speed preset menu (Text/Image to Image)
    preset_note: gr.HTML | None = None  # says which preset was chosen automatically, and why
    cfg_note: gr.HTML | None = None  # says that CFG 1 leaves the negative prompt out


@dataclass
class SizeControls:
    width: gr.Slider
    height: gr.Slider
    swap: gr.Button
    presets: dict[str, gr.Button]


@dataclass
class SeedControls:
    seed: gr.Number
    random: gr.Button
    reuse: gr.Button


@dataclass
class BatchControls:
    batch_count: gr.Slider
    batch_size: gr.Slider
    tiling: gr.Checkbox | None = None


@dataclass
class ActionButtons:
    generate: gr.Button
    stop: gr.Button


@dataclass
class ResultPanel:
    progress: gr.HTML
    gallery: gr.Gallery
    info: gr.HTML
    send_buttons: dict[str, gr.Button]
    open_outputs: gr.Button


def build_prompt_controls(prefix: str, values: dict[str, Any], ctx: UiContext) -> PromptControls:
    """Prompt and negative prompt (multi-line, with a live "n/75" token counter each)."""
    with gr.Column(elem_classes="prompt-box"):
        prompt = gr.Textbox(
            value=str(values.get("prompt", "")),
            label="Prompt",
            placeholder="What to draw (Ctrl+Enter generates)",
            lines=3,
            max_lines=12,
            elem_id=f"{prefix}-prompt",
        )
        prompt_tokens = gr.HTML(
            token_label(*count_prompt(prompt.value, ctx.manager)),
            elem_id=f"{prefix}-prompt-tokens",
            elem_classes="token-counter",
            js_on_load=None,
        )
    with gr.Column(elem_classes="prompt-box"):
        negative = gr.Textbox(
            value=str(values.get("negative", "")),
            label="Negative prompt",
            placeholder="What to avoid",
            lines=2,
            max_lines=8,
            elem_id=f"{prefix}-negative",
        )
        negative_tokens = gr.HTML(
            token_label(*count_prompt(negative.value, ctx.manager)),
            elem_id=f"{prefix}-negative-tokens",
            elem_classes="token-counter",
            js_on_load=None,
        )
    controls = PromptControls(prompt, negative, prompt_tokens, negative_tokens)
    for box, counter in ((prompt, prompt_tokens), (negative, negative_tokens)):
        box.change(
            lambda text: token_label(*count_prompt(text, ctx.manager)),
            inputs=box,
            outputs=counter,
            queue=False,
            show_progress="hidden",
            trigger_mode="always_last",
        )
    return controls


@dataclass
class StyleControls:
    styles: gr.Dropdown
    refresh: gr.Button
    overrides: gr.Dropdown


# A1111's "Override settings" chips ("Clip skip: 2"): the infotext keys a pasted image sets for its own tab, and the
# request fields they fill.
OVERRIDE_KEYS = {"Clip skip": "clip_skip", "Emphasis": "emphasis"}


def style_names(manager: Any) -> list[str]:
    """The names of the styles file's styles, in file order ([] when it cannot be read)."""
    try:
        return [style.name for style in manager.styles()]
    except Exception as exc:
        log.warning("Could not list the styles: %s", exc)
        return []


def styles_file_path(settings: Settings) -> Path | None:
    """Where the styles come from: ``--styles-file``, else styles.csv beside the settings file (as the engine reads
    it)."""
    if settings.styles_file is not None:
        return Path(settings.styles_file)
    if settings.settings_file is not None:
        return Path(settings.settings_file).with_name("styles.csv")
    return None


def styles_hint(names: list[str], settings: Settings) -> str:
    """The picker's note when there is no style yet: which file to write, in which format; "" otherwise."""
    if names:
        return ""
    path = styles_file_path(settings)
    where = str(path) if path is not None else "styles.csv beside settings.json"
    return f"No styles yet: add rows to {where} (A1111's styles.csv: name,prompt,negative_prompt) and press ↻."


def build_style_controls(prefix: str, values: dict[str, Any], ctx: UiContext) -> StyleControls:
    """The styles picker (A1111's styles, several at once, applied in order) with its ↻, and the "Override
    settings" chips a pasted image brings (hidden while there are none)."""
    names = style_names(ctx.manager)
    saved = values.get("styles")
    chosen = [name for name in saved if name in names] if isinstance(saved, list) else []
    with gr.Row(equal_height=True, elem_classes="style-row"):
        styles = gr.Dropdown(
            names, value=chosen, multiselect=True, label="Styles", elem_id=f"{prefix}-styles", scale=5,
            min_width=200, info=styles_hint(names, ctx.settings) or None,
        )
        refresh = gr.Button("↻", elem_id=f"{prefix}-styles-refresh", scale=0, min_width=44, elem_classes="tool-button")
    overrides = gr.Dropdown(
        [], value=[], multiselect=True, label="Override settings", elem_id=f"{prefix}-override-settings",
        info="From a pasted image: used for this tab's images instead of the Settings (✕ removes one).",
        visible=False,
    )

    def reload(current: list[str] | None) -> Any:
        names = style_names(ctx.manager)
        return gr.Dropdown(choices=names, value=[name for name in current or [] if name in names],
                           info=styles_hint(names, ctx.settings))

    refresh.click(reload, inputs=styles, outputs=styles, queue=False, show_progress="hidden")
    overrides.change(lambda chips: gr.Dropdown(visible=bool(chips)), inputs=overrides, outputs=overrides,
                     queue=False, show_progress="hidden")
    return StyleControls(styles, refresh, overrides)


def override_chips(values: dict[str, Any]) -> list[str]:
    """``{"Clip skip": 2}`` → ``["Clip skip: 2"]`` (A1111's chip text), in ``OVERRIDE_KEYS`` order."""
    return [f"{key}: {values[key]}" for key in OVERRIDE_KEYS if values.get(key) is not None]


def override_fields(chips: list[str] | None) -> dict[str, Any]:
    """"Override settings" chips → request fields (``clip_skip``, ``emphasis``); a bad chip is a toast."""
    fields: dict[str, Any] = {}
    for chip in chips or []:
        key, _, value = str(chip).partition(":")
        name = OVERRIDE_KEYS.get(key.strip())
        if name is None or not value.strip():
            raise gr.Error(f"Override settings: '{chip}' is not a setting Atelier can override; remove it.",
                           print_exception=False)
        fields[name] = as_int(value, key.strip()) if name == "clip_skip" else value.strip()
    return fields


def build_action_buttons(prefix: str) -> ActionButtons:
    """Generate and Stop side by side, at the top of the result column."""
    with gr.Row(elem_classes="action-row"):
        generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}-generate", size="lg", scale=4)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-interrupt", size="lg", scale=1, min_width=90)
    return ActionButtons(generate, stop)


def build_sampler_dropdown(prefix: str, values: dict[str, Any], settings: Settings) -> gr.Dropdown:
    """The sampler picker (A1111 names), defaulting to the last used or the Settings default."""
    default_sampler = values.get("sampler", settings.default_sampler)
    if default_sampler not in SAMPLER_NAMES:
        default_sampler = SAMPLER_NAMES[0]
    return gr.Dropdown(
        list(SAMPLER_NAMES),
        value=default_sampler,
        label="Sampler",
        elem_id=f"{prefix}-sampler",
        scale=2,
        min_width=150,
    )


def build_schedule_dropdown(prefix: str, values: dict[str, Any]) -> gr.Dropdown:
    """A1111's "Schedule type" picker (Automatic: the sampler's own), defaulting to the last used."""
    value = values.get("scheduler") if values.get("scheduler") in SCHEDULE_NAMES else SCHEDULE_NAMES[0]
    return gr.Dropdown(list(SCHEDULE_NAMES), value=value, label="Schedule type", elem_id=f"{prefix}-scheduler",
                       scale=2, min_width=130)


def build_preset_dropdown(prefix: str, values: dict[str, Any]) -> gr.Dropdown:
    """The speed preset menu: Standard, or a few-step model's sampler, schedule, steps and CFG."""
    value = values.get("preset") if values.get("preset") in PRESET_NAMES else STANDARD_PRESET
    return gr.Dropdown(list(PRESET_NAMES), value=value, label="Preset", elem_id=f"{prefix}-preset", scale=2,
                       min_width=170, info="Sets sampler, schedule, steps and CFG; chosen for you when the "
                       "checkpoint or a prompt LoRA is an LCM, Turbo, Lightning, Hyper-SD or TCD model.")


CFG_ONE_NOTE = ("CFG 1: one model pass per step (about twice as fast); the negative prompt is not used (AND prompts "
                "whose weights do not add up to 1 still use it).")


def cfg_note_html(cfg: Any) -> str:
    """The line under the CFG slider: what CFG 1 means, or nothing."""
    try:
        guided = float(cfg) > 1
    except (TypeError, ValueError):
        return ""
    return "" if guided else f'<div class="cfg-note">{html.escape(CFG_ONE_NOTE)}</div>'


def preset_note_html(text: str) -> str:
    return f'<div class="preset-note">{html.escape(text)}</div>' if text else ""


def preset_updates(preset: Any) -> list[Any]:
    """The values a preset puts into the sampler, schedule, steps and CFG controls."""
    return [preset.sampler, preset.schedule, int(preset.steps), float(preset.cfg_scale)]


def build_steps_slider(prefix: str, values: dict[str, Any], settings: Settings) -> gr.Slider:
    return labelled_slider(
        1,
        MAX_STEPS,
        value=int_or(values.get("steps"), settings.default_steps),
        step=1,
        label="Steps",
        elem_id=f"{prefix}-steps",
    )


def build_cfg_slider(prefix: str, values: dict[str, Any]) -> gr.Slider:
    return labelled_slider(
        MIN_CFG,
        MAX_CFG,
        value=float_or(values.get("cfg"), 7.0),
        step=0.5,
        label="CFG scale",
        elem_id=f"{prefix}-cfg",
    )


def build_generation_controls(
    prefix: str, values: dict[str, Any], ctx: UiContext, after_size: Callable[[SizeControls], Any] | None = None,
    presets: bool = False,
) -> tuple[SamplerControls, SeedControls, SizeControls, BatchControls]:
    """The sampler/seed/steps/CFG/size/batch block shared by Text to Image and Image to Image; ``after_size(size)``
    builds what a tab shows under the size controls (Text to Image's Hires. fix); ``presets`` adds the speed preset
    menu above the sampler (``wire_generate`` connects it).

    Ordered so that what changes most (sampler, seed, steps, CFG, size) fits a 1280x800 screen.
    """
    preset = preset_note = None
    if presets:
        with gr.Row(equal_height=True):
            preset = build_preset_dropdown(prefix, values)
            preset_note = gr.HTML("", elem_id=f"{prefix}-preset-note", elem_classes="preset-note-box",
                                  js_on_load=None)
    with gr.Row(equal_height=True):
        sampler = build_sampler_dropdown(prefix, values, ctx.settings)
        scheduler = build_schedule_dropdown(prefix, values)
        with gr.Column(scale=3, min_width=220):
            seed = build_seed_controls(prefix, values, ctx, prefix)
    with gr.Row():
        steps = build_steps_slider(prefix, values, ctx.settings)
        cfg = build_cfg_slider(prefix, values)
    cfg_note = gr.HTML(cfg_note_html(cfg.value), elem_id=f"{prefix}-cfg-note", js_on_load=None)
    cfg.change(cfg_note_html, inputs=cfg, outputs=cfg_note, queue=False, show_progress="hidden")
    size = build_size_controls(prefix, values)
    if after_size is not None:
        after_size(size)
    batch = build_batch_controls(prefix, values, tiling=True)
    controls = SamplerControls(sampler, steps, cfg, scheduler, preset, preset_note, cfg_note)
    return controls, seed, size, batch


SIZE_PRESETS: dict[str, str] = {"512²": "512", "768²": "768", "1024²": "1024", "2:3": "2:3", "3:2": "3:2"}


def preset_size(preset: str, width: float, height: float) -> tuple[int, int]:
    """The size a preset button picks: a square side, or an aspect ratio that keeps the shorter side."""
    if ":" not in preset:
        side = int(preset)
        return side, side
    a, b = (int(x) for x in preset.split(":"))
    short = max(MIN_SIZE, min(int(width or 512), int(height or 512)))
    long = _round8(short * max(a, b) / min(a, b))
    long = min(MAX_SIZE, long)
    return (short, long) if a < b else (long, short)


def build_size_controls(prefix: str, values: dict[str, Any]) -> SizeControls:
    """Width and height sliders, a swap button and the common size presets."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=220):
            width = labelled_slider(
                MIN_SIZE,
                MAX_SIZE,
                value=int_or(values.get("width"), 512),
                step=8,
                label="Width",
                elem_id=f"{prefix}-width",
            )
            height = labelled_slider(
                MIN_SIZE,
                MAX_SIZE,
                value=int_or(values.get("height"), 512),
                step=8,
                label="Height",
                elem_id=f"{prefix}-height",
            )
        with gr.Column(scale=1, min_width=110, elem_classes="size-tools"):
            swap = gr.Button("⇅ Swap", size="sm", elem_id=f"{prefix}-swap-size")
            presets = {}
            with gr.Row(elem_classes="size-presets"):
                for label in SIZE_PRESETS:
                    presets[label] = gr.Button(
                        label, size="sm", min_width=40, elem_id=f"{prefix}-size-{SIZE_PRESETS[label].replace(':', 'x')}"
                    )
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], queue=False)
    for label, button in presets.items():
        button.click(
            lambda w, h, _p=SIZE_PRESETS[label]: preset_size(_p, w, h),
            inputs=[width, height],
            outputs=[width, height],
            queue=False,
        )
    return SizeControls(width, height, swap, presets)


def build_seed_controls(prefix: str, values: dict[str, Any], ctx: UiContext, tab: str) -> SeedControls:
    """Seed field with 🎲 (random: -1) and ♻ (reuse the seed of the selected last image)."""
    with gr.Row(equal_height=True, elem_classes="seed-row"):
        seed = labelled_number(
            value=int_or(values.get("seed"), -1),
            label="Seed (-1: random)",
            precision=0,
            minimum=-1,
            maximum=MAX_SEED,
            elem_id=f"{prefix}-seed",
            scale=4,
            min_width=160,
        )
        random_button = gr.Button(
            "🎲", elem_id=f"{prefix}-seed-random", scale=0, min_width=44, size="sm", elem_classes="tool-button"
        )
        reuse_button = gr.Button(
            "♻", elem_id=f"{prefix}-seed-reuse", scale=0, min_width=44, size="sm", elem_classes="tool-button"
        )
    random_button.click(lambda: -1, outputs=seed, queue=False)

    def reuse(session: SessionJobs, current: float) -> int:
        last = session.last_seed(tab)
        if last is None:
            gr.Info("No image made in this tab yet: generate one first.")
            return int(current if current is not None else -1)
        return last

    reuse_button.click(reuse, inputs=[ctx.session, seed], outputs=seed, queue=False)
    return SeedControls(seed, random_button, reuse_button)


def build_batch_controls(prefix: str, values: dict[str, Any], tiling: bool = False) -> BatchControls:
    """Batch count (runs one after another) and batch size (images per run); with ``tiling``, the seamless tiling
    switch beside them."""
    with gr.Row(equal_height=True, elem_classes="batch-row"):
        batch_count = labelled_slider(
            1,
            MAX_BATCH_COUNT,
            value=int_or(values.get("batch_count"), 1),
            step=1,
            label="Batch count",
            elem_id=f"{prefix}-batch-count",
            scale=3,
        )
        batch_size = labelled_slider(
            1,
            MAX_BATCH_SIZE,
            value=int_or(values.get("batch_size"), 1),
            step=1,
            label="Batch size",
            elem_id=f"{prefix}-batch-size",
            scale=3,
        )
        tiling_box = None
        if tiling:
            tiling_box = gr.Checkbox(
                value=bool(values.get("tiling", False)),
                label="Tiling",
                elem_id=f"{prefix}-tiling",
                elem_classes="tiling-box",
                scale=1,
                min_width=100,
            )
    return BatchControls(batch_count, batch_size, tiling_box)


SEND_LABELS = {"img2img": "Send to Image to Image", "inpaint": "Send to Inpaint", "upscale": "Send to Upscale 4x"}


def build_result_panel(
    prefix: str, ctx: UiContext, *, gallery_id: str, info_id: str,
    send_to: tuple[str, ...] = ("img2img", "inpaint", "upscale"), folder: str | None = None,
) -> ResultPanel:
    """Progress bar, gallery with download, infotext and the Send to / Open outputs buttons (``folder``: the outputs
    subfolder the tab's pictures go to, when it is not named as the tab)."""
    progress = gr.HTML("", elem_id=f"{prefix}-progress", elem_classes="atelier-progress-box", js_on_load=None)
    gallery = gr.Gallery(
        label="Images",
        elem_id=gallery_id,
        columns=2,
        preview=True,
        object_fit="contain",
        height=400,
        format="png",
        buttons=["download", "download_all", "fullscreen"],
        interactive=False,
    )
    info = gr.HTML("", elem_id=info_id, elem_classes="infotext-box", js_on_load=None)
    send_buttons = {}
    with gr.Row(elem_classes="send-row"):
        for target in send_to:
            send_buttons[target] = gr.Button(SEND_LABELS[target], size="sm", elem_id=f"{prefix}-send-{target}")
        open_outputs = gr.Button("Open outputs folder", size="sm", elem_id=f"{prefix}-open-outputs", visible=False)
    ctx.local_only_buttons.append(open_outputs)
    task_folder = Path(ctx.settings.outputs_dir) / (folder or prefix)

    def open_folder(request: gr.Request) -> None:
        if not is_local_request(request):
            raise gr.Error("The outputs folder can only be opened from the machine that runs Atelier.")
        open_in_file_manager(task_folder if task_folder.is_dir() else Path(ctx.settings.outputs_dir))

    open_outputs.click(open_folder, queue=False)

    def on_select(session: SessionJobs, evt: gr.SelectData) -> str:
        session.selected[prefix] = int(evt.index or 0)
        return info_html(session.results.get(prefix), session.selected[prefix])

    gallery.select(on_select, inputs=ctx.session, outputs=info, queue=False)
    return ResultPanel(progress, gallery, info, send_buttons, open_outputs)


def wire_stop(button: gr.Button, ctx: UiContext, tab: str) -> None:
    """Stop sets the job's cancel flag from an un-queued handler: Gradio's ``cancels=`` cannot stop a function
    that is already running, and a queued Stop would wait behind the very job it should stop."""

    def stop(session: SessionJobs) -> None:
        job = session.jobs.get(tab)
        if job is None or getattr(job, "state", "done") in FINISHED_STATES:
            return
        job.cancel()

    button.click(stop, inputs=ctx.session, queue=False, show_progress="hidden")


# --------------------------------------------------------------------------------------------- local machine


def is_local_request(request: gr.Request | None) -> bool:
    """True when the browser runs on the machine that serves the UI (not through --listen/--share)."""
    if request is None:
        return False
    headers = getattr(request, "headers", None) or {}
    if any(h in headers for h in ("x-forwarded-for", "x-real-ip")):
        return False  # share links and reverse proxies forward remote browsers from localhost
    # Both ends must be this machine: the client address, and the host name the browser used (a share link
    # arrives from a local tunnel process but carries its public host name).
    served_as = str(headers.get("host", "localhost")).rsplit(":", 1)[0].strip("[]")
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return host in LOCAL_HOSTS and served_as in LOCAL_HOSTS


def open_in_file_manager(folder: Path) -> None:
    """Open ``folder`` in the system file manager (Explorer, Finder, xdg-open)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if sys.platform.startswith("win"):
            os.startfile(str(folder))  # type: ignore[attr-defined]  # noqa: S606 - a folder we own
        elif sys.platform == "darwin":
            subprocess.Popen(["open", str(folder)])  # noqa: S603, S607
        else:
            subprocess.Popen(["xdg-open", str(folder)])  # noqa: S603, S607
    except OSError as exc:
        raise gr.Error(f"Could not open {folder}: {exc}. Open it from your file manager.") from None


# --------------------------------------------------------------------------------------------- small helpers


def int_or(value: Any, default: int) -> int:
    """``value`` as int, or ``default`` when it is missing or not a number (saved values may be anything)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def float_or(value: Any, default: float) -> float:
    """``value`` as a finite float, or ``default``."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return default
    return result if math.isfinite(result) else default


def _round8(value: float) -> int:
    return max(MIN_SIZE, int(round(value / 8)) * 8)


def as_number(value: Any, name: str) -> float:
    """A form number as float; an empty or non-numeric field becomes a toast naming the field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number.", print_exception=False) from None
    if not math.isfinite(number):
        raise gr.Error(f"{name} must be a number.", print_exception=False)
    return number


def as_int(value: Any, name: str) -> int:
    """A form number as int (sliders may send 512.0); validation of the range happens in the request."""
    return int(round(as_number(value, name)))


# --------------------------------------------------------------------------------------------- one generation form


@dataclass
class GenerationForm:
    """The controls of one generation tab, by name; ``extra`` holds tab-only ones (init image, strength…)."""

    tab: str
    prompts: PromptControls
    actions: ActionButtons
    sampler: SamplerControls
    seed: SeedControls
    size: SizeControls | None = None
    batch: BatchControls | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = ""  # the request's task when it is not the tab's name (Inpaint's requests are img2img's)

    def value_components(self) -> dict[str, Any]:
        """Form field name → component, for everything a request (and "last values") is built from."""
        named: dict[str, Any] = {
            "prompt": self.prompts.prompt,
            "negative": self.prompts.negative,
            "steps": self.sampler.steps,
            "seed": self.seed.seed,
        }
        if self.sampler.sampler is not None:
            named["sampler"] = self.sampler.sampler
        if self.sampler.scheduler is not None:
            named["scheduler"] = self.sampler.scheduler
        if self.sampler.preset is not None:
            named["preset"] = self.sampler.preset
        if self.sampler.cfg is not None:
            named["cfg"] = self.sampler.cfg
        if self.size is not None:
            named.update(width=self.size.width, height=self.size.height)
        if self.batch is not None:
            named.update(batch_count=self.batch.batch_count, batch_size=self.batch.batch_size)
            if self.batch.tiling is not None:
                named["tiling"] = self.batch.tiling
        named.update(self.extra)
        return named


REMEMBERED = (
    "prompt",
    "negative",
    "sampler",
    "scheduler",
    "preset",
    "steps",
    "cfg",
    "width",
    "height",
    "seed",
    "batch_count",
    "batch_size",
    "strength",
    "resize_mode",
    "noise_level",
    "styles",
    "tiling",
    # Text to Image's Hires. fix
    "hr_enable",
    "hr_scale",
    "hr_upscaler",
    "hr_steps",
    "hr_denoise",
    "hr_resize_x",
    "hr_resize_y",
    "hr_sampler",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative",
    # the Upscale tab
    "upscaler",
    "upscale_mode",
    "upscale_scale",
    "upscale_width",
    "upscale_height",
    "upscale_crop",
    # the Inpaint tab (the outpaint sliders are for one picture: not kept)
    "mask_blur",
    "inpaint_fill",
    "inpaint_area",
    "inpaint_padding",
    "inpaint_invert",
)
# The hires fix's "as the first pass" entries of its sampler and schedule menus (A1111's words)
HR_SAME_SAMPLER = "Use same sampler"
HR_SAME_SCHEDULER = "Use same scheduler"
# The Upscale tab's two ways to say the size (A1111's extras tabs)
UPSCALE_BY, UPSCALE_TO = "Scale by", "Scale to"


def request_fields(task: str, values: dict[str, Any], checkpoint: Any = None, vae: Any = None) -> dict[str, Any]:
    """Turn form values (by field name) into ``GenerationRequest`` fields; bad numbers become toasts."""
    fields: dict[str, Any] = {
        "task": task,
        "prompt": values.get("prompt") or "",
        "negative_prompt": values.get("negative") or "",
        "steps": as_int(values.get("steps"), "Steps"),
        "seed": as_int(values.get("seed", -1) if values.get("seed") is not None else -1, "Seed"),
    }
    if "sampler" in values:
        fields["sampler"] = values["sampler"] or SAMPLER_NAMES[0]
    if values.get("scheduler"):
        fields["scheduler"] = values["scheduler"]
    if "cfg" in values:
        fields["cfg_scale"] = as_number(values["cfg"], "CFG scale")
    if "width" in values:
        fields["width"] = as_int(values["width"], "Width")
        fields["height"] = as_int(values["height"], "Height")
    if "batch_count" in values:
        fields["batch_count"] = as_int(values["batch_count"], "Batch count")
        fields["batch_size"] = as_int(values["batch_size"], "Batch size")
    if "strength" in values:
        fields["denoising_strength"] = as_number(values["strength"], "Denoising strength")
    if "resize_mode" in values:
        fields["resize_mode"] = values["resize_mode"]
    if "noise_level" in values:
        fields["noise_level"] = as_int(values["noise_level"], "Noise level")
    if values.get("upscaler"):
        fields["upscaler"] = values["upscaler"]
    if "upscale_mode" in values:
        fields.update(upscale_size_fields(values))
    if "tiling" in values:
        fields["tiling"] = bool(values["tiling"])
    if values.get("hr_enable"):
        fields.update(hires_request_fields(values))
    if values.get("styles"):
        fields["styles"] = list(values["styles"])
    if values.get("overrides"):
        fields.update(override_fields(values["overrides"]))
    if checkpoint:
        fields["checkpoint"] = checkpoint
    if vae:
        fields["vae"] = vae
    return fields


def hires_request_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The Hires. fix controls' values as request fields (the hires sampler, schedule and prompts only when set)."""
    sampler = values.get("hr_sampler")
    scheduler = values.get("hr_scheduler")
    return {
        "enable_hr": True,
        "hr_scale": as_number(values.get("hr_scale"), "Upscale by"),
        "hr_upscaler": values.get("hr_upscaler") or "Latent",
        "hr_second_pass_steps": as_int(values.get("hr_steps"), "Hires steps"),
        "denoising_strength": as_number(values.get("hr_denoise"), "Denoising strength"),
        "hr_resize_x": as_int(values.get("hr_resize_x") or 0, "Resize width to"),
        "hr_resize_y": as_int(values.get("hr_resize_y") or 0, "Resize height to"),
        "hr_sampler_name": None if not sampler or sampler == HR_SAME_SAMPLER else sampler,
        "hr_scheduler": None if not scheduler or scheduler == HR_SAME_SCHEDULER else scheduler,
        "hr_prompt": values.get("hr_prompt") or "",
        "hr_negative_prompt": values.get("hr_negative") or "",
    }


def upscale_size_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The Upscale tab's size: "Scale by" a factor, or "Scale to" a width x height (cropped to it when asked)."""
    if values.get("upscale_mode") == UPSCALE_TO:
        return {
            "upscale_width": as_int(values.get("upscale_width"), "Width"),
            "upscale_height": as_int(values.get("upscale_height"), "Height"),
            "upscale_crop": bool(values.get("upscale_crop", True)),
        }
    return {"upscale_scale": as_number(values.get("upscale_scale"), "Scale")}


def remembered_values(values: dict[str, Any]) -> dict[str, Any]:
    """The part of a form worth keeping across restarts (no images)."""

    def plain(value: Any) -> bool:
        if isinstance(value, list):
            return all(isinstance(item, str) for item in value)
        return isinstance(value, (str, int, float, type(None)))

    return {k: v for k, v in values.items() if k in REMEMBERED and plain(v)}


def wire_generate(
    ctx: UiContext,
    form: GenerationForm,
    panel: ResultPanel,
    *,
    image_fields: dict[str, Any] | None = None,
    extra_outputs: list[Any] | None = None,
    extra_values: Any = None,
    more_fields: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Connect Generate: read the form, build the request, follow the job and fill the result panel.

    ``image_fields`` maps request field names (``init_image``, ``image``) to image components;
    ``more_fields(values)`` adds the request fields a tab reads from its own values (Inpaint's picture and mask);
    ``extra_values(view)`` gives the values of ``extra_outputs`` for the final view (e.g. the before/after
    slider). All Generate events share one ``concurrency_id`` with a limit above the manager's queue size.
    """
    named = form.value_components()
    image_fields = image_fields or {}
    extra_outputs = extra_outputs or []
    inputs = {ctx.session, ctx.model_select, ctx.vae_select, *named.values(), *image_fields.values()}
    outputs = [panel.gallery, panel.progress, panel.info, *extra_outputs]

    async def generate(data: dict[Any, Any]) -> AsyncIterator[list[Any]]:
        values = {name: data[component] for name, component in named.items()}
        fields = request_fields(form.task or form.tab, values, data[ctx.model_select], data[ctx.vae_select])
        for name, component in image_fields.items():
            fields[name] = data[component]
        if more_fields is not None:
            fields.update(more_fields(values))
        request = create_request(**fields)
        session: SessionJobs = data[ctx.session]
        await asyncio.to_thread(ctx.store.save_last_values, form.tab, remembered_values(values))
        try:
            async for view in follow_job(ctx.manager, request, session, form.tab):
                if view.result is None:
                    # selected_index=0 keeps the gallery in its large single-image view (a new value resets it to
                    # the thumbnail grid, where a wide image would sit in a square cell).
                    gallery = (
                        gr.Gallery(value=[view.preview], selected_index=0) if view.preview is not None else gr.skip()
                    )
                    yield [gallery, view.progress, gr.skip(), *[gr.skip()] * len(extra_outputs)]
                else:
                    extras = list(extra_values(view)) if extra_values else [gr.skip()] * len(extra_outputs)
                    gallery = gr.Gallery(value=gallery_items(view.result), selected_index=0)
                    yield [gallery, view.progress, info_html(view.result, 0), *extras]
        except gr.Error:
            raise
        except Exception as exc:  # never a traceback in the browser
            raise unexpected_error(exc) from None

    event = form.actions.generate.click(
        generate,
        inputs=inputs,
        outputs=outputs,
        concurrency_id=GENERATE_CONCURRENCY_ID,
        concurrency_limit=ctx.concurrency_limit,
        show_progress="hidden",
    )
    if ctx.status_bar is not None:
        event.then(
            lambda: status_html(ctx.manager, ctx.settings), outputs=ctx.status_bar, queue=False, show_progress="hidden"
        )
    wire_stop(form.actions.stop, ctx, form.tab)
    if form.sampler.preset is not None:
        wire_presets(ctx, form)


def chosen_preset(name: str | None, settings: Settings) -> Any:
    """The preset called ``name`` (``Standard`` with the Settings' default sampler and steps)."""
    return preset_for(name or STANDARD_PRESET, settings.default_sampler, settings.default_steps)


def automatic_preset(manager: Any, settings: Settings, prompt: str | None, checkpoint: str | None,
                     current: str | None, last_key: str | None) -> tuple[Any, str, str | None] | None:
    """What the preset menu does when the checkpoint or the prompt changes: ``(preset, note, key)`` to apply, or
    None to leave everything as it is.

    A few-step model found (``manager.suggest_preset``) that was not found before: its preset, said in the note. The
    same finding again: nothing (the user may have chosen otherwise since). The model gone while its preset is still
    chosen: ``Standard`` again, said so."""
    try:
        choice = manager.suggest_preset(checkpoint, prompt or "")
    except Exception as exc:  # a lookup must never break typing in the prompt box
        log.debug("preset suggestion failed: %s", exc)
        return None
    key = choice.key if choice is not None else None
    if key == last_key:
        return None
    if choice is not None:
        return choice.preset, choice.message, key
    if last_key is not None and current == last_key.split("|", 1)[0]:
        return (standard_preset(settings.default_sampler, settings.default_steps),
                "Standard again: the few-step model that chose the preset is no longer in use.", None)
    return None


def wire_presets(ctx: UiContext, form: GenerationForm) -> None:
    """The preset menu sets the sampler, schedule, steps and CFG; a checkpoint or prompt LoRA that is a few-step
    model chooses its preset by itself (said under the menu); the user can pick any other afterwards."""
    controls = form.sampler
    targets = [controls.sampler, controls.scheduler, controls.steps, controls.cfg]
    last_key = gr.State(None)

    def pick(name: str | None) -> list[Any]:
        return [*preset_updates(chosen_preset(name, ctx.settings)), ""]

    controls.preset.input(pick, inputs=controls.preset, outputs=[*targets, controls.preset_note], queue=False,
                          show_progress="hidden")

    def auto(prompt: str | None, checkpoint: str | None, current: str | None, last: str | None) -> list[Any]:
        found = automatic_preset(ctx.manager, ctx.settings, prompt, checkpoint, current, last)
        if found is None:
            return [gr.skip()] * (len(targets) + 3)
        preset, note, key = found
        return [preset.name, *preset_updates(preset), preset_note_html(note), key]

    inputs = [form.prompts.prompt, ctx.model_select, controls.preset, last_key]
    outputs = [controls.preset, *targets, controls.preset_note, last_key]
    for component in (form.prompts.prompt, ctx.model_select):
        component.change(auto, inputs=inputs, outputs=outputs, queue=False, show_progress="hidden",
                         trigger_mode="always_last")
