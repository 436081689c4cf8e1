"""Atelier vs plain diffusers, in one process and one run: prints one JSON line per (family, size, mode).

    .venv/bin/python bench/run.py --tiny                      # CI-sized: tiny models, 64 px, 4 steps (~1 min)
    .venv/bin/python bench/run.py --sizes 256,512 --steps 20  # the full CPU table (see bench/README.md)
    .venv/bin/python bench/run.py --sizes 256,512 --via api --interleave  # through the API, drift-corrected

Modes: ``diffusers`` (plain ``StableDiffusionPipeline.from_single_file`` on the same file: fp32, SDPA, the
``--sampler``'s diffusers scheduler, the same seed), ``diffusers+lora`` (the same with the bench LoRA through
diffusers' own ``load_lora_weights``/``set_adapters``) and Atelier's manager (``PipelineManager.run``, the path every
front door takes) in ``default``, ``fast`` (Settings ``fast``), ``deep_cache``, ``token_merging``,
``deep_cache+token_merging``, ``prompt150``, ``lora``, ``taesd`` (the final decode by TAESD: request ``fast_decode``),
``fast+taesd``, ``fast+lora``.

Few-step lines (issue 28): ``--sampler LCM --steps 4 --cfg 1`` (plain diffusers: ``LCMScheduler``), a Turbo-shaped
one ``--families sd2 --sampler "Euler a" --schedule "SGM Uniform" --steps 1 --cfg 1`` (trailing timesteps). A random
TAESD (real taesd shapes) is installed in ``models/VAE-approx/`` only while the ``taesd`` modes run: with it there,
every Atelier image previews through it, which the other modes must not pay for.

The model is SD1.5-shaped with random weights (shapes decide speed; no hub), built once from the bundled
diffusers configs, written as an original-layout single file (``pipelines/convert.py``) and cached under
``--work-dir``; Atelier loads it through its own registry and loaders. ``--tiny`` uses the tiny test model.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download anything

def mode_kind(mode: str) -> str:
    """A mode name without its ``@value`` parts: ``deep_cache@4+token_merging`` → ``deep_cache+token_merging``."""
    return "+".join(part.partition("@")[0] for part in mode.split("+"))


ALL_MODES = ("diffusers", "diffusers+lora", "default", "fast", "deep_cache", "token_merging",
             "deep_cache+token_merging", "prompt150", "lora", "taesd", "fast+taesd", "fast+lora")
DEEP_CACHE_INTERVAL = 3  # --deep-cache-interval
TOKEN_MERGING_RATIO = 0.5  # --token-merging
# modes that need their own manager (different Settings); modes with the same Settings share one
ATELIER_SETTINGS_MODES = {"fast": {"fast": True}, "fast+taesd": {"fast": True}, "fast+lora": {"fast": True}}
PLAIN_MODES = ("diffusers", "diffusers+lora")  # plain diffusers, not Atelier
FAMILIES = ("sd15", "sd2")
SAMPLER = "Euler"  # --sampler: an A1111 label Atelier knows, with a plain-diffusers scheduler below
SCHEDULE = "Automatic"  # --schedule: Atelier's schedule type; "SGM Uniform" is diffusers' trailing spacing
PLAIN_SCHEDULERS = {"Euler": "EulerDiscreteScheduler", "Euler a": "EulerAncestralDiscreteScheduler",
                    "LCM": "LCMScheduler", "TCD": "TCDScheduler", "DDIM": "DDIMScheduler"}
PLAIN_CALL_KWARGS = {"TCD": {"eta": 0.3}}  # what Atelier's sampler table passes to the call (TCD's gamma)
PROMPT = "a watercolor painting of a lighthouse at dusk, soft light"
NEGATIVE = "blurry"
# prompt150: a pasted-from-a-model-page prompt, weighted, edited and two chunks long (~150 CLIP tokens)
PROMPT150 = ("(masterpiece:1.2), (best quality:1.1), a watercolor painting of a (lighthouse:1.3) at dusk, "
             "[soft light:golden hour light:0.4], (crashing waves:0.9), rocky shore, seagulls, ((dramatic clouds)), "
             "[fog], wet sand, reflections, distant sailboat, warm window glow, BREAK "
             "highly detailed, intricate brushwork, paper texture, (vivid colors:1.15), muted shadows, cinematic "
             "composition, rule of thirds, wide angle, (volumetric light:0.8), atmospheric perspective, "
             "by a famous painter, trending, award winning, sharp focus, 8k, depth of field, bokeh, "
             "(film grain:0.6), high contrast, [[vignette]], soft edges, calm mood")
LORA_NAME = "bench-lora"
LORA_WEIGHT = 0.8
LORA_TAG = f" <lora:{LORA_NAME}:{LORA_WEIGHT}>"
LORA_RANK = 16
FIRST_TIMED = ("lora", "fast+lora")  # modes whose first image is timed too (the LoRA's first load)


def mode_prompt(mode: str) -> str:
    """The prompt a mode sends: the bench prompt, the 150-token weighted one, or the prompt with the LoRA tag."""
    parts = mode_kind(mode).split("+")
    if "prompt150" in parts:
        return PROMPT150
    if "lora" in parts:
        return PROMPT + LORA_TAG
    return PROMPT


def mode_uses(mode: str, part: str) -> bool:
    """Whether ``mode`` has ``part`` (``taesd``, ``lora``, ``fast``) among its ``+`` parts."""
    return part in mode_kind(mode).split("+")
SEED = 1234
# the SD 2 one is 512-base (epsilon), as SD-Turbo: its name says so (registry.sd2_prediction)
CHECKPOINT_NAME = {"sd15": "bench-sd15", "sd2": "bench-sd2-turbo-512", "tiny": "bench-tiny-sd15"}


# --- measuring ------------------------------------------------------------------------------------------------
class RssSampler:
    """Peak resident memory of this process within a window, sampled every ``interval`` seconds.

    ``ru_maxrss`` only grows over the life of the process, so per-mode peaks are sampled from /proc instead.
    """

    def __init__(self, interval: float = 0.02, pid: int | str = "self"):
        self.interval = interval
        self.pid = pid
        self.peak = 0
        self.start = 0  # resident bytes when the window opened (what earlier modes left behind)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> int:
        """Resident bytes now (Linux /proc; falls back to ru_maxrss elsewhere)."""
        try:
            pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> RssSampler:
        self.start = self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.current())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.current())


@dataclass
class StepClock:
    """When the denoising steps finished (from the step callback, or from polled progress)."""

    last_step: int = 0  # steps done at the last tick
    last_time: float | None = None

    def tick(self, done: int) -> None:
        """``done`` steps have finished (a poll may skip steps: the count, not the ticks, is what counts)."""
        if done > self.last_step:
            self.last_step, self.last_time = done, time.perf_counter()

    def seconds_per_step(self, start: float) -> float | None:
        """Mean seconds per step: from the call's start to the last step seen, over the steps done by then."""
        if self.last_time is None:
            return None
        return (self.last_time - start) / self.last_step


