"""The models folder as artists have it: checkpoints, VAEs, LoRAs and upscalers, their families and hashes.

Folders read (first match wins for a name; A1111 and ComfyUI names work, so ``--models-dir`` may point at either
program's ``models`` folder):

=================  ===========================================================
checkpoints        ``checkpoints/``, ``Stable-diffusion/`` (A1111), ``diffusers/`` (ComfyUI)
VAEs               ``vae/``, ``VAE/``
LoRAs              ``loras/``, ``Lora/``, ``LyCORIS/``
upscalers          SD x4 diffusers folders in ``upscale_models/``, ``ESRGAN/`` (and ``checkpoints/``); ESRGAN-family
                   model files (``.pth``, ``.pt``, ``.safetensors``, ``.ckpt``) in ``upscale_models/``, ``ESRGAN/``,
                   ``RealESRGAN/``, ``SwinIR/``, ``DAT/``, ``HAT/``, read by spandrel
depth estimators   DPT folders (transformers ``DPTForDepthEstimation``) in ``depth/``, for SD 2's depth model
=================  ===========================================================

Upscalers are one list (``all_upscalers``): the built-ins ``None``, ``Lanczos`` and ``Nearest`` (PIL), the model
files spandrel reads (each probed once, the result cached on disk by path, size and mtime; a file spandrel cannot
read is logged with its reason and left out, and without spandrel the files are skipped with one log line), then
the SD x4 folders. ``ModelInfo.family`` says which kind an upscaler is (``UPSCALER_FAMILIES``). ``upscalers()`` is
the SD x4 folders alone, as before.

Single files are ``.safetensors``, ``.ckpt`` and ``.pt``; a folder holding ``model_index.json`` anywhere under a
checkpoints folder is a diffusers model. Symlinked files and folders are followed. A checkpoint's name is its
path below the checkpoints folder without the extension (``sub/name`` in a sub-folder).

Family detection reads only a safetensors file's JSON header (names and shapes), a ``.ckpt``'s pickle through
memory-mapped safe unpickling (no tensor data is read), or a diffusers folder's JSON configs; results are cached in
``cache_dir`` by path, size and mtime, like the A1111 short hash (first 10 hex digits of the file's sha256), which
is computed only when first asked for.

SD 2.x files cannot be told apart by their keys (512 epsilon vs 768 v-prediction). In order: a user override
(``set_family``), a ``<stem>.yaml`` beside the file (A1111's convention; ``parameterization: "v"`` means
v-prediction), a name hint (``768``, ``-v``, ``v-pred`` / ``512``, ``base``), else 768-v, as diffusers does for
"v2" files. ``ModelInfo.family_source`` says which one decided.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint_files import read_ckpt_shapes, read_safetensors_header
from .errors import ModelLoadError, ModelNotFound
from .families import FAMILIES

logger = logging.getLogger(__name__)

CHECKPOINT_DIRS = ("checkpoints", "Stable-diffusion", "diffusers")
VAE_DIRS = ("vae", "VAE")
LORA_DIRS = ("loras", "Lora", "LyCORIS")
EMBEDDING_DIRS = ("embeddings",)  # also an A1111 install's embeddings/ beside its models/ folder
EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")
DEPTH_DIRS = ("depth",)  # DPT depth-estimation folders (transformers), for SD 2's depth model
DEPTH_FAMILY = "dpt"  # ``ModelInfo.family`` of a depth estimator
KINDS = ("checkpoint", "vae", "lora", "embedding", "upscaler", "depth")
# A LoRA's model group, from its keys: SDXL's two text encoders, else the width of the UNet's cross-attention input.
LORA_GROUP_BY_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
FAMILY_GROUP = {"sd15": "sd1", "sd15-inpaint": "sd1", "sd2": "sd2", "sd2-v": "sd2", "sd2-inpaint": "sd2",
                "sd2-depth": "sd2", "sdxl": "sdxl", "sdxl-inpaint": "sdxl"}
NETWORK_GROUP_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
UPSCALER_DIRS = ("upscale_models", "ESRGAN")  # where SD x4 diffusers folders are looked for
# ESRGAN-family model files (upscaler_models.UPSCALER_FOLDERS, which imports torch; a test keeps the two equal)
MODEL_UPSCALER_DIRS = ("upscale_models", "ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")
MODEL_UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
# ``ModelInfo.family`` of an upscaler: PIL's resize (and A1111's "None"), a spandrel model file, the SD x4 folder
UPSCALER_BUILTIN, UPSCALER_MODEL, UPSCALER_SD_X4 = "builtin", "spandrel", "x4-upscaler"
UPSCALER_FAMILIES = (UPSCALER_BUILTIN, UPSCALER_MODEL, UPSCALER_SD_X4)
BUILTIN_UPSCALER_NAMES = ("None", "Lanczos", "Nearest")  # A1111's, in its order; "None" resizes with Lanczos
BUILTIN_UPSCALER_SCALE = 4  # A1111 lists the built-ins with scale 4
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
VAE_SUFFIXES = SINGLE_FILE_SUFFIXES + (".bin",)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CACHE_FILE = "model_cache.json"
CACHE_VERSION = 1

UNET_KEY = "model.diffusion_model."
KEY_INPUT = "model.diffusion_model.input_blocks.0.0.weight"
KEY_CROSS_ATTENTION = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
KEY_SDXL = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
KEY_SDXL_OPENCLIP = "conditioner.embedders.1.model.positional_embedding"
KEY_SDXL_REFINER = "conditioner.embedders.0.model.positional_embedding"


def empty_models_message(models_dir: Path) -> str:
    """What to tell a person whose models folder holds no checkpoint."""
    return (
        f"No checkpoint found. Put a Stable Diffusion model (.safetensors, .ckpt or a diffusers folder) into "
        f"{Path(models_dir) / 'checkpoints'}, or point --models-dir at an AUTOMATIC1111 or ComfyUI 'models' "
        f"folder, or start with --demo to try Atelier with tiny random-weight models."
    )


@dataclass(eq=False)
class ModelInfo:
    """One model found on disk (or a hub id). ``family`` is a ``FAMILIES`` key, or None with ``problem`` set."""

    name: str
    path: Path
    kind: str  # checkpoint | vae | lora | upscaler
    format: str  # safetensors | ckpt | diffusers | hub
    size: int
    family: str | None
    family_source: str  # keys | config | yaml | name | default | override | sidecar | hub | none
    mtime_ns: int = 0
    problem: str | None = None  # why this entry cannot be loaded, said to the person
    notes: list[str] = field(default_factory=list)
    scale: float | None = None  # upscalers: the factor their weights (or A1111's list, for built-ins) say
    architecture: str | None = None  # upscaler model files: spandrel's architecture name ("ESRGAN", "SwinIR", ...)
    _hasher: Callable[[ModelInfo], str] | None = field(default=None, repr=False)

    @property
    def filename(self) -> str:
        """File (or folder) name as shown in lists."""
        return self.path.name

    @property
    def short_hash(self) -> str:
        """A1111 short hash (sha256[:10]); computed on first use, then cached on disk."""
        return self._hasher(self) if self._hasher else ""

    @property
    def title(self) -> str:
        """``name [hash10]`` as A1111 shows checkpoints (just ``name`` when no hash can be had)."""
        h = self.short_hash
        return f"{self.name} [{h}]" if h else self.name


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Full sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def addnet_hash(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a safetensors file's tensor data, its JSON header left out (kohya's "addnet" hash, which A1111
    writes for LoRAs: the same weights with other metadata keep their hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Family detection


@dataclass
class Detection:
    """What the keys say: a family (or a family group like "sd2"), or a problem for the person."""

    family: str | None
    problem: str | None = None


def detect_checkpoint_family(shapes: dict[str, list[int]], filename: str) -> Detection:
    """Family from original-layout tensor names/shapes. ``sd2`` here means "SD 2.x, prediction type unknown"."""
    keys = shapes.keys()
    if not any(k.startswith(UNET_KEY) for k in keys):
        return Detection(None, _not_a_checkpoint(keys, filename))
    if "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias" in shapes or any(
        k.startswith("model.diffusion_model.double_blocks.") for k in keys
    ):
        return Detection(None, f"{filename} is an SD3/Flux-type model, which Atelier does not run "
                               "(SD 1.x, SD 2.x and SDXL are supported).")
    in_channels = shapes.get(KEY_INPUT, [0, 4])[1] if len(shapes.get(KEY_INPUT, [])) > 1 else 4
    inpaint, depth = in_channels == 9, in_channels == 5
    if in_channels not in (4, 5, 9):
        if in_channels == 7:
            return Detection(None, f"{filename} is an SD x4 upscaler single file; put the x4 upscaler's diffusers "
                                   "folder into models/upscale_models/ instead.")
        return Detection(None, _unknown_channels(filename, in_channels))
    if KEY_SDXL_REFINER in shapes and KEY_SDXL_OPENCLIP not in shapes:
        return Detection(None, f"{filename} is an SDXL refiner, which Atelier does not run yet: use an SDXL base "
                               "checkpoint.")
    sdxl = KEY_SDXL in shapes or KEY_SDXL_OPENCLIP in shapes
    cross = shapes.get(KEY_CROSS_ATTENTION)
    sd2 = not sdxl and bool(cross) and cross[-1] == 1024
    if depth:  # latents + a depth map: SD 2's 512-depth model is the only one
        return Detection("sd2-depth") if sd2 else Detection(None, _unknown_channels(filename, in_channels))
    if sdxl:
        return Detection("sdxl-inpaint" if inpaint else "sdxl")
    if sd2:
        return Detection("sd2-inpaint" if inpaint else "sd2")
    return Detection("sd15-inpaint" if inpaint else "sd15")


def _unknown_channels(filename: str, in_channels: int) -> str:
    return (f"{filename} has a UNet with {in_channels} input channels, which matches no model family Atelier knows "
            "(SD 1.x, SD 2.x, SDXL, their inpainting variants, SD 2's depth model).")


def _not_a_checkpoint(keys, filename: str) -> str:
    keys = list(keys)
    if any("lora_down" in k or "lora_up" in k or ".lora_A." in k or k.startswith("lora_") for k in keys):
        return (f"{filename} is a LoRA, not a checkpoint: move it to models/loras/ and pick a full checkpoint "
                "(SD 1.x, SD 2.x or SDXL) here.")
    if keys and all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model."))
                    for k in keys):
        return f"{filename} is a VAE, not a checkpoint: move it to models/vae/ and choose it in the VAE list."
    if any(k.startswith(("emb_params", "string_to_param")) for k in keys):
        return f"{filename} is a textual-inversion embedding, not a checkpoint."
    if any(k.startswith(("down_blocks.", "unet.")) for k in keys):
        return (f"{filename} holds diffusers-layout weights of a single component, not a whole checkpoint: "
                "use the complete diffusers folder (with model_index.json) or an original-layout single file.")
    return (f"{filename} does not look like a Stable Diffusion checkpoint (no UNet weights found): unknown model "
            "family. Atelier runs SD 1.x, SD 2.x and SDXL checkpoints.")


def detect_vae_group(shapes: dict[str, list[int]], filename: str) -> Detection:
    """VAE compatibility group ("sd", "sdxl", "x4") from its keys.

    SD and SDXL VAEs have identical shapes, so the name decides between them ("xl" in it means SDXL).
    """
    def shape(name: str) -> list[int] | None:
        return shapes.get(name) or shapes.get("first_stage_model." + name)

    if any(k.startswith(UNET_KEY) for k in shapes):
        return Detection(None, f"{filename} is a whole checkpoint, not a VAE: move it to models/checkpoints/.")
    post = shape("post_quant_conv.weight") or shape("decoder.conv_in.weight")
    if post is None:
        return Detection(None, f"{filename} does not look like a VAE (no decoder weights).")
    latent = post[1] if len(post) > 1 else 0
    if latent != 4:
        return Detection(None, f"{filename} is a VAE with {latent} latent channels (SD3/Flux type); SD 1.x/2.x/SDXL "
                               "need a 4-channel VAE.")
    levels = {int(m[1]) for k in shapes if (m := re.match(r"(?:first_stage_model\.)?decoder\.up\.(\d+)\.", k))}
    levels |= {int(m[1]) for k in shapes if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    if levels and len(levels) == 3:
        return Detection("x4")
    return Detection("sdxl" if "xl" in filename.lower() else "sd")


def detect_lora_group(shapes: dict[str, list[int]], filename: str) -> Detection:
    """A LoRA's model group ("sd1", "sd2", "sdxl"; None when its keys do not say) from names and shapes only.

    kohya/A1111 files name SDXL's encoders ``lora_te1_``/``lora_te2_``; otherwise the input width of a
    cross-attention key projection (``attn2`` ``to_k``) tells SD 1.x (768), SD 2.x (1024) and SDXL (2048)."""
    if not shapes:
        return Detection(None, f"{filename} holds no tensors: it is not a LoRA.")
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in shapes):
        return Detection("sdxl")
    for key, shape in shapes.items():
        if "attn2" in key and "to_k" in key and key.endswith(("lora_down.weight", "lora_A.weight", "lora.down.weight")):
            return Detection(LORA_GROUP_BY_CONTEXT.get(shape[-1] if len(shape) == 2 else 0))
    return Detection(None)


def sd2_prediction(path: Path, name: str) -> tuple[str, str]:
    """(family, source) for an SD 2.x non-inpainting file: yaml beside it, name hint, else diffusers' v2 default."""
    yaml = path.with_suffix(".yaml")
    try:
        text = yaml.read_text(errors="replace") if yaml.is_file() else None
    except OSError:
        text = None
    if text is not None:
        v = re.search(r"""^\s*parameterization\s*:\s*["']?v["']?\s*$""", text, re.MULTILINE)
        return ("sd2-v" if v else "sd2"), "yaml"
    lowered = name.lower()
    if re.search(r"768|v[-_]?pred|(^|[-_ ])v($|[-_ ])", lowered):
        return "sd2-v", "name"
    if re.search(r"512|base|eps", lowered):
        return "sd2", "name"
    return "sd2-v", "default"


