"""Several users at once: 8 clients x 3 requests (half through the REST API, half through the UI's Gradio client)
against one ``--demo`` server. Every request is answered, none is lost, jobs run in the manager's FIFO order,
and the server's memory stays flat. With ``--long``, a soak of a few hundred requests checks that neither
memory nor open files grow.

Order is checked from the outputs counter: each request has its own seed, the saved file is ``NNNNN-<seed>.png``,
so the counter tells when the job ran. A request sent well after another (more than ``ORDER_GAP_S``, far above the
time a request needs to reach the queue) must have run after it.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from conftest import AppProcess, spawn_app
from PIL import Image

API = "/sdapi/v1"
SMALL = {"width": 64, "height": 64, "steps": 2}
CLIENTS, REQUESTS_EACH = 8, 3
STAGGER_S = 0.6  # clients start one after the other...
ORDER_GAP_S = 2.0  # ...so that many pairs of requests were sent clearly one after the other
REQUEST_TIMEOUT_S = 600
RSS_TOLERANCE = 80 * 2**20  # after warm-up: allocator noise and Gradio's per-session state, not a leak
SOAK_REQUESTS = 300
SOAK_RSS_TOLERANCE = 64 * 2**20
SOAK_FD_TOLERANCE = 8
OUTPUT_NAME = re.compile(r"^(\d{5,})-(\d+)\.png$")


@dataclass
class Sent:
    """One request: who sent it, its seed, when it left and what came back."""

    client: int
    seed: int
    via: str
    sent_at: float = 0.0
    answered_at: float = 0.0
    ok: bool = False
    error: str = ""


@dataclass
class LoadRun:
    sent: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Sent) -> None:
        with self.lock:
            self.sent.append(item)


@pytest.fixture(scope="module")
def load_app(tmp_path_factory: pytest.TempPathFactory) -> AppProcess:
    """A ``--demo`` server of its own, so that its outputs folder and memory belong to this test alone."""
    running = spawn_app(tmp_path_factory.mktemp("load"), "--demo")
    yield running
    running.stop()


def server_process(running: AppProcess) -> psutil.Process:
    return psutil.Process(running.proc.pid)


def rss(running: AppProcess) -> int:
    return server_process(running).memory_info().rss


def open_files(running: AppProcess) -> int:
    return server_process(running).num_fds()


def ui_arguments(client: Any, seed: int) -> list[Any]:
    """The txt2img Generate endpoint's values: its defaults, with a small size and our seed."""
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
    changes = {"Width": 64, "Height": 64, "Steps": 2, "Seed (-1: random)": seed, "Prompt": f"load {seed}"}
    return [changes.get(p["label"], p.get("parameter_default")) for p in endpoint["parameters"]]


def send_api(url: str, item: Sent) -> None:
    answer = requests.post(f"{url}{API}/txt2img", json={"prompt": f"load {item.seed}", "seed": item.seed, **SMALL},
                           timeout=REQUEST_TIMEOUT_S)
    if answer.status_code != 200:
        raise AssertionError(f"{answer.status_code}: {answer.text[:300]}")
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    assert image.size == (64, 64)


def send_ui(client: Any, item: Sent) -> None:
    result = client.predict(*ui_arguments(client, item.seed), api_name="/generate")
    assert f"Seed: {item.seed}" in str(result), str(result)[:300]


def run_client(url: str, index: int, seeds: list[int], run: LoadRun, via: str, delay: float) -> None:
    client = None
    if via == "ui":
        from gradio_client import Client

        client = Client(url, verbose=False)
    time.sleep(delay)
    for seed in seeds:
        item = Sent(index, seed, via, sent_at=time.monotonic())
        try:
            if via == "api":
                send_api(url, item)
            else:
                send_ui(client, item)
            item.ok = True
        except Exception as exc:  # recorded and reported by the test, with every other failure
            item.error = f"{type(exc).__name__}: {exc}"
        item.answered_at = time.monotonic()
        run.add(item)


def run_load(url: str, clients: int, each: int, first_seed: int, stagger: float) -> LoadRun:
    """``clients`` threads, even ones over REST and odd ones through the UI, each sending ``each`` requests."""
    run = LoadRun()
    threads = []
    for index in range(clients):
        seeds = [first_seed + index * 1000 + n for n in range(each)]
        via = "api" if index % 2 == 0 else "ui"
        thread = threading.Thread(target=run_client, args=(url, index, seeds, run, via, index * stagger))
        threads.append(thread)
        thread.start()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S * each)
        assert not thread.is_alive(), "a client hung"
    return run


