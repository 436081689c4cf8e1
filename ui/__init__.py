"""The studio in the browser: one Gradio Blocks page with the Text to Image, Image to Image, Inpaint, Upscale 4x,
PNG Info and Settings tabs, the model pickers, the extra-networks panel and the status bar.

``build_ui(manager, settings)`` is all app.py calls. The UI never touches torch: every tab builds a
``GenerationRequest`` and follows the manager's job; element ids and tab labels are DESIGN.md's, exactly.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from pipelines.errors import AtelierError
from pipelines.settings import Settings

from .common import OVERRIDE_KEYS, ResultPanel, UiContext, count_tokens, is_local_request, override_chips
from .hires import hires_upscaler_choices
from .img2img import Img2ImgTab, build_img2img_tab, fit_size
from .inpaint import InpaintTab, build_inpaint_tab
from .jobs import SessionJobs, last_request, selected_image, user_error
from .networks import NetworksPanel, build_networks_panel, wire_networks_panel
from .persist import SettingsFile
from .pnginfo import build_pnginfo_tab
from .settings_tab import build_settings_tab
from .status import STATUS_REFRESH_S, status_html
from .txt2img import Txt2ImgTab, build_txt2img_tab
from .upscale import UpscaleTab, build_upscale_tab, default_upscaler, installed_upscaler_count, upscaler_choices

__all__ = ["build_ui", "UI_CSS"]

log = logging.getLogger(__name__)

UI_DIR = Path(__file__).resolve().parent
UI_CSS = (UI_DIR / "style.css").read_text(encoding="utf-8")
AUTOMATIC_VAE = "Automatic"
TAB_LABELS = {
    "txt2img": "Text to Image",
    "img2img": "Image to Image",
    "inpaint": "Inpaint",
    "upscale": "Upscale 4x",
    "pnginfo": "PNG Info",
    "settings": "Settings",
}

# Runs once per page load: adds our stylesheet (works whether app.py uses launch() or mounts the Blocks) and
# Ctrl+Enter (Cmd+Enter on macOS) in a prompt box clicks that tab's Generate button.
CLIENT_JS = """
() => {
  if (window.__atelierReady) return;
  window.__atelierReady = true;
  const style = document.createElement("style");
  style.id = "atelier-style";
  style.textContent = __CSS__;
  document.head.appendChild(style);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const box = event.target.closest && event.target.closest('[id$="-prompt"], [id$="-negative"]');
    if (!box) return;
    const prefix = box.id.replace(/-(prompt|negative)$/, "");
    // a tab's own boxes (txt2img-prompt) and those of its sections (txt2img-hr-prompt): the tab's Generate
    const button = document.getElementById(prefix + "-generate") ||
      document.getElementById(prefix.split("-")[0] + "-generate");
    if (button) { event.preventDefault(); button.click(); }
  }, true);
}
"""


def build_ui(manager: Any, settings: Settings) -> gr.Blocks:
    """Build the whole page for ``manager`` (a ``PipelineManager``) and ``settings``; app.py launches it."""
    store = SettingsFile(settings)
    # Load the tokenizer now, in the background, so that the first keystroke's "n/75" does not wait for it.
    threading.Thread(target=count_tokens, args=("warm up", manager), name="tokenizer-warm-up", daemon=True).start()
    # Gallery entries are the saved PNGs (Download then gives the file with its parameters); outputs may live
    # outside the working folder (--outputs-dir), so Gradio is told it may serve them.
    gr.set_static_paths([str(Path(settings.outputs_dir))])
    with gr.Blocks(title="Atelier", analytics_enabled=False, fill_width=True) as blocks:
        session = gr.State(SessionJobs())
        with gr.Row(equal_height=True, elem_id="atelier-header"):
            model_select, model_refresh, vae_select = _build_model_pickers(manager, settings)
            with gr.Column(scale=5, min_width=300, elem_id="status-column"):
                status_bar = gr.HTML(status_html(manager, settings), elem_id="status-bar", js_on_load=None)
        ctx = UiContext(manager, settings, store, session, model_select, vae_select, status_bar=status_bar)
        # Above the tab strip, so that the prompt a card writes into stays in view just below it.
        networks = build_networks_panel(manager, settings)
        with gr.Tabs(elem_id="atelier-tabs") as tabs:
            ctx.tabs = tabs
            with gr.Tab(TAB_LABELS["txt2img"], id="txt2img", elem_id="tab-txt2img"):
                txt2img = build_txt2img_tab(ctx)
            with gr.Tab(TAB_LABELS["img2img"], id="img2img", elem_id="tab-img2img"):
                img2img = build_img2img_tab(ctx)
            with gr.Tab(TAB_LABELS["inpaint"], id="inpaint", elem_id="tab-inpaint"):
                inpaint = build_inpaint_tab(ctx)
            with gr.Tab(TAB_LABELS["upscale"], id="upscale", elem_id="tab-upscale"):
                upscale = build_upscale_tab(ctx)
            with gr.Tab(TAB_LABELS["pnginfo"], id="pnginfo", elem_id="tab-pnginfo"):
                build_pnginfo_tab(ctx, txt2img)
            with gr.Tab(TAB_LABELS["settings"], id="settings", elem_id="tab-settings"):
                build_settings_tab(ctx)
        wire_networks_panel(networks, txt2img.form.prompts.prompt, img2img.form.prompts.prompt,
                            inpaint.form.prompts.prompt)
        _wire_send_buttons(ctx, txt2img, img2img, upscale, inpaint)
        _wire_model_pickers(ctx, model_refresh, upscale, networks, txt2img)
        gr.Timer(STATUS_REFRESH_S).tick(
            lambda: status_html(manager, settings), outputs=status_bar, queue=False, show_progress="hidden"
        )
        _wire_local_buttons(blocks, ctx)
        blocks.load(None, js=CLIENT_JS.replace("__CSS__", json.dumps(UI_CSS)))
    return blocks


def _wire_local_buttons(blocks: gr.Blocks, ctx: UiContext) -> None:
    """ "Open outputs folder" only makes sense when the browser runs on this machine."""

    def show(request: gr.Request) -> list[Any]:
        return [gr.Button(visible=is_local_request(request)) for _ in ctx.local_only_buttons]

    blocks.load(show, outputs=ctx.local_only_buttons, queue=False, show_progress="hidden")


# --------------------------------------------------------------------------------------------- model pickers


def checkpoint_names(manager: Any) -> list[str]:
    """Checkpoint names for ``model-select`` (names, not titles: titles would hash every file at start-up)."""
    try:
        return [info.name for info in manager.checkpoints()]
    except Exception as exc:
        log.warning("Could not list checkpoints: %s", exc)
        return []


def vae_names(manager: Any) -> list[str]:
    """``vae-select`` choices: "Automatic" (the checkpoint's own VAE) then the files of models/vae/."""
    try:
        return [AUTOMATIC_VAE, *(info.name for info in manager.vaes())]
    except Exception as exc:
        log.warning("Could not list VAEs: %s", exc)
        return [AUTOMATIC_VAE]


def default_checkpoint_name(manager: Any, names: list[str]) -> str | None:
    try:
        info = manager.default_checkpoint()
    except Exception:
        info = None
    if info is not None and getattr(info, "name", None) in names:
        return info.name
    return names[0] if names else None


def _build_model_pickers(manager: Any, settings: Settings) -> tuple[gr.Dropdown, gr.Button, gr.Dropdown]:
    names = checkpoint_names(manager)
    vaes = vae_names(manager)
    with gr.Column(scale=3, min_width=240):
        model_select = gr.Dropdown(
            names,
            value=default_checkpoint_name(manager, names),
            label="Checkpoint",
            elem_id="model-select",
            info=None if names else "No checkpoint found: put one in models/checkpoints/ and press ↻.",
        )
    model_refresh = gr.Button("↻", elem_id="model-refresh", scale=0, min_width=44, elem_classes="tool-button")
    with gr.Column(scale=2, min_width=180):
        vae_value = settings.vae if settings.vae in vaes else AUTOMATIC_VAE
        vae_select = gr.Dropdown(vaes, value=vae_value, label="VAE", elem_id="vae-select")
    return model_select, model_refresh, vae_select


def _wire_model_pickers(ctx: UiContext, refresh: gr.Button, upscale: UpscaleTab, networks: NetworksPanel,
                        txt2img: Txt2ImgTab) -> None:
    manager = ctx.manager

    def choose_checkpoint(name: str | None) -> None:
        if not name:
            return
        try:
            manager.set_default_checkpoint(name)
        except AtelierError as exc:
            raise user_error(exc) from None

    def choose_vae(name: str | None) -> None:
        try:
            manager.set_default_vae(name or AUTOMATIC_VAE)
        except AtelierError as exc:
            raise user_error(exc) from None

    def rescan(current_model: str | None, current_vae: str | None, current_upscaler: str | None,
               current_hires: str | None) -> list[Any]:
        try:
            manager.refresh_models()
        except AtelierError as exc:
            raise user_error(exc) from None
        names, vaes, upscalers = checkpoint_names(manager), vae_names(manager), upscaler_choices(manager)
        hires = hires_upscaler_choices(manager)
        gr.Info(f"Found {len(names)} checkpoint(s), {len(vaes) - 1} VAE(s), "
                f"{installed_upscaler_count(manager)} upscaler(s).")
        return [
            gr.Dropdown(
                choices=names,
                value=current_model if current_model in names else default_checkpoint_name(manager, names),
            ),
            gr.Dropdown(choices=vaes, value=current_vae if current_vae in vaes else AUTOMATIC_VAE),
            gr.Dropdown(
                choices=upscalers,
                value=current_upscaler if current_upscaler in upscalers else default_upscaler(manager),
            ),
            gr.Dropdown(choices=hires, value=current_hires if current_hires in hires else hires[0] if hires else None),
        ]

    def relist_cards() -> str:
        """The extra-networks cards again: which of them fit depends on the checkpoint, and ↻ found new files."""
        networks.shelf.reload()
        return networks.shelf.html()

    for event in (
        ctx.model_select.input(choose_checkpoint, inputs=ctx.model_select, show_progress="hidden"),
        refresh.click(
            rescan,
            inputs=[ctx.model_select, ctx.vae_select, upscale.upscaler, txt2img.hires.upscaler],
            outputs=[ctx.model_select, ctx.vae_select, upscale.upscaler, txt2img.hires.upscaler],
        ),
    ):
        event.success(relist_cards, outputs=networks.cards, queue=False, show_progress="hidden")
    ctx.vae_select.input(choose_vae, inputs=ctx.vae_select, show_progress="hidden")


# --------------------------------------------------------------------------------------------- send to …


def _image_size(image: Any) -> tuple[int, int] | None:
    try:
        if isinstance(image, Image.Image):
            return image.size
        with Image.open(image) as opened:
            return opened.size
    except Exception:
        return None


def _styles_of(request: Any) -> list[Any]:
    """The styles picker and the "Override settings" chips of a request sent on to Image to Image."""
    if request is None or request.task == "upscale":
        return [gr.skip(), gr.skip()]
    given = {key: getattr(request, field) for key, field in OVERRIDE_KEYS.items()}
    chips = override_chips(given)
    return [list(request.styles), gr.Dropdown(choices=chips, value=chips, visible=bool(chips))]


def _wire_send_buttons(ctx: UiContext, txt2img: Txt2ImgTab, img2img: Img2ImgTab, upscale: UpscaleTab,
                       inpaint: InpaintTab) -> None:
    """Send the selected image (and its prompts) from one result panel to Image to Image, Inpaint or Upscale 4x."""
    up_form = upscale.form

    def redraw_outputs(form: Any, picture: Any, styles: Any) -> list[Any]:
        """What a picture sent on to a redrawing tab (Image to Image, Inpaint) fills there."""
        return [picture, form.prompts.prompt, form.prompts.negative, form.sampler.sampler, form.sampler.steps,
                form.sampler.cfg, form.size.width, form.size.height, styles.styles, styles.overrides, ctx.tabs]

    to_redraw = {"img2img": redraw_outputs(img2img.form, img2img.init_image, img2img.styles),
                 "inpaint": redraw_outputs(inpaint.form, inpaint.editor, inpaint.styles)}
    to_upscale = [upscale.input_image, up_form.prompts.prompt, up_form.prompts.negative, ctx.tabs]

    def send_redraw_for(tab: str, target: str):
        def send(gallery_value: Any, session: SessionJobs) -> list[Any]:
            image = selected_image(gallery_value, session, tab)
            request = last_request(session, tab)
            keep = gr.skip()
            # a tab → itself keeps what the user may have edited since; other tabs bring their prompts along,
            # and txt2img its sampler settings too (the x4 upscaler's are not meant for img2img).
            same_tab = tab == target or request is None
            prompts = [keep, keep] if same_tab else [request.prompt, request.negative_prompt]
            sampling = (
                [request.sampler, request.steps, request.cfg_scale]
                if request is not None and request.task == "txt2img"
                else [keep] * 3
            )
            size = _image_size(image)
            width, height = fit_size(*size) if size and ctx.settings.send_size else (keep, keep)  # A1111's send_size
            # The prompts come with the styles and overrides they were made with (the prompt is the one typed).
            styles = [keep, keep] if same_tab else _styles_of(request)
            return [image, *prompts, *sampling, width, height, *styles, gr.Tabs(selected=target)]

        return send

    def send_upscale_for(tab: str):
        def send(gallery_value: Any, session: SessionJobs) -> list[Any]:
            image = selected_image(gallery_value, session, tab)
            request = last_request(session, tab)
            prompts = [request.prompt, request.negative_prompt] if request is not None else [gr.skip()] * 2
            return [image, *prompts, gr.Tabs(selected="upscale")]

        return send

    panels: dict[str, ResultPanel] = {"txt2img": txt2img.panel, "img2img": img2img.panel, "inpaint": inpaint.panel,
                                      "upscale": upscale.panel}
    for tab, panel in panels.items():
        for target, button in panel.send_buttons.items():
            if target == "upscale":
                handler, outputs = send_upscale_for(tab), to_upscale
            else:
                handler, outputs = send_redraw_for(tab, target), to_redraw[target]
            button.click(handler, inputs=[panel.gallery, ctx.session], outputs=outputs, queue=False)
