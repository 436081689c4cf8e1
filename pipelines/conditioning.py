"""A request's prompts as A1111 reads them, handed to a stock diffusers pipeline.

``read_prompts`` applies styles, strips comments and takes the extra-network tags out (``prompt_parser``);
``conditioned_call`` encodes the texts A1111's way (``prompt_encoding``: weights, 75-token chunks, clip skip,
embeddings, editing and alternation) and returns what the pipeline call needs:

* ``prompt_embeds`` / ``negative_prompt_embeds`` (and SDXL's pooled pair) for the first step;
* a ``callback_on_step_end`` that swaps the embeddings in when the schedule changes (diffusers lets the callback
  replace ``prompt_embeds``), chained before the progress reporter;
* for ``AND`` (composable diffusion), a UNet wrapper for the call: one noise prediction per part, combined as A1111's
  ``CFGDenoiser.combine_denoised`` does, ``uncond + Σ weightᵢ · (condᵢ − uncond)``, before diffusers' own guidance
  multiplies by the CFG scale.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .embeddings import EmbeddingLibrary
from .infotext import Note
from .networks import LoraUse, lora_hashes, requested_loras
from .prompt_encoding import EncodeOptions, PromptConditioning, TextConditioner, encode_prompt_conditioning
from .prompt_parser import PreparedPrompts, PromptStyle, apply_named_styles, parse_extra_networks, strip_comments

if TYPE_CHECKING:
    from .request import GenerationRequest


@dataclass(frozen=True)
class PromptPlan:
    """A request's prompt pair once read: the texts for the infotext (styles applied, comments out, tags kept, as
    A1111 writes them) and the prepared texts for CLIP (tags out, in ``prepared.networks``)."""

    infotext_prompt: str
    infotext_negative: str
    prepared: PreparedPrompts
    warnings: tuple[str, ...] = ()


def read_prompts(prompt: str, negative_prompt: str, style_names: list[str],
                 styles: Mapping[str, PromptStyle]) -> PromptPlan:
    """Styles, then ``#`` comments, then ``<lora:...>`` tags out of the positive prompt (A1111's order)."""
    styled = apply_named_styles(prompt, negative_prompt, style_names, styles)
    positive, negative = strip_comments(styled.prompt), strip_comments(styled.negative_prompt)
    text, tags = parse_extra_networks(positive)
    warnings = tuple(f"Style not found: {name}" for name in styled.missing)
    return PromptPlan(positive, negative, PreparedPrompts(text, negative, tags, styled.missing), warnings)


def model_calls(pipe: Any, steps: int, strength: float | None = None) -> int:
    """How many UNet calls the pipeline will make (A1111's schedules count those: twice the steps, less one, for a
    second-order sampler), read from a copy of the request's scheduler. ``strength``: img2img's share of them."""
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    calls = len(scheduler.timesteps)
    if strength is not None:  # diffusers' img2img ``get_timesteps``
        skipped = max(steps - min(int(steps * strength), steps), 0)
        calls -= skipped * getattr(scheduler, "order", 1)
    return max(1, calls)


@dataclass
class ConditionedCall:
    """What a pipeline call gets from the prompts: its keyword arguments, and the context to run it in."""

    kwargs: dict[str, Any]
    conditioning: PromptConditioning
    notes: list[Note] = field(default_factory=list)
    composable: Callable[[], Any] | None = None  # a context manager factory for AND prompts
    counter: _StepCounter | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        """The context one pipeline call runs in (the UNet wrapper for AND prompts; nothing otherwise). Each call
        starts at step 0 (a retry too)."""
        if self.composable is None:
            yield
            return
        self.counter.step = 0
        with self.composable():
            yield


def encode_prompts(pipe: Any, family: str, plan: PromptPlan, calls: int, options: EncodeOptions,
                   embeddings: Mapping[str, Any] | None = None, guidance: bool = True) -> PromptConditioning:
    """Encode ``plan``'s texts with ``pipe``'s tokenizers and text encoders, A1111's way, for a call of ``calls``
    UNet calls (each distinct text of the schedules once). Without ``guidance`` (CFG 1) the negative prompt is left
    out where nothing uses it."""
    conditioner = TextConditioner.for_family(family, pipe)
    return encode_prompt_conditioning(conditioner, plan.prepared.prompt, plan.prepared.negative_prompt, calls, options,
                                      embeddings, guidance)