@dataclass
class Measurement:
    """One mode at one size."""

    mode: str
    image: Any = None  # PIL image of the timed (cached) run
    image_s: float | None = None
    cpu_s: float | None = None  # CPU seconds (all threads) of the timed image
    first_image_s: float | None = None  # start_s + load_s + the first image
    start_s: float | None = None  # process start and imports (API runs: both sides start a process)
    load_s: float | None = None
    s_per_it: float | None = None
    peak_rss: int = 0
    start_rss: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def pixel_difference(a: Any, b: Any) -> tuple[int | None, float | None]:
    """Max absolute 8-bit pixel difference and PSNR (dB; inf when identical) between two PIL images."""
    import numpy as np

    if a is None or b is None:
        return None, None
    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return None, None
    diff = np.abs(x - y)
    mse = float((diff.astype(np.float64) ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return int(diff.max()), psnr


# --- the model file -------------------------------------------------------------------------------------------
def build_components(family: str, tiny: bool) -> dict[str, Any]:
    """Random-weight diffusers components with the real shapes of ``family`` (or the tiny test model)."""
    import torch

    from pipelines.tiny import tiny_sd15_components

    if tiny:
        return tiny_sd15_components(seed=0)
    if family not in FAMILIES:
        raise SystemExit(f"bench: family {family!r} is not built on CPU yet (only {', '.join(FAMILIES)})")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config_dir = REPO_ROOT / "pipelines" / "configs" / family
    torch.manual_seed(0)
    with torch.no_grad():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        text_config = CLIPTextConfig.from_pretrained(config_dir / "text_encoder")
        text_encoder = CLIPTextModel(text_config)
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval()}


def write_config_folder(components: dict[str, Any], folder: Path) -> None:
    """A diffusers config folder (JSON only) describing ``components``: what plain diffusers needs for tiny."""
    from pipelines.tiny import SD15_SCHEDULER_CONFIG

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae"):
        components[name].save_config(folder / name)
    (folder / "text_encoder").mkdir(exist_ok=True)
    components["text_encoder"].config.to_json_file(folder / "text_encoder" / "config.json")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG, indent=2))
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))


@dataclass
class BenchModel:
    """The checkpoint file under test, the models folder that holds it, and the config folder for diffusers."""

    name: str
    path: Path
    models_dir: Path
    config_dir: Path
    family: str = "sd15"


