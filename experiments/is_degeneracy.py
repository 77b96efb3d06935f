"""Importance-weight degeneration when reweighting replaces resampling (TeamTR Table 10's counterpart).

    python -m experiments.is_degeneracy            # full
    python -m experiments.is_degeneracy --quick    # smoke version

The stale_is (SAT) and stale_happo (HAPPO) modes of ``trust_region.stage`` train update i of a
stage on the stage-start batch, reweighting each trajectory by the product over its messages from
the already-updated agents sigma(1..i-1) of pi_new(a | x) / pi_cur(a | x):
rho(tau) = prod_t rho_t, truncated c = min(1, rho) in SAT (stale_is), untruncated in HAPPO.

For every family, team size N, per-agent radius delta and seed: a stage-start batch of B team
trajectories is sampled with ``occupancy.sampling.TabularSampler`` from pi_cur; a stage of exact
TeamTR steps (each agent moved along its intermediate advantage with agent-weighted reverse KL =
delta, ``occupancy.projection.trust_region_stage``) gives the new policies; the weights every
update i would use are computed on the batch. Reported per (mode, N, step i): effective sample size
per batch ESS/B = (sum w)^2 / (B sum w^2), the weight quantiles P95, P99, max and the share of
weights above 10 (over trajectories; each trajectory counted once).

Writes results/is_degeneracy/{records.csv, summary.csv, summary.json, config.json, seeds.json}.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from experiments.common import cli_overrides, cpu_seconds, results_dir, run_pool, save_run_metadata, write_csv, write_json

IS_MODES = ("stale_is", "stale_happo")


@dataclass(frozen=True)
class DegeneracyConfig:
    """families; n_agents (team sizes); deltas (per-update agent-weighted reverse KL); seeds;
    prompts and group_size (B = prompts * group_size trajectories per batch); rounds; gamma;
    temperature (initial policy); workers."""

    families: tuple[str, ...] = ("layered", "board", "vote", "chain", "agree")
    n_agents: tuple[int, ...] = (2, 3, 5, 8)
    deltas: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: int = 10
    prompts: int = 128
    group_size: int = 8
    rounds: int = 2
    gamma: float = 0.99
    temperature: float = 1.0
    workers: int = 2
    seed0: int = 0
    out: str = "is_degeneracy"

    def __post_init__(self) -> None:
        if min(self.n_agents) < 1 or min(self.deltas) <= 0 or self.seeds < 1:
            raise ValueError("DegeneracyConfig: n_agents >= 1, deltas > 0 and seeds >= 1 required")
        if self.prompts < 1 or self.group_size < 1:
            raise ValueError(f"DegeneracyConfig.prompts and group_size must be >= 1, got {self.prompts}, {self.group_size}")
        if self.rounds < 1 or not (0 <= self.gamma < 1):
            raise ValueError(f"DegeneracyConfig: rounds >= 1 and gamma in [0, 1) required, got {self.rounds}, {self.gamma}")


QUICK = dict(n_agents=(2, 3, 5), deltas=(0.05,), seeds=3, prompts=64, group_size=4)


def weight_stats(w: np.ndarray) -> dict[str, float]:
    """ESS/B, P95, P99, max, share above 10 and mean of trajectory weights w (B,)."""
    w = np.asarray(w, dtype=np.float64)
    b = w.size
    s2 = float(np.sum(w**2))
    return {
        "ess_frac": float(np.sum(w) ** 2 / (b * s2)) if s2 > 0 else 0.0,
        "p95": float(np.quantile(w, 0.95)),
        "p99": float(np.quantile(w, 0.99)),
        "max": float(w.max()),
        "share_gt10": float(np.mean(w > 10.0)),
        "mean": float(w.mean()),
    }


def trajectory_log_rho(traj: np.ndarray, state: np.ndarray, action: np.ndarray, agent_of: np.ndarray,
                       log_ratio: np.ndarray, agents: set[int], n_traj: int) -> np.ndarray:
    """sum over each trajectory's messages from ``agents`` of log pi_new/pi_cur (n_traj,).

    traj, state, action (M,): the batch's messages; agent_of (S,): the router; log_ratio (S, A):
    log pi_new - log pi_cur of the agent owning each row."""
    sel = np.isin(agent_of[state], list(agents)) if agents else np.zeros(state.shape, dtype=bool)
    return np.bincount(traj[sel], weights=log_ratio[state[sel], action[sel]], minlength=n_traj)


def run_instance(job: tuple[DegeneracyConfig, str, int, int]) -> list[dict]:
    cfg, family, n, seed = job
    from occupancy import families
    from occupancy.projection import trust_region_stage
    from occupancy.sampling import TabularSampler

    mdp = families.make_family(family, n, seed=seed, rounds=cfg.rounds, gamma=cfg.gamma)
    pi = families.initial_policy(mdp, seed, cfg.temperature)
    sampler = TabularSampler(mdp, seed=seed)
    prompts = sampler.draw_prompts(cfg.prompts)
    batch = sampler.sample(pi, prompts, cfg.group_size)
    traj = batch.trajectory.numpy()
    state = batch.context[:, 0].numpy()
    action = batch.tokens[:, 0].numpy()
    n_traj = cfg.prompts * cfg.group_size
    router = np.asarray(mdp.router)
    order = list(range(n))
    out = []
    for delta in cfg.deltas:
        new, _ = trust_region_stage(mdp, pi, order, delta, weighting="agent", method="sparse")
        team_new = pi.copy()
        for j in order:
            team_new = mdp.replace_agent(team_new, j, new[j])
        with np.errstate(divide="ignore"):
            log_ratio = np.log(team_new) - np.log(pi)
        log_ratio[~np.isfinite(log_ratio)] = 0.0
        for i in range(1, n + 1):
            lr = trajectory_log_rho(traj, state, action, router, log_ratio, set(order[: i - 1]), n_traj)
            rho = np.exp(lr)
            for mode in IS_MODES:
                w = np.minimum(rho, 1.0) if mode == "stale_is" else rho
                out.append({"family": family, "N": n, "seed": seed, "delta": delta, "step": i, "mode": mode,
                            "batch": n_traj, **weight_stats(w)})
    return out


def summarize(records: list[dict]) -> list[dict]:
    """Per (family, mode, delta, N, step): mean and std over seeds of ESS/B; mean over seeds of the
    weight statistics."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["family"], r["mode"], r["delta"], r["N"], r["step"]), []).append(r)
    rows = []
    for key in sorted(groups):
        g = groups[key]
        ess = np.array([r["ess_frac"] for r in g])
        rows.append({"family": key[0], "mode": key[1], "delta": key[2], "N": key[3], "step": key[4], "seeds": len(g),
                     "ess_frac_mean": float(ess.mean()), "ess_frac_std": float(ess.std(ddof=1)) if len(g) > 1 else 0.0,
                     **{f"{k}_mean": float(np.mean([r[k] for r in g])) for k in ("p95", "p99", "max", "share_gt10")}})
    return rows


