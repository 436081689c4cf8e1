"""Opt-in speed-ups that trade a little fidelity for time: feature caching across steps and token merging.

Both are applied to a diffusers UNet for the length of one pipeline call and removed afterwards, leaving the
model exactly as it was (same forward, same attention processors, no hooks), so the next default-mode image is
bit-identical to one made before they were ever switched on. The manager calls them like this::

    with applied_speedups(pipe, request) as notes:   # notes: ["DeepCache: interval 3", ...] for the infotext
        output = pipe(...)

* **DeepCache** (Ma et al., 2023, "DeepCache: Accelerating Diffusion Models for Free"): the deep part of the
  UNet changes slowly between adjacent steps. Every ``interval``-th UNet call runs in full and keeps the input
  of the last up block's final layer(s); the calls in between run only the shallow path (``conv_in``, then the
  last ``depth`` layers of the last up block, fed with the kept deep features) and skip everything else.
  With ``depth=1`` this is DeepCache's ``cache_branch_id=0``.
* **Token merging** (ToMe for SD, Bolya & Hoffman, 2023): before the self-attention of the full-resolution
  transformer blocks, similar tokens are merged (bipartite soft matching on a 2x2 grid, one random dst per
  cell), attention runs on fewer tokens, and the result is spread back to the original positions. Only the
  self-attention is merged (tomesd's recommended default). Implemented as a wrapper around each ``attn1``
  attention processor, so removing it is just putting the original processor back.

The PyPI packages (``DeepCache`` 0.1.1, ``tomesd`` 0.1.3) were checked against diffusers 0.42 and not used:
``tomesd`` swaps the class of every ``BasicTransformerBlock`` for a copy of a 2023 ``forward`` that no longer
matches diffusers' block (norm types, chunked feed-forward), and ``DeepCache`` rewrites the ``forward`` of
every down/up block and layer. The versions here touch one ``forward`` (DeepCache) or the ``attn1`` processors
(ToMe) and nothing else. Random weights cannot show the visual cost of either: judge that on real checkpoints.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from .infotext import Note

DEFAULT_CACHE_INTERVAL = 3  # DeepCache's recommended N for SD 1.x/2.x (2-3x fewer deep UNet passes)
DEFAULT_CACHE_DEPTH = 1  # last up-block layers re-run on cached steps; 1 = DeepCache's cache_branch_id 0
TOME_MAX_DOWNSAMPLE = 1  # merge only in the full-resolution transformer blocks, as tomesd recommends
TOME_STRIDE = 2  # one dst token per 2x2 cell
TOME_SEED = 0  # fixed: the same request must give the same image


# --------------------------------------------------------------------------------------------------------------
# DeepCache


def supports_deep_cache(unet: Any) -> bool:
    """True when ``unet`` has the layout DeepCache needs (a diffusers UNet whose last up block keeps full size)."""
    ups = getattr(unet, "up_blocks", None)
    downs = getattr(unet, "down_blocks", None)
    if not ups or not downs or not hasattr(unet, "conv_in") or not hasattr(unet, "get_time_embed"):
        return False
    last = ups[-1]
    return getattr(last, "upsamplers", None) is None and hasattr(last, "resnets")


class DeepCache:
    """Feature caching across UNet calls; ``apply()`` / ``remove()`` (or use it as a context manager).

    Call ``k * interval`` of a run is a full UNet pass that stores the deep features; the calls in between reuse
    them. A new run is detected when the timestep does not decrease (timesteps fall within one run), and a
    change in latent shape or batch forces a full pass, so batches, hires passes and img2img stay correct.
    """

    def __init__(self, unet: Any, interval: int = DEFAULT_CACHE_INTERVAL, depth: int = DEFAULT_CACHE_DEPTH):
        if interval < 1:
            raise ValueError("DeepCache interval must be at least 1")
        if not supports_deep_cache(unet):
            raise ValueError(f"DeepCache does not support {type(unet).__name__}")
        last_up = unet.up_blocks[-1]
        max_depth = min(len(last_up.resnets), len(unet.down_blocks[0].resnets) + 1)
        if not 1 <= depth <= max_depth:
            raise ValueError(f"DeepCache depth must be between 1 and {max_depth}")
        self.unet = unet
        self.interval = interval
        self.depth = depth
        self.calls = 0  # UNet calls in the current run
        self.full_calls = 0  # statistics for tests and the bench
        self.cached_calls = 0
        self._deep: torch.Tensor | None = None  # input to the first re-run layer, minus its skip connection
        self._deep_key: tuple | None = None
        self._last_t: float | None = None
        self._hook: Any = None
        self._had_instance_forward = False
        self._previous_forward: Any = None
        self._applied = False

    # -- install / remove ------------------------------------------------------------------------------------
    def apply(self) -> DeepCache:
        """Route the UNet's calls through the cache. Wraps whatever ``forward`` is current (offload hooks too)."""
        if self._applied:
            return self
        unet = self.unet
        self._had_instance_forward = "forward" in unet.__dict__
        self._previous_forward = unet.__dict__.get("forward")
        full_forward = unet.forward  # bound method, or accelerate's wrapper when offload hooks are installed
        first_layer = unet.up_blocks[-1].resnets[len(unet.up_blocks[-1].resnets) - self.depth]
        self._hook = first_layer.register_forward_pre_hook(self._keep_deep_features, with_kwargs=True)

        def forward(*args: Any, **kwargs: Any) -> Any:
            return self._forward(full_forward, *args, **kwargs)

        unet.forward = forward
        self._applied = True
        self.reset()
        return self

    def remove(self) -> None:
        """Put the UNet back exactly as it was and drop the cached tensors."""
        if not self._applied:
            return
        if self._had_instance_forward:
            self.unet.forward = self._previous_forward
        else:
            del self.unet.forward
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._applied = False
        self.reset()

    def reset(self) -> None:
        """Forget the cached features: the next call runs in full."""
        self.calls = 0
        self._deep = None
        self._deep_key = None
        self._last_t = None

    def __enter__(self) -> DeepCache:
        return self.apply()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # -- the work --------------------------------------------------------------------------------------------
    def _keep_deep_features(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not self._capturing:
            return
        hidden = args[0] if args else kwargs["input_tensor"]
        skip_channels = self.unet.config.block_out_channels[0]
        self._deep = hidden[:, : hidden.shape[1] - skip_channels].detach()

    _capturing = False

    def _forward(self, full_forward: Callable, sample: torch.Tensor, timestep: Any, encoder_hidden_states: Any,
                 *args: Any, **kwargs: Any) -> Any:
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        if self._last_t is not None and t >= self._last_t:
            self.reset()  # timesteps only fall within one run: this is a new run
        self._last_t = t
        key = (tuple(sample.shape), sample.dtype, sample.device,
               tuple(encoder_hidden_states.shape) if torch.is_tensor(encoder_hidden_states) else None)
        # ControlNet/adapter residuals feed the skipped deep layers: those runs always go in full.
        extra = ("down_block_additional_residuals", "mid_block_additional_residual",
                 "down_intrablock_additional_residuals")
        can_reuse = (self._deep is not None and self._deep_key == key and self.calls % self.interval != 0
                     and not args and not any(kwargs.get(name) is not None for name in extra))
        self.calls += 1
        if can_reuse:
            self.cached_calls += 1
            return self._shallow_forward(sample, timestep, encoder_hidden_states, **kwargs)
        self.full_calls += 1
        self._capturing = True
        try:
            out = full_forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        finally:
            self._capturing = False
        self._deep_key = key if self._deep is not None else None
        return out

    @torch.no_grad()
    def _shallow_forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                         class_labels: Any = None, timestep_cond: Any = None, attention_mask: Any = None,
                         cross_attention_kwargs: Any = None, added_cond_kwargs: Any = None,
                         encoder_attention_mask: Any = None, return_dict: bool = True, **_: Any) -> Any:
        """The UNet's own ``forward`` (diffusers 0.42) cut down to conv_in + the last ``depth`` up layers."""
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        unet = self.unet
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
        class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
        aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                     added_cond_kwargs=added_cond_kwargs)
        if unet.config.addition_embed_type == "image_hint":
            aug_emb, hint = aug_emb
            sample = torch.cat([sample, hint], dim=1)
        emb = emb + aug_emb if aug_emb is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        encoder_hidden_states = unet.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
        attn_kwargs = dict(encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs,
                           attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                           return_dict=False)

        hidden = unet.conv_in(sample)
        skips = [hidden]
        first_down = unet.down_blocks[0]
        down_attns = getattr(first_down, "attentions", None)
        for i in range(self.depth - 1):  # the down layers whose outputs the re-run up layers consume
            hidden = first_down.resnets[i](hidden, emb)
            if down_attns is not None:
                hidden = down_attns[i](hidden, **attn_kwargs)[0]
            skips.append(hidden)

        last_up = unet.up_blocks[-1]
        up_attns = getattr(last_up, "attentions", None)
        n = len(last_up.resnets)
        hidden = self._deep
        for j in range(n - self.depth, n):
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = last_up.resnets[j](hidden, emb)
            if up_attns is not None:
                hidden = up_attns[j](hidden, **attn_kwargs)[0]

        if unet.conv_norm_out:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        hidden = unet.conv_out(hidden)
        return UNet2DConditionOutput(sample=hidden) if return_dict else (hidden,)


