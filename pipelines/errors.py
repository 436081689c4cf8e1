"""The one exception type a person may meet, and its kinds.

Every message says what happened and what to do. The UI turns an ``AtelierError`` into a toast, the REST API
into a JSON body with ``http_status``; neither ever shows a traceback.
"""

from __future__ import annotations


class AtelierError(Exception):
    """An error a person can act on. ``field`` names the request field at fault, when there is one."""

    http_status = 400

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class InvalidRequest(AtelierError):
    """A request value is missing, out of range or unknown (HTTP 422)."""

    http_status = 422


class ModelNotFound(InvalidRequest):
    """A checkpoint, VAE or upscaler name that the models folder does not hold (HTTP 422)."""


class ModelLoadError(AtelierError):
    """A model file exists but cannot be loaded: truncated, corrupt, wrong kind, unsafe pickle (HTTP 400)."""

    http_status = 400


class OutOfMemoryEverywhere(AtelierError):
    """Every rung of the memory ladder ran out of memory (HTTP 422: the request is too large for this machine)."""

    http_status = 422

    @classmethod
    def on(cls, device_type: str, rung: str) -> OutOfMemoryEverywhere:
        """The error for the last ``rung`` failing on a ``device_type`` ("cuda", "mps", "cpu"): the advice names
        the memory that ran out (GPU memory, or the computer's RAM on the CPU, in the ``cpu`` rung and on Apple's
        shared memory)."""
        if device_type == "cuda" and rung != "cpu":
            advice = "Use a smaller size or batch size, or close other programs using the GPU."
        else:
            where = "this Mac's shared memory" if device_type == "mps" and rung != "cpu" else "the CPU"
            advice = (f"The run was on {where}, so it needs the computer's RAM: use a smaller size or batch size, "
                      "or close other programs to free memory.")
        return cls(f"Out of memory even in {rung} mode. {advice}")


class Cancelled(AtelierError):
    """The job was stopped by the user. Images finished before the stop are kept."""

    http_status = 409


class Skipped(AtelierError):
    """The image (batch) being drawn was skipped (A1111's Skip): the job goes on with its next batch. Not a
    ``Cancelled``: a pass that keeps its picture on a Stop (the hires fix's first pass) must not keep it on a Skip."""

    http_status = 409


class OutputWriteError(AtelierError):
    """An image could not be written to the outputs folder (disk full, read-only, permissions) (HTTP 507)."""

    http_status = 507


class QueueFull(AtelierError):
    """The manager's job queue is full (HTTP 429)."""

    http_status = 429
