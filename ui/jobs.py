"""Following a manager job from a browser session: submit, poll progress (queue position, step, ETA,
preview), and turn the Result into what a result panel shows. Errors an artist can act on become toasts.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines.errors import AtelierError, Cancelled, ModelLoadError, ModelNotFound
from pipelines.progress import FINISHED_STATES, ProgressEvent
from pipelines.request import GenerationRequest, Result

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25  # how often a running job is polled for progress (the manager coalesces its events)


# --------------------------------------------------------------------------------------------- session state


class SessionJobs:
    """Per browser session: each tab's running job (for Stop), last result (for ♻ and Send to) and the
    gallery image the user picked. Lives in a ``gr.State``; Gradio deep-copies the default per session."""

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}
        self.results: dict[str, Result] = {}
        self.selected: dict[str, int] = {}

    def __deepcopy__(self, memo: dict) -> SessionJobs:
        return SessionJobs()

    def last_seed(self, tab: str) -> int | None:
        """The seed of the image selected in ``tab``'s gallery (the first one when none is selected)."""
        result = self.results.get(tab)
        if result is None or not result.seeds:
            return None
        index = min(self.selected.get(tab, 0), len(result.seeds) - 1)
        return int(result.seeds[index])


# --------------------------------------------------------------------------------------------- errors


MODEL_FIELDS = ("checkpoint", "vae", "upscaler")
REFRESH_HINT = "After adding or removing model files, press ↻ beside the checkpoint menu."


def user_error(exc: AtelierError) -> gr.Error:
    """An ``AtelierError`` as a Gradio toast: the plain message, no traceback; a missing or unreadable model gets
    the UI's own hint (the refresh button)."""
    title = "Please check the settings" if exc.http_status == 422 else "Could not generate"
    message = str(exc)
    if isinstance(exc, (ModelNotFound, ModelLoadError)) and exc.field in MODEL_FIELDS:
        message = f"{message} {REFRESH_HINT}"
    # gr.Error renders HTML; the message may quote what the user typed.
    return gr.Error(html.escape(message, quote=False), title=title, print_exception=False)


def unexpected_error(exc: BaseException) -> gr.Error:
    """A bug or library failure: logged with its traceback on the console, a short toast in the browser."""
    log.exception("Unexpected error in the UI handler")
    return gr.Error(
        html.escape(f"Something went wrong ({type(exc).__name__}: {exc}). Details are in the console.", quote=False),
        title="Unexpected error",
        print_exception=False,
    )


# --------------------------------------------------------------------------------------------- following a job


@dataclass
class JobView:
    """One update for a result panel: progress while the job runs, the Result when it is over."""

    progress: str
    preview: Any = None
    result: Result | None = None
    stopped_early: bool = False


