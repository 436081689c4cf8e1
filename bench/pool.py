"""Throughput of the pool (``--pool``) against one process: the same burst of API requests, one line per set-up.

    .venv/bin/python bench/pool.py [--replicas 1,2] [--requests 4] [--size 512] [--steps 150] [--checkpoint NAME]

Each set-up is a fresh ``app.py`` (``--pool auto --pool-replicas N``, and without ``--pool`` for the reference);
the burst is ``--requests`` txt2img calls posted at once. Printed per line (JSON): wall seconds for the burst, images
per minute, and the ratio of throughput to the single process. On a CPU the replicas share the cores (``threads`` per
replica = physical cores / replicas), so the pool's gain there is the overlap of one job's serial parts (loading,
decode, PNG) with another's; on a machine with one GPU per replica the gain is the number of GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
URL_LINE = re.compile(r"Running on local URL: (http://\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(workdir: Path, flags: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    cmd = [sys.executable, str(REPO_ROOT / "app.py"), "--no-browser", "--port", str(free_port()),
           "--outputs-dir", str(workdir / "outputs"), "--settings-file", str(workdir / "settings.json"), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = URL_LINE.search("".join(lines))
        if found:
            return proc, found.group(1), lines
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("app.py did not start:\n" + "".join(lines)[-3000:])


def burst(url: str, body: dict, count: int) -> float:
    """Post ``count`` txt2img requests at once; the wall time until the last answer."""
    errors: list[str] = []

    def post(seed: int) -> None:
        resp = requests.post(f"{url}/sdapi/v1/txt2img", json={**body, "seed": seed}, timeout=3600)
        if resp.status_code != 200:
            errors.append(resp.text[:300])

    threads = [threading.Thread(target=post, args=(seed,)) for seed in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"a request failed: {errors[0]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2", help="pool sizes to measure (comma-separated)")
    parser.add_argument("--requests", type=int, default=4, help="requests posted at once")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--checkpoint", help="an installed checkpoint (default: the demo models)")
    args = parser.parse_args()
    models = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--demo"]
    body = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size, "steps": args.steps,
            "sampler_name": "Euler", "cfg_scale": 7}
    setups = [("single process", [])] + [(f"pool of {n}", ["--pool", "auto", "--pool-replicas", n])
                                         for n in args.replicas.split(",")]
    reference = None
    for name, flags in setups:
        with tempfile.TemporaryDirectory() as tmp:
            proc, url, _lines = start_app(Path(tmp), [*models, *flags])
            try:
                burst(url, body, 1)  # every replica that takes part loads the checkpoint before the timing
                burst(url, body, args.requests)
                wall = burst(url, body, args.requests)
            finally:
                proc.terminate()
                proc.wait(60)
        per_minute = 60 * args.requests / wall
        reference = reference or per_minute
        print(json.dumps({"setup": name, "requests": args.requests, "size": args.size, "steps": args.steps,
                          "wall_s": round(wall, 2), "images_per_min": round(per_minute, 2),
                          "ratio_throughput": round(per_minute / reference, 3)}), flush=True)


if __name__ == "__main__":
    main()
