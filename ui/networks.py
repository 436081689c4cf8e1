"""The extra-networks panel (``elem_id`` ``extra-networks``): a card per LoRA and per textual-inversion embedding, with
A1111's preview image (``<name>.preview.png`` beside the file) when there is one. A click adds ``<lora:name:1>`` or
the embedding's name to the prompt of the tab in use (Text to Image or Image to Image); a second click on the same
card takes it out again, as A1111's cards do. Cards made for another model than the current checkpoint are shown
dimmed and say why instead of adding anything.

The panel sits above the tab strip, so that the prompt it writes into stays in view below it. The browser says which
tab is showing; the server keeps the cards (``NetworkShelf``) and edits the prompt, so the logic is plain Python.
"""

from __future__ import annotations

import html
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr

from pipelines.errors import AtelierError
from pipelines.registry import FAMILY_GROUP, NETWORK_GROUP_LABELS

from .jobs import user_error

log = logging.getLogger(__name__)

# A1111's preview names (modules/ui_extra_networks.py ``find_preview``): "<name>.preview.<ext>", then "<name>.<ext>".
PREVIEW_SUFFIXES = tuple(f"{middle}.{ext}" for middle in (".preview", "") for ext in ("png", "jpg", "jpeg", "webp"))
GENERATION_TABS = {"txt2img": "Text to Image", "img2img": "Image to Image", "inpaint": "Inpaint"}
DEFAULT_TAB = "txt2img"
LORA_TAG = re.compile(r"<(?:lora|lyco):([^:>]+)(?::[^>]*)?>")
HINT = "Click a card to add it to the prompt; click it again to take it out."

# Runs when the cards are first shown. Clicks: one listener for every card, present and future (a refresh re-renders
# them); the browser knows which tab is showing, the server edits that tab's prompt. The filter box hides the cards
# whose name lacks a word typed, in the browser (no round trip per key), and again after the cards are re-rendered.
CARDS_JS = """
const filter = () => {
  const box = document.querySelector('#extra-networks-search textarea, #extra-networks-search input');
  const words = (box ? box.value : '').toLowerCase().split(/\\s+/).filter(Boolean);
  document.querySelectorAll('#extra-networks-cards .network-section').forEach((section) => {
    let shown = 0;
    section.querySelectorAll('.network-card').forEach((card) => {
      card.hidden = !words.every((word) => card.dataset.search.includes(word));
      shown += card.hidden ? 0 : 1;
    });
    const none = section.querySelector('.network-none-match');
    if (none) none.hidden = shown > 0 || words.length === 0;
  });
};
if (!window.__atelierNetworkFilter) {
  window.__atelierNetworkFilter = true;
  document.addEventListener('input', (event) => {
    if (event.target.closest && event.target.closest('#extra-networks-search')) filter();
  }, true);
}
watch('value', filter);
element.addEventListener('click', (event) => {
  const card = event.target.closest('.network-card');
  if (!card || !element.contains(card)) return;
  const showing = (id) => { const tab = document.getElementById(id); return !!tab && tab.offsetParent !== null; };
  const tab = showing('tab-inpaint') ? 'inpaint' : showing('tab-img2img') ? 'img2img'
    : showing('tab-txt2img') ? 'txt2img' : '';
  trigger('click', {key: card.dataset.key, tab: tab});
});
"""


# --------------------------------------------------------------------------------------------- the cards


@dataclass(frozen=True)
class NetworkCard:
    """One LoRA or embedding as the panel shows it."""

    kind: str  # "lora" or "embedding"
    name: str
    insert: str  # what a click adds to the prompt
    preview: Path | None = None
    detail: str = ""  # a short line under the name (the model the LoRA is for, the embedding's vectors)
    problem: str = ""  # why it cannot be used with the current checkpoint ("" when it can)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


