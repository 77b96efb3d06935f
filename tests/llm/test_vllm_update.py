"""The vLLM backend for real, standalone engines (opt-in): ``pytest -m vllm`` in the vLLM environment.

An agent update (optimizer steps on the HF copy) pushed to that agent's engine only, with the
prefix cache dropped, on the tiny Qwen3 model and on SmolLM2-135M-Instruct. See docs/vllm.md.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from llm.rollout.base import SamplingConfig
from llm.rollout.vllm import VLLMBackend
from test_vllm_backend import ENGINE, gap, pytestmark, sgd_steps  # noqa: F401  (markers and helpers)


def test_update_pushes_only_that_agents_weights(tiny_model_dirs):
    """Optimizer steps on agent 0's HF copy -> push -> agent 0's engine follows, agent 1's does not move."""
    from transformers import AutoModelForCausalLM

    paths = [tiny_model_dirs["tiny_qwen3"], tiny_model_dirs["tiny_qwen3"]]
    models = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32) for p in paths]
    greedy = SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=1e-6)
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0)
    prompts = [[1, 40, 41, 42, 43, 44, 45], [1, 40, 41, 42, 50, 51], [1, 60, 61]]  # shared prefix (prefix cache)
    configs = [ENGINE, dataclasses.replace(ENGINE, push_via="rpc")]  # both transports
    with VLLMBackend(paths, [[2], [2]], configs) as backend:
        before = [backend.generate(j, prompts, greedy, seed=0) for j in (0, 1)]
        sampled = backend.generate(0, prompts, sampling, seed=5)
        trained = copy.deepcopy(models[0])
        sgd_steps(trained, prompts, sampled, steps=3, lr=2e-2)
        backend.update_weights(0, trained.named_parameters())
        after = [backend.generate(j, prompts, greedy, seed=0) for j in (0, 1)]
        resampled = backend.generate(0, prompts, sampling, seed=5)
        # agent 0 changed: its greedy outputs and the log-probs of the same seeded samples moved
        assert [g.token_ids for g in after[0]] != [g.token_ids for g in before[0]]
        # ... and matches the updated HF model, prompts served from the (reset) prefix cache included
        assert gap(trained, prompts, resampled, sampling)[1] < 1e-4
        assert gap(models[0], prompts, resampled, sampling)[1] > 1e-2
        # agent 1 (same checkpoint, own engine) is untouched
        assert [g.token_ids for g in after[1]] == [g.token_ids for g in before[1]]
        assert [g.logprobs for g in after[1]] == [g.logprobs for g in before[1]]
        assert backend.push_stats.pushes == {0: 1}
        # the RPC transport: agent 1 takes the trained weights too and then agrees with them
        backend.update_weights(1, trained.named_parameters())
        moved = backend.generate(1, prompts, sampling, seed=5)
        assert gap(trained, prompts, moved, sampling)[1] < 1e-4
        assert gap(models[0], prompts, sampled, sampling)[1] < 1e-4  # before the push: the old weights


def test_smollm2_rollout_update_push(tmp_path):
    """SmolLM2-135M-Instruct: chat prompts, gap vs the HF model, a LoRA-free update pushed, new weights used."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models = pytest.importorskip("llm.models")
    try:
        path = models.ensure_smollm2()
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(f"SmolLM2 not available: {err}")
    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    questions = ["What is 2 + 3?", "Name a prime number larger than 10.", "What is 2 + 3?"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=False) for q in questions]
    sampling = SamplingConfig(max_new_tokens=24, temperature=0.8)
    with VLLMBackend([path], [[tok.eos_token_id]], ENGINE) as backend:
        gens = backend.generate(0, prompts, sampling, seed=1)
        mean, worst = gap(hf, prompts, gens, sampling)
        assert worst < 1e-3, (mean, worst)
        greedy = SamplingConfig(max_new_tokens=24, temperature=1.0, top_p=1e-6)
        before = backend.generate(0, prompts, greedy, seed=0)
        sgd_steps(hf, prompts, gens, steps=2, lr=1e-3)
        backend.update_weights(0, hf.named_parameters())
        after_logp = backend.generate(0, prompts, sampling, seed=1)
        assert gap(hf, prompts, after_logp, sampling)[1] < 1e-3
        after = backend.generate(0, prompts, greedy, seed=0)
        assert [g.token_ids for g in after] != [g.token_ids for g in before]
