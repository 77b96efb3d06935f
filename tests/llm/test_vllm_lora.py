"""A LoRA agent end to end through vLLM (opt-in): ``pytest -m vllm`` in the vLLM environment.

Train the adapters (AdamW on the peft model), push (only the merged adapted layers and their fused
siblings go), generate with the engine, and compare its log-probs with the trained peft model's.
"""

from __future__ import annotations

import copy

import pytest
import torch

from llm.rollout.base import SamplingConfig
from llm.rollout.vllm import VLLMBackend
from test_vllm_backend import ENGINE, gap, pytestmark, sgd_steps  # noqa: F401  (markers and helpers)

SAMPLING = SamplingConfig(max_new_tokens=16, temperature=1.0)
PROMPTS = [[1, 40, 41, 42, 43, 44, 45], [1, 40, 41, 42, 50, 51], [1, 60, 61]]


def test_lora_agent_train_push_generate(tiny_model_dirs):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    path = tiny_model_dirs["tiny_qwen3"]
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.eval()
    with VLLMBackend([path], [[2]], ENGINE, source_models=[model]) as backend:
        backend.update_weights(0, model.named_parameters())  # the merged model (B = 0: the base weights)
        sampled = backend.generate(0, PROMPTS, SAMPLING, seed=0)
        assert gap(model, PROMPTS, sampled, SAMPLING)[1] < 1e-4
        before = copy.deepcopy(model)
        sgd_steps(model, PROMPTS, sampled, steps=3, lr=5e-2)  # only the adapters have gradients
        first = backend.push_stats.tensors[0]
        backend.update_weights(0, model.named_parameters())
        # q and v of both layers changed; k goes along (fused qkv_proj); nothing else is sent
        assert backend.push_stats.tensors[0] - first == 2 * 3
        gens = backend.generate(0, PROMPTS, SAMPLING, seed=1)
        mean, worst = gap(model, PROMPTS, gens, SAMPLING)
        assert worst < 1e-4, (mean, worst)
        assert gap(before, PROMPTS, gens, SAMPLING)[1] > 1e-2  # the trained adapters are what it serves
        pushes = backend.push_stats.pushes[0]
        backend.update_weights(0, model.named_parameters())  # nothing changed: nothing sent
        assert backend.push_stats.pushes[0] == pushes
