"""Run-time settings: built from app.py flags and the saved ``settings.json``; read by the manager.

A flag given on the command line always wins over a saved value: app.py records which fields came from the
command line in ``Settings.from_cli`` and never overwrites those from the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MEMORY_MODES: tuple[str, ...] = ("auto", "full", "sliced", "offload", "sequential", "cpu")
DEVICES: tuple[str, ...] = ("auto", "cuda", "mps", "cpu")
PRECISIONS: tuple[str, ...] = ("auto", "fp16", "bf16", "fp32")

DEEP_CACHE_INTERVALS = (2, 10)  # inclusive range of Settings/requests ``deep_cache_interval``
TOKEN_MERGING_MAX = 0.75
MAX_THREADS = 256  # Settings ``threads``: 0 (all physical cores) to this

REPO_ROOT = Path(__file__).resolve().parent.parent


def physical_cores() -> int:
    """The machine's physical CPU cores (hyper-threads not counted; what torch and OpenVINO run fastest on): the
    Settings' ``threads`` of 0."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except Exception:  # psutil is a requirement; a broken install still gets a number
        cores = None
    return max(1, int(cores or os.cpu_count() or 1))


@dataclass
class Settings:
    """Everything the manager and the UI need to know about how to run. Paths are absolute."""

    models_dir: Path = REPO_ROOT / "models"
    outputs_dir: Path = REPO_ROOT / "outputs"
    cache_dir: Path = REPO_ROOT / ".cache"  # hashes, demo models, compiled artefacts
    settings_file: Path | None = None
    checkpoint: str | None = None  # loaded first / default
    vae: str = "Automatic"
    device: str = "auto"
    precision: str = "auto"
    memory_mode: str = "auto"  # one of MEMORY_MODES; --medvram → offload, --lowvram → sequential
    xformers: bool = False
    fast: bool = False
    # Opt-in speed-ups that change the pixels slightly (pipelines/speedups.py); a request may override them.
    deep_cache: bool = False
    deep_cache_interval: int = 3  # every n-th UNet call runs in full; the others reuse the deep features
    token_merging: float = 0.0  # ToMe ratio, 0 = off
    # TAESD (a taesd_decoder file in models/VAE-approx): the final decode by the tiny autoencoder, much faster and a
    # little different (live previews use TAESD whenever the file is there, this switch or not)
    fast_decode: bool = False
    threads: int = 0  # CPU threads for torch and OpenVINO; 0: all physical cores
    # The prompt language (A1111's options of the same meaning; a request may override them).
    clip_skip: int = 1  # CLIP_stop_at_last_layers
    emphasis: str = "Original"  # how (word:1.2) weights apply: Original, No norm, Ignore, None
    styles_file: Path | None = None  # A1111's styles.csv; None: styles.csv beside the settings file
    # A1111's send_seed / send_size: a picture sent on to another tab brings its seed / its size along
    send_seed: bool = True
    send_size: bool = True
    demo: bool = False
    vram_slots: int = 1  # checkpoints kept on the GPU
    ram_slots: int = 0  # 0: chosen from total RAM at start-up
    queue_size: int = 100
    default_sampler: str = "Euler a"
    default_steps: int = 20
    step_delay_s: float = 0.0  # test-only: slows each step so that Stop can be clicked
    from_cli: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        """The fields worth saving to ``settings.json`` (paths as strings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("from_cli", "settings_file", "styles_file", "step_delay_s", "demo"):
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    def update(self, values: dict[str, Any], *, respect_cli: bool = True) -> list[str]:
        """Apply saved/changed values, skipping fields set on the command line. Returns the names changed."""
        changed = []
        known = {f.name: f for f in fields(self)}
        for name, value in values.items():
            if name not in known or name == "from_cli" or (respect_cli and name in self.from_cli):
                continue
            current = getattr(self, name)
            if isinstance(current, Path) or name in ("models_dir", "outputs_dir", "cache_dir"):
                value = Path(value).expanduser().resolve()
            if value != current:
                setattr(self, name, value)
                changed.append(name)
        return changed
