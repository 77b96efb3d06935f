"""Generation backends behind one interface (:mod:`llm.rollout.base`).

- :class:`llm.rollout.hf.HFBackend`: transformers ``generate`` (batched, left padded, our own
  temperature/top-p processor that records the sampled tokens' log-probs); CPU or GPU.
- ``llm.rollout.vllm.VLLMBackend``: vLLM engines, one per agent, with in-place weight pushes.

Import the backend modules directly (``from llm.rollout.hf import HFBackend``); this package does
not import them eagerly so that vLLM stays optional.
"""
