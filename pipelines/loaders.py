"""Turn a ``ModelInfo`` into diffusers components, with no network and without running code hidden in pickles.

* diffusers folders: each component ``from_pretrained(local_files_only=True)`` (fp16-only folders use
  ``variant="fp16"``).
* single files (``.safetensors``, ``.ckpt``, ``.pt``): the state dict is read here (safetensors, or
  ``torch.load(weights_only=True)`` with a tiny allow-list, see ``safe_torch_load``), then every component is built
  with diffusers' ``from_single_file`` machinery and a **local** diffusers config folder, so nothing is fetched.

Which config folder a single file uses, first match wins:

1. a sidecar folder beside the file, ``<stem>.config/``, laid out like a diffusers repo without weights
   (``model_index.json``, ``unet/config.json``, ``vae/config.json``, ``text_encoder[_2]/config.json``,
   ``scheduler/scheduler_config.json``) -- for fine-tunes with unusual shapes;
2. configs embedded by Atelier in the safetensors header metadata (key ``atelier.diffusers_config``, a JSON object
   ``{"unet": {...}, "vae": {...}, ...}``) -- the demo and test files carry them, so a tiny file copied alone into
   ``models/checkpoints/`` still loads; real model files never do;
3. the bundled folder of the detected family, ``pipelines/configs/<family>/`` (real SD 1.5, 2.1, 2.1-base, SDXL
   base, the inpainting variants and the x4 upscaler).

Tokenizers are never read from disk beside a checkpoint: they are built from the bundled CLIP BPE files
(``pipelines/tokenizers.py``). SD 2.x's prediction type comes from the family the registry chose (yaml beside the
file, name hint, override or default), and is written into the pristine scheduler config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint_files import first_line, permission_error, read_safetensors_header, read_state_dict
from .errors import ModelLoadError
from .families import FAMILIES, VAE_GROUPS, FamilySpec
from .registry import ModelInfo, detect_diffusers_folder

logger = logging.getLogger(__name__)

EMBEDDED_CONFIG_KEY = "atelier.diffusers_config"
COMPONENT_CONFIG_FILES = {
    "model_index": "model_index.json",
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
HUB_ALLOW_PATTERNS = [
    "model_index.json", "*/config.json", "*/scheduler_config.json", "tokenizer*/*",
    "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder*/model.safetensors", "low_res_scheduler/*",
]


@dataclass
class LoadedCheckpoint:
    """One checkpoint's components on the CPU in the requested dtype, ready for ``PipelineClass(**components)``.

    ``components`` uses diffusers' names (unet, vae, text_encoder, tokenizer, scheduler; + text_encoder_2,
    tokenizer_2 for SDXL; + low_res_scheduler for the x4 upscaler). ``pipeline_kwargs`` holds extra non-module
    init arguments (the x4's ``max_noise_level``). ``scheduler_config`` is pristine: build a fresh scheduler per
    request from it.
    """

    info: ModelInfo
    family: str
    components: dict[str, Any]
    scheduler_config: dict[str, Any]
    nbytes: int
    prediction_type: str
    notes: list[str] = field(default_factory=list)
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> FamilySpec:
        """The family's ``FamilySpec``."""
        return FAMILIES[self.family]


# ---------------------------------------------------------------------------------------------------------------
# Config folders for single files


def embedded_configs(path: Path) -> dict[str, Any] | None:
    """Configs stored by Atelier in a safetensors header (demo/test files), or None."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        _shapes, metadata = read_safetensors_header(path)
    except (ModelLoadError, OSError):
        return None
    raw = metadata.get(EMBEDDED_CONFIG_KEY)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def write_config_folder(folder: Path, configs: dict[str, Any]) -> None:
    """Lay out ``configs`` ({"unet": {...}, ...}) as a diffusers config folder (JSON only)."""
    for name, rel in COMPONENT_CONFIG_FILES.items():
        if isinstance(configs.get(name), dict):
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(configs[name], indent=1))


def sidecar_config_dir(path: Path) -> Path | None:
    """``<stem>.config/`` beside a single file, when it holds at least a UNet or VAE config."""
    folder = path.with_name(path.stem + ".config")
    if (folder / "unet" / "config.json").is_file() or (folder / "vae" / "config.json").is_file():
        return folder
    return None


@contextlib.contextmanager
def config_dir_for(path: Path, bundled: Path, notes: list[str]) -> Iterator[Path]:
    """The config folder a single file loads with (sidecar > embedded > bundled), noted in ``notes``."""
    sidecar = sidecar_config_dir(path)
    if sidecar is not None:
        notes.append(f"configs from the sidecar folder {sidecar.name}/")
        yield sidecar
        return
    embedded = embedded_configs(path)
    if embedded:
        with tempfile.TemporaryDirectory(prefix="atelier-config-") as tmp:
            write_config_folder(Path(tmp), embedded)
            notes.append("configs embedded in the file (Atelier demo/test model)")
            yield Path(tmp)
        return
    notes.append(f"configs bundled for this family ({bundled.name})")
    yield bundled


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# Building components


def _tokenizers(spec: FamilySpec) -> dict[str, Any]:
    from .tokenizers import OPENAI_PAD, OPENCLIP_PAD, clip_tokenizer

    if spec.is_xl:
        return {"tokenizer": clip_tokenizer(OPENAI_PAD), "tokenizer_2": clip_tokenizer(OPENCLIP_PAD)}
    openclip = spec.key.startswith("sd2") or spec.key == "x4-upscaler"
    return {"tokenizer": clip_tokenizer(OPENCLIP_PAD if openclip else OPENAI_PAD)}


def _scheduler(config: dict[str, Any]) -> Any:
    import diffusers

    cls = getattr(diffusers, str(config.get("_class_name", "")), None)
    if cls is None:
        raise ModelLoadError(f"Unknown scheduler class {config.get('_class_name')!r} in the model's config.")
    return cls.from_config(config)


def _pristine_scheduler_config(config: dict[str, Any], spec: FamilySpec, notes: list[str]) -> dict[str, Any]:
    config = dict(config)
    if config.get("prediction_type") != spec.prediction_type:
        notes.append(f"scheduler prediction_type set to {spec.prediction_type} for {spec.label} "
                     f"(config said {config.get('prediction_type')})")
        config["prediction_type"] = spec.prediction_type
    return config


def _build(what: str, info: ModelInfo, spec: FamilySpec, build) -> Any:
    """Run one component builder; library errors become a ``ModelLoadError`` that names the file and family."""
    try:
        return build()
    except ModelLoadError:
        raise
    except PermissionError:
        raise permission_error(info.path) from None
    except Exception as exc:
        raise ModelLoadError(
            f"{info.name}: the {what} does not match the {spec.label} layout ({first_line(exc)}). The file may be "
            "damaged, a variant Atelier does not know, or of another family."
        ) from None


def _single_file_builders(info: ModelInfo, spec: FamilySpec, state_dict: dict, cfg: Path, dtype) -> dict[str, Any]:
    """One builder per component of a single file (``unet``, ``vae``, ``text_encoder``[, ``text_encoder_2``])."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    common = {"torch_dtype": dtype, "local_files_only": True}
    builders: dict[str, Any] = {
        "unet": lambda: UNet2DConditionModel.from_single_file(state_dict, config=str(cfg), subfolder="unet",
                                                              **common),
        "vae": lambda: AutoencoderKL.from_single_file(state_dict, config=str(cfg), subfolder="vae", **common),
        "text_encoder": lambda: create_diffusers_clip_model_from_ldm(
            CLIPTextModel, checkpoint=state_dict, config=str(cfg), subfolder="text_encoder", **common),
    }
    if spec.is_xl:
        builders["text_encoder_2"] = lambda: create_diffusers_clip_model_from_ldm(
            CLIPTextModelWithProjection, checkpoint=state_dict, config=str(cfg), subfolder="text_encoder_2", **common)
    return builders


_COMPONENT_LABELS = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder",
                     "text_encoder_2": "second text encoder"}


