"""FSDP2 inside one agent: 2 gloo workers (Ray actors) shard a tiny Qwen3 agent.

Checks: the core's unchanged ``update_agent`` on the sharded agent (through the driver proxies)
gives the same weights, log-probs and report as on the unsharded agent in this process; the rank-0
checkpoint (full safetensors + optimizer state in the local format) resumes into the local
placement, and the next update continues identically on both; and a local checkpoint loads back
into the sharded agent, again continuing identically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llm.checkpoint import atomic_save_safetensors, atomic_torch_save, load_trainable

pytest.importorskip("ray")

from llm.config.sections import AgentConfig, OptimizerConfig, TeamConfig  # noqa: E402
from llm.distributed.config import AgentResources, RaySection  # noqa: E402
from llm.distributed.placement import start_remote_team  # noqa: E402
from llm.team import LLMTeam  # noqa: E402
from trust_region.batch import MessageBatch  # noqa: E402
from trust_region.update import UpdateConfig, update_agent  # noqa: E402

SEED = 0
UPDATE = UpdateConfig(epochs=2, minibatch_size=3, delta=0.05, monitor_estimator="exact", beta=0.01,
                      max_grad_norm=0.5, recompute_behaviour_logp=True)


def random_batch(n_messages: int, vocab: int, seed: int) -> MessageBatch:
    """``n_messages`` messages of agent 0 with random contexts/tokens of varying lengths."""
    g = torch.Generator().manual_seed(seed)
    t, c = 6, 9
    lengths = torch.randint(2, t + 1, (n_messages,), generator=g)
    clen = torch.randint(3, c + 1, (n_messages,), generator=g)
    ar_t, ar_c = torch.arange(t), torch.arange(c)
    mask = ar_t[None] < lengths[:, None]
    cmask = ar_c[None] < clen[:, None]
    tokens = torch.randint(5, vocab, (n_messages, t), generator=g) * mask
    context = torch.randint(5, vocab, (n_messages, c), generator=g) * cmask
    returns = torch.randint(0, 2, (n_messages,), generator=g).float()
    return MessageBatch(
        trajectory=torch.arange(n_messages), group=torch.arange(n_messages) // 2,
        agent=torch.zeros(n_messages, dtype=torch.long), turn=torch.zeros(n_messages, dtype=torch.long),
        context=context, context_mask=cmask, tokens=tokens, mask=mask,
        behaviour_logp=torch.zeros((n_messages, t)), reward=returns, returns=returns,
        generated=torch.ones(n_messages, dtype=torch.bool),
    )


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(global ||a - b|| / ||b|| over all tensors, largest per-tensor relative difference)."""
    assert set(a) == set(b)
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in b)
    den = sum(float((b[k].double() ** 2).sum()) for k in b)
    per = max(float((a[k].double() - b[k].double()).norm() / b[k].double().norm()) for k in b)
    return math.sqrt(num / den), per


@pytest.fixture(scope="module")
def sharded(ray_cluster, tiny_qwen3_dir):
    spec = AgentConfig(name="solver", model=str(tiny_qwen3_dir), optimizer=OptimizerConfig(lr=1e-3, weight_decay=0.0),
                       micro_batch_size=2)
    team_config = TeamConfig(agents=(spec,))
    section = RaySection(default=AgentResources(num_cpus=1, world_size=2))
    remote = start_remote_team(team_config, temperature=1.0, sampling=None, seed=SEED, section=section)
    yield team_config, remote
    remote.shutdown()


def local_team(team_config: TeamConfig):
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    team = LLMTeam.from_config(team_config, temperature=1.0)
    return team, team.make_optimizers()


def one_update(agent, optimizer, batch: MessageBatch):
    adv = batch.returns - batch.returns.mean()
    return update_agent(agent, optimizer, batch, adv, UPDATE, beta=UPDATE.beta, rng=np.random.default_rng(3))


