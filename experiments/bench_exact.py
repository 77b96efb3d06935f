"""Speed of the exact team engine against a dense numpy solve and a flattened joint-action MDP.

    python -m experiments.bench_exact                 # size ladder 7 .. ~100,000 states
    python -m experiments.bench_exact --family board --ns 2 4 8 --rounds 1   # one family only
    python -m experiments.bench_exact --switch        # the dense/sparse switch measurement

For every instance it builds the family instance and a random team (``initial_policy``) and times,
side by side, in the same run:
- engine: ``occupancy.exact.evaluate`` (V, Q, A, d, J) with method="auto" (dense LAPACK LU for
  S <= occupancy.exact.DENSE_LIMIT = 96 states or densely filled instances, sparse LU otherwise);
- dense: a plain dense numpy reference written here (P_pi and r_pi by einsum, V and d by two
  ``np.linalg.solve`` calls, Q, A, J), what a user with numpy alone would write. Skipped above
  ``--dense-max-states`` states (default 6000: the (S, A, S) array and an O(S^3) solve);
- joint: the flattened joint-action MDP, what a user of a single-agent MDP toolbox would do: action
  space A^N, each joint action acting through the active agent's component, dense arrays
  (S, A^N, S); the joint policy is the product of the active agent's row and uniform no-op
  components. Skipped (with the reason printed) when A^N * S^2 * 8 bytes exceeds ``--max-bytes``.
All evaluations must give the same J (checked to 1e-9). Prints evaluations per second and the
ratios engine/dense and engine/joint, plus (``--batch``) the batched evaluation of 64 policies
(``evaluate_batch``) against 64 single calls. Writes results/bench_exact/bench_exact.json and .csv.
BLAS runs single-threaded unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS are set.
"""

from __future__ import annotations

import os

# One BLAS thread unless the user chose otherwise: on a small shared machine, multi-threaded LU of
# a few hundred states is dominated by thread contention (measured here: 70x slower at S = 145).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from experiments.common import write_csv, write_json
from occupancy.exact import DENSE_LIMIT, evaluate, evaluate_batch, uses_dense_path
from occupancy.families import FAMILIES, initial_policy, make_family
from occupancy.mdp import TeamMDP


@dataclass(frozen=True)
class Case:
    """One benchmark instance: ``make_family(family, n, rounds=rounds, **params)``."""

    family: str
    n: int
    rounds: int
    params: tuple[tuple[str, float], ...] = ()


#: The default size ladder: board instances of 7 .. 1153 states, then large layered instances of
#: ~4,000 .. ~100,000 states (the size of tests/test_exact.py's sparse test).
_LARGE = (("n_env", 50), ("n_context", 100), ("n_actions", 3), ("branching", 2))
DEFAULT_CASES: tuple[Case, ...] = (
    *(Case("board", n, 1) for n in (2, 4, 8, 16, 32)),
    *(Case("board", n, 4) for n in (2, 4, 8, 16, 32)),
    *(Case("layered", n, 1, _LARGE) for n in (1, 4, 20)),
)


@dataclass(frozen=True)
class BenchConfig:
    """Validated benchmark configuration."""

    cases: tuple[Case, ...] = field(default=DEFAULT_CASES, metadata={"help": "instances to time"})
    gamma: float = field(default=0.95, metadata={"help": "per-turn discount in [0, 1)"})
    seed: int = field(default=0, metadata={"help": "instance and policy seed"})
    budget_s: float = field(default=0.5, metadata={"help": "timing budget per measurement (s)"})
    max_bytes: float = field(default=2e9, metadata={"help": "memory cap of the joint-action arrays (bytes)"})
    dense_max_states: int = field(default=6000, metadata={"help": "largest S timed with the dense reference"})
    batch: int = field(default=64, metadata={"help": "policies of the batched-evaluation column (0: skip)"})
    out: str = field(default="results/bench_exact", metadata={"help": "output directory"})

    def __post_init__(self) -> None:
        for c in self.cases:
            if c.family not in FAMILIES:
                raise ValueError(f"BenchConfig.cases: family must be one of {FAMILIES}, got {c.family!r}")
            if c.n < 1 or c.rounds < 0:
                raise ValueError(f"BenchConfig.cases: need N >= 1 and rounds >= 0, got {c}")
        if not self.cases:
            raise ValueError("BenchConfig.cases must not be empty")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"BenchConfig.gamma must be in [0, 1), got {self.gamma}")
        if self.budget_s <= 0 or self.max_bytes <= 0 or self.dense_max_states < 1 or self.batch < 0:
            raise ValueError("BenchConfig: budget_s, max_bytes must be > 0, dense_max_states >= 1, batch >= 0")


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