def ensure_checkpoint(family: str, tiny: bool, work_dir: Path, log: Callable[[str], None]) -> BenchModel:
    """Build the random-weight single file once (original layout, safetensors) and reuse it afterwards."""
    from safetensors.torch import save_file

    from pipelines.convert import pipeline_to_original

    name = CHECKPOINT_NAME["tiny" if tiny else family]
    models_dir = work_dir / "models"
    path = models_dir / "checkpoints" / f"{name}.safetensors"
    # The tiny model's configs go in a sidecar folder, which Atelier's loader reads first and plain diffusers
    # gets as ``config=``; the full-size one uses the bundled configs of its family, as a real file would.
    config_dir = path.with_name(f"{name}.config") if tiny else REPO_ROOT / "pipelines" / "configs" / family
    if path.exists() and (not tiny or (config_dir / "model_index.json").exists()):
        return BenchModel(name, path, models_dir, config_dir, family)
    log(f"building {name} (random weights, original layout) -> {path}")
    started = time.perf_counter()
    components = build_components(family, tiny)
    state_dict = pipeline_to_original(components)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(state_dict, str(partial), metadata={"format": "pt"})
    partial.replace(path)  # a killed build never leaves a half file under the real name
    if tiny:
        write_config_folder(components, config_dir)
    del components, state_dict
    gc.collect()
    log(f"built {name} in {time.perf_counter() - started:.1f} s")
    return BenchModel(name, path, models_dir, config_dir, family)


def ensure_lora(model: BenchModel, tiny: bool, log: Callable[[str], None]) -> Path:
    """A kohya-format LoRA (``lora_unet_…``/``lora_te_…``, rank 16, every attention and MLP linear of the UNet's
    transformer blocks and of the text encoder) for the bench model's shapes, random weights, built once."""
    import torch
    from safetensors.torch import save_file

    target = model.models_dir / "loras" / f"{LORA_NAME}.safetensors"
    if target.exists():
        return target
    log(f"building {target.name} (kohya layout, rank {LORA_RANK})")
    with torch.device("meta"):
        components = build_components("sd15", tiny)  # shapes only: the weights never exist
    generator = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {}

    def add(prefix: str, name: str, module: torch.nn.Linear) -> None:
        key = prefix + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.randn(LORA_RANK, module.in_features, generator=generator) * 0.01
        tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, LORA_RANK, generator=generator) * 0.01
        tensors[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))

    for name, module in components["unet"].named_modules():
        if isinstance(module, torch.nn.Linear) and "transformer_blocks" in name:
            add("lora_unet_", name, module)
    for name, module in components["text_encoder"].named_modules():
        if isinstance(module, torch.nn.Linear) and ("self_attn" in name or "mlp" in name):
            add("lora_te_text_model_", name.removeprefix("text_model."), module)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata={"ss_network_dim": str(LORA_RANK)})
    return target


# --- plain diffusers ------------------------------------------------------------------------------------------
def plain_scheduler(config: Any) -> Any:
    """The ``--sampler``'s diffusers scheduler over the checkpoint's config, as a plain script would make it
    (``--schedule "SGM Uniform"``: ``timestep_spacing="trailing"``)."""
    import diffusers

    if SAMPLER not in PLAIN_SCHEDULERS:
        raise SystemExit(f"bench: --sampler {SAMPLER!r} has no plain-diffusers twin here; use one of "
                         f"{', '.join(PLAIN_SCHEDULERS)}")
    extra = {"timestep_spacing": "trailing"} if SCHEDULE == "SGM Uniform" else {}
    return getattr(diffusers, PLAIN_SCHEDULERS[SAMPLER]).from_config(config, **extra)


def run_plain_diffusers(model: BenchModel, size: int, steps: int, cfg: float, repeats: int,
                        keep: dict[str, Any] | None = None, start_s: float = 0.0,
                        lora: Path | None = None) -> Measurement:
    """``from_single_file`` (fp32, SDPA, the ``--sampler``'s scheduler) and two images: the first includes the
    checkpoint load (and ``start_s``, a script's start and imports, when Atelier's figure includes its server's start).
    ``lora``: the bench LoRA loaded the diffusers way (``load_lora_weights``, ``set_adapters`` at the tag's weight),
    its load counted in the first image.

    With ``keep`` (``--interleave``) the pipeline stays loaded: ``keep["generate"]`` times one more cached image.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    from pipelines.tokenizers import OPENCLIP_PAD, clip_tokenizer

    m = Measurement("diffusers+lora" if lora is not None else "diffusers", start_s=start_s or None)
    with RssSampler() as rss:
        started = time.perf_counter()
        tokenizer = clip_tokenizer(OPENCLIP_PAD) if model.family == "sd2" else clip_tokenizer()
        pipe = StableDiffusionPipeline.from_single_file(
            str(model.path), config=str(model.config_dir), local_files_only=True, torch_dtype=torch.float32,
            tokenizer=tokenizer, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.scheduler = plain_scheduler(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        m.load_s = time.perf_counter() - started
        lora_s = 0.0
        if lora is not None:
            lora_started = time.perf_counter()
            pipe.load_lora_weights(str(lora), adapter_name="bench")
            pipe.set_adapters(["bench"], [{"unet": LORA_WEIGHT, "text_encoder": LORA_WEIGHT}])
            lora_s = time.perf_counter() - lora_started

        def generate() -> tuple[Any, float, float | None]:
            clock = StepClock()

            def on_step(_pipe: Any, step: int, _t: Any, kwargs: dict) -> dict:
                clock.tick(step + 1)  # diffusers passes the step's index
                return kwargs

            t0 = time.perf_counter()
            image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=cfg,
                         height=size, width=size, generator=torch.Generator("cpu").manual_seed(SEED),
                         callback_on_step_end=on_step, **PLAIN_CALL_KWARGS.get(SAMPLER, {})).images[0]
            return image, time.perf_counter() - t0, clock.seconds_per_step(t0)

        _, first, _ = generate()
        m.first_image_s = start_s + m.load_s + lora_s + first
        m.image, m.image_s, m.s_per_it = _best_of(generate, repeats, m)
    m.peak_rss, m.start_rss = rss.peak, rss.start
    if keep is not None:
        keep["generate"] = generate
        return m
    pipe = None  # noqa: F841 - drop the weights before the next mode loads its own
    gc.collect()
    return m


def script_start_s() -> float:
    """Seconds a plain-diffusers script takes to start: a fresh interpreter importing torch and diffusers' pipeline
    (what Atelier's server start also pays, before its own imports). Best of two, so the disk cache is warm."""
    import subprocess

    code = "import torch, diffusers; from diffusers import StableDiffusionPipeline, EulerDiscreteScheduler"
    times = []
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, capture_output=True)
        times.append(time.perf_counter() - started)
    return min(times)


