"""TeamSampler: team rollouts of an LLMTeam as MessageBatch (the core's Sampler protocol).

A trajectory is one problem answered by ``rounds * n`` turns; the router fixes who speaks at each
turn; each turn's prompt is built by the text handoff (:mod:`llm.handoff`) in the speaker's chat
template; the last turn's text is graded once (terminal reward, return = score, undiscounted).

Turns are generated in lock step: at turn t all trajectories whose speaker is agent j go to
``backend.generate(j, ...)`` as one batch, so a sample call costs at most ``turns * n`` generate
calls (``turns`` with a fixed or round-robin-free schedule).

Log-probs: the backend reports the sampler's log-probs; with ``recompute_logprobs`` (default) each
agent's training forward pass recomputes them for the newly generated messages, the gap between the
two is measured (``last_stats``) and the *recomputed* values are stored as ``behaviour_logp``.

Prefix reuse (:meth:`TeamSampler.resample_from`): turns before the first turn of the given agent
are kept (``generated=False``), the rest regenerated with the current team; trajectories in which
that agent never speaks are kept whole (and not re-graded).

Seeds: every random draw (router permutations, generation seeds) comes from ``self.rng``, a numpy
Generator whose state is part of :meth:`state_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from llm.handoff import render_prompt
from llm.rewards.base import Grade, Problem
from llm.rollout.base import Generation, GenerationBackend, SamplingConfig
from trust_region.batch import MessageBatch


@dataclass
class RolloutPayload:
    """LLM-side data of a batch, keyed by trajectory id (robust to ``MessageBatch.select``)."""

    problems: dict[int, Problem]
    schedules: dict[int, list[int]]
    texts: dict[tuple[int, int], str]
    finish: dict[tuple[int, int], str]
    grades: dict[int, Grade]

    def final_text(self, traj: int) -> str:
        return self.texts[(traj, len(self.schedules[traj]) - 1)]


@dataclass
class SampleStats:
    """Cost and log-prob gap of one sample / resample_from call."""

    generate_calls: int = 0
    generated_messages: int = 0
    generated_tokens: int = 0
    reused_messages: int = 0
    reused_tokens: int = 0
    logp_gap_mean_abs: float | None = None  # mean |sampled - recomputed| per token
    logp_gap_max_abs: float | None = None
    logp_gap_mean: float | None = None  # mean (sampled - recomputed) per token
    logp_gap_message_mean_abs: float | None = None  # mean |sum over the message| per message
    mean_score: float = 0.0
    parsed_rate: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class _Row:
    traj: int
    group: int
    agent: int
    turn: int
    context: list[int]
    tokens: list[int]
    logp: list[float]
    generated: bool


class TeamSampler:
    """Sampler for :func:`trust_region.stage.run_stage` over an :class:`llm.team.LLMTeam`.

    - ``backend``: a GenerationBackend serving the team's agents (e.g. :class:`llm.rollout.hf.HFBackend`).
    - ``grader``: ``grader(response, problem) -> Grade`` (e.g. ``Task.grader``).
    - ``temperature``/``top_p``: sampling settings (the agents' ``temperature`` must match).
    - ``max_new_tokens``: token limit of every message (None: each agent's own limit).
    - ``progress``: a tqdm bar of the messages (and tokens) generated inside each rollout.
    """

    def __init__(
        self,
        backend: GenerationBackend,
        grader: Callable[[str, Problem], Grade],
        temperature: float = 0.8,
        top_p: float = 1.0,
        seed: int = 0,
        recompute_logprobs: bool = True,
        max_new_tokens: int | None = None,
        progress: bool = False,
    ) -> None:
        SamplingConfig(temperature=temperature, top_p=top_p)  # validates
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self.backend = backend
        self.grader = grader
        self.temperature = temperature
        self.top_p = top_p
        self.recompute_logprobs = recompute_logprobs
        self.rng = np.random.default_rng(seed)
        self.last_stats = SampleStats()
        self.history: list[SampleStats] = []
        self._synced: dict[int, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ state for resuming
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    # ------------------------------------------------------------------ Sampler protocol
    def sample(self, team: Sequence[Any], prompts: Sequence[Problem], group_size: int) -> MessageBatch:
        """``group_size`` fresh team trajectories per problem; group id = problem's position."""
        if group_size < 1:
            raise ValueError(f"TeamSampler.sample: group_size must be >= 1, got {group_size}")
        if not prompts:
            raise ValueError("TeamSampler.sample: no prompts")
        router = team.router
        schedules = [[router.schedule(r, s, self.rng) for s in range(group_size)] for r in range(len(prompts))]
        return self.rollout(team, prompts, schedules)

    def rollout(self, team: Sequence[Any], prompts: Sequence[Problem],
                schedules: Sequence[Sequence[list[int]]]) -> MessageBatch:
        """Fresh trajectories with the given speaker schedules: ``schedules[r][s]`` (agent indices,
        one per turn) is trajectory ``r * G + s`` of problem r (its group). Used by :meth:`sample`
        and by the evaluation's chain protocol."""
        problems, scheds, groups = {}, {}, {}
        for r, problem in enumerate(prompts):
            for s, schedule in enumerate(schedules[r]):
                traj = r * len(schedules[r]) + s
                problems[traj] = problem
                scheds[traj] = list(schedule)
                groups[traj] = r
        payload = RolloutPayload(problems, scheds, {}, {}, {})
        start = {traj: 0 for traj in problems}
        return self._rollout(team, payload, groups, start, kept=[])

    def resample_from(self, team: Sequence[Any], batch: MessageBatch, agent: int) -> MessageBatch:
        """Keep every trajectory up to (excluding) ``agent``'s first turn; regenerate the rest."""
        payload = batch.payload
        if not isinstance(payload, RolloutPayload):
            raise ValueError("TeamSampler.resample_from needs a batch produced by TeamSampler (payload missing)")
        trajs = batch.trajectory.tolist()
        groups = {t: g for t, g in zip(trajs, batch.group.tolist())}
        start = {}
        for traj in groups:
            sched = payload.schedules[traj]
            start[traj] = sched.index(agent) if agent in sched else len(sched)
        kept_idx = [i for i, (t, u) in enumerate(zip(trajs, batch.turn.tolist())) if u < start[t]]
        kept = [self._row_from_batch(batch, i) for i in kept_idx]
        new_payload = RolloutPayload(
            dict(payload.problems),
            dict(payload.schedules),
            {k: v for k, v in payload.texts.items() if k[1] < start[k[0]]},
            {k: v for k, v in payload.finish.items() if k[1] < start[k[0]]},
            {t: g for t, g in payload.grades.items() if start[t] >= len(payload.schedules[t])},
        )
        return self._rollout(team, new_payload, groups, start, kept)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _row_from_batch(batch: MessageBatch, i: int) -> _Row:
        return _Row(
            traj=int(batch.trajectory[i]), group=int(batch.group[i]), agent=int(batch.agent[i]),
            turn=int(batch.turn[i]), context=batch.context[i][batch.context_mask[i]].tolist(),
            tokens=batch.tokens[i][batch.mask[i]].tolist(), logp=batch.behaviour_logp[i][batch.mask[i]].tolist(),
            generated=False,
        )

    def mark_synced(self, team: Sequence[Any]) -> None:
        """Record that the backend already holds every agent's current weights (e.g. a backend that
        loaded or pushed them at construction), so the next sample pushes nothing."""
        self._synced = {j: team[j].version() for j in range(len(team))}

    def _sync_weights(self, team: Sequence[Any], agent: int) -> None:
        """Push agent ``agent``'s weights to the backend if they changed since the last push
        (detected through the in-place version counters of its trainable parameters)."""
        version = team[agent].version()
        if self._synced.get(agent) != version:
            self.backend.update_weights(agent, team[agent].model.named_parameters())
            self._synced[agent] = version

    def _prompt_ids(self, team: Sequence[Any], payload: RolloutPayload, traj: int, turn: int) -> list[int]:
        speaker = team[payload.schedules[traj][turn]]
        previous = [
            (payload.schedules[traj][u], team[payload.schedules[traj][u]].name, payload.texts[(traj, u)])
            for u in range(turn)
        ]
        user = team.protocol.user_message(payload.problems[traj].prompt, previous)
        return render_prompt(speaker.tokenizer, speaker.system_prompt, user, speaker.chat_template_kwargs)

    def _rollout(
        self,
        team: Sequence[Any],
        payload: RolloutPayload,
        groups: dict[int, int],
        start: dict[int, int],
        kept: list[_Row],
    ) -> MessageBatch:
        stats = SampleStats(reused_messages=len(kept), reused_tokens=sum(len(r.tokens) for r in kept))
        rows = list(kept)
        max_turns = max(len(s) for s in payload.schedules.values())
        todo = sum(max(0, len(payload.schedules[t]) - start[t]) for t in groups)
        bar = tqdm(total=todo, desc="rollout", unit="msg", leave=False, disable=not self.progress)
        for turn in range(max_turns):
            by_agent: dict[int, list[int]] = {}
            for traj in sorted(groups):
                sched = payload.schedules[traj]
                if start[traj] <= turn < len(sched):
                    by_agent.setdefault(sched[turn], []).append(traj)
            requests = []  # this turn's generate calls (independent: prompts depend on earlier turns only)
            for agent, trajs in sorted(by_agent.items()):
                self._sync_weights(team, agent)
                prompts = [self._prompt_ids(team, payload, t, turn) for t in trajs]
                sampling = SamplingConfig(max_new_tokens=self.max_new_tokens or team[agent].max_new_tokens,
                                          temperature=self.temperature, top_p=self.top_p)
                seed = int(self.rng.integers(0, 2**62))
                requests.append((agent, trajs, prompts, sampling, seed))
            results = self._generate_turn([(a, p, s, seed) for a, _, p, s, seed in requests])
            for (agent, trajs, prompts, _, _), gens in zip(requests, results):
                stats.generate_calls += 1
                tok = team[agent].tokenizer
                for traj, prompt, gen in zip(trajs, prompts, gens):
                    payload.texts[(traj, turn)] = tok.decode(gen.token_ids, skip_special_tokens=True)
                    payload.finish[(traj, turn)] = gen.finish_reason
                    rows.append(_Row(traj, groups[traj], agent, turn, prompt, list(gen.token_ids),
                                     list(gen.logprobs), True))
                    stats.generated_messages += 1
                    stats.generated_tokens += len(gen.token_ids)
                bar.update(len(trajs))
                bar.set_postfix(tokens=stats.generated_tokens, refresh=False)
        bar.close()
        # grade the trajectories whose last turn was (re)generated
        for traj in groups:
            if traj not in payload.grades:
                payload.grades[traj] = self.grader(payload.final_text(traj), payload.problems[traj])
        batch = self._to_batch(rows, payload)
        if self.recompute_logprobs:
            batch = self._recompute(team, batch, stats)
        grades = [payload.grades[t] for t in groups]
        stats.mean_score = float(np.mean([g.score for g in grades]))
        stats.parsed_rate = float(np.mean([g.parsed for g in grades]))
        self.last_stats = stats
        self.history.append(stats)
        return batch

    def _generate_turn(self, requests: list[tuple[int, list[list[int]], SamplingConfig, int]]) -> list[list[Generation]]:
        """The generate calls ``(agent, prompts, sampling, seed)`` of one turn, in order. A backend
        with ``generate_many`` (the Ray placement: one actor per agent) runs them concurrently."""
        many = getattr(self.backend, "generate_many", None)
        if callable(many):
            return many(requests)
        return [self.backend.generate(a, p, s, seed=seed) for a, p, s, seed in requests]

    @staticmethod
    def _to_batch(rows: list[_Row], payload: RolloutPayload) -> MessageBatch:
        rows = sorted(rows, key=lambda r: (r.traj, r.turn))
        m = len(rows)
        t = max(len(r.tokens) for r in rows)
        c = max(len(r.context) for r in rows)
        tokens = torch.zeros((m, t), dtype=torch.long)
        mask = torch.zeros((m, t), dtype=torch.bool)
        logp = torch.zeros((m, t), dtype=torch.float32)
        context = torch.zeros((m, c), dtype=torch.long)
        cmask = torch.zeros((m, c), dtype=torch.bool)
        reward = torch.zeros(m, dtype=torch.float32)
        returns = torch.zeros(m, dtype=torch.float32)
        for i, r in enumerate(rows):
            tokens[i, : len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
            mask[i, : len(r.tokens)] = True
            logp[i, : len(r.logp)] = torch.tensor(r.logp, dtype=torch.float32)
            context[i, : len(r.context)] = torch.tensor(r.context, dtype=torch.long)
            cmask[i, : len(r.context)] = True
            score = float(payload.grades[r.traj].score)
            returns[i] = score
            if r.turn == len(payload.schedules[r.traj]) - 1:
                reward[i] = score
        return MessageBatch(
            trajectory=torch.tensor([r.traj for r in rows], dtype=torch.long),
            group=torch.tensor([r.group for r in rows], dtype=torch.long),
            agent=torch.tensor([r.agent for r in rows], dtype=torch.long),
            turn=torch.tensor([r.turn for r in rows], dtype=torch.long),
            context=context, context_mask=cmask, tokens=tokens, mask=mask, behaviour_logp=logp,
            reward=reward, returns=returns, generated=torch.tensor([r.generated for r in rows], dtype=torch.bool),
            payload=payload,
        )

    @torch.no_grad()
    def _recompute(self, team: Sequence[Any], batch: MessageBatch, stats: SampleStats) -> MessageBatch:
        """Replace the generated rows' behaviour log-probs by the training forward's; measure the gap."""
        logp = batch.behaviour_logp.clone()
        diffs, msg_diffs = [], []
        for j in range(len(team)):
            sel = torch.nonzero(batch.generated & (batch.agent == j)).flatten()
            if sel.numel() == 0:
                continue
            sub = batch.select(sel)
            recomputed = team[j].log_probs(sub).float().cpu()
            d = (sub.behaviour_logp - recomputed) * sub.mask
            diffs.append(d[sub.mask])
            msg_diffs.append(d.sum(dim=1))
            logp[sel] = torch.where(sub.mask, recomputed, torch.zeros(()))
        if diffs:
            d = torch.cat(diffs)
            stats.logp_gap_mean_abs = float(d.abs().mean())
            stats.logp_gap_max_abs = float(d.abs().max())
            stats.logp_gap_mean = float(d.mean())
            stats.logp_gap_message_mean_abs = float(torch.cat(msg_diffs).abs().mean())
        return batch.with_fields(behaviour_logp=logp)