def _load_single_file(info: ModelInfo, spec: FamilySpec, dtype, notes: list[str]) -> tuple[dict, dict]:
    if spec.config_dir is None:
        raise ModelLoadError(f"{info.name}: {spec.label} cannot be loaded from a single file; use its diffusers "
                             "folder.")
    state_dict = read_state_dict(info.path)
    with config_dir_for(info.path, spec.config_dir, notes) as cfg:
        components = {name: _build(_COMPONENT_LABELS[name], info, spec, build)
                      for name, build in _single_file_builders(info, spec, state_dict, cfg, dtype).items()}
        scheduler_config = _json(cfg / "scheduler" / "scheduler_config.json")
    return components, scheduler_config


def _variant(folder: Path) -> str | None:
    """"fp16" when a component folder holds only fp16-variant weights (common in hub repos)."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    plain = {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors",
             "pytorch_model.bin"}
    if names & plain:
        return None
    if any(".fp16." in n for n in names):
        return "fp16"
    return None


def _folder_component(info: ModelInfo, spec: FamilySpec, index: dict[str, Any], name: str, dtype) -> Any | None:
    """Component ``name`` of a diffusers folder (``from_pretrained``, local files only), or None when it has none."""
    import diffusers
    import transformers

    folder = info.path
    entry = index.get(name)
    if not isinstance(entry, list) or entry[0] is None:
        return None
    library, class_name = entry[0], entry[1]
    module = diffusers if library == "diffusers" else transformers
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ModelLoadError(f"{info.name}: component {name} uses {library}.{class_name}, which is not available.")
    kwargs: dict[str, Any] = {"subfolder": name, "local_files_only": True, "variant": _variant(folder / name)}
    kwargs["torch_dtype" if module is diffusers else "dtype"] = dtype
    return _build(name, info, spec, lambda: cls.from_pretrained(str(folder), **kwargs))


def _load_diffusers_folder(info: ModelInfo, spec: FamilySpec, dtype, notes: list[str]) -> tuple[dict, dict, dict]:
    folder = info.path
    index = _json(folder / "model_index.json")
    components: dict[str, Any] = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = _folder_component(info, spec, index, name, dtype)
        if module is not None:
            components[name] = module
    for name in ("tokenizer", "tokenizer_2"):
        if any((folder / name / fn).is_file() for fn in ("vocab.json", "tokenizer.json")):
            from transformers import CLIPTokenizer

            components[name] = _build(name, info, spec, lambda name=name: CLIPTokenizer.from_pretrained(
                str(folder), subfolder=name, local_files_only=True))
    for name, tok in _tokenizers(spec).items():
        components.setdefault(name, tok)
    if "text_encoder_2" not in components:
        components.pop("tokenizer_2", None)
    extra: dict[str, Any] = {}
    if spec.key == "x4-upscaler":
        low_res = _json(folder / "low_res_scheduler" / "scheduler_config.json")
        components["low_res_scheduler"] = _scheduler(low_res)
        extra["max_noise_level"] = int(index.get("max_noise_level", 350))
    notes.append("diffusers folder loaded with from_pretrained (local files only)")
    return components, _json(folder / "scheduler" / "scheduler_config.json"), extra


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def download_hub_model(repo_id: str) -> Path:
    """A hub id's diffusers folder: from the local HF cache, else downloaded (with tqdm progress) when online.

    Offline this fails within seconds with a message saying where to put a file instead.
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=True))
    except Exception:  # not in the local cache
        pass
    if not _hub_reachable():
        raise ModelLoadError(
            f"{repo_id} is a Hugging Face hub id, and the hub cannot be reached (offline). Download the model "
            "elsewhere and put its .safetensors file (or its diffusers folder) into models/checkpoints/."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as exc:
        raise ModelLoadError(f"Downloading {repo_id} failed ({first_line(exc)}). Check the id, or put the model "
                             "file into models/checkpoints/.") from None


def _resolve_hub(info: ModelInfo) -> ModelInfo:
    folder = download_hub_model(str(info.path))
    detection = detect_diffusers_folder(folder)
    return ModelInfo(info.name, folder, "checkpoint", "diffusers", 0, detection.family, "hub",
                     problem=detection.problem)


def _module_bytes(components: dict[str, Any]) -> int:
    import torch

    total = 0
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in module.parameters())
            total += sum(t.numel() * t.element_size() for t in module.buffers())
    return total