def format_table(rows: list[dict], family: str, delta: float) -> str:
    head = f"{'mode':12s} {'N':>3s} {'step':>4s} {'ESS/B':>13s} {'P95(w)':>8s} {'P99(w)':>8s} {'max(w)':>9s} {'Pr[w>10]':>9s}"
    lines = [f"family {family}, delta = {delta:g}", head, "-" * len(head)]
    for r in rows:
        if r["family"] != family or r["delta"] != delta or r["step"] < 2:
            continue
        lines.append(f"{r['mode']:12s} {r['N']:3d} {r['step']:4d} {r['ess_frac_mean']:6.3f}±{r['ess_frac_std']:5.3f} "
                     f"{r['p95_mean']:8.3g} {r['p99_mean']:8.3g} {r['max_mean']:9.3g} {100 * r['share_gt10_mean']:8.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--families", nargs="+")
    parser.add_argument("--n-agents", nargs="+", type=int)
    parser.add_argument("--deltas", nargs="+", type=float)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--group-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    kwargs = dict(QUICK) if args.quick else {}
    if args.quick:
        kwargs["out"] = "is_degeneracy_quick"
    kwargs.update(cli_overrides(args, ("families", "n_agents", "deltas"),
                                ("seeds", "prompts", "group_size", "workers", "out")))
    cfg = DegeneracyConfig(**kwargs)
    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.seeds))
    jobs = sorted(((cfg, f, n, s) for f in cfg.families for n in cfg.n_agents for s in seeds), key=lambda j: -j[2])
    start = time.time()
    cpu0 = cpu_seconds()
    records: list[dict] = []
    for recs in run_pool(run_instance, jobs, workers=cfg.workers, desc="instances"):
        records.extend(recs)
    elapsed = time.time() - start
    cpu = cpu_seconds() - cpu0
    records.sort(key=lambda r: (r["family"], r["mode"], r["delta"], r["N"], r["step"], r["seed"]))
    rows = summarize(records)
    out = results_dir(cfg.out)
    save_run_metadata(out, cfg, seeds)
    write_csv(out / "records.csv", records)
    write_csv(out / "summary.csv", rows)
    write_json(out / "summary.json", {"elapsed_s": elapsed, "cpu_s": cpu, "rows": rows})
    for family in cfg.families:
        for delta in cfg.deltas:
            print(format_table(rows, family, delta))
            print()
    print("ESS/B = (sum w)^2 / (B sum w^2) over the B stage-start trajectories; w = min(1, rho) (stale_is, SAT) or rho "
          "(stale_happo, HAPPO), rho = product of pi_new/pi_cur over the already-updated agents' messages; mean±std over seeds.")
    print(f"{len(jobs)} instances in {elapsed:.1f} s wall, {cpu:.1f} s CPU; results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
