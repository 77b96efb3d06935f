"""Fixtures of the trust-region core tests: a tiny synthetic team (no tables from ``occupancy``, no LLMs).

Fixtures: ``single_thread`` (autouse: one intra-op thread) and ``make_team`` (the factory
:func:`make_toy_team` below: ``make_team(n_agents=3, ...) -> (team, optimizers, sampler, prompt_source)``).

Team: ``n_agents`` agents speak round robin for ``n_turns`` turns (agent = turn % n_agents). Each
message has ``msg_len`` tokens from a vocabulary of ``vocab`` symbols. The context of turn t is a
state id s = ((prompt * n_turns) + t) * vocab + (first token of the previous message, 0 at t = 0).
Every agent is a softmax table logits[s, position, token] (tokens are independent given the state),
so per-token log-probs are exact and cheap. The team return is the fraction of messages whose first
token equals ``prompt % vocab``; it is given as the reward of the last message.
"""

from __future__ import annotations

from typing import Any, Sequence

import pytest
import torch
from torch import Tensor

from trust_region.batch import MessageBatch
from trust_region.kl import categorical_kl


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Every test of this folder runs on one torch thread (``single_thread`` of tests/conftest.py)."""
    yield


class ToyAgent(torch.nn.Module):
    """Softmax table logits[state, position, token]; offers the exact per-position KL."""

    def __init__(self, agent_id: int, n_states: int, msg_len: int, vocab: int, seed: int = 0, scale: float = 0.3):
        super().__init__()
        self.agent_id = agent_id
        g = torch.Generator().manual_seed(1000 + 17 * agent_id + seed)
        self.logits = torch.nn.Parameter(scale * torch.randn(n_states, msg_len, vocab, generator=g))

    def dist_logp(self, states: Tensor) -> Tensor:
        """(B, L, V) log-probs of every token at every position for states (B,)."""
        return torch.log_softmax(self.logits[states], dim=-1)

    def log_probs(self, batch: MessageBatch) -> Tensor:
        logp = self.dist_logp(batch.context[:, 0])  # (M, L, V)
        t = batch.tokens.shape[1]
        return torch.gather(logp[:, :t, :], 2, batch.tokens[:, :, None].clamp(min=0)).squeeze(2)

    def trainable_parameters(self):
        return [self.logits]

    def kl_reference(self, batch: MessageBatch) -> Tensor:
        return self.logits.detach().clone()

    def exact_kl(self, batch: MessageBatch, reference: Tensor, direction: str = "reverse") -> Tensor:
        """(M, T) exact KL over the vocabulary at every position (tokens are independent given the state)."""
        states, t = batch.context[:, 0], batch.tokens.shape[1]
        ref = torch.log_softmax(reference[states], dim=-1)[:, :t]
        return categorical_kl(ref, self.dist_logp(states).detach()[:, :t], direction)

    def snapshot(self) -> Tensor:
        return self.logits.detach().clone()

    def restore(self, snapshot: Tensor) -> None:
        with torch.no_grad():
            self.logits.copy_(snapshot)


class ToySampler:
    """Team rollouts of the toy team; counts ``sample`` and ``resample_from`` calls."""

    def __init__(self, n_agents: int, n_turns: int, msg_len: int, vocab: int, n_prompts: int, seed: int = 0,
                 on_call=None):
        self.n_agents, self.n_turns, self.msg_len, self.vocab, self.n_prompts = n_agents, n_turns, msg_len, vocab, n_prompts
        self.gen = torch.Generator().manual_seed(seed)
        self.sample_calls = 0
        self.resample_calls = 0
        self.resample_agents: list[int] = []
        self.on_call = on_call
        self._next_traj = 0

    @property
    def n_states(self) -> int:
        return self.n_prompts * self.n_turns * self.vocab

    def state(self, prompt: int, turn: int, prev: int) -> int:
        return ((prompt * self.n_turns) + turn) * self.vocab + prev

    def _message(self, team, prompt: int, turn: int, prev: int) -> dict[str, Any]:
        agent = turn % self.n_agents
        s = self.state(prompt, turn, prev)
        with torch.no_grad():
            logp = team[agent].dist_logp(torch.tensor([s]))[0]  # (L, V)
        tok = torch.multinomial(logp.exp(), 1, generator=self.gen).squeeze(1)  # (L,)
        return dict(agent=agent, turn=turn, state=s, tokens=tok, logp=logp.gather(1, tok[:, None]).squeeze(1),
                    generated=True)

    def _finish(self, team, prompt: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        while len(rows) < self.n_turns:
            prev = int(rows[-1]["tokens"][0]) if rows else 0
            rows.append(self._message(team, prompt, len(rows), prev))
        target = prompt % self.vocab
        ret = sum(float(int(r["tokens"][0]) == target) for r in rows) / len(rows)
        for k, r in enumerate(rows):
            r["reward"] = ret if k == len(rows) - 1 else 0.0
            r["return"] = ret
        return rows

    def _to_batch(self, trajs: list[tuple[int, int, list[dict[str, Any]]]]) -> MessageBatch:
        cols: dict[str, list] = {k: [] for k in ("trajectory", "group", "agent", "turn", "context", "tokens",
                                                 "logp", "reward", "returns", "generated", "prompt")}
        for tid, group, rows in trajs:
            for r in rows:
                cols["trajectory"].append(tid)
                cols["group"].append(group)
                cols["agent"].append(r["agent"])
                cols["turn"].append(r["turn"])
                cols["context"].append([r["state"]])
                cols["tokens"].append(r["tokens"])
                cols["logp"].append(r["logp"])
                cols["reward"].append(r["reward"])
                cols["returns"].append(r["return"])
                cols["generated"].append(r["generated"])
        tokens = torch.stack(cols["tokens"]).to(torch.int64)
        return MessageBatch(
            trajectory=torch.tensor(cols["trajectory"], dtype=torch.int64),
            group=torch.tensor(cols["group"], dtype=torch.int64),
            agent=torch.tensor(cols["agent"], dtype=torch.int64),
            turn=torch.tensor(cols["turn"], dtype=torch.int64),
            context=torch.tensor(cols["context"], dtype=torch.int64),
            context_mask=torch.ones(len(cols["context"]), 1, dtype=torch.bool),
            tokens=tokens,
            mask=torch.ones_like(tokens, dtype=torch.bool),
            behaviour_logp=torch.stack(cols["logp"]).to(torch.float32),
            reward=torch.tensor(cols["reward"], dtype=torch.float32),
            returns=torch.tensor(cols["returns"], dtype=torch.float32),
            generated=torch.tensor(cols["generated"], dtype=torch.bool),
            payload=None,
        )

    def sample(self, team: Sequence[ToyAgent], prompts: Sequence[int], group_size: int) -> MessageBatch:
        self.sample_calls += 1
        if self.on_call is not None:
            self.on_call("sample", team)
        trajs = []
        tid = 0
        for g, p in enumerate(prompts):
            for _ in range(group_size):
                trajs.append((tid, g, self._finish(team, int(p), [])))
                tid += 1
        return self._to_batch(trajs)

    def resample_from(self, team: Sequence[ToyAgent], batch: MessageBatch, agent: int) -> MessageBatch:
        """Keep each trajectory up to (excluding) the first turn of ``agent``, regenerate the rest."""
        self.resample_calls += 1
        self.resample_agents.append(agent)
        if self.on_call is not None:
            self.on_call("resample_from", team)
        trajs = []
        for tid in torch.unique(batch.trajectory).tolist():
            rows_idx = (batch.trajectory == tid).nonzero().squeeze(1)
            group = int(batch.group[rows_idx[0]])
            first_state = int(batch.context[rows_idx[0], 0])
            prompt = first_state // (self.n_turns * self.vocab)
            kept = []
            for r in rows_idx.tolist():
                if int(batch.agent[r]) == agent:
                    break
                kept.append(dict(agent=int(batch.agent[r]), turn=int(batch.turn[r]), state=int(batch.context[r, 0]),
                                 tokens=batch.tokens[r].clone(), logp=batch.behaviour_logp[r].clone(), generated=False))
            trajs.append((tid, group, self._finish(team, prompt, kept)))
        return self._to_batch(trajs)


def make_toy_team(n_agents: int = 3, n_turns: int | None = None, msg_len: int = 2, vocab: int = 3, n_prompts: int = 4,
              seed: int = 0, lr: float = 0.1, optimizer: str = "adam", on_call=None):
    """(team, optimizers, sampler, prompt_source) of the toy setting."""
    n_turns = n_agents if n_turns is None else n_turns
    sampler = ToySampler(n_agents, n_turns, msg_len, vocab, n_prompts, seed=seed, on_call=on_call)
    team = [ToyAgent(j, sampler.n_states, msg_len, vocab, seed=seed) for j in range(n_agents)]
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
    optimizers = [opt_cls(a.trainable_parameters(), lr=lr) for a in team]

    def prompt_source(n: int) -> list[int]:
        return [k % n_prompts for k in range(n)]

    return team, optimizers, sampler, prompt_source


@pytest.fixture
def make_team():
    """The toy-team factory :func:`make_toy_team`."""
    return make_toy_team
