"""The Ray side of the pool: start or join a Ray cluster, deploy the engine replicas, talk to them.

* ``--pool auto``: a Ray head in this process's machine (``ray.init``), one replica per local GPU, or
  ``--pool-replicas N`` on a machine without one (each with its share of the CPU threads);
* ``--pool ray://HOST:PORT`` (Ray Client) or ``--pool HOST:PORT`` (this machine is a node of that cluster): join it;
  one replica per GPU of the cluster, and more as GPUs join (``refresh``).

The replicas are one Serve deployment (``replica.EngineReplica``, ``max_ongoing_requests=1``: a replica runs one job
at a time); no HTTP proxy is started (the front process serves the UI and the API). Stop and Skip reach a replica
through the board, a small Ray actor the replicas read while they run a job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

from ..settings import physical_cores
from .replica import EngineReplica

log = logging.getLogger(__name__)

APP = "atelier"
DEPLOYMENT = "engine"
BOARD = "atelier-board"
NAMESPACE = "atelier"
REPO_ROOT = Path(__file__).resolve().parents[2]

# What a lost replica looks like from the front: its process died, or its node went, mid-job or before it began
REPLICA_LOST = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)


@ray.remote(num_cpus=0)
class PoolBoard:
    """Stop and Skip for jobs running on replicas: the front posts, the replica running the job takes."""

    def __init__(self) -> None:
        self.flags: dict[str, list[str]] = {}

    def post(self, job_id: str, flag: str) -> None:
        self.flags.setdefault(job_id, []).append(flag)

    def take(self, job_id: str) -> list[str]:
        return self.flags.pop(job_id, [])


@dataclass(frozen=True)
class PoolPlan:
    """How many replicas, and what each one gets."""

    replicas: int
    gpus: bool  # one GPU per replica (else CPU threads)
    threads: int  # CPU threads per replica (0: the replica's own default)


def plan(gpus: int, replicas: int | None, cores: int) -> PoolPlan:
    """One replica per GPU; without GPUs ``replicas`` (default 2) sharing the CPU cores, one thread at least each."""
    if gpus > 0:
        return PoolPlan(replicas or gpus, True, 0)
    count = max(1, replicas or 2)
    return PoolPlan(count, False, max(1, cores // count))


class PoolCluster:
    """The Ray cluster as the front process uses it: ``start``, ``stream`` a job, ``post`` Stop/Skip, ``close``."""

    def __init__(self, address: str, replicas: int | None, replica_config: dict[str, Any]):
        self.address = address
        self.asked_replicas = replicas
        self.replica_config = replica_config
        self.plan: PoolPlan | None = None
        self.handle: Any = None
        self.board: Any = None
        self.started_ray = False

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> PoolPlan:
        """Start or join Ray, then deploy the replicas and wait until they are up. Returns the plan."""
        runtime_env = {"env_vars": {
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "DIFFUSERS_NO_ADVISORY_WARNINGS": "1",
        }}
        if self.address == "auto":
            gpus = _local_gpus()
            self.plan = plan(gpus, self.asked_replicas, physical_cores())
            cpus = max(physical_cores(), self.plan.replicas * max(1, self.plan.threads))
            ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, namespace=NAMESPACE,
                     runtime_env=runtime_env, log_to_driver=True, configure_logging=False)
            self.started_ray = True
        else:
            ray.init(address=self.address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=True,
                     configure_logging=False)
            resources = ray.cluster_resources()
            self.plan = plan(int(resources.get("GPU", 0)), self.asked_replicas, int(resources.get("CPU", 1)))
        serve.start(proxy_location="Disabled")
        self.board = PoolBoard.options(name=BOARD, get_if_exists=True).remote()
        self._deploy(self.plan.replicas)
        return self.plan

    def _deploy(self, replicas: int) -> None:
        assert self.plan is not None
        actor = {"num_gpus": 1, "num_cpus": 1} if self.plan.gpus else {"num_cpus": max(1, self.plan.threads)}
        config = {**self.replica_config, "threads": self.plan.threads}
        deployment = serve.deployment(
            EngineReplica, name=DEPLOYMENT, num_replicas=replicas, max_ongoing_requests=1,
            ray_actor_options=actor, health_check_period_s=2, health_check_timeout_s=60,
            graceful_shutdown_timeout_s=5,
        )
        self.handle = serve.run(deployment.bind(config), name=APP, route_prefix=None,
                                logging_config={"enable_access_log": False})

    def refresh(self) -> None:
        """A GPU pool follows the cluster: a GPU node that joined gets a replica at once."""
        if self.plan is None or not self.plan.gpus or self.asked_replicas:
            return
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus > self.plan.replicas:
            log.info("Pool: %d GPUs in the cluster now; starting %d more replica(s).", gpus, gpus - self.plan.replicas)
            self.plan = PoolPlan(gpus, True, 0)
            self._deploy(gpus)

    def close(self) -> None:
        """Stop the replicas; stop Ray when this process started it."""
        try:
            serve.delete(APP)
            if self.started_ray:
                serve.shutdown()
        except Exception as exc:  # shutting down anyway
            log.warning("Pool: stopping the replicas: %s", exc)
        if ray.is_initialized():
            ray.shutdown()

    # --- jobs -----------------------------------------------------------------------------------------------
    def stream(self, job: dict[str, Any], checkpoint: str | None) -> Iterator[dict[str, Any]]:
        """Send one job (``wire``'s messages come back) to a replica: one holding ``checkpoint`` when one is free."""
        options: dict[str, Any] = {"multiplexed_model_id": checkpoint} if checkpoint else {}
        job = {**job, "board": self.board}
        if self.address.startswith("ray://"):  # Ray Client cannot stream: the messages come when the job ends
            return iter(self.handle.options(**options).run.remote(job).result())
        return iter(self.handle.options(stream=True, **options).generate.remote(job))

    def post(self, job_id: str, flag: str) -> None:
        """Stop ("stop") or Skip ("skip") a job where it runs."""
        self.board.post.remote(job_id, flag)

    def running_replicas(self) -> int:
        """Replicas up now (Serve restarts one that died; it counts again when it is back)."""
        try:
            app = serve.status().applications.get(APP)
            states = app.deployments[DEPLOYMENT].replica_states if app is not None else {}
        except Exception:
            return self.plan.replicas if self.plan else 1
        return int(states.get("RUNNING", 0))


def _local_gpus() -> int:
    """NVIDIA GPUs on this machine (what the replicas may claim); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0

