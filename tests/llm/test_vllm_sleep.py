"""Sleep/wake never serves discarded weights (opt-in): ``pytest -m vllm`` in the vLLM environment.

vLLM has no sleep mode on CPU (its CPU worker's sleep/wake are no-ops), so a level-2 sleep is
emulated: :class:`DiscardingEngine` wraps a real engine and, after vLLM's own ``sleep(level=2)``
(which pauses the scheduler and empties the prefix cache on CPU too), overwrites every weight of
the engine with noise through vLLM's in-place reload, which is what a GPU engine holds after
waking from level 2 (memory re-mapped, content undefined). The real release of GPU memory is not
exercised here (docs/vllm.md, "What was checked where").
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save

from llm.rollout import vllm as vb
from llm.rollout.base import Generation, SamplingConfig
from llm.rollout.vllm import VLLMBackend
from test_vllm_backend import ENGINE, gap, pytestmark  # noqa: F401  (markers and helpers)

SAMPLING = SamplingConfig(max_new_tokens=12, temperature=1.0)
PROMPTS = [[1, 40, 41, 42, 43], [1, 60, 61], [1, 40, 41, 42, 50]]


class DiscardingEngine:
    """A real ``vllm.LLM`` whose level-2 sleep also destroys its weights (as on a GPU)."""

    def __init__(self, engine, shapes: dict[str, tuple[int, ...]]) -> None:
        self._engine = engine
        self._shapes = shapes
        self.discards = 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def sleep(self, level: int = 1, **kwargs):
        out = self._engine.sleep(level=level, **kwargs)
        if level == 2:
            self.discards += 1
            noise = {n: torch.randn(s, generator=torch.Generator().manual_seed(self.discards)) for n, s in self._shapes.items()}
            # through the backend's worker extension (vLLM's in-place reload, tied heads re-packed)
            self._engine.collective_rpc("teamtr_stage_weights", args=(save(noise),))
            self._engine.collective_rpc("teamtr_commit_weights")
        return out


@pytest.fixture
def sleeping_backend(tiny_model_dirs, monkeypatch):
    """One tiny-Qwen3 agent with sleep mode (level 2, asleep between calls), its engine wrapped."""
    from transformers import AutoModelForCausalLM
    from vllm.platforms import current_platform

    monkeypatch.setattr(type(current_platform), "is_sleep_mode_available", lambda self: True)
    real_kwargs = vb.engine_kwargs
    # vLLM itself refuses enable_sleep_mode on CPU: keep the backend's sleep logic, not vLLM's flag
    monkeypatch.setattr(vb, "engine_kwargs", lambda *a, **k: {key: v for key, v in real_kwargs(*a, **k).items()
                                                               if key != "enable_sleep_mode"})
    path = tiny_model_dirs["tiny_qwen3"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = dataclasses.replace(ENGINE, enable_sleep_mode=True, sleep_level=2, sleep_between_calls=True)
    with VLLMBackend([path], [[2]], config, source_models=[model]) as backend:
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        backend.engines[0] = DiscardingEngine(backend.engines[0], shapes)
        yield backend, model


def test_agent_speaking_twice_without_update_never_uses_discarded_weights(sleeping_backend):
    """Turn 1 -> level-2 sleep (weights gone) -> turn 2 of the same agent with no update in between:
    the sampler pushes nothing (the agent's version did not change), yet the log-probs must be the
    training model's."""
    backend, model = sleeping_backend
    first = backend.generate(0, PROMPTS, SAMPLING, seed=0)
    assert gap(model, PROMPTS, first, SAMPLING)[1] < 1e-4
    assert backend.engines[0].discards == 1  # slept at level 2 after the call: weights overwritten
    # the emulation really destroys the weights: the raw engine now disagrees with the model
    raw = backend.engines[0]._engine
    raw.wake_up()
    params = backend.sampling_params(0, SAMPLING, vb.request_seeds(0, len(PROMPTS)))
    outs = raw.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    garbage = [Generation(list(o.outputs[0].token_ids),
                          [step[t].logprob for step, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)], "length")
               for o in outs]
    assert gap(model, PROMPTS, garbage, SAMPLING)[1] > 1e-1
    raw.sleep(level=1)  # back to the state the backend left it in (asleep)
    second = backend.generate(0, PROMPTS, SAMPLING, seed=1)
    assert gap(model, PROMPTS, second, SAMPLING)[1] < 1e-4


def test_level2_sleep_then_wake_matches_the_training_model(sleeping_backend):
    backend, model = sleeping_backend
    backend.generate(0, PROMPTS, SAMPLING, seed=0)
    backend.wake_up(0)
    gens = backend.generate(0, PROMPTS, SAMPLING, seed=2)
    mean, worst = gap(model, PROMPTS, gens, SAMPLING)
    assert worst < 1e-4, (mean, worst)
