"""The ``--fast`` path (Settings ``fast``): the quickest way to run a loaded pipeline that keeps the pixels.

What it does depends on the device:

* **CUDA** (with Triton, compute capability 7.0+): channels_last UNet/VAE, fused QKV projections, and
  ``torch.compile`` of the UNet and the VAE decoder (inductor, 1x1 convs as matmuls). Compiled artefacts go to
  ``<cache_dir>/inductor`` (inductor's FX-graph and autograd caches) so that a restart does not compile from
  scratch. A new resolution or batch size recompiles (dynamo's guards); after ``RECOMPILE_LIMIT`` shapes, or
  when a graph fails to compile, dynamo runs eagerly instead of failing the image.
  Not measured yet: no GPU was lent while this was written (see bench/README.md).
* **CPU**: the UNet and the VAE decoder run through OpenVINO (``OpenVinoUNet``, ``OpenVinoDecoder``):
  ``ov.convert_model`` of the torch module, traced once per checkpoint with dynamic input shapes (any size, batch,
  prompt length or decode tile, no per-shape conversion), saved as an fp32 IR under
  ``<cache_dir>/openvino/unet-<fingerprint>.xml`` (``vae-decoder-<fingerprint>.xml``) and compiled with
  ``INFERENCE_PRECISION_HINT=f32`` (exact: max abs difference ~1e-5 against eager on a UNet output of magnitude
  ~1.4, at most 1 pixel level in an image). Measured on the idle 2-vCPU bench machine, one SD1.5-shaped UNet call
  with CFG (batch 2) at 512²: 12.7 s against 16.4 s eager (0.77x; static shapes 0.84x, no better); the decoder at
  512² 0.8x of eager's CPU time; channels_last ~0.97x (left out). One-off costs: conversion ~1.5-2.5 min for the
  UNet, ~1-2.5 min for the decoder, then a few seconds to compile the cached IRs at each start (and again after a
  switch between txt2img and img2img, since ``disable_fast`` frees the models). Memory: OpenVINO keeps its own
  copy of the weights (3.2 GiB for SD1.5's UNet, 0.2 GiB for its decoder), so torch's copies are dropped (moved to
  ``meta``) while OpenVINO serves them, when the checkpoint file can give them back (``readers``). They are read
  back from the file (``restore_weights``: the loader builds that module again) before any eager use: ``disable_fast``
  (a LoRA, DeepCache, token merging or tiling switches ``--fast`` off for the request) and the calls OpenVINO does
  not take (ControlNet/masks, odd latent sizes), which fall back to eager per call; the next OpenVINO call drops
  them again. Without ``openvino`` installed, or when conversion fails, the note
  says so and images run as in default mode (a decoder that fails alone just decodes eagerly). See
  bench/README.md, "OpenVINO probe (CPU)".
* **MPS / anything else**: nothing changes; the note says so.

``enable_fast(pipe, device, cache_dir)`` returns notes for the log/UI; ``disable_fast(pipe)`` undoes what can be
undone (eager modules back, memory format back, QKV unfused, the UNet's and decoder's own forwards back and
OpenVINO's models freed). Both are idempotent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
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


def enable_fast(pipe: Any, device: torch.device | str, cache_dir: Path | None = None,
                readers: dict[str, Callable[[torch.dtype], dict[str, torch.Tensor]]] | None = None) -> list[str]:
    """Switch ``pipe`` (already on ``device``) to the fast path. Returns notes for the log and the UI.

    ``readers`` (``CacheEntry.weight_readers``: ``"unet"``/``"vae"`` → ``read(dtype)``, the module's tensors read
    again from the checkpoint file): on CPU, torch's copy of each module OpenVINO serves is dropped while it does,
    and read back with these before any eager use. Without them torch's copies stay."""
    device = torch.device(device)
    if getattr(pipe, _STATE_ATTR, None) is not None:
        return list(getattr(pipe, _STATE_ATTR)["notes"])
    state: dict[str, Any] = {"notes": [], "compiled": [], "channels_last": [], "fused": False, "openvino": []}
    if device.type == "cpu":
        _enable_cpu(pipe, state, cache_dir, readers or {})
    elif device.type == "cuda" and cuda_fast_path_blocker(device) is None:
        _enable_cuda(pipe, state, cache_dir)
    else:
        state["notes"].append(cuda_fast_path_blocker(device) + "default mode is used")
    setattr(pipe, _STATE_ATTR, state)
    for note in state["notes"]:
        log.info(note)
    return list(state["notes"])


