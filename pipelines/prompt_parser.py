"""AUTOMATIC1111's prompt language, read exactly as A1111 reads it, without lark and without torch.

What each rule follows (AUTOMATIC1111/stable-diffusion-webui, 1.10):

- ``parse_prompt_attention``: ``modules/prompt_parser.py`` ``parse_prompt_attention`` and its ``re_attention`` /
  ``re_break`` patterns: ``(x)`` x1.1, ``[x]`` /1.1, ``(x:1.3)``, the escapes, unbalanced brackets closed at the
  end, ``BREAK`` as its own ``["BREAK", -1]`` entry, runs of equal weight merged. A1111's quirks are kept: a
  ``BREAK`` inside brackets has its -1 multiplied (so it is no longer a chunk break but the word "BREAK" with a
  negative weight), and a malformed number such as ``(x:1.2.3)`` is an error (A1111 raises ``ValueError``; here
  ``PromptSyntaxError``).
- ``get_learned_conditioning_prompt_schedules``: the same file's lark grammar (``schedule_parser``) re-implemented
  as a small recursive-descent parser. Prompt editing ``[from:to:when]``, ``[to:when]``, ``[from::when]``,
  alternation ``[a|b|c]`` (option ``(step - 1) % n``), nesting, the current step rule (a ``when`` written with a
  dot is a fraction of the steps, otherwise a step number; ``int()`` truncation; values below 1 never start a new
  entry; the hires-fix offsets) and ``use_old_scheduling``. Stray brackets and colons outside any construct are
  kept as text, as the grammar's ``start`` rule allows; a prompt the grammar rejects (a ``|`` outside an
  alternation, a trailing lone backslash) is not scheduled at all: ``[[steps, prompt]]``.
  One deliberate choice: where lark's Earley parser is ambiguous (a construct immediately followed by a stray
  ``]`` or ``:``, e.g. ``[a:1]]``), A1111's answer depends on Python's per-process string hash seed (verified
  with lark 1.1.2, A1111's pinned version: seed 0 leaves ``[a:1]]`` unscheduled, seed 2 schedules it). This
  parser always takes the construct, which is one of A1111's answers.
- ``split_and`` / ``get_multicond_prompt_list``: ``re_AND`` (``\\bAND\\b`` not followed by ``_PERP``/``_SALT``/
  ``_TOPK``) and ``re_weight`` (a trailing ``:number`` is the sub-prompt's weight, also without ``AND``).
- ``parse_extra_networks``: ``modules/extra_networks.py`` ``parse_prompt`` (``<(\\w+):([^>]+)>`` removed from the
  text, arguments split on ``:``) and the LoRA argument rules of ``extra_networks_lora.ExtraNetworkLora.activate``
  (``<lora:name:te:unet:dyn>``, ``te=``/``unet=``/``dyn=`` named forms). A1111 parses tags in the positive prompt
  only; a tag in the negative prompt reaches CLIP as text.
- ``strip_comments``: ``modules/processing_scripts/comments.py`` (A1111 1.8+, on by default).
- ``load_styles`` / ``merge_style`` / ``apply_styles`` / ``extract_styles``: ``modules/styles.py`` (``{prompt}``
  placeholder, else joined with ", " after stripping; rows whose name starts with ``#`` skipped; the old
  ``name,text`` header read; ``extract_styles_from_prompt`` to find the styles in a pasted prompt).

Order A1111 applies them in: styles, comments, extra-network tags (positive prompt), ``AND`` split (positive
prompt), schedules, then attention parsing per scheduled text (``prompt_encoding``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidRequest


class PromptSyntaxError(InvalidRequest):
    """A prompt A1111 itself would fail on (a malformed weight such as ``(cat:1.2.3)``, a bad LoRA weight); the
    field is the prompt unless the caller names the negative one."""

    def __init__(self, message: str, field: str | None = "prompt"):
        super().__init__(message, field)


# --- comments (A1111 1.8+ processing_scripts/comments.py) -----------------------------------------------------
_WHOLE_LINE_COMMENT = re.compile("(^|\n)#[^\n]*(\n|$)")
_TRAILING_COMMENT = re.compile("#[^\n]*(\n|$)")


def strip_comments(text: str) -> str:
    """Remove ``#`` comments: whole comment lines first, then the rest of any line after a ``#``."""
    text = _WHOLE_LINE_COMMENT.sub("\n", text)
    return _TRAILING_COMMENT.sub("\n", text)


