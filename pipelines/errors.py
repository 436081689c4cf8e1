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


class Cancelled(AtelierError):
    """The job was stopped by the user. Images finished before the stop are kept."""

    http_status = 409


class OutputWriteError(AtelierError):
    """An image could not be written to the outputs folder (disk full, read-only, permissions) (HTTP 507)."""

    http_status = 507


class QueueFull(AtelierError):
    """The manager's job queue is full (HTTP 429)."""

    http_status = 429
