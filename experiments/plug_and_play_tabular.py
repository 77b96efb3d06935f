"""Plug-and-play replacement of one agent in a trained tabular team (THEORY.md section 5; TeamTR
Prop 3.8-3.9, papers.md A.8; SAT Stage-0, papers.md B.5).

    python -m experiments.plug_and_play_tabular            # 5 seeds, sampled TeamTR training
    python -m experiments.plug_and_play_tabular --quick    # < 1 minute smoke version
    python -m experiments.plug_and_play_tabular --trainer exact   # exact KL-ball stages instead

Per seed (one instance of the family, one initial team):

1. Train the team for ``pretrain_stages`` stages: ``trainer="sampled"`` runs
   :func:`trust_region.stage.run_stage` in ``intermediate`` mode (TeamTR: fresh rollouts before every
   update, sampled KL monitor) on :class:`occupancy.policy.TabularAgent` s; ``trainer="exact"`` runs
   exact KL-ball ascent (:func:`occupancy.projection.trust_region_stage`, agent-weighted reverse KL
   ``delta`` per update along the intermediate advantage).
2. At the swap point (team pi_cur, exact evaluation E), replace agent ``agent`` by
   - ``stronger``: pi_pre(.|x) = softmax(A^{pi_cur}(x, .) / (tau * s_j)) on X_j, with
     s_j = max |A^{pi_cur}| over X_j and tau = ``stronger_temperature`` (closer to the agent's best
     response: the greedy policy-improvement step as tau -> 0);
   - ``random``: a fresh random agent (``occupancy.families.initial_policy`` with another seed), the
     analogue of swapping in an untrained model;
   - ``perturbed``: softmax(log pi_cur + sigma * z), z ~ N(0, 1) (a damaged copy of the incumbent);
   each directly (``direct``, lambda = 0 everywhere) and projected onto the per-state forward-KL ball
   of radius delta_0 around the incumbent with the exact geometric-mixture projection
   (:func:`occupancy.projection.geometric_projection`) for every delta_0 of ``deltas0``. A ``none``
   variant keeps the incumbent (the no-swap baseline).
3. Exact numbers of the swap, treated as one update of agent j from pi_cur (bookkeeping restarted,
   pi_cur <- pi_new, Prop 3.8): J before and after, the surrogate L = 1/(1-gamma) sum_{X_j} d E_{pi_new} A,
   the KLs (per-state max forward, expected reverse) and the per-update lower bound
   J_after - J_before >= L - c sqrt(delta) (:func:`occupancy.bounds.per_update_bound`) for both
   KL conventions and both scales (A_max, Achiam's eps); projection statistics (lambda, active and
   infeasible states).
4. Continue training every variant for ``continue_stages`` stages from the same state (same
   sampler seed and rng: common random numbers; the replaced agent gets a fresh optimizer and the
   initial beta), recording the exact J after every stage and, per stage, the exact per-stage
   bound (TeamTR Thm 3.6 / SAT joint) and the per-update bounds of the first stage after the swap.

Writes results/plug_and_play_tabular/ (or ``--out``): records.csv (one row per seed and variant),
curves.csv (seed, variant, stage, J; stage 0..pretrain_stages is the shared pre-swap training),
bounds.csv (every bound evaluated: the swap and the continued stages), summary.json (means and
standard deviations over seeds per variant, plus the curves' means), config.json, seeds.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Sequence

import numpy as np

from experiments.common import cli_overrides, results_dir, run_pool, save_run_metadata, write_csv, write_json
from occupancy import bounds as B
from occupancy.exact import Evaluation, evaluate, evaluate_stage, kl_rows, update_kl
from occupancy.mdp import TeamMDP
from occupancy.projection import geometric_projection, trust_region_stage

REPLACEMENTS = ("stronger", "random", "perturbed")
TRAINERS = ("sampled", "exact")
#: the bounds reported for the swap and for every continued stage: (kl convention, scale)
BOUND_KINDS: tuple[tuple[str, str], ...] = (
    ("forward_max", "a_max"), ("forward_max", "eps"), ("reverse", "a_max"), ("reverse", "eps"),
)


@dataclass(frozen=True)
class PnPTabularConfig:
    """Validated configuration of the tabular plug-and-play experiment (see the module docstring).

    - ``family``, ``n_agents`` (>= 2), ``rounds`` (>= 0), ``gamma`` in [0, 1): the instance family
      (``occupancy.families``); ``init_temperature`` > 0 of the initial team.
    - ``agent``: the replaced agent, in [0, n_agents).
    - ``seeds`` >= 1 (instances seed0, seed0 + 1, ...).
    - ``trainer``: ``"sampled"`` (run_stage, intermediate) or ``"exact"`` (KL-ball ascent).
    - ``pretrain_stages`` >= 0, ``continue_stages`` >= 1.
    - ``delta`` > 0: the training trust-region radius per update (sampled: the k1 reverse-KL monitor
      per message; exact: the agent-weighted expected reverse KL).
    - sampled training: ``prompts_per_stage``, ``group_size`` (>= 2), ``lr`` > 0, ``epochs`` >= 1,
      ``minibatch_size`` >= 1.
    - ``replacements``: a non-empty subset of :data:`REPLACEMENTS`; ``stronger_temperature`` > 0,
      ``random_temperature`` > 0, ``perturb_sigma`` > 0.
    - ``deltas0``: Stage-0 radii (> 0, per-state forward KL, SAT's 0.01 by default among them).
    - ``out``: results directory name.
    """

    family: str = "chain"
    n_agents: int = 3
    rounds: int = 2
    gamma: float = 0.95
    init_temperature: float = 1.0
    agent: int = 1
    seeds: int = 5
    seed0: int = 0
    trainer: str = "sampled"
    pretrain_stages: int = 4
    continue_stages: int = 10
    delta: float = 0.05
    prompts_per_stage: int = 32
    group_size: int = 8
    lr: float = 0.05
    epochs: int = 4
    minibatch_size: int = 64
    replacements: tuple[str, ...] = REPLACEMENTS
    stronger_temperature: float = 0.05
    random_temperature: float = 1.0
    perturb_sigma: float = 2.0
    deltas0: tuple[float, ...] = (0.01, 0.05, 0.2)
    out: str = "plug_and_play_tabular"

    def __post_init__(self) -> None:
        from occupancy.families import FAMILIES

        object.__setattr__(self, "replacements", tuple(self.replacements))
        object.__setattr__(self, "deltas0", tuple(float(d) for d in self.deltas0))
        if self.family not in FAMILIES:
            raise ValueError(f"PnPTabularConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if not (isinstance(self.n_agents, int) and self.n_agents >= 2):
            raise ValueError(f"PnPTabularConfig.n_agents must be an int >= 2, got {self.n_agents!r}")
        if not (isinstance(self.rounds, int) and self.rounds >= 0):
            raise ValueError(f"PnPTabularConfig.rounds must be an int >= 0, got {self.rounds!r}")
        if not (0.0 <= self.gamma < 1.0):
            raise ValueError(f"PnPTabularConfig.gamma must be in [0, 1), got {self.gamma}")
        if not (0 <= self.agent < self.n_agents):
            raise ValueError(f"PnPTabularConfig.agent must be in [0, {self.n_agents}), got {self.agent}")
        for name in ("seeds", "continue_stages", "epochs", "minibatch_size", "prompts_per_stage"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"PnPTabularConfig.{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.pretrain_stages, int) and self.pretrain_stages >= 0):
            raise ValueError(f"PnPTabularConfig.pretrain_stages must be an int >= 0, got {self.pretrain_stages!r}")
        if not (isinstance(self.group_size, int) and self.group_size >= 2):
            raise ValueError(f"PnPTabularConfig.group_size must be an int >= 2, got {self.group_size!r}")
        if self.trainer not in TRAINERS:
            raise ValueError(f"PnPTabularConfig.trainer must be one of {TRAINERS}, got {self.trainer!r}")
        for name in ("delta", "lr", "init_temperature", "stronger_temperature", "random_temperature", "perturb_sigma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"PnPTabularConfig.{name} must be finite and > 0, got {value}")
        if not self.replacements or any(r not in REPLACEMENTS for r in self.replacements):
            raise ValueError(f"PnPTabularConfig.replacements must be a non-empty subset of {REPLACEMENTS}, "
                             f"got {self.replacements}")
        if any(not (math.isfinite(d) and d > 0) for d in self.deltas0):
            raise ValueError(f"PnPTabularConfig.deltas0 must be finite and > 0, got {self.deltas0}")


QUICK = dict(seeds=2, pretrain_stages=3, continue_stages=3, prompts_per_stage=16, group_size=4, deltas0=(0.01, 0.2),
             out="plug_and_play_tabular_quick")


# ---------------------------------------------------------------------------------------------
# Replacement policies (pure functions of the team at the swap point)


def stronger_policy(mdp: TeamMDP, ev: Evaluation, agent: int, temperature: float) -> np.ndarray:
    """Team-shaped (S, A): on X_j, softmax(A(x, .) / (temperature * s_j)) with s_j = max |A| on X_j
    (A the exact advantage of the team at the swap point); other rows uniform."""
    mask = mdp.agent_mask(agent)
    out = np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
    adv = ev.A[mask]
    scale = float(np.abs(adv).max()) if adv.size else 0.0
    if scale <= 0:
        return out
    z = adv / (temperature * scale)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    out[mask] = p / p.sum(axis=1, keepdims=True)
    return out


def perturbed_policy(pi: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """softmax(log pi + sigma z) per row, z ~ N(0, 1) (S, A); zeros of pi stay zero."""
    with np.errstate(divide="ignore"):
        logits = np.log(pi) + sigma * rng.normal(size=pi.shape)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def replacement_policy(kind: str, mdp: TeamMDP, pi_cur: np.ndarray, ev: Evaluation, cfg: PnPTabularConfig,
                       seed: int) -> np.ndarray:
    """pi_pre as a team-shaped array (S, A) (rows of X_agent used) for a kind of :data:`REPLACEMENTS`."""
    from occupancy.families import initial_policy

    if kind == "stronger":
        return stronger_policy(mdp, ev, cfg.agent, cfg.stronger_temperature)
    if kind == "random":
        return initial_policy(mdp, seed=10_000 + seed, temperature=cfg.random_temperature)
    if kind == "perturbed":
        return perturbed_policy(pi_cur, cfg.perturb_sigma, np.random.default_rng(20_000 + seed))
    raise ValueError(f"unknown replacement {kind!r}; choose one of {REPLACEMENTS}")


# ---------------------------------------------------------------------------------------------
# Trainers: a "team state" that can be copied, swapped and advanced by one stage


class ExactTrainer:
    """Exact KL-ball ascent: one stage = :func:`trust_region_stage` along the intermediate advantage
    with agent-weighted reverse KL ``delta`` per update (fixed order 0..N-1)."""

    def __init__(self, mdp: TeamMDP, pi: np.ndarray, cfg: PnPTabularConfig, seed: int) -> None:
        self.mdp, self.cfg, self.pi = mdp, cfg, mdp.check_policy(pi)

    def table(self) -> np.ndarray:
        return self.pi.copy()

    def copy(self, seed: int) -> "ExactTrainer":
        return ExactTrainer(self.mdp, self.pi, self.cfg, seed)

    def swap(self, agent: int, pi_new: np.ndarray) -> None:
        self.pi = self.mdp.replace_agent(self.pi, agent, pi_new)

    def stage(self, k: int) -> tuple[list[int], list[np.ndarray]]:
        order = list(range(self.mdp.n_agents))
        new, _ = trust_region_stage(self.mdp, self.pi, order, self.cfg.delta, weighting="agent")
        for j in order:
            self.pi = self.mdp.replace_agent(self.pi, j, new[j])
        return order, new


class SampledTrainer:
    """TeamTR on TabularAgents: one stage = ``run_stage`` in intermediate mode with a TabularSampler."""

    def __init__(self, mdp: TeamMDP, pi: np.ndarray, cfg: PnPTabularConfig, seed: int,
                 agents: Sequence[Any] | None = None, opt_states: Sequence[dict] | None = None,
                 betas: Sequence[float] | None = None) -> None:
        import torch

        from occupancy.policy import TabularAgent
        from occupancy.sampling import TabularSampler
        from trust_region.stage import StageConfig
        from trust_region.update import UpdateConfig

        self.mdp, self.cfg, self.seed = mdp, cfg, seed
        self.team = [TabularAgent(j, mdp, pi) for j in range(mdp.n_agents)]
        self.opts = [torch.optim.Adam(a.trainable_parameters(), lr=cfg.lr) for a in self.team]
        if opt_states is not None:
            for opt, state in zip(self.opts, opt_states):
                if state is not None:
                    opt.load_state_dict(state)
        self.betas = list(betas) if betas is not None else None
        self.sampler = TabularSampler(mdp, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.stage_config = StageConfig(
            mode="intermediate", prompts_per_stage=cfg.prompts_per_stage, group_size=cfg.group_size,
            update=UpdateConfig(delta=cfg.delta, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size),
        )

    def table(self) -> np.ndarray:
        from occupancy.policy import team_table

        return team_table(self.mdp, self.team)

    def copy(self, seed: int) -> "SampledTrainer":
        """Same policies, optimizer states and betas; a fresh sampler and rng seeded by ``seed``."""
        import copy

        states = [copy.deepcopy(o.state_dict()) for o in self.opts]
        return SampledTrainer(self.mdp, self.table(), self.cfg, seed, opt_states=states, betas=self.betas)

    def swap(self, agent: int, pi_new: np.ndarray) -> None:
        """A new agent j initialised at pi_new with a fresh optimizer and the initial beta."""
        import torch

        from occupancy.policy import TabularAgent

        self.team[agent] = TabularAgent(agent, self.mdp, pi_new)
        self.opts[agent] = torch.optim.Adam(self.team[agent].trainable_parameters(), lr=self.cfg.lr)
        if self.betas is not None:
            self.betas[agent] = float(self.stage_config.update.beta)

    def stage(self, k: int) -> tuple[list[int], list[np.ndarray]]:
        from trust_region.stage import run_stage

        rep = run_stage(self.team, self.opts, self.sampler, self.sampler.draw_prompts, self.stage_config, self.rng,
                        betas=self.betas, stage=k)
        self.betas = rep.betas
        end = self.table()
        return list(rep.order), [end] * self.mdp.n_agents  # each agent moved once: its X_j rows of the end table


def make_trainer(mdp: TeamMDP, pi: np.ndarray, cfg: PnPTabularConfig, seed: int):
    return SampledTrainer(mdp, pi, cfg, seed) if cfg.trainer == "sampled" else ExactTrainer(mdp, pi, cfg, seed)


# ---------------------------------------------------------------------------------------------
# Exact numbers


def bound_rows(check_list: list[B.BoundCheck], **keys: Any) -> list[dict]:
    return [{**keys, "bound": c.name, "kl": c.kl, "scale": c.scale, "truth": c.truth, "value": c.bound,
             "surrogate": c.surrogate, "penalty": c.penalty, "slack": c.slack, "violated": c.violated()}
            for c in check_list]


def swap_numbers(mdp: TeamMDP, pi_cur: np.ndarray, pi_new: np.ndarray, agent: int) -> tuple[dict, list[B.BoundCheck]]:
    """The swap as one update of ``agent`` from pi_cur (S, A) to pi_new (S, A): exact J after, the
    surrogate, KLs and the per-update bounds of :data:`BOUND_KINDS`."""
    new_policies = [pi_cur] * mdp.n_agents
    new_policies[agent] = pi_new
    stage = evaluate_stage(mdp, pi_cur, [agent], new_policies)
    u = stage.updates[0]
    checks = [B.per_update_bound(u, mdp.gamma, kl, scale) for kl, scale in BOUND_KINDS]
    nums = {"J_before": stage.J_start, "J_after": stage.J_end, "swap_change": u.improvement, "swap_L": u.L_seq,
            "swap_kl_forward_max": u.kl_forward_max, "swap_kl_reverse": u.kl_reverse,
            "swap_kl_reverse_agent": u.kl_reverse_agent, "swap_a_max": u.a_max, "swap_eps": u.eps_achiam}
    for c in checks:
        nums[f"swap_bound[{c.kl},{c.scale}]"] = c.bound
    return nums, checks


def stage_bounds(mdp: TeamMDP, pi_start: np.ndarray, order: list[int], new: list[np.ndarray], per_update: bool
                 ) -> list[B.BoundCheck]:
    """Exact per-stage bounds of :data:`BOUND_KINDS` (and the per-update ones if ``per_update``)."""
    stage = evaluate_stage(mdp, pi_start, order, new)
    out = [B.per_stage_bound(stage, mdp.gamma, kl, scale) for kl, scale in BOUND_KINDS]
    if per_update:
        out += [B.per_update_bound(u, mdp.gamma, kl, scale) for u in stage.updates for kl, scale in BOUND_KINDS]
    return out


def projection_stats(mdp: TeamMDP, pi_pre: np.ndarray, pi_cur: np.ndarray, res, agent: int, d: np.ndarray) -> dict:
    """lambda and KL statistics of a projection on X_agent (d: the occupancy at the swap point)."""
    mask = mdp.agent_mask(agent)
    lam = res.lam[mask]
    finite = lam[np.isfinite(lam)]
    return {
        "pre_kl_forward_max": float(kl_rows(pi_pre, pi_cur)[mask].max()),
        "pre_kl_forward_mean": float(np.sum(d[mask] * kl_rows(pi_pre, pi_cur)[mask]) / max(d[mask].sum(), 1e-300)),
        "lambda_mean": float(finite.mean()) if finite.size else math.nan,
        "lambda_max": float(finite.max()) if finite.size else math.nan,
        "active_share": float(np.mean(lam > 0)),
        "infeasible": int(np.sum(~res.feasible[mask])),
        "kl_to_pre_mean": float(np.sum(d[mask] * kl_rows(res.policy, pi_pre)[mask]) / max(d[mask].sum(), 1e-300)),
    }


# ---------------------------------------------------------------------------------------------
# One seed


def variants(cfg: PnPTabularConfig) -> list[tuple[str, str, float]]:
    """(variant name, replacement kind, delta_0) with delta_0 = inf for the direct swap; ("none", "", 0)."""
    out = [("none", "none", 0.0)]
    for kind in cfg.replacements:
        out.append((f"{kind}/direct", kind, math.inf))
        out.extend((f"{kind}/proj{d0:g}", kind, d0) for d0 in cfg.deltas0)
    return out


def run_seed(cfg: PnPTabularConfig, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(records, curve rows, bound rows) of one seed."""
    import torch

    from occupancy.families import initial_policy, make_family

    torch.set_num_threads(1)
    mdp = make_family(cfg.family, cfg.n_agents, seed=seed, rounds=cfg.rounds, gamma=cfg.gamma)
    pi0 = initial_policy(mdp, seed=seed, temperature=cfg.init_temperature)
    trainer = make_trainer(mdp, pi0, cfg, seed)
    curve_pre = [evaluate(mdp, trainer.table()).J]
    for k in range(cfg.pretrain_stages):
        trainer.stage(k)
        curve_pre.append(evaluate(mdp, trainer.table()).J)
    pi_cur = trainer.table()
    ev = evaluate(mdp, pi_cur)
    j = cfg.agent
    records, curves, bounds = [], [], []
    pres = {kind: replacement_policy(kind, mdp, pi_cur, ev, cfg, seed) for kind in cfg.replacements}
    for name, kind, d0 in variants(cfg):
        rec: dict[str, Any] = {"seed": seed, "variant": name, "replacement": kind, "delta0": d0, "agent": j,
                               "J_pretrain_start": curve_pre[0]}
        if kind == "none":
            pi_new = pi_cur
        else:
            res = (_direct_result(mdp, pres[kind], pi_cur, j) if math.isinf(d0)
                   else geometric_projection(pres[kind], pi_cur, d0, mask=mdp.agent_mask(j)))
            pi_new = res.policy
            rec.update(projection_stats(mdp, pres[kind], pi_cur, res, j, ev.d))
        if kind != "none":
            rec["J_replacement_alone"] = evaluate(mdp, mdp.replace_agent(pi_cur, j, pres[kind])).J
        nums, checks = swap_numbers(mdp, pi_cur, pi_new, j)
        rec.update(nums)
        bounds += bound_rows(checks, seed=seed, variant=name, phase="swap", stage=0)
        runner = trainer.copy(seed=100_000 + seed)
        if kind != "none":
            runner.swap(j, pi_new)
        for k, jv in enumerate(curve_pre):
            curves.append({"seed": seed, "variant": name, "stage": k - cfg.pretrain_stages, "J": jv})
        js = [nums["J_after"]]
        curves.append({"seed": seed, "variant": name, "stage": 0, "J": nums["J_after"], "phase": "swap"})
        for k in range(cfg.continue_stages):
            start = runner.table()
            order, new = runner.stage(cfg.pretrain_stages + k)
            checks = stage_bounds(mdp, start, order, new, per_update=(k == 0))
            bounds += bound_rows(checks, seed=seed, variant=name, phase="continue", stage=k + 1)
            js.append(evaluate(mdp, runner.table()).J)
            curves.append({"seed": seed, "variant": name, "stage": k + 1, "J": js[-1]})
        rec["J_end"] = js[-1]
        rec["J_best_continue"] = max(js)
        rec["J_first_stage"] = js[1]
        records.append(rec)
    return records, curves, bounds


def _direct_result(mdp: TeamMDP, pi_pre: np.ndarray, pi_cur: np.ndarray, agent: int):
    """A ProjectionResult-like record of the direct swap (lambda = 0, always feasible)."""
    from occupancy.projection import ProjectionResult

    s = mdp.n_states
    mask = mdp.agent_mask(agent)
    return ProjectionResult(policy=mdp.replace_agent(pi_cur, agent, pi_pre), lam=np.zeros(s),
                            kl=np.where(mask, kl_rows(pi_pre, pi_cur), 0.0), feasible=np.ones(s, dtype=bool))


# ---------------------------------------------------------------------------------------------
# Aggregation and command line

SUMMARY_KEYS = ("J_before", "J_after", "swap_change", "swap_L", "swap_kl_forward_max", "swap_kl_reverse",
                "J_replacement_alone", "J_first_stage", "J_end", "J_best_continue", "lambda_mean", "active_share",
                "infeasible", "pre_kl_forward_max", "kl_to_pre_mean",
                *(f"swap_bound[{kl},{scale}]" for kl, scale in BOUND_KINDS))


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(records: list[dict], curves: list[dict], bounds: list[dict]) -> dict:
    """Per variant: mean and std over seeds of :data:`SUMMARY_KEYS`, the mean curve, and the share
    of violated bounds (which must be 0: the bounds are theorems evaluated exactly)."""
    out: dict[str, Any] = {"variants": {}, "bound_violations": int(sum(bool(b["violated"]) for b in bounds)),
                           "bounds_checked": len(bounds)}
    names = list(dict.fromkeys(r["variant"] for r in records))
    for name in names:
        recs = [r for r in records if r["variant"] == name]
        entry: dict[str, Any] = {"replacement": recs[0]["replacement"], "delta0": recs[0]["delta0"], "seeds": len(recs)}
        for key in SUMMARY_KEYS:
            if any(key in r for r in recs):
                m, s = _mean_std([r.get(key, math.nan) for r in recs])
                entry[key] = {"mean": m, "std": s}
        stages = sorted(set(c["stage"] for c in curves if c["variant"] == name))
        entry["curve"] = {"stage": stages,
                          "J_mean": [float(np.mean([c["J"] for c in curves if c["variant"] == name and c["stage"] == k]))
                                     for k in stages],
                          "J_std": [float(np.std([c["J"] for c in curves if c["variant"] == name and c["stage"] == k],
                                                 ddof=1)) if len(recs) > 1 else 0.0 for k in stages]}
        first = [b for b in bounds if b["variant"] == name and b["phase"] == "continue" and b["stage"] == 1
                 and b["bound"].endswith("per_stage")]
        entry["first_stage_bounds"] = {f"{b['kl']},{b['scale']}": None for b in first}
        for key in entry["first_stage_bounds"]:
            kl, scale = key.split(",")
            sel = [b for b in first if b["kl"] == kl and b["scale"] == scale]
            entry["first_stage_bounds"][key] = {"truth_mean": float(np.mean([b["truth"] for b in sel])),
                                                "bound_mean": float(np.mean([b["value"] for b in sel])),
                                                "surrogate_mean": float(np.mean([b["surrogate"] for b in sel])),
                                                "penalty_mean": float(np.mean([b["penalty"] for b in sel]))}
        out["variants"][name] = entry
    return out


def format_table(summary: dict) -> str:
    head = (f"{'variant':22s} {'J before':>9s} {'J after':>15s} {'change':>9s} {'fwdKLmax':>9s} "
            f"{'bound[fwd,eps]':>15s} {'J end':>15s}")
    lines = [head, "-" * len(head)]
    for name, e in summary["variants"].items():
        def g(k, f="{:9.4f}"):
            return f.format(e[k]["mean"]) if k in e else " " * 9
        after = f"{e['J_after']['mean']:.4f}±{e['J_after']['std']:.4f}"
        end = f"{e['J_end']['mean']:.4f}±{e['J_end']['std']:.4f}"
        lines.append(f"{name:22s} {g('J_before')} {after:>15s} {g('swap_change')} {g('swap_kl_forward_max')} "
                     f"{g('swap_bound[forward_max,eps]', '{:15.4f}')} {end:>15s}")
    lines.append(f"bounds checked: {summary['bounds_checked']}, violated: {summary['bound_violations']}")
    return "\n".join(lines)


def run(cfg: PnPTabularConfig, progress: bool = True) -> dict:
    """Run every seed, write results/<cfg.out>/ and return the summary."""
    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.seeds))
    start = time.time()
    records, curves, bounds = [], [], []
    for r, c, b in run_pool(partial(run_seed, cfg), seeds, workers=1, desc="seeds", ordered=True, progress=progress):
        records += r
        curves += c
        bounds += b
    summary = summarize(records, curves, bounds)
    summary["elapsed_s"] = time.time() - start
    summary["config"] = asdict(cfg)
    out = results_dir(cfg.out)
    save_run_metadata(out, cfg, seeds)
    write_csv(out / "records.csv", records)
    write_csv(out / "curves.csv", curves)
    write_csv(out / "bounds.csv", bounds)
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke version: {QUICK}")
    parser.add_argument("--family")
    parser.add_argument("--n-agents", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--agent", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--trainer", choices=TRAINERS)
    parser.add_argument("--pretrain-stages", type=int)
    parser.add_argument("--continue-stages", type=int)
    parser.add_argument("--delta", type=float)
    parser.add_argument("--deltas0", nargs="+", type=float)
    parser.add_argument("--replacements", nargs="+", choices=REPLACEMENTS)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    kwargs: dict[str, Any] = dict(QUICK) if args.quick else {}
    kwargs.update(cli_overrides(args, ("deltas0", "replacements"),
                                ("family", "n_agents", "rounds", "agent", "seeds", "trainer", "pretrain_stages",
                                 "continue_stages", "delta", "out")))
    cfg = PnPTabularConfig(**kwargs)
    summary = run(cfg)
    print(f"family {cfg.family}, N = {cfg.n_agents}, rounds {cfg.rounds}, agent {cfg.agent} replaced, trainer "
          f"{cfg.trainer}, {cfg.seeds} seeds, {summary['elapsed_s']:.0f} s")
    print(format_table(summary))
    print(f"results: {results_dir(cfg.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
