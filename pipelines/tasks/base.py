"""What a task module gets from the manager (``TaskRun``) and gives back (``BatchOutput``).

The manager checks the checkpoint out, chooses the memory rung and prepares the pipeline for it; a task module only
runs one batch over that prepared pipeline, top-down like a diffusers ``__call__``, and never touches the cache,
the ladder or the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..cache import family_spec
from ..conditioning import PromptPlan
from ..families import FamilySpec
from ..infotext import Note
from ..progress import ProgressSink, StepReporter
from ..prompt_encoding import EncodeOptions
from ..request import GenerationRequest
from ..samplers import SchedulerTemplates
from ..upscale import DEFAULT_OVERLAP, DEFAULT_TILE
from ..upscalers import PixelUpscaler


@dataclass
class TaskRun:
    """One batch of one request, ready to run."""

    request: GenerationRequest
    pipe: Any  # the diffusers pipeline for the task, set up for the memory rung
    loaded: Any  # the checkpoint's LoadedCheckpoint: pristine scheduler config, family
    seeds: list[int]  # one per image of the batch
    sink: ProgressSink  # the job: Stop and progress
    schedulers: SchedulerTemplates
    batch_index: int = 0
    batch_count: int = 1
    step_delay_s: float = 0.0  # test-only: slows each step so that Stop can be clicked
    tile: int = DEFAULT_TILE  # tiled tasks: tile side and overlap, in input pixels
    overlap: int = DEFAULT_OVERLAP
    # the prompt language (SD tasks): the texts read once per job, how to encode them, the embeddings in reach
    prompts: PromptPlan | None = None
    encode_options: EncodeOptions = field(default_factory=EncodeOptions)
    embeddings: dict[str, Any] = field(default_factory=dict)  # name -> vectors
    embedding_hash: Callable[[str], str] = lambda name: ""  # A1111's TI hash of an embedding, by name
    job_cache: dict[Any, Any] = field(default_factory=dict)  # kept across the batches of one job
    # the pixel upscaler a task runs (the Upscale tab's model or built-in, the hires fix's, SD upscale's), bound to
    # the device; None for a latent upscale or an SD task without one
    upscaler: PixelUpscaler | None = None
    # another task's pipeline over the same checkpoint, set up on the same rung (the hires fix's img2img pass)
    pipeline_for: Callable[[str], Any] | None = None
    hires_prompts: PromptPlan | None = None  # the hires pass's own prompts (None: the first pass's)
    # a depth-to-image checkpoint's DPT model (``depth.DepthEstimator``); None: the request's depth_map, or no depth
    depth: Any = None
    # the checkpoint's TAESD (``taesd.TinyDecoders``), on the device: previews every step, and the final decode when
    # the request asks for ``fast_decode``; None when none is installed
    taesd: Any = None

    @property
    def spec(self) -> FamilySpec:
        return family_spec(self.loaded)

    def reporter(self, steps: int, size: tuple[int, int], previews: bool = True) -> StepReporter:
        """The step hook for this batch: progress, ETA, Stop and (``previews``) latent previews: through TAESD when
        one is installed, else the cheap linear ones."""
        if self.loaded is None:  # a pixel upscale: no checkpoint, no latents
            return StepReporter(self.sink, self.batch_index, self.batch_count, steps, size, False, None,
                                self.step_delay_s)
        spec = self.spec
        return StepReporter(self.sink, self.batch_index, self.batch_count, steps, size,
                            spec.latent_rgb_factors if previews else False, spec.latent_rgb_bias, self.step_delay_s,
                            taesd=self.taesd if previews else None)

    def fresh_scheduler(self) -> Any:
        """A new scheduler for the request's sampler and schedule over the checkpoint's pristine config."""
        request = self.request
        return self.schedulers.fresh(request.sampler, request.scheduler, self.loaded.scheduler_config, self.seeds[0])

    def generators(self) -> list[torch.Generator]:
        """One CPU generator per image, seeded with its seed (A1111's and diffusers' reproducible noise)."""
        return [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds]


@dataclass
class BatchOutput:
    """One batch's images (PIL) and what the run wants to say about them.

    ``cancelled``: Stop came in a later pass and these are the images an earlier pass finished (the hires fix's
    first pass), saved and kept; ``request`` is then what they answer (their infotext's), else the job's request."""

    images: list[Any]
    notes: list[Note] = field(default_factory=list)
    cancelled: bool = False
    request: GenerationRequest | None = None