# ---------------------------------------------------------------------------------------------
# The two references


def dense_reference(t_dense: np.ndarray, rewards: np.ndarray, initial: np.ndarray, gamma: float, pi: np.ndarray):
    """Plain numpy: T (S, A, S), r (S, A), mu (S,), pi (S, A) -> (V (S,), Q (S, A), A (S, A), d (S,), J)."""
    s = rewards.shape[0]
    p = np.einsum("xa,xay->xy", pi, t_dense)
    r = np.einsum("xa,xa->x", pi, rewards)
    system = np.eye(s) - gamma * p
    v = np.linalg.solve(system, r)
    q = rewards + gamma * np.einsum("xay,y->xa", t_dense, v)
    d = (1 - gamma) * np.linalg.solve(system.T, initial)
    return v, q, q - v[:, None], d, float(initial @ v)


def joint_arrays(mdp: TeamMDP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened joint-action MDP: comp (S, A^N) the active component of every joint action at every
    state, T (S, A^N, S), r (S, A^N). Joint action u acts through the component u_{router[x]} of the
    active agent (terminal states: component 0; they are absorbing with zero reward anyway)."""
    s, a, n = mdp.n_states, mdp.n_actions, mdp.n_agents
    digits = (np.arange(a**n)[:, None] // a ** np.arange(n)[None, :]) % a  # (A^N, N)
    owner = np.maximum(np.asarray(mdp.router), 0)
    comp = digits[:, owner].T  # (S, A^N)
    t_dense = mdp.dense_transitions()
    t_joint = t_dense[np.arange(s)[:, None], comp]  # (S, A^N, S)
    r_joint = np.asarray(mdp.rewards)[np.arange(s)[:, None], comp]
    return comp, t_joint, r_joint


def joint_evaluate(mdp: TeamMDP, comp: np.ndarray, t_joint: np.ndarray, r_joint: np.ndarray, pi: np.ndarray):
    """One evaluation of the flattened MDP: returns (V (S,), Q (S, A^N), d (S,), J)."""
    s = mdp.n_states
    n_other = comp.shape[1] // mdp.n_actions
    pi_joint = pi[np.arange(s)[:, None], comp] / n_other  # (S, A^N): active row x uniform no-ops
    p = np.einsum("xu,xuy->xy", pi_joint, t_joint)
    r = np.einsum("xu,xu->x", pi_joint, r_joint)
    system = np.eye(s) - mdp.gamma * p
    v = np.linalg.solve(system, r)
    q = r_joint + mdp.gamma * np.einsum("xuy,y->xu", t_joint, v)
    d = (1 - mdp.gamma) * np.linalg.solve(system.T, np.asarray(mdp.initial))
    return v, q, d, float(np.asarray(mdp.initial) @ v)


# ---------------------------------------------------------------------------------------------
# Runs


def _instance(cfg: BenchConfig, case: Case) -> tuple[TeamMDP, np.ndarray]:
    params = {k: int(v) if float(v).is_integer() else float(v) for k, v in case.params}
    mdp = make_family(case.family, case.n, seed=cfg.seed, rounds=case.rounds, gamma=cfg.gamma, **params)
    return mdp, initial_policy(mdp, seed=cfg.seed + 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def bench_case(cfg: BenchConfig, case: Case) -> dict:
    """Time engine, dense reference, joint MDP (and the batch) on one instance; one result row."""
    mdp, pi = _instance(cfg, case)
    s, a = mdp.n_states, mdp.n_actions
    j_engine = evaluate(mdp, pi).J
    eng = evals_per_second(lambda: evaluate(mdp, pi, check=False), cfg.budget_s)
    row = {"family": case.family, "rounds": case.rounds, "N": case.n, "S": s, "A": a, "gamma": cfg.gamma,
           "path": "dense" if uses_dense_path(mdp) else "sparse", "engine_evals_per_s": eng,
           "dense_evals_per_s": None, "joint_evals_per_s": None, "engine_over_dense": None,
           "engine_over_joint": None, "batch_speedup": None, "note": "", "J": j_engine}
    notes = []
    if s <= cfg.dense_max_states:
        t_dense, r, mu = mdp.dense_transitions(), np.asarray(mdp.rewards), np.asarray(mdp.initial)
        j_dense = dense_reference(t_dense, r, mu, cfg.gamma, pi)[4]
        if abs(j_dense - j_engine) > 1e-9 * max(1.0, abs(j_engine)):
            raise RuntimeError(f"dense reference J {j_dense} differs from the engine's {j_engine} ({case})")
        row["dense_evals_per_s"] = evals_per_second(lambda: dense_reference(t_dense, r, mu, cfg.gamma, pi), cfg.budget_s)
        del t_dense
    else:
        notes.append(f"dense skipped (S > {cfg.dense_max_states})")
    joint_bytes = float(a) ** case.n * s * s * 8
    if joint_bytes <= cfg.max_bytes:
        comp, tj, rj = joint_arrays(mdp)
        j_joint = joint_evaluate(mdp, comp, tj, rj, pi)[3]
        if abs(j_joint - j_engine) > 1e-9 * max(1.0, abs(j_engine)):
            raise RuntimeError(f"joint-action J {j_joint} differs from the engine's {j_engine} ({case})")
        row["joint_evals_per_s"] = evals_per_second(lambda: joint_evaluate(mdp, comp, tj, rj, pi), cfg.budget_s)
        del comp, tj, rj
    else:
        notes.append(f"joint skipped ({joint_bytes / 1e9:.3g} GB > {cfg.max_bytes / 1e9:.3g} GB)")
    if cfg.batch and uses_dense_path(mdp):
        rng = np.random.default_rng(cfg.seed)
        pis = rng.dirichlet(np.ones(a), size=(cfg.batch, s))
        looped = evals_per_second(lambda: [evaluate(mdp, p, check=False) for p in pis], cfg.budget_s)
        batched = evals_per_second(lambda: evaluate_batch(mdp, pis, check=False), cfg.budget_s)
        row["batch_speedup"] = batched / looped
    row["engine_over_dense"] = _ratio(eng, row["dense_evals_per_s"])
    row["engine_over_joint"] = _ratio(eng, row["joint_evals_per_s"])
    row["note"] = "; ".join(notes)
    return row


_HEADER = (f"{'family':8s} {'R':>2} {'N':>3} {'S':>7} {'path':>6} {'engine/s':>10} {'dense/s':>10} {'joint/s':>10} "
           f"{'eng/dense':>9} {'eng/joint':>10} {'batch':>6}  note")


def _f(x: float | None, spec: str, width: int) -> str:
    return format(x, spec) if x is not None else f"{'-':>{width}}"


def format_row(r: dict) -> str:
    return (f"{r['family']:8s} {r['rounds']:>2} {r['N']:>3} {r['S']:>7} {r['path']:>6} {r['engine_evals_per_s']:10.1f} "
            f"{_f(r['dense_evals_per_s'], '10.1f', 10)} {_f(r['joint_evals_per_s'], '10.2f', 10)} "
            f"{_f(r['engine_over_dense'], '9.2f', 9)} {_f(r['engine_over_joint'], '10.1f', 10)} "
            f"{_f(r['batch_speedup'], '6.2f', 6)}  {r['note']}")


def run(cfg: BenchConfig) -> list[dict]:
    print(f"exact evaluations per second (V, Q, A, d, J), gamma={cfg.gamma}; eng/dense and eng/joint: speed "
          f"ratios; batch: evaluate_batch of {cfg.batch} policies vs {cfg.batch} evaluate calls (dense path)")
    print(_HEADER)
    rows = []
    for case in cfg.cases:
        rows.append(bench_case(cfg, case))
        print(format_row(rows[-1]), flush=True)
    dense = [r["engine_over_dense"] for r in rows if r["engine_over_dense"] is not None]
    if dense:
        print(f"engine / dense reference: min {min(dense):.2f}x, max {max(dense):.2f}x over {len(dense)} sizes")
    return rows


def switch_table(cfg: BenchConfig) -> list[dict]:
    """The measurement behind occupancy.exact.DENSE_LIMIT: dense-path / sparse-path time on every
    family instance with 40-400 states (N <= 12, rounds 1-2) and on dense random instances."""
    from occupancy.instances import random_team_mdp

    cases = []
    for fam in FAMILIES:
        for n in (4, 6, 8, 10, 12):
            for rounds in (1, 2):
                mdp = make_family(fam, n, seed=cfg.seed, rounds=rounds, gamma=cfg.gamma)
                if 40 <= mdp.n_states <= 400:
                    cases.append((f"{fam} N={n} R={rounds}", mdp))
    rng = np.random.default_rng(cfg.seed)
    cases += [(f"random S={s}", random_team_mdp(rng, 3, s, 3, cfg.gamma)) for s in (50, 100, 200, 300)]
    rows = []
    print(f"{'instance':22s} {'S':>5} {'nnz/(x,a)':>9} {'dense us':>9} {'sparse us':>9} {'dense/sparse':>12}")
    for label, mdp in sorted(cases, key=lambda c: c[1].n_states):
        pi = initial_policy(mdp, seed=cfg.seed + 1)
        d = 1e6 / evals_per_second(lambda: evaluate(mdp, pi, method="dense", check=False), cfg.budget_s / 2)
        sp_ = 1e6 / evals_per_second(lambda: evaluate(mdp, pi, method="sparse", check=False), cfg.budget_s / 2)
        fill = mdp.transitions.nnz / (mdp.n_states * mdp.n_actions)
        rows.append({"instance": label, "S": mdp.n_states, "nnz_per_row": fill, "dense_us": d, "sparse_us": sp_})
        print(f"{label:22s} {mdp.n_states:5d} {fill:9.1f} {d:9.1f} {sp_:9.1f} {d / sp_:12.2f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = BenchConfig()
    ap.add_argument("--family", choices=FAMILIES, help="time only this family (with --ns, --rounds, --param)")
    ap.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="family parameter, e.g. --param n_context=100 (repeatable)")
    ap.add_argument("--gamma", type=float, default=d.gamma)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--budget-s", type=float, default=d.budget_s)
    ap.add_argument("--max-bytes", type=float, default=d.max_bytes)
    ap.add_argument("--dense-max-states", type=int, default=d.dense_max_states)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--switch", action="store_true", help="print the dense/sparse switch measurement instead")
    ap.add_argument("--out", default=d.out)
    args = ap.parse_args(argv)
    try:
        params = tuple((k, float(v)) for k, v in (item.split("=", 1) for item in args.param))
    except ValueError as exc:
        raise SystemExit(f"--param expects NAME=VALUE with a numeric value: {exc}")
    cases = (tuple(Case(args.family, n, r, params) for r in args.rounds for n in args.ns) if args.family
             else DEFAULT_CASES)
    cfg = BenchConfig(cases=cases, gamma=args.gamma, seed=args.seed, budget_s=args.budget_s, max_bytes=args.max_bytes,
                      dense_max_states=args.dense_max_states, batch=args.batch, out=args.out)
    out = Path(cfg.out)
    if args.switch:
        rows = switch_table(cfg)
        write_csv(out / "switch.csv", rows)
        print(f"wrote {out / 'switch.csv'}")
        return rows
    rows = run(cfg)
    meta = {"config": asdict(cfg), "python": platform.python_version(), "machine": platform.machine(),
            "numpy": np.__version__, "dense_limit": DENSE_LIMIT,
            "blas_threads": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    write_json(out / "bench_exact.json", {"meta": meta, "rows": rows})
    write_csv(out / "bench_exact.csv", rows)
    print(f"wrote {out / 'bench_exact.json'} and {out / 'bench_exact.csv'}")
    return rows


if __name__ == "__main__":
    main()
