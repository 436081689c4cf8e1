"""Settings: memory mode, cache sizes, default sampler/steps, xformers, the fast path, the speed-ups that change
pixels (DeepCache, token merging) and the prompt's clip skip and emphasis; saved to
``settings.json`` and applied without a restart where the manager can. Fields given on the command line are
shown locked: a flag always wins over a saved value."""

from __future__ import annotations

import html
import importlib.util
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.errors import AtelierError
from pipelines.prompt_encoding import EMPHASIS_MODES
from pipelines.request import MAX_CLIP_SKIP, MAX_STEPS
from pipelines.samplers import SAMPLER_NAMES
from pipelines.settings import DEEP_CACHE_INTERVALS, MAX_THREADS, MEMORY_MODES, TOKEN_MERGING_MAX, physical_cores

from .common import UiContext, styles_file_path
from .controls import labelled_number, labelled_slider
from .jobs import user_error
from .persist import SettingsFile
from .status import status_html

CLI_NOTE = "Set on the command line for this run (a flag wins over the saved value)."
EDITABLE = ("memory_mode", "vram_slots", "ram_slots", "default_sampler", "default_steps", "xformers", "fast",
            "deep_cache", "deep_cache_interval", "token_merging", "fast_decode", "threads", "clip_skip", "emphasis")
INT_FIELDS = ("vram_slots", "ram_slots", "default_steps", "deep_cache_interval", "threads", "clip_skip")
FLOAT_FIELDS = ("token_merging",)


@dataclass
class SettingsTab:
    fields: dict[str, Any]
    save: gr.Button
    result: gr.HTML


def xformers_available(manager: Any) -> bool:
    """Whether xformers can be switched on: the manager says so, or the package is installed."""
    try:
        return manager.status().xformers_available
    except Exception:
        return importlib.util.find_spec("xformers") is not None


