"""Probe: can OpenVINO (or channels_last) run the SD1.5 UNet / VAE decoder faster than eager torch on this CPU, exactly?

Evidence for issue 16's CPU section, kept beside ``bench/run.py`` (a script, not a test). It loads the UNet and the
VAE from the bench's full-size random-weight single file (``bench/run.py`` builds it), then for each size times,
**interleaved** A/B/A/B (the cores are shared, so every variant sees the same load; the fastest of ``--runs`` is
kept, wall and CPU seconds):

* ``eager``: ``unet(latents, t, text)`` under ``torch.inference_mode`` (what diffusers runs), CFG batch 2;
* ``eager_cl``: the same with the UNet in channels_last;
* ``ov_dynamic``: ``ov.convert_model`` of the torch module (traced once, input shapes left dynamic, saved as an IR
  and read back on later runs, as a restart would);
* ``ov_static`` (``--static``): the same model reshaped to this size's static input shapes;

and the same for the VAE decoder (batch 1, ``vae.decode``). Every OpenVINO model is compiled for the CPU with
``INFERENCE_PRECISION_HINT=f32`` (exact), ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS``= torch's
threads, ``NUM_STREAMS=1`` and CPU pinning (``--no-pinning`` turns it off). Outputs are compared with eager (max abs
difference). It also prints one-off costs (conversion, compile, IR save and size) and resident memory at each stage.

``--profile`` instead runs ``torch.profiler`` over one eager UNet call per size and prints where the time goes
(conv, attention, matmul/linear, group_norm, other) and the achieved GFLOP/s against this CPU's FMA peak.

    .venv/bin/python bench/probe_openvino.py --sizes 256,512 --runs 3
    .venv/bin/python bench/probe_openvino.py --sizes 256,512 --profile
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = REPO_ROOT / ".cache" / "bench" / "models" / "checkpoints" / "bench-sd15.safetensors"
CONFIG_DIR = REPO_ROOT / "pipelines" / "configs" / "sd15"
TEXT_TOKENS, TEXT_DIM = 77, 768


def rss_gib() -> float:
    """Resident memory of this process now, GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def load_avg() -> str:
    """``uptime``'s load averages (the cores are shared: read timings against them)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def emit(**row: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps(row), flush=True)


def load_models(path: Path) -> tuple[Any, Any]:
    """UNet and VAE from the bench's single file, fp32, the way ``from_single_file`` loads them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    kwargs = {"config": str(CONFIG_DIR), "local_files_only": True}
    unet = UNet2DConditionModel.from_single_file(str(path), subfolder="unet", **kwargs).eval()
    vae = AutoencoderKL.from_single_file(str(path), subfolder="vae", **kwargs).eval()
    return unet, vae


class UNetCall:
    """``unet(sample, t, text).sample`` as a plain module: what the converter traces and what eager runs."""

    def __new__(cls, unet: Any) -> Any:
        import torch

        class _Wrapped(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, sample: Any, timestep: Any, text: Any) -> Any:
                return self.inner(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

        return _Wrapped(unet).eval()


class DecoderCall:
    """``vae.decode(latents).sample`` (post-quant conv + decoder) as a plain module."""

    def __new__(cls, vae: Any) -> Any:
        import torch

        class _Wrapped(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, latents: Any) -> Any:
                return self.inner.decode(latents, return_dict=False)[0]

        return _Wrapped(vae).eval()


def unet_inputs(size: int) -> tuple[Any, ...]:
    """CFG batch 2 at ``size`` px: latents, a timestep, and two text embeddings."""
    import torch

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, size // 8, size // 8, generator=g)
    return latents, torch.tensor(500.0), torch.randn(2, TEXT_TOKENS, TEXT_DIM, generator=g)


def decoder_inputs(size: int) -> tuple[Any, ...]:
    """One image's latents at ``size`` px (diffusers decodes the batch; one image per request here)."""
    import torch

    return (torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1)),)


