"""A1111's text conditioning on transformers' CLIP text models: weighted 75-token chunks, clip skip, emphasis,
textual-inversion embeddings, SD 1.x / SD 2.x / SDXL, and the per-step schedule diffusers can swap in.

What each rule follows (AUTOMATIC1111/stable-diffusion-webui, 1.10):

- Chunking, ``tokenize_line``: ``modules/sd_hijack_clip.py`` ``TextConditionalModel.tokenize_line``. Each weighted
  fragment of ``parse_prompt_attention`` is tokenized on its own (no BOS/EOS); tokens fill chunks of 75; a
  ``BREAK`` entry closes the chunk; when a chunk is full and a comma lies at most ``comma_padding_backtrack``
  (default 20) tokens back, the tokens after that comma move to the next chunk; every chunk becomes
  ``BOS + 75 tokens (EOS-padded) + EOS``. A1111's token count (the UI counter) counts every closed chunk as 75 and
  the last one by its real length. Kept as A1111 has it: an embedding moved by the comma backtrack leaves its
  vectors behind in the previous chunk (A1111 does not move the "fixes").
- Padding: SD 1.x and SDXL's CLIP-L pad with EOS; OpenCLIP (SD 2.x, SDXL's CLIP-G) puts token id 0 after the first
  EOS (``process_tokens``, ``sd_hijack_open_clip.py``: ``id_pad = 0``).
- Encoding, one chunk at a time, chunks concatenated along the sequence axis (``forward``/``process_tokens``). All
  texts of one schedule are encoded as one batch, as A1111 does; texts with fewer chunks get empty chunks
  (``empty_chunk``).
- Layers (``encode_with_transformers``): SD 1.x: ``last_hidden_state``, or with clip skip N > 1
  ``hidden_states[-N]`` then ``final_layer_norm``. SD 2.x: A1111's OpenCLIP wrapper always takes the penultimate
  layer through ``ln_final`` and ignores clip skip; diffusers' converted SD 2.x text encoder has that last layer
  removed already (``configs/sd2/text_encoder``: 23 of OpenCLIP-H's 24 layers), so this is its
  ``last_hidden_state``, and clip skip is ignored here too. SDXL: CLIP-L ``hidden_states[-2]`` (A1111's
  ``layer_idx`` 11 of 12) without the final norm, or ``hidden_states[-N]`` when ``sdxl_clip_l_skip`` is on (A1111's
  option, off by default); CLIP-G ``hidden_states[-2]`` (``layer: penultimate``) without the final norm, its pooled
  output the projected final-normed EOS state (``text_embeds``) of the FIRST chunk (``zs[0].pooled``). The two are
  concatenated along the feature axis (sgm ``GeneralConditioner``).
- Emphasis (``modules/sd_emphasis.py``): "Original" multiplies each token's vector by its weight, then rescales the
  chunk batch to its original mean (the mean over the whole batch, schedule entries counted as A1111 batches them);
  "No norm" only multiplies; "Ignore" parses weights but does not apply them; "None" does not parse brackets or
  ``BREAK`` at all (the whole text is one fragment).
- Textual inversion (``modules/textual_inversion/textual_inversion.py`` ``EmbeddingDatabase``,
  ``sd_hijack.EmbeddingsWithFixes``): an embedding's name is tokenized; where those tokens appear in a fragment's
  tokens (longest name first) they are replaced by the embedding's vectors, which count toward the chunk, move as a
  whole to the next chunk when they do not fit, and carry the fragment's weight. SDXL files give ``clip_l`` and
  ``clip_g``; an embedding whose width does not fit the model is skipped (the name stays text), as A1111 skips it.
- SDXL's empty negative prompt is all zeros, embeddings and pooled (``sd_models_xl.get_learned_conditioning``:
  ``force_zero_negative_prompt``).
- ``AND`` parts of different lengths are padded by repeating their last vector (``prompt_parser.stack_conds``);
  prompt and negative are then padded to the same length with the empty prompt's encoding (``pad_cond``, A1111's
  "pad prompt/negative prompt to be same length" option), which diffusers needs for one batched CFG call.
- Step selection (``reconstruct_cond_batch``): at sampling step ``s`` (0-based count of model calls) the first
  entry with ``s <= end_at_step`` applies.
- Infotext: ``Emphasis`` is recorded when a text holds "(" or "[" and the mode is not "Original".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequest
from .prompt_parser import PromptSyntaxError, parse_prompt_attention, prompt_schedule, schedule_index_at, split_and

if TYPE_CHECKING:
    import torch

CHUNK_LENGTH = 75
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
DEFAULT_EMPHASIS = "Original"
DEFAULT_COMMA_PADDING_BACKTRACK = 20
OPEN_CLIP_PAD_ID = 0
# sd1: CLIP-L of SD 1.x; sd2: OpenCLIP-H of SD 2.x; sdxl-l / sdxl-g: SDXL's two encoders.
FLAVOURS = ("sd1", "sd2", "sdxl-l", "sdxl-g")
_TI_KEYS = {"sd1": "clip_l", "sd2": "clip_l", "sdxl-l": "clip_l", "sdxl-g": "clip_g"}

EmbeddingValue = Any  # a tensor [n_vectors, width], or {"clip_l": tensor, "clip_g": tensor} for SDXL


@dataclass(frozen=True)
class EncodeOptions:
    """A1111's settings that change the conditioning (``shared.opts`` names in the comments)."""

    clip_skip: int = 1  # CLIP_stop_at_last_layers
    emphasis: str = DEFAULT_EMPHASIS  # emphasis
    comma_padding_backtrack: int = DEFAULT_COMMA_PADDING_BACKTRACK  # comma_padding_backtrack
    sdxl_clip_l_skip: bool = False  # sdxl_clip_l_skip
    hires_steps: int | None = None  # the hires-fix pass: schedules use A1111's hires offsets
    use_old_scheduling: bool = False  # use_old_scheduling

    def __post_init__(self) -> None:
        if self.emphasis not in EMPHASIS_MODES:
            raise InvalidRequest(f"Unknown emphasis mode {self.emphasis!r}: use one of {', '.join(EMPHASIS_MODES)}.",
                                 field="emphasis")
        if not isinstance(self.clip_skip, int) or self.clip_skip < 1:
            raise InvalidRequest("Clip skip must be a whole number of at least 1.", field="clip_skip")
        if not 0 <= self.comma_padding_backtrack < CHUNK_LENGTH:
            raise InvalidRequest(f"comma_padding_backtrack must be 0 to {CHUNK_LENGTH - 1}.",
                                 field="comma_padding_backtrack")


