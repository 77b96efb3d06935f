"""Speed of the exact team engine versus a flattened joint-action MDP.

    python -m experiments.bench_exact [--family board] [--rounds 1 4] [--ns 2 4 8 16 32]
    python -m experiments.bench_exact --family layered --param n_env=10 --param n_context=100 \
        --rounds 1 --out results/bench_exact_layered

For every N it builds the family instance, a random team (``initial_policy``) and times
- the engine: ``occupancy.exact.evaluate`` (V, Q, A, d, J) with the automatic method (dense LU up
  to 1500 states, sparse LU above) and with the sparse LU forced;
- the flattened joint-action MDP, what a user of a single-agent MDP toolbox would do: action space
  A^N, each joint action acting through the active agent's component, dense arrays (S, A^N, S);
  the joint policy is the product of the active agent's row and uniform no-op components, and one
  evaluation computes P_pi, r_pi, V, Q (S, A^N) and d by dense solves. It is skipped (with the
  reason printed) when A^N * S^2 * 8 bytes exceeds ``--max-bytes`` (default 2 GB).
Both evaluations must give the same J (checked to 1e-9). Reports evaluations per second, the ratio,
and the fitted exponent of the engine's time per evaluation in N. Writes
results/bench_exact/bench_exact.json and .csv (plus the resolved config). BLAS runs single-threaded
unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS are set.
"""

from __future__ import annotations

import os

# One BLAS thread unless the user chose otherwise: on a small shared machine, multi-threaded LU of
# a few hundred states is dominated by thread contention (measured here: 70x slower at S = 145).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import csv
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from occupancy.exact import evaluate
from occupancy.families import FAMILIES, initial_policy, make_family
from occupancy.mdp import TeamMDP