def collect_changes(settings: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The editable fields whose form value differs from the running settings (ints kept as ints)."""
    changes = {}
    for name, value in values.items():
        if name not in EDITABLE or name in settings.from_cli or value is None:
            continue
        if name in INT_FIELDS:
            value = int(value)
        elif name in FLOAT_FIELDS:
            value = float(value)
        if value != getattr(settings, name):
            changes[name] = value
    return changes


def save_settings(manager: Any, settings: Any, store: SettingsFile, values: dict[str, Any]) -> str:
    """Apply the changed fields live through the manager, update ``settings`` and write the file.

    Returns a short HTML report; ``AtelierError`` from the manager or the file write propagates.
    """
    changes = collect_changes(settings, values)
    applied = list(manager.apply_settings(dict(changes)) or []) if changes else []
    settings.update(changes)
    path = store.save_settings()
    lines = [f"Saved to {path}."]
    if not changes:
        lines.append("Nothing changed.")
    applied_now = [name for name in changes if name in applied]
    later = [name for name in changes if name not in applied]
    if applied_now:
        lines.append("Applied now: " + ", ".join(applied_now) + ".")
    if later:
        lines.append("Takes effect at the next start: " + ", ".join(later) + ".")
    return "<br>".join(html.escape(line) for line in lines)


def build_settings_tab(ctx: UiContext) -> SettingsTab:
    """Lay out the Settings tab inside the current ``gr.Tab``."""
    settings = ctx.settings

    def locked(name: str) -> dict[str, Any]:
        return {"interactive": False, "info": CLI_NOTE} if name in settings.from_cli else {}

    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            gr.Markdown("### Memory and speed")
            memory_mode = gr.Dropdown(
                list(MEMORY_MODES),
                value=settings.memory_mode,
                label="Memory mode",
                elem_id="settings-memory-mode",
                **(
                    {
                        "info": "auto picks the fastest mode that fits; full → sliced → offload → sequential → cpu "
                        "trade speed for memory."
                    }
                    | locked("memory_mode")
                ),
            )
            with gr.Row():
                vram_slots = labelled_number(
                    value=settings.vram_slots,
                    precision=0,
                    minimum=0,
                    maximum=16,
                    label="Checkpoints kept on the GPU",
                    elem_id="settings-vram-slots",
                    **locked("vram_slots"),
                )
                ram_slots = labelled_number(
                    value=settings.ram_slots,
                    precision=0,
                    minimum=0,
                    maximum=32,
                    label="Checkpoints kept in RAM (0: by RAM size)",
                    elem_id="settings-ram-slots",
                    **locked("ram_slots"),
                )
            can_xformers = xformers_available(ctx.manager)
            xformers_note = "Memory-efficient attention on NVIDIA." if can_xformers else "xformers is not installed."
            xformers = gr.Checkbox(
                value=settings.xformers,
                label="xformers attention",
                elem_id="settings-xformers",
                **({"info": xformers_note} | ({} if can_xformers else {"interactive": False}) | locked("xformers")),
            )
            fast = gr.Checkbox(
                value=settings.fast,
                label="Fast path (same pictures, faster: compiled on NVIDIA, OpenVINO on a CPU)",
                elem_id="settings-fast",
                **({"info": "The first image after switching it on prepares the model (minutes, once per "
                            "checkpoint; cached for later starts). On a CPU it keeps a second copy of the UNet "
                            "and VAE decoder in RAM (+3.4 GB for SD 1.5)."} | locked("fast")),
            )
            threads = labelled_number(
                value=settings.threads,
                precision=0,
                minimum=0,
                maximum=MAX_THREADS,
                label=f"CPU threads (0: all physical cores, {physical_cores()} here)",
                elem_id="settings-threads",
                **({"info": "For torch and OpenVINO (--fast on a CPU). More threads than physical cores is usually "
                            "slower."} | locked("threads")),
            )
            gr.Markdown("### Speed-ups that change the picture slightly",
                        elem_id="settings-speedups-heading")
            deep_cache = gr.Checkbox(
                value=settings.deep_cache,
                label="DeepCache (reuses deep UNet features between steps; 2-3x faster, small changes)",
                elem_id="settings-deep-cache",
                info="Written into the image's parameters as 'DeepCache: interval n'.",
            )
            deep_cache_interval = labelled_slider(
                DEEP_CACHE_INTERVALS[0],
                DEEP_CACHE_INTERVALS[1],
                value=settings.deep_cache_interval,
                step=1,
                label="DeepCache interval (every n-th step runs the whole UNet; higher = faster, more change)",
                elem_id="settings-deep-cache-interval",
            )
            token_merging = labelled_slider(
                0.0,
                TOKEN_MERGING_MAX,
                value=settings.token_merging,
                step=0.05,
                label="Token merging ratio (0 = off; helps most at large sizes, small changes)",
                elem_id="settings-token-merging",
                info="Written into the image's parameters as 'Token merging ratio', as A1111 does.",
            )
            fast_decode = gr.Checkbox(
                value=settings.fast_decode,
                label="Fast decode (TAESD): the tiny autoencoder makes the final picture (several times faster to "
                "decode; softer detail, slightly different colours)",
                elem_id="settings-fast-decode",
                info="Needs taesd_decoder / taesdxl_decoder (.pth or .safetensors) in models/VAE-approx; written into "
                "the image's parameters as 'VAE: taesd'. Live previews use TAESD whenever the file is there.",
            )
        with gr.Column(scale=1):
            gr.Markdown("### Defaults")
            default_sampler = gr.Dropdown(
                list(SAMPLER_NAMES),
                value=settings.default_sampler if settings.default_sampler in SAMPLER_NAMES else SAMPLER_NAMES[0],
                label="Default sampler",
                elem_id="settings-default-sampler",
                **locked("default_sampler"),
            )
            default_steps = labelled_slider(
                1,
                MAX_STEPS,
                value=settings.default_steps,
                step=1,
                label="Default steps",
                elem_id="settings-default-steps",
                **locked("default_steps"),
            )
            gr.Markdown("### Prompt")
            clip_skip = labelled_slider(
                1,
                MAX_CLIP_SKIP,
                value=settings.clip_skip,
                step=1,
                label="Clip skip",
                elem_id="settings-clip-skip",
                info="A1111's CLIP_stop_at_last_layers: 1 uses CLIP's last layer; 2 is what many anime models expect. "
                "Written into the image's parameters as 'Clip skip: 2'.",
            )
            emphasis = gr.Dropdown(
                list(EMPHASIS_MODES),
                value=settings.emphasis if settings.emphasis in EMPHASIS_MODES else EMPHASIS_MODES[0],
                label="Emphasis",
                elem_id="settings-emphasis",
                info="How (word:1.2) weights apply. Original: A1111's default; No norm: without restoring the mean; "
                "Ignore: brackets parsed, weights left out; None: brackets are plain text.",
            )
            gr.Markdown("### Folders")
            gr.Textbox(
                value=str(settings.outputs_dir),
                label="Outputs folder",
                interactive=False,
                elem_id="settings-outputs-dir",
                info="Change it with --outputs-dir." if "outputs_dir" not in settings.from_cli else CLI_NOTE,
            )
            gr.Textbox(
                value=str(settings.models_dir), label="Models folder", interactive=False, elem_id="settings-models-dir"
            )
            gr.Textbox(value=str(ctx.store.path), label="Settings file", interactive=False, elem_id="settings-file")
            gr.Textbox(
                value=str(styles_file_path(settings) or ""), label="Styles file", interactive=False,
                elem_id="settings-styles-file",
                info="A1111's styles.csv (name,prompt,negative_prompt); change it with --styles-file.",
            )
    with gr.Row():
        save = gr.Button("Save settings", variant="primary", elem_id="settings-save", scale=0, min_width=200)
        result = gr.HTML("", elem_id="settings-result", js_on_load=None)

    fields = {
        "memory_mode": memory_mode,
        "vram_slots": vram_slots,
        "ram_slots": ram_slots,
        "xformers": xformers,
        "fast": fast,
        "deep_cache": deep_cache,
        "deep_cache_interval": deep_cache_interval,
        "token_merging": token_merging,
        "fast_decode": fast_decode,
        "threads": threads,
        "default_sampler": default_sampler,
        "default_steps": default_steps,
        "clip_skip": clip_skip,
        "emphasis": emphasis,
    }

    def on_save(data: dict[Any, Any]) -> str:
        values = {name: data[component] for name, component in fields.items()}
        try:
            return save_settings(ctx.manager, settings, ctx.store, values)
        except AtelierError as exc:
            raise user_error(exc) from None

    event = save.click(on_save, inputs=set(fields.values()), outputs=result)
    if ctx.status_bar is not None:
        event.then(
            lambda: status_html(ctx.manager, settings), outputs=ctx.status_bar, queue=False, show_progress="hidden"
        )
    return SettingsTab(fields, save, result)
