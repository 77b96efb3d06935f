"""When does resampling pay off in training? The regime map (issue 15).

    python -m experiments.regime_map            # full study (RegimeConfig defaults; ~45 min on 2 cores)
    python -m experiments.regime_map --quick    # smoke version (< 1 min), results/regime_map_quick/

Trains teams of tabular agents exactly as :mod:`experiments.tabular_training` does (one run =
:func:`experiments.tabular_training.run_one`: ``stages`` stages of ``trust_region.run_stage`` on
sampled rollouts, every stage and update measured with the exact evaluator) over a grid of
*cells* (family, N, delta, rounds, order):

- families of the scaling sweep (``occupancy.families.FAMILY_NAMES``: layered, board, vote, chain,
  agree, agree_pair, crowd), N in {2, 4, 8, 16}, radius delta in {0.01, 0.1, 0.5} (per-message
  reverse KL, mean over the agent's messages, checked by the monitor ``monitor``: "exact" = the
  exact per-context KL of trust_region, the default since the "[exact-kl-core]" commit), 1 and 2
  rounds, update order "fixed" (0..N-1, upstream first) and "reversed".
- core modes in every cell: ``intermediate`` (TeamTR: N fresh batches per stage), ``stale`` (naive
  sequential: one batch) and ``token_matched`` (fresh batch of hat_pi^{i-1} before every update on
  1/N of the stage's prompts: the stale mode's budget). ``seeds`` seeds (``large_n_seeds`` for
  N >= ``large_n``).
- the other modes of TeamTR's ablation (``extra_modes``: prefix reuse, SAT IS, HAPPO IS, joint,
  resample every 2, no trust region) in the cells with ``extra_rounds`` x ``extra_orders`` only,
  with ``extra_seeds`` seeds; ``intermediate_prefix`` also in every (rounds, order) at the first
  delta with ``prefix_seeds`` seeds, for the prefix-reuse cost table.

Per cell and mode (summary.csv): final exact J (equal updates) and J at equal generated actions
(J interpolated on cumulative actions, read at the smallest total any mode of the cell reached,
i.e. the stale budget) with 95% t-intervals over seeds; paired differences to ``stale`` (same seed:
same initial policy and rng seeds) at equal updates and at equal actions; regressions (stages whose
exact J fell); exact KL of the updates; and the exact penalties of the stages the run actually
took (``tabular_training.stage_penalties``: |sum_i Gap_i| of the intermediate, stale-occupancy and
stale-batch surrogates, as in the scaling sweep).

Per cell (cells.csv): the paired differences intermediate - stale and token_matched - stale with
their intervals and sign (+1 / -1 where the interval excludes 0), and the measured stale penalty:
the mean per stage of the stale-batch penalty of the stale run's own stages (the surrogate error
that training on the stage-start batch makes), also relative to the stale run's mean |J change|
per stage. correlation.json: Spearman rank correlation across cells of the training gain of
resampling (paired ΔJ) with the measured stale penalty (raw and relative), overall and per
(rounds, order), and the share of cells where resampling wins, per bin of the relative penalty.
prefix_cost.csv: generated actions per stage of prefix reuse against full resampling, measured and
by :func:`prefix_reuse_fraction`. Files: runs.jsonl (one record per run; a rerun resumes from it,
``--fresh`` starts over), summary.csv/json, cells.csv/json, correlation.json, prefix_cost.csv,
config.json, seeds.json. Figures: ``python -m paper_figures --only regime_map
regime_map_token_matched regime_penalty_scatter``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from experiments import common
from experiments import tabular_training as tt

CORE_MODES = ("intermediate", "stale", "token_matched")
EXTRA_MODES = ("intermediate_prefix", "stale_is", "stale_happo", "joint", "resample_every_2", "no_tr")
REFERENCE = "stale"
#: the two comparisons of the regime map: mode - stale
COMPARISONS = ("intermediate", "token_matched")
CELL_KEYS = ("family", "N", "delta", "rounds", "order")
#: modes whose run does not depend on the update order: every update sees the stage-start batch and
#: changes only its own agent's parameters (tested: tests/experiments/test_regime_map.py), so the
#: run of the key cells' order is reused for the others when ``RegimeConfig.reuse_order_invariant``
ORDER_INVARIANT_MODES = ("stale", "joint")
#: per-stage penalties evaluated along the update order (not carried over to a reused run)
ORDER_DEPENDENT_PENALTIES = ("penalty_seq", "penalty_stale_occ", "abs_penalty_stale_batch")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class RegimeConfig:
    """The grid and the shared training settings (validated; every field has help text)."""

    families: tuple[str, ...] = field(default=("layered", "board", "vote", "chain", "agree", "agree_pair", "crowd"),
                                      metadata=_help("names of occupancy.families.FAMILY_NAMES"))
    n_agents: tuple[int, ...] = field(default=(2, 4, 8, 16), metadata=_help("team sizes N (>= 1)"))
    deltas: tuple[float, ...] = field(default=(0.01, 0.1, 0.5), metadata=_help(
        "trust-region radii: per-message reverse KL, mean over the agent's messages (> 0)"))
    rounds: tuple[int, ...] = field(default=(1, 2), metadata=_help("rounds per episode (>= 1)"))
    orders: tuple[str, ...] = field(default=("fixed", "reversed"), metadata=_help(
        "update orders: 'fixed' (0..N-1, upstream first) and/or 'reversed'"))
    modes: tuple[str, ...] = field(default=CORE_MODES, metadata=_help(
        "modes run in every cell (must include 'stale', the reference)"))
    seeds: int = field(default=5, metadata=_help("seeds per core mode in the key cells (extra_rounds x extra_orders)"))
    other_seeds: int = field(default=3, metadata=_help("seeds per core mode in the other cells (cost)"))
    large_n: int = field(default=16, metadata=_help("cells with N >= large_n use at most large_n_seeds seeds"))
    large_n_seeds: int = field(default=5, metadata=_help("seeds for N >= large_n in the key cells (cost)"))
    large_n_other_seeds: int = field(default=2, metadata=_help("seeds for N >= large_n in the other cells (cost)"))
    extra_modes: tuple[str, ...] = field(default=EXTRA_MODES, metadata=_help(
        "further modes (keys of tabular_training.MODE_SPECS), run only in the extra cells"))
    extra_rounds: tuple[int, ...] = field(default=(1,), metadata=_help("rounds of the extra cells"))
    extra_orders: tuple[str, ...] = field(default=("reversed",), metadata=_help("orders of the extra cells"))
    extra_seeds: int = field(default=2, metadata=_help("seeds of the extra modes"))
    extra_max_n: int = field(default=8, metadata=_help("the extra modes run only for N <= extra_max_n (cost)"))
    other_deltas: tuple[float, ...] | None = field(default=(0.01, 0.1), metadata=_help(
        "radii outside the key cores (other cells and the extra modes); None: all deltas (cost)"))
    multi_round_max_n: int = field(default=8, metadata=_help("cells with rounds > 1 only for N <= this (cost)"))
    prefix_seeds: int = field(default=2, metadata=_help(
        "seeds of intermediate_prefix in every (rounds, order) at the first delta (prefix-reuse cost; 0: off)"))
    reuse_order_invariant: bool = field(default=True, metadata=_help(
        "run stale / joint in one order only (that of the key cells) and reuse the run for the others (identical runs)"))
    stages: int = field(default=4, metadata=_help("stages per run"))
    prompts: int = field(default=16, metadata=_help("prompts per stage (>= max N for token_matched)"))
    group_size: int = field(default=8, metadata=_help("trajectories per prompt (>= 2)"))
    lr: float = field(default=0.1, metadata=_help("Adam learning rate"))
    epochs: int = field(default=4, metadata=_help("passes over the agent's messages per update"))
    gamma: float = field(default=0.99, metadata=_help("per-turn discount (also the certificate's)"))
    monitor: str = field(default="exact", metadata=_help("trust-region monitor: 'exact' or 'k1' / 'k2' / 'k3'"))
    instance_seed: int = field(default=0, metadata=_help("seed of the family instance (fixed per family)"))
    workers: int = field(default=2, metadata=_help("worker processes"))
    out: str = field(default="regime_map", metadata=_help("results/<out>/"))

    def __post_init__(self) -> None:
        for name in ("families", "n_agents", "deltas", "rounds", "orders", "modes", "extra_modes", "extra_rounds",
                     "extra_orders"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.other_deltas is not None:
            object.__setattr__(self, "other_deltas", tuple(self.other_deltas))
            if not set(self.other_deltas) <= set(self.deltas):
                raise ValueError(f"RegimeConfig.other_deltas must be a subset of deltas, got {self.other_deltas}")
        if REFERENCE not in self.modes:
            raise ValueError(f"RegimeConfig.modes must include the reference {REFERENCE!r}, got {self.modes}")
        bad = [m for m in self.modes + self.extra_modes if m not in tt.MODE_SPECS]
        if bad:
            raise ValueError(f"RegimeConfig: unknown modes {bad}; choose from {tuple(tt.MODE_SPECS)}")
        for name in ("seeds", "other_seeds", "large_n_seeds", "large_n_other_seeds", "extra_seeds", "large_n"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"RegimeConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not (isinstance(self.prefix_seeds, int) and self.prefix_seeds >= 0):
            raise ValueError(f"RegimeConfig.prefix_seeds must be an int >= 0, got {self.prefix_seeds!r}")
        if "token_matched" in self.modes and self.prompts < max(self.n_agents):
            raise ValueError(f"RegimeConfig.prompts ({self.prompts}) must be >= max N ({max(self.n_agents)}) "
                             "for token_matched")
        if not set(self.extra_rounds) <= set(self.rounds) or not set(self.extra_orders) <= set(self.orders):
            raise ValueError("RegimeConfig.extra_rounds / extra_orders must be subsets of rounds / orders")
        for d in self.deltas:
            if not (d > 0 and math.isfinite(d)):
                raise ValueError(f"RegimeConfig.deltas must be finite and > 0, got {self.deltas}")
        for cfg in self.study_configs().values():  # validates families, orders, rounds, monitor, ...
            del cfg

    def study(self, delta: float, rounds: int, order: str) -> tt.StudyConfig:
        """The tabular_training.StudyConfig of one (delta, rounds, order) slice."""
        return tt.StudyConfig(
            families=self.families, n_agents=self.n_agents, modes=tuple(dict.fromkeys(self.modes + self.extra_modes)),
            seeds=self.seeds, stages=self.stages, prompts=self.prompts, group_size=self.group_size, rounds=rounds,
            gamma=self.gamma, instance_seed=self.instance_seed, lr=self.lr, epochs=self.epochs, delta=delta,
            monitor=self.monitor, order=order, workers=self.workers, out=self.out)

    def study_configs(self) -> dict[tuple[float, int, str], tt.StudyConfig]:
        return {(d, r, o): self.study(d, r, o) for d in self.deltas for r in self.rounds for o in self.orders}

    def seeds_for(self, n: int, mode: str, delta: float, rounds: int, order: str) -> int:
        """How many seeds the grid runs for this (N, mode, delta, rounds, order) (0: not run)."""
        key_cell = rounds in self.extra_rounds and order in self.extra_orders
        if rounds > 1 and n > self.multi_round_max_n:
            return 0
        narrow = self.other_deltas is not None and delta not in self.other_deltas  # only the key cores run it
        if mode in self.modes:
            if narrow and not key_cell:
                return 0
            if key_cell:
                return self.large_n_seeds if n >= self.large_n else self.seeds
            return self.large_n_other_seeds if n >= self.large_n else self.other_seeds
        if mode not in self.extra_modes:
            return 0
        k = self.extra_seeds if (key_cell and n <= self.extra_max_n and not narrow) else 0
        if mode == "intermediate_prefix" and delta == self.deltas[0]:
            k = max(k, self.prefix_seeds)
        return k


FULL: dict[str, Any] = {}
QUICK: dict[str, Any] = dict(families=("agree", "crowd"), n_agents=(2, 3), deltas=(0.01, 0.5), rounds=(1,),
                             seeds=2, other_seeds=2, large_n=3, large_n_seeds=2, large_n_other_seeds=2, extra_seeds=1,
                             prefix_seeds=1, other_deltas=None, stages=2, prompts=4, group_size=4,
                             out="regime_map_quick")


# ---------------------------------------------------------------------------------------------
# Pure helpers


def prefix_reuse_fraction(order: Sequence[int], rounds: int) -> float:
    """Generated actions of one prefix-reuse stage over full resampling (N fresh batches), for
    fixed-length episodes in which agent t acts once per round at turn t (every family here).

    Update 1 samples whole trajectories (N * rounds actions each); before update i > 1 the
    trajectories are kept up to the first turn of the agent changed last, sigma(i-1), in round 0,
    so (N - sigma(i-1)) + (rounds - 1) N actions are regenerated. In reversed order with one round
    this is N (N + 1) / 2 of N^2, i.e. (N + 1) / (2N); with 2 rounds (3N + 1) / (4N)."""
    n = len(order)
    full = n * rounds
    total = full + sum((n - int(order[i - 1])) + (rounds - 1) * n for i in range(1, n))
    return total / (n * full)


def significance(lo: float, hi: float) -> int:
    """+1 if the interval [lo, hi] lies above 0, -1 below, 0 if it contains 0 (or is undefined)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0
    return 1 if lo > 0 else (-1 if hi < 0 else 0)