@dataclass(frozen=True)
class BenchConfig:
    """family in FAMILIES; ns: team sizes >= 1; rounds: values >= 0; gamma in [0, 1); budget_s > 0:
    timing budget per measurement; max_bytes > 0: memory cap of the joint-action arrays."""

    family: str = "board"
    ns: tuple[int, ...] = (2, 4, 8, 16, 32)
    rounds: tuple[int, ...] = (1, 4)
    gamma: float = 0.95
    seed: int = 0
    budget_s: float = 0.5
    max_bytes: float = 2e9
    out: str = "results/bench_exact"
    params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"BenchConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if not self.ns or min(self.ns) < 1:
            raise ValueError(f"BenchConfig.ns must be non-empty team sizes >= 1, got {self.ns}")
        if not self.rounds or min(self.rounds) < 0:
            raise ValueError(f"BenchConfig.rounds must be non-empty values >= 0, got {self.rounds}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"BenchConfig.gamma must be in [0, 1), got {self.gamma}")
        if self.budget_s <= 0:
            raise ValueError(f"BenchConfig.budget_s must be > 0, got {self.budget_s}")
        if self.max_bytes <= 0:
            raise ValueError(f"BenchConfig.max_bytes must be > 0, got {self.max_bytes}")


def evals_per_second(fn: Callable[[], object], budget_s: float) -> float:
    """Calls of ``fn`` per second: repeat until ``budget_s`` has elapsed (at least 2 calls after a
    warm-up call); best of three such runs of budget_s / 3."""
    fn()
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if n >= 2 and el >= budget_s / 3:
                break
        best = max(best, n / el)
    return best


def joint_arrays(mdp: TeamMDP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened joint-action MDP: digits (A^N, N) of every joint action, T (S, A^N, S), r (S, A^N).
    Joint action u acts through the component u_{router[x]} of the active agent (terminal states:
    component 0; they are absorbing with zero reward anyway)."""
    s, a, n = mdp.n_states, mdp.n_actions, mdp.n_agents
    digits = (np.arange(a**n)[:, None] // a ** np.arange(n)[None, :]) % a  # (A^N, N)
    owner = np.maximum(np.asarray(mdp.router), 0)
    comp = digits[:, owner].T  # (S, A^N): the active component at each state
    t_dense = mdp.dense_transitions()
    t_joint = t_dense[np.arange(s)[:, None], comp]  # (S, A^N, S)
    r_joint = np.asarray(mdp.rewards)[np.arange(s)[:, None], comp]
    return comp, t_joint, r_joint


def joint_evaluate(mdp: TeamMDP, comp: np.ndarray, t_joint: np.ndarray, r_joint: np.ndarray, pi: np.ndarray):
    """One evaluation of the flattened MDP: returns (V (S,), Q (S, A^N), d (S,), J)."""
    s = mdp.n_states
    a_n = comp.shape[1]
    n_other = a_n // mdp.n_actions
    pi_joint = pi[np.arange(s)[:, None], comp] / n_other  # (S, A^N): active row x uniform no-ops
    p = np.einsum("xu,xuy->xy", pi_joint, t_joint)
    r = np.einsum("xu,xu->x", pi_joint, r_joint)
    system = np.eye(s) - mdp.gamma * p
    v = np.linalg.solve(system, r)
    q = r_joint + mdp.gamma * np.einsum("xuy,y->xu", t_joint, v)
    d = (1 - mdp.gamma) * np.linalg.solve(system.T, np.asarray(mdp.initial))
    return v, q, d, float(np.asarray(mdp.initial) @ v)


def _params(cfg: BenchConfig) -> dict:
    """Family parameters from ``--param name=value`` (ints stay ints)."""
    return {k: int(v) if float(v).is_integer() else float(v) for k, v in cfg.params}


def run(cfg: BenchConfig) -> list[dict]:
    rows = []
    for rounds in cfg.rounds:
        for n in cfg.ns:
            mdp = make_family(cfg.family, n, seed=cfg.seed, rounds=rounds, gamma=cfg.gamma, **_params(cfg))
            pi = initial_policy(mdp, seed=cfg.seed + 1)
            s, a = mdp.n_states, mdp.n_actions
            j_engine = evaluate(mdp, pi).J
            j_sparse = evaluate(mdp, pi, method="sparse").J
            if abs(j_engine - j_sparse) > 1e-9:
                raise RuntimeError(f"dense and sparse J disagree at N={n}: {j_engine} vs {j_sparse}")
            eng = evals_per_second(lambda: evaluate(mdp, pi, check=False), cfg.budget_s)
            eng_sparse = evals_per_second(lambda: evaluate(mdp, pi, method="sparse", check=False), cfg.budget_s)
            joint_bytes = float(a) ** n * s * s * 8
            row = {
                "family": cfg.family, "rounds": rounds, "N": n, "S": s, "A": a, "gamma": cfg.gamma,
                "engine_evals_per_s": eng, "engine_sparse_evals_per_s": eng_sparse,
                "joint_actions": a**n if joint_bytes <= cfg.max_bytes else None,
                "joint_bytes": joint_bytes, "joint_evals_per_s": None, "speedup": None, "skip_reason": "",
                "J": j_engine,
            }
            if joint_bytes > cfg.max_bytes:
                row["skip_reason"] = f"joint arrays need {joint_bytes / 1e9:.3g} GB > {cfg.max_bytes / 1e9:.3g} GB"
            else:
                comp, tj, rj = joint_arrays(mdp)
                j_joint = joint_evaluate(mdp, comp, tj, rj, pi)[3]
                if abs(j_joint - j_engine) > 1e-9:
                    raise RuntimeError(f"joint-action J {j_joint} differs from the engine's {j_engine} at N={n}")
                jt = evals_per_second(lambda: joint_evaluate(mdp, comp, tj, rj, pi), cfg.budget_s)
                row["joint_evals_per_s"] = jt
                row["speedup"] = eng / jt
                del comp, tj, rj
            rows.append(row)
            print(_fmt(row), flush=True)
    return rows


_HEADER = f"{'R':>2} {'N':>3} {'S':>6} {'engine/s':>10} {'sparse/s':>10} {'joint/s':>10} {'ratio':>9}  note"


def _fmt(r: dict) -> str:
    joint = f"{r['joint_evals_per_s']:10.1f}" if r["joint_evals_per_s"] is not None else f"{'-':>10}"
    ratio = f"{r['speedup']:9.1f}" if r["speedup"] is not None else f"{'-':>9}"
    return (
        f"{r['rounds']:>2} {r['N']:>3} {r['S']:>6} {r['engine_evals_per_s']:10.1f} "
        f"{r['engine_sparse_evals_per_s']:10.1f} {joint} {ratio}  {r['skip_reason']}"
    )


def growth_exponent(rows: list[dict], key: str) -> dict[int, float]:
    """Least-squares slope of log(seconds per evaluation) against log N, per rounds value."""
    out = {}
    for rounds in sorted({r["rounds"] for r in rows}):
        sel = [r for r in rows if r["rounds"] == rounds]
        if len(sel) >= 2:
            x = np.log([r["N"] for r in sel])
            y = np.log([1.0 / r[key] for r in sel])
            out[rounds] = float(np.polyfit(x, y, 1)[0])
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = BenchConfig()
    ap.add_argument("--family", default=d.family, choices=FAMILIES)
    ap.add_argument("--ns", type=int, nargs="+", default=list(d.ns))
    ap.add_argument("--rounds", type=int, nargs="+", default=list(d.rounds))
    ap.add_argument("--gamma", type=float, default=d.gamma)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--budget-s", type=float, default=d.budget_s)
    ap.add_argument("--max-bytes", type=float, default=d.max_bytes)
    ap.add_argument("--out", default=d.out)
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="family parameter, e.g. --param n_context=100 (repeatable)")
    args = ap.parse_args(argv)
    try:
        params = tuple((k, float(v)) for k, v in (item.split("=", 1) for item in args.param))
    except ValueError as exc:
        raise SystemExit(f"--param expects NAME=VALUE with a numeric value: {exc}")
    cfg = BenchConfig(
        family=args.family, ns=tuple(args.ns), rounds=tuple(args.rounds), gamma=args.gamma, seed=args.seed,
        budget_s=args.budget_s, max_bytes=args.max_bytes, out=args.out, params=params,
    )
    print(
        f"exact evaluations per second, family={cfg.family} {dict(cfg.params)}, gamma={cfg.gamma} "
        "(R = rounds; engine = auto method, sparse = sparse LU forced; ratio = engine/joint)"
    )
    print(_HEADER)
    rows = run(cfg)
    exp_auto = growth_exponent(rows, "engine_evals_per_s")
    exp_sparse = growth_exponent(rows, "engine_sparse_evals_per_s")
    for rounds in exp_auto:
        print(
            f"rounds={rounds}: time per evaluation ~ N^{exp_auto[rounds]:.2f} (auto), "
            f"N^{exp_sparse[rounds]:.2f} (sparse LU)"
        )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "config": asdict(cfg),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "numpy": np.__version__,
        "blas_threads": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "growth_exponent_auto": exp_auto,
        "growth_exponent_sparse": exp_sparse,
    }
    (out / "bench_exact.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    with open(out / "bench_exact.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out / 'bench_exact.json'} and {out / 'bench_exact.csv'}")
    return rows


if __name__ == "__main__":
    main()
