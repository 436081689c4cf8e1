"""Demo models for ``app.py --demo``: tiny random-weight models written in the real formats, built once.

``ensure_demo_models(cache_dir)`` returns a folder laid out like a models folder::

    checkpoints/demo-tiny-sd15 (random weights).safetensors   single file, original SD key layout
    upscale_models/demo-tiny-x4 (random weights)/              diffusers folder (model_index.json, ...)

The registry takes it as an extra folder and the normal loaders load it, so the demo exercises the same code as
real files. The single file carries its (tiny) diffusers configs in its safetensors metadata, because the bundled
SD 1.5 configs describe full-size shapes. The models draw noise: their weights are random.

Building takes a few seconds; it happens in a temporary folder renamed into place, so two processes starting at
once never see a half-written folder (the slower one discards its copy).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEMO_VERSION = "3"
DEMO_CHECKPOINT_NAME = "demo-tiny-sd15 (random weights)"
DEMO_UPSCALER_NAME = "demo-tiny-x4 (random weights)"
_DONE_MARKER = ".complete"


def component_configs(components: dict[str, Any]) -> dict[str, Any]:
    """The diffusers configs of ``components`` as plain JSON objects ({"unet": {...}, "vae": {...}, ...})."""
    configs: dict[str, Any] = {}
    for name in ("unet", "vae", "scheduler"):
        if components.get(name) is not None:
            configs[name] = json.loads(components[name].to_json_string())
    for name in ("text_encoder", "text_encoder_2"):
        if components.get(name) is not None:
            configs[name] = json.loads(components[name].config.to_json_string())
    return configs


def write_single_file(components: dict[str, Any], path: Path, embed_configs: bool = True) -> Path:
    """Save SD 1.x/2.x/SDXL ``components`` as one ``.safetensors`` in the original key layout (as model sites do).

    ``embed_configs`` stores the components' diffusers configs in the header metadata, so that tiny models with
    non-standard shapes load without a sidecar folder (see ``loaders``). Written to a temp name, then renamed.
    """
    from safetensors.torch import save_file

    from .convert import pipeline_to_original
    from .loaders import EMBEDDED_CONFIG_KEY

    metadata = {"format": "pt"}
    if embed_configs:
        metadata[EMBEDDED_CONFIG_KEY] = json.dumps(component_configs(components))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    save_file(pipeline_to_original(components), str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def _build(target: Path) -> None:
    from .tiny import demo_sd15_components, tiny_x4_pipeline

    write_single_file(demo_sd15_components(seed=0),
                      target / "checkpoints" / f"{DEMO_CHECKPOINT_NAME}.safetensors")
    tiny_x4_pipeline(seed=0).save_pretrained(str(target / "upscale_models" / DEMO_UPSCALER_NAME),
                                             safe_serialization=True)
    (target / _DONE_MARKER).write_text(DEMO_VERSION)


def ensure_demo_models(cache_dir: Path) -> Path:
    """Build the demo models into ``cache_dir`` once (later calls return at once); returns the models folder."""
    cache_dir = Path(cache_dir)
    root = cache_dir / f"demo-models-v{DEMO_VERSION}"
    if (root / _DONE_MARKER).is_file():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    if root.exists():  # a folder left by a crashed build: replace it
        shutil.rmtree(root, ignore_errors=True)
    building = cache_dir / f".demo-build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _build(building)
        try:
            os.rename(building, root)
        except OSError:
            if not (root / _DONE_MARKER).is_file():  # not a concurrent winner: a real failure
                raise
            logger.info("another process built the demo models first; using its copy")
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root
