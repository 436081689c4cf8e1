"""A studio's GPUs as one pool (``--pool``): the engine runs as Ray Serve replicas, the UI and the API stay here.

``engine.PoolEngine`` is the front's ``Engine``; ``cluster.PoolCluster`` starts or joins Ray and deploys the
replicas; ``replica.EngineReplica`` is one replica (a ``PipelineManager`` of its own); ``wire`` is what travels
between them. Importing this package imports nothing of Ray: ``cluster`` and ``replica`` do, and only ``--pool``
imports them.
"""