def plain_twin(generate: Callable[[], tuple[Any, float, float | None]], repeats: int = 1) -> Measurement:
    """More cached plain-diffusers images (``--interleave``; as many as the mode's, fastest kept): the base for the
    Atelier mode timed just before."""
    m = Measurement("diffusers")
    m.image, m.image_s, m.s_per_it = _best_of(generate, repeats, m)
    return m


def in_worker_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread, as Atelier's manager runs every job in its worker thread.

    On a busy 2-core machine, small ops on the main thread were measured 10-60x slower than the same ops on a
    worker thread (OpenMP spin-waits losing the core to other processes); running both sides the same way keeps
    the comparison about the code path, not the thread it happens to run on.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="bench-diffusers")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def process_cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    if pid == "self":
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _best_of(generate: Callable[[], tuple[Any, float, float | None]], repeats: int, m: Measurement,
             pid: int | str = "self") -> tuple[Any, float, Any]:
    """The fastest of ``repeats`` cached runs (the machine's noise only ever adds time); sets ``m.cpu_s``.

    CPU seconds are kept beside wall seconds because they hold up far better when other processes share the
    cores: a contended run waits longer but does about the same work.
    """
    best = None
    for _ in range(max(1, repeats)):
        cpu0 = process_cpu_seconds(pid)
        run = generate()
        cpu = process_cpu_seconds(pid) - cpu0
        if best is None or run[1] < best[1]:
            best = run
            m.cpu_s = cpu
    return best


# --- Atelier --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atelier_manager(model: BenchModel, work_dir: Path, settings_changes: dict[str, Any]) -> Iterator[Any]:
    """A ``PipelineManager`` over the bench's models folder, on CPU in fp32 (as app.py builds it)."""
    from pipelines.manager import PipelineManager
    from pipelines.registry import ModelRegistry
    from pipelines.settings import Settings

    settings = Settings(models_dir=model.models_dir, outputs_dir=work_dir / "outputs", cache_dir=work_dir / "cache",
                        device="cpu", precision="fp32", checkpoint=model.name)
    settings.update(settings_changes, respect_cli=False)
    registry = ModelRegistry(model.models_dir, work_dir / "cache")
    registry.refresh()
    manager = PipelineManager(settings, registry)
    manager.start()
    try:
        yield manager
    finally:
        manager.close()
        del manager, registry
        gc.collect()


def speedup_switches(mode: str) -> tuple[int | None, float]:
    """(DeepCache interval or None, ToMe ratio) of a mode name: ``deep_cache``, ``deep_cache@4+token_merging@0.3``."""
    interval, ratio = None, 0.0
    for part in mode.split("+"):
        name, _, value = part.partition("@")
        if name == "deep_cache":
            interval = int(value) if value else DEEP_CACHE_INTERVAL
        elif name == "token_merging":
            ratio = float(value) if value else TOKEN_MERGING_RATIO
    return interval, ratio


def atelier_request(model: BenchModel, size: int, steps: int, cfg: float, mode: str) -> Any:
    """The GenerationRequest a user would send for ``mode`` (speed-up switches from the mode's name)."""
    from pipelines.request import GenerationRequest

    interval, ratio = speedup_switches(mode)
    return GenerationRequest.create(
        prompt=mode_prompt(mode), negative_prompt=NEGATIVE, sampler=SAMPLER, scheduler=SCHEDULE, steps=steps,
        cfg_scale=cfg, width=size, height=size, seed=SEED, checkpoint=model.name, deep_cache=interval is not None,
        deep_cache_interval=interval, token_merging=ratio, fast_decode=mode_uses(mode, "taesd"),
    )