def ov_config(threads: int, pinning: bool) -> dict[str, Any]:
    """CPU plugin properties for an exact, single-request, low-latency run."""
    return {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": pinning}


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, process CPU s, result) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def interleave(variants: dict[str, Callable[[], Any]], runs: int,
               around: dict[str, tuple[Callable[[], None], Callable[[], None]]] | None = None) -> dict[str, dict]:
    """Run the variants A/B/C/A/B/C... ``runs`` times (after one warm-up each); keep the fastest of each.

    ``around[name]`` is an optional (set-up, tear-down) pair run outside the timing (e.g. to channels_last and back,
    in place, so that no second copy of the weights is needed)."""
    around = around or {}
    best: dict[str, dict[str, Any]] = {}

    def once(name: str) -> tuple[float, float, Any]:
        setup, teardown = around.get(name, (lambda: None, lambda: None))
        setup()
        try:
            return timed(variants[name])
        finally:
            teardown()

    for name in variants:  # warm-up: first-call allocations, OV's first inference
        wall, cpu, out = once(name)
        best[name] = {"wall_s": wall, "cpu_s": cpu, "warmup_s": wall, "out": out, "walls": []}
    for _ in range(runs):
        for name in variants:
            wall, cpu, _ = once(name)
            best[name]["walls"].append(round(wall, 2))
            best[name]["wall_s"] = min(best[name]["wall_s"], wall)
            best[name]["cpu_s"] = min(best[name]["cpu_s"], cpu)
    return best


