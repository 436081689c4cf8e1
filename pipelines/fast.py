"""The ``--fast`` path (Settings ``fast``): the quickest way to run a loaded pipeline that keeps the pixels.

What it does depends on the device:

* **CUDA** (with Triton, compute capability 7.0+): channels_last UNet/VAE, fused QKV projections, and
  ``torch.compile`` of the UNet and the VAE decoder (inductor, 1x1 convs as matmuls). Compiled artefacts go to
  ``<cache_dir>/inductor`` (inductor's FX-graph and autograd caches) so that a restart does not compile from
  scratch. A new resolution or batch size recompiles (dynamo's guards); after ``RECOMPILE_LIMIT`` shapes, or
  when a graph fails to compile, dynamo runs eagerly instead of failing the image.
  Not measured yet: no GPU was lent while this was written (see bench/README.md).
* **CPU**: nothing changes, and the note says why. The exact-pixel candidates were measured on the 2-vCPU bench
  machine with SD1.5-shaped weights (issue 16's probe of one UNet call with CFG): channels_last 3.9 s vs eager
  4.4-5.5 s at 256² but 15.4 s vs 13.9-16.8 s at 512² (no clear gain), ``torch.compile`` 5.4 s (no gain, 168 s
  compile), OpenVINO 2.9 s at 256² (56 s one-off conversion, a second copy of the UNet weights in RAM) but
  14.6 s at 512² (no gain). None beats eager at 512², and torch already runs one thread per physical core, so
  ``--fast`` on CPU stays eager (OpenVINO at small sizes is the one open lead: see bench/README.md); the real
  CPU gains are the fidelity-trading switches (DeepCache, token merging) in ``pipelines/speedups.py``.
* **MPS / anything else**: nothing changes; the note says so.

``enable_fast(pipe, device, cache_dir)`` returns notes for the log/UI; ``disable_fast(pipe)`` undoes what can be
undone (eager modules back, memory format back, QKV unfused). Both are idempotent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 8  # shapes per compiled module before dynamo runs new shapes eagerly
MIN_CUDA_CAPABILITY = (7, 0)  # Triton's floor
_STATE_ATTR = "_atelier_fast"


def cuda_fast_path_blocker(device: torch.device) -> str | None:
    """Why the compiled CUDA path cannot run on ``device``, or None when it can."""
    if device.type != "cuda":
        return f"--fast: the compiled path needs an NVIDIA GPU; running on {device.type} "
    if not torch.cuda.is_available():
        return "--fast: CUDA is not available to torch"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CUDA_CAPABILITY:
        return (f"--fast: this GPU (compute capability {capability[0]}.{capability[1]}) is older than Triton "
                "supports; running in default mode")
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # very old torch
        return "--fast: this torch has no Triton support; running in default mode"
    if not has_triton():
        return "--fast: Triton is not installed (pip install triton); running in default mode"
    return None


def enable_fast(pipe: Any, device: torch.device | str, cache_dir: Path | None = None) -> list[str]:
    """Switch ``pipe`` (already on ``device``) to the fast path. Returns notes for the log and the UI."""
    device = torch.device(device)
    if getattr(pipe, _STATE_ATTR, None) is not None:
        return list(getattr(pipe, _STATE_ATTR)["notes"])
    state: dict[str, Any] = {"notes": [], "compiled": [], "channels_last": [], "fused": False}
    if device.type == "cpu":
        _enable_cpu(state)
    elif device.type == "cuda" and cuda_fast_path_blocker(device) is None:
        _enable_cuda(pipe, state, cache_dir)
    else:
        state["notes"].append(cuda_fast_path_blocker(device) + "default mode is used")
    setattr(pipe, _STATE_ATTR, state)
    for note in state["notes"]:
        log.info(note)
    return list(state["notes"])


def disable_fast(pipe: Any) -> None:
    """Undo ``enable_fast``: eager modules, contiguous memory format, separate QKV projections."""
    state = getattr(pipe, _STATE_ATTR, None)
    if state is None:
        return
    for module in state["compiled"]:
        # nn.Module.compile() keeps the eager forward; dropping the compiled call restores it.
        module._compiled_call_impl = None
    for module in state["channels_last"]:
        module.to(memory_format=torch.contiguous_format)
    if state["fused"]:
        pipe.unfuse_qkv_projections()
    setattr(pipe, _STATE_ATTR, None)


def is_fast(pipe: Any) -> bool:
    """True while ``enable_fast`` is in effect on ``pipe``."""
    return getattr(pipe, _STATE_ATTR, None) is not None


def _enable_cpu(state: dict[str, Any]) -> None:
    state["notes"].append(
        "--fast on CPU: no exact-pixel speed-up beats eager on CPUs (measured: channels_last, torch.compile, "
        "OpenVINO at 512x512), so images run as in default mode. For real gains on CPU switch on DeepCache "
        "and/or token merging (they change the pixels slightly).")


def _enable_cuda(pipe: Any, state: dict[str, Any], cache_dir: Path | None) -> None:
    import torch._dynamo
    import torch._inductor.config as inductor_config

    if cache_dir is not None:
        # Inductor reads these when it first compiles; setdefault keeps a user's own choice.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir) / "inductor"))
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    inductor_config.conv_1x1_as_mm = True
    inductor_config.coordinate_descent_tuning = True
    inductor_config.epilogue_fusion = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
    # A graph that fails to compile runs eagerly instead of failing the user's image.
    torch._dynamo.config.suppress_errors = True

    if hasattr(pipe, "fuse_qkv_projections"):
        try:
            pipe.fuse_qkv_projections()
            state["fused"] = True
            state["notes"].append("--fast: fused QKV projections")
        except Exception as exc:  # some attention processors (xformers, custom) cannot be fused
            log.warning("--fast: QKV fusion skipped: %s", exc)
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(memory_format=torch.channels_last)
            state["channels_last"].append(module)
    if getattr(pipe, "unet", None) is not None:
        pipe.unet.compile(mode="max-autotune")
        state["compiled"].append(pipe.unet)
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.decoder.compile(mode="max-autotune")
        state["compiled"].append(pipe.vae.decoder)
    state["notes"].append("--fast: UNet and VAE decoder compiled (the first image at a new size is slow while "
                          "compiling)")
