"""Atelier's engine: one request type, one pipeline manager, A1111-format metadata.

The public surface is import-light: ``import pipelines`` loads neither torch nor diffusers; ``PipelineManager``
is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import AtelierError
from .infotext import ATELIER_VERSION as __version__
from .progress import ProgressEvent
from .request import GenerationRequest, Result
from .samplers import SAMPLER_NAMES

if TYPE_CHECKING:
    from .manager import Job, PipelineManager

__all__ = [
    "AtelierError",
    "GenerationRequest",
    "Job",
    "PipelineManager",
    "ProgressEvent",
    "Result",
    "SAMPLER_NAMES",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("PipelineManager", "Job"):
        from . import manager

        return getattr(manager, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
