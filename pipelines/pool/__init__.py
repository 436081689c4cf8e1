"""A studio's GPUs as one pool (``--pool``): the engine runs as Ray Serve replicas, the UI and the API stay here.

``engine.PoolEngine`` is the front's ``Engine``; ``cluster.PoolCluster`` starts or joins Ray and deploys the
replicas; ``replica.EngineReplica`` is one replica (a ``PipelineManager`` of its own); ``wire`` is what travels
between them. Importing this package imports nothing of Ray: ``cluster`` and ``replica`` do, and only ``--pool``
imports them.
"""

from __future__ import annotations

import os
from pathlib import Path


def use_cluster_token() -> None:
    """Before Ray is imported, to join a cluster: Ray's token authentication (on by default for clusters started
    with ``ray start``) needs ``RAY_AUTH_MODE=token`` in the joining process too, which Ray 2.60 reads when it is
    imported and does not set by itself although the token file (``~/.ray/auth_token``) is there. Set it when a token
    is available and the mode is unset."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