# --- styles (modules/styles.py) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptStyle:
    """One row of A1111's ``styles.csv``."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


@dataclass(frozen=True)
class StyledPrompt:
    """A prompt pair after styles, and the requested style names that were not found."""

    prompt: str
    negative_prompt: str
    missing: tuple[str, ...] = ()


def merge_style(style_text: str, prompt: str) -> str:
    """A1111's ``merge_prompts``: ``{prompt}`` in the style is replaced by the prompt; otherwise the stripped prompt
    and stripped style are joined with ", " (an empty side is left out)."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, style_texts: Iterable[str]) -> str:
    """Merge each style text into the prompt in order (A1111's ``apply_styles_to_prompt``)."""
    for style_text in style_texts:
        prompt = merge_style(style_text, prompt)
    return prompt


def load_styles(path: str | Path) -> dict[str, PromptStyle]:
    """Read an A1111 ``styles.csv`` (UTF-8 with or without BOM); a missing file is no styles.

    Later rows with the same name win, as in A1111. Raises ``InvalidRequest`` for a file that is not CSV with a
    ``name`` column."""
    path = Path(path)
    if not path.is_file():
        return {}
    styles: dict[str, PromptStyle] = {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        if reader.fieldnames is None:
            return {}
        if "name" not in reader.fieldnames:
            raise InvalidRequest(f"{path} is not an A1111 styles file: it has no 'name' column.")
        for row in reader:
            name = row.get("name")
            if not row or name is None or name.startswith("#"):
                continue
            prompt = row["prompt"] if "prompt" in row else row.get("text")
            styles[name] = PromptStyle(name, prompt or "", row.get("negative_prompt") or "")
    return styles


def apply_named_styles(prompt: str, negative_prompt: str, names: Sequence[str],
                       styles: Mapping[str, PromptStyle]) -> StyledPrompt:
    """Apply the styles ``names`` (in order) to both prompts. Unknown names change nothing (A1111 applies its empty
    "None" style) and are listed in ``missing`` so that the caller can warn."""
    found = [styles[name] for name in names if name in styles]
    missing = tuple(name for name in names if name not in styles)
    return StyledPrompt(
        apply_styles(prompt, [style.prompt for style in found]),
        apply_styles(negative_prompt, [style.negative_prompt for style in found]),
        missing,
    )


_SPACES = re.compile("  +")


def _extract_style_text(style_text: str, prompt: str) -> tuple[bool, str]:
    """A1111's ``extract_style_text_from_prompt``: undo one ``merge_style`` (runs of spaces compared as one)."""
    stripped_prompt = _SPACES.sub(" ", prompt.strip())
    stripped_style = _SPACES.sub(" ", style_text.strip())
    if "{prompt}" in stripped_style:
        parts = stripped_style.split("{prompt}")
        if len(parts) == 2:  # A1111 fails on a style with two placeholders; here it simply does not match
            left, right = parts
            if stripped_prompt.startswith(left) and stripped_prompt.endswith(right):
                return True, stripped_prompt[len(left):len(stripped_prompt) - len(right)]
    elif stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[:len(stripped_prompt) - len(stripped_style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def extract_styles(prompt: str, negative_prompt: str,
                   styles: Mapping[str, PromptStyle]) -> tuple[list[str], str, str]:
    """Find the styles a prompt pair was made with (A1111's ``extract_styles_from_prompt``, used when PNG Info sends
    parameters to a tab): the style names in application order and the prompts with those styles taken out."""
    found: list[str] = []
    candidates = list(styles.values())
    while True:
        for style in candidates:
            if not style.prompt and not style.negative_prompt:
                continue
            matched, new_prompt = _extract_style_text(style.prompt, prompt)
            if not matched:
                continue
            matched, new_negative = _extract_style_text(style.negative_prompt, negative_prompt)
            if not matched:
                continue
            prompt, negative_prompt = new_prompt, new_negative
            candidates.remove(style)
            found.append(style.name)
            break
        else:
            return list(reversed(found)), prompt, negative_prompt


# --- extra networks (modules/extra_networks.py) ------------------------------------------------------------------
EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
# A1111 registers "lyco" as an alias of the built-in Lora network (extensions-builtin/Lora).
EXTRA_NETWORK_ALIASES = {"lyco": "lora"}


@dataclass(frozen=True)
class LoraMultipliers:
    """The weights of one ``<lora:...>`` tag: text encoder, UNet, and the optional dynamic dim."""

    te: float
    unet: float
    dyn_dim: int | None = None


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One ``<kind:arg1:arg2...>`` tag found in a prompt, arguments as written (A1111's ``ExtraNetworkParams``)."""

    kind: str
    items: tuple[str, ...]
    text: str = ""

    @property
    def network(self) -> str:
        """The network type after A1111's aliases ("lyco" is "lora")."""
        return EXTRA_NETWORK_ALIASES.get(self.kind, self.kind)

    @property
    def positional(self) -> tuple[str, ...]:
        """Arguments without ``key=`` (the first is the network's name)."""
        return tuple(item for item in self.items if len(item.split("=", 2)) != 2)

    @property
    def named(self) -> dict[str, str]:
        """``key=value`` arguments (A1111 splits on the first two ``=``; exactly one makes a named argument)."""
        pairs = (item.split("=", 2) for item in self.items)
        return {parts[0]: parts[1] for parts in pairs if len(parts) == 2}

    @property
    def name(self) -> str:
        """The network's name: the first positional argument ("" when there is none)."""
        return self.positional[0] if self.positional else ""

    def lora_multipliers(self) -> LoraMultipliers:
        """A1111's LoRA weights: ``te`` = 2nd positional or ``te=`` (default 1), ``unet`` = 3rd positional or
        ``unet=`` (default: ``te``), ``dyn`` = 4th positional or ``dyn=``. Raises ``PromptSyntaxError`` for a value
        that is not a number (A1111 reports the error and leaves the network out)."""
        positional, named = self.positional, self.named
        try:
            te = float(positional[1]) if len(positional) > 1 else 1.0
            te = float(named.get("te", te))
            unet = float(positional[2]) if len(positional) > 2 else te
            unet = float(named.get("unet", unet))
            dyn = int(positional[3]) if len(positional) > 3 else None
            dyn = int(named["dyn"]) if "dyn" in named else dyn
        except ValueError as exc:
            raise PromptSyntaxError(f"{self.text or self.kind}: the weights must be numbers ({exc}).") from exc
        return LoraMultipliers(te, unet, dyn)


def parse_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """Remove every ``<kind:args>`` tag from ``prompt`` (known kind or not, as A1111 does) and return the text sent
    on to CLIP with the tags in order of appearance."""
    tags: list[ExtraNetworkTag] = []

    def take(match: re.Match) -> str:
        tags.append(ExtraNetworkTag(match.group(1), tuple(match.group(2).split(":")), match.group(0)))
        return ""

    return EXTRA_NETWORK_TAG.sub(take, prompt), tags


# --- AND (composable diffusion) ----------------------------------------------------------------------------------
RE_AND = re.compile(r"\bAND\b(?!_PERP|_SALT|_TOPK)")
RE_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split a positive prompt on ``AND`` into ``(text, weight)`` sub-prompts; a trailing ``:number`` is the weight
    (default 1.0), and applies even to a prompt without ``AND``."""
    parts = []
    for subprompt in RE_AND.split(prompt):
        match = RE_WEIGHT.search(subprompt)
        text, weight = match.groups() if match is not None else (subprompt, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def get_multicond_prompt_list(
    prompts: Sequence[str],
) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """A1111's ``get_multicond_prompt_list``: per prompt, ``(index, weight)`` into one de-duplicated list of
    sub-prompt texts, and that list's index by text."""
    res_indexes: list[list[tuple[int, float]]] = []
    flat: list[str] = []
    index_of: dict[str, int] = {}
    for prompt in prompts:
        indexes = []
        for text, weight in split_and(prompt):
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            indexes.append((index_of[text], weight))
        res_indexes.append(indexes)
    return res_indexes, flat, index_of


# --- schedules: prompt editing and alternation -----------------------------------------------------------------
# The grammar (A1111's lark grammar, in words): a construct is
#   "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"             emphasis: kept verbatim
#   "[" [prompt ":"] prompt ":" [ws] NUMBER [ws] "]"                         prompt editing
#   "[" prompt ("|" [prompt])+ "]"                                           alternation
# where a prompt is any run of constructs, whitespace and plain text (no unescaped []():| and no lone backslash).
# At the top level "[", "]", "(", ")" and ":" that belong to no construct are kept as text.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")  # lark's SIGNED_NUMBER
_WHITESPACE = re.compile(r"\s+")
_SPECIAL = frozenset("\\[]():|")


@dataclass
class _Edit:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``. ``when`` is the number as written."""

    before: list | None
    after: list
    when_text: str
    when: int = 0  # set by _collect_steps (A1111 rewrites the tree the same way)


@dataclass
class _Alternation:
    options: list[list]


Segments = list  # of str | _Edit | _Alternation


class _ScheduleParser:
    """Recursive descent over one prompt; each position is parsed at most once (memoised)."""

    def __init__(self, text: str):
        self.text = text
        self._prompts: dict[int, tuple[Segments, int] | None] = {}
        self._constructs: dict[int, tuple[Segments, int] | None] = {}

    def parse(self) -> Segments | None:
        """The whole text as top-level segments, or None when the grammar rejects it."""
        text, out, pos = self.text, [], 0
        while pos < len(text):
            char = text[pos]
            if char in "[(":
                found = self._construct(pos)
                if found is not None:
                    out.extend(found[0])
                    pos = found[1]
                    continue
            if char in "[]():":
                out.append(char)  # a stray bracket or colon: text, as the grammar's start rule allows
                pos += 1
                continue
            if char == "|":
                return None
            end = self._plain_end(pos)
            if end is None:
                return None
            out.append(text[pos:end])
            pos = end
        return out

    def _plain_end(self, pos: int) -> int | None:
        """End of the plain/whitespace run at ``pos``; a backslash takes the next character (not a newline)."""
        text = self.text
        while pos < len(text):
            if text[pos] == "\\":
                if pos + 1 >= len(text) or text[pos + 1] == "\n":
                    return None  # lark's plain is ([^...]|\\.)+ and "." stops at a newline
                pos += 2
            elif text[pos] in _SPECIAL:
                break
            else:
                pos += 1
        return pos

    def _prompt(self, pos: int) -> tuple[Segments, int] | None:
        """A prompt from ``pos`` to the first ``:``, ``|``, ``]``, ``)`` at its own level (or the end)."""
        if pos in self._prompts:
            return self._prompts[pos]
        text, out, start, result = self.text, [], pos, None
        while True:
            if pos >= len(text) or text[pos] in ":|])":
                result = (out, pos)
                break
            if text[pos] in "[(":
                found = self._construct(pos)
                if found is None:
                    break
                out.extend(found[0])
                pos = found[1]
                continue
            end = self._plain_end(pos)
            if end is None:
                break
            out.append(text[pos:end])
            pos = end
        self._prompts[start] = result
        return result

    def _number_then_close(self, pos: int) -> tuple[str, int] | None:
        """``[ws] NUMBER [ws] "]"`` at ``pos``: the number's text and the position after the bracket."""
        text = self.text
        space = _WHITESPACE.match(text, pos)
        pos = space.end() if space else pos
        number = _NUMBER.match(text, pos)
        if number is None:
            return None
        pos = number.end()
        space = _WHITESPACE.match(text, pos)
        pos = space.end() if space else pos
        if pos < len(text) and text[pos] == "]":
            return number.group(0), pos + 1
        return None

    def _construct(self, pos: int) -> tuple[Segments, int] | None:
        if pos not in self._constructs:
            self._constructs[pos] = self._parse_construct(pos)
        return self._constructs[pos]

    def _parse_construct(self, pos: int) -> tuple[Segments, int] | None:
        text, opener = self.text, self.text[pos]
        first = self._prompt(pos + 1)
        if first is None or first[1] >= len(text):
            return None
        body, at = first
        closer = text[at]
        if opener == "(":
            if closer == ")":
                return ["(", *body, ")"], at + 1
            if closer == ":":
                second = self._prompt(at + 1)
                if second is not None and second[1] < len(text) and text[second[1]] == ")":
                    return ["(", *body, ":", *second[0], ")"], second[1] + 1
            return None
        if closer == "]":
            return ["[", *body, "]"], at + 1
        if closer == "|":
            options = [body]
            while text[at] == "|":
                option = self._prompt(at + 1)
                if option is None or option[1] >= len(text):
                    return None
                options.append(option[0])
                at = option[1]
                if text[at] == "]":
                    return [_Alternation(options)], at + 1
            return None
        if closer == ":":
            number = self._number_then_close(at + 1)
            if number is not None:
                return [_Edit(None, body, number[0])], number[1]
            second = self._prompt(at + 1)
            if second is not None and second[1] < len(text) and text[second[1]] == ":":
                number = self._number_then_close(second[1] + 1)
                if number is not None:
                    return [_Edit(body, second[0], number[0])], number[1]
        return None


def _walk(segments: Segments) -> Iterable[_Edit | _Alternation]:
    for segment in segments:
        if isinstance(segment, _Edit):
            yield segment
            if segment.before is not None:
                yield from _walk(segment.before)
            yield from _walk(segment.after)
        elif isinstance(segment, _Alternation):
            yield segment
            for option in segment.options:
                yield from _walk(option)


def _collect_steps(segments: Segments, steps: int, int_offset: int, flt_offset: float,
                   use_old_scheduling: bool) -> list[int]:
    """The steps at which the text changes (A1111's ``collect_steps``); sets each edit's ``when``."""
    boundaries = {steps}
    for node in _walk(segments):
        if isinstance(node, _Alternation):
            boundaries.update(range(1, steps + 1))
            continue
        value = float(node.when_text)
        if use_old_scheduling:
            value = value * steps if value < 1 else value
        elif "." in node.when_text:
            value = (value - flt_offset) * steps
        else:
            value = value - int_offset
        node.when = min(steps, int(value))
        if node.when >= 1:
            boundaries.add(node.when)
    return sorted(boundaries)


def _render(segments: Segments, step: int) -> str:
    """The text at ``step`` (A1111's ``at_step``): an edit shows ``before`` up to and including ``when``."""
    out = []
    for segment in segments:
        if isinstance(segment, str):
            out.append(segment)
        elif isinstance(segment, _Edit):
            chosen = (segment.before or []) if step <= segment.when else segment.after
            out.append(_render(chosen, step))
        else:
            out.append(_render(segment.options[(step - 1) % len(segment.options)], step))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None,
                    use_old_scheduling: bool = False) -> list[tuple[int, str]]:
    """One prompt's schedule: ``[(end_at_step, text), ...]``, the last ``end_at_step`` being the step count.

    ``steps`` counts the sampler's model calls as A1111 does (second-order samplers count double). With
    ``hires_steps`` (the hires-fix pass), whole numbers count on from the first pass's ``steps`` and fractions on
    from 1.0, unless ``use_old_scheduling``."""
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, total = 0, 0.0, steps
    else:
        int_offset, flt_offset, total = steps, 1.0, hires_steps
    segments = _ScheduleParser(prompt).parse()
    if segments is None:
        return [(total, prompt)]
    boundaries = _collect_steps(segments, total, int_offset, flt_offset, use_old_scheduling)
    return [(step, _render(segments, step)) for step in boundaries]


def get_learned_conditioning_prompt_schedules(prompts: Sequence[str], base_steps: int, hires_steps: int | None = None,
                                              use_old_scheduling: bool = False) -> list[list[list]]:
    """A1111's function of the same name: for each prompt, ``[[end_at_step, text], ...]`` (each distinct prompt
    parsed once)."""
    cache = {prompt: prompt_schedule(prompt, base_steps, hires_steps, use_old_scheduling) for prompt in set(prompts)}
    return [[[step, text] for step, text in cache[prompt]] for prompt in prompts]


def schedule_index_at(end_steps: Sequence[int], step: int) -> int:
    """Which schedule entry applies at sampling ``step`` (0-based count of model calls, A1111's
    ``CFGDenoiser.step``): the first whose ``end_at_step >= step``, else the first (``reconstruct_cond_batch``)."""
    for index, end in enumerate(end_steps):
        if step <= end:
            return index
    return 0


# --- attention: (x), [x], (x:1.3), BREAK ------------------------------------------------------------------------
_ATTENTION_TOKEN = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1


def parse_prompt_attention(text: str) -> list[list]:
    """Split ``text`` into ``[fragment, weight]`` pairs, A1111's ``parse_prompt_attention``:

    ``(x)`` x1.1, ``[x]`` /1.1, ``(x:w)`` xw, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` literal, brackets left open
    are closed at the end, ``BREAK`` becomes ``["BREAK", -1]``, neighbours of equal weight are merged and an empty
    prompt is ``[["", 1.0]]``. Raises ``PromptSyntaxError`` for a weight that is not a number (``(x:1.2.3)``)."""
    result: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for entry in result[start:]:
            entry[1] *= multiplier

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            result.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(result))
        elif token == "[":
            square_open.append(len(result))
        elif weight is not None and round_open:
            try:
                multiplier = float(weight)
            except ValueError as exc:
                raise PromptSyntaxError(f"'{token}' in the prompt: the weight {weight!r} is not a number.") from exc
            multiply_from(round_open.pop(), multiplier)
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_BRACKET_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index > 0:
                    result.append(["BREAK", -1])
                result.append([part, 1.0])

    for start in round_open:
        multiply_from(start, ROUND_BRACKET_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_BRACKET_MULTIPLIER)

    if not result:
        return [["", 1.0]]
    merged = [result[0]]
    for entry in result[1:]:
        if entry[1] == merged[-1][1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return merged


# --- the whole pre-processing, in A1111's order ------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedPrompts:
    """A prompt pair ready for encoding: styles applied, comments stripped, extra-network tags taken out of the
    positive prompt (``networks``), plus the style names that were not found."""

    prompt: str
    negative_prompt: str
    networks: list[ExtraNetworkTag] = field(default_factory=list)
    missing_styles: tuple[str, ...] = ()


def prepare_prompts(prompt: str, negative_prompt: str = "", style_names: Sequence[str] = (),
                    styles: Mapping[str, PromptStyle] | None = None, comments: bool = True) -> PreparedPrompts:
    """Styles, then ``#`` comments (A1111's default ``enable_prompt_comments``), then extra-network tags out of the
    positive prompt, as A1111's ``process_images`` does before encoding."""
    styled = apply_named_styles(prompt, negative_prompt, style_names, styles or {})
    positive, negative = styled.prompt, styled.negative_prompt
    if comments:
        positive, negative = strip_comments(positive), strip_comments(negative)
    positive, networks = parse_extra_networks(positive)
    return PreparedPrompts(positive, negative, networks, styled.missing)
