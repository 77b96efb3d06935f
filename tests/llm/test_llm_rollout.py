"""HF generation backend, LLMAgent log-probs/gradients, TeamSampler (handoff, prefix reuse, gap)."""

from __future__ import annotations

import pytest
import torch

from llm.config.sections import AgentConfig, LoRAConfig, TeamConfig
from llm.train.config import config_from_dict
from llm.rollout.base import SamplingConfig
from llm.rollout.hf import HFBackend, apply_temperature_top_p
from llm.sampler import TeamSampler
from llm.data.tasks import load_task
from llm.team import LLMTeam


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny matrices: threads only cost time


@pytest.fixture(scope="module")
def team_and_task(tiny_run_config, tiny_model_dirs, tmp_path_factory):
    cfg = config_from_dict(tiny_run_config(tiny_model_dirs, tmp_path_factory.mktemp("run")))
    team = LLMTeam.from_config(cfg.team, temperature=1.0)
    return team, load_task(cfg.task)


def test_temperature_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.allclose(apply_temperature_top_p(logits, 2.0, 1.0), logits / 2)
    p = torch.softmax(logits, -1)[0]
    kept = torch.isfinite(apply_temperature_top_p(logits, 1.0, float(p[0] + 0.01)))[0]
    assert kept.tolist() == [True, True, False, False]
    assert torch.isfinite(apply_temperature_top_p(logits, 1.0, 1e-6))[0].tolist() == [True, False, False, False]


def test_backend_logprobs_match_training_forward(parity_grader, team_and_task):
    team, task = team_and_task
    backend = HFBackend.from_team(team)
    sampler = TeamSampler(backend, parity_grader, temperature=1.0, seed=0)
    batch = sampler.sample(team, task.problems[:2], group_size=2)
    stats = sampler.last_stats
    # measured gap between the sampler's and the recomputed log-probs (fp32, CPU)
    assert stats.logp_gap_mean_abs is not None and stats.logp_gap_max_abs < 1e-4
    assert stats.generated_messages == len(batch) == 2 * 2 * 3
    # recomputed values are what the batch holds
    for j in range(3):
        own = batch.for_agent(j)
        with torch.no_grad():
            lp = team[j].log_probs(own)
        assert torch.allclose(lp[own.mask], own.behaviour_logp[own.mask], atol=1e-6)


def test_backend_seed_eos_and_left_padding(team_and_task):
    team, _ = team_and_task
    backend = HFBackend.from_team(team)
    tok = team[0].tokenizer
    prompts = [tok("What is 1 + 1?")["input_ids"], tok("Hi")["input_ids"]]
    s = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=1.0)
    a = backend.generate(0, prompts, s, seed=7)
    b = backend.generate(0, prompts, s, seed=7)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    for g in a:
        assert len(g.token_ids) == len(g.logprobs) <= 8
        assert (g.finish_reason == "stop") == (g.token_ids[-1] in team[0].eos_token_ids)
    # nucleus of one token = greedy: batched (left padded) equals one-by-one, log-prob 0
    greedy = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6)
    together = backend.generate(0, prompts, greedy, seed=1)
    alone = [backend.generate(0, [p], greedy, seed=2)[0] for p in prompts]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert all(abs(x) < 1e-6 for g in together for x in g.logprobs)
    assert backend.counter.calls[0] == 5 and backend.counter.total_tokens > 0


def test_backend_fixed_length_masks_eos_until_the_limit(team_and_task):
    """With every token but three declared EOS, a message stops at its first token; with
    ``fixed_length`` every message has exactly max_new_tokens tokens, none of them EOS."""
    team, _ = team_and_task
    model, tok = team[0].model, team[0].tokenizer
    keep = tok("123")["input_ids"][:3]
    eos = [t for t in range(model.config.vocab_size) if t not in keep]
    prompts = [tok("What is 1 + 1?")["input_ids"], tok("Hi")["input_ids"]]
    s = SamplingConfig(max_new_tokens=5, temperature=1.0, top_p=1.0)
    try:
        free = HFBackend([model], [eos], [team[0].pad_token_id]).generate(0, prompts, s, seed=0)
        fixed = HFBackend([model], [eos], [team[0].pad_token_id], fixed_length=True).generate(0, prompts, s, seed=0)
    finally:
        HFBackend.from_team(team)  # restore the agent's own generation config (a backend sets it)
    assert [len(g.token_ids) for g in free] == [1, 1] and all(g.finish_reason == "stop" for g in free)
    assert [len(g.token_ids) for g in fixed] == [5, 5] and all(g.finish_reason == "length" for g in fixed)
    assert all(t in keep for g in fixed for t in g.token_ids)


def test_agent_log_probs_microbatch_and_gradient_isolation(parity_grader, team_and_task):
    team, task = team_and_task
    sampler = TeamSampler(HFBackend.from_team(team), parity_grader, temperature=1.0, seed=1)
    batch = sampler.sample(team, task.problems[:3], group_size=2)
    # messages of different lengths (as with early EOS), so micro-batches differ in width
    lengths = torch.arange(len(batch)) % batch.tokens.shape[1] + 1
    batch = batch.with_fields(mask=torch.arange(batch.tokens.shape[1])[None, :] < lengths[:, None])
    agent = team[1]
    own = batch.agent == 1
    agent.micro_batch_size = 1
    with torch.no_grad():
        one = agent.log_probs(batch)
    agent.micro_batch_size = 8
    full = agent.log_probs(batch)
    assert torch.allclose(one, full.detach(), atol=1e-5)
    assert bool((full.detach()[~own] == 0).all()) and bool((full.detach()[~batch.mask] == 0).all())
    for a in team:
        a.model.zero_grad(set_to_none=True)
    (full * batch.mask).sum().backward()
    assert all(p.grad is not None for p in team[1].trainable_parameters())
    assert all(p.grad is None for j in (0, 2) for p in team[j].trainable_parameters())
    team[1].model.zero_grad(set_to_none=True)