def conditioned_call(pipe: Any, conditioning: PromptConditioning, images: int, guidance: bool,
                     reporter: Callable[..., dict], options: EncodeOptions) -> ConditionedCall:
    """The call's conditioning arguments: the first step's embeddings, the step hook that swaps them when the
    schedule changes (``reporter``, the progress hook, runs after it), and the AND wrapper when there are parts."""
    first = conditioning.at_step(0)
    sdxl = first.pooled_prompt_embeds is not None
    kwargs: dict[str, Any] = {"negative_prompt_embeds": first.negative_prompt_embeds}
    if sdxl:
        kwargs["negative_pooled_prompt_embeds"] = first.negative_pooled_prompt_embeds
    notes = [Note.param(key, value) for key, value in conditioning.infotext.items()]
    if options.clip_skip > 1:
        notes.append(Note.param("Clip skip", options.clip_skip))
    if conditioning.is_composable:
        # The wrapper picks each step's parts itself; the call carries the first part as its prompt.
        kwargs["prompt_embeds"] = first.prompt_embeds[:1]
        if sdxl:
            kwargs["pooled_prompt_embeds"] = first.pooled_prompt_embeds[:1]
        counter = _StepCounter(reporter)
        kwargs["callback_on_step_end"] = counter
        composable = lambda: _composable_unet(pipe.unet, conditioning, counter, images)  # noqa: E731
        return ConditionedCall(kwargs, conditioning, notes, composable, counter)
    kwargs["prompt_embeds"] = first.prompt_embeds
    inputs = ["latents", "prompt_embeds"]
    if sdxl:
        kwargs["pooled_prompt_embeds"] = first.pooled_prompt_embeds
        inputs.append("add_text_embeds")
    kwargs["callback_on_step_end"] = conditioning.step_callback(images, guidance, then=reporter)
    kwargs["callback_on_step_end_tensor_inputs"] = inputs
    return ConditionedCall(kwargs, conditioning, notes)


class _StepCounter:
    """The step-end hook of a composable call: counts steps for the UNet wrapper, then reports progress."""

    def __init__(self, reporter: Callable[..., dict]):
        self.reporter = reporter
        self.step = 0

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
        self.step = i + 1
        return self.reporter(pipe, i, t, kwargs)


@contextmanager
def _composable_unet(unet: Any, conditioning: PromptConditioning, counter: _StepCounter, images: int) -> Iterator[None]:
    """Wrap ``unet.forward`` for one call: each UNet call runs the negative and every ``AND`` part in one batch and
    returns ``[uncond, uncond + Σ wᵢ (condᵢ − uncond)]`` (or only the second without CFG). Without CFG and with
    weights that add up to 1 the negative is not encoded (``needs_negative``) and not run: the result is then
    ``Σ wᵢ condᵢ``, the same sum without the uncond pass."""
    import torch

    original = unet.forward

    def forward(sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any,
                added_cond_kwargs: dict | None = None, return_dict: bool = True, **kwargs: Any) -> Any:
        step = conditioning.at_step(counter.step)
        n = images
        guided = sample.shape[0] == 2 * n
        parts = step.prompt_embeds.shape[0]
        uncond_in, cond_in = (sample[:n], sample[n:]) if guided else (sample, sample)
        with_uncond = step.negative_prompt_embeds is not None
        lead = 1 if with_uncond else 0  # the uncond's place at the head of the batch
        batch = torch.cat([uncond_in] * lead + [cond_in] * parts)
        like = encoder_hidden_states
        uncond_texts = [step.negative_prompt_embeds.repeat(n, 1, 1)] if with_uncond else []
        texts = torch.cat(uncond_texts + [step.prompt_embeds[p:p + 1].repeat(n, 1, 1) for p in range(parts)]).to(
            like.device, like.dtype)
        if isinstance(timestep, torch.Tensor) and timestep.dim() > 0 and timestep.shape[0] == sample.shape[0]:
            timestep = timestep[:n].repeat(parts + lead)
        if added_cond_kwargs:
            uncond_pooled = [step.negative_pooled_prompt_embeds.repeat(n, 1)] if with_uncond else []
            pooled = torch.cat(uncond_pooled + [step.pooled_prompt_embeds[p:p + 1].repeat(n, 1) for p in range(parts)])
            time_ids = added_cond_kwargs["time_ids"]
            added_cond_kwargs = {**added_cond_kwargs,
                                 "text_embeds": pooled.to(like.device, added_cond_kwargs["text_embeds"].dtype),
                                 "time_ids": torch.cat([time_ids[:n]] * lead + [time_ids[-n:]] * parts)}
        out = original(batch, timestep, texts, *args, added_cond_kwargs=added_cond_kwargs, return_dict=False,
                       **kwargs)[0]
        if with_uncond:
            uncond = out[:n]
            combined = uncond.clone()
            for p, weight in enumerate(step.weights):
                combined += weight * (out[n * (p + 1):n * (p + 2)] - uncond)
        else:  # no CFG, weights adding up to 1: the uncond cancels out
            combined = step.weights[0] * out[:n]
            for p, weight in enumerate(step.weights[1:], start=1):
                combined += weight * out[n * p:n * (p + 1)]
        result = torch.cat([uncond, combined]) if guided else combined
        if not return_dict:
            return (result,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=result)

    unet.forward = forward
    try:
        yield
    finally:
        del unet.forward  # the class's own forward again
        if unet.forward != original:  # someone else had an instance forward: put it back
            unet.forward = original


