"""Generation backends behind one interface (:mod:`llm.rollout.base`).

- :class:`llm.rollout.hf.HFBackend`: transformers ``generate`` (batched, left padded, our own
  temperature/top-p processor that records the sampled tokens' log-probs); CPU or GPU.
- :class:`llm.rollout.vllm.VLLMBackend`: vLLM engines, one per agent, with in-place weight pushes
  (settings: :class:`llm.rollout.vllm_config.VLLMEngineConfig`; vLLM itself stays optional).
- :class:`llm.rollout.mixing.MixingBackend`: decoding-time geometric mixing of two models.
- :func:`llm.rollout.factory.make_backend`: the backend of a ``sampling:`` section.

Import the modules directly (``from llm.rollout.factory import make_backend``); this package does
not import them eagerly.
"""