def test_sharded_update_equals_unsharded_and_resumes_into_local(sharded, tmp_path):
    team_config, remote = sharded
    agent_r, opt_r = remote.team[0], remote.optimizers[0]
    team_l, opts_l = local_team(team_config)
    agent_l, opt_l = team_l[0], opts_l[0]
    vocab = len(agent_l.tokenizer)
    batch = random_batch(5, vocab, seed=1)  # 5 rows over 2 ranks: rank 1 gets a padding row

    with torch.no_grad():
        lp_l, lp_r = agent_l.log_probs(batch), agent_r.log_probs(batch)
    assert float((lp_l - lp_r).abs().max()) <= 1e-5

    rep_l = one_update(agent_l, opt_l, batch)
    rep_r = one_update(agent_r, opt_r, batch)
    assert rep_l.n_rejected >= 1  # a rejected step (restore in the actor, lr back-off) is part of the check
    assert rep_l.n_steps == rep_r.n_steps > 0 and rep_l.n_rejected == rep_r.n_rejected
    assert rep_l.monitor == rep_r.monitor == "exact" and rep_l.kl > 0
    assert rep_r.kl == pytest.approx(rep_l.kl, rel=1e-4)  # the exact KL on the sharded model

    ckpt = tmp_path / "sharded"
    agent_r.save(str(ckpt / "w.safetensors"), str(ckpt / "o.pt"), {"agent": "solver"})
    w_r = load_file(str(ckpt / "w.safetensors"))
    w_l = {n: p.detach() for n, p in agent_l.named_trainable_parameters()}
    glob, per = rel_diff(w_r, w_l)
    print(f"FSDP2 (2 gloo ranks) vs unsharded after one update: global rel {glob:.2e}, max per-tensor rel {per:.2e}")
    assert glob <= 1e-6
    assert glob > 0 or per == 0  # measured, not skipped

    # the sharded checkpoint resumes into the local placement; one more update on both
    team_2, opts_2 = local_team(team_config)
    load_trainable(team_2[0], ckpt / "w.safetensors", "sharded checkpoint")
    opts_2[0].load_state_dict(torch.load(ckpt / "o.pt", weights_only=True))
    batch2 = random_batch(4, vocab, seed=2)
    rep_2 = one_update(team_2[0], opts_2[0], batch2)
    rep_r2 = one_update(agent_r, opt_r, batch2)
    assert rep_2.n_steps == rep_r2.n_steps
    agent_r.save(str(ckpt / "w2.safetensors"), str(ckpt / "o2.pt"))
    glob2, per2 = rel_diff(load_file(str(ckpt / "w2.safetensors")),
                           {n: p.detach() for n, p in team_2[0].named_trainable_parameters()})
    print(f"after resuming the sharded checkpoint locally + one more update: global rel {glob2:.2e}, "
          f"max per-tensor rel {per2:.2e}")
    assert glob2 <= 1e-6

    # and back: the local agent's checkpoint (local format) loads into the sharded agent
    atomic_save_safetensors(ckpt / "w3.safetensors", dict(team_2[0].named_trainable_parameters()))
    atomic_torch_save(ckpt / "o3.pt", opts_2[0].state_dict())
    agent_r.load(str(ckpt / "w3.safetensors"), str(ckpt / "o3.pt"))
    batch3 = random_batch(3, vocab, seed=3)
    rep_3, rep_r3 = one_update(team_2[0], opts_2[0], batch3), one_update(agent_r, opt_r, batch3)
    assert rep_3.n_steps == rep_r3.n_steps and rep_3.n_rejected == rep_r3.n_rejected
    agent_r.save(str(ckpt / "w4.safetensors"), str(ckpt / "o4.pt"))
    glob3, per3 = rel_diff(load_file(str(ckpt / "w4.safetensors")),
                           {n: p.detach() for n, p in team_2[0].named_trainable_parameters()})
    print(f"local checkpoint resumed into the sharded agent + one more update: global rel {glob3:.2e}, "
          f"max per-tensor rel {per3:.2e}")
    assert glob3 <= 1e-6