def detect_diffusers_folder(folder: Path) -> Detection:
    """Family of a diffusers folder from its model_index.json and component configs."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text()) if (folder / "unet").is_dir() else {}
        sched_file = folder / "scheduler" / "scheduler_config.json"
        scheduler = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
    except PermissionError:
        return Detection(None, f"{folder.name}: permission denied reading its configs; check the file permissions.")
    except (OSError, ValueError) as exc:
        return Detection(None, f"{folder.name} is a broken diffusers folder ({exc}).")
    cls = str(index.get("_class_name", ""))
    in_channels = unet.get("in_channels", 4)
    if cls == "StableDiffusionUpscalePipeline" or in_channels == 7:
        return Detection("x4-upscaler")
    if in_channels == 5:
        if unet.get("cross_attention_dim") == 1024 and "text_encoder_2" not in index:
            return Detection("sd2-depth")
        return Detection(None, _unknown_channels(folder.name, in_channels))
    if not unet or "UNet2DConditionModel" not in str(index.get("unet", "")):
        return Detection(None, f"{folder.name} is a {cls or 'diffusers'} model, which Atelier does not run "
                               "(SD 1.x, SD 2.x, SDXL and the SD x4 upscaler are supported).")
    if "Refiner" in cls or ("text_encoder_2" in index and index.get("text_encoder") in (None, [None, None])):
        return Detection(None, f"{folder.name} is an SDXL refiner, which Atelier does not run yet.")
    inpaint = in_channels == 9
    if "text_encoder_2" in index or unet.get("addition_embed_type") == "text_time":
        return Detection("sdxl-inpaint" if inpaint else "sdxl")
    if unet.get("cross_attention_dim") == 1024:
        if inpaint:
            return Detection("sd2-inpaint")
        return Detection("sd2-v" if scheduler.get("prediction_type") == "v_prediction" else "sd2")
    return Detection("sd15-inpaint" if inpaint else "sd15")


# ---------------------------------------------------------------------------------------------------------------
# The on-disk cache (hashes and detections), keyed by real path + size + mtime


class _DiskCache:
    """A JSON file of per-file facts, valid while the file's size and mtime are unchanged."""

    def __init__(self, cache_dir: Path):
        self.path = Path(cache_dir) / CACHE_FILE
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        self._dirty = False
        try:
            loaded = json.loads(self.path.read_text())
            if loaded.get("version") == CACHE_VERSION:
                self._data = loaded.get("files", {})
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, or unreadable: start empty (it is only a cache)

    def get(self, real: str, size: int, mtime_ns: int, key: str) -> Any:
        with self._lock:
            entry = self._data.get(real)
            if entry and entry.get("size") == size and entry.get("mtime_ns") == mtime_ns:
                return entry.get(key)
            return None

    def put(self, real: str, size: int, mtime_ns: int, key: str, value: Any) -> None:
        with self._lock:
            entry = self._data.get(real)
            if not entry or entry.get("size") != size or entry.get("mtime_ns") != mtime_ns:
                entry = self._data[real] = {"size": size, "mtime_ns": mtime_ns}
            entry[key] = value
            self._dirty = True

    def save(self) -> None:
        """Write atomically (temp file + rename); a read-only cache dir only costs re-hashing later."""
        with self._lock:
            if not self._dirty:
                return
            payload = json.dumps({"version": CACHE_VERSION, "files": self._data})
            self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".model_cache.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(payload)
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.warning("could not write the model cache %s: %s", self.path, exc)


