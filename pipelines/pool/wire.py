"""What travels between the front process and a pool replica: plain dicts of strings, numbers and PNG bytes.

A replica streams messages for one job, in this order::

    {"kind": "started", "replica": ..., "node": ..., "pid": ...}
    {"kind": "progress", ...ProgressEvent fields..., "preview": PNG bytes or None}   (any number)
    {"kind": "result", "images": [{"png", "infotext", "seed", "task"}], "notes", ...}  or  {"kind": "error", ...}

Pictures travel as PNG (lossless: the front's pixels are the replica's) with their infotext beside them; the front
process alone writes the outputs folder. Errors travel as the ``AtelierError`` kind's name and message and are raised
again as that kind in the front, so the UI and the API say them as they would without a pool. Nothing here imports
Ray or torch.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any

from PIL import Image

from .. import errors
from ..outputs import encode_png
from ..progress import ProgressEvent
from ..request import GenerationRequest, Result

STARTED, PROGRESS, RESULT, ERROR = "started", "progress", "result", "error"

# The Settings a replica takes from the front with each job (live changes made in the UI or through the API).
# Device, precision and threads are each replica's own; paths and the demo switch are set when it starts.
SYNCED_SETTINGS = ("checkpoint", "vae", "memory_mode", "xformers", "fast", "deep_cache", "deep_cache_interval",
                   "token_merging", "fast_decode", "clip_skip", "emphasis", "vram_slots", "ram_slots",
                   "default_sampler", "default_steps")


def png(image: Any) -> bytes:
    """A PIL image as PNG bytes (no infotext: it travels beside the picture)."""
    return encode_png(image, None)


def image(data: bytes) -> Image.Image:
    """PNG bytes back to a loaded PIL image."""
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def started(replica: str, node: str, pid: int) -> dict[str, Any]:
    return {"kind": STARTED, "replica": replica, "node": node, "pid": pid}


def progress(event: ProgressEvent) -> dict[str, Any]:
    """A progress event with its preview as PNG bytes."""
    fields = asdict(event)
    fields["preview"] = png(event.preview) if event.preview is not None else None
    return {"kind": PROGRESS, **fields}


def progress_event(message: dict[str, Any], job_id: str) -> ProgressEvent:
    """The front's copy of a replica's progress event, under the front job's id."""
    fields = {name: value for name, value in message.items() if name != "kind"}
    fields["job_id"] = job_id
    if fields.get("preview") is not None:
        fields["preview"] = image(fields["preview"])
    return ProgressEvent(**fields)


def result(result: Result, tasks: list[str]) -> dict[str, Any]:
    """A finished job: each picture as the PNG file the outputs folder gets (infotext inside, encoded once, here),
    with its infotext, seed and the task folder it belongs in."""
    pictures = [{"png": encode_png(picture, infotext), "infotext": infotext, "seed": seed, "task": task}
                for picture, infotext, seed, task in zip(result.images, result.infotexts, result.seeds, tasks,
                                                         strict=True)]
    return {"kind": RESULT, "images": pictures, "mode": result.mode, "notes": list(result.notes),
            "warnings": list(result.warnings), "cancelled": result.cancelled, "checkpoint": result.checkpoint,
            "checkpoint_hash": result.checkpoint_hash}


def result_of(message: dict[str, Any], request: GenerationRequest) -> tuple[Result, list[dict[str, Any]]]:
    """The ``Result`` (pictures decoded, no paths yet) and the pictures' records (PNG file, infotext, seed, task)."""
    pictures = message["images"]
    done = Result(images=[image(p["png"]) for p in pictures], seeds=[int(p["seed"]) for p in pictures],
                  infotexts=[p["infotext"] for p in pictures], mode=message["mode"], notes=list(message["notes"]),
                  warnings=list(message["warnings"]), cancelled=bool(message["cancelled"]),
                  checkpoint=message["checkpoint"], checkpoint_hash=message["checkpoint_hash"], request=request)
    return done, pictures


def error(exc: BaseException) -> dict[str, Any]:
    """An error as its kind's name, message and field; anything not an ``AtelierError`` is a bug, said as one."""
    if isinstance(exc, errors.AtelierError):
        return {"kind": ERROR, "type": type(exc).__name__, "message": exc.message, "field": exc.field}
    return {"kind": ERROR, "type": "AtelierError", "field": None,
            "message": f"Generation failed unexpectedly on a pool replica ({type(exc).__name__}: {exc}). See its log."}


def error_of(message: dict[str, Any]) -> errors.AtelierError:
    """The ``AtelierError`` a replica reported, as the same kind."""
    kind = getattr(errors, str(message.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, errors.AtelierError)):
        kind = errors.AtelierError
    return kind(str(message.get("message", "")), field=message.get("field"))