# --------------------------------------------------------------------------------------------------------------
# Token merging


def _do_nothing(x: torch.Tensor) -> torch.Tensor:
    return x


def bipartite_merge_2d(metric: torch.Tensor, w: int, h: int, r: int, generator: torch.Generator | None,
                       sx: int = TOME_STRIDE, sy: int = TOME_STRIDE) -> tuple[Callable, Callable]:
    """ToMe's bipartite soft matching over a ``h x w`` token grid: returns ``merge`` and ``unmerge``.

    One token per ``sy x sx`` cell (random when ``generator`` is given, else the top-left one) is a destination;
    the ``r`` source tokens most similar to a destination are averaged into it. ``unmerge`` copies each merged
    result back to every position that went into it. Adapted from tomesd (MIT licence).
    """
    b, n, _ = metric.shape
    if r <= 0:
        return _do_nothing, _do_nothing
    device = metric.device
    with torch.no_grad():
        hsy, wsx = h // sy, w // sx
        if generator is None:
            rand_idx = torch.zeros(hsy, wsx, 1, device=device, dtype=torch.int64)
        else:
            rand_idx = torch.randint(sy * sx, size=(hsy, wsx, 1), generator=generator).to(device)
        cells = torch.zeros(hsy, wsx, sy * sx, device=device, dtype=torch.int64)
        cells.scatter_(dim=2, index=rand_idx, src=-torch.ones_like(rand_idx))
        cells = cells.view(hsy, wsx, sy, sx).transpose(1, 2).reshape(hsy * sy, wsx * sx)
        if hsy * sy < h or wsx * sx < w:  # grid not divisible by the stride: the border stays source
            grid = torch.zeros(h, w, device=device, dtype=torch.int64)
            grid[: hsy * sy, : wsx * sx] = cells
        else:
            grid = cells
        order = grid.reshape(1, -1, 1).argsort(dim=1, stable=True)  # dst (-1) first, then src (0)
        num_dst = hsy * wsx
        a_idx = order[:, num_dst:, :]  # src
        b_idx = order[:, :num_dst, :]  # dst

        def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            c = x.shape[-1]
            src = torch.gather(x, dim=1, index=a_idx.expand(x.shape[0], n - num_dst, c))
            dst = torch.gather(x, dim=1, index=b_idx.expand(x.shape[0], num_dst, c))
            return src, dst

        normed = metric / metric.norm(dim=-1, keepdim=True)
        a, bb = split(normed)
        scores = a @ bb.transpose(-1, -2)
        r = min(a.shape[1], r)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = torch.gather(node_idx[..., None], dim=-2, index=src_idx)

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = split(x)
        nb, t1, c = src.shape
        unm = torch.gather(src, dim=-2, index=unm_idx.expand(nb, t1 - r, c))
        src = torch.gather(src, dim=-2, index=src_idx.expand(nb, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(nb, r, c), src, reduce="mean")
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        unm_len = unm_idx.shape[1]
        unm, dst = x[..., :unm_len, :], x[..., unm_len:, :]
        c = unm.shape[-1]
        src = torch.gather(dst, dim=-2, index=dst_idx.expand(b, r, c))
        out = torch.zeros(b, n, c, device=x.device, dtype=x.dtype)
        a_full = a_idx.expand(b, a_idx.shape[1], 1)
        out.scatter_(dim=-2, index=b_idx.expand(b, num_dst, c), src=dst)
        out.scatter_(dim=-2, index=torch.gather(a_full, dim=1, index=unm_idx).expand(b, unm_len, c), src=unm)
        out.scatter_(dim=-2, index=torch.gather(a_full, dim=1, index=src_idx).expand(b, r, c), src=src)
        return out

    return merge, unmerge


class _MergingProcessor:
    """Wraps one ``attn1`` processor: merge tokens, run the original processor, unmerge its output."""

    def __init__(self, inner: Any, owner: TokenMerging):
        self.inner = inner
        self.owner = owner

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, **kwargs: Any) -> torch.Tensor:
        merge, unmerge = self.owner.merge_functions(hidden_states)
        if merge is _do_nothing or encoder_hidden_states is not None or attention_mask is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, temb=temb, **kwargs)
        out = self.inner(attn, merge(hidden_states), temb=temb, **kwargs)
        return unmerge(out)