def disable_fast(pipe: Any) -> None:
    """Undo ``enable_fast``: eager modules, contiguous memory format, separate QKV projections, and on CPU the
    UNet's own ``forward`` back with the OpenVINO model (and its copy of the weights) freed, torch's dropped
    weights read back from the checkpoint first."""
    state = getattr(pipe, _STATE_ATTR, None)
    if state is None:
        return
    for runner in state.get("openvino", ()):
        restore_weights(runner.module)  # torch runs this module again: whole before anything else happens
        _forget_dropped(runner.module)
    for runner in state.get("openvino", ()):
        runner.remove()
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


def _enable_cpu(pipe: Any, state: dict[str, Any], cache_dir: Path | None,
                readers: dict[str, Callable[[torch.dtype], dict[str, torch.Tensor]]]) -> None:
    """Serve the UNet, then the VAE decoder, from OpenVINO models (converted once each, cached on disk); drop
    torch's copy of each that ``readers`` can read back (before compiling when the IR came from the cache, so that
    the two copies never sit side by side)."""
    unet = getattr(pipe, "unet", None)
    blocker = openvino_blocker(unet)
    if blocker is not None:
        state["notes"].append(blocker)
        return
    ir_dir = None if cache_dir is None else Path(cache_dir) / OPENVINO_DIR
    restore_weights(unet)  # left dropped by a pipeline that was thrown away: the fingerprint reads the weights
    try:
        runner = OpenVinoUNet.build(unet, ir_dir, _dropper(unet, readers.get("unet")))
    except Exception as exc:  # a model OpenVINO cannot convert or compile: the image still runs, eagerly
        log.warning("--fast: OpenVINO could not take the UNet", exc_info=True)
        restore_weights(unet)
        _forget_dropped(unet)
        state["notes"].append(f"--fast on CPU: OpenVINO could not convert this UNet ({type(exc).__name__}: {exc}); "
                              "running in default mode")
        return
    runner.install()
    state["openvino"].append(runner)
    state["notes"].extend(runner.notes)
    vae = getattr(pipe, "vae", None)
    if decoder_blocker(vae) is not None:
        _note_dropped(state, (unet,))
        return  # no AutoencoderKL decoder, or not fp32: it decodes eagerly, as in default mode (nothing to say)
    restore_weights(vae.decoder)
    read_vae = readers.get("vae")
    read_decoder = None if read_vae is None else _submodule_reader(read_vae, "decoder.")
    try:
        decoding = OpenVinoDecoder.build(vae.decoder, vae.config, ir_dir, _dropper(vae.decoder, read_decoder))
    except Exception as exc:  # the UNet is the part that matters: keep it, decode eagerly
        log.warning("--fast: OpenVINO could not take the VAE decoder", exc_info=True)
        restore_weights(vae.decoder)
        _forget_dropped(vae.decoder)
        state["notes"].append(f"--fast on CPU: the VAE decoder stays in torch ({type(exc).__name__}: {exc})")
        _note_dropped(state, (unet,))
        return
    decoding.install()
    state["openvino"].append(decoding)
    state["notes"].extend(decoding.notes)
    _note_dropped(state, (unet, vae.decoder))


def _dropper(module: Any, read: Callable[[torch.dtype], dict[str, torch.Tensor]] | None) -> Callable[[], Any] | None:
    return None if read is None else (lambda: drop_weights(module, read))


def _note_dropped(state: dict[str, Any], modules: tuple[Any, ...]) -> None:
    dropped = sum(_weights_gib(m) for m in modules if weights_dropped(m)) * 2**30
    if dropped:
        state["notes"].append(f"--fast on CPU: torch's copy of those weights is dropped while OpenVINO serves them "
                              f"(-{dropped / 2**30:.1f} GiB RAM); it is read back from the checkpoint file when "
                              "a LoRA, DeepCache, token merging, tiling or an eager-only call needs it")


