"""Tiled ESRGAN-family upscaling (``pipelines.upscaler_models.upscale``) against spandrel's own untiled call.

    .venv/bin/python bench/upscaler_tiling.py                       # issue 26's line: RRDBNet 23x64, 4x of 512²
    .venv/bin/python bench/upscaler_tiling.py --size 128 --tiles 512,96 --repeats 2   # a quick look

The model is ESRGAN-shaped (RRDBNet, ``--blocks`` 23, ``--features`` 64, 4x) with random weights (shapes decide
speed; nothing is downloaded), written once as an original-layout ``.pth`` and loaded through
``pipelines.upscaler_models.load_upscaler`` (spandrel's real loading code). Per tile size it prints one JSON line:
the tiled call's seconds beside spandrel's untiled call on the same image (``descriptor(tensor)`` plus the same
PIL↔tensor conversions; ``model_s`` is the bare model call), the ratio, the tile count, the share of extra pixels
the overlaps cost, and the largest difference from the untiled picture in 0–255 levels. Baseline and tiled runs
alternate (``--repeats`` rounds, the order flipped every round, fastest kept; every run's time is printed too)
so that a shared machine's drift hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input image side in px (default 512)")
    parser.add_argument("--blocks", type=int, default=23)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--tiles", default="512", help="comma list of tile sizes to time (default 512, the default)")
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image
    from spandrel.architectures.ESRGAN import ESRGAN

    from pipelines import upscaler_models as um

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ESRGAN(num_filters=args.features, num_blocks=args.blocks, scale=4)
    with torch.no_grad():  # random weights clamp to black; spread the output so the difference column means something
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        probe = torch.rand(1, 3, 32, 32)
        std = net(probe).std(dim=(0, 2, 3))
        last.weight.mul_((0.2 / std)[:, None, None, None])
        last.bias.mul_(0.2 / std)
        last.bias.add_(0.5 - net(probe).mean(dim=(0, 2, 3)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"RRDB_{args.blocks}x{args.features}_x4.pth"
        torch.save(net.state_dict(), path)
        model = um.load_upscaler(path)
    del net
    device = torch.device(args.device)
    model.descriptor.to(device=device, dtype=torch.float32)

    ramp = np.linspace(0.0, 1.0, args.size, dtype=np.float32)
    noise = np.random.default_rng(0).random((args.size, args.size, 3), dtype=np.float32)
    pixels = 0.6 * np.stack([np.outer(ramp, ramp), np.outer(1 - ramp, ramp), np.outer(ramp, 1 - ramp)], -1)
    image = Image.fromarray(((pixels + 0.4 * noise) * 255).astype(np.uint8))

    def spandrel_untiled() -> tuple[Image.Image, float]:
        tensor = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None].to(device)
        start = time.perf_counter()
        out = model.descriptor(tensor)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_s = time.perf_counter() - start
        array = (out[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array), model_s

    def timed(fn):
        start = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - start

    um.upscale(model, image.crop((0, 0, 32, 32)), device)  # warm-up: first-call allocations and kernel choice
    tiles = [int(t) for t in args.tiles.split(",") if t.strip()]
    base_times, model_times, times = [], [], {t: [] for t in tiles}
    reference, outputs = None, {}
    for round_index in range(max(1, args.repeats)):
        # Odd rounds run the tiled calls first: whatever the order costs (allocator, caches) hits both sides.
        order = ["untiled", *tiles] if round_index % 2 == 0 else [*tiles, "untiled"]
        for what in order:
            if what == "untiled":
                (reference, model_s), seconds = timed(spandrel_untiled)
                base_times.append(seconds)
                model_times.append(model_s)
            else:
                outputs[what], seconds = timed(lambda tile=what: um.upscale(model, image, device, tile=tile,
                                                                            overlap=args.overlap))
                times[what].append(seconds)
    best_base, best_model = min(base_times), min(model_times)
    best = {tile: min(values) for tile, values in times.items()}

    lines = []
    for tile in tiles:
        spans = um.plan_spans(args.size, tile, args.overlap)
        diff = np.abs(np.asarray(outputs[tile], np.int16) - np.asarray(reference, np.int16))
        lines.append({
            "bench": "upscaler_tiling", "model": f"RRDBNet {args.blocks}x{args.features} 4x (random weights)",
            "size": args.size, "tile": tile, "overlap": args.overlap, "tiles": len(spans) ** 2,
            "extra_pixels": round((len(spans) * (spans[0][1] - spans[0][0]) / args.size) ** 2 - 1, 3),
            "tiled_s": round(best[tile], 3), "spandrel_untiled_s": round(best_base, 3),
            "model_s": round(best_model, 3), "ratio": round(best[tile] / best_base, 3),
            "max_diff_levels": int(diff.max()), "mean_diff_levels": round(float(diff.mean()), 4),
            "tiled_runs_s": [round(t, 2) for t in times[tile]], "untiled_runs_s": [round(t, 2) for t in base_times],
            "device": str(device), "threads": torch.get_num_threads(), "repeats": max(1, args.repeats),
            "load_avg": round(os.getloadavg()[0], 2),
        })
    for line in lines:
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