def ov_runner(compiled: Any, inputs: tuple[Any, ...]) -> Callable[[], Any]:
    """A call of the compiled model on ``inputs`` (numpy views of the torch tensors), returning a torch tensor."""
    import torch

    request = compiled.create_infer_request()
    arrays = [t.numpy() for t in inputs]

    def run() -> Any:
        request.infer(arrays, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def convert(module: Any, inputs: tuple[Any, ...]) -> tuple[Any, float]:
    """``ov.convert_model`` of a torch module traced on ``inputs`` (input shapes stay dynamic)."""
    import openvino as ov
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(module, example_input=inputs)
    return model, time.perf_counter() - t0


def static_copy(model: Any, inputs: tuple[Any, ...]) -> Any:
    """A clone of ``model`` with static input shapes (the shapes of ``inputs``)."""
    clone = model.clone()
    clone.reshape({i: list(t.shape) for i, t in enumerate(inputs)})
    return clone


def converted(label: str, module: Any, inputs: tuple[Any, ...], ir_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The dynamic-shape OpenVINO model of ``module``: read from ``ir_dir`` when a previous run saved it (what a
    restart would do), else converted and saved there. Returns the model and its one-off costs."""
    import openvino as ov

    ir = ir_dir / f"{label}.xml"
    costs: dict[str, Any] = {}
    t0 = time.perf_counter()
    if ir.exists():
        model = ov.Core().read_model(str(ir))
        costs["read_ir_s"] = round(time.perf_counter() - t0, 1)
    else:
        model, convert_s = convert(module, inputs)
        costs["convert_s"] = round(convert_s, 1)
        t0 = time.perf_counter()
        ov.save_model(model, str(ir), compress_to_fp16=False)
        costs["save_ir_s"] = round(time.perf_counter() - t0, 1)
    costs["ir_gib"] = round((ir.stat().st_size + ir.with_suffix(".bin").stat().st_size) / 2**30, 3)
    return model, costs


def probe_part(label: str, module: Any, inputs: tuple[Any, ...], args: argparse.Namespace, size: int,
               ir_dir: Path, channels_last: bool) -> None:
    """Convert (once per part), compile and time one module (UNet or VAE decoder) at one size."""
    import openvino as ov
    import torch

    core = ov.Core()
    config = ov_config(torch.get_num_threads(), not args.no_pinning)
    rss0 = rss_gib()
    model, costs = converted(label, module, inputs, ir_dir)
    rss_converted = rss_gib()
    dynamic_shapes = [str(p.get_partial_shape()) for p in model.inputs]
    compiled: dict[str, Any] = {}
    t0 = time.perf_counter()
    compiled["ov_dynamic"] = core.compile_model(model, "CPU", config)
    costs["compile_dynamic_s"] = round(time.perf_counter() - t0, 1)
    costs["rss_after_dynamic_compile_gib"] = round(rss_gib(), 2)
    if args.static:
        t0 = time.perf_counter()
        compiled["ov_static"] = core.compile_model(static_copy(model, inputs), "CPU", config)
        costs["compile_static_s"] = round(time.perf_counter() - t0, 1)
        costs["rss_after_static_compile_gib"] = round(rss_gib(), 2)
    precision = str(compiled["ov_dynamic"].get_property("INFERENCE_PRECISION_HINT"))
    del model  # the compiled models hold their own weights; this drops the converted/mmap'd ones
    gc.collect()
    emit(kind="oneoff", part=label, size=size, **costs, dynamic_input_shapes=dynamic_shapes,
         inference_precision=precision, rss_before_gib=round(rss0, 2), rss_after_convert_gib=round(rss_converted, 2),
         rss_compiled_only_gib=round(rss_gib(), 2), load=load_avg())

    def eager() -> Any:
        with torch.inference_mode():
            return module(*inputs)

    variants: dict[str, Callable[[], Any]] = {"eager": eager}
    around = {}
    if channels_last:
        cl_inputs = (inputs[0].to(memory_format=torch.channels_last), *inputs[1:])

        def eager_cl() -> Any:
            with torch.inference_mode():
                return module(*cl_inputs).contiguous()

        variants["eager_cl"] = eager_cl
        around["eager_cl"] = (lambda: module.to(memory_format=torch.channels_last),
                              lambda: module.to(memory_format=torch.contiguous_format))
    for name, model_c in compiled.items():
        variants[name] = ov_runner(model_c, inputs)
    best = interleave(variants, args.runs, around)
    reference = best["eager"]["out"]
    for name, row in best.items():
        diff = float((row["out"].float() - reference.float()).abs().max())
        emit(kind="time", part=label, size=size, variant=name, wall_s=round(row["wall_s"], 3),
             cpu_s=round(row["cpu_s"], 3), ratio=round(row["wall_s"] / best["eager"]["wall_s"], 3),
             ratio_cpu=round(row["cpu_s"] / best["eager"]["cpu_s"], 3), walls=row["walls"],
             warmup_s=round(row["warmup_s"], 2), max_abs_diff=diff, ref_abs_max=float(reference.abs().max()),
             rss_gib=round(rss_gib(), 2), load=load_avg())
    del compiled, variants, best
    gc.collect()


def memory_probe(unet: Any, size: int, ir_dir: Path, args: argparse.Namespace) -> None:
    """RSS when the UNet runs from an IR on disk (mmap'd weights) and the torch UNet's weights are dropped."""
    import openvino as ov
    import torch

    ir = ir_dir / "unet.xml"
    core = ov.Core()
    config = ov_config(torch.get_num_threads(), not args.no_pinning)
    rss_torch = rss_gib()
    t0 = time.perf_counter()
    compiled = core.compile_model(core.read_model(str(ir)), "CPU", config)
    compile_from_ir_s = time.perf_counter() - t0
    rss_both = rss_gib()
    unet.to("meta")  # drop the torch weights (what a wired path would do while OpenVINO serves the UNet)
    gc.collect()
    rss_ov_only = rss_gib()
    run = ov_runner(compiled, unet_inputs(size))
    run()
    emit(kind="memory", size=size, compile_from_ir_s=round(compile_from_ir_s, 1),
         rss_torch_models_gib=round(rss_torch, 2),
         rss_torch_plus_ov_gib=round(rss_both, 2), rss_after_dropping_torch_unet_gib=round(rss_ov_only, 2),
         rss_after_ov_call_gib=round(rss_gib(), 2),
         peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))


# --- profile ----------------------------------------------------------------------------------------------------
CATEGORIES = (
    ("conv", re.compile(r"conv")),
    ("attention (SDPA)", re.compile(r"scaled_dot_product|flash_attention|_efficient_attention")),
    ("matmul/linear", re.compile(r"addmm|::mm$|bmm|matmul|linear|baddbmm")),
    ("group_norm", re.compile(r"group_norm")),
    ("layer_norm", re.compile(r"layer_norm")),
)


def category(op: str) -> str:
    """Which bucket an aten op's self time goes to."""
    for name, pattern in CATEGORIES:
        if pattern.search(op):
            return name
    return "other (elementwise, copies, upsample, ...)"


def cpu_peak_gflops(threads: int) -> tuple[float, float]:
    """(GHz, peak fp32 GFLOP/s) for ``threads`` cores with two 256-bit FMA pipes each (AVX2: 2x8 lanes x 2 flop)."""
    mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("cpu MHz")]
    ghz = max(mhz) / 1000 if mhz else float("nan")
    return ghz, threads * 2 * 8 * 2 * ghz


def profile_unet(unet: Any, size: int) -> None:
    """Self CPU time per op category over one eager UNet call, and achieved vs peak GFLOP/s."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    module, inputs = UNetCall(unet), unet_inputs(size)
    with torch.inference_mode():
        module(*inputs)  # warm-up
        counter = FlopCounterMode(display=False)
        with counter:
            module(*inputs)
        flops = counter.get_total_flops()
        t0, c0 = time.perf_counter(), time.process_time()
        module(*inputs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            module(*inputs)
    buckets: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::") or event.key.startswith("mkldnn"):
            buckets[category(event.key)] = buckets.get(category(event.key), 0.0) + event.self_cpu_time_total
    total = sum(buckets.values())
    top = sorted(((e.self_cpu_time_total, e.key) for e in prof.key_averages()), reverse=True)[:8]
    threads = torch.get_num_threads()
    ghz, peak = cpu_peak_gflops(threads)
    emit(kind="profile", size=size, wall_s=round(wall, 2), cpu_s=round(cpu, 2), gflop=round(flops / 1e9, 1),
         achieved_gflops=round(flops / 1e9 / wall, 1), peak_gflops=round(peak, 1), ghz=round(ghz, 3),
         threads=threads, share={k: round(v / total, 3) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])},
         top_ops=[(key, round(us / 1e6, 2)) for us, key in top], load=load_avg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="the bench's SD1.5-shaped single file")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant after one warm-up (min kept)")
    parser.add_argument("--parts", default="unet,vae", help="unet, vae or both")
    parser.add_argument("--no-pinning", action="store_true", help="ENABLE_CPU_PINNING=False for OpenVINO")
    parser.add_argument("--no-channels-last", action="store_true", help="leave out the eager channels_last variant")
    parser.add_argument("--static", action="store_true", help="also time a copy reshaped to static input shapes")
    parser.add_argument("--memory", action="store_true", help="also measure RSS with the UNet served from the IR")
    parser.add_argument("--profile", action="store_true", help="profile eager UNet calls instead of the A/B")
    parser.add_argument("--ir-dir", type=Path, default=None, help="where the IRs go (default: a temp dir)")
    args = parser.parse_args()
    if not args.file.exists():
        sys.exit(f"{args.file} is missing: build it with .venv/bin/python bench/run.py --sizes 256 --steps 1")

    import torch

    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    unet, vae = load_models(args.file)
    import openvino as ov

    emit(kind="env", torch=torch.__version__, openvino=ov.__version__, threads=torch.get_num_threads(),
         load_s=round(time.perf_counter() - t0, 1), rss_gib=round(rss_gib(), 2), load=load_avg(),
         omp=os.environ.get("OMP_NUM_THREADS"))
    if args.profile:
        for size in sizes:
            profile_unet(unet, size)
        return
    ir_dir = args.ir_dir or Path(tempfile.mkdtemp(prefix="ov-probe-"))
    ir_dir.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    for size in sizes:
        if "unet" in parts:
            probe_part("unet", UNetCall(unet), unet_inputs(size), args, size, ir_dir, not args.no_channels_last)
        if "vae" in parts:
            probe_part("vae_decoder", DecoderCall(vae), decoder_inputs(size), args, size, ir_dir, False)
    if args.memory and "unet" in parts:
        del vae
        gc.collect()
        memory_probe(unet, sizes[-1], ir_dir, args)


if __name__ == "__main__":
    main()