def find_preview(path: Path) -> Path | None:
    """A1111's preview image beside a model file: ``<name>.preview.png`` (or .jpg/.jpeg/.webp), else
    ``<name>.png`` and the like; None when there is none."""
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def lora_cards(manager: Any) -> list[NetworkCard]:
    """A card per installed LoRA; one made for another model group than the default checkpoint's says so."""
    try:
        infos = list(manager.loras())
    except Exception as exc:  # a broken models folder must not stop the page
        log.warning("Could not list LoRAs: %s", exc)
        return []
    group = _checkpoint_group(manager)
    cards = []
    for info in infos:
        made_for = getattr(info, "family", None)
        detail = NETWORK_GROUP_LABELS.get(made_for, "") if made_for else ""
        problem = getattr(info, "problem", None) or ""
        if not problem and group and made_for and made_for != group:
            problem = (f"{info.name} is made for {NETWORK_GROUP_LABELS.get(made_for, made_for)} checkpoints; the "
                       f"current checkpoint is {NETWORK_GROUP_LABELS.get(group, group)}.")
        cards.append(NetworkCard("lora", info.name, f"<lora:{info.name}:1>", find_preview(info.path), detail, problem))
    return sorted(cards, key=lambda card: card.name.lower())


def embedding_cards(manager: Any) -> list[NetworkCard]:
    """A card per embedding file: those the current checkpoint can use, those made for another model (dimmed) and
    files that are not embeddings (dimmed, with the reason)."""
    try:
        report = manager.embeddings()
    except Exception as exc:
        log.warning("Could not list embeddings: %s", exc)
        return []
    cards = []
    for name, embedding in report.loaded.items():
        cards.append(NetworkCard("embedding", name, name, find_preview(embedding.path), _vectors(embedding)))
    for name, embedding in report.skipped.items():
        width = "+".join(str(w) for w in embedding.widths)
        problem = f"{name} is made for another model (vectors {width} wide) than the current checkpoint."
        cards.append(NetworkCard("embedding", name, name, find_preview(embedding.path), _vectors(embedding), problem))
    for name, reason in report.skipped_reasons.items():
        cards.append(NetworkCard("embedding", name, name, None, "unreadable", f"{name} cannot be used: {reason}"))
    return sorted(cards, key=lambda card: card.name.lower())


def network_cards(manager: Any) -> list[NetworkCard]:
    """Every card of the panel: the LoRAs, then the embeddings."""
    return [*lora_cards(manager), *embedding_cards(manager)]


def _vectors(embedding: Any) -> str:
    count = int(embedding.vector_count)
    return f"{count} vector{'s' if count != 1 else ''}"


def _checkpoint_group(manager: Any) -> str | None:
    try:
        info = manager.default_checkpoint()
    except Exception:
        return None
    return FAMILY_GROUP.get(getattr(info, "family", None) or "") if info is not None else None


# --------------------------------------------------------------------------------------------- HTML


def preview_url(path: Path) -> str:
    """The URL Gradio serves an allowed file at, relative to the page (so that it works behind a root path)."""
    return "gradio_api/file=" + quote(str(path), safe="/:\\")


_allowed_previews: set[Path] = set()
_allowed_lock = threading.Lock()


def allow_previews(cards: list[NetworkCard]) -> None:
    """Let Gradio serve the cards' preview images, and nothing else of the models folders (each file by name)."""
    with _allowed_lock:
        new = {path for card in cards if card.preview is not None
               for path in (Path(card.preview).absolute(), Path(card.preview).resolve())} - _allowed_previews
        if new:
            gr.set_static_paths(sorted(new))
            _allowed_previews.update(new)


def card_html(card: NetworkCard) -> str:
    """One card: a button with the preview (or the name's first letter), the name and a detail line."""
    name = html.escape(card.name)
    if card.preview is not None:
        thumb = f'<img src="{html.escape(preview_url(card.preview))}" alt="" loading="lazy">'
    else:
        thumb = f'<span class="network-initial">{html.escape(card.name[:1].upper() or "?")}</span>'
    title = card.problem or f"Add {card.insert} to the prompt"
    classes = "network-card unusable" if card.problem else "network-card"
    search = html.escape(f"{card.name} {card.detail}".lower())
    return (
        f'<button type="button" class="{classes}" data-key="{html.escape(card.key)}" data-search="{search}" '
        f'title="{html.escape(title)}"><span class="network-thumb">{thumb}</span>'
        f'<span class="network-name">{name}</span><span class="network-detail">{html.escape(card.detail)}</span>'
        f"</button>"
    )


