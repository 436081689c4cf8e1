"""Device and dtype choice, memory probes and OOM detection: the only module that asks ``torch.cuda``.

Policy (DESIGN.md): CUDA runs fp16 (bf16 only when asked for and supported), MPS fp16, CPU always fp32
(half precision on CPU is slow and some ops are missing). xformers is used only when the setting asks for it,
the package imports and the device is CUDA; otherwise PyTorch's SDPA attention (diffusers' default).
"""

from __future__ import annotations

import gc
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InvalidRequest
from .settings import physical_cores

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class DeviceChoice:
    """Where and in which precision models run."""

    device: torch.device
    dtype: torch.dtype
    xformers: bool = False

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, str(self.dtype))


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def xformers_installed() -> bool:
    return importlib.util.find_spec("xformers") is not None


def pick_device(setting: str = "auto") -> torch.device:
    """Resolve ``--device`` (auto/cuda/mps/cpu). Asking for a device that is not there is an error, not a fallback."""
    if setting == "auto":
        if cuda_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if setting == "cuda" and not cuda_available():
        raise InvalidRequest("--device cuda was given but PyTorch sees no CUDA GPU. Use --device auto.", "device")
    if setting == "mps" and not mps_available():
        raise InvalidRequest("--device mps was given but this PyTorch has no MPS backend. Use --device auto.", "device")
    if setting not in ("cuda", "mps", "cpu"):
        raise InvalidRequest(f"Unknown device '{setting}'. Use auto, cuda, mps or cpu.", "device")
    return torch.device(setting)


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """fp32 on CPU always; fp16 on CUDA/MPS by default; bf16 only when asked and the GPU supports it."""
    if device.type == "cpu":
        return torch.float32
    if precision == "auto":
        return torch.float16
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    if precision == "bf16" and device.type == "mps":
        return torch.float16
    return _DTYPES.get(precision, torch.float16)


def choose(device_setting: str = "auto", precision: str = "auto", xformers: bool = False) -> DeviceChoice:
    """The device, dtype and attention backend for these settings."""
    device = pick_device(device_setting)
    dtype = pick_dtype(device, precision)
    use_xformers = bool(xformers and device.type == "cuda" and xformers_installed())
    return DeviceChoice(device=device, dtype=dtype, xformers=use_xformers)


def memory_info(device: torch.device) -> tuple[int | None, int | None]:
    """``(free, total)`` bytes of accelerator memory; free counts what PyTorch's allocator could give back.

    ``(None, None)`` on CPU/MPS, where there is no separate budget to plan against.
    """
    if device.type != "cuda":
        return None, None
    free, total = torch.cuda.mem_get_info(device)
    reclaimable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + reclaimable), int(total)


def memory_used(device: torch.device) -> int | None:
    """Bytes PyTorch holds on the accelerator (for the status bar); None on CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.memory_reserved(device))


def peak_memory(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free_memory(device: torch.device) -> None:
    """Give cached allocator blocks back after an OOM or an eviction."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
    elif device.type == "mps":
        torch.mps.empty_cache()


# What PyTorch's allocators say when they run out: CUDA/MPS "out of memory"; the CPU allocator
# "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes" (a RuntimeError, not OutOfMemoryError).
_OOM_TEXTS = ("out of memory", "can't allocate memory", "defaultcpuallocator")


def is_oom(exc: BaseException) -> bool:
    """True for PyTorch's out-of-memory errors on any backend, the CPU's included (CUDA raises
    ``torch.OutOfMemoryError``; the CPU allocator a ``RuntimeError`` saying it "can't allocate memory")."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(hint in text for hint in _OOM_TEXTS)


def total_ram() -> int:
    """Bytes of system RAM (for default cache sizes)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


def describe(choice: DeviceChoice) -> dict[str, Any]:
    """Device facts for ``status()``."""
    name = str(choice.device)
    if choice.device.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(choice.device)})"
    return {"device": name, "dtype": choice.dtype_name, "xformers": choice.xformers}


def cpu_threads(setting: int) -> int:
    """The thread count for the Settings' ``threads``: the number itself, or the physical cores for 0."""
    return int(setting) if int(setting) > 0 else physical_cores()


def set_threads(setting: int) -> int:
    """Run torch's CPU work on ``cpu_threads(setting)`` threads (OpenVINO models compiled afterwards follow torch's
    count, ``fast._compile_config``); returns the count."""
    count = cpu_threads(setting)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def memory_report(device: torch.device) -> dict[str, Any]:
    """A1111's ``/sdapi/v1/memory`` figures, in bytes: ``ram`` (``free``/``used``/``total``, used = this process's
    resident memory) and ``cuda`` (the GPU's ``system`` free/used/total and PyTorch's allocator counters, or
    ``{"error": ...}`` without CUDA); a part that cannot be read is ``{"error": reason}``, as A1111 reports it."""
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
        used = int(psutil.Process(os.getpid()).memory_info().rss)
        ram: dict[str, Any] = {"free": total - used, "used": used, "total": total}
    except Exception as exc:  # psutil is a requirement; a broken install still answers
        ram = {"error": str(exc)}
    if device.type != "cuda" or not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "unavailable"}}
    try:
        free, total = torch.cuda.mem_get_info(device)
        stats = dict(torch.cuda.memory_stats(device))

        def pair(name: str) -> dict[str, int]:
            return {"current": int(stats.get(f"{name}.all.current", 0)), "peak": int(stats.get(f"{name}.all.peak", 0))}

        cuda: dict[str, Any] = {
            "system": {"free": int(free), "used": int(total - free), "total": int(total)},
            "active": pair("active_bytes"),
            "allocated": pair("allocated_bytes"),
            "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {"retries": int(stats.get("num_alloc_retries", 0)), "oom": int(stats.get("num_ooms", 0))},
        }
    except Exception as exc:  # a driver that cannot answer: say so, as A1111 does
        cuda = {"error": str(exc)}
    return {"ram": ram, "cuda": cuda}
