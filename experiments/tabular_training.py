"""Sequential trust-region training on exact tabular teams: the tabular counterpart of TeamTR's
ablation Table 2(b) (papers.md A.10), measured with the exact J instead of benchmark accuracy.

    python -m experiments.tabular_training            # full study (see FULL below; ~10-15 min on 2 cores)
    python -m experiments.tabular_training --quick    # smoke version (< ~1 min on 2 cores)

For every family, team size N, training mode and seed, a team of :class:`occupancy.policy.TabularAgent`
(initial policy ``initial_policy(mdp, seed)``) is trained for ``stages`` stages of
:func:`trust_region.stage.run_stage` on rollouts of :class:`occupancy.sampling.TabularSampler`
(``prompts`` initial states per stage, ``group_size`` trajectories each). The instance of a family is
fixed (``instance_seed``); the seed changes the initial policy, the rollouts and the update order rng.

Modes (``MODE_SPECS``): ``intermediate`` (TeamTR: fresh rollouts of hat_pi^{i-1} before every
update), ``intermediate_prefix`` (the same with prefix reuse), ``stale`` (naive sequential: every
update on the stage-start batch), ``stale_is`` (SAT, truncated IS weights), ``stale_happo`` (HAPPO,
untruncated), ``joint`` (all agents from the stage-start batch), ``resample_every_2`` and ``no_tr``
(intermediate with delta = inf). All modes share the optimiser, radius, epochs and batch sizes.

Exact measurements (float64 linear solves, :mod:`occupancy.exact`), through ``run_stage``'s
``on_update`` hook, after every update i of agent j = sigma(i):

- ``J`` after every stage (and at the start).
- per update: the true improvement and the exact reverse KL(pi_cur || pi_new) of agent j with the
  *agent* weighting (expectation over agent j's own states under the occupancy, i.e. what the
  per-message monitor estimates) under the exact occupancy of the update's base team. Base team:
  hat_pi^{i-1} (the intermediate team: agents sigma(1..i-1) already changed) for every sequential mode,
  including the stale ones (their batch is stale, the team they change is not); for ``joint`` the
  stage-start team hat_pi^0 (every agent changes from the stage start at once, so the update's own
  contribution is J(pi^0[j <- pi_new_j]) - J(pi^0)). The stage's change J(end) - J(start) is exact
  in every mode.
- the certificate terms the update logged (``UpdateReport.certificate``: surrogate - c sqrt(kl) -
  zeta / (1 - gamma), gamma = the MDP's per-turn discount) are compared with the true improvement
  (per update) and their stage sums with J(end) - J(start) (per stage): Spearman rank correlation
  and the share of violations (certificate > true improvement: the bound claims more than happened).

Comparisons per (family, N, mode), over seeds: final J with a 95% t-interval, the paired difference
to ``intermediate`` (same seed: same instance, initial policy and prompts' rng seed), regressions
(stages whose exact J decreased), the share of updates whose exact KL exceeded the radius (for
``no_tr``: the radius of the other modes), generated actions ("tokens") per stage, and J at equal
numbers of generated actions (J interpolated linearly on cumulative tokens over a common grid whose
end is the smallest total any mode reached).

Writes results/<out>/: runs.jsonl (one JSON record per run, appended as runs finish; a rerun with the
same config resumes from it, ``--fresh`` starts over), summary.csv / summary.json (the table),
stages.csv (one row per run and stage), curves.json (J vs stage and J vs tokens, mean and 95%
interval per mode), config.json, seeds.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments import common
from occupancy.exact import optimal_J  # noqa: F401  (moved to occupancy.exact; re-exported)

#: mode name -> (StageConfig fields, UpdateConfig overrides)
MODE_SPECS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "intermediate": ({"mode": "intermediate"}, {}),
    "intermediate_prefix": ({"mode": "intermediate", "prefix_reuse": True}, {}),
    "stale": ({"mode": "stale"}, {}),
    "stale_is": ({"mode": "stale_is"}, {}),
    "stale_happo": ({"mode": "stale_happo"}, {}),
    "joint": ({"mode": "joint"}, {}),
    "resample_every_2": ({"mode": "resample_every_k", "resample_every": 2}, {}),
    "no_tr": ({"mode": "intermediate"}, {"delta": math.inf}),
    "token_matched": ({"mode": "token_matched"}, {}),
}
MODE_LABELS = {
    "intermediate": "intermediate (TeamTR)",
    "intermediate_prefix": "intermediate + prefix reuse",
    "stale": "stale (naive sequential)",
    "stale_is": "stale + IS (SAT)",
    "stale_happo": "stale + IS (HAPPO)",
    "joint": "joint",
    "resample_every_2": "resample every 2",
    "no_tr": "no trust region (δ=∞)",
    "token_matched": "token-matched intermediate",
}
#: the modes of the original study (Table 2(b)); the default of StudyConfig.modes
TABLE_MODES = ("intermediate", "intermediate_prefix", "stale", "stale_is", "stale_happo", "joint",
               "resample_every_2", "no_tr")
REFERENCE_MODE = "intermediate"
#: a stage "regresses" when its exact J falls by more than this (floating-point noise is ~1e-15)
REGRESSION_TOL = 1e-12


@dataclass(frozen=True)
class StudyConfig:
    """The study's settings (validated).

    - ``families`` (names of ``occupancy.families.FAMILY_NAMES``), ``n_agents`` (team sizes N),
      ``modes`` (keys of :data:`MODE_SPECS`), ``seeds`` (number; seeds ``seed0 ..``).
    - ``stages`` per run; ``prompts`` per stage and ``group_size`` G trajectories per prompt.
    - instance: ``rounds``, ``gamma`` (per turn; also the certificate's gamma), ``instance_seed``,
      initial-policy ``temperature``.
    - update: Adam ``lr``, ``epochs`` passes per update with ``minibatch_size`` messages per step
      (None: full batch), radius ``delta`` (reverse KL per message, mean over messages, TeamTR's
      monitor), ``monitor`` (the monitor's estimator, ``UpdateConfig.monitor_estimator``: "exact" =
      the exact per-context KL, or "k1" / "k2" / "k3"; None: the core's default), ``a_clip``
      (advantage clip, also the certificate's A_max).
    - ``order``: update order per stage (``StageConfig.order``: "fixed" 0..N-1, "reversed", "random").
    - ``token_grid`` points of the equal-tokens grid; ``workers`` processes; ``out`` results dir.
    """

    families: tuple[str, ...] = ("board", "vote", "chain")
    n_agents: tuple[int, ...] = (2, 4, 8)
    modes: tuple[str, ...] = TABLE_MODES
    seeds: int = 10
    seed0: int = 0
    stages: int = 12
    prompts: int = 16
    group_size: int = 8
    rounds: int = 2
    gamma: float = 0.99
    instance_seed: int = 0
    temperature: float = 1.0
    lr: float = 0.1
    epochs: int = 4
    minibatch_size: int | None = None
    delta: float = 0.01
    monitor: str | None = "k1"
    order: str = "fixed"
    a_clip: float = 5.0
    token_grid: int = 41
    workers: int = 2
    out: str = "tabular_training"

    def __post_init__(self) -> None:
        from occupancy.families import FAMILY_NAMES

        for name in ("families", "n_agents", "modes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        bad = [f for f in self.families if f not in FAMILY_NAMES]
        if not self.families or bad:
            raise ValueError(f"StudyConfig.families must be non-empty names from {FAMILY_NAMES}, got {self.families}")
        if not self.n_agents or min(self.n_agents) < 1:
            raise ValueError(f"StudyConfig.n_agents must be non-empty integers >= 1, got {self.n_agents}")
        bad = [m for m in self.modes if m not in MODE_SPECS]
        if not self.modes or bad:
            raise ValueError(f"StudyConfig.modes must be non-empty names from {tuple(MODE_SPECS)}, got {self.modes}")
        for name in ("seeds", "stages", "prompts", "epochs", "workers"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"StudyConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not (isinstance(self.group_size, int) and self.group_size >= 2):
            raise ValueError(f"StudyConfig.group_size must be an int >= 2 (group normalisation), got {self.group_size!r}")
        if self.minibatch_size is not None and not (isinstance(self.minibatch_size, int) and self.minibatch_size >= 1):
            raise ValueError(f"StudyConfig.minibatch_size must be an int >= 1 or None, got {self.minibatch_size!r}")
        if not (isinstance(self.rounds, int) and self.rounds >= 1):
            raise ValueError(f"StudyConfig.rounds must be an int >= 1, got {self.rounds!r}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"StudyConfig.gamma must be in [0, 1), got {self.gamma}")
        if not (self.temperature > 0 and self.lr > 0 and self.a_clip > 0 and math.isfinite(self.a_clip)):
            raise ValueError("StudyConfig.temperature, lr and a_clip must be > 0 (a_clip finite)")
        if not (self.delta > 0 and math.isfinite(self.delta)):
            raise ValueError(f"StudyConfig.delta must be finite and > 0 (no_tr sets inf itself), got {self.delta}")
        if self.order not in ("fixed", "reversed", "random"):
            raise ValueError(f"StudyConfig.order must be 'fixed', 'reversed' or 'random', got {self.order!r}")
        if self.monitor is not None and self.monitor not in ("exact", "k1", "k2", "k3"):
            raise ValueError(f"StudyConfig.monitor must be 'exact', 'k1', 'k2', 'k3' or None, got {self.monitor!r}")
        if not (isinstance(self.token_grid, int) and self.token_grid >= 2):
            raise ValueError(f"StudyConfig.token_grid must be an int >= 2, got {self.token_grid!r}")

    def run_hash(self) -> str:
        """Hash of the fields that change a run's result (not families/N/modes/seeds/workers/out),
        so a rerun with more seeds or modes reuses finished runs."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("families", "n_agents", "modes", "seeds", "seed0", "workers", "out", "token_grid")}
        keep["monitor"] = self.monitor_used()
        return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]

    def monitor_used(self) -> str:
        """The monitor estimator the updates use (``monitor``, or the core's default when None)."""
        from trust_region import UpdateConfig

        return self.monitor if self.monitor is not None else str(UpdateConfig().monitor_estimator)


FULL: dict[str, Any] = {}
QUICK: dict[str, Any] = dict(families=("board", "chain"), n_agents=(2, 4), seeds=3, stages=6, prompts=8, group_size=4,
                             out="tabular_training_quick")


# ---------------------------------------------------------------------------------------------
# Threads


# ---------------------------------------------------------------------------------------------
# Pure metric helpers


def count_regressions(J: Sequence[float], tol: float = REGRESSION_TOL) -> int:
    """Number of stages k with J[k+1] < J[k] - tol, for J = (J_0, J_1, ..., J_S) (S + 1,)."""
    j = np.asarray(J, dtype=np.float64)
    return int(np.sum(np.diff(j) < -tol))


def kl_exceed_share(kl: Sequence[float], delta: float) -> float:
    """Share of updates whose KL exceeds ``delta`` (strictly); NaN for no updates."""
    k = np.asarray(kl, dtype=np.float64)
    return float(np.mean(k > delta)) if k.size else math.nan


def t_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of ``x`` (NaNs dropped); half-width NaN for n < 2."""
    from scipy import stats

    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - h, m + h


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of paired finite values; NaN with < 3 pairs or a constant side."""
    from scipy import stats

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def violation_share(certificate: Sequence[float], truth: Sequence[float]) -> float:
    """Share of finite pairs with certificate > truth (a lower bound that claims too much)."""
    a, b = np.asarray(certificate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.mean(a[ok] > b[ok])) if ok.any() else math.nan


def interp_on_tokens(tokens_per_stage: Sequence[float], J: Sequence[float], grid: np.ndarray) -> np.ndarray:
    """J (S + 1,) against cumulative generated tokens (0, t_1, t_1 + t_2, ...) interpolated linearly
    on ``grid`` (K,); NaN beyond the run's total."""
    cum = np.concatenate([[0.0], np.cumsum(np.asarray(tokens_per_stage, dtype=np.float64))])
    out = np.interp(grid, cum, np.asarray(J, dtype=np.float64))
    out[grid > cum[-1] + 1e-9] = math.nan
    return out


# ---------------------------------------------------------------------------------------------
# One run


def stage_config(cfg: StudyConfig, mode: str) -> "Any":
    """The StageConfig of ``mode`` under the study's shared settings."""
    from trust_region import AdvantageConfig, CertificateConfig, StageConfig, UpdateConfig

    stage_fields, update_over = MODE_SPECS[mode]
    upd = dict(delta=cfg.delta, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size, monitor_estimator=cfg.monitor_used())
    upd.update(update_over)
    if math.isinf(upd["delta"]):
        upd["kl_target"] = cfg.delta  # the adaptive-beta target stays the other modes' radius
    return StageConfig(
        **stage_fields,
        order=cfg.order,
        prompts_per_stage=cfg.prompts,
        group_size=cfg.group_size,
        advantage=AdvantageConfig(a_clip=cfg.a_clip),
        update=UpdateConfig(**upd),
        certificate=CertificateConfig(gamma=cfg.gamma, a_max=cfg.a_clip),
    )


def run_one(job: tuple[StudyConfig, str, int, str, int]) -> dict[str, Any]:
    """Train one team (family, N, mode, seed) and return its record (see the module docstring)."""
    import torch

    torch.set_num_threads(1)  # tiny tensors: intra-op threads only cost time
    common.limit_blas_threads(1)
    from occupancy.exact import evaluate, update_kl
    from occupancy.families import initial_policy, make_family
    from occupancy.policy import make_tabular_team, team_table
    from occupancy.sampling import TabularSampler
    from trust_region import run_stage

    cfg, family, n, mode, seed = job
    t0 = time.time()
    mdp = make_family(family, n, seed=cfg.instance_seed, rounds=cfg.rounds, gamma=cfg.gamma)
    pi0 = initial_policy(mdp, seed, cfg.temperature)
    team = make_tabular_team(mdp, pi0)
    opts = [torch.optim.Adam(a.trainable_parameters(), lr=cfg.lr) for a in team]
    sampler = TabularSampler(mdp, seed=seed)
    rng = np.random.default_rng(seed)
    scfg = stage_config(cfg, mode)
    joint = scfg.mode == "joint"

    ev = evaluate(mdp, pi0)
    J = [ev.J]
    upd: dict[str, list] = {k: [] for k in ("stage", "position", "agent", "improvement", "kl_exact", "kl_exact_team",
                                            "kl_exact_unseen",
                                            "kl_monitor", "certificate", "surrogate", "kl_term", "n_rejected",
                                            "n_messages")}
    stages: dict[str, list] = {k: [] for k in ("tokens", "trajectories", "sample_calls", "resample_calls",
                                               "certificate", "certificate_hp", "surrogate")
                                     + STAGE_PENALTY_KEYS}
    betas = None
    for s in range(cfg.stages):
        start = {"pi": team_table(mdp, team), "ev": ev}
        prev = dict(start)
        chain = [ev]  # exact evaluations of hat_pi^0, hat_pi^1, ... (the teams after each update)

        def on_update(progress: Any) -> None:
            i = progress.next_index - 1
            j = progress.order[i]
            rep = progress.updates[-1]
            pi_now = team_table(mdp, team)
            ev_now = evaluate(mdp, pi_now)
            if joint:  # agent j changes alone from the stage start
                base_pi, base_ev = start["pi"], start["ev"]
                dev = mdp.replace_agent(base_pi, j, pi_now)
                improvement = evaluate(mdp, dev).J - base_ev.J
            else:
                base_pi, base_ev = prev["pi"], prev["ev"]
                improvement = ev_now.J - base_ev.J
            cert = rep.certificate
            upd["stage"].append(s)
            upd["position"].append(i)
            upd["agent"].append(j)
            upd["improvement"].append(improvement)
            upd["kl_exact"].append(update_kl(mdp, base_ev.d, base_pi, pi_now, j, "reverse", "agent"))
            upd["kl_exact_team"].append(update_kl(mdp, base_ev.d, base_pi, pi_now, j, "reverse", "team"))
            # the part of the exact (agent-weighted) KL on agent j's states absent from the update's batch:
            # the monitor cannot see it (Adam's momentum moves logits of states without gradient)
            seen = np.zeros(mdp.n_states, dtype=bool)
            seen[progress.batch.context[:, 0].numpy()] = True
            d_unseen = np.where(seen, 0.0, base_ev.d)
            upd["kl_exact_unseen"].append(update_kl(mdp, d_unseen, base_pi, pi_now, j, "reverse", "team")
                                          / max(float(base_ev.d[mdp.agent_mask(j)].sum()), 1e-300))
            upd["kl_monitor"].append(rep.kl)
            upd["certificate"].append(cert.certificate if cert is not None else math.nan)
            upd["surrogate"].append(cert.surrogate if cert is not None else math.nan)
            upd["kl_term"].append(cert.kl_term if cert is not None else math.nan)
            upd["n_rejected"].append(rep.n_rejected)
            upd["n_messages"].append(rep.n_messages)
            prev["pi"], prev["ev"] = pi_now, ev_now
            chain.append(ev_now)

        rep = run_stage(team, opts, sampler, sampler.draw_prompts, scfg, rng, betas=betas, stage=s, on_update=on_update)
        betas = rep.betas
        ev = prev["ev"]
        J.append(ev.J)
        stages["tokens"].append(rep.tokens_generated)
        stages["trajectories"].append(rep.trajectories_generated)
        stages["sample_calls"].append(rep.sample_calls)
        stages["resample_calls"].append(rep.resample_calls)
        for key, name in (("certificate", "sum_certificate"), ("certificate_hp", "sum_certificate_hp"),
                          ("surrogate", "sum_surrogate")):
            stages[key].append(rep.certificate.get(name, math.nan))
        for key, val in stage_penalties(mdp, start["pi"], rep.order, team_table(mdp, team), chain).items():
            stages[key].append(val)
    return {
        "family": family, "N": n, "mode": mode, "seed": seed, "run_hash": cfg.run_hash(),
        "delta": cfg.delta, "rounds": cfg.rounds, "order": cfg.order, "monitor": cfg.monitor_used(),
        "n_states": mdp.n_states, "J": J, "stages": stages, "updates": upd, "elapsed_s": time.time() - t0,
    }


#: per-stage exact penalties recorded by :func:`stage_penalties`
STAGE_PENALTY_KEYS = ("penalty_seq", "penalty_stale_occ", "penalty_stale_batch", "gap_stale_batch",
                      "abs_penalty_stale_batch")


def stage_penalties(mdp: Any, pi_start: np.ndarray, order: Sequence[int], pi_end: np.ndarray,
                    evaluations: Sequence[Any]) -> dict[str, float]:
    """Exact penalties of the stage actually taken (THEORY section 2, as in the scaling sweep):
    with hat_pi^0 = ``pi_start`` (S, A), the stage's new agent policies read from ``pi_end`` (S, A)
    and ``evaluations`` of hat_pi^0..hat_pi^N (the teams after each update, reused),
    |sum_i Gap_i| for the intermediate surrogate ("seq"), the stale occupancy and the stale batch,
    the signed stale-batch gap sum_i (improvement_i - L_i^stale_batch) and sum_i |Gap_i|.
    NaN when the stage did not report one evaluation per update."""
    from occupancy.exact import evaluate_stage

    if len(evaluations) != len(order) + 1:
        return {k: math.nan for k in STAGE_PENALTY_KEYS}
    st = evaluate_stage(mdp, pi_start, order, [pi_end] * mdp.n_agents, evaluations=evaluations)
    return {
        "penalty_seq": st.penalty("seq"), "penalty_stale_occ": st.penalty("stale_occ"),
        "penalty_stale_batch": st.penalty("stale_batch"),
        "gap_stale_batch": float(sum(u.gap("stale_batch") for u in st.updates)),
        "abs_penalty_stale_batch": st.abs_penalty("stale_batch"),
    }


# ---------------------------------------------------------------------------------------------
# Aggregation


def _key(r: dict) -> tuple:
    return (r["family"], r["N"], r["mode"], r["seed"])


def summarize(records: list[dict], cfg: StudyConfig, j_opt: dict[tuple[str, int], float]) -> tuple[list[dict], list[dict]]:
    """The summary rows (one per family, N, mode) and the curves (J vs stage, J vs tokens)."""
    by: dict[tuple[str, int, str], dict[int, dict]] = {}
    for r in records:
        by.setdefault((r["family"], r["N"], r["mode"]), {})[r["seed"]] = r
    rows, curves = [], []
    for family in cfg.families:
        for n in cfg.n_agents:
            cells = {m: by.get((family, n, m), {}) for m in cfg.modes}
            ref = cells.get(REFERENCE_MODE, {})
            totals = [float(np.sum(r["stages"]["tokens"])) for c in cells.values() for r in c.values()]
            if not totals:
                continue
            budget = min(totals)
            grid = np.linspace(0.0, budget, cfg.token_grid)
            ref_tok = {sd: interp_on_tokens(r["stages"]["tokens"], r["J"], grid) for sd, r in ref.items()}
            for mode in cfg.modes:
                runs = cells[mode]
                if not runs:
                    continue
                seeds = sorted(runs)
                Jm = np.array([runs[sd]["J"] for sd in seeds])  # (R, S + 1)
                final = Jm[:, -1]
                tok = np.array([interp_on_tokens(runs[sd]["stages"]["tokens"], runs[sd]["J"], grid) for sd in seeds])
                paired = [runs[sd]["J"][-1] - ref[sd]["J"][-1] for sd in seeds if sd in ref]
                paired_tok = [tok[k, -1] - ref_tok[sd][-1] for k, sd in enumerate(seeds) if sd in ref_tok]
                u = {k: np.concatenate([np.asarray(runs[sd]["updates"][k], dtype=np.float64) for sd in seeds])
                     for k in ("improvement", "kl_exact", "kl_exact_unseen", "kl_monitor", "certificate", "surrogate")}
                st_true = np.concatenate([np.diff(runs[sd]["J"]) for sd in seeds])
                st_cert = np.concatenate([np.asarray(runs[sd]["stages"]["certificate"], dtype=np.float64) for sd in seeds])
                tokens = np.concatenate([runs[sd]["stages"]["tokens"] for sd in seeds]).astype(np.float64)
                samples = np.concatenate([runs[sd]["stages"]["sample_calls"] for sd in seeds]).astype(np.float64)
                regress = [count_regressions(runs[sd]["J"]) for sd in seeds]
                exceed = kl_exceed_share(u["kl_exact"], cfg.delta)
                mon_ok = u["kl_monitor"] <= cfg.delta
                row = {
                    "family": family, "N": n, "mode": mode, "seeds": len(seeds), "stages": cfg.stages,
                    "J_opt": j_opt.get((family, n), math.nan),
                    "J0_mean": float(Jm[:, 0].mean()),
                }
                for name, vals in (("J_final", final), ("dJ_vs_ref", paired), ("J_equal_tokens", tok[:, -1]),
                                   ("dJ_equal_tokens_vs_ref", paired_tok), ("regressions", regress)):
                    m, lo, hi = t_interval(vals)
                    row.update({f"{name}_mean": m, f"{name}_lo": lo, f"{name}_hi": hi})
                row.update({
                    "token_budget": budget,
                    "regressions_total": int(np.sum(regress)),
                    "regression_share": float(np.mean(np.asarray(regress) / cfg.stages)),
                    "updates": int(u["kl_exact"].size),
                    "kl_exact_mean": float(np.mean(u["kl_exact"])),
                    "kl_exact_max": float(np.max(u["kl_exact"])),
                    "kl_exact_p90_over_delta": float(np.quantile(u["kl_exact"], 0.9) / cfg.delta),
                    "kl_exceed_share": exceed,
                    "kl_exceed_share_monitor_ok": float(np.mean(u["kl_exact"][mon_ok] > cfg.delta)) if mon_ok.any() else math.nan,
                    "kl_unseen_fraction": float(np.sum(u["kl_exact_unseen"]) / max(np.sum(u["kl_exact"]), 1e-300)),
                    "kl_monitor_mean": float(np.mean(u["kl_monitor"])),
                    "tokens_per_stage": float(tokens.mean()),
                    "sample_calls_per_stage": float(samples.mean()),
                    "cert_spearman_update": spearman(u["certificate"], u["improvement"]),
                    "cert_violation_update": violation_share(u["certificate"], u["improvement"]),
                    "surrogate_spearman_update": spearman(u["surrogate"], u["improvement"]),
                    "cert_spearman_stage": spearman(st_cert, st_true),
                    "cert_violation_stage": violation_share(st_cert, st_true),
                    "cert_mean_update": float(np.nanmean(u["certificate"])),
                    "improvement_mean_update": float(np.mean(u["improvement"])),
                })
                rows.append(row)
                stage_ci = np.array([t_interval(Jm[:, k]) for k in range(Jm.shape[1])])
                gain_ci = np.array([t_interval(Jm[:, k] - Jm[:, 0]) for k in range(Jm.shape[1])])
                tok_ci = np.array([t_interval(tok[:, k]) for k in range(grid.size)])
                curves.append({
                    "family": family, "N": n, "mode": mode, "seeds": len(seeds), "J_opt": row["J_opt"],
                    "stage": list(range(Jm.shape[1])),
                    "J_stage": {"mean": stage_ci[:, 0], "lo": stage_ci[:, 1], "hi": stage_ci[:, 2]},
                    "gain_stage": {"mean": gain_ci[:, 0], "lo": gain_ci[:, 1], "hi": gain_ci[:, 2]},
                    "J0_mean": float(Jm[:, 0].mean()),
                    "tokens": grid,
                    "J_tokens": {"mean": tok_ci[:, 0], "lo": tok_ci[:, 1], "hi": tok_ci[:, 2]},
                    "cum_tokens_mean": np.concatenate([[0.0], np.cumsum(tokens.reshape(len(seeds), -1).mean(axis=0))]),
                })
    return rows, curves


def stage_rows(records: list[dict]) -> list[dict]:
    """One flat row per run and stage (for stages.csv)."""
    out = []
    for r in sorted(records, key=_key):
        st = r["stages"]
        for s in range(len(st["tokens"])):
            out.append({"family": r["family"], "N": r["N"], "mode": r["mode"], "seed": r["seed"], "stage": s + 1,
                        "J_start": r["J"][s], "J_end": r["J"][s + 1], "tokens": st["tokens"][s],
                        "trajectories": st["trajectories"][s], "sample_calls": st["sample_calls"][s],
                        "resample_calls": st["resample_calls"][s], "certificate": st["certificate"][s]})
    return out


def _ci(row: dict, name: str, digits: int = 3) -> str:
    m, lo, hi = row[f"{name}_mean"], row[f"{name}_lo"], row[f"{name}_hi"]
    if not np.isfinite(m):
        return "n/a"
    if not np.isfinite(lo):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f},{hi:.{digits}f}]"