# --- tokens and chunks (pure Python: no torch needed) ------------------------------------------------------------
@dataclass
class PromptChunk:
    """77 token ids (BOS, 75, EOS), their weights, and ``(offset, embedding name)`` fixes; an offset counts from
    the first token after BOS (A1111's ``PromptChunkFix``)."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class TokenizerIds:
    """The special ids tokenizing needs: start, end and comma."""

    start: int
    end: int
    comma: int | None

    @classmethod
    def of(cls, tokenizer: Any) -> TokenizerIds:
        """Read them from a ``CLIPTokenizer`` (cached per tokenizer: its ``get_vocab()`` takes ~50 ms)."""
        return _tokenizer_ids(tokenizer)


@functools.lru_cache(maxsize=16)
def _tokenizer_ids(tokenizer: Any) -> TokenizerIds:
    return TokenizerIds(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.get_vocab().get(",</w>"))


@dataclass(frozen=True)
class EmbeddingEntry:
    """One textual-inversion embedding as the tokenizer sees it: its name's token ids and its vector count."""

    name: str
    ids: tuple[int, ...]
    vectors: int


class EmbeddingIndex:
    """Embedding names by their first token (A1111's ``ids_lookup``): longest name first for each first token."""

    def __init__(self, entries: Sequence[EmbeddingEntry] = ()):
        self.entries = {entry.name: entry for entry in entries}
        self._by_first: dict[int, list[EmbeddingEntry]] = {}
        for entry in entries:
            self._by_first.setdefault(entry.ids[0], []).append(entry)
        for matches in self._by_first.values():
            matches.sort(key=lambda entry: len(entry.ids), reverse=True)

    @classmethod
    def build(cls, tokenizer: Any, vector_counts: Mapping[str, int]) -> EmbeddingIndex:
        """Tokenize each name (``name -> number of vectors``); names that tokenize to nothing are left out."""
        entries = []
        for name, count in vector_counts.items():
            ids = tuple(_tokenize(tokenizer, [name])[0])
            if ids and count > 0:
                entries.append(EmbeddingEntry(name, ids, int(count)))
        return cls(entries)

    def find(self, tokens: Sequence[int], position: int) -> EmbeddingEntry | None:
        """The embedding whose name's tokens start at ``position``, if any (``find_embedding_at_position``)."""
        for entry in self._by_first.get(tokens[position], ()):
            if tuple(tokens[position:position + len(entry.ids)]) == entry.ids:
                return entry
        return None


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)["input_ids"]