def load_components(info: ModelInfo, dtype, vae: ModelInfo | None = None) -> LoadedCheckpoint:
    """Load a checkpoint (or x4 upscaler) entry into CPU components in ``dtype``, offline.

    ``vae``: an entry of ``registry.vaes()`` replacing the built-in VAE (checked against the family).
    Raises ``ModelLoadError`` with a message a person can act on for every file problem.
    """
    if info.format == "hub":
        info = _resolve_hub(info)
    if info.problem:
        raise ModelLoadError(info.problem)
    if info.family is None or info.family not in FAMILIES:
        raise ModelLoadError(f"{info.name}: unknown model family. Atelier runs SD 1.x, SD 2.x, SDXL (and their "
                             "inpainting variants) and the SD x4 upscaler.")
    spec = FAMILIES[info.family]
    notes = list(info.notes) + [f"family {spec.label} (detected from {info.family_source})"]
    extra: dict[str, Any] = {}
    if info.format == "diffusers":
        components, scheduler_config, extra = _load_diffusers_folder(info, spec, dtype, notes)
        vae_config_dir = info.path
    else:
        if not info.path.is_file():
            raise ModelLoadError(f"{info.path} no longer exists.", field="checkpoint")
        components, scheduler_config = _load_single_file(info, spec, dtype, notes)
        components.update(_tokenizers(spec))
        vae_config_dir = None
    scheduler_config = _pristine_scheduler_config(scheduler_config, spec, notes)
    components["scheduler"] = _scheduler(scheduler_config)
    if vae is not None:
        components["vae"] = load_vae(vae, dtype, family=spec.key, config_dir=vae_config_dir)
        notes.append(f"external VAE {vae.name}")
    for module in components.values():
        if hasattr(module, "eval"):
            module.eval()
    return LoadedCheckpoint(info, spec.key, components, scheduler_config, _module_bytes(components),
                            spec.prediction_type, notes, extra)