@dataclass
class JobPrompts:
    """Everything a job's SD batches need from its prompts, read once per job."""

    plan: PromptPlan
    loras: list[LoraUse]
    options: EncodeOptions
    embeddings: dict[str, Any] = field(default_factory=dict)  # name -> vectors, those the texts may use
    notes: list[Note] = field(default_factory=list)  # the Lora hashes, and warnings (a LoRA or style not found)
    hires_plan: PromptPlan | None = None  # the hires fix's own prompts (hr_prompt / hr_negative_prompt), if any


def job_prompts(request: GenerationRequest, settings: Any, styles: Mapping[str, PromptStyle], registry: Any,
                library: EmbeddingLibrary | None = None) -> JobPrompts:
    """Read ``request``'s prompts: styles, comments, ``<lora:...>`` tags (found in ``registry``), the encoding
    options (the request's, else the Settings'), and — with ``library`` — the embeddings whose names the texts
    contain. Raises ``InvalidRequest`` for prompt syntax A1111 rejects (a LoRA weight that is not a number)."""
    plan = read_prompts(request.prompt, request.negative_prompt, list(request.styles), styles)
    uses, missing = requested_loras(plan.prepared.networks, registry.find_lora)
    options = EncodeOptions(
        clip_skip=request.clip_skip if request.clip_skip is not None else int(settings.clip_skip),
        emphasis=request.emphasis if request.emphasis is not None else str(settings.emphasis),
    )
    notes = [Note.warn(text) for text in (*plan.warnings, *missing)]
    if uses and (hashes := lora_hashes(uses, registry.network_hash)) is not None:
        notes.append(hashes)
    hires_plan = None
    if request.task == "txt2img" and request.enable_hr and (request.hr_prompt or request.hr_negative_prompt):
        hires_plan = read_prompts(request.hr_prompt or request.prompt,
                                  request.hr_negative_prompt or request.negative_prompt, list(request.styles), styles)
        # One set of LoRAs serves both passes (they are switched on once per batch): the hires prompt's tags that
        # the first prompt does not have are said, not applied.
        first = {tag.name for tag in plan.prepared.networks}
        notes.extend(Note.warn(f"LoRA {tag.name} of the hires prompt not applied: the hires pass uses the first "
                               "prompt's LoRAs") for tag in hires_plan.prepared.networks if tag.name not in first)
    embeddings: dict[str, Any] = {}
    if library is not None:
        text = f"{plan.prepared.prompt}\n{plan.prepared.negative_prompt}".lower()
        if hires_plan is not None:
            text += f"\n{hires_plan.prepared.prompt}\n{hires_plan.prepared.negative_prompt}".lower()
        named = [info for info in registry.embeddings() if Path(info.path).stem.lower() in text]
        readable, unreadable = library.readable(named)
        embeddings = {embedding.name: embedding.vectors for embedding in readable}
        notes.extend(Note.warn(f"Embedding {name} not used: {reason}") for name, reason in unreadable.items())
    return JobPrompts(plan, uses, options, embeddings, notes, hires_plan)