def run_atelier_mode(manager: Any, model: BenchModel, size: int, steps: int, cfg: float, mode: str,
                     repeats: int, first: bool) -> Measurement:
    """One mode through ``manager.run``; when ``first``, the first call (checkpoint load included) is timed too."""
    m = Measurement(mode)
    request = atelier_request(model, size, steps, cfg, mode)

    def generate() -> tuple[Any, float, float | None]:
        clock = StepClock()

        def on_progress(event: Any) -> None:
            if event.state == "running" and event.step > 0:
                clock.tick(event.step)

        t0 = time.perf_counter()
        result = manager.run(request, on_progress=on_progress)
        elapsed = time.perf_counter() - t0
        for note in result.notes:
            if note not in m.notes:
                m.notes.append(note)
        return result.images[0], elapsed, clock.seconds_per_step(t0)

    with RssSampler() as rss:
        if first:
            _, m.first_image_s, _ = generate()
        m.image, m.image_s, m.s_per_it = _best_of(generate, repeats, m)
    m.peak_rss, m.start_rss = rss.peak, rss.start
    return m


# --- Atelier through its REST API (the path a user's client takes) ---------------------------------------------
class AtelierServer:
    """``app.py`` started as a user would, on a free port, with the bench's models folder; stopped on exit."""

    def __init__(self, model: BenchModel, work_dir: Path, fast: bool, log: Callable[[str], None],
                 start_timeout: float = 600.0):
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, str(REPO_ROOT / "app.py"), "--port", str(port), "--no-browser",
                   "--models-dir", str(model.models_dir), "--outputs-dir", str(work_dir / "outputs"),
                   "--settings-file", str(work_dir / "settings.json"), "--cache-dir", str(work_dir / "cache"),
                   "--device", "cpu", "--precision", "fp32", "--checkpoint", model.name]
        if fast:
            command.append("--fast")
        log(" ".join(command[1:]))
        started = time.perf_counter()
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.url: str | None = None
        self.output: list[str] = []
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(start_timeout) or self.url is None:
            self.stop()
            raise RuntimeError("app.py did not start: " + " | ".join(self.output[-5:]))
        self.start_s = time.perf_counter() - started  # launch until the URL is printed

    def _read(self, ready: threading.Event) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip())
            if self.url is None and line.startswith("Running on local URL: "):
                self.url = line.split(": ", 1)[1].strip().rstrip("/")
                ready.set()
        ready.set()  # the process ended

    def post(self, route: str, body: dict[str, Any], timeout: float = 3600.0) -> dict[str, Any]:
        import urllib.request

        request = urllib.request.Request(f"{self.url}{route}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def get(self, route: str, timeout: float = 10.0) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}{route}", timeout=timeout) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()
                self.proc.wait()


POLL_S = 0.5  # /sdapi/v1/progress polling period of the API modes


def api_body(size: int, steps: int, cfg: float, mode: str) -> dict[str, Any]:
    """An A1111-style txt2img body; the speed-up switches go in ``override_settings`` (A1111's ToMe key)."""
    interval, ratio = speedup_switches(mode)
    overrides: dict[str, Any] = {}  # default mode sends none, as a user's client would
    if interval is not None:
        overrides.update(deep_cache=True, deep_cache_interval=interval)
    if ratio > 0:
        overrides["token_merging_ratio"] = ratio
    if mode_uses(mode, "taesd"):
        overrides["fast_decode"] = True
    return {"prompt": mode_prompt(mode), "negative_prompt": NEGATIVE, "sampler_name": SAMPLER, "scheduler": SCHEDULE,
            "steps": steps, "cfg_scale": cfg, "width": size, "height": size, "seed": SEED,
            "override_settings": overrides}


def run_api_mode(server: AtelierServer, size: int, steps: int, cfg: float, mode: str, repeats: int,
                 first: bool) -> Measurement:
    """One mode through ``POST /sdapi/v1/txt2img``; steps timed by polling ``/sdapi/v1/progress``."""
    import base64
    import io

    from PIL import Image

    m = Measurement(mode)
    body = api_body(size, steps, cfg, mode)

    def generate() -> tuple[Any, float, float | None]:
        clock = StepClock()
        done = threading.Event()

        def poll() -> None:
            # Twice a second, as a web client polls; 20 Hz polling cost the server ~5 % of a 2-core CPU.
            while not done.wait(POLL_S):
                try:
                    step = int(server.get("/sdapi/v1/progress?skip_current_image=true")["state"]["sampling_step"])
                except Exception:
                    continue
                if step > 0:
                    clock.tick(step)

        poller = threading.Thread(target=poll, daemon=True)
        t0 = time.perf_counter()
        poller.start()
        try:
            answer = server.post("/sdapi/v1/txt2img", body)
        finally:
            done.set()
            poller.join()
        elapsed = time.perf_counter() - t0
        info = json.loads(answer.get("info") or "{}")
        infotext = (info.get("infotexts") or [""])[0]
        m.notes = [line for line in _speedup_words(mode) if line not in infotext]
        m.notes = [f"not applied through the API: {word}" for word in m.notes]
        image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
        image.load()
        return image, elapsed, clock.seconds_per_step(t0)

    with RssSampler(pid=server.proc.pid) as rss:
        if first:
            # Launch until the URL is printed; the --checkpoint load runs meanwhile and the first request waits
            # for the rest of it.
            m.start_s = server.start_s
            _, first_s, _ = generate()
            m.first_image_s = server.start_s + first_s
        m.image, m.image_s, m.s_per_it = _best_of(generate, repeats, m, pid=server.proc.pid)
    m.peak_rss, m.start_rss = rss.peak, rss.start
    return m