def load_module_state(info: ModelInfo, component: str, dtype) -> dict[str, Any]:
    """The tensors of one component (``unet``, ``vae``) of checkpoint ``info`` (as ``load_components`` left it:
    a resolved hub id is a diffusers folder), built again from its file exactly as the first load built it, in
    ``dtype``: what ``--fast`` puts back into a torch module whose weights it dropped. Only that component is
    built; ``ModelLoadError`` when the file is gone or no longer fits."""
    if info.family is None or info.family not in FAMILIES:
        raise ModelLoadError(f"{info.name}: unknown model family; its {component} cannot be read again.")
    spec = FAMILIES[info.family]
    if info.format == "diffusers":
        module = _folder_component(info, spec, _json(info.path / "model_index.json"), component, dtype)
    else:
        if not info.path.is_file():
            raise ModelLoadError(f"{info.path} no longer exists.", field="checkpoint")
        if spec.config_dir is None:
            raise ModelLoadError(f"{info.name}: {spec.label} cannot be loaded from a single file.")
        state_dict = read_state_dict(info.path)
        with config_dir_for(info.path, spec.config_dir, []) as cfg:
            build = _single_file_builders(info, spec, state_dict, cfg, dtype)[component]
            module = _build(_COMPONENT_LABELS[component], info, spec, build)
    if module is None:
        raise ModelLoadError(f"{info.name} has no {component}.")
    return dict(module.state_dict())


# ---------------------------------------------------------------------------------------------------------------
# External VAEs


def check_vae_compatible(vae: ModelInfo, family_key: str) -> None:
    """Raise ``ModelLoadError`` when ``vae`` is made for another family group than ``family_key``."""
    if vae.problem:
        raise ModelLoadError(vae.problem, field="vae")
    want = VAE_GROUPS.get(family_key)
    if vae.family and want and vae.family != want:
        labels = {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "x4": "the SD x4 upscaler"}
        raise ModelLoadError(
            f"The VAE {vae.name} is made for {labels.get(vae.family, vae.family)} models, but the checkpoint is "
            f"{FAMILIES[family_key].label}. Choose 'Automatic' or a VAE made for {labels.get(want, want)}.",
            field="vae",
        )


def load_vae(info: ModelInfo, dtype, family: str | None = None, config_dir: Path | None = None):
    """An external VAE (``models/vae/`` file or diffusers folder) as an ``AutoencoderKL`` on the CPU in ``dtype``.

    ``family``: the checkpoint's family, checked for compatibility. The VAE's config comes from a sidecar
    ``<stem>.config/`` or embedded configs, else ``config_dir`` (the checkpoint's folder), else the bundled config
    of the VAE's group (SD: 0.18215 scaling, SDXL: 0.13025).
    """
    from diffusers import AutoencoderKL

    if family is not None:
        check_vae_compatible(info, family)
    elif info.problem:
        raise ModelLoadError(info.problem, field="vae")
    group_config = {"sd": "sd15", "sdxl": "sdxl", "x4": "x4-upscaler"}.get(info.family or "sd", "sd15")
    spec = FAMILIES[family] if family else FAMILIES[group_config]
    if info.format == "diffusers":
        return _build("VAE", info, spec, lambda: AutoencoderKL.from_pretrained(
            str(info.path), torch_dtype=dtype, local_files_only=True)).eval()
    state_dict = read_state_dict(info.path)
    fallback = config_dir if config_dir is not None else FAMILIES[group_config].config_dir
    notes: list[str] = []
    with config_dir_for(info.path, fallback, notes) as cfg:
        try:
            vae = AutoencoderKL.from_single_file(state_dict, config=str(cfg), subfolder="vae", torch_dtype=dtype,
                                                 local_files_only=True)
        except PermissionError:
            raise permission_error(info.path) from None
        except Exception as exc:
            raise ModelLoadError(
                f"The VAE {info.name} does not fit this checkpoint ({first_line(exc)}). Choose 'Automatic' or a "
                "VAE made for this model family.", field="vae") from None
    return vae.eval()