def cards_html(cards: list[NetworkCard], folders: str | Path = "models") -> str:
    """The panel's two sections, LoRA and Textual inversion, with their cards (or where to put the files)."""
    sections = []
    for kind, title, folder in (("lora", "LoRA", "loras"), ("embedding", "Textual inversion", "embeddings")):
        members = [card for card in cards if card.kind == kind]
        if members:
            body = "".join(card_html(card) for card in members)
            body += '<p class="network-none-match" hidden>No name matches the filter.</p>'
        else:
            where = html.escape(str(Path(folders) / folder))
            body = f'<p class="network-empty">None yet: put files in <code>{where}</code> and press ↻.</p>'
        sections.append(
            f'<section class="network-section" data-kind="{kind}"><div class="network-heading">{title} '
            f'<span class="network-count">{len(members)}</span></div><div class="network-grid">{body}</div></section>'
        )
    return f'<div class="network-shelf">{"".join(sections)}</div>'


# --------------------------------------------------------------------------------------------- the prompt


def _lora_name(text: str) -> str | None:
    found = LORA_TAG.fullmatch(text.strip())
    return found.group(1) if found else None


def remove_from_prompt(prompt: str, text: str) -> str | None:
    """``prompt`` without ``text``, or None when it is not there (A1111's ``tryToRemoveExtraNetworkFromPrompt``:
    a ``<lora:name:...>`` tag with any weight; an embedding's name as a whole word), with the space before it."""
    name = _lora_name(text)
    if name is not None:
        pattern = re.compile(r"[ \t]?<(?:lora|lyco):" + re.escape(name) + r"(?::[^>]*)?>")
    else:
        pattern = re.compile(r"[ \t]?(?<![\w-])" + re.escape(text) + r"(?![\w-])")
    changed = pattern.sub("", prompt)
    return changed if changed != prompt else None


def add_to_prompt(prompt: str, text: str) -> str:
    """``text`` appended to ``prompt`` after a space (A1111's default separator); none before an empty prompt."""
    if not prompt.strip():
        return text
    return prompt + ("" if prompt.endswith((" ", "\n")) else " ") + text


@dataclass(frozen=True)
class CardClick:
    """What a click on a card does: the tab whose prompt changes (None: none), its new prompt, what to say."""

    tab: str | None
    prompt: str | None
    message: str


def click_card(card: NetworkCard | None, tab: str, prompt: str | None) -> CardClick:
    """A click on ``card`` while ``tab`` ("txt2img", "img2img" or "inpaint") is in use and its prompt reads
    ``prompt``: add the card's text, or take it out when it is already there; a card that cannot be used only says
    why."""
    if card is None:
        return CardClick(None, None, "That card is gone: press ↻ to list the files again.")
    if card.problem:
        return CardClick(None, None, card.problem)
    label = GENERATION_TABS.get(tab, GENERATION_TABS[DEFAULT_TAB])
    tab = tab if tab in GENERATION_TABS else DEFAULT_TAB
    prompt = prompt or ""
    removed = remove_from_prompt(prompt, card.insert)
    if removed is not None:
        return CardClick(tab, removed, f"Took {card.insert} out of the {label} prompt.")
    return CardClick(tab, add_to_prompt(prompt, card.insert), f"Added {card.insert} to the {label} prompt.")


def status_line(message: str) -> str:
    return f'<span class="network-status">{html.escape(message)}</span>'


# --------------------------------------------------------------------------------------------- the panel