def _speedup_words(mode: str) -> list[str]:
    """What the infotext must mention when ``mode``'s speed-ups were applied."""
    interval, ratio = speedup_switches(mode)
    return [word for on, word in ((interval is not None, "DeepCache"), (ratio > 0, "Token merging ratio"),
                                  (mode_uses(mode, "taesd"), "VAE: taesd")) if on]


# --- the run --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="sd15", help="comma-separated; CPU: sd15 (default: sd15)")
    parser.add_argument("--sizes", default="256,512", help="comma-separated square sizes in px (default: 256,512)")
    parser.add_argument("--modes", default=",".join(ALL_MODES),
                        help=f"comma-separated, from: {', '.join(ALL_MODES)} (default: all); a speed-up may "
                             "carry its setting: deep_cache@4, token_merging@0.3")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    parser.add_argument("--sampler", default="Euler",
                        help=f"Atelier's sampler; plain diffusers runs its scheduler ({', '.join(PLAIN_SCHEDULERS)}; "
                             "default: Euler)")
    parser.add_argument("--schedule", default="Automatic",
                        help="Atelier's schedule type: Automatic (default) or SGM Uniform (diffusers' trailing "
                             "timesteps, for both sides)")
    parser.add_argument("--cfg", type=float, default=7.0, help="CFG scale (default: 7)")
    parser.add_argument("--deep-cache-interval", type=int, default=3,
                        help="DeepCache interval of the deep_cache modes: every n-th step runs the whole UNet "
                             "(default: 3, Atelier's default)")
    parser.add_argument("--token-merging", type=float, default=0.5,
                        help="token merging ratio of the token_merging modes (default: 0.5)")
    parser.add_argument("--repeats", type=int, default=1, help="cached runs per mode, fastest kept (default: 1)")
    parser.add_argument("--interleave", action="store_true",
                        help="keep plain diffusers loaded and time one more of its images right after each Atelier "
                             "mode; that mode's time ratios are to this adjacent image (a shared machine's speed "
                             "drifts over a long run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--via", choices=("manager", "api"), default="manager",
                        help="Atelier modes through PipelineManager.run in this process (default), or through "
                             "POST /sdapi/v1/txt2img to app.py started by the bench")
    parser.add_argument("--tiny", action="store_true",
                        help="CI-sized: the tiny test model, 64 px, 4 steps unless --sizes/--steps are given")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the model file, outputs and caches go (default: .cache/bench; --tiny: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    given = set(argv if argv is not None else sys.argv[1:])
    if args.tiny:
        if not any(a.startswith("--sizes") for a in given):
            args.sizes = "64"
        if not any(a.startswith("--steps") for a in given):
            args.steps = 4
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if mode_kind(m) not in ALL_MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(ALL_MODES)}")
    if args.sampler not in PLAIN_SCHEDULERS:
        parser.error(f"--sampler must be one of {', '.join(PLAIN_SCHEDULERS)} (got {args.sampler!r})")
    if args.schedule not in ("Automatic", "SGM Uniform"):
        parser.error(f"--schedule must be Automatic or SGM Uniform (got {args.schedule!r})")
    bad_sizes = [s for s in args.sizes if s % 8 or not 64 <= s <= 2048]
    if bad_sizes:
        parser.error(f"sizes must be multiples of 8 between 64 and 2048 (got {bad_sizes})")
    return args


class Printer:
    """Writes JSON lines to stdout (and ``--out``); progress text goes to stderr."""

    def __init__(self, out: Path | None):
        self.out = out

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=_json_default)
        print(line, flush=True)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            with self.out.open("a") as fh:
                fh.write(line + "\n")

    @staticmethod
    def log(text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return None
    return str(value)


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None:
        return None
    if math.isinf(value):
        return 999.0  # PSNR of identical images; JSON has no infinity
    return round(value, digits)


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, 3)


