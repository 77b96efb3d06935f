"""Scale-out of an LLM team: one Ray actor group per agent, FSDP2 inside an agent.

- :mod:`~llm.distributed.config`: the ``placement`` / ``ray`` settings (per-agent num_cpus, num_gpus,
  world_size).
- :mod:`~llm.distributed.worker`: :class:`AgentWorker`, one process of an agent (model, AdamW,
  snapshots, KL reference, generation engine).
- :mod:`~llm.distributed.fsdp`: FSDP2 sharding and full (rank-0) checkpoints.
- :mod:`~llm.distributed.proxy`: the driver's stand-ins for the core's agent, optimizer and backend.
- :mod:`~llm.distributed.placement`: starting the actor groups (:func:`start_remote_team`).

Ray is optional (``pip install -e ".[distributed]"``); nothing here imports it at module level.
See docs/distributed.md.
"""
