"""The pool's parts that need no Ray cluster: what travels (wire), the pool's queue, the flags, and that nothing of
Ray is imported without ``--pool``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

import app
from pipelines.errors import AtelierError, Cancelled, InvalidRequest, ModelNotFound, QueueFull
from pipelines.pool import wire
from pipelines.pool.engine import PoolJob, PoolQueue
from pipelines.progress import ProgressEvent, ProgressState
from pipelines.request import GenerationRequest, Result
from pipelines.settings import Settings

REPO_ROOT = app.REPO_ROOT


def test_without_pool_nothing_of_ray_is_imported() -> None:
    code = ("import sys, app, api, ui, pipelines.manager, pipelines.pool, pipelines.pool.engine, pipelines.pool.wire; "
            "print([m for m in sys.modules if m == 'ray' or m.startswith('ray.')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_errors_travel_as_their_own_kind_with_their_field() -> None:
    back = wire.error_of(wire.error(ModelNotFound("No checkpoint called x.", field="checkpoint")))
    assert type(back) is ModelNotFound and back.field == "checkpoint" and str(back) == "No checkpoint called x."
    assert type(wire.error_of(wire.error(Cancelled("Stopped.")))) is Cancelled
    bug = wire.error_of(wire.error(ZeroDivisionError("division by zero")))
    assert type(bug) is AtelierError and "ZeroDivisionError" in str(bug)
    assert type(wire.error_of({"type": "SystemExit", "message": "no"})) is AtelierError  # only AtelierError kinds


def test_pictures_and_previews_travel_losslessly() -> None:
    picture = Image.effect_noise((40, 24), 60).convert("RGB")
    result = Result(images=[picture], seeds=[7], infotexts=["a cat\nSteps: 2, Seed: 7"], mode="cpu",
                    notes=["n"], checkpoint="demo", checkpoint_hash="abc")
    request = GenerationRequest.create(prompt="a cat", width=64, height=64)
    back, records = wire.result_of(wire.result(result, ["txt2img"]), request)
    assert list(back.images[0].getdata()) == list(picture.getdata())
    assert back.seeds == [7] and back.infotexts == result.infotexts and records[0]["task"] == "txt2img"
    assert back.request is request and back.notes == ["n"] and back.checkpoint_hash == "abc"
    event = ProgressEvent("replica-job", ProgressState.RUNNING, step=2, total_steps=5, preview=picture)
    copy = wire.progress_event(wire.progress(event), "front-job")
    assert copy.job_id == "front-job" and copy.step == 2 and copy.total_steps == 5
    assert list(copy.preview.getdata()) == list(picture.getdata())


class FakePool:
    """Runs each job by waiting for the test to release it; records Stop/Skip posts."""

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self.release = threading.Event()
        self.posts: list[tuple[str, str]] = []

    def run(self, job: PoolJob) -> Result:
        self.release.wait(10)
        return Result(request=job.request)


def make_queue(fake: FakePool, max_waiting: int = 10) -> PoolQueue:
    queue = PoolQueue(fake.run, lambda: max_waiting, lambda: fake.capacity,
                      lambda job_id, flag: fake.posts.append((job_id, flag)))
    queue.start()
    return queue


def request() -> GenerationRequest:
    return GenerationRequest.create(prompt="x", width=64, height=64, steps=1)


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_pool_queue_hands_out_as_many_jobs_as_replicas_and_counts_positions() -> None:
    fake = FakePool(capacity=2)
    queue = make_queue(fake)
    jobs = [queue.put(PoolJob(queue, request())) for _ in range(4)]
    wait_for(lambda: len(queue.running()) == 2)
    assert [job.position() for job in jobs] == [0, 0, 2, 3]  # two out on replicas, then two waiting behind them
    assert queue.current() is jobs[0] and queue.waiting() == 2
    assert jobs[2].progress.queue_position == 2 and jobs[2].progress.eta_s is None  # no job finished yet
    fake.release.set()
    for job in jobs:
        assert job.wait(5).request is job.request
    assert jobs[3].state == "done"
    queue.close()


def test_cancel_removes_a_waiting_job_and_posts_stop_for_a_running_one() -> None:
    fake = FakePool(capacity=1)
    queue = make_queue(fake)
    running, waiting = queue.put(PoolJob(queue, request())), queue.put(PoolJob(queue, request()))
    wait_for(lambda: queue.current() is running)
    waiting.cancel()
    with pytest.raises(Cancelled):
        waiting.wait(1)
    running.skip()
    running.cancel()
    assert fake.posts == [(running.id, "skip"), (running.id, "stop")]
    fake.release.set()
    running.wait(5)
    queue.close()


def test_a_full_pool_queue_says_so() -> None:
    fake = FakePool(capacity=0)  # nothing is handed out
    queue = make_queue(fake, max_waiting=1)
    queue.put(PoolJob(queue, request()))
    with pytest.raises(QueueFull):
        queue.put(PoolJob(queue, request()))
    fake.release.set()
    queue.close()


@pytest.mark.parametrize(("address", "replicas", "message"), [
    ("nonsense", None, "give 'auto' or the cluster's address"),
    ("auto", 0, "--pool-replicas must be 1 or more"),
])
def test_bad_pool_flags_stop_the_start_with_one_line(address, replicas, message) -> None:
    with pytest.raises(app.StartupError, match=message):
        app.build_pool_engine(Settings(), None, address, replicas, [])


def test_invalid_request_kind_is_kept_for_the_api_status() -> None:
    back = wire.error_of(wire.error(InvalidRequest("steps must be 1-150.", field="steps")))
    assert back.http_status == 422 and back.field == "steps"


def test_the_plan_gives_one_replica_per_gpu_and_shares_the_cpu_otherwise() -> None:
    pytest.importorskip("ray", reason="requirements-pool.txt is not installed")
    from pipelines.pool.cluster import plan

    assert plan(gpus=4, replicas=None, cores=16) == plan(4, None, 2)
    assert plan(4, None, 16).replicas == 4 and plan(4, None, 16).gpus
    cpu = plan(gpus=0, replicas=None, cores=8)
    assert (cpu.replicas, cpu.gpus, cpu.threads) == (2, False, 4)
    assert plan(0, 3, 2).threads == 1  # never below one thread


def test_a_replica_names_the_model_file_its_machine_cannot_see(tmp_path) -> None:
    pytest.importorskip("ray", reason="requirements-pool.txt is not installed")
    from pipelines.pool.replica import unreachable

    here = tmp_path / "seen.safetensors"
    here.write_bytes(b"x")
    assert unreachable([str(here)], "node-b") is None
    missing = unreachable([str(here), "/shared/models/checkpoints/other.safetensors"], "node-b")
    assert isinstance(missing, ModelNotFound)
    assert "node-b cannot see /shared/models/checkpoints/other.safetensors" in str(missing)