class NetworkShelf:
    """The cards of this server, shared by every page: listed at start-up and again by the panel's ↻."""

    def __init__(self, manager: Any, folders: str | Path = "models"):
        self.manager = manager
        self.folders = folders
        self._lock = threading.Lock()
        self.cards: list[NetworkCard] = []
        self.reload()

    def reload(self, rescan: bool = False) -> list[NetworkCard]:
        """List the cards again (``rescan``: after asking the engine to rescan the models folders)."""
        if rescan:
            self.manager.refresh_models()
        cards = network_cards(self.manager)
        allow_previews(cards)
        with self._lock:
            self.cards = cards
        return cards

    def find(self, key: Any) -> NetworkCard | None:
        with self._lock:
            return next((card for card in self.cards if card.key == key), None)

    def html(self) -> str:
        with self._lock:
            return cards_html(self.cards, self.folders)

    def summary(self) -> str:
        with self._lock:
            loras = sum(card.kind == "lora" for card in self.cards)
            embeddings = len(self.cards) - loras
        return f"Found {loras} LoRA(s) and {embeddings} embedding(s). {HINT}"


@dataclass
class NetworksPanel:
    accordion: gr.Accordion
    search: gr.Textbox
    refresh: gr.Button
    status: gr.HTML
    cards: gr.HTML
    shelf: NetworkShelf


def build_networks_panel(manager: Any, settings: Any) -> NetworksPanel:
    """The accordion with the filter box, ↻ and the cards; ``wire_networks_panel`` connects it to the prompts."""
    shelf = NetworkShelf(manager, folders=getattr(settings, "models_dir", "models"))
    with gr.Accordion("Extra networks: LoRA and embeddings", open=False, elem_id="extra-networks") as accordion:
        with gr.Row(equal_height=True, elem_classes="network-toolbar"):
            search = gr.Textbox(placeholder="Filter by name", show_label=False, container=False, scale=3,
                                min_width=160, elem_id="extra-networks-search")
            refresh = gr.Button("↻", scale=0, min_width=44, elem_id="extra-networks-refresh",
                                elem_classes="tool-button")
            status = gr.HTML(status_line(HINT), elem_id="extra-networks-status", js_on_load=None, scale=5,
                             min_width=240)
        cards = gr.HTML(shelf.html(), elem_id="extra-networks-cards", js_on_load=CARDS_JS, max_height=300,
                        padding=False)
    return NetworksPanel(accordion, search, refresh, status, cards, shelf)


def wire_networks_panel(panel: NetworksPanel, txt2img_prompt: gr.Textbox, img2img_prompt: gr.Textbox,
                        inpaint_prompt: gr.Textbox) -> None:
    """Card clicks edit the prompt of the tab in use; ↻ rescans the folders and lists the cards again."""
    last_tab = gr.State(DEFAULT_TAB)  # the generation tab last written to: used while another tab is showing

    def on_click(previous: str, txt2img_text: str, img2img_text: str, inpaint_text: str,
                 evt: gr.EventData) -> list[Any]:
        data = getattr(evt, "_data", None) or {}
        tab = data.get("tab") if data.get("tab") in GENERATION_TABS else previous
        prompts = {"txt2img": txt2img_text, "img2img": img2img_text, "inpaint": inpaint_text}
        click = click_card(panel.shelf.find(data.get("key")), tab, prompts.get(tab))
        updates = [click.prompt if click.tab == name else gr.skip() for name in prompts]
        return [click.tab or previous, *updates, status_line(click.message)]

    def on_refresh() -> list[str]:
        try:
            panel.shelf.reload(rescan=True)
        except AtelierError as exc:
            raise user_error(exc) from None
        return [panel.shelf.html(), status_line(panel.shelf.summary())]

    boxes = [txt2img_prompt, img2img_prompt, inpaint_prompt]
    panel.cards.click(on_click, inputs=[last_tab, *boxes], outputs=[last_tab, *boxes, panel.status], queue=False,
                      show_progress="hidden")
    panel.refresh.click(on_refresh, outputs=[panel.cards, panel.status], queue=False)
