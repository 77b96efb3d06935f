"""LLMAgent's exact full-vocabulary KL (issue 13): brute force from explicit softmax to 1e-6, >= 0,
both directions; the trust region holds on it (property test); the LoRA reference is the adapters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm.agent import LLMAgent
from trust_region.advantage import AdvantageConfig, compute_advantages
from trust_region.batch import MessageBatch
from trust_region.interfaces import supports_exact_kl
from trust_region.kl import per_message
from trust_region.update import UpdateConfig, update_agent


def _agent(path, temperature=0.8, micro=3, lora=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    return LLMAgent(0, "a", model, AutoTokenizer.from_pretrained(path), temperature=temperature, micro_batch_size=micro)


def _batch(m=7, seed=0, agents=None):
    """Random messages of varied length (1..5 tokens) after contexts of varied length (3..8)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 6, (m,), generator=g)
    clens = torch.randint(3, 9, (m,), generator=g)
    mask = torch.arange(5)[None] < lens[:, None]
    cmask = torch.arange(8)[None] < clens[:, None]
    tokens = torch.where(mask, torch.randint(10, 300, (m, 5), generator=g), 0)
    context = torch.where(cmask, torch.randint(10, 300, (m, 8), generator=g), 0)
    agent = torch.zeros(m, dtype=torch.long) if agents is None else torch.tensor(agents)
    return MessageBatch(trajectory=torch.arange(m), group=torch.arange(m) // 2, agent=agent,
                        turn=torch.zeros(m, dtype=torch.long), context=context, context_mask=cmask, tokens=tokens,
                        mask=mask, behaviour_logp=torch.zeros(m, 5), reward=torch.zeros(m),
                        returns=torch.rand(m, generator=g), generated=torch.ones(m, dtype=torch.bool))


def _perturb(agent, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agent.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _brute(agent, batch, reference, direction):
    """Per-position KL (M, T) from explicit float64 softmax distributions, one unpadded sequence
    at a time (no batching, no chunking)."""
    out = torch.zeros(batch.tokens.shape, dtype=torch.float64)

    def dists(i):
        c = batch.context[i][batch.context_mask[i]]
        ids = torch.cat([c, batch.tokens[i][batch.mask[i]]])[None]
        with torch.no_grad():
            logits = agent.model(input_ids=ids).logits[0].double() / agent.temperature
        n = int(batch.mask[i].sum())
        return torch.softmax(logits[len(c) - 1 : len(c) - 1 + n], dim=-1)

    for i in range(len(batch)):
        if int(batch.agent[i]) != agent.agent_id:
            continue
        cur = dists(i)
        with agent.swapped_parameters(reference):
            ref = dists(i)
        p, q = (ref, cur) if direction == "reverse" else (cur, ref)
        out[i, : len(p)] = (p * (p.log() - q.log())).sum(-1)
    return out


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_exact_kl_matches_brute_force(tiny_qwen3_dir, direction):
    agent = _agent(tiny_qwen3_dir)
    agent.kl_chunk_positions = 2  # several chunks per micro-batch
    assert supports_exact_kl(agent)
    batch = _batch(agents=[0, 1, 0, 0, 1, 0, 0])  # other agents' rows are 0
    ref = agent.kl_reference(batch)
    before = [p.detach().clone() for p in agent.trainable_parameters()]
    assert float(agent.exact_kl(batch, ref, direction).abs().max()) == 0.0  # same parameters: exactly 0
    _perturb(agent, 0.05, seed=1)
    kl = agent.exact_kl(batch, ref, direction)
    brute = _brute(agent, batch, ref, direction)
    assert kl.shape == batch.tokens.shape and kl.dtype == torch.float64
    assert float((kl - brute).abs().max()) < 1e-6
    assert bool((kl >= 0).all()) and float(kl[batch.agent == 0][batch.mask[batch.agent == 0]].min()) > 0
    assert bool((kl[batch.agent == 1] == 0).all()) and bool((kl[~batch.mask] == 0).all())
    # the swap is undone: the agent computes with its current parameters again
    assert not all(torch.equal(a, b) for a, b in zip(agent.trainable_parameters(), before))
    assert torch.equal(agent.exact_kl(batch, agent.kl_reference(batch), direction), torch.zeros_like(kl))


@pytest.mark.parametrize("seed, delta", [(0, 0.02), (1, 0.1), (2, 0.5)])
def test_property_every_accepted_llm_update_is_inside_delta(tiny_qwen3_dir, seed, delta):
    """Adam with a large learning rate on the tiny model: the exact full-vocabulary KL on the batch
    contexts (recomputed by brute force) of the accepted update is <= delta."""
    agent = _agent(tiny_qwen3_dir, micro=4)
    batch = _batch(m=8, seed=seed)
    ref = agent.kl_reference(batch)
    adv = compute_advantages(batch, 0, AdvantageConfig())
    opt = torch.optim.Adam(agent.trainable_parameters(), lr=3e-2)
    rep = update_agent(agent, opt, batch, adv, UpdateConfig(delta=delta, epochs=3, minibatch_size=4),
                       rng=np.random.default_rng(seed))
    true = float(per_message(_brute(agent, batch, ref, "reverse"), batch.mask).mean())
    assert rep.monitor == "exact"
    assert true <= delta + 1e-6, (true, rep.kl)
    assert rep.kl == pytest.approx(true, abs=1e-6)
    assert rep.n_rejected > 0 or rep.n_steps == 6  # the check acted, or every step was inside


def test_lora_reference_is_the_adapters_only(tiny_qwen3_dir):
    agent = _agent(tiny_qwen3_dir, lora=True)
    ref = agent.kl_reference(_batch())
    ref_numel = sum(t.numel() for t in ref.values())
    model_numel = sum(p.numel() for p in agent.model.parameters())
    assert ref_numel == sum(p.numel() for p in agent.trainable_parameters())
    assert ref_numel < 0.1 * model_numel  # the reference does not double the agent's memory
    batch = _batch()
    _perturb(agent, 0.2, seed=0)
    kl = agent.exact_kl(batch, ref, "reverse")
    assert float((kl - _brute(agent, batch, ref, "reverse")).abs().max()) < 1e-6 and float(kl.max()) > 0


def test_exact_kl_restores_parameters_after_an_error(tiny_qwen3_dir):
    agent = _agent(tiny_qwen3_dir)
    ref = agent.kl_reference(_batch())
    _perturb(agent, 0.05, seed=0)
    current = {n: p.data_ptr() for n, p in agent.named_trainable_parameters()}
    with pytest.raises(RuntimeError):
        with agent.swapped_parameters(ref):
            raise RuntimeError("boom")
    assert all(p.data_ptr() == current[n] for n, p in agent.named_trainable_parameters())
    with pytest.raises(ValueError, match="reference"):
        agent.exact_kl(_batch(), {"nope": torch.zeros(1)})
    assert math.isfinite(float(agent.exact_kl(_batch(), ref).sum()))