class TokenMerging:
    """ToMe on the full-resolution self-attention layers of a UNet; ``apply()`` / ``remove()``."""

    def __init__(self, unet: Any, ratio: float, max_downsample: int = TOME_MAX_DOWNSAMPLE, seed: int = TOME_SEED):
        if not 0.0 < ratio <= 0.75:
            raise ValueError("token merging ratio must be in (0, 0.75]")
        self.unet = unet
        self.ratio = ratio
        self.max_downsample = max_downsample
        self.seed = seed
        self.size: tuple[int, int] | None = None  # latent h, w of the current call
        self._generator: torch.Generator | None = None
        self._originals: list[tuple[Any, Any]] = []
        self._hook: Any = None

    def apply(self) -> TokenMerging:
        """Wrap every transformer block's ``attn1`` processor. Safe to call twice."""
        if self._originals:
            return self
        for attn in _self_attentions(self.unet):
            self._originals.append((attn, attn.processor))
            attn.set_processor(_MergingProcessor(attn.processor, self))
        self._hook = self.unet.register_forward_pre_hook(self._note_size, with_kwargs=True)
        self._generator = torch.Generator(device="cpu").manual_seed(self.seed)
        return self

    def remove(self) -> None:
        """Put the original processors back and drop the size hook."""
        for attn, processor in self._originals:
            attn.set_processor(processor)
        self._originals.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self) -> TokenMerging:
        return self.apply()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def _note_size(self, module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if torch.is_tensor(sample) and sample.ndim == 4:
            self.size = (int(sample.shape[2]), int(sample.shape[3]))

    def merge_functions(self, x: torch.Tensor) -> tuple[Callable, Callable]:
        """``merge``/``unmerge`` for the tokens ``x`` (B, N, C), or no-ops where this layer is not merged."""
        if self.size is None or x.ndim != 3:
            return _do_nothing, _do_nothing
        h0, w0 = self.size
        downsample = int(math.ceil(math.sqrt(h0 * w0 / x.shape[1])))
        if downsample > self.max_downsample:
            return _do_nothing, _do_nothing
        w, h = int(math.ceil(w0 / downsample)), int(math.ceil(h0 / downsample))
        if w * h != x.shape[1]:
            return _do_nothing, _do_nothing
        # An odd batch cannot hold cond and uncond halves with the same random dst choice (tomesd's rule).
        generator = self._generator if x.shape[0] % 2 == 0 else None
        return bipartite_merge_2d(x, w, h, int(x.shape[1] * self.ratio), generator)


def _self_attentions(unet: Any) -> list[Any]:
    from diffusers.models.attention import BasicTransformerBlock

    return [m.attn1 for m in unet.modules() if isinstance(m, BasicTransformerBlock) and m.attn1 is not None]


# --------------------------------------------------------------------------------------------------------------
# What the manager calls


def speedup_notes(deep_cache: bool, token_merging: float, interval: int = DEFAULT_CACHE_INTERVAL) -> list[Note]:
    """Infotext entries for the switches in use, e.g. ``DeepCache: interval 3``, ``Token merging ratio: 0.5``.

    ``Token merging ratio`` is the key A1111 writes, so its PNG Info reads it back.
    """
    notes = []
    if deep_cache:
        notes.append(Note.param("DeepCache", f"interval {interval}"))
    if token_merging > 0:
        notes.append(Note.param("Token merging ratio", f"{token_merging:g}"))
    return notes


@contextmanager
def applied_speedups(pipe: Any, request: Any) -> Iterator[list[Note]]:
    """Apply the request's ``deep_cache`` / ``token_merging`` to ``pipe.unet`` for the ``with`` block.

    Yields the infotext notes for what was applied (empty in default mode: nothing is touched then). A model
    that cannot take a speed-up runs without it and the note says so. Everything is removed on exit, also after
    an exception or a cancel.
    """
    deep_cache = bool(getattr(request, "deep_cache", False))
    interval = int(getattr(request, "deep_cache_interval", None) or DEFAULT_CACHE_INTERVAL)
    ratio = float(getattr(request, "token_merging", 0.0) or 0.0)
    unet = getattr(pipe, "unet", None)
    notes: list[Note] = []
    with ExitStack() as stack:
        if deep_cache:
            if unet is not None and supports_deep_cache(unet):
                stack.enter_context(DeepCache(unet, interval=interval))
                notes += speedup_notes(True, 0.0, interval)
            else:
                notes.append(Note.param("DeepCache", "off (not supported by this model)"))
        if ratio > 0:
            if unet is not None and _self_attentions(unet):
                stack.enter_context(TokenMerging(unet, ratio))
                notes += speedup_notes(False, ratio)
            else:
                notes.append(Note.param("Token merging", "off (not supported by this model)"))
        yield notes


def unet_is_pristine(unet: Any) -> bool:
    """True when no speed-up is installed on ``unet`` (used by tests and as a guard in the manager)."""
    forward = unet.__dict__.get("forward")
    if isinstance(forward, types.FunctionType) and forward.__name__ == "forward" and "DeepCache" in (
            forward.__qualname__ or ""):
        return False
    return not any(isinstance(a.processor, _MergingProcessor) for a in _self_attentions(unet))
