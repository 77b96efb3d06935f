"""Team-size scaling of the surrogate penalty (THEORY.md sections 2-4; TeamTR Table 5's contrast).

    python -m experiments.scaling_sweep            # full sweep (12 N = 2..64 x 7 families x 3 delta x 20 seeds)
    python -m experiments.scaling_sweep --quick    # < 1 minute smoke version

For every family of ``occupancy.families``, team size N, radius delta and seed: one stage of exact
KL-ball steps in turn order (agent 0 first, i.e. upstream agents are updated before the agents
whose contexts they shape), each update moving its agent along its intermediate advantage
A^{hat_pi^{i-1}} until the *agent-weighted* reverse KL under d^{hat_pi^{i-1}} equals delta (a fixed
per-message radius, like the LLM monitor). The exact stage is evaluated three ways (THEORY
section 2): intermediate L^seq (TeamTR), stale occupancy (the papers' stale quantity) and stale
batch (naive sequential training), giving per evaluation the stage penalty |sum_i Gap_i| and
sum_i |Gap_i|. With ``--updates own`` the stale evaluations instead use the updates their own
training would make (radius under d^{hat_pi^0}; stale batch: direction A^{hat_pi^0}).

Per (family, evaluation, delta, metric): the exponent alpha of mean_seeds(penalty) ~ N^alpha by
log-log least squares, with a 95% bootstrap interval over seeds. Beside it, the bound curves:
c sum_i sqrt(delta_i) (TeamTR Thm 3.6, the intermediate evaluation's penalty) and
c sum_i sum_{k<=i} sqrt(delta_k) (Thm 3.7 sharp; stale), with the team-weighted delta_i of the
bounds and A_max of each update.

Writes results/scaling_sweep/: records.csv (one row per instance and evaluation), fits.json and
fits.csv, curves.json (per family/evaluation/delta: N, mean and quantiles of the penalty and of the
bounds), config.json, seeds.json; prints a summary table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from experiments.common import (
    bootstrap_power_fit, cli_overrides, cpu_seconds, limit_blas_threads, results_dir, run_pool, save_run_metadata, write_csv, write_json,
)
from occupancy import bounds as B
from occupancy import families
from occupancy.exact import evaluate_stage

MODES = ("seq", "stale_occ", "stale_batch")
#: crowd and agree_pair are names of occupancy.families (FAMILY_NAMES); nothing is built here.
LOCAL_FAMILIES: tuple[str, ...] = ()
VARIANTS = families.VARIANTS
MODE_LABEL = {"seq": "intermediate (TeamTR)", "stale_occ": "stale occupancy", "stale_batch": "stale batch (naive)"}
METRICS = ("penalty", "abs_penalty", "penalty_per_amax")
#: Penalties below EXACT_TOL times the largest |improvement| are floating-point zeros.
EXACT_TOL = 1e-10


def make_instance(family: str, n: int, *, seed: int, rounds: int, gamma: float, **params):
    """A TeamMDP of ``family`` (any name of occupancy.families.FAMILY_NAMES, crowd and agree_pair included)."""
    return families.make_family(family, n, seed=seed, rounds=rounds, gamma=gamma, **params)


@dataclass(frozen=True)
class SweepConfig:
    """Validated sweep configuration.

    - ``families``: names from occupancy.families.FAMILIES.
    - ``n_agents``: team sizes N (>= 2, at least 3 distinct values for a fit).
    - ``deltas``: per-update agent-weighted reverse KL radii (> 0).
    - ``seeds``: number of seeds per (family, N) (>= 2 for a bootstrap).
    - ``rounds``: rounds per episode (1: bandit-like, the intermediate surrogate is then exact;
      2: the default, so that an agent's update also moves its own later-round occupancy).
    - ``gamma``: per-turn discount.
    - ``temperature``: of the initial policy.
    - ``order``: "turn" (agent 0 first) or "reverse" (last agent first) or "random".
    - ``updates``: "shared" (one stage of TeamTR steps, three evaluations) or "own".
    - ``n_boot``: bootstrap resamples; ``workers``: processes.
    - ``tail_min_n``: a second fit uses only N >= tail_min_n (the large-N slope; the full-range fit
      can be dominated by a small-N transient).
    """

    families: tuple[str, ...] = ("layered", "board", "vote", "chain", "agree", "agree_pair", "crowd")
    n_agents: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)
    deltas: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    seeds: int = 20
    rounds: int = 2
    gamma: float = 0.99
    temperature: float = 1.0
    order: str = "turn"
    updates: str = "shared"
    n_boot: int = 2000
    tail_min_n: int = 8
    workers: int = 2
    seed0: int = 0
    out: str = "scaling_sweep"
    family_params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from occupancy import families

        for f in self.families:
            known = tuple(families.FAMILIES) + tuple(VARIANTS) + LOCAL_FAMILIES
            if f not in known:
                raise ValueError(f"SweepConfig.families: unknown family {f!r}; choose from {known}")
        if len(set(self.n_agents)) < 3 or min(self.n_agents) < 2:
            raise ValueError(f"SweepConfig.n_agents needs >= 3 distinct sizes, all >= 2, got {self.n_agents}")
        if not self.deltas or min(self.deltas) <= 0:
            raise ValueError(f"SweepConfig.deltas must be positive, got {self.deltas}")
        if self.seeds < 2:
            raise ValueError(f"SweepConfig.seeds must be >= 2, got {self.seeds}")
        if self.rounds < 1:
            raise ValueError(f"SweepConfig.rounds must be >= 1, got {self.rounds}")
        if not (0 <= self.gamma < 1):
            raise ValueError(f"SweepConfig.gamma must be in [0, 1), got {self.gamma}")
        if self.order not in ("turn", "reverse", "random"):
            raise ValueError(f"SweepConfig.order must be 'turn', 'reverse' or 'random', got {self.order!r}")
        if self.updates not in ("shared", "own"):
            raise ValueError(f"SweepConfig.updates must be 'shared' or 'own', got {self.updates!r}")
        if self.workers < 1 or self.n_boot < 0:
            raise ValueError("SweepConfig.workers must be >= 1 and n_boot >= 0")


QUICK = dict(n_agents=(2, 4, 8), deltas=(1e-3,), seeds=5, n_boot=200)


# ---------------------------------------------------------------------------------------------
# One instance


def _order(n: int, how: str, seed: int) -> list[int]:
    if how == "turn":
        return list(range(n))
    if how == "reverse":
        return list(range(n - 1, -1, -1))
    return [int(j) for j in np.random.default_rng(seed + 7919).permutation(n)]


def _stage_record(stage, gamma: float, kl0: list[float]) -> dict[str, float]:
    ups = stage.updates
    return {
        "J_start": stage.J_start,
        "J_end": stage.J_end,
        "improvement": stage.J_end - stage.J_start,
        "kl_team_sum": float(sum(u.kl_reverse for u in ups)),
        "kl_agent_mean": float(np.mean([u.kl_reverse_agent for u in ups])),
        "kl_forward_max_mean": float(np.mean([u.kl_forward_max for u in ups])),
        "a_max": float(max(u.a_max for u in ups)),
        "eps_max": float(max(u.eps_achiam for u in ups)),
        "drift_mean": float(np.mean([u.occupancy_drift for u in ups])),
        "drift_last": float(ups[-1].occupancy_drift),
        "bound_seq": B.per_stage_bound(stage, gamma, "reverse", "a_max").penalty,
        "bound_stale_sharp": B.stale_penalty_sharp(stage, gamma, "reverse", "a_max"),
        "bound_stale_paper": B.stale_penalty_paper(stage, gamma, "reverse", "a_max"),
        "bound_seq_eps": B.per_stage_bound(stage, gamma, "reverse", "eps").penalty,
        "bound_stale_sharp_eps": B.stale_penalty_sharp(stage, gamma, "reverse", "eps"),
        "bound_seq_chain": sum(B.per_update_bound_chain(u, gamma, "reverse", "a_max").penalty for u in ups),
        "bound_stale_chain": B.stale_penalty_chain(stage, gamma, "reverse", "a_max", kl0),
    }


def _kl0_from(mdp, pi_cur, order, new_policies, d0) -> list[float]:
    from occupancy.exact import update_kl

    return [update_kl(mdp, d0, pi_cur, new_policies[j], int(j), "reverse", "team") for j in order]


def run_instance(job: tuple[SweepConfig, str, int, int]) -> list[dict]:
    """All deltas and evaluations of one (family, N, seed): a list of records (one per delta and mode)."""
    cfg, family, n, seed = job
    from occupancy import families
    from occupancy.projection import trust_region_stage

    mdp = make_instance(family, n, seed=seed, rounds=cfg.rounds, gamma=cfg.gamma, **cfg.family_params.get(family, {}))
    pi = families.initial_policy(mdp, seed, cfg.temperature)
    order = _order(n, cfg.order, seed)
    out = []
    for delta in cfg.deltas:
        stages = {}
        evals: list = []
        new, _ = trust_region_stage(mdp, pi, order, delta, weighting="agent", evaluations=evals)
        shared = evaluate_stage(mdp, pi, order, new, evaluations=evals)
        kls0 = {"shared": _kl0_from(mdp, pi, order, new, evals[0].d)}
        for mode in MODES:
            if cfg.updates == "own" and mode != "seq":
                direction = "intermediate" if mode == "stale_occ" else "stage_start"
                ev_m: list = []
                new_m, _ = trust_region_stage(mdp, pi, order, delta, weighting="agent",
                                              direction=direction, radius_occupancy="stage_start", evaluations=ev_m)
                stages[mode] = evaluate_stage(mdp, pi, order, new_m, evaluations=ev_m)
                kls0[mode] = _kl0_from(mdp, pi, order, new_m, ev_m[0].d)
            else:
                stages[mode] = shared
                kls0[mode] = kls0["shared"]
        for mode in MODES:
            st = stages[mode]
            rec = {"family": family, "N": n, "seed": seed, "delta": delta, "mode": mode, "n_states": mdp.n_states,
                   "penalty": st.penalty(mode), "abs_penalty": st.abs_penalty(mode),
                   "penalty_per_amax": st.penalty(mode) / max(max(u.a_max for u in st.updates), 1e-300),
                   "signed_gap": float(sum(u.gap(mode) for u in st.updates))}
            rec.update(_stage_record(st, cfg.gamma, kls0[mode]))
            out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# Fits and curves


def fit_table(records: list[dict], cfg: SweepConfig) -> tuple[list[dict], list[dict]]:
    """(fits, curves). fits: one row per (family, mode, delta, metric) with alpha and its bootstrap
    interval, plus the exponents of the bound curves, A_max and the mean drift. curves: the data
    of the figures (means and quantiles per N)."""
    ns = sorted(cfg.n_agents)
    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.seeds))
    index = {(r["family"], r["mode"], r["delta"], r["N"], r["seed"]): r for r in records}
    fits, curves = [], []
    for family in cfg.families:
        for mode in MODES:
            for delta in cfg.deltas:
                def mat(key: str) -> np.ndarray:
                    return np.array([[index[(family, mode, delta, n, s)][key] if (family, mode, delta, n, s) in index else np.nan
                                      for s in seeds] for n in ns], dtype=float)

                extra = {}
                for key in ("a_max", "drift_last", "kl_team_sum", "bound_seq", "bound_stale_sharp", "bound_seq_chain",
                            "bound_stale_chain"):
                    f = bootstrap_power_fit(ns, mat(key), n_boot=0)
                    extra[f"alpha_{key}"] = f.alpha
                scale = float(np.nanmax(np.abs(mat("improvement")))) or 1.0
                for metric in METRICS:
                    m = mat(metric)
                    # a penalty at floating-point level (e.g. the intermediate surrogate is exact when
                    # no update moves its own agent's occupancy) has no exponent
                    exact = bool(np.nanmax(mat("abs_penalty")) <= EXACT_TOL * scale)
                    f = bootstrap_power_fit(ns, m, n_boot=0 if exact else cfg.n_boot,
                                            seed=zlib.crc32(f"{family}|{mode}|{metric}|{delta}".encode()))
                    tail = [k for k, n in enumerate(ns) if n >= cfg.tail_min_n]
                    ft = (bootstrap_power_fit([ns[k] for k in tail], m[tail], n_boot=0 if exact else cfg.n_boot,
                                              seed=zlib.crc32(f"tail|{family}|{mode}|{metric}|{delta}".encode()))
                          if len(tail) >= 3 else None)
                    extra_tail = {"alpha_tail": math.nan if (exact or ft is None) else ft.alpha,
                                  "ci_low_tail": ft.ci_low if ft else math.nan,
                                  "ci_high_tail": ft.ci_high if ft else math.nan}
                    fits.append({"family": family, "mode": mode, "delta": delta, "metric": metric, **extra_tail,
                                 "alpha": math.nan if exact else f.alpha, "intercept": f.intercept, "ci_low": f.ci_low, "ci_high": f.ci_high,
                                 "r2": f.r2, "exact": exact, "n_boot": f.n_boot, "mean_at_Nmin": float(np.nanmean(m[0])),
                                 "mean_at_Nmax": float(np.nanmean(m[-1])), **extra})
                curve = {"family": family, "mode": mode, "delta": delta, "N": ns}
                for key in METRICS + ("bound_seq", "bound_stale_sharp", "bound_stale_paper", "bound_seq_chain",
                                      "bound_stale_chain", "a_max", "drift_last", "kl_team_sum"):
                    m = mat(key)
                    curve[key] = {"mean": np.nanmean(m, axis=1), "q05": np.nanquantile(m, 0.05, axis=1),
                                  "q95": np.nanquantile(m, 0.95, axis=1)}
                curves.append(curve)
    return fits, curves


def format_summary(fits: list[dict], delta: float) -> str:
    rows = [f for f in fits if f["delta"] == delta]
    head = (f"{'family':10s} {'evaluation':22s} {'metric':16s} {'alpha':>6s} {'95% CI':>15s} {'r2':>5s} {'a(tail)':>7s} "
            f"{'P(Nmin)':>9s} {'P(Nmax)':>9s} {'a(bound)':>8s} {'a(chain)':>8s} {'a(Amax)':>7s} {'a(drift)':>8s}")
    lines = [f"delta = {delta:g} (agent-weighted reverse KL per update)", head, "-" * len(head)]
    for f in rows:
        bound = f["alpha_bound_seq"] if f["mode"] == "seq" else f["alpha_bound_stale_sharp"]
        chain = f["alpha_bound_seq_chain"] if f["mode"] == "seq" else f["alpha_bound_stale_chain"]
        fit = ("  exact (penalty = 0 to rounding)          " if f["exact"] else
               f"{f['alpha']:6.2f} [{f['ci_low']:5.2f}, {f['ci_high']:5.2f}] {f['r2']:5.2f} {f['alpha_tail']:7.2f}")
        lines.append(
            f"{f['family']:10s} {MODE_LABEL[f['mode']]:22s} {f['metric']:16s} {fit} {f['mean_at_Nmin']:9.2e} "
            f"{f['mean_at_Nmax']:9.2e} {bound:8.2f} {chain:8.2f} {f['alpha_a_max']:7.2f} {f['alpha_drift_last']:8.2f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke version: {QUICK}")
    parser.add_argument("--families", nargs="+")
    parser.add_argument("--n-agents", nargs="+", type=int)
    parser.add_argument("--deltas", nargs="+", type=float)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--gamma", type=float)
    parser.add_argument("--order", choices=["turn", "reverse", "random"])
    parser.add_argument("--updates", choices=["shared", "own"])
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    kwargs = dict(QUICK) if args.quick else {}
    if args.quick:
        kwargs["out"] = "scaling_sweep_quick"
    kwargs.update(cli_overrides(args, ("families", "n_agents", "deltas"),
                                ("seeds", "rounds", "gamma", "order", "updates", "workers", "out")))
    cfg = SweepConfig(**kwargs)

    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.seeds))
    # largest instances first so that the two workers finish together
    jobs = sorted(((cfg, f, n, s) for f in cfg.families for n in cfg.n_agents for s in seeds), key=lambda j: -j[2])
    start = time.time()
    cpu0 = cpu_seconds()
    records: list[dict] = []
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    limit_blas_threads(1)  # the workers fork from here: one BLAS thread each
    for recs in run_pool(run_instance, jobs, workers=cfg.workers, desc="stages"):
        records.extend(recs)
    elapsed = time.time() - start
    cpu = cpu_seconds() - cpu0
    records.sort(key=lambda r: (r["family"], r["mode"], r["delta"], r["N"], r["seed"]))
    fits, curves = fit_table(records, cfg)

    out = results_dir(cfg.out)
    save_run_metadata(out, cfg, seeds)
    write_csv(out / "records.csv", records)
    write_json(out / "fits.json", {"elapsed_s": elapsed, "cpu_s": cpu, "workers": cfg.workers, "fits": fits})
    write_csv(out / "fits.csv", fits)
    write_json(out / "curves.json", {"config": cfg, "curves": curves})

    for delta in cfg.deltas:
        print(format_summary(fits, delta))
        print()
    print("alpha: fitted exponent of mean_seeds(metric) ~ N^alpha (log-log least squares), 95% bootstrap CI over seeds;")
    print(f"a(tail): the same fit on N >= {cfg.tail_min_n} only (large-N slope; CI in fits.json);")
    print("a(bound): exponent of the bound's penalty (Thm 3.6 for intermediate, Thm 3.7 sharp for stale);")
    print("a(chain): exponent of the chain-rule bound (occupancy.bounds, derived here; N^1.5 for the stale form);")
    print("a(Amax), a(drift): exponents of A_max and of the last update's occupancy drift.")
    print(f"{len(jobs)} (family, N, seed) instances x {len(cfg.deltas)} deltas in {elapsed:.1f} s wall, {cpu:.1f} s CPU, {cfg.workers} worker(s)")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