def format_table(rows: list[dict], family: str, n: int) -> str:
    sel = [r for r in rows if r["family"] == family and r["N"] == n]
    if not sel:
        return ""
    head = (f"{'mode':20s} {'final J [95% CI]':>24s} {'dJ vs interm.':>24s} {'J @ equal tokens':>24s} "
            f"{'regr/run':>8s} {'KL>δ':>6s} {'P90':>5s} {'tok/stage':>9s} {'ρ_cert':>7s} {'viol':>5s} {'ρ_L':>6s} "
            f"{'ρ_stage':>7s}")
    lines = [f"{family}, N = {n}  (J0 = {sel[0]['J0_mean']:.3f}, J* = {sel[0]['J_opt']:.3f}, "
             f"equal-token budget = {sel[0]['token_budget']:.0f} actions)", head, "-" * len(head)]
    for r in sel:
        lines.append(
            f"{r['mode']:20s} {_ci(r, 'J_final'):>24s} {_ci(r, 'dJ_vs_ref'):>24s} {_ci(r, 'J_equal_tokens'):>24s} "
            f"{r['regressions_mean']:8.2f} {r['kl_exceed_share']:6.1%} {r['kl_exact_p90_over_delta']:5.2f} "
            f"{r['tokens_per_stage']:9.0f} {r['cert_spearman_update']:7.2f} {r['cert_violation_update']:5.0%} "
            f"{r['surrogate_spearman_update']:6.2f} {r['cert_spearman_stage']:7.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Driver


def load_done(path: Path, run_hash: str | set[str], key: Any = None) -> dict[tuple, dict]:
    """Finished runs whose run hash is ``run_hash`` (or one of a set) from a runs.jsonl, keyed by
    ``key(record)`` (default (family, N, mode, seed)); unreadable lines are ignored."""
    hashes = {run_hash} if isinstance(run_hash, str) else set(run_hash)
    key = key or _key
    done: dict[tuple, dict] = {}
    if not path.exists():
        return done
    with open(path) as fh:
        for line in fh:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("run_hash") in hashes:
                done[key(r)] = r
    return done


def _job_cost(job: tuple) -> float:
    cfg, _, n, mode, _ = job
    return n * (2.0 if MODE_SPECS[mode][0]["mode"] == "intermediate" else 1.0)


def run_study(cfg: StudyConfig, fresh: bool = False) -> tuple[list[dict], list[dict], list[dict]]:
    """Run (or resume) the study; write the files; return (records, summary rows, curves)."""
    import torch

    import trust_region  # noqa: F401  (imported once here so forked workers inherit it)
    from occupancy.families import make_family

    torch.set_num_threads(1)
    common.limit_blas_threads(1)
    out = common.results_dir(cfg.out)
    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.seeds))
    runs_path = out / "runs.jsonl"
    if fresh and runs_path.exists():
        runs_path.unlink()
    h = cfg.run_hash()
    done = load_done(runs_path, h)
    wanted = [(f, n, m, s) for f in cfg.families for n in cfg.n_agents for m in cfg.modes for s in seeds]
    todo = sorted(((cfg, *k) for k in wanted if k not in done), key=lambda j: -_job_cost(j))
    common.save_run_metadata(out, {**asdict(cfg), "run_hash": h, "mode_specs": MODE_SPECS}, seeds)
    print(f"tabular training: {len(cfg.families)} families x N {list(cfg.n_agents)} x {len(cfg.modes)} modes x "
          f"{cfg.seeds} seeds = {len(wanted)} runs ({len(wanted) - len(todo)} resumed); {cfg.stages} stages of "
          f"{cfg.prompts} prompts x G={cfg.group_size}; Adam lr {cfg.lr}, {cfg.epochs} epochs, "
          f"minibatch {cfg.minibatch_size or 'full'}, delta {cfg.delta}; rounds {cfg.rounds}, gamma {cfg.gamma}",
          file=sys.stderr)
    start = time.time()
    records = [done[k] for k in wanted if k in done]
    with open(runs_path, "a") as fh:
        for rec in common.run_pool(run_one, todo, workers=cfg.workers, desc="runs"):
            fh.write(json.dumps(common.to_jsonable(rec)) + "\n")
            fh.flush()
            records.append(rec)
    elapsed = time.time() - start
    j_opt = {(f, n): optimal_J(make_family(f, n, seed=cfg.instance_seed, rounds=cfg.rounds, gamma=cfg.gamma))
             for f in cfg.families for n in cfg.n_agents}
    rows, curves = summarize(records, cfg, j_opt)
    common.write_csv(out / "summary.csv", rows)
    common.write_json(out / "summary.json", {"elapsed_s": elapsed, "run_hash": h, "delta": cfg.delta, "rows": rows})
    common.write_json(out / "curves.json", {"delta": cfg.delta, "curves": curves})
    common.write_csv(out / "stages.csv", stage_rows(records))
    for family in cfg.families:
        for n in cfg.n_agents:
            print(format_table(rows, family, n))
            print()
    print(f"final J and J at equal tokens: mean over seeds [95% t-interval]; dJ vs interm.: paired difference to "
          f"intermediate (same seed); regr/run: stages whose exact J fell; KL>δ: share of updates whose exact "
          f"agent-weighted reverse KL under the base team's occupancy exceeded δ = {cfg.delta}; tok/stage: generated "
          f"actions; P90: 90th percentile of exact KL / δ; ρ_cert / viol: Spearman and share certificate > true "
          f"improvement per update; ρ_L: Spearman of the logged surrogate L_hat with it; ρ_stage: certificate per stage.")
    print(f"{len(todo)} runs in {elapsed:.1f} s; results: {out}")
    return records, rows, curves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version (2 families, N 2 and 4, 3 seeds, 6 stages)")
    parser.add_argument("--families", nargs="+")
    parser.add_argument("--n-agents", nargs="+", type=int)
    parser.add_argument("--modes", nargs="+")
    for name, typ in (("seeds", int), ("stages", int), ("prompts", int), ("group-size", int), ("epochs", int),
                      ("lr", float), ("delta", float), ("workers", int), ("rounds", int), ("gamma", float)):
        parser.add_argument(f"--{name}", type=typ)
    parser.add_argument("--order", choices=["fixed", "reversed", "random"])
    parser.add_argument("--monitor", choices=["exact", "k1", "k2", "k3"])
    parser.add_argument("--out")
    parser.add_argument("--fresh", action="store_true", help="ignore and delete an existing runs.jsonl")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = dict(QUICK) if args.quick else dict(FULL)
    for name in ("families", "n_agents", "modes"):
        if getattr(args, name) is not None:
            kwargs[name] = tuple(getattr(args, name))
    for name in ("seeds", "stages", "prompts", "group_size", "epochs", "lr", "delta", "workers", "rounds", "gamma", "order", "monitor", "out"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    cfg = StudyConfig(**kwargs)
    run_study(cfg, fresh=args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