# ---------------------------------------------------------------------------------------------------------------


class ModelRegistry:
    """Scans a models folder (plus extra folders laid out the same way, e.g. the demo models) and answers lookups."""

    def __init__(self, models_dir: Path, cache_dir: Path, extra_dirs=()):
        self.models_dir = Path(models_dir)
        self.cache_dir = Path(cache_dir)
        self.extra_dirs = [Path(d) for d in extra_dirs]
        self._cache = _DiskCache(self.cache_dir)
        self._lock = threading.RLock()
        self._hash_lock = threading.Lock()
        self._metadata: dict[tuple[str, int, int], dict[str, str]] = {}  # safetensors metadata by file version
        self._hashing: dict[str, concurrent.futures.Future[str]] = {}  # real path -> its short hash, being read
        self._hash_all_running = self._hash_all_again = False  # hash_all_soon's one background thread
        self._overrides: dict[str, str] = self._load_overrides()
        self._entries: dict[str, list[ModelInfo]] = {kind: [] for kind in KINDS}
        self._model_upscalers: list[ModelInfo] = []  # ESRGAN-family files spandrel reads
        self.upscaler_rejects: list[tuple[Path, str]] = []  # files in upscaler folders left out, and why
        self._said: set[tuple[str, int, int]] = set()  # rejected files already logged (once per file version)
        self.problems: list[str] = []  # folders that could not be read, for the log/status
        self._scanned = False

    # -- scanning ------------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan every models folder. Cheap: headers and detections come from the cache when files are unchanged."""
        found: dict[str, list[ModelInfo]] = {kind: [] for kind in KINDS}
        self.problems = []
        for root in [self.models_dir, *self.extra_dirs]:
            for sub in CHECKPOINT_DIRS:
                for info in self._scan_checkpoints(root / sub):
                    if info.family == "x4-upscaler":
                        info.kind = "upscaler"
                    found[info.kind].append(info)
            for sub in VAE_DIRS:
                found["vae"].extend(self._scan_files(root / sub, "vae", VAE_SUFFIXES))
            for sub in LORA_DIRS:
                found["lora"].extend(self._scan_files(root / sub, "lora", SINGLE_FILE_SUFFIXES))
            embedding_dirs = [root / sub for sub in EMBEDDING_DIRS]
            if root.name.lower() == "models":  # an A1111 install: webui/models/ and webui/embeddings/
                embedding_dirs.append(root.parent / "embeddings")
            for folder in embedding_dirs:
                found["embedding"].extend(self._scan_files(folder, "embedding", EMBEDDING_SUFFIXES))
            for sub in UPSCALER_DIRS:
                for info in self._scan_checkpoints(root / sub):
                    if info.format == "diffusers":
                        info.kind = "upscaler"
                        found["upscaler"].append(info)
            for sub in DEPTH_DIRS:
                found["depth"].extend(self._scan_depth(root / sub))
        model_upscalers, rejects = self._scan_model_upscalers()
        with self._lock:
            self._entries = {kind: _dedupe(items) for kind, items in found.items()}
            self._model_upscalers = _dedupe(model_upscalers)
            self.upscaler_rejects = rejects
            self._scanned = True
        self._cache.save()

    def _scan_model_upscalers(self) -> tuple[list[ModelInfo], list[tuple[Path, str]]]:
        """ESRGAN-family files in the upscaler folders, probed by spandrel (cached by path, size and mtime)."""
        found: list[ModelInfo] = []
        rejects: list[tuple[Path, str]] = []
        missing: str | None = None
        checked = False
        for root in [self.models_dir, *self.extra_dirs]:
            for sub in MODEL_UPSCALER_DIRS:
                folder = root / sub
                for path, is_diffusers in self._walk(folder, MODEL_UPSCALER_SUFFIXES):
                    if is_diffusers:
                        continue
                    stat = self._stat(path)
                    if stat is None:
                        continue
                    cached = self._cache.get(*stat, "probe:upscaler")
                    if cached is None:
                        if not checked:  # spandrel imports torchvision (seconds): only when a file is new
                            from .upscaler_models import spandrel_missing

                            missing, checked = spandrel_missing(), True
                            if missing:
                                logger.warning("upscaler model files are left out: %s", missing)
                        if missing:
                            rejects.append((path, missing))
                            continue
                        cached = self._probe_upscaler(path, stat)
                        if cached is None:  # unreadable now (permissions): not cached, tried again next scan
                            rejects.append((path, f"{path.name} could not be read."))
                            continue
                    if cached.get("problem"):
                        self._say_rejected(path, stat, cached["problem"])
                        rejects.append((path, cached["problem"]))
                        continue
                    name = path.relative_to(folder).with_suffix("").as_posix()
                    found.append(ModelInfo(
                        name, path, "upscaler", "safetensors" if path.suffix.lower() == ".safetensors" else "ckpt",
                        stat[1], UPSCALER_MODEL, "keys", stat[2], scale=cached.get("scale"),
                        architecture=cached.get("architecture"), _hasher=self.short_hash))
        return found, rejects

    def _probe_upscaler(self, path: Path, stat: tuple[str, int, int]) -> dict[str, Any] | None:
        """spandrel's reading of one file: ``{"architecture", "scale"}`` or ``{"problem"}``, cached on disk."""
        from .upscaler_models import probe_upscaler

        try:
            info = probe_upscaler(path)
            facts: dict[str, Any] = {"architecture": info.architecture, "scale": info.scale, "purpose": info.purpose}
        except ModelLoadError as exc:
            facts = {"problem": exc.message}
        except OSError as exc:
            logger.warning("upscaler %s could not be read: %s", path, exc.strerror or exc)
            return None
        except Exception as exc:  # one odd file must never break the list
            facts = {"problem": f"{path.name} could not be read as an upscaler ({type(exc).__name__}: {exc})."}
        self._cache.put(*stat, "probe:upscaler", facts)
        return facts

    def _say_rejected(self, path: Path, stat: tuple[str, int, int], reason: str) -> None:
        """Log a file left out of the upscalers once per file version (a refresh does not repeat it)."""
        if stat in self._said:
            return
        self._said.add(stat)
        logger.warning("upscaler %s left out: %s", path, reason)

    def _ensure_scanned(self) -> None:
        if not self._scanned:
            self.refresh()

    def _scan_checkpoints(self, folder: Path) -> Iterator[ModelInfo]:
        for path, is_diffusers in self._walk(folder, SINGLE_FILE_SUFFIXES):
            rel = path.relative_to(folder).as_posix()
            name = rel if is_diffusers else rel.rsplit(".", 1)[0]
            info = self._diffusers_info(path, name) if is_diffusers else self._file_info(path, name, "checkpoint")
            if info is not None:
                yield info

    def _scan_files(self, folder: Path, kind: str, suffixes) -> Iterator[ModelInfo]:
        marker = "config.json" if kind == "vae" else None
        for path, is_diffusers in self._walk(folder, suffixes, diffusers_marker=marker):
            rel = path.relative_to(folder).as_posix()
            name = rel if is_diffusers else rel.rsplit(".", 1)[0]
            if is_diffusers:
                info = ModelInfo(name, path, kind, "diffusers", _folder_size(path), "sd" if kind == "vae" else None,
                                 "config", _hasher=self.short_hash)
                yield info
            elif (info := self._file_info(path, name, kind)) is not None:
                yield info

    def _scan_depth(self, folder: Path) -> Iterator[ModelInfo]:
        """DPT depth-estimation folders (transformers: ``config.json`` with ``model_type`` ``dpt``, weights beside
        it), at any depth below ``folder``; another kind of folder is listed with its problem."""
        for path, _ in self._walk(folder, (), diffusers_marker="config.json"):
            name = path.relative_to(folder).as_posix()
            try:
                config = json.loads((path / "config.json").read_text())
                problem = None if config.get("model_type") == "dpt" else (
                    f"{name} is a {config.get('model_type') or 'transformers'} model, not a DPT depth model "
                    "(DPTForDepthEstimation, e.g. Intel/dpt-hybrid-midas).")
            except (OSError, ValueError, AttributeError) as exc:
                problem = f"{name}: its config.json could not be read ({exc})."
            mtime = self._stat(path / "config.json")
            yield ModelInfo(name, path, "depth", "transformers", _folder_size(path), None if problem else DEPTH_FAMILY,
                            "config", mtime[2] if mtime else 0, problem)

    def _walk(self, folder: Path, suffixes, diffusers_marker: str | None = "model_index.json"):
        """(path, is_diffusers_folder) under ``folder``, following symlinks, skipping loops and unreadable dirs."""
        if not folder.is_dir():
            return
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=self._walk_error):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink loop
                dirnames[:] = []
                continue
            seen.add(real)
            here = Path(dirpath)
            if diffusers_marker and diffusers_marker in filenames and here != folder:
                dirnames[:] = []
                yield here, True
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".config"))
            # .safetensors first, so that it keeps the plain name when a .ckpt of the same name sits beside it
            for fn in sorted(filenames, key=lambda n: (n.rsplit(".", 1)[0], not n.endswith(".safetensors"), n)):
                if fn.lower().endswith(suffixes) and not fn.startswith("."):
                    yield here / fn, False

    def _walk_error(self, exc: OSError) -> None:
        message = f"cannot read {exc.filename}: {exc.strerror or exc}"
        logger.warning(message)
        self.problems.append(message)

    def _stat(self, path: Path) -> tuple[str, int, int] | None:
        try:
            st = path.stat()  # follows symlinks
        except FileNotFoundError:
            logger.warning("skipping %s: broken symlink or file vanished", path)
            return None
        except OSError as exc:
            self.problems.append(f"cannot read {path}: {exc}")
            return None
        return os.path.realpath(path), st.st_size, st.st_mtime_ns

    def _file_info(self, path: Path, name: str, kind: str) -> ModelInfo | None:
        stat = self._stat(path)
        if stat is None:
            return None
        real, size, mtime = stat
        fmt = "safetensors" if path.suffix.lower() == ".safetensors" else "ckpt"
        info = ModelInfo(name, path, kind, fmt, size, None, "none", mtime, _hasher=self.short_hash)
        if kind == "embedding":
            return info  # read when used (pipelines/embeddings.py)
        detection = self._cached_detection(path, real, size, mtime, kind)
        info.family, info.problem = detection.family, detection.problem
        if info.family:
            info.family_source = "keys"
        if kind == "lora" and info.problem is None and info.family is None:
            info.family_source = "unknown"  # tried on any checkpoint; diffusers says when it does not fit
        if kind == "checkpoint":
            self._resolve_sd2(info)
        return info

    def _cached_detection(self, path: Path, real: str, size: int, mtime: int, kind: str) -> Detection:
        cached = self._cache.get(real, size, mtime, "detect:" + kind)
        if cached is not None:
            return Detection(cached.get("family"), cached.get("problem"))
        try:
            if path.suffix.lower() == ".safetensors":
                shapes, _ = read_safetensors_header(path)
            elif path.suffix.lower() == ".bin":
                shapes = read_ckpt_shapes(path)
            else:
                shapes = read_ckpt_shapes(path)
        except ModelLoadError as exc:
            detection = Detection(None, exc.message)
        except PermissionError:
            # Not cached: the person may fix the permissions and refresh.
            return Detection(None, f"{path.name}: permission denied. Make the file readable for the user running "
                                   "Atelier.")
        except OSError as exc:
            return Detection(None, f"{path.name} could not be read ({exc.strerror or exc}).")
        except Exception as exc:  # one odd file must never break the whole list
            logger.warning("cannot inspect %s: %r", path, exc)
            return Detection(None, f"{path.name} could not be inspected ({type(exc).__name__}); it may be damaged.")
        else:
            detect = {"checkpoint": detect_checkpoint_family, "lora": detect_lora_group}.get(kind, detect_vae_group)
            detection = detect(shapes, path.name)
        self._cache.put(real, size, mtime, "detect:" + kind, {"family": detection.family, "problem": detection.problem})
        return detection

    def _resolve_sd2(self, info: ModelInfo) -> None:
        override = self._overrides.get(info.name)
        if info.family in ("sd2", "sd2-v") and override in ("sd2", "sd2-v"):
            info.family, info.family_source = override, "override"
        elif info.family == "sd2":
            info.family, info.family_source = sd2_prediction(info.path, info.path.stem)
        if info.family in ("sd2", "sd2-v"):
            pred = FAMILIES[info.family].prediction_type
            info.notes.append(f"SD 2.x prediction type {pred} chosen by {info.family_source}"
                              + (" (diffusers' default for SD 2.x files; override it if images look wrong)"
                                 if info.family_source == "default" else ""))

    def _diffusers_info(self, folder: Path, name: str) -> ModelInfo:
        detection = detect_diffusers_folder(folder)
        try:
            mtime = (folder / "model_index.json").stat().st_mtime_ns
        except OSError:
            mtime = 0
        info = ModelInfo(name, folder, "checkpoint", "diffusers", _folder_size(folder), detection.family,
                         "config" if detection.family else "none", mtime, detection.problem, _hasher=self.short_hash)
        override = self._overrides.get(name)
        if info.family in ("sd2", "sd2-v") and override in ("sd2", "sd2-v"):
            info.family, info.family_source = override, "override"
        return info

    # -- overrides -----------------------------------------------------------------------------------------------

    def _overrides_path(self) -> Path:
        return self.cache_dir / "family_overrides.json"

    def _load_overrides(self) -> dict[str, str]:
        try:
            data = json.loads(self._overrides_path().read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def set_family(self, name: str, family_key: str | None) -> ModelInfo:
        """Override an SD 2.x checkpoint's prediction type ("sd2" = 512 epsilon, "sd2-v" = 768 v); None clears it.

        Saved in the cache dir; applies from the next lookup.
        """
        info = self.find_checkpoint(name)
        if family_key is not None and family_key not in ("sd2", "sd2-v"):
            raise ModelLoadError(f"Only SD 2.x checkpoints can be switched between 'sd2' and 'sd2-v', not to "
                                 f"{family_key!r}.")
        if family_key is not None and info.family not in ("sd2", "sd2-v"):
            raise ModelLoadError(f"{info.name} is not an SD 2.x checkpoint ({info.family}); its family is fixed.")
        if family_key is None:
            self._overrides.pop(info.name, None)
        else:
            self._overrides[info.name] = family_key
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._overrides_path().write_text(json.dumps(self._overrides, indent=1))
        except OSError as exc:
            logger.warning("could not save the family override: %s", exc)
        self.refresh()
        return self.find_checkpoint(info.name)

    # -- hashes --------------------------------------------------------------------------------------------------

    def short_hash(self, info: ModelInfo) -> str:
        """A1111 short hash (first 10 hex of sha256), cached on disk by real path, size and mtime.

        For a diffusers folder, the hash of its UNet weights file (A1111 has no rule for folders). Hub ids and
        unreadable files have no hash (""). A file is read once at a time: a second caller waits for the read in
        progress (one started by ``hash_soon``, say) instead of reading it again.
        """
        target = _hash_target(info)
        stat = self._stat(target) if target is not None else None
        if target is None or stat is None:
            return ""
        real, size, mtime = stat
        cached = self._cache.get(real, size, mtime, "sha256")
        if cached:
            return cached[:10]
        with self._hash_lock:
            pending = self._hashing.get(real)
            reader = pending is None
            if reader:
                pending = self._hashing[real] = concurrent.futures.Future()
        if not reader:
            return pending.result()
        digest = ""
        try:
            digest = sha256_file(target)
            self._cache.put(real, size, mtime, "sha256", digest)
            self._cache.save()
        except OSError as exc:
            logger.warning("cannot hash %s: %s", target, exc)
        finally:
            pending.set_result(digest[:10])
            with self._hash_lock:
                self._hashing.pop(real, None)
        return digest[:10]

    def hash_soon(self, info: ModelInfo) -> None:
        """Start reading ``info``'s hash in a background thread when it is not known yet.

        The first use of a file hashes all of it (~2.5 s for 4 GB); in a job's own thread that would delay the
        image. hashlib releases the GIL, so the read overlaps with the load and the denoising; ``short_hash``
        called meanwhile waits for it."""
        target = _hash_target(info)
        stat = self._stat(target) if target is not None else None
        if stat is None or self._cache.get(*stat, "sha256"):
            return
        with self._hash_lock:
            if stat[0] in self._hashing:
                return
        threading.Thread(target=self.short_hash, args=(info,), name="atelier-hash", daemon=True).start()

    def sha256(self, info: ModelInfo) -> str | None:
        """The full sha256 of ``info``'s file (A1111's ``/sd-models`` lists it) when it is known; never reads the
        file (``short_hash`` or ``hash_soon`` does, and caches the full digest)."""
        target = _hash_target(info)
        stat = self._stat(target) if target is not None else None
        if stat is None:
            return None
        return self._cache.get(*stat, "sha256") or None

    def hash_all_soon(self) -> None:
        """Read the hash of every checkpoint not hashed yet, one file after another in one background thread (a
        scan itself never reads files). Only after a scan; a call while the thread runs asks it for one more
        round, so that files found meanwhile are read too."""
        with self._hash_lock:
            if not self._scanned:
                return
            self._hash_all_again = True
            if self._hash_all_running:
                return
            self._hash_all_running = True
        threading.Thread(target=self._hash_all, name="atelier-hash-all", daemon=True).start()

    def _hash_all(self) -> None:
        while True:
            with self._hash_lock:
                if not self._hash_all_again:
                    self._hash_all_running = False
                    return
                self._hash_all_again = False
            for info in self.checkpoints():
                if info.problem is None and self.sha256(info) is None:
                    self.short_hash(info)  # waits for a read in progress instead of reading twice

    def cached_short_hash(self, info: ModelInfo) -> str | None:
        """The short hash if it is already known (never reads the file): for lists that must stay instant."""
        target = _hash_target(info)
        stat = self._stat(target) if target is not None else None
        if stat is None:
            return None
        cached = self._cache.get(*stat, "sha256")
        return cached[:10] if cached else None

    # -- listing and lookup --------------------------------------------------------------------------------------

    def checkpoints(self) -> list[ModelInfo]:
        """Checkpoints found (including ones with a ``problem``, so a person sees why they do not load)."""
        self._ensure_scanned()
        return list(self._entries["checkpoint"])

    def vaes(self) -> list[ModelInfo]:
        """VAE files and folders found."""
        self._ensure_scanned()
        return list(self._entries["vae"])

    def loras(self) -> list[ModelInfo]:
        """LoRA files found (``family`` is the model group they were trained for, when their keys say)."""
        self._ensure_scanned()
        return list(self._entries["lora"])

    def embeddings(self) -> list[ModelInfo]:
        """Textual-inversion embedding files found (read when a prompt uses them)."""
        self._ensure_scanned()
        return list(self._entries["embedding"])

    def depth_models(self) -> list[ModelInfo]:
        """DPT depth-estimation folders found in ``depth/`` (SD 2's depth model estimates its depth map with one;
        ``problem`` says why a folder cannot be used)."""
        self._ensure_scanned()
        return list(self._entries["depth"])

    def find_lora(self, name: str) -> ModelInfo | None:
        """A LoRA by the name a prompt gives it (``<lora:name:1>``): its file name without extension, or its
        path below the LoRA folder; None when there is none."""
        self._ensure_scanned()
        found = _lookup(self._entries["lora"], name)
        if found is None:
            wanted = name.strip().lower()
            found = next((info for info in self._entries["lora"] if info.path.stem.lower() == wanted), None)
        return found

    def metadata(self, info: ModelInfo) -> dict[str, str]:
        """A safetensors file's ``__metadata__`` (kohya's ``ss_*`` keys for a LoRA); {} for other formats."""
        if info.format != "safetensors":
            return {}
        stat = self._stat(Path(info.path))
        if stat is None:
            return {}
        if (known := self._metadata.get(stat)) is None:  # read once per file version (the UI asks per keystroke)
            try:
                known = dict(read_safetensors_header(info.path)[1])
            except (ModelLoadError, OSError):
                known = {}
            self._metadata[stat] = known
        return dict(known)

    def network_hash(self, info: ModelInfo) -> str:
        """A1111's 12-digit hash of a LoRA or an embedding (``Lora hashes``, ``TI hashes``): a LoRA's own
        ``sshs_model_hash``, else for a .safetensors the sha256 of its tensor data (kohya's "addnet" hash, header
        left out), else the sha256 of the file. Cached on disk like checkpoint hashes; "" when unreadable."""
        stat = self._stat(info.path)
        if stat is None:
            return ""
        if info.kind == "lora" and (own := self.metadata(info).get("sshs_model_hash")):
            return own[:12]
        addnet = info.kind == "lora" and info.format == "safetensors"
        key = "addnet" if addnet else "sha256"
        cached = self._cache.get(*stat, key)
        if cached:
            return cached[:12]
        try:
            digest = addnet_hash(info.path) if addnet else sha256_file(info.path)
        except OSError as exc:
            logger.warning("cannot hash %s: %s", info.path, exc)
            return ""
        self._cache.put(*stat, key, digest)
        self._cache.save()
        return digest[:12]

    def upscalers(self) -> list[ModelInfo]:
        """SD x4 upscaler diffusers folders (from upscale_models/ and checkpoints/)."""
        self._ensure_scanned()
        return list(self._entries["upscaler"])

    def all_upscalers(self) -> list[ModelInfo]:
        """Every upscaler, as one list in A1111's order: the built-ins (``None``, ``Lanczos``, ``Nearest``), the
        ESRGAN-family model files spandrel reads, then the SD x4 folders. ``family`` says which kind each is."""
        self._ensure_scanned()
        return [*builtin_upscalers(), *self._model_upscalers, *self._entries["upscaler"]]

    def model_upscalers(self) -> list[ModelInfo]:
        """The ESRGAN-family model files spandrel reads (A1111's ``/realesrgan-models`` lists some of these)."""
        self._ensure_scanned()
        return list(self._model_upscalers)

    def empty_message(self) -> str:
        """The message for an empty models folder (where to put a file, and ``--demo``)."""
        return empty_models_message(self.models_dir)

    def find_checkpoint(self, name: str) -> ModelInfo:
        """By "name", "name [hash]", "name.safetensors" (file name), A1111 title, short hash or sha256 (of a file
        already hashed), or a hub id ("owner/repo")."""
        self._ensure_scanned()
        found = _lookup(self._entries["checkpoint"], name) or self._checkpoint_by_hash(name)
        if found is not None:
            return found
        if HUB_ID.match(name.strip()) and not name.strip().lower().endswith(SINGLE_FILE_SUFFIXES):
            return ModelInfo(name.strip(), Path(name.strip()), "checkpoint", "hub", 0, None, "hub")
        if not self._entries["checkpoint"]:
            raise ModelNotFound(self.empty_message(), field="checkpoint")
        known = ", ".join(i.name for i in self._entries["checkpoint"][:10])
        raise ModelNotFound(f"No checkpoint named {name!r} in {self.models_dir}. Known: {known}.",
                            field="checkpoint")

    def _checkpoint_by_hash(self, name: str) -> ModelInfo | None:
        """The checkpoint whose known sha256 starts with ``name`` (A1111's short hash, 10 hex, or the full sha256,
        alone or as the ``[hash]`` of a title whose name changed); files not hashed yet are not read for this."""
        wanted = name.strip().lower()
        bracket = re.search(r"\[([0-9a-f]{10,64})\]$", wanted)
        wanted = bracket.group(1) if bracket else wanted
        if not re.fullmatch(r"[0-9a-f]{10,64}", wanted):
            return None
        return next((info for info in self._entries["checkpoint"]
                     if (digest := self.sha256(info)) and digest.startswith(wanted)), None)

    def find_vae(self, name: str | None) -> ModelInfo | None:
        """A VAE by name; "Automatic", "None" or empty mean the checkpoint's own VAE (None)."""
        if name is None or name.strip() in ("", "Automatic", "None", "auto"):
            return None
        self._ensure_scanned()
        found = _lookup(self._entries["vae"], name)
        if found is None:
            raise ModelNotFound(f"No VAE named {name!r} in {self.models_dir / 'vae'}. Choose 'Automatic' or put "
                                "the VAE file there.", field="vae")
        return found

    def find_upscaler(self, name: str) -> ModelInfo:
        """Any upscaler (``all_upscalers``) by name or file name; built-in names are matched case-insensitively."""
        self._ensure_scanned()
        everything = self.all_upscalers()
        found = _lookup(everything, name)
        if found is None:
            found = next((info for info in everything if info.family == UPSCALER_BUILTIN
                          and info.name.lower() == name.strip().lower()), None)
        if found is None:
            known = ", ".join(info.name for info in everything)
            raise ModelNotFound(
                f"No upscaler named {name!r}. Available: {known}. Put ESRGAN-family model files (.pth, "
                f".safetensors) into {self.models_dir / 'upscale_models'}, or the SD x4 upscaler's diffusers folder "
                "(stabilityai/stable-diffusion-x4-upscaler, with model_index.json).",
                field="upscaler",
            )
        return found


def _lookup(items: list[ModelInfo], name: str) -> ModelInfo | None:
    wanted = name.strip()
    bare = re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", wanted)
    for info in items:
        if wanted in (info.name, info.path.name) or bare in (info.name, info.path.name):
            return info
    for info in items:
        stem = bare.rsplit(".", 1)[0] if bare.lower().endswith(VAE_SUFFIXES) else bare
        if stem == info.name or stem == Path(info.name).name:
            return info
    return None


def _dedupe(items: list[ModelInfo]) -> list[ModelInfo]:
    """One entry per real file; on a name clash (``m.safetensors`` beside ``m.ckpt``) the later file is listed
    with its extension (``m.ckpt``), as A1111 tells them apart; models dir entries come before extra dirs."""
    out, names, reals = [], set(), set()
    for info in items:
        real = os.path.realpath(info.path)
        if real in reals:
            continue
        if info.name in names:
            alternative = info.name + info.path.suffix if info.format != "diffusers" else ""
            if not alternative or alternative in names:
                logger.warning("two models are named %r; using the first one found, not %s", info.name, info.path)
                continue
            info.name = alternative
        names.add(info.name)
        reals.add(real)
        out.append(info)
    return out


def _folder_size(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder, followlinks=True):
        for fn in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, fn)).st_size
    return total


def builtin_upscalers() -> list[ModelInfo]:
    """``None``, ``Lanczos`` and ``Nearest``: PIL resizes, no file behind them (no hash)."""
    return [ModelInfo(name, Path(name), "upscaler", "builtin", 0, UPSCALER_BUILTIN, "builtin",
                      scale=BUILTIN_UPSCALER_SCALE) for name in BUILTIN_UPSCALER_NAMES]


def _hash_target(info: ModelInfo) -> Path | None:
    if info.format in ("hub", "builtin"):
        return None
    if info.format != "diffusers":
        return info.path
    for sub in ("unet", "vae", ""):
        for fn in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                   "diffusion_pytorch_model.bin"):
            candidate = info.path / sub / fn
            if candidate.is_file():
                return candidate
    index = info.path / "model_index.json"
    return index if index.is_file() else None