def format_eta(seconds: float | None) -> str:
    """ "ETA 12 s" / "ETA 2 min 5 s"; empty when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"ETA {seconds} s"
    return f"ETA {seconds // 60} min {seconds % 60} s"


def progress_text(event: ProgressEvent | None, position: int) -> str:
    """The words on the progress bar: queue position, loading, or "[Pass ·] Step n/N · batch b/B · ETA"."""
    if position > 0:
        ahead = "1 job" if position == 1 else f"{position} jobs"
        return f"Queued: {ahead} ahead of yours"
    if event is None or event.state == "queued":
        return "Starting…"
    if event.state == "loading":
        return event.message or "Loading the model…"
    if event.state == "saving":
        return "Saving…"
    parts = [f"Step {event.step}/{event.total_steps}"] if event.total_steps else ["Running…"]
    if event.batch_count > 1:
        parts.append(f"batch {event.batch_index + 1}/{event.batch_count}")
    eta = format_eta(event.eta_s)
    if eta:
        parts.append(eta)
    if event.phase:  # which pass of the hires fix: "first pass", "upscaling", "hires pass"
        parts.insert(0, event.phase[:1].upper() + event.phase[1:])
    if event.message:
        parts.append(event.message)
    return " · ".join(parts)


def progress_html(text: str, fraction: float, *, state: str = "running") -> str:
    """A progress bar with its text; ``state`` picks the colour (running, queued, done, stopped)."""
    pct = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="atelier-progress {state}" role="progressbar" aria-valuenow="{pct:.0f}" '
        f'aria-valuemin="0" aria-valuemax="100">'
        f'<div class="atelier-progress-fill" style="width:{pct:.1f}%"></div>'
        f'<span class="atelier-progress-text">{html.escape(text)}</span></div>'
    )


async def follow_job(
    manager: Any, request: GenerationRequest, session: SessionJobs, tab: str
) -> AsyncIterator[JobView]:
    """Submit ``request`` and yield a ``JobView`` on every visible change until the job ends.

    The last view carries the Result. Stop (``job.cancel()``) ends the run within a step; finished images are
    kept and shown. Errors from the engine become toasts.
    """
    try:
        job = manager.submit(request)
    except AtelierError as exc:
        raise user_error(exc) from None
    session.jobs[tab] = job
    last_key: tuple | None = None
    started = False
    try:
        while getattr(job, "state", "done") not in FINISHED_STATES:
            position = _safe_position(job)
            started = started or getattr(job, "state", "") == "running"
            event = job.progress
            key = (position, _event_key(event))
            if key != last_key:
                last_key = key
                state = "queued" if position > 0 else "running"
                fraction = event.fraction if (event is not None and position == 0) else 0.0
                yield JobView(
                    progress_html(progress_text(event, position), fraction, state=state),
                    preview=getattr(event, "preview", None) if position == 0 else None,
                )
            await asyncio.sleep(POLL_INTERVAL_S)
        try:
            result = await asyncio.to_thread(job.wait)
        except Cancelled:
            started = started or getattr(job, "started", None) is not None  # the manager stamps its start
            text = "Stopped before the first image was finished." if started else "Removed from the queue."
            yield JobView(progress_html(text, 0.0, state="stopped"))
            return
        except AtelierError as exc:
            raise user_error(exc) from None
    finally:
        if session.jobs.get(tab) is job:
            session.jobs.pop(tab, None)
    session.results[tab] = result
    session.selected[tab] = 0
    count = len(result.images)
    if result.cancelled and stopped_in_hires_pass(result):
        text = f"Stopped in the hires pass: kept the first pass's picture{'s' if count != 1 else ''}."
        state = "stopped"
    elif result.cancelled:
        text = f"Stopped: kept {count} finished image{'s' if count != 1 else ''}."
        state = "stopped"
    else:
        text = f"Done: {count} image{'s' if count != 1 else ''}" + (f" · {result.mode} mode" if result.mode else "")
        state = "done"
    yield JobView(progress_html(text, 1.0, state=state), result=result, stopped_early=result.cancelled)


def stopped_in_hires_pass(result: Result) -> bool:
    """A hires fix stopped in its second pass: the pictures kept are the first pass's (the engine says so in its
    notes)."""
    request = result.request
    if request is None or request.task != "txt2img" or not request.enable_hr or not result.images:
        return False
    return any("hires pass" in str(note) for note in result.notes)


def _safe_position(job: Any) -> int:
    try:
        return int(job.position())
    except Exception:  # a job that finished between the state check and this call has no position
        return 0


def _event_key(event: ProgressEvent | None) -> tuple:
    if event is None:
        return ()
    return (event.state, event.step, event.batch_index, event.message, event.phase, id(event.preview))


# --------------------------------------------------------------------------------------------- results


def gallery_items(result: Result | None) -> list[tuple[Any, str]]:
    """Gallery entries: the saved PNG (so Download gives the file with its parameters) or the image itself."""
    if result is None:
        return []
    items = []
    for i, image in enumerate(result.images):
        path = result.paths[i] if i < len(result.paths) else None
        source = str(path) if path is not None and Path(path).is_file() else image
        seed = result.seeds[i] if i < len(result.seeds) else None
        items.append((source, f"Seed {seed}" if seed is not None else ""))
    return items


def info_html(result: Result | None, index: int = 0) -> str:
    """What the request named and did not get (a LoRA or style not found), the infotext of the selected image, the
    notes of the run (memory fallback, stop) and where it was saved."""
    if result is None:
        return ""
    parts = []
    warnings = list(getattr(result, "warnings", None) or [])
    if warnings:
        items = "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings)
        parts.append(f'<ul class="run-warnings" title="Made without these">{items}</ul>')
    if result.infotexts:
        text = result.infotexts[min(index, len(result.infotexts) - 1)]
        parts.append(f'<div class="infotext">{html.escape(text)}</div>')
    notes = list(result.notes)
    if result.paths:
        path = result.paths[min(index, len(result.paths) - 1)]
        notes.append(f"Saved to {path}")
    if notes:
        items = "".join(f"<li>{html.escape(str(n))}</li>" for n in notes)
        parts.append(f'<ul class="run-notes">{items}</ul>')
    return "".join(parts)


def selected_image(gallery_value: Any, session: SessionJobs, tab: str) -> Any:
    """The image picked in ``tab``'s gallery (the first when none is picked), as Gradio gave it to us."""
    if not gallery_value:
        raise gr.Error("There is no image to send yet: generate one first.", print_exception=False)
    index = min(session.selected.get(tab, 0), len(gallery_value) - 1)
    item = gallery_value[index]
    if isinstance(item, (tuple, list)):
        item = item[0]
    return item


def last_request(session: SessionJobs, tab: str) -> GenerationRequest | None:
    result = session.results.get(tab)
    return getattr(result, "request", None) if result is not None else None
