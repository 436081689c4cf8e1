"""The status bar: device, dtype, memory mode in use, VRAM, loaded checkpoint, queue, and the DEMO label."""

from __future__ import annotations

import html
import logging
from typing import Any

from pipelines.interface import EngineStatus
from pipelines.settings import Settings

log = logging.getLogger(__name__)

DEMO_LABEL = "DEMO: random weights, images are noise"
STATUS_REFRESH_S = 5.0


def format_bytes(value: Any) -> str | None:
    """VRAM figures: bytes (or already GiB for small numbers) as "3.2 GB"; None when unknown."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    gib = number / 2**30 if number > 4096 else number
    return f"{gib:.1f} GB"


def status_items(status: EngineStatus | None) -> list[tuple[str, str]]:
    """(label, value) pairs for the bar, skipping what the manager did not report (None: it reported nothing)."""
    if status is None:
        return [("Checkpoint", "none loaded")]
    items: list[tuple[str, str]] = []
    if status.device:
        items.append(("Device", status.device))
    if status.dtype:
        items.append(("Precision", status.dtype))
    mode, in_use = status.memory_mode, status.mode_in_use
    if mode or in_use:
        text = str(mode or in_use)
        if in_use and mode and in_use != mode:
            text = f"{mode} → {in_use}"
        items.append(("Memory", text))
    used, total = format_bytes(status.vram_used), format_bytes(status.vram_total)
    if total:
        items.append(("VRAM", f"{used or '?'} / {total}"))
    items.append(("Checkpoint", status.loaded_checkpoint or "none loaded"))
    if status.loaded_upscaler:
        items.append(("Upscaler", status.loaded_upscaler))
    if status.queue:
        items.append(("Queue", f"{status.queue} waiting"))
    if status.pool is not None:
        items.extend(pool_items(status.pool))
    return items


def pool_items(replicas: Any) -> list[tuple[str, str]]:
    """With ``--pool``: how many replicas are up, then each one: where it runs and what it does."""
    busy = sum(1 for replica in replicas if replica.job)
    items = [("Pool", f"{len(replicas)} replica(s), {busy} busy")]
    for replica in replicas:
        where = f"{replica.name} @ {replica.node}" if replica.node else replica.name
        if replica.job:
            doing = f"running {replica.task} ({replica.checkpoint})"
        elif replica.jobs_done:
            doing = f"idle · {replica.jobs_done} job(s) done · holds {replica.checkpoint}"
        else:
            doing = "idle, no job yet"
        items.append(("Replica", f"{where}: {doing}"))
    return items


def speedup_label(settings: Settings) -> str | None:
    """"DeepCache every 3 · ToMe 0.5" while a pixel-changing speed-up is on by default; None when none is."""
    parts = []
    if getattr(settings, "deep_cache", False):
        parts.append(f"DeepCache every {settings.deep_cache_interval}")
    if getattr(settings, "token_merging", 0.0):
        parts.append(f"ToMe {settings.token_merging:g}")
    return " · ".join(parts) or None


def status_html(manager: Any, settings: Settings) -> str:
    """The bar's HTML from ``manager.status()``; a failing status call shows a note instead of an error."""
    status: EngineStatus | None
    try:
        status = manager.status()
    except Exception as exc:
        log.warning("manager.status() failed: %s", exc)
        status = None
    parts = [
        f'<span class="status-item"><span class="status-label">{html.escape(label)}</span> {html.escape(value)}</span>'
        for label, value in status_items(status)
    ]
    speedups = speedup_label(settings)
    if speedups:
        parts.append(f'<span class="status-item"><span class="status-label">Speed-ups</span> '
                     f'{html.escape(speedups)}</span>')
    if settings.demo or (status is not None and status.demo):
        parts.insert(0, f'<span class="demo-badge">{html.escape(DEMO_LABEL)}</span>')
    return f'<div class="status-line">{"".join(parts)}</div>'
