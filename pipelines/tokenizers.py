"""Real CLIP tokenizers built from the bundled BPE files, so that nothing is fetched from a hub.

SD 1.x and SDXL's first tokenizer pad with ``<|endoftext|>``; SD 2.x and SDXL's second tokenizer pad with
``!`` (OpenCLIP). Everything else is identical.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CLIP_TOKENIZER_DIR = Path(__file__).resolve().parent / "configs" / "clip_tokenizer"
OPENAI_PAD = "<|endoftext|>"
OPENCLIP_PAD = "!"


@lru_cache(maxsize=4)
def _load(pad_token: str):
    from transformers import CLIPTokenizer

    # from_pretrained on the local folder reads vocab.json + merges.txt (transformers 5 takes no file paths
    # in __init__); nothing is fetched.
    return CLIPTokenizer.from_pretrained(
        str(CLIP_TOKENIZER_DIR), pad_token=pad_token, model_max_length=77, local_files_only=True
    )


def clip_tokenizer(pad_token: str = OPENAI_PAD):
    """Return a ``CLIPTokenizer`` (77 tokens) from the bundled vocab/merges; cached per pad token."""
    return _load(pad_token)


def count_tokens(text: str, pad_token: str = OPENAI_PAD) -> int:
    """Number of CLIP tokens in ``text`` without start/end markers (for the UI's "n/75" counter)."""
    return len(clip_tokenizer(pad_token)(text, add_special_tokens=False, truncation=False)["input_ids"])