def counters_by_seed(outputs: Path) -> dict[int, int]:
    found: dict[int, int] = {}
    for path in outputs.rglob("*.png"):
        match = OUTPUT_NAME.match(path.name)
        if match:
            found[int(match.group(2))] = int(match.group(1))
    return found


def out_of_order(run: LoadRun, counters: dict[int, int]) -> list[str]:
    """Pairs sent more than ORDER_GAP_S apart whose jobs ran the other way round."""
    problems = []
    for a in run.sent:
        for b in run.sent:
            if b.sent_at - a.sent_at > ORDER_GAP_S and counters[a.seed] > counters[b.seed]:
                problems.append(f"seed {a.seed} ({a.via}) sent {b.sent_at - a.sent_at:.1f} s before seed {b.seed} "
                                f"({b.via}) but ran after it")
    return problems


def ordered_pairs(run: LoadRun) -> int:
    return sum(1 for a in run.sent for b in run.sent if b.sent_at - a.sent_at > ORDER_GAP_S)


def warm_up(running: AppProcess) -> None:
    """One API and one UI request: models loaded, Gradio's first-use state built, before memory is measured."""
    run = run_load(running.url, 2, 2, first_seed=900_000, stagger=0)
    assert all(item.ok for item in run.sent), [item.error for item in run.sent]


def test_eight_concurrent_clients_all_answered_in_queue_order_with_flat_memory(load_app: AppProcess) -> None:
    outputs = load_app.workdir / "outputs"
    warm_up(load_app)
    before_rss, before_fds = rss(load_app), open_files(load_app)
    before_files = counters_by_seed(outputs)

    started = time.monotonic()
    run = run_load(load_app.url, CLIENTS, REQUESTS_EACH, first_seed=10_000, stagger=STAGGER_S)
    elapsed = time.monotonic() - started
    after_rss, after_fds = rss(load_app), open_files(load_app)

    failed = [f"{item.via} seed {item.seed}: {item.error}" for item in run.sent if not item.ok]
    assert not failed, "\n".join(failed)
    assert len(run.sent) == CLIENTS * REQUESTS_EACH

    counters = counters_by_seed(outputs)
    new = {seed: counter for seed, counter in counters.items() if seed not in before_files}
    assert sorted(new) == sorted(item.seed for item in run.sent), "an image was lost or saved twice"
    assert len(set(new.values())) == len(new), "two jobs got the same counter"
    assert ordered_pairs(run) >= 50, "the clients were not staggered enough to check the order"
    problems = out_of_order(run, counters)
    assert not problems, "\n".join(problems[:20])

    growth = after_rss - before_rss
    print(f"\n{len(run.sent)} requests from {CLIENTS} clients in {elapsed:.0f} s; RSS {before_rss / 2**20:.0f} -> "
          f"{after_rss / 2**20:.0f} MiB; open files {before_fds} -> {after_fds}")
    assert growth < RSS_TOLERANCE, f"RSS grew by {growth / 2**20:.0f} MiB"
    assert "Traceback" not in load_app.text, load_app.text[-3000:]


@pytest.mark.long
def test_soak_shows_no_growth_in_memory_or_open_files(load_app: AppProcess) -> None:
    """A few hundred mixed requests: memory and open files after the first fifty are where they end."""
    warm_up(load_app)
    run_load(load_app.url, 4, 12, first_seed=200_000, stagger=0)  # 48 requests to settle
    base_rss, base_fds = rss(load_app), open_files(load_app)
    started = time.monotonic()
    samples = []
    done = 0
    batch = 0
    while done < SOAK_REQUESTS:
        run = run_load(load_app.url, 4, 10, first_seed=300_000 + batch * 10_000, stagger=0)
        failed = [item.error for item in run.sent if not item.ok]
        assert not failed, failed[:5]
        done += len(run.sent)
        batch += 1
        samples.append((done, rss(load_app), open_files(load_app)))
    elapsed = time.monotonic() - started
    end_rss, end_fds = samples[-1][1], samples[-1][2]
    print(f"\nsoak: {done} requests in {elapsed:.0f} s; RSS {base_rss / 2**20:.0f} -> {end_rss / 2**20:.0f} MiB "
          f"(samples {[round(s[1] / 2**20) for s in samples]}); open files {base_fds} -> {end_fds}")
    assert end_rss - base_rss < SOAK_RSS_TOLERANCE, f"RSS grew by {(end_rss - base_rss) / 2**20:.0f} MiB"
    assert end_fds - base_fds <= SOAK_FD_TOLERANCE, f"open files grew from {base_fds} to {end_fds}"