def test_gradient_checkpointing_gives_same_values_and_grads(parity_grader, tiny_model_dirs, team_and_task):
    _, task = team_and_task
    results = []
    for gc in (False, True):
        agents = (AgentConfig(name="a", model=str(tiny_model_dirs["tiny_qwen3"]), max_new_tokens=5,
                              gradient_checkpointing=gc),)
        team = LLMTeam.from_config(TeamConfig(agents=agents), temperature=1.0)
        sampler = TeamSampler(HFBackend.from_team(team), parity_grader, temperature=1.0, seed=3)
        batch = sampler.sample(team, task.problems[:2], group_size=2)
        lp = team[0].log_probs(batch)
        (lp * batch.mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in team[0].trainable_parameters()])
        results.append((lp.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4)


def test_lora_agent_trains_and_snapshots_only_adapters(parity_grader, tiny_model_dirs, team_and_task):
    _, task = team_and_task
    agents = (AgentConfig(name="a", model=str(tiny_model_dirs["tiny_qwen3"]), max_new_tokens=5,
                          lora=LoRAConfig(r=4, alpha=8)),)
    team = LLMTeam.from_config(TeamConfig(agents=agents), temperature=1.0)
    names = [n for n, _ in team[0].named_trainable_parameters()]
    assert names and all("lora_" in n for n in names)
    snap = team[0].snapshot()
    sampler = TeamSampler(HFBackend.from_team(team), parity_grader, temperature=1.0, seed=0)
    batch = sampler.sample(team, task.problems[:2], group_size=2)
    assert sampler.last_stats.logp_gap_max_abs < 1e-4
    opt = team.make_optimizers()[0]
    (-(team[0].log_probs(batch) * batch.mask).sum()).backward()
    opt.step()
    assert any(not torch.equal(p, snap[n]) for n, p in team[0].named_trainable_parameters())
    team[0].restore(snap)
    assert all(torch.equal(p, snap[n]) for n, p in team[0].named_trainable_parameters())


def test_sampler_handoff_and_prefix_reuse(parity_grader, team_and_task):
    team, task = team_and_task
    backend = HFBackend.from_team(team)
    sampler = TeamSampler(backend, parity_grader, temperature=1.0, seed=5)
    batch = sampler.sample(team, task.problems[:2], group_size=3)
    assert batch.num_trajectories == 6 and len(batch) == 18
    assert batch.turn.tolist() == [0, 1, 2] * 6 and batch.agent.tolist() == [0, 1, 2] * 6
    assert batch.group.tolist() == [0] * 9 + [1] * 9
    # turn 2's prompt (agent 3, Qwen template) holds the question and both earlier messages
    row = 2
    ctx = team[2].tokenizer.decode(batch.context[row][batch.context_mask[row]])
    p = batch.payload
    assert ctx.startswith("<|im_start|>user\n" + task.problems[0].prompt)
    assert "Previous agents' answers:\nAgent 1:\n" in ctx and "\n\nAgent 2:\n" in ctx
    # the critic (Llama) sees its own template
    ctx1 = team[1].tokenizer.decode(batch.context[1][batch.context_mask[1]])
    assert ctx1.startswith("<|system|>\nYou are a critic.</s>\n<|user|>\n")
    # returns: the grade of the last message's text, on every message of the trajectory
    for t in range(6):
        assert float(batch.returns[batch.trajectory == t][0]) == parity_grader(p.final_text(t), None).score
    assert float(batch.reward[batch.turn < 2].abs().sum()) == 0.0
    # prefix reuse from agent 1 (speaks at turn 1): turn 0 kept verbatim, turns 1-2 regenerated
    calls_before = backend.counter.total_calls
    again = sampler.resample_from(team, batch, agent=1)
    st = sampler.last_stats
    assert st.reused_messages == 6 and st.generated_messages == 12 and st.generate_calls == 2
    assert backend.counter.total_calls - calls_before == 2
    kept = again.turn == 0
    assert torch.equal(again.tokens[kept], batch.tokens[batch.turn == 0][:, : again.tokens.shape[1]])
    assert not bool(again.generated[kept].any()) and bool(again.generated[~kept].all())
    assert again.num_generated_tokens < batch.num_generated_tokens
    # from agent 0 (first speaker) everything is regenerated
    full = sampler.resample_from(team, batch, agent=0)
    assert bool(full.generated.all())


def test_sampler_pushes_changed_weights_only(parity_grader, team_and_task):
    team, task = team_and_task

    class Counting(HFBackend):
        pushed: list[int] = []

        def update_weights(self, agent, named_tensors):
            self.pushed.append(agent)

    backend = Counting.from_team(team)
    sampler = TeamSampler(backend, parity_grader, temperature=1.0, seed=0)
    sampler.mark_synced(team)
    sampler.sample(team, task.problems[:1], group_size=1)
    assert backend.pushed == []
    with torch.no_grad():
        next(iter(team[1].trainable_parameters())).add_(0.0)  # an in-place change (optimizer step)
    sampler.sample(team, task.problems[:1], group_size=1)
    sampler.sample(team, task.problems[:1], group_size=1)
    assert backend.pushed == [1]