def _submodule_reader(read: Callable[[torch.dtype], dict[str, torch.Tensor]],
                      prefix: str) -> Callable[[torch.dtype], dict[str, torch.Tensor]]:
    """A component's reader narrowed to one submodule's tensors (the VAE's ``decoder.``), keys without the prefix."""
    def read_submodule(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {key[len(prefix):]: value for key, value in read(dtype).items() if key.startswith(prefix)}
    return read_submodule


# --------------------------------------------------------------------------------------------------------------
# CPU memory: torch's copy of a module OpenVINO serves is dropped (meta tensors) and read back before eager use

_DROPPED_ATTR = "_atelier_dropped"  # on the torch module: its DroppedWeights


class DroppedWeights:
    """What ``drop_weights`` took out of a module and how to read it back (``read(dtype)``: the module's tensors,
    as the checkpoint's loader builds them). ``slots`` is empty while the module is whole."""

    def __init__(self, read: Callable[[torch.dtype], dict[str, torch.Tensor]]):
        self.read = read
        # (owning submodule, attribute, state-dict key, is a parameter, dtype, requires_grad)
        self.slots: list[tuple[torch.nn.Module, str, str, bool, torch.dtype, bool]] = []


def _is_adapter(module_name: str) -> bool:
    """peft's LoRA layers (``lora_A``, ``lora_B``, ``lora_magnitude_vector``, ...): not in the checkpoint file, so
    never dropped."""
    return any(part.startswith("lora_") for part in module_name.split("."))


def drop_weights(module: torch.nn.Module, read: Callable[[torch.dtype], dict[str, torch.Tensor]]) -> int:
    """Replace ``module``'s parameters and persistent buffers with ``meta`` tensors (no memory); ``read`` gives them
    back (``restore_weights``). LoRA adapter layers stay. Returns the bytes dropped (0 when already dropped)."""
    record = getattr(module, _DROPPED_ATTR, None)
    if record is not None and record.slots:
        return 0
    record = DroppedWeights(read)
    dropped = 0
    for prefix, owner in module.named_modules():
        if _is_adapter(prefix):
            continue
        for is_param, table in ((True, owner._parameters), (False, owner._buffers)):
            for name, tensor in list(table.items()):
                if tensor is None or tensor.is_meta or (not is_param and name in owner._non_persistent_buffers_set):
                    continue
                key = f"{prefix}.{name}" if prefix else name
                record.slots.append((owner, name, key, is_param, tensor.dtype, tensor.requires_grad))
                dropped += tensor.numel() * tensor.element_size()
                empty = tensor.detach().to("meta")
                table[name] = torch.nn.Parameter(empty, requires_grad=tensor.requires_grad) if is_param else empty
    setattr(module, _DROPPED_ATTR, record)
    return dropped


def weights_dropped(module: Any) -> bool:
    """True while ``module``'s torch weights are dropped (``drop_weights``) and not read back yet."""
    record = getattr(module, _DROPPED_ATTR, None)
    return record is not None and bool(record.slots)


def restore_weights(module: Any) -> bool:
    """Read ``module``'s dropped tensors back from the checkpoint (a peft-wrapped layer's ``base_layer`` from the
    layer's own key); True when something was read. The record stays, so that ``drop_weights_again`` can drop
    them once OpenVINO serves the module again."""
    record = getattr(module, _DROPPED_ATTR, None)
    if record is None or not record.slots:
        return False
    started = time.perf_counter()
    source = record.read(record.slots[0][4])
    missing = [key for _o, _n, key, *_ in record.slots if _source_key(key) not in source]
    if missing:
        raise RuntimeError(f"--fast: the checkpoint file no longer holds {missing[0]} of the "
                           f"{type(module).__name__} ({len(missing)} tensors missing); reload the checkpoint")
    for owner, name, key, is_param, dtype, requires_grad in record.slots:
        tensor = source[_source_key(key)].to(dtype)
        if is_param:
            owner._parameters[name] = torch.nn.Parameter(tensor, requires_grad=requires_grad)
        else:
            owner._buffers[name] = tensor
    record.slots = []
    log.info("--fast: %s weights read back from the checkpoint in %.1f s", type(module).__name__,
             time.perf_counter() - started)
    return True


def drop_weights_again(module: Any) -> int:
    """Drop a module's weights again after an eager call read them back (OpenVINO serves the module again)."""
    record = getattr(module, _DROPPED_ATTR, None)
    if record is None or record.slots:
        return 0
    return drop_weights(module, record.read)


def _forget_dropped(module: Any) -> None:
    if getattr(module, _DROPPED_ATTR, None) is not None:
        delattr(module, _DROPPED_ATTR)


def _source_key(key: str) -> str:
    return key.replace(".base_layer.", ".")


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


# --------------------------------------------------------------------------------------------------------------
# CPU: the UNet and the VAE decoder through OpenVINO

OPENVINO_DIR = "openvino"  # under Settings.cache_dir: one IR (model.xml + weights .bin) per UNet and per decoder
OPENVINO_KEEP = 3  # IRs kept per kind (UNet, VAE decoder), most recently used first: an SD1.5 UNet's is 3.2 GiB
IR_FORMAT = 1  # bump when the traced graph changes (wrapper, inputs), so old IRs are not read
_EAGER_KWARGS = ("class_labels", "timestep_cond", "attention_mask", "cross_attention_kwargs", "added_cond_kwargs",
                 "down_block_additional_residuals", "mid_block_additional_residual",
                 "down_intrablock_additional_residuals", "encoder_attention_mask")
_RUNNER_ATTR = "_atelier_openvino"  # on the torch module: the runner installed on it


def openvino_blocker(unet: Any) -> str | None:
    """Why the OpenVINO path cannot serve ``unet`` (a note for the UI), or None when it can."""
    try:
        import openvino  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (missing shared library)
        return (f"--fast on CPU uses OpenVINO, which could not be imported ({type(exc).__name__}: {exc}); "
                "pip install openvino, or images run as in default mode")
    config = getattr(unet, "config", None)
    if unet is None or config is None or not hasattr(unet, "up_blocks"):
        return "--fast on CPU: this model has no diffusers UNet OpenVINO can take; running in default mode"
    if (getattr(config, "addition_embed_type", None) is not None or getattr(config, "class_embed_type", None)
            is not None or getattr(config, "encoder_hid_dim_type", None) is not None
            or not isinstance(getattr(config, "cross_attention_dim", None), int)):
        return ("--fast on CPU: OpenVINO serves SD1.x/SD2.x-style UNets only (this one needs extra conditioning "
                "inputs); running in default mode")
    if unet.dtype != torch.float32:
        return f"--fast on CPU: OpenVINO runs fp32 UNets (this one is {unet.dtype}); running in default mode"
    return None


def decoder_blocker(vae: Any) -> str | None:
    """Why the OpenVINO path cannot serve ``vae``'s decoder, or None when it can (an fp32 AutoencoderKL's)."""
    decoder = getattr(vae, "decoder", None)
    if decoder is None or getattr(vae, "config", None) is None or not hasattr(decoder, "up_blocks"):
        return "no AutoencoderKL decoder"
    if getattr(vae, "dtype", None) != torch.float32:
        return f"the VAE is {getattr(vae, 'dtype', None)}, not fp32"
    return None


def unet_fingerprint(unet: Any) -> str:
    """A key that changes with the UNet's weights, config, attention processors and the diffusers code traced."""
    processors = getattr(unet, "attn_processors", None)  # traced as they are: sliced attention is another graph
    names = sorted((k, type(v).__name__) for k, v in processors.items()) if isinstance(processors, dict) else []
    return _fingerprint(unet, dict(unet.config), names)


def decoder_fingerprint(decoder: Any, vae_config: Any) -> str:
    """The same for a VAE decoder (its VAE's config, its own weights and attention processors)."""
    names = [(name, type(m.processor).__name__) for name, m in decoder.named_modules() if hasattr(m, "processor")]
    return _fingerprint(decoder, dict(vae_config), names)


def _fingerprint(module: Any, config: dict[str, Any], processors: list[tuple[str, str]]) -> str:
    """Hashing all 3.4 GB of an SD1.5 UNet costs ~10 s on this CPU, so each tensor contributes its name, shape,
    dtype and 80 values spread over it: two different checkpoints (fine-tunes, merges) differ in practically every
    tensor."""
    import hashlib
    import json

    import diffusers

    digest = hashlib.sha256()
    digest.update(f"{IR_FORMAT}|{diffusers.__version__}|{type(module).__name__}|".encode())
    # Private keys stay out: diffusers' ``_use_default_values`` is a list made from a set, in a different order in
    # every process (string hashing is randomised), which made every restart convert again.
    public = {k: v for k, v in config.items() if not str(k).startswith("_")}
    digest.update(json.dumps(public, sort_keys=True, default=str).encode())
    if processors:
        digest.update("|".join(f"{k}={v}" for k, v in processors).encode())
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = torch.cat([flat[:: max(1, flat.numel() // 64)][:64], flat[-16:]]).float().contiguous()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:20]


class _TracedUNet(torch.nn.Module):
    """``unet(sample, t, text).sample`` with only tensors in and out: the graph OpenVINO converts."""

    def __init__(self, unet: Any):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # The class's forward, not the instance's: never trace a wrapper someone installed.
        return type(self.unet).forward(self.unet, sample, timestep, encoder_hidden_states=text, return_dict=False)[0]


class _TracedDecoder(torch.nn.Module):
    """``decoder(latents)``: the VAE decoder's graph (its class's forward, never an installed wrapper)."""

    def __init__(self, decoder: Any):
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return type(self.decoder).forward(self.decoder, latents)


def _convert(unet: Any) -> Any:
    """``ov.convert_model`` of the UNet, traced at 256x256 with CFG batch 2; input shapes stay dynamic."""
    factor = 2 ** int(getattr(unet, "num_upsamplers", 3))
    side = 4 * factor  # latent side a multiple of the up factor: the trace takes diffusers' common branch
    example = (torch.zeros(2, unet.config.in_channels, side, side), torch.tensor(999.0),
               torch.zeros(2, 77, unet.config.cross_attention_dim))
    return _trace(_TracedUNet(unet), unet, example)


def _convert_decoder(decoder: Any) -> Any:
    """``ov.convert_model`` of the VAE decoder, traced on one 32x32 latent; input shapes stay dynamic."""
    channels = decoder.conv_in.in_channels
    return _trace(_TracedDecoder(decoder), decoder, (torch.zeros(1, channels, 32, 32),))


def _trace(wrapper: torch.nn.Module, module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> Any:
    import openvino as ov

    training = module.training
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about diffusers' shape checks: they hold for every call
            return ov.convert_model(wrapper.eval(), example_input=example)
    finally:
        module.train(training)  # tracing needs eval mode; leave the module as it was


def _save_ir(model: Any, xml: Path) -> None:
    """Write the IR under a temporary name, then rename (.bin first): a crash never leaves a half IR behind."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(f".{xml.stem}.partial.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)  # fp16 weights would change the pixels
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    tmp.replace(xml)


def _compile_config() -> dict[str, Any]:
    """Exact (fp32 inference, never bf16/fp16), one request at a time, as many threads as torch uses on this (the
    worker) thread: the Settings' ``threads`` (``manager._apply_threads``), all physical cores by default. A change
    of the setting resets the idle entries, so that the next image compiles again with the new count."""
    return {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads())}


def _compiled_model(label: str, module: Any, xml: Path | None, convert: Any, notes: list[str],
                    drop: Callable[[], Any] | None = None) -> tuple[Any, float]:
    """The compiled OpenVINO model of ``module``: its cached IR at ``xml`` (or a conversion, then cached).

    ``drop`` (torch's weights out) runs before compiling when the IR was read from disk (it holds its own weights),
    after compiling when it was just converted (a converted model may share torch's tensors)."""
    import openvino as ov

    core = ov.Core()
    model = _read_cached_ir(core, label, xml, notes)
    converted = model is None
    if converted:
        restore_weights(module)  # tracing runs the torch module
        model = _convert_and_cache(label, module, convert, xml, notes)
    if xml is not None:
        _prune_ir_dir(xml)
    if drop is not None and not converted:
        drop()
    started = time.perf_counter()
    compiled = core.compile_model(model, "CPU", _compile_config())
    seconds = time.perf_counter() - started
    del model  # the compiled model holds its own (repacked) weights; drop the mapped/converted ones
    if drop is not None and converted:
        drop()
    return compiled, seconds


class _OpenVinoRunner:
    """Runs a torch module's plain calls through a compiled OpenVINO model; anything else runs eagerly.

    ``install()`` puts a ``forward`` on the module instance (as DeepCache does on the UNet), ``remove()`` takes it
    away again and frees the compiled model. One infer request, used under a lock.
    """

    def __init__(self, module: Any, compiled: Any, notes: list[str]):
        self.module = module
        self.notes = notes
        self.ov_calls = 0
        self.eager_calls = 0
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        # Training mode matters only through dropout (no batch norm in these models); the default p is 0.
        self._dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in module.modules())
        self._installed = False
        self._previous: Any = None
        self._logged: set[str] = set()

    def install(self) -> None:
        """Route ``module(...)`` through ``self``; what was there before (bound or instance forward) is kept.

        A runner left installed by a pipeline that was dropped without ``disable_fast`` is removed first, so two
        compiled copies never stack up on one module."""
        if self._installed:
            return
        stale = getattr(self.module, _RUNNER_ATTR, None)
        if stale is not None and stale is not self:
            stale.remove()
        self._previous = self.module.__dict__.get("forward")
        self._eager = self.module.forward
        self.module.forward = self._forward
        setattr(self.module, _RUNNER_ATTR, self)
        self._installed = True

    def remove(self) -> None:
        """Give the module its previous ``forward`` back and free the compiled model."""
        if not self._installed:
            return
        if self._previous is not None:
            self.module.forward = self._previous
        else:
            self.module.__dict__.pop("forward", None)
        if getattr(self.module, _RUNNER_ATTR, None) is self:
            delattr(self.module, _RUNNER_ATTR)
        self._installed = False
        self._request = self._compiled = None

    def _eager_call(self, reason: str, *args: Any, **kwargs: Any) -> Any:
        if reason not in self._logged:
            self._logged.add(reason)
            log.info("--fast: %s call runs eagerly: %s", type(self.module).__name__, reason)
        self.eager_calls += 1
        restore_weights(self.module)  # dropped while OpenVINO served it: torch needs them whole now
        return self._eager(*args, **kwargs)

    def _common_reason(self, tensors: tuple[Any, ...]) -> str | None:
        """Reasons shared by every module: released model, non-fp32/CPU inputs, gradients, training, hooks."""
        if self._compiled is None:
            return "the OpenVINO model was released"
        if not all(torch.is_tensor(t) and t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
            return "inputs that are not fp32 CPU tensors"
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return "gradients are needed"
        if self.module.training and self._dropout:
            return "the module is in training mode with dropout"
        if any(m._forward_hooks or m._forward_pre_hooks for m in self.module.modules() if m is not self.module):
            return "hooks on its layers (DeepCache)"
        return None

    def _infer(self, *arrays: Any) -> torch.Tensor:
        drop_weights_again(self.module)  # read back for an eager call before: OpenVINO serves this one
        with self._lock:  # one infer request; the manager runs one job at a time, this is a guard
            self._request.infer(list(arrays), share_inputs=True)
            # The request reuses its output buffer on the next call: copy out.
            return torch.from_numpy(self._request.get_output_tensor(0).data.copy())


class OpenVinoUNet(_OpenVinoRunner):
    """The UNet through OpenVINO. Eager fallbacks (same pixels, just not faster): extra conditioning kwargs
    (ControlNet residuals, attention masks, cross-attention kwargs, ...), a latent side that is not a multiple of
    the UNet's up factor (diffusers takes another branch there), per-sample timesteps, gradients, non-fp32 tensors,
    hooks on UNet submodules (DeepCache keeps deep features through one) and changed attention processors (token
    merging)."""

    def __init__(self, unet: Any, compiled: Any, notes: list[str]):
        super().__init__(unet, compiled, notes)
        self._factor = 2 ** int(getattr(unet, "num_upsamplers", 3))
        self._processors = self._current_processors()

    @property
    def unet(self) -> Any:
        return self.module

    @classmethod
    def build(cls, unet: Any, ir_dir: Path | None, drop: Callable[[], Any] | None = None) -> OpenVinoUNet:
        """Read the UNet's cached IR from ``ir_dir`` (or convert it, then cache it there) and compile it; ``drop``
        takes torch's weights out on the way (``_compiled_model``)."""
        xml = None if ir_dir is None else ir_dir / f"unet-{unet_fingerprint(unet)}.xml"
        notes: list[str] = []
        # A lambda, not ``_convert`` itself: the name is looked up at call time, so tests can monkeypatch it.
        compiled, seconds = _compiled_model("UNet", unet, xml, lambda module: _convert(module), notes, drop)
        notes.append(f"--fast on CPU: UNet runs through OpenVINO (exact fp32; compiled in {seconds:.0f} s). It keeps "
                     f"its own copy of the UNet weights (+{_weights_gib(unet):.1f} GiB RAM); "
                     "DeepCache, token merging and ControlNet calls use the torch copy")
        return cls(unet, compiled, notes)

    def _forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any,
                 **kwargs: Any) -> Any:
        reason = self.eager_reason(sample, timestep, encoder_hidden_states, args, kwargs)
        if reason is not None:
            return self._eager_call(reason, sample, timestep, encoder_hidden_states, *args, **kwargs)
        out = self._infer(sample.detach().contiguous().numpy(), _np_scalar(_scalar_timestep(timestep)),
                          encoder_hidden_states.detach().contiguous().numpy())
        self.ov_calls += 1
        if kwargs.get("return_dict", True):
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def eager_reason(self, sample: Any, timestep: Any, text: Any, args: tuple, kwargs: dict) -> str | None:
        """Why this call cannot go through OpenVINO, or None when it can."""
        if args or any(kwargs.get(name) is not None for name in _EAGER_KWARGS):
            return "extra conditioning inputs (ControlNet, masks, cross-attention kwargs)"
        reason = self._common_reason((sample, text))
        if reason is not None:
            return reason
        if sample.dim() != 4 or text.dim() != 3:
            return "inputs that are not of the usual shapes"
        if sample.shape[-1] % self._factor or sample.shape[-2] % self._factor:
            return f"a latent size not divisible by {self._factor} (image side not a multiple of {8 * self._factor})"
        if _scalar_timestep(timestep) is None:
            return "per-sample timesteps"
        if self._current_processors() != self._processors:
            return "attention processors changed (token merging)"
        return None

    def _current_processors(self) -> tuple[int, ...]:
        procs = getattr(self.module, "attn_processors", None)
        return tuple(id(p) for p in procs.values()) if isinstance(procs, dict) else ()


class OpenVinoDecoder(_OpenVinoRunner):
    """The VAE decoder through OpenVINO (any latent size: tiled decodes send tiles of their own size). Eager
    fallbacks: ``latent_embeds`` (spatially conditioned decoders), gradients, non-fp32 tensors, hooks."""

    @classmethod
    def build(cls, decoder: Any, vae_config: Any, ir_dir: Path | None,
              drop: Callable[[], Any] | None = None) -> OpenVinoDecoder:
        xml = None if ir_dir is None else ir_dir / f"vae-decoder-{decoder_fingerprint(decoder, vae_config)}.xml"
        notes: list[str] = []
        # As in OpenVinoUNet.build: looked up at call time, for the tests' monkeypatch.
        compiled, seconds = _compiled_model("VAE decoder", decoder, xml, lambda module: _convert_decoder(module),
                                            notes, drop)
        notes.append(f"--fast on CPU: VAE decoder runs through OpenVINO too (exact fp32; compiled in {seconds:.0f} s, "
                     f"+{_weights_gib(decoder):.1f} GiB RAM)")
        return cls(decoder, compiled, notes)

    def _forward(self, sample: torch.Tensor, latent_embeds: Any = None, *args: Any, **kwargs: Any) -> Any:
        if latent_embeds is not None or args or kwargs:
            reason: str | None = "extra decoder inputs (latent_embeds)"
        else:
            reason = self._common_reason((sample,))
            if reason is None and sample.dim() != 4:
                reason = "latents that are not 4-D"
        if reason is not None:
            return self._eager_call(reason, sample, latent_embeds, *args, **kwargs)
        out = self._infer(sample.detach().contiguous().numpy())
        self.ov_calls += 1
        return out


def _np_scalar(value: float) -> Any:
    import numpy as np

    return np.asarray(value, dtype=np.float32)


def _scalar_timestep(timestep: Any) -> float | None:
    """The one timestep of a call as a float, or None when samples carry different timesteps."""
    if isinstance(timestep, (int, float)):
        return float(timestep)
    if not torch.is_tensor(timestep) or timestep.numel() == 0:
        return None
    flat = timestep.detach().reshape(-1)
    if flat.numel() > 1 and not bool((flat == flat[0]).all()):
        return None
    return float(flat[0])


def _read_cached_ir(core: Any, label: str, xml: Path | None, notes: list[str]) -> Any | None:
    """The IR a previous run saved for this module, or None (no cache, none yet, or unreadable)."""
    if xml is None or not (xml.exists() and xml.with_suffix(".bin").exists()):
        return None
    try:
        model = core.read_model(str(xml))  # weights are memory-mapped, not read
    except Exception as exc:  # truncated, or written by an incompatible OpenVINO: convert again
        log.warning("--fast: cached OpenVINO IR %s unreadable (%s); converting again", xml, exc)
        return None
    notes.append(f"--fast on CPU: OpenVINO {label} loaded from the cache ({xml.name}), no conversion")
    return model


def _convert_and_cache(label: str, module: Any, convert: Any, xml: Path | None, notes: list[str]) -> Any:
    """Convert ``module`` (the one-off cost) and save the IR to ``xml`` when there is a cache; returns the model."""
    log.info("--fast: converting the %s with OpenVINO (one-off per checkpoint; ~2-3 min for an SD1.5 UNet on 2 "
             "cores)...", label)
    started = time.perf_counter()
    model = convert(module)
    notes.append(f"--fast on CPU: {label} converted to OpenVINO in {time.perf_counter() - started:.0f} s (one-off)")
    if xml is None:
        return model
    try:
        _save_ir(model, xml)
    except OSError as exc:  # disk full, read-only cache: fast now, converted again on the next start
        log.warning("--fast: could not cache the OpenVINO %s in %s: %s", label, xml.parent, exc)
        notes.append(f"--fast on CPU: could not save the converted {label} to {xml.parent} "
                     f"({exc.strerror or exc}); it will be converted again on the next start")
    return model


def _prune_ir_dir(current: Path) -> None:
    """Mark ``current`` as just used and delete all but the ``OPENVINO_KEEP`` most recently used IRs of its kind
    (a user who tries many checkpoints with --fast would otherwise collect 3+ GiB per checkpoint)."""
    kind = current.name.rsplit("-", 1)[0]  # "unet" or "vae-decoder"
    try:
        if current.exists():
            os.utime(current)
        models = sorted(current.parent.glob(f"{kind}-*.xml"), key=lambda p: p.stat().st_mtime, reverse=True)
        for xml in models[OPENVINO_KEEP:]:
            if xml != current:
                xml.unlink(missing_ok=True)
                xml.with_suffix(".bin").unlink(missing_ok=True)
                log.info("--fast: removed the least recently used OpenVINO IR %s", xml.name)
    except OSError as exc:  # a read-only or vanished cache: nothing to tidy
        log.warning("--fast: could not tidy %s: %s", current.parent, exc)


def _weights_gib(module: Any) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**30