def _cell(r: dict) -> tuple:
    return (r["family"], int(r["N"]), float(r["delta"]), int(r["rounds"]), r["order"])


def _run_key(r: dict) -> tuple:
    return _cell(r) + (r["mode"], int(r["seed"]))


def _ci(prefix: str, vals: Sequence[float]) -> dict[str, float]:
    m, lo, hi = tt.t_interval(vals)
    return {f"{prefix}_mean": m, f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def summarize(records: list[dict], cfg: RegimeConfig,
              j_opt: dict[tuple[str, int, int], float]) -> tuple[list[dict], list[dict]]:
    """(mode rows: one per cell and mode, cell rows: one per cell) from the run records."""
    by: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in records:
        by.setdefault(_cell(r), {}).setdefault(r["mode"], {})[int(r["seed"])] = r
    mode_rows, cell_rows = [], []
    for cell in sorted(by):
        runs = by[cell]
        if REFERENCE not in runs:
            continue
        family, n, delta, rounds, order = cell
        base = dict(zip(CELL_KEYS, cell))
        budget = min(float(np.sum(r["stages"]["tokens"])) for m in runs.values() for r in m.values())
        grid = np.array([budget])

        def at_budget(r: dict) -> float:
            return float(tt.interp_on_tokens(r["stages"]["tokens"], r["J"], grid)[-1])

        ref = runs[REFERENCE]
        per_mode: dict[str, dict] = {}
        for mode in [m for m in tt.MODE_SPECS if m in runs]:
            rs = runs[mode]
            seeds = sorted(rs)
            J = np.array([rs[s]["J"] for s in seeds])
            st = {k: np.array([np.asarray(rs[s]["stages"][k], dtype=np.float64) for s in seeds])
                  for k in ("tokens",) + tt.STAGE_PENALTY_KEYS}
            kl = np.concatenate([np.asarray(rs[s]["updates"]["kl_exact"], dtype=np.float64) for s in seeds])
            rej = np.concatenate([np.asarray(rs[s]["updates"]["n_rejected"], dtype=np.float64) for s in seeds])
            regress = [tt.count_regressions(rs[s]["J"]) for s in seeds]
            row = {**base, "mode": mode, "seeds": len(seeds), "stages": J.shape[1] - 1,
                   "monitor": ",".join(sorted({rs[s].get("monitor", "?") for s in seeds})),
                   "J0_mean": float(J[:, 0].mean()), "J_opt": j_opt.get((family, n, rounds), math.nan),
                   "token_budget": budget}
            row.update(_ci("J_final", J[:, -1]))
            row.update(_ci("J_equal_tokens", [at_budget(rs[s]) for s in seeds]))
            paired = [rs[s]["J"][-1] - ref[s]["J"][-1] for s in seeds if s in ref]
            paired_tok = [at_budget(rs[s]) - at_budget(ref[s]) for s in seeds if s in ref]
            row.update(_ci("dJ_vs_stale", paired))
            row.update(_ci("dJ_equal_tokens_vs_stale", paired_tok))
            row.update({
                "paired_seeds": len(paired),
                "regressions_per_run": float(np.mean(regress)), "regressions_total": int(np.sum(regress)),
                "tokens_per_stage": float(st["tokens"].mean()),
                "stage_gain_mean": float(np.mean(np.abs(np.diff(J, axis=1)))),
                "kl_exact_mean": float(kl.mean()) if kl.size else math.nan,
                "kl_exact_max": float(kl.max()) if kl.size else math.nan,
                "kl_exceed_share": tt.kl_exceed_share(kl, delta),
                "rejected_per_update": float(rej.mean()) if rej.size else math.nan,
            })
            for k in tt.STAGE_PENALTY_KEYS:
                row[f"{k}_mean"] = float(np.nanmean(st[k])) if np.isfinite(st[k]).any() else math.nan
            mode_rows.append(row)
            per_mode[mode] = row
        s_row = per_mode[REFERENCE]
        crow = {**base, "stages": s_row["stages"], "J0_mean": s_row["J0_mean"], "J_opt": s_row["J_opt"],
                "token_budget": budget,
                "monitor": ",".join(sorted({r["monitor"] for r in per_mode.values()}))}
        for mode, r in per_mode.items():
            crow[f"J_final_{mode}"] = r["J_final_mean"]
            crow[f"regressions_{mode}"] = r["regressions_total"]
            crow[f"seeds_{mode}"] = r["seeds"]
            crow[f"kl_exact_mean_{mode}"] = r["kl_exact_mean"]
        scale = s_row["stage_gain_mean"]
        crow.update({
            "penalty_stale": s_row["penalty_stale_batch_mean"],
            "penalty_stale_rel": s_row["penalty_stale_batch_mean"] / scale if scale > 0 else math.nan,
            "stage_gain_stale": scale,
            "stale_gain_total": s_row["J_final_mean"] - s_row["J0_mean"],
        })
        if "intermediate" in per_mode:
            crow["penalty_stale_of_intermediate"] = per_mode["intermediate"]["penalty_stale_batch_mean"]
            crow["penalty_seq_of_intermediate"] = per_mode["intermediate"]["penalty_seq_mean"]
        for mode in COMPARISONS:
            r = per_mode.get(mode)
            for tag, key in (("", "dJ_vs_stale"), ("_tokens", "dJ_equal_tokens_vs_stale")):
                name = f"d_{mode}{tag}"
                if r is None:
                    crow.update({f"{name}_mean": math.nan, f"{name}_lo": math.nan, f"{name}_hi": math.nan,
                                 f"{name}_sig": 0})
                    continue
                crow.update({f"{name}_mean": r[f"{key}_mean"], f"{name}_lo": r[f"{key}_lo"], f"{name}_hi": r[f"{key}_hi"],
                             f"{name}_sig": significance(r[f"{key}_lo"], r[f"{key}_hi"])})
            tot = crow["stale_gain_total"]
            crow[f"d_{mode}_rel"] = crow[f"d_{mode}_mean"] / tot if tot > 0 else math.nan
        cell_rows.append(crow)
    return mode_rows, cell_rows


def penalty_bins(cells: list[dict], key: str = "penalty_stale_rel", n_bins: int = 4) -> list[dict]:
    """Cells split into ``n_bins`` quantile bins of ``key``: per bin the range, the number of cells,
    the share where intermediate / token_matched beat stale significantly (interval > 0) and where
    they lose (< 0), and the mean relative gain."""
    ok = [c for c in cells if np.isfinite(c.get(key, math.nan))]
    if not ok:
        return []
    ok.sort(key=lambda c: c[key])
    out = []
    for part in np.array_split(np.arange(len(ok)), min(n_bins, len(ok))):
        sel = [ok[i] for i in part]
        row = {"key": key, "low": sel[0][key], "high": sel[-1][key], "cells": len(sel)}
        for mode in COMPARISONS:
            sig = np.array([c[f"d_{mode}_sig"] for c in sel])
            row[f"{mode}_wins"] = float(np.mean(sig > 0))
            row[f"{mode}_loses"] = float(np.mean(sig < 0))
            row[f"{mode}_rel_gain_mean"] = float(np.nanmean([c[f"d_{mode}_rel"] for c in sel]))
        out.append(row)
    return out


def correlations(cells: list[dict]) -> dict[str, Any]:
    """Spearman rank correlation across cells of the paired gain of resampling with the measured
    stale penalty: raw (ΔJ vs penalty) and relative (ΔJ / stale's total gain vs penalty / stale's
    mean |stage change|), overall and per (rounds, order); plus the penalty bins."""
    def rho(sel: list[dict], mode: str, rel: bool) -> float:
        g = [c[f"d_{mode}_rel"] if rel else c[f"d_{mode}_mean"] for c in sel]
        p = [c["penalty_stale_rel"] if rel else c["penalty_stale"] for c in sel]
        return tt.spearman(p, g)

    groups = {"all": cells}
    for c in cells:
        groups.setdefault(f"rounds={c['rounds']},order={c['order']}", []).append(c)
    out: dict[str, Any] = {"groups": {}}
    for name, sel in groups.items():
        out["groups"][name] = {"cells": len(sel), **{
            f"rho_{mode}_{'rel' if rel else 'raw'}": rho(sel, mode, rel) for mode in COMPARISONS for rel in (False, True)}}
    out["bins"] = penalty_bins(cells)
    out["bins_raw"] = penalty_bins(cells, "penalty_stale")
    return out


def prefix_cost(records: list[dict]) -> list[dict]:
    """Per (family, N, rounds, order): generated actions per stage of intermediate_prefix and of
    intermediate, their ratio, and :func:`prefix_reuse_fraction` of the order."""
    acc: dict[tuple, dict[str, list[float]]] = {}
    for r in records:
        if r["mode"] not in ("intermediate", "intermediate_prefix"):
            continue
        k = (r["family"], int(r["N"]), int(r["rounds"]), r["order"])
        acc.setdefault(k, {}).setdefault(r["mode"], []).extend(float(t) for t in r["stages"]["tokens"])
    rows = []
    for (family, n, rounds, order), m in sorted(acc.items()):
        if "intermediate_prefix" not in m:
            continue
        sigma = list(range(n)) if order == "fixed" else list(range(n - 1, -1, -1))
        pre = float(np.mean(m["intermediate_prefix"]))
        full = float(np.mean(m["intermediate"])) if "intermediate" in m else math.nan
        rows.append({"family": family, "N": n, "rounds": rounds, "order": order, "tokens_prefix": pre,
                     "tokens_full": full, "ratio": pre / full if full > 0 else math.nan,
                     "formula": prefix_reuse_fraction(sigma, rounds)})
    return rows


# ---------------------------------------------------------------------------------------------
# Driver


def _source_order(cfg: RegimeConfig) -> str:
    """The order whose order-invariant runs are reused: that of the key cells (run first)."""
    return cfg.extra_orders[0] if cfg.extra_orders else cfg.orders[0]


def _reused(cfg: RegimeConfig, mode: str, order: str) -> bool:
    return cfg.reuse_order_invariant and mode in ORDER_INVARIANT_MODES and order != _source_order(cfg)


def _phase(cfg: RegimeConfig, scfg: tt.StudyConfig, mode: str) -> int:
    """Run priority: 0 the core modes in the extra cells (the key cells), 1 the extra modes there,
    2 the core modes elsewhere in the first rounds value, 3 the rest."""
    key_cell = scfg.rounds in cfg.extra_rounds and scfg.order in cfg.extra_orders
    if key_cell:
        return 0 if mode in cfg.modes else 1
    return 2 if scfg.rounds == cfg.rounds[0] else 3


def jobs_for(cfg: RegimeConfig) -> list[tuple]:
    """Every (StudyConfig, family, N, mode, seed) the grid runs (order-invariant runs of the other
    orders excluded), by priority (:func:`_phase`), then by team size."""
    jobs = []
    for (d, r, o), scfg in cfg.study_configs().items():
        for f in cfg.families:
            for n in cfg.n_agents:
                for mode in dict.fromkeys(cfg.modes + cfg.extra_modes):
                    if _reused(cfg, mode, o):
                        continue
                    for s in range(cfg.seeds_for(n, mode, d, r, o)):
                        jobs.append((scfg, f, n, mode, s))
    # within a phase the largest teams first (the workers finish together), except in the last
    # phase, where the largest teams come last (a run cut short for time loses those cells only)
    return sorted(jobs, key=lambda j: (_phase(cfg, j[0], j[3]), (1 if _phase(cfg, j[0], j[3]) == 3 else -1) * j[2]))


def with_reused_orders(cfg: RegimeConfig, records: list[dict]) -> list[dict]:
    """``records`` plus, for every order-invariant run of the source order (:func:`_source_order`),
    a copy for each other order (marked ``reused_from_order``)."""
    out = list(records)
    if not cfg.reuse_order_invariant:
        return out
    src = _source_order(cfg)
    for r in records:
        if r["mode"] in ORDER_INVARIANT_MODES and r["order"] == src:
            for o in [o for o in cfg.orders if o != src]:
                if cfg.seeds_for(int(r["N"]), r["mode"], float(r["delta"]), int(r["rounds"]), o) > int(r["seed"]):
                    # the stage-batch penalties do not depend on the order; the intermediate and
                    # stale-occupancy surrogates are evaluated along the order, so they are not reused
                    stages = {**r["stages"], **{k: [math.nan] * len(r["stages"][k]) for k in ORDER_DEPENDENT_PENALTIES}}
                    out.append({**r, "order": o, "reused_from_order": r["order"], "stages": stages})
    return out


def run_study(cfg: RegimeConfig, fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) the grid, write every output file, return the tables."""
    import torch

    import trust_region  # noqa: F401  (imported once here so forked workers inherit it)
    from occupancy.exact import optimal_J
    from occupancy.families import make_family

    torch.set_num_threads(1)
    common.limit_blas_threads(1)
    out = common.results_dir(cfg.out)
    runs_path = out / "runs.jsonl"
    if fresh and runs_path.exists():
        runs_path.unlink()
    jobs = jobs_for(cfg)
    hashes = {j[0].run_hash() for j in jobs}
    done = tt.load_done(runs_path, hashes, key=_run_key)

    def key(j: tuple) -> tuple:
        scfg, f, n, mode, s = j
        return (f, n, float(scfg.delta), scfg.rounds, scfg.order, mode, s)

    todo = [j for j in jobs if key(j) not in done]
    common.save_run_metadata(out, {**asdict(cfg), "run_hashes": sorted(hashes)}, list(range(cfg.seeds)))
    print(f"regime map: {len(cfg.families)} families x N {list(cfg.n_agents)} x delta {list(cfg.deltas)} x rounds "
          f"{list(cfg.rounds)} x orders {list(cfg.orders)}: {len(jobs)} runs ({len(jobs) - len(todo)} resumed); "
          f"{cfg.stages} stages of {cfg.prompts} prompts x G={cfg.group_size}, Adam lr {cfg.lr}, {cfg.epochs} epochs, "
          f"monitor {cfg.monitor}", file=sys.stderr)
    start, cpu0 = time.time(), common.cpu_seconds()
    records = [done[key(j)] for j in jobs if key(j) in done]
    with open(runs_path, "a") as fh:
        for rec in common.run_pool(tt.run_one, todo, workers=cfg.workers, desc="runs"):
            fh.write(json.dumps(common.to_jsonable(rec)) + "\n")
            fh.flush()
            records.append(rec)
    elapsed, cpu = time.time() - start, common.cpu_seconds() - cpu0
    records = with_reused_orders(cfg, records)
    j_opt = {(f, n, r): optimal_J(make_family(f, n, seed=cfg.instance_seed, rounds=r, gamma=cfg.gamma))
             for f in cfg.families for n in cfg.n_agents for r in cfg.rounds}
    mode_rows, cells = summarize(records, cfg, j_opt)
    corr = correlations(cells)
    prefix = prefix_cost(records)
    common.write_csv(out / "summary.csv", mode_rows)
    common.write_json(out / "summary.json", {"elapsed_s": elapsed, "cpu_s": cpu, "runs": len(jobs),
                                             "runs_new": len(todo), "monitor": cfg.monitor, "rows": mode_rows})
    common.write_csv(out / "cells.csv", cells)
    common.write_json(out / "cells.json", {"monitor": cfg.monitor, "cells": cells})
    common.write_json(out / "correlation.json", corr)
    common.write_csv(out / "prefix_cost.csv", prefix)
    (out / "tables.md").write_text(format_markdown(cells, corr, prefix, mode_rows))
    print(format_cells(cells))
    print()
    print(format_correlation(corr))
    print()
    print(format_prefix(prefix))
    print(f"{len(todo)} runs in {elapsed:.1f} s wall, {cpu:.1f} s CPU ({cfg.workers} workers); results: {out}")
    return {"rows": mode_rows, "cells": cells, "correlation": corr, "prefix": prefix}


def _fmt(c: dict, name: str) -> str:
    m, lo, hi, sig = c[f"{name}_mean"], c[f"{name}_lo"], c[f"{name}_hi"], c[f"{name}_sig"]
    if not np.isfinite(m):
        return "n/a"
    mark = {1: "+", -1: "-", 0: " "}[sig]
    return f"{m:+.3f} [{lo:+.3f},{hi:+.3f}]{mark}"


def format_cells(cells: list[dict]) -> str:
    head = (f"{'family':10s} {'N':>3s} {'delta':>5s} {'R':>2s} {'order':8s} {'interm - stale':>27s} "
            f"{'token-m. - stale':>27s} {'interm - stale @tokens':>27s} {'pen_stale':>9s} {'pen/gain':>8s} {'regr i/s/t':>10s}")
    lines = [head, "-" * len(head)]
    for c in cells:
        lines.append(
            f"{c['family']:10s} {c['N']:3d} {c['delta']:5.2f} {c['rounds']:2d} {c['order']:8s} "
            f"{_fmt(c, 'd_intermediate'):>27s} {_fmt(c, 'd_token_matched'):>27s} {_fmt(c, 'd_intermediate_tokens'):>27s} "
            f"{c['penalty_stale']:9.2e} {c['penalty_stale_rel']:8.3f} "
            f"{c.get('regressions_intermediate', 0)}/{c.get('regressions_stale', 0)}/{c.get('regressions_token_matched', 0)}")
    lines.append("paired differences over seeds, 95% t-interval; + / -: the interval excludes 0; pen_stale: exact "
                 "stale-batch penalty per stage of the stale run's stages; pen/gain: relative to its mean |ΔJ| per stage")
    return "\n".join(lines)


def format_correlation(corr: dict) -> str:
    lines = ["Spearman rank correlation across cells: training gain of resampling vs measured stale penalty"]
    for name, g in corr["groups"].items():
        lines.append(f"  {name:28s} cells {g['cells']:4d}  interm.: raw {g['rho_intermediate_raw']:+.2f} rel "
                     f"{g['rho_intermediate_rel']:+.2f}   token-m.: raw {g['rho_token_matched_raw']:+.2f} rel "
                     f"{g['rho_token_matched_rel']:+.2f}")
    lines.append("by bins of the relative stale penalty: share of cells where the mode beats stale (interval > 0) / loses")
    for b in corr["bins"]:
        lines.append(f"  [{b['low']:.3g}, {b['high']:.3g}] {b['cells']:4d} cells  interm. wins {b['intermediate_wins']:.0%} "
                     f"loses {b['intermediate_loses']:.0%} (rel gain {b['intermediate_rel_gain_mean']:+.3f})  token-m. wins "
                     f"{b['token_matched_wins']:.0%} loses {b['token_matched_loses']:.0%} "
                     f"(rel gain {b['token_matched_rel_gain_mean']:+.3f})")
    return "\n".join(lines)


def format_prefix(rows: list[dict]) -> str:
    lines = [f"{'family':10s} {'N':>3s} {'R':>2s} {'order':8s} {'prefix/stage':>12s} {'full/stage':>10s} {'ratio':>6s} {'formula':>7s}"]
    for r in rows:
        lines.append(f"{r['family']:10s} {r['N']:3d} {r['rounds']:2d} {r['order']:8s} {r['tokens_prefix']:12.0f} "
                     f"{r['tokens_full']:10.0f} {r['ratio']:6.3f} {r['formula']:7.3f}")
    return "\n".join(lines)


def _md_ci(c: dict, name: str, digits: int = 3) -> str:
    m, lo, hi, sig = c[f"{name}_mean"], c[f"{name}_lo"], c[f"{name}_hi"], c[f"{name}_sig"]
    if not np.isfinite(m):
        return "n/a"
    text = f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]" if np.isfinite(lo) else f"{m:+.{digits}f}"
    return f"**{text}**" if sig else text


def mode_table(rows: list[dict]) -> list[dict]:
    """Per mode, over the cells it ran in: cells, significant wins / losses against stale at equal
    updates and at equal actions, the median paired ΔJ relative to stale's total gain, generated
    actions per stage relative to stale, regressions and mean exact KL."""
    stale = {tuple(r[k] for k in CELL_KEYS): r for r in rows if r["mode"] == REFERENCE}
    out = []
    for mode in tt.MODE_SPECS:
        sel = [r for r in rows if r["mode"] == mode]
        if not sel:
            continue
        rel, tok = [], []
        for r in sel:
            s = stale[tuple(r[k] for k in CELL_KEYS)]
            gain = s["J_final_mean"] - s["J0_mean"]
            rel.append(r["dJ_vs_stale_mean"] / gain if gain > 0 else math.nan)
            tok.append(r["tokens_per_stage"] / s["tokens_per_stage"])
        sig = [significance(r["dJ_vs_stale_lo"], r["dJ_vs_stale_hi"]) for r in sel]
        sig_t = [significance(r["dJ_equal_tokens_vs_stale_lo"], r["dJ_equal_tokens_vs_stale_hi"]) for r in sel]
        out.append({"mode": mode, "cells": len(sel), "wins": sum(x > 0 for x in sig), "losses": sum(x < 0 for x in sig),
                    "wins_tokens": sum(x > 0 for x in sig_t), "losses_tokens": sum(x < 0 for x in sig_t),
                    "rel_gain_median": float(np.nanmedian(rel)) if np.isfinite(rel).any() else math.nan,
                    "actions_vs_stale": float(np.mean(tok)),
                    "regressions": int(sum(r["regressions_total"] for r in sel)),
                    "runs": int(sum(r["seeds"] for r in sel)),
                    "kl_exact_mean": float(np.mean([r["kl_exact_mean"] for r in sel]))})
    return out


def format_markdown(cells: list[dict], corr: dict, prefix: list[dict], rows: Sequence[dict] = ()) -> str:
    """The study's tables as markdown (written to tables.md; the docs quote them): per (rounds,
    order) slice a family x N x delta table of the paired differences, the per-slice counts of
    significant cells, the correlations and the prefix-reuse cost."""
    out = []
    slices = sorted({(c["rounds"], c["order"]) for c in cells}, key=lambda t: (t[0], t[1] != "reversed"))
    out.append("Counts of cells whose 95% interval excludes 0 (wins = mode better than stale):\n")
    out.append("| rounds | order | cells | interm. − stale: wins / losses | token-m. − stale: wins / losses | "
               "interm. − stale at equal actions: wins / losses |")
    out.append("|---|---|---|---|---|---|")
    for rounds, order in slices:
        sel = [c for c in cells if c["rounds"] == rounds and c["order"] == order]
        def wl(name: str) -> str:
            sig = [c[f"{name}_sig"] for c in sel]
            return f"{sum(s > 0 for s in sig)} / {sum(s < 0 for s in sig)}"
        out.append(f"| {rounds} | {order} | {len(sel)} | {wl('d_intermediate')} | {wl('d_token_matched')} | "
                   f"{wl('d_intermediate_tokens')} |")
    for rounds, order in slices:
        sel = [c for c in cells if c["rounds"] == rounds and c["order"] == order]
        seeds = sorted({(c["N"], c.get("seeds_intermediate", 0), c.get("seeds_stale", 0)) for c in sel})
        out.append(f"\n**{rounds} round{'s' if rounds > 1 else ''}, {order} order** — paired exact ΔJ after "
                   f"{sel[0].get('stages', '')} stages, mean [95% t-interval] over seeds; bold: the interval excludes 0. "
                   f"Seeds (N, intermediate, stale): {', '.join(f'{n}: {a}/{b}' for n, a, b in seeds)}.\n")
        out.append("| family | N | δ | intermediate − stale (equal updates) | token-matched − stale (equal actions) | "
                   "intermediate − stale (equal actions) | stale penalty / stage | penalty / mean \\|ΔJ\\| | J0 → J(stale) |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for c in sorted(sel, key=lambda c: (c["family"], c["N"], c["delta"])):
            out.append(f"| {c['family']} | {c['N']} | {c['delta']:g} | {_md_ci(c, 'd_intermediate')} | "
                       f"{_md_ci(c, 'd_token_matched')} | {_md_ci(c, 'd_intermediate_tokens')} | "
                       f"{c['penalty_stale']:.2e} | {c['penalty_stale_rel']:.3f} | "
                       f"{c['J0_mean']:.3f} → {c['J_final_stale']:.3f} |")
    out.append("\nSpearman rank correlation across cells of the paired gain with the measured stale penalty "
               "(raw: ΔJ vs penalty; rel: ΔJ / stale's total gain vs penalty / stale's mean |ΔJ| per stage):\n")
    out.append("| cells | n | ρ interm. raw | ρ interm. rel | ρ token-m. raw | ρ token-m. rel |")
    out.append("|---|---|---|---|---|---|")
    for name, g in corr["groups"].items():
        out.append(f"| {name} | {g['cells']} | {g['rho_intermediate_raw']:+.2f} | {g['rho_intermediate_rel']:+.2f} | "
                   f"{g['rho_token_matched_raw']:+.2f} | {g['rho_token_matched_rel']:+.2f} |")
    out.append("\nBy quartile of the relative stale penalty (all cells): share of cells where the mode beats stale "
               "significantly / loses significantly, mean relative gain:\n")
    out.append("| relative penalty | cells | interm.: wins / losses | interm.: rel. gain | token-m.: wins / losses | "
               "token-m.: rel. gain |")
    out.append("|---|---|---|---|---|---|")
    for b in corr["bins"]:
        out.append(f"| {b['low']:.3g} – {b['high']:.3g} | {b['cells']} | {b['intermediate_wins']:.0%} / "
                   f"{b['intermediate_loses']:.0%} | {b['intermediate_rel_gain_mean']:+.3f} | "
                   f"{b['token_matched_wins']:.0%} / {b['token_matched_loses']:.0%} | "
                   f"{b['token_matched_rel_gain_mean']:+.3f} |")
    for rounds, order in slices:
        sel = [r for r in rows if r["rounds"] == rounds and r["order"] == order]
        modes = mode_table(sel)
        if len(modes) <= len(CORE_MODES):
            continue
        out.append(f"\nEvery mode against stale, {rounds} round{'s' if rounds > 1 else ''}, {order} order (cells where "
                   "the mode ran; wins / losses: paired 95% interval above / below 0; rel. gain: median over cells "
                   "of ΔJ / stale's total gain; regressions: stages whose exact J fell, of runs x stages):\n")
        out.append("| mode | cells | equal updates: wins / losses | rel. gain (median) | equal actions: wins / losses | "
                   "actions per stage / stale | regressions | runs | mean exact KL |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for m in modes:
            out.append(f"| {m['mode']} | {m['cells']} | {m['wins']} / {m['losses']} | {m['rel_gain_median']:+.3f} | "
                       f"{m['wins_tokens']} / {m['losses_tokens']} | {m['actions_vs_stale']:.2f} | {m['regressions']} | "
                       f"{m['runs']} | {m['kl_exact_mean']:.4f} |")
    if prefix:
        out.append("\nPrefix reuse: generated actions per stage, prefix reuse / full resampling (measured, mean over "
                   "families; every family has fixed-length episodes, so all families give the same value) vs "
                   "`prefix_reuse_fraction`:\n")
        ns = sorted({r["N"] for r in prefix})
        keys = sorted({(r["rounds"], r["order"]) for r in prefix})
        out.append("| rounds | order | " + " | ".join(f"N = {n}: measured / formula" for n in ns) + " |")
        out.append("|---|---|" + "---|" * len(ns))
        for rounds, order in keys:
            cellsr = []
            for n in ns:
                sel = [r for r in prefix if r["N"] == n and r["rounds"] == rounds and r["order"] == order]
                cellsr.append(f"{np.mean([r['ratio'] for r in sel]):.3f} / {sel[0]['formula']:.3f}" if sel else "n/a")
            out.append(f"| {rounds} | {order} | " + " | ".join(cellsr) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke version: {QUICK}")
    for name in ("families", "orders", "modes", "extra-modes"):
        parser.add_argument(f"--{name}", nargs="+")
    parser.add_argument("--n-agents", nargs="+", type=int)
    parser.add_argument("--deltas", nargs="+", type=float)
    parser.add_argument("--rounds", nargs="+", type=int)
    for name, typ in (("seeds", int), ("large-n-seeds", int), ("extra-seeds", int), ("stages", int), ("workers", int),
                      ("lr", float), ("epochs", int)):
        parser.add_argument(f"--{name}", type=typ)
    parser.add_argument("--monitor", choices=["exact", "k1", "k2", "k3"])
    parser.add_argument("--out")
    parser.add_argument("--fresh", action="store_true", help="ignore and delete an existing runs.jsonl")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = dict(QUICK) if args.quick else dict(FULL)
    kwargs.update(common.cli_overrides(args, ("families", "orders", "modes", "extra_modes", "n_agents", "deltas", "rounds"),
                                       ("seeds", "large_n_seeds", "extra_seeds", "stages", "workers", "lr", "epochs",
                                        "monitor", "out")))
    run_study(RegimeConfig(**kwargs), fresh=args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
