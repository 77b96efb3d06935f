"""Allowed-value sets used by more than one module, declared once."""

from __future__ import annotations

from trust_region.stage import ORDERS

#: model dtypes (``auto``: bfloat16 on a GPU that supports it, else float32)
DTYPES = ("float32", "bfloat16", "float16", "auto")
#: speaker schedules of :class:`llm.team.Router`
ROUTER_KINDS = ("round_robin", "fixed", "random")
#: generation backends of :func:`llm.rollout.factory.make_backend`
BACKENDS = ("hf", "vllm")
#: what to do when training and evaluation problems overlap (:mod:`llm.data.contamination`)
CONTAMINATION_POLICIES = ("error", "warn", "off")

__all__ = ["BACKENDS", "CONTAMINATION_POLICIES", "DTYPES", "ORDERS", "ROUTER_KINDS"]
