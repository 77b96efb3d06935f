"""Check every improvement bound of TeamTR and SAT on many exact instances (THEORY.md section 3).

    python -m experiments.bound_check --instances 20000

Each instance: a small team MDP (generic random TeamMDPs, plus the structured families of
``occupancy.families`` when present), a random stage-start policy, a random order, per-update
radii, and one stage of exact KL-ball steps (``occupancy.projection.trust_region_stage``) under
the reverse expected KL (TeamTR, team weighting) or the forward per-state maximum (SAT), along
directions meant to make the true improvement small: +A, -A, random, one-action indicators and
(for a share of instances) a direction optimised by Powell's method to maximise the per-update
tightness. The exact stage (``occupancy.exact.evaluate_stage``) is then compared with every bound
of ``occupancy.bounds`` (both KL conventions, A_max and Achiam's eps).

Prints, per bound: checks, violations (must be 0), median and worst slack (truth - bound for
lower bounds, bound - truth for upper and two-sided ones; >= 0 iff the bound holds), and median
and worst tightness (share of the penalty the instance uses: (surrogate - truth) / penalty for
lower bounds, |L_seq - L_stale| / penalty for Proposition 3.3, truth / bound for SAT's upper
bound; <= 1 iff the bound holds). Writes results/bound_check/{summary.json, summary.csv,
worst.json, config.json, seeds.json}. (For the largest shares an adversary over whole instances can
reach, see ``experiments.bound_tightness``.)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import minimize

from experiments.common import (
    cpu_seconds, limit_blas_threads, results_dir, run_pool, save_run_metadata, write_csv, write_json,
)
from occupancy import bounds as B
from occupancy.exact import Evaluation, evaluate, evaluate_stage
from occupancy.instances import random_policy, random_team_mdp  # noqa: F401  (re-exported)
from occupancy.mdp import TeamMDP
from occupancy.projection import kl_ball_step, trust_region_stage

DIRECTION_KINDS = ("advantage", "neg_advantage", "random", "indicator", "optimised")


# ---------------------------------------------------------------------------------------------
# Instances


def family_instance(rng: np.random.Generator, n_agents: int, gamma: float) -> tuple[TeamMDP, np.ndarray] | None:
    """A small instance of a random structured family and its initial policy, or None if
    ``occupancy.families`` is not available or the draw fails (size limits)."""
    try:
        from occupancy import families
    except ImportError:
        return None
    names = sorted(getattr(families, "FAMILIES", {}))
    if not names:
        return None
    name = names[int(rng.integers(len(names)))]
    seed = int(rng.integers(2**31))
    try:
        mdp = families.make_family(name, n_agents, seed=seed, rounds=int(rng.integers(1, 3)), gamma=gamma)
    except (ValueError, TypeError):
        return None
    if mdp.n_states > 150:
        return None
    pi = families.initial_policy(mdp, seed, float(rng.choice([0.3, 1.0, 3.0])))
    return mdp, pi


# ---------------------------------------------------------------------------------------------
# Directions


def _direction(kind: str, rng: np.random.Generator, mdp: TeamMDP) -> object:
    """A direction argument for trust_region_stage."""
    if kind == "advantage":
        return "intermediate"
    if kind == "neg_advantage":
        return lambda i, agent, prev, e0: -prev.A
    if kind == "random":
        noise = rng.normal(size=(mdp.n_states, mdp.n_actions))
        return lambda i, agent, prev, e0: noise
    if kind == "indicator":
        ind = np.zeros((mdp.n_states, mdp.n_actions))
        ind[np.arange(mdp.n_states), rng.integers(0, mdp.n_actions, mdp.n_states)] = 1.0
        return lambda i, agent, prev, e0: ind
    raise ValueError(f"unknown direction kind {kind!r}")


def optimise_direction(
    mdp: TeamMDP,
    team: np.ndarray,
    base: Evaluation,
    agent: int,
    delta: float,
    convention: str,
    rng: np.random.Generator,
    maxfev: int = 200,
) -> np.ndarray:
    """A direction (S, A) on X_agent that maximises the per-update tightness (L_seq - improvement)
    of a KL-ball step of size ``delta`` from ``team``, by Powell's method from the best of a few
    starts (+A, -A, random). The penalty is fixed by delta and the base team, so maximising
    L_seq - improvement maximises tightness."""
    mask = mdp.agent_mask(agent)
    rows = np.flatnonzero(mask)
    shape = (rows.size, mdp.n_actions)

    def objective(vec: np.ndarray) -> float:
        d_full = np.zeros((mdp.n_states, mdp.n_actions))
        d_full[rows] = vec.reshape(shape)
        step = kl_ball_step(team, mask, delta, d_full, convention=convention, occupancy=base.d)
        new = evaluate(mdp, step.policy, check=False)
        f = np.einsum("sa,sa->s", step.policy, base.A)
        l_seq = float(np.sum(base.d[mask] * f[mask]) / (1 - mdp.gamma))
        return -(l_seq - (new.J - base.J))

    starts = [base.A[rows].ravel(), -base.A[rows].ravel(), rng.normal(size=rows.size * mdp.n_actions)]
    x0 = min(starts, key=objective)
    res = minimize(objective, x0, method="Powell", options={"maxfev": maxfev, "xtol": 1e-4, "ftol": 1e-10})
    out = np.zeros((mdp.n_states, mdp.n_actions))
    out[rows] = res.x.reshape(shape)
    return out


# ---------------------------------------------------------------------------------------------
# One instance


@dataclass
class InstanceSpec:
    """What was drawn for one instance (saved for the worst cases)."""

    index: int
    seed: int
    source: str
    n_agents: int
    n_states: int
    gamma: float
    convention: str
    direction: str
    deltas: list[float] = field(default_factory=list)


def run_instance(index: int, seed: int, optimise_share: float, use_families: bool) -> tuple[InstanceSpec, list[B.BoundCheck]]:
    """Draw and check one instance; returns its spec and all its bound checks."""
    rng = np.random.default_rng(seed)
    n_agents = int(rng.integers(1, 5))
    gamma = float(rng.choice([0.0, 0.5, 0.8, 0.9, 0.95, 0.99]))
    drawn = family_instance(rng, n_agents, gamma) if use_families and rng.random() < 0.3 else None
    if drawn is None:
        n_states = int(rng.integers(n_agents, n_agents + 7))
        mdp = random_team_mdp(
            rng, n_agents, n_states, int(rng.integers(2, 5)), gamma,
            concentration=float(rng.choice([0.05, 0.3, 1.0])), p_terminal=float(rng.choice([0.0, 0.1, 0.5])),
        )
        pi = random_policy(mdp, rng, float(rng.choice([0.3, 1.0, 3.0])))
        source = "random"
    else:
        mdp, pi = drawn
        source = mdp.name.split("-")[0]
    order = [int(j) for j in rng.permutation(mdp.n_agents)]
    convention = "reverse" if rng.random() < 0.5 else "forward_max"
    deltas = list(np.exp(rng.uniform(np.log(1e-4), np.log(2.0), size=len(order))))
    kind = "optimised" if rng.random() < optimise_share else str(rng.choice(DIRECTION_KINDS[:-1]))
    if kind == "optimised":
        new_policies = [pi.copy() for _ in range(mdp.n_agents)]
        team = pi.copy()
        for i, agent in enumerate(order, start=1):
            prev = evaluate(mdp, team, check=False)
            d_dir = optimise_direction(mdp, team, prev, agent, deltas[i - 1], convention, rng)
            step = kl_ball_step(team, mdp.agent_mask(agent), deltas[i - 1], d_dir, convention=convention, occupancy=prev.d)
            new_policies[agent] = step.policy
            team = mdp.replace_agent(team, agent, step.policy)
    else:
        new_policies, _ = trust_region_stage(
            mdp, pi, order, deltas, direction=_direction(kind, rng, mdp), convention=convention
        )
    with np.errstate(invalid="ignore"):  # 0 * inf in occupancy-weighted KLs of saturated steps
        stage = evaluate_stage(mdp, pi, order, new_policies)
        kl0 = B.stage_start_kls(mdp, pi, order, new_policies)
    spec = InstanceSpec(index, seed, source, mdp.n_agents, mdp.n_states, gamma, convention, kind, [float(x) for x in deltas])
    return spec, B.all_bounds(stage, gamma, kl0=kl0)


# ---------------------------------------------------------------------------------------------
# Main


@dataclass(frozen=True)
class BoundCheckConfig:
    """instances: how many; seed: master seed; optimise_share: share of instances whose directions
    are optimised adversarially (slow); families: include occupancy.families instances;
    workers: processes."""

    instances: int = 20000
    seed: int = 0
    optimise_share: float = 0.01
    families: bool = True
    workers: int = 2
    out: str = "bound_check"

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"BoundCheckConfig.instances must be >= 1, got {self.instances}")
        if not (0.0 <= self.optimise_share <= 1.0):
            raise ValueError(f"BoundCheckConfig.optimise_share must be in [0, 1], got {self.optimise_share}")
        if self.workers < 1:
            raise ValueError(f"BoundCheckConfig.workers must be >= 1, got {self.workers}")


def format_table(table: dict[str, dict[str, float]]) -> str:
    head = f"{'bound [KL convention, scale]':48s} {'checks':>7s} {'viol':>5s} {'med slack':>10s} {'worst slack':>12s} {'med tight':>10s} {'worst tight':>11s}"
    lines = [head, "-" * len(head)]
    for key, row in table.items():
        lines.append(
            f"{key:48s} {row['count']:7d} {row['violations']:5d} {row['median_slack']:10.3g} "
            f"{row['worst_slack']:12.3g} {row['median_tightness']:10.3g} {row['worst_tightness']:11.3g}"
        )
    return "\n".join(lines)


def _work(job: tuple[int, int, float, bool]) -> tuple[InstanceSpec, list[B.BoundCheck]]:
    return run_instance(*job)


def aggregate(rows: dict[str, dict[str, list]]) -> dict[str, dict[str, float]]:
    """Per bound key: checks, violations, median/worst slack, median/worst tightness (see module doc)."""
    table = {}
    for key in sorted(rows):
        slack = np.asarray(rows[key]["slack"], dtype=float)
        tight = np.asarray(rows[key]["tightness"], dtype=float)
        tight = tight[np.isfinite(tight)]
        table[key] = {
            "count": int(slack.size),
            "violations": int(np.sum(rows[key]["violated"])),
            "median_slack": float(np.median(slack)),
            "worst_slack": float(slack.min()),
            "median_tightness": float(np.median(tight)) if tight.size else math.nan,
            "worst_tightness": float(tight.max()) if tight.size else math.nan,
        }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=BoundCheckConfig.instances)
    parser.add_argument("--seed", type=int, default=BoundCheckConfig.seed)
    parser.add_argument("--optimise-share", type=float, default=BoundCheckConfig.optimise_share)
    parser.add_argument("--no-families", action="store_true", help="only generic random TeamMDPs")
    parser.add_argument("--workers", type=int, default=BoundCheckConfig.workers, help="processes (default 2)")
    parser.add_argument("--out", default=BoundCheckConfig.out, help="results/<out>/")
    args = parser.parse_args(argv)
    cfg = BoundCheckConfig(args.instances, args.seed, args.optimise_share, not args.no_families, args.workers, args.out)

    seeds = [int(s) for s in np.random.SeedSequence(cfg.seed).generate_state(cfg.instances, dtype=np.uint32)]
    jobs = [(i, s, cfg.optimise_share, cfg.families) for i, s in enumerate(seeds)]
    start = time.time()
    cpu0 = cpu_seconds()
    rows: dict[str, dict[str, list]] = {}
    worst: dict[str, tuple[float, InstanceSpec, B.BoundCheck]] = {}
    sources: dict[str, int] = {}
    kinds: dict[str, int] = {}
    tight_all: list[float] = []
    limit_blas_threads(1)  # the workers fork from here: one BLAS thread each
    for spec, inst in run_pool(_work, jobs, workers=cfg.workers, desc="instances", ordered=True, chunksize=16):
        sources[spec.source] = sources.get(spec.source, 0) + 1
        kinds[spec.direction] = kinds.get(spec.direction, 0) + 1
        for c in inst:
            key = B.bound_key(c)
            row = rows.setdefault(key, {"slack": [], "tightness": [], "violated": [], "truth": [], "bound": [],
                                        "surrogate": [], "penalty": []})
            row["truth"].append(c.truth)
            row["bound"].append(c.bound)
            row["surrogate"].append(c.surrogate)
            row["penalty"].append(c.penalty)
            row["slack"].append(c.slack)
            row["tightness"].append(c.tightness)
            row["violated"].append(c.violated())
            t = c.tightness if math.isfinite(c.tightness) else -math.inf
            if key not in worst or t > worst[key][0]:
                worst[key] = (t, spec, c)
    elapsed = time.time() - start
    cpu = cpu_seconds() - cpu0
    table = aggregate(rows)
    total_viol = sum(r["violations"] for r in table.values())

    out = results_dir(cfg.out)
    save_run_metadata(out, cfg, seeds)
    write_json(out / "summary.json", {"instances": cfg.instances, "elapsed_s": elapsed, "cpu_s": cpu, "workers": cfg.workers,
                                      "sources": sources, "directions": kinds,
                                      "total_violations": total_viol, "bounds": table})
    write_csv(out / "summary.csv", [{"bound": k, **v} for k, v in table.items()])
    write_json(out / "worst.json", {k: {"tightness": v[0], "instance": asdict(v[1]), "check": asdict(v[2])} for k, v in worst.items()})
    rng = np.random.default_rng(0)
    samples, pairs = {}, {}
    for key, row in rows.items():
        t = np.asarray(row["tightness"], dtype=float)
        t = t[np.isfinite(t)]
        samples[key] = rng.permutation(t)[:5000]
        truth, bound = np.asarray(row["truth"], dtype=float), np.asarray(row["bound"], dtype=float)
        keep = np.flatnonzero(np.isfinite(truth) & np.isfinite(bound))
        pick = rng.permutation(keep)[:3000]
        pairs[key] = {name: np.asarray(row[name], dtype=float)[pick] for name in ("truth", "bound", "surrogate", "penalty")}
    write_json(out / "tightness_samples.json", {
        "note": "per bound: finite tightness values (random subsample <= 5000) and (truth, bound, surrogate, "
                "penalty) of a random subsample of <= 3000 checks, for figures",
        "by_bound": samples,
        "pairs": pairs,
    })

    print(format_table(table))
    print(f"\n{cfg.instances} instances (sources: {', '.join(f'{k} {v}' for k, v in sorted(sources.items()))}; "
          f"directions: {', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}) in {elapsed:.1f} s wall, "
          f"{cpu:.1f} s CPU, {cfg.workers} worker(s); total violations: {total_viol}")
    print("tightness = share of the penalty used ((surrogate - truth) / penalty; <= 1 iff the bound holds); "
          "slack = truth - bound (lower) or bound - truth (upper / two-sided)")
    print(f"results: {out}")
    return 0 if total_viol == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