def record_for(m: Measurement, family: str, size: int, args: argparse.Namespace, base: Measurement | None,
               reference: Measurement | None, reference_name: str, twin: Measurement | None = None) -> dict[str, Any]:
    """The JSON line for one measurement; ratios are to plain diffusers (its image timed right after this mode's
    when ``twin`` is given), pixel differences to ``reference``."""
    if twin is not None and base is not None:
        base = dataclasses.replace(base, image_s=twin.image_s, cpu_s=twin.cpu_s, s_per_it=twin.s_per_it)
    max_diff, psnr = pixel_difference(m.image, reference.image if reference else None)
    gib = 1024**3
    return {
        "kind": "result",
        "family": family,
        "size": size,
        "mode": m.mode,
        "steps": args.steps,
        "s_per_it": _round(m.s_per_it),
        "image_s": _round(m.image_s),
        "cpu_s": _round(m.cpu_s),
        "first_image_s": _round(m.first_image_s, 2),
        "start_s": _round(m.start_s, 2),
        "load_s": _round(m.load_s, 2),
        "peak_rss_gib": round(m.peak_rss / gib, 3) if m.peak_rss else None,
        "start_rss_gib": round(m.start_rss / gib, 3) if m.start_rss else None,
        "ratio_image": _ratio(m.image_s, base.image_s if base else None),
        "ratio_cpu": _ratio(m.cpu_s, base.cpu_s if base else None),
        "ratio_first": _ratio(m.first_image_s, base.first_image_s if base else None),
        "ratio_rss": _ratio(m.peak_rss, base.peak_rss if base else None),
        "max_pixel_diff": max_diff,
        "psnr_db": _round(psnr, 2),
        "pixels_vs": reference_name if reference is not None else None,
        "notes": m.notes,
        "error": m.error,
        "base_image_s": _round(base.image_s) if base else None,
        "base": "adjacent diffusers image" if twin is not None else "diffusers mode",
    }


@contextlib.contextmanager
def atelier_session(via: str, model: BenchModel, work_dir: Path, changes: dict[str, Any], size: int,
                    args: argparse.Namespace, log: Callable[[str], None]) -> Iterator[Callable[[str, bool], Any]]:
    """Atelier with ``changes`` to its Settings; yields ``run_mode(mode, first) -> Measurement``."""
    if via == "api":
        server = AtelierServer(model, work_dir, fast=bool(changes.get("fast")), log=log)
        try:
            yield lambda mode, first: run_api_mode(server, size, args.steps, args.cfg, mode, args.repeats, first)
        finally:
            server.stop()
        return
    with atelier_manager(model, work_dir, changes) as manager:
        yield lambda mode, first: run_atelier_mode(manager, model, size, args.steps, args.cfg, mode,
                                                   args.repeats, first)


def session_groups(modes: list[str]) -> list[tuple[tuple[dict[str, Any], bool], list[str]]]:
    """Atelier modes grouped by what their session needs: the same Settings changes (one manager or server each)
    and whether TAESD is installed; in the order their first mode comes."""
    groups: list[tuple[tuple[dict[str, Any], bool], list[str]]] = []
    for mode in modes:
        key = (ATELIER_SETTINGS_MODES.get(mode_kind(mode), {}), mode_uses(mode, "taesd"))
        for existing, members in groups:
            if existing == key:
                members.append(mode)
                break
        else:
            groups.append((key, [mode]))
    return groups


def ensure_taesd(work_dir: Path, tiny: bool, log: Callable[[str], None]) -> Path:
    """A random-weight TAESD decoder in taesd's own ``.safetensors`` layout, built once: real taesd shapes (diffusers'
    ``AutoencoderTiny`` defaults), or the tiny test one with ``--tiny``."""
    import torch

    from pipelines.tiny import tiny_autoencoder_tiny, write_taesd_decoder

    path = work_dir / ("taesd-tiny" if tiny else "taesd") / "taesd_decoder.safetensors"
    if path.exists():
        return path
    log(f"building {path.name} (random weights)")
    if tiny:
        model = tiny_autoencoder_tiny(seed=3)
    else:
        from diffusers import AutoencoderTiny

        torch.manual_seed(3)
        model = AutoencoderTiny().eval()
    return write_taesd_decoder(model, path)


@contextlib.contextmanager
def taesd_installed(model: BenchModel, tiny: bool, wanted: bool, log: Callable[[str], None]) -> Iterator[None]:
    """With ``wanted``, the bench TAESD in ``models/VAE-approx/`` for the session (A1111's folder), removed after:
    installed, it previews every Atelier image, which the modes without ``taesd`` must not pay for."""
    if not wanted:
        yield
        return
    source = ensure_taesd(model.models_dir.parent, tiny, log)
    target = model.models_dir / "VAE-approx" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    target.symlink_to(source)
    try:
        yield
    finally:
        target.unlink(missing_ok=True)


