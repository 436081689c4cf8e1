"""Hires fix through Atelier's manager against the same two passes done with plain diffusers, in one run.

    .venv/bin/python bench/hires.py --tiny                      # CI-sized: tiny model, 64 px -> 128 px, 4 + 2 steps
    .venv/bin/python bench/hires.py                             # issue 26's line: 512² -> 1024², 20 + 10 steps
    .venv/bin/python bench/hires.py --size 256 --repeats 2      # a quicker look at full-size shapes

The model is bench/run.py's random-weight SD1.5-shaped single file (built once under ``--work-dir``). Both sides
draw the same picture the same way: Euler, CFG 7, seed 1234, a first pass at ``--size``, A1111's default "Latent"
upscale (bilinear interpolation of the latents to twice the size), a second pass of exactly ``--hr-steps`` steps at
denoising strength ``--denoise`` (A1111's schedule: ``int(hr_steps / strength)`` steps, the last ``hr_steps`` run),
then the decode. Plain diffusers is ``StableDiffusionPipeline.from_single_file`` with a
``StableDiffusionImg2ImgPipeline`` over the same modules; Atelier is one ``PipelineManager.run`` of a request with
``enable_hr``. Runs alternate (``--repeats`` rounds, fastest kept, each side in a worker thread as the manager runs
its jobs) and one JSON line is printed: both times, their ratio (the issue's bound: 1.05) and the pictures' largest
difference in 0–255 levels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for folder in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import run as bench  # noqa: E402 - bench/run.py: the model file, the worker thread, the prompt


def plain_diffusers(model: Any, size: int, steps: int, hr_steps: int, denoise: float) -> Any:
    """A function drawing one hires picture with plain diffusers (pipelines loaded once, here)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from pipelines.tasks.hires import second_pass_schedule
    from pipelines.tokenizers import clip_tokenizer

    txt2img = StableDiffusionPipeline.from_single_file(
        str(model.path), config=str(model.config_dir), local_files_only=True, torch_dtype=torch.float32,
        tokenizer=clip_tokenizer(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    txt2img.scheduler = EulerDiscreteScheduler.from_config(txt2img.scheduler.config)
    txt2img.set_progress_bar_config(disable=True)
    img2img = StableDiffusionImg2ImgPipeline(**txt2img.components)
    img2img.set_progress_bar_config(disable=True)
    scheduled, strength = second_pass_schedule(hr_steps, denoise)

    def draw() -> Any:
        common = dict(prompt=bench.PROMPT, negative_prompt=bench.NEGATIVE, guidance_scale=7.0)
        latents = txt2img(**common, num_inference_steps=steps, width=size, height=size, output_type="latent",
                          generator=torch.Generator("cpu").manual_seed(bench.SEED)).images
        latents = torch.nn.functional.interpolate(latents, size=(size // 4, size // 4), mode="bilinear")
        img2img.scheduler = EulerDiscreteScheduler.from_config(txt2img.scheduler.config)
        return img2img(**common, image=latents, num_inference_steps=scheduled, strength=strength,
                       generator=torch.Generator("cpu").manual_seed(bench.SEED)).images[0]

    return draw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="first pass side in px (default 512)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hr-steps", type=int, default=10)
    parser.add_argument("--denoise", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="the tiny test model, 64 px, 4 + 2 steps")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".cache" / "bench")
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.steps, args.hr_steps = 64, 4, 2

    import numpy as np

    from pipelines.request import GenerationRequest

    model = bench.ensure_checkpoint("sd15", args.tiny, args.work_dir, lambda text: print(text, file=sys.stderr))
    request = GenerationRequest.create(
        prompt=bench.PROMPT, negative_prompt=bench.NEGATIVE, sampler="Euler", steps=args.steps, cfg_scale=7.0,
        width=args.size, height=args.size, seed=bench.SEED, checkpoint=model.name, enable_hr=True, hr_scale=2,
        hr_upscaler="Latent", hr_second_pass_steps=args.hr_steps, denoising_strength=args.denoise)
    draw = bench.in_worker_thread(lambda: plain_diffusers(model, args.size, args.steps, args.hr_steps,
                                                          args.denoise))
    times: dict[str, list[float]] = {"diffusers": [], "atelier": []}
    pictures: dict[str, Any] = {}
    with bench.atelier_manager(model, args.work_dir, {}) as manager:
        manager.run(request)  # the load, outside the timing (plain diffusers loaded above)
        for round_ in range(args.repeats):
            order = ("diffusers", "atelier") if round_ % 2 == 0 else ("atelier", "diffusers")
            for side in order:
                started = time.perf_counter()
                pictures[side] = (bench.in_worker_thread(draw) if side == "diffusers"
                                  else manager.run(request).images[0])
                times[side].append(time.perf_counter() - started)
                print(f"{side}: {times[side][-1]:.2f} s", file=sys.stderr)
    best = {side: min(values) for side, values in times.items()}
    diff = np.abs(np.asarray(pictures["diffusers"], np.int16) - np.asarray(pictures["atelier"], np.int16))
    print(json.dumps({
        "bench": "hires", "model": "tiny" if args.tiny else "sd15", "size": args.size, "hires": args.size * 2,
        "steps": args.steps, "hr_steps": args.hr_steps, "denoise": args.denoise, "repeats": args.repeats,
        "diffusers_s": round(best["diffusers"], 3), "atelier_s": round(best["atelier"], 3),
        "ratio": round(best["atelier"] / best["diffusers"], 3), "max_diff": int(diff.max()),
        "runs": {side: [round(t, 3) for t in values] for side, values in times.items()},
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