def tokenize_line(text: str, tokenizer: Any, embeddings: EmbeddingIndex | None = None,
                  options: EncodeOptions | None = None, ids: TokenizerIds | None = None
                  ) -> tuple[list[PromptChunk], int]:
    """Split one scheduled text into 77-token chunks and count its tokens, as A1111's ``tokenize_line``."""
    options = options or EncodeOptions()
    ids = ids or TokenizerIds.of(tokenizer)
    embeddings = embeddings or EmbeddingIndex()
    parsed = parse_prompt_attention(text) if options.emphasis != "None" else [[text, 1.0]]
    tokenized = _tokenize(tokenizer, [fragment for fragment, _ in parsed])
    backtrack = options.comma_padding_backtrack

    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def close_chunk(is_last: bool = False) -> None:
        nonlocal chunk, token_count, last_comma
        token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        missing = CHUNK_LENGTH - len(chunk.tokens)
        if missing > 0:
            chunk.tokens += [ids.end] * missing
            chunk.multipliers += [1.0] * missing
        chunk.tokens = [ids.start, *chunk.tokens, ids.end]
        chunk.multipliers = [1.0, *chunk.multipliers, 1.0]
        last_comma = -1
        chunks.append(chunk)
        chunk = PromptChunk()

    for tokens, (fragment, weight) in zip(tokenized, parsed, strict=True):
        if fragment == "BREAK" and weight == -1:
            close_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == ids.comma:
                last_comma = len(chunk.tokens)
            elif (backtrack and len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(chunk.tokens) - last_comma <= backtrack):
                cut = last_comma + 1
                moved_tokens, moved_multipliers = chunk.tokens[cut:], chunk.multipliers[cut:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                close_chunk()
                chunk.tokens, chunk.multipliers = moved_tokens, moved_multipliers
            if len(chunk.tokens) == CHUNK_LENGTH:
                close_chunk()

            entry = embeddings.find(tokens, position)
            if entry is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue
            if entry.vectors > CHUNK_LENGTH:
                raise InvalidRequest(f"The embedding {entry.name} has {entry.vectors} vectors; at most "
                                     f"{CHUNK_LENGTH} fit in a prompt chunk.")
            if len(chunk.tokens) + entry.vectors > CHUNK_LENGTH:
                close_chunk()
            chunk.fixes.append((len(chunk.tokens), entry.name))
            chunk.tokens += [0] * entry.vectors
            chunk.multipliers += [weight] * entry.vectors
            position += len(entry.ids)

    if chunk.tokens or not chunks:
        close_chunk(is_last=True)
    return chunks, token_count


def empty_chunk(ids: TokenizerIds) -> PromptChunk:
    """A chunk with no prompt tokens: BOS then EOS (A1111's ``empty_chunk``)."""
    return PromptChunk([ids.start] + [ids.end] * (CHUNK_LENGTH + 1), [1.0] * (CHUNK_LENGTH + 2))


@dataclass(frozen=True)
class TokenCount:
    """The UI's token counter: tokens used and the chunk capacity they need ("90/150")."""

    count: int
    limit: int

    def __str__(self) -> str:
        return f"{self.count}/{self.limit}"


def target_token_count(token_count: int) -> int:
    """Capacity of the chunks a prompt of ``token_count`` tokens needs (``get_target_prompt_token_count``)."""
    return math.ceil(max(token_count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


def count_prompt_tokens(tokenizer: Any, text: str, steps: int = 20, *, is_positive: bool = True,
                        embeddings: Mapping[str, EmbeddingValue] | None = None,
                        options: EncodeOptions | None = None) -> TokenCount:
    """A1111's token counter for a prompt box: the largest count among the texts of every ``AND`` part (positive
    prompt only) and schedule entry. ``text`` should already have styles applied, comments stripped and
    extra-network tags removed (``prompt_parser.prepare_prompts``); a prompt that fails to parse is counted as
    it is, as A1111's counter does."""
    options = options or EncodeOptions()
    index = EmbeddingIndex.build(tokenizer, {name: _vector_count(value) for name, value in (embeddings or {}).items()})
    ids = TokenizerIds.of(tokenizer)
    parts = [part for part, _ in split_and(text)] if is_positive else [text]
    texts = [entry for part in parts for _, entry in prompt_schedule(part, steps)]
    best = 0
    for scheduled in dict.fromkeys(texts):
        try:
            best = max(best, tokenize_line(scheduled, tokenizer, index, options, ids)[1])
        except PromptSyntaxError:
            best = max(best, tokenize_line(scheduled, tokenizer, index, EncodeOptions(emphasis="None"), ids)[1])
    return TokenCount(best, target_token_count(best))


def _vector_count(value: EmbeddingValue) -> int:
    tensor = next(iter(value.values())) if isinstance(value, Mapping) else value
    shape = tuple(tensor.shape)
    return 1 if len(shape) == 1 else int(shape[0])


# --- text encoders -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipEncoder:
    """One tokenizer + transformers CLIP text model, driven the way A1111 drives that model's encoder."""

    tokenizer: Any
    text_encoder: Any
    flavour: str  # one of FLAVOURS

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ValueError(f"unknown CLIP flavour {self.flavour!r}; expected one of {FLAVOURS}")

    @property
    def pads_with_zero(self) -> bool:
        """OpenCLIP models put id 0 after the first EOS."""
        return self.flavour in ("sd2", "sdxl-g")

    @property
    def embedding_key(self) -> str:
        """The key of this encoder's vectors in an SDXL embedding file."""
        return _TI_KEYS[self.flavour]

    @property
    def width(self) -> int:
        """Hidden size: the width an embedding's vectors must have for this encoder."""
        return int(self.text_encoder.config.hidden_size)


@dataclass(frozen=True)
class TextConditioner:
    """The text side of one model: SD 1.x and 2.x have one encoder, SDXL two (CLIP-L then CLIP-G)."""

    encoders: tuple[ClipEncoder, ...]
    device: Any = None  # where token ids go; None: the first text encoder's parameters' device

    @property
    def is_sdxl(self) -> bool:
        """Two encoders (CLIP-L, CLIP-G): SDXL's rules for the empty negative prompt and the pooled output."""
        return len(self.encoders) == 2

    @classmethod
    def sd1(cls, tokenizer: Any, text_encoder: Any, device: Any = None) -> TextConditioner:
        """SD 1.x: CLIP-L, EOS padding, clip skip through the final layer norm."""
        return cls((ClipEncoder(tokenizer, text_encoder, "sd1"),), device)

    @classmethod
    def sd2(cls, tokenizer: Any, text_encoder: Any, device: Any = None) -> TextConditioner:
        """SD 2.x: diffusers' OpenCLIP-H (last layer already removed), id-0 padding, clip skip ignored."""
        return cls((ClipEncoder(tokenizer, text_encoder, "sd2"),), device)

    @classmethod
    def sdxl(cls, tokenizer: Any, text_encoder: Any, tokenizer_2: Any, text_encoder_2: Any,
             device: Any = None) -> TextConditioner:
        """SDXL: CLIP-L and CLIP-G (with projection), penultimate layers concatenated, pooled from CLIP-G."""
        return cls((ClipEncoder(tokenizer, text_encoder, "sdxl-l"), ClipEncoder(tokenizer_2, text_encoder_2, "sdxl-g")),
                   device)

    @classmethod
    def for_family(cls, family: str, components: Any, device: Any = None) -> TextConditioner:
        """From a pipeline or a component dict and a family key of ``families.py`` (``sd15*``, ``sd2*``,
        ``sdxl*``; the x4 upscaler's OpenCLIP encoder is driven as SD 2.x)."""

        def get(name: str) -> Any:
            return components.get(name) if isinstance(components, Mapping) else getattr(components, name, None)

        if family.startswith("sdxl"):
            return cls.sdxl(get("tokenizer"), get("text_encoder"), get("tokenizer_2"), get("text_encoder_2"), device)
        if family.startswith("sd2") or family == "x4-upscaler":
            return cls.sd2(get("tokenizer"), get("text_encoder"), device)
        if family.startswith("sd1"):
            return cls.sd1(get("tokenizer"), get("text_encoder"), device)
        raise ValueError(f"no text conditioning rules for the model family {family!r}")

    def input_device(self) -> Any:
        """Where token ids are put: ``device``, else the first encoder's (CPU when its weights are offloaded)."""
        if self.device is not None:
            return self.device
        parameter = next(self.encoders[0].text_encoder.parameters())
        return "cpu" if parameter.device.type == "meta" else parameter.device


def _inner_text_model(text_encoder: Any) -> Any:
    return getattr(text_encoder, "text_model", text_encoder)


@contextmanager
def _vectors_in_place(text_encoder: Any, rows: list[list[tuple[int, torch.Tensor]]]):
    """Replace token embeddings by textual-inversion vectors for one forward (A1111's ``EmbeddingsWithFixes``):
    row ``b``'s vectors go right after its BOS + ``offset``, cut at the end of the 77 positions."""
    if not any(rows):
        yield
        return

    def substitute(module, inputs, output):
        output = output.clone()
        for row, fixes in enumerate(rows):
            for offset, vectors in fixes:
                count = min(output.shape[1] - offset - 1, vectors.shape[0])
                output[row, offset + 1:offset + 1 + count] = vectors[:count].to(output.device, output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(substitute)
    try:
        yield
    finally:
        handle.remove()


def _hidden_state(outputs: Any, index: int, what: str) -> torch.Tensor:
    states = outputs.hidden_states
    if -index < -len(states):
        raise InvalidRequest(f"{what} {index} is more than this text encoder's {len(states) - 1} layers allow.",
                             field="clip_skip")
    return states[-index]


def _run_encoder(encoder: ClipEncoder, chunks: list[PromptChunk], vectors: Mapping[str, torch.Tensor],
                 options: EncodeOptions, device: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch of chunks through one text model: hidden states [B, 77, width], and pooled [B, P] for CLIP-G."""
    import torch

    tokens = torch.tensor([chunk.tokens for chunk in chunks], dtype=torch.long, device=device)
    if encoder.pads_with_zero:
        for row, chunk in enumerate(chunks):
            first_end = chunk.tokens.index(encoder.tokenizer.eos_token_id)
            tokens[row, first_end + 1:] = OPEN_CLIP_PAD_ID
    fixes = [[(offset, vectors[name]) for offset, name in chunk.fixes] for chunk in chunks]
    flavour, skip = encoder.flavour, options.clip_skip
    with _vectors_in_place(encoder.text_encoder, fixes):
        outputs = encoder.text_encoder(input_ids=tokens, output_hidden_states=flavour != "sd2" and
                                       (flavour != "sd1" or skip > 1))
    pooled = None
    if flavour == "sd1":
        z = outputs.last_hidden_state
        if skip > 1:
            z = _inner_text_model(encoder.text_encoder).final_layer_norm(_hidden_state(outputs, skip, "Clip skip"))
    elif flavour == "sd2":
        z = outputs.last_hidden_state
    elif flavour == "sdxl-l":
        z = _hidden_state(outputs, skip if options.sdxl_clip_l_skip else 2, "Clip skip")
    else:
        z = _hidden_state(outputs, 2, "The penultimate layer")
        pooled = getattr(outputs, "text_embeds", None)
        if pooled is None:
            raise ValueError("SDXL's second text encoder must be a CLIPTextModelWithProjection (pooled output)")
    return z, pooled


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, mode: str,
                   batch_rows: Sequence[int] | None = None) -> torch.Tensor:
    """Weights on hidden states [B, 77, C] (``sd_emphasis``). For "Original" the mean is taken over the batch as
    A1111 batches it: ``batch_rows`` lists, per A1111 batch row, which row of ``z`` it is (a schedule repeats texts)."""
    if mode in ("None", "Ignore") or bool((multipliers == 1.0).all()):
        # all weights 1: A1111's z * 1 * (mean / mean) is z itself, except that a zero mean (an untrained final
        # layer norm, as in the tiny test models) would make it NaN
        return z
    # A1111's multipliers are float32 whatever the model's dtype, so an fp16 product is promoted; cast back at the end.
    weighted = z * multipliers.to(z.device).unsqueeze(-1)
    if mode == "No norm":
        return weighted.to(z.dtype)
    if batch_rows is None or list(batch_rows) == list(range(z.shape[0])):
        original_mean, new_mean = z.mean(), weighted.mean()
    else:
        original_mean, new_mean = z[list(batch_rows)].mean(), weighted[list(batch_rows)].mean()
    if new_mean == 0:
        return weighted.to(z.dtype)  # A1111 would divide by zero here
    return (weighted * (original_mean / new_mean)).to(z.dtype)


# --- schedules of encodings --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedText:
    """One text's conditioning: hidden states [1, 77 * chunks, C] and, for SDXL, pooled [1, P]."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass(frozen=True)
class ScheduledEncoding:
    """The conditioning used up to and including sampling step ``end_at_step``."""

    end_at_step: int
    text: str
    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass(frozen=True)
class ConditioningSchedule:
    """One prompt (an ``AND`` part, or the negative prompt): its entries in step order, and its ``AND`` weight."""

    entries: tuple[ScheduledEncoding, ...]
    weight: float = 1.0

    def at_step(self, step: int) -> ScheduledEncoding:
        """The entry for sampling ``step`` (0-based count of model calls)."""
        return self.entries[schedule_index_at([entry.end_at_step for entry in self.entries], step)]

    def encodings(self) -> dict[str, EncodedText]:
        """Each distinct text of the schedule once, in order of first use, with its encoding."""
        return {entry.text: EncodedText(entry.embeds, entry.pooled) for entry in self.entries}


@dataclass(frozen=True)
class StepConditioning:
    """What one sampling step uses. ``prompt_embeds`` stacks the ``AND`` parts ([parts, L, C]) with their
    ``weights`` (A1111 adds ``weight * cfg * (cond_i - uncond)`` for each); without ``AND`` it is [1, L, C]."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None  # None: encoded without the negative prompt (no CFG)
    weights: tuple[float, ...]
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None


@dataclass(frozen=True)
class PromptConditioning:
    """A request's whole text conditioning: the ``AND`` parts of the prompt, the negative prompt (None when a call
    without classifier-free guidance does not use it), and notes."""

    positive: tuple[ConditioningSchedule, ...]
    negative: ConditioningSchedule | None
    used_embeddings: tuple[str, ...] = ()
    skipped_embeddings: tuple[str, ...] = ()
    infotext: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_composable(self) -> bool:
        """True when the prompt has ``AND`` parts (one noise prediction per part) or a weight other than 1."""
        return len(self.positive) > 1 or self.positive[0].weight != 1.0

    def schedules(self) -> tuple[ConditioningSchedule, ...]:
        """The ``AND`` parts, then the negative prompt when it was encoded."""
        return (*self.positive, self.negative) if self.negative is not None else self.positive

    def change_steps(self) -> list[int]:
        """Sampling steps (0-based) whose conditioning differs from the step before."""
        ends = sorted({entry.end_at_step for schedule in self.schedules() for entry in schedule.entries})
        return [end + 1 for end in ends[:-1]]

    def at_step(self, step: int) -> StepConditioning:
        """Everything sampling ``step`` (0-based count of model calls, as A1111's ``CFGDenoiser.step``) uses."""
        import torch

        parts = [schedule.at_step(step) for schedule in self.positive]
        negative = self.negative.at_step(step) if self.negative is not None else None
        pooled = torch.cat([part.pooled for part in parts]) if parts[0].pooled is not None else None
        return StepConditioning(
            torch.cat([part.embeds for part in parts]),
            negative.embeds if negative is not None else None,
            tuple(schedule.weight for schedule in self.positive),
            pooled,
            negative.pooled if negative is not None else None,
        )

    def step_callback(self, num_images_per_prompt: int = 1, guidance: bool = True,
                      then: Callable[..., dict] | None = None) -> Callable[..., dict]:
        """A diffusers ``callback_on_step_end`` that swaps ``prompt_embeds`` (and SDXL's ``add_text_embeds``) in
        when the schedule changes, so that prompt editing and alternation work with a stock pipeline.

        Start the pipeline with ``at_step(0)``'s tensors and list ``prompt_embeds`` (plus ``add_text_embeds`` for
        SDXL) in ``callback_on_step_end_tensor_inputs``. The callback of step ``i`` prepares step ``i + 1``; with
        ``guidance`` the tensors are ``[negative] * n + [prompt] * n`` as diffusers concatenates them. ``then`` is
        another callback run afterwards (progress, cancel). Not for ``AND`` prompts: those need one noise
        prediction per part."""
        if self.is_composable:
            raise ValueError("AND parts and prompt weights need composable guidance, not a stock pipeline callback")
        changes = set(self.change_steps())

        def callback(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
            if i + 1 in changes:
                step = self.at_step(i + 1)
                if "prompt_embeds" in kwargs:
                    kwargs["prompt_embeds"] = _diffusers_batch(step.prompt_embeds, step.negative_prompt_embeds,
                                                               num_images_per_prompt, guidance, kwargs["prompt_embeds"])
                if "add_text_embeds" in kwargs and step.pooled_prompt_embeds is not None:
                    kwargs["add_text_embeds"] = _diffusers_batch(step.pooled_prompt_embeds,
                                                                 step.negative_pooled_prompt_embeds,
                                                                 num_images_per_prompt, guidance,
                                                                 kwargs["add_text_embeds"])
            if then is not None:
                kwargs = then(pipe, i, t, kwargs)
            return kwargs

        return callback


def _diffusers_batch(positive: torch.Tensor, negative: torch.Tensor, count: int, guidance: bool,
                     like: torch.Tensor) -> torch.Tensor:
    import torch

    positive = positive.repeat(count, *([1] * (positive.dim() - 1)))
    if guidance:
        negative = negative.repeat(count, *([1] * (negative.dim() - 1)))
        positive = torch.cat([negative, positive])
    return positive.to(like.device, like.dtype)


def _embedding_vectors(conditioner: TextConditioner, embeddings: Mapping[str, EmbeddingValue]
                       ) -> tuple[list[dict[str, torch.Tensor]], dict[str, int], list[str]]:
    """Per encoder, the usable vectors of each embedding; the vector counts; the names skipped (wrong width, missing
    key, different counts between SDXL's two encoders)."""
    import torch

    per_encoder: list[dict[str, torch.Tensor]] = [{} for _ in conditioner.encoders]
    counts: dict[str, int] = {}
    skipped: list[str] = []
    for name, value in embeddings.items():
        found = []
        for encoder in conditioner.encoders:
            tensor = value.get(encoder.embedding_key) if isinstance(value, Mapping) else value
            if tensor is None:
                break
            tensor = torch.as_tensor(tensor)
            tensor = tensor.unsqueeze(0) if tensor.dim() == 1 else tensor
            if tensor.dim() != 2 or tensor.shape[1] != encoder.width:
                break
            found.append(tensor)
        if len(found) != len(conditioner.encoders) or len({tensor.shape[0] for tensor in found}) != 1:
            skipped.append(name)
            continue
        for index, tensor in enumerate(found):
            per_encoder[index][name] = tensor
        counts[name] = int(found[0].shape[0])
    return per_encoder, counts, skipped


@dataclass
class _Encoding:
    """Shared state of one ``encode_prompt_conditioning`` call."""

    conditioner: TextConditioner
    options: EncodeOptions
    vectors: list[dict[str, torch.Tensor]]
    indexes: list[EmbeddingIndex]
    ids: list[TokenizerIds]
    used: dict[str, None] = field(default_factory=dict)

    def encode_batch(self, texts: Sequence[str], zero_if_empty: bool = False) -> dict[str, EncodedText]:
        """A1111's ``get_learned_conditioning`` for one schedule: the texts (in schedule order, repeats included)
        encoded as one batch per chunk index; one result per distinct text."""
        import torch

        distinct = list(dict.fromkeys(texts))
        batch_rows = [distinct.index(text) for text in texts]
        device = self.conditioner.input_device()
        per_encoder = []
        pooled = None
        for e, encoder in enumerate(self.conditioner.encoders):
            chunk_lists = [tokenize_line(text, encoder.tokenizer, self.indexes[e], self.options, self.ids[e])[0]
                           for text in distinct]
            zs = []
            for index in range(max(len(chunks) for chunks in chunk_lists)):
                batch = [chunks[index] if index < len(chunks) else empty_chunk(self.ids[e]) for chunks in chunk_lists]
                for chunk in batch:
                    self.used.update(dict.fromkeys(name for _, name in chunk.fixes))
                with torch.no_grad():
                    z, chunk_pooled = _run_encoder(encoder, batch, self.vectors[e], self.options, device)
                    multipliers = torch.tensor([chunk.multipliers for chunk in batch])
                    zs.append(apply_emphasis(z, multipliers, self.options.emphasis, batch_rows))
                if index == 0 and chunk_pooled is not None:
                    pooled = chunk_pooled
            per_encoder.append(torch.cat(zs, dim=1))
        if len({z.shape[1] for z in per_encoder}) != 1:
            raise InvalidRequest("The two SDXL tokenizers split this prompt into different numbers of chunks.")
        embeds = torch.cat(per_encoder, dim=-1)
        if zero_if_empty and self.conditioner.is_sdxl and all(text == "" for text in texts):
            embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        return {text: EncodedText(embeds[row:row + 1], None if pooled is None else pooled[row:row + 1])
                for row, text in enumerate(distinct)}

    def schedule(self, text: str, steps: int, weight: float = 1.0, negative: bool = False) -> ConditioningSchedule:
        entries = prompt_schedule(text, steps, self.options.hires_steps, self.options.use_old_scheduling)
        encoded = self.encode_batch([entry for _, entry in entries], zero_if_empty=negative)
        return ConditioningSchedule(tuple(ScheduledEncoding(end, entry, encoded[entry].embeds, encoded[entry].pooled)
                                          for end, entry in entries), weight)


def _pad_with_last_vector(schedule: ConditioningSchedule, length: int) -> ConditioningSchedule:
    """A1111's ``stack_conds``: repeat the last vector up to ``length`` tokens."""
    import torch

    def pad(embeds: torch.Tensor) -> torch.Tensor:
        missing = length - embeds.shape[1]
        return embeds if missing <= 0 else torch.cat([embeds, embeds[:, -1:].repeat(1, missing, 1)], dim=1)

    return _map_embeds(schedule, pad)


def _pad_with_empty(schedule: ConditioningSchedule, length: int, empty: torch.Tensor) -> ConditioningSchedule:
    """A1111's ``pad_cond``: append the empty prompt's encoding until ``length`` tokens."""
    import torch

    def pad(embeds: torch.Tensor) -> torch.Tensor:
        repeats = (length - embeds.shape[1]) // empty.shape[1]
        return embeds if repeats <= 0 else torch.cat([embeds, empty.repeat(1, repeats, 1)], dim=1)

    return _map_embeds(schedule, pad)


def _map_embeds(schedule: ConditioningSchedule, change: Callable) -> ConditioningSchedule:
    done: dict[int, Any] = {}  # entries sharing one tensor keep sharing it
    entries = []
    for entry in schedule.entries:
        if id(entry.embeds) not in done:
            done[id(entry.embeds)] = change(entry.embeds)
        entries.append(ScheduledEncoding(entry.end_at_step, entry.text, done[id(entry.embeds)], entry.pooled))
    return ConditioningSchedule(tuple(entries), schedule.weight)


def _length(schedule: ConditioningSchedule) -> int:
    return schedule.entries[0].embeds.shape[1]


def needs_negative(guidance: bool, weights: Sequence[float]) -> bool:
    """Whether a call uses the negative prompt (the "uncond" noise prediction): with classifier-free guidance always;
    without it (CFG 1, one UNet pass per step) only for ``AND`` parts whose weights do not add up to 1, where A1111's
    ``uncond + Σ wᵢ (condᵢ − uncond)`` keeps ``(1 − Σ wᵢ) · uncond``."""
    return guidance or (len(weights) > 1 or weights[0] != 1.0) and abs(sum(weights) - 1.0) > 1e-9


def encode_prompt_conditioning(conditioner: TextConditioner, prompt: str, negative_prompt: str, steps: int,
                               options: EncodeOptions | None = None,
                               embeddings: Mapping[str, EmbeddingValue] | None = None,
                               guidance: bool = True) -> PromptConditioning:
    """Encode a prompt pair the way A1111 conditions a generation.

    ``prompt`` / ``negative_prompt`` are the texts after ``prompt_parser.prepare_prompts`` (styles applied,
    comments and extra-network tags removed). ``steps`` counts the sampler's model calls as A1111 does (double for
    second-order samplers). ``embeddings`` maps a textual-inversion name to its vectors ([n, width], or
    ``{"clip_l": ..., "clip_g": ...}`` for SDXL). Each ``AND`` part and the negative prompt are scheduled and every
    distinct text of a schedule is encoded once. All tensors returned have the same sequence length. Without
    ``guidance`` (CFG 1) the negative prompt is not encoded when nothing uses it (``needs_negative``): it neither
    costs a text-encoder pass nor pads the prompt to its length."""
    options = options or EncodeOptions()
    vectors, counts, skipped = _embedding_vectors(conditioner, embeddings or {})
    state = _Encoding(
        conditioner, options, vectors,
        [EmbeddingIndex.build(encoder.tokenizer, counts) for encoder in conditioner.encoders],
        [TokenizerIds.of(encoder.tokenizer) for encoder in conditioner.encoders],
    )
    by_text: dict[str, ConditioningSchedule] = {}
    positive = []
    for text, weight in split_and(prompt):
        if text not in by_text:
            by_text[text] = _field_errors(lambda text=text: state.schedule(text, steps), "prompt")
        positive.append(ConditioningSchedule(by_text[text].entries, weight))
    negative = None
    if needs_negative(guidance, [schedule.weight for schedule in positive]):
        negative = _field_errors(lambda: state.schedule(negative_prompt, steps, negative=True), "negative_prompt")

    longest = max(_length(schedule) for schedule in positive)
    positive = [_pad_with_last_vector(schedule, longest) for schedule in positive]
    if negative is not None and longest != _length(negative):
        empty = state.encode_batch([""])[""].embeds
        length = max(longest, _length(negative))
        positive = [_pad_with_empty(schedule, length, empty) for schedule in positive]
        negative = _pad_with_empty(negative, length, empty)

    texts = [entry.text for schedule in (*positive, *([negative] if negative is not None else []))
             for entry in schedule.entries]
    infotext = {}
    if options.emphasis != DEFAULT_EMPHASIS and any("(" in text or "[" in text for text in texts):
        infotext["Emphasis"] = options.emphasis
    return PromptConditioning(tuple(positive), negative, tuple(state.used), tuple(skipped), infotext)


def _field_errors(work: Callable[[], ConditioningSchedule], name: str) -> ConditioningSchedule:
    """Run ``work``; an ``InvalidRequest`` without a field is re-raised naming ``name``."""
    try:
        return work()
    except InvalidRequest as exc:
        if exc.field is None or isinstance(exc, PromptSyntaxError):  # the text it came from
            exc.field = name
        raise