def bench_size(family: str, size: int, model: BenchModel, args: argparse.Namespace, work_dir: Path,
               printer: Printer) -> list[dict[str, Any]]:
    """All requested modes at one size; returns the records (also printed as they finish)."""
    import torch

    results: dict[str, Measurement] = {}
    records: list[dict[str, Any]] = []
    order = sorted(args.modes, key=lambda m: ALL_MODES.index(mode_kind(m)))

    def measure(mode: str, fn: Callable[[], Measurement]) -> None:
        printer.log(f"{family} {size}px {mode} ...")
        try:
            results[mode] = fn()
        except Exception as exc:  # one failing mode must not lose the rest of a long run
            results[mode] = Measurement(mode, error=f"{type(exc).__name__}: {exc}")
        gc.collect()

    keep: dict[str, Any] | None = {} if args.interleave else None
    twins: dict[str, Measurement] = {}
    start_s = script_start_s() if args.via == "api" and any(m in PLAIN_MODES for m in order) else 0.0
    if "diffusers" in order:
        measure("diffusers", lambda: in_worker_thread(
            lambda: run_plain_diffusers(model, size, args.steps, args.cfg, args.repeats, keep, start_s)))
    if "diffusers+lora" in order:
        lora = model.models_dir / "loras" / f"{LORA_NAME}.safetensors"
        measure("diffusers+lora", lambda: in_worker_thread(
            lambda: run_plain_diffusers(model, size, args.steps, args.cfg, args.repeats, None, start_s, lora)))

    def twin(mode: str) -> None:
        if keep and "generate" in keep and results[mode].error is None:
            printer.log(f"{family} {size}px diffusers again, beside {mode} ...")
            try:
                twins[mode] = in_worker_thread(lambda: plain_twin(keep["generate"], args.repeats))
            except Exception as exc:  # the mode's ratio falls back to the diffusers mode's image
                printer.log(f"diffusers twin failed: {type(exc).__name__}: {exc}")

    for (changes, with_taesd), modes in session_groups([m for m in order if m not in PLAIN_MODES]):
        try:
            with taesd_installed(model, args.tiny, with_taesd, printer.log), \
                    atelier_session(args.via, model, work_dir, changes, size, args, printer.log) as run_mode:
                for i, mode in enumerate(modes):
                    timed_first = i == 0 or mode_kind(mode) in FIRST_TIMED
                    measure(mode, lambda mode=mode, first=timed_first: run_mode(mode, first))
                    twin(mode)
        except Exception as exc:  # the server or manager did not come up: say so on each of its lines
            for mode in modes:
                results.setdefault(mode, Measurement(mode, error=f"{type(exc).__name__}: {exc}"))

    if keep is not None:
        keep.clear()  # plain diffusers' pipeline goes now
        gc.collect()
    reference_name = "default" if "default" in results else "diffusers"
    reference = results.get(reference_name)
    for mode in order:
        m = results[mode]
        base = results.get("diffusers")
        ref, ref_name = (reference, reference_name) if mode != reference_name else (base, "diffusers")
        twin_m = twins.get(mode)
        if mode_uses(mode, "lora") and "diffusers+lora" in results and mode != "diffusers+lora":
            # a LoRA image against plain diffusers with the same LoRA: its time, and its pixels
            base, ref, ref_name, twin_m = results["diffusers+lora"], results["diffusers+lora"], "diffusers+lora", None
        record = record_for(m, family, size, args, base, ref, ref_name, twin_m)
        default = results.get("default")
        if (mode not in PLAIN_MODES and any(mode_uses(mode, part) for part in ("prompt150", "lora", "taesd"))
                and default is not None):
            # what the prompt language or a TAESD decode costs or saves: against Atelier's own default image
            record["ratio_vs_default"] = _ratio(m.image_s, default.image_s)
            record["ratio_rss_vs_default"] = _ratio(m.peak_rss, default.peak_rss)
        record["threads"] = torch.get_num_threads()
        printer.emit(record)
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    global DEEP_CACHE_INTERVAL, TOKEN_MERGING_RATIO, SAMPLER, SCHEDULE
    args = parse_args(argv)
    DEEP_CACHE_INTERVAL, TOKEN_MERGING_RATIO = args.deep_cache_interval, args.token_merging
    SAMPLER, SCHEDULE = args.sampler, args.schedule
    printer = Printer(args.out)
    if args.threads:
        # Before torch loads: OpenMP reads it for every thread, the manager's worker thread included.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import diffusers.utils.logging as diffusers_logging
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()  # keep stderr to the bench's own progress lines
    diffusers_logging.disable_progress_bar()
    with contextlib.ExitStack() as stack:
        if args.work_dir is not None:
            work_dir = args.work_dir.resolve()
        elif args.tiny:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="atelier-bench-")))
        else:
            work_dir = REPO_ROOT / ".cache" / "bench"
        work_dir.mkdir(parents=True, exist_ok=True)
        printer.emit({
            "kind": "env", "tiny": args.tiny, "torch": torch.__version__, "diffusers": _version("diffusers"),
            "device": "cpu", "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "sizes": args.sizes, "modes": args.modes, "steps": args.steps, "cfg": args.cfg,
            "sampler": SAMPLER, "schedule": SCHEDULE, "dtype": "fp32", "families": args.families, "via": args.via,
            "deep_cache_interval": args.deep_cache_interval, "token_merging": args.token_merging,
        })
        started = time.perf_counter()
        for family in args.families:
            model = ensure_checkpoint(family, args.tiny, work_dir, printer.log)
            family_args = args
            if model.family != "sd15" and any(mode_uses(mode, "lora") for mode in args.modes):
                # the bench LoRA is SD 1.5-shaped (one models folder holds every family's files)
                printer.log(f"{family}: the LoRA modes run on sd15 only; left out")
                family_args = argparse.Namespace(**{**vars(args), "modes": [
                    mode for mode in args.modes if not mode_uses(mode, "lora")]})
            if any(mode_uses(mode, "lora") for mode in family_args.modes):
                ensure_lora(model, args.tiny, printer.log)
            for size in args.sizes:
                bench_size(family, size, model, family_args, work_dir, printer)
        printer.log(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
