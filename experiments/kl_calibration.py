"""Does the trust region hold? The true KL of accepted updates, per monitor (issue 13's study).

    python -m experiments.kl_calibration            # full tabular study
    python -m experiments.kl_calibration --quick    # smoke version (tested in the default suite)
    python -m experiments.kl_calibration --cost     # wall time of an update per monitor / step rule
    python -m experiments.kl_calibration --llm      # LLM part (tiny Qwen3 model, CPU)
    python -m experiments.kl_calibration --llm --cost   # LLM update cost: exact monitor vs none (tiny)
    python -m experiments.kl_calibration --llm [--cost] --model builtin:smollm2 --lr 1e-4   # opt-in

Tabular engine, exact truth. For every study family, radius delta, seed and monitor, a team of
``n_agents`` TabularAgents is trained for ``stages`` intermediate stages with the shared core's
:func:`trust_region.update.update_agent` (fresh rollouts of the partly updated team before every
update, as TeamTR). Each update is enforced by one monitor:

- ``exact/train``: the exact per-context KL (over the whole action set at each visited state) on the
  training batch (the default monitor);
- ``k1/train``, ``k2/train``, ``k3/train``: the sampled estimators on the training batch;
- ``<m>/heldout``: the same monitors enforced on a held-out share (``holdout_fraction``) of the
  agent's trajectories that took no gradient step.

Truth: the reverse KL(pi_cur || pi_new) of the update under the *true* occupancy of its base team
(the team before the update), averaged over the agent's own contexts (``occupancy.exact.update_kl``
with ``weighting="agent"``: the quantity a per-message monitor estimates), computed exactly.

Reported per (monitor, delta), over accepted updates (at least one accepted optimizer step): the
share whose true KL exceeds delta, 1.5 delta and 2 delta, and the median of true / delta (also per
family in ``summary_by_family.csv``).

LLM part (``--llm``; tiny two-layer Qwen3 with random weights from ``experiments.bench_llm``'s
``tiny`` preset, CPU). One agent (a one-agent team) is trained for ``updates`` updates per
(monitor, delta, seed) on rollouts of random prompts (``group_size`` samples each) with the reward
"share of even token ids in the message". Each update is enforced by the exact full-vocabulary
monitor or k1 on its training batch. Truth: the exact full-vocabulary reverse KL(pi_cur || pi_new)
(per message the sum over positions, mean over messages) on a *fresh* rollout of the updated agent
from fresh prompts, contexts the update never saw. Writes results/kl_calibration_llm/.

Writes results/kl_calibration/{updates.jsonl (one line per finished job; resumable), updates.csv,
summary.csv, summary_by_family.csv, summary.json, kl_calibration.png, config.json, seeds.json}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import (
    cli_overrides,
    limit_blas_threads,
    results_dir,
    run_pool,
    save_run_metadata,
    write_csv,
    write_json,
)

MONITOR_VARIANTS = ("exact/train", "k1/train", "k2/train", "k3/train",
                    "exact/heldout", "k1/heldout", "k2/heldout", "k3/heldout")
STUDY_FAMILIES = ("board", "vote", "chain", "agree", "agree_pair", "layered", "crowd")
THRESHOLDS = (1.0, 1.5, 2.0)


@dataclass(frozen=True)
class CalibrationConfig:
    """families; deltas (radius of the monitored per-message reverse KL); monitors (see
    MONITOR_VARIANTS); seeds; n_agents; stages per run; prompts x group_size trajectories per
    batch; epochs, minibatch_size and lr (Adam) of an update; holdout_fraction of the held-out
    monitors; rounds, gamma and temperature (initial policy) of the families; workers."""

    families: tuple[str, ...] = STUDY_FAMILIES
    deltas: tuple[float, ...] = (0.01, 0.1)
    monitors: tuple[str, ...] = MONITOR_VARIANTS
    seeds: int = 10
    n_agents: int = 3
    stages: int = 4
    prompts: int = 16
    group_size: int = 8
    epochs: int = 4
    minibatch_size: int = 32
    lr: float = 0.2
    holdout_fraction: float = 0.25
    rounds: int = 1
    gamma: float = 0.95
    temperature: float = 1.0
    workers: int = 2
    seed0: int = 0
    out: str = "kl_calibration"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.monitors) - set(MONITOR_VARIANTS))
        if unknown:
            raise ValueError(f"CalibrationConfig.monitors: unknown {unknown}; allowed {MONITOR_VARIANTS}")
        if min(self.deltas) <= 0 or self.seeds < 1 or self.n_agents < 1 or self.stages < 1:
            raise ValueError("CalibrationConfig: deltas > 0, seeds >= 1, n_agents >= 1 and stages >= 1 required")


QUICK = dict(families=("chain", "agree"), deltas=(0.01, 0.1), monitors=("exact/train", "k1/train", "exact/heldout"),
             seeds=1, stages=1, prompts=8, group_size=4, epochs=2, minibatch_size=16, out="kl_calibration_quick")


def job_key(job: dict[str, Any]) -> str:
    return f"{job['family']}|{job['delta']}|{job['monitor']}|{job['seed']}"


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One (family, delta, monitor, seed): ``stages`` intermediate stages; per update the monitored
    KL, the sampled/exact KLs on the batch and the true KL under the base team's occupancy."""
    import torch

    from occupancy.exact import evaluate, update_kl
    from occupancy.families import initial_policy, make_family
    from occupancy.policy import make_tabular_team, team_table
    from occupancy.sampling import TabularSampler
    from trust_region.advantage import AdvantageConfig, compute_advantages
    from trust_region.update import UpdateConfig, update_agent

    torch.set_num_threads(1)
    cfg = CalibrationConfig(**job["config"])
    estimator, source = job["monitor"].split("/")
    seed = int(job["seed"])
    mdp = make_family(job["family"], cfg.n_agents, seed=seed, rounds=cfg.rounds, gamma=cfg.gamma)
    team = make_tabular_team(mdp, initial_policy(mdp, seed=seed, temperature=cfg.temperature))
    opts = [torch.optim.Adam(a.trainable_parameters(), lr=cfg.lr) for a in team]
    sampler = TabularSampler(mdp, seed=seed)
    rng = np.random.default_rng(seed)
    heldout = source == "heldout"
    ucfg = UpdateConfig(delta=float(job["delta"]), epochs=cfg.epochs, minibatch_size=cfg.minibatch_size,
                        monitor_estimator=estimator, holdout_fraction=cfg.holdout_fraction if heldout else 0.0,
                        enforce_on="heldout" if heldout else "train")
    adv_cfg = AdvantageConfig()
    betas = [ucfg.beta] * cfg.n_agents
    rows = []
    for stage in range(cfg.stages):
        for j in range(cfg.n_agents):
            base = team_table(mdp, team)
            batch = sampler.sample(team, sampler.draw_prompts(cfg.prompts), cfg.group_size)
            own = batch.agent == j
            if not bool(own.any()):
                continue
            adv = compute_advantages(batch, j, adv_cfg).select(own)
            rep = update_agent(team[j], opts[j], batch.select(own), adv, ucfg, beta=betas[j], rng=rng)
            betas[j] = rep.beta_end
            new = team_table(mdp, team)
            d = evaluate(mdp, base).d
            rows.append(dict(
                family=job["family"], delta=float(job["delta"]), monitor=job["monitor"], seed=seed, stage=stage,
                agent=j, accepted=rep.n_steps > 0, n_steps=rep.n_steps, n_rejected=rep.n_rejected,
                kl_monitor=rep.kl, kl_train=rep.kl_train, kl_heldout=rep.kl_heldout,
                kl_exact_batch=rep.kl_exact_mean, kl_k1_batch=rep.kl_k1_mean, kl_k3_batch=rep.kl_k3_mean,
                kl_true=update_kl(mdp, d, base, new, j, "reverse", "agent"),
            ))
    return {"key": job_key(job), "rows": rows}


def summarise(rows: list[dict[str, Any]], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per group of ``by``: accepted updates, share of true KL > t * delta for t in THRESHOLDS,
    median and max of true / delta, mean monitored KL / delta."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        acc = [r for r in rs if r["accepted"]]
        ratio = np.array([r["kl_true"] / r["delta"] for r in acc])
        row = dict(zip(by, key))
        row.update(updates=len(rs), accepted=len(acc))
        for t in THRESHOLDS:
            row[f"exceed_{t:g}delta"] = float(np.mean(ratio > t)) if acc else math.nan
        row["median_true_over_delta"] = float(np.median(ratio)) if acc else math.nan
        row["max_true_over_delta"] = float(ratio.max()) if acc else math.nan
        row["mean_monitor_over_delta"] = float(np.mean([r["kl_monitor"] / r["delta"] for r in acc])) if acc else math.nan
        out.append(row)
    return out


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monitors = list(dict.fromkeys(r["monitor"] for r in summary))
    deltas = sorted({r["delta"] for r in summary})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(deltas), 1)
    for k, delta in enumerate(deltas):
        vals = {r["monitor"]: r for r in summary if r["delta"] == delta}
        x = np.arange(len(monitors)) + k * width
        axes[0].bar(x, [vals[m]["exceed_1.5delta"] if m in vals else np.nan for m in monitors], width,
                    label=f"delta={delta:g}")
        axes[1].bar(x, [vals[m]["median_true_over_delta"] if m in vals else np.nan for m in monitors], width,
                    label=f"delta={delta:g}")
    for ax, title in zip(axes, ("share of accepted updates with true KL > 1.5 delta", "median true KL / delta")):
        ax.set_xticks(np.arange(len(monitors)) + width * (len(deltas) - 1) / 2)
        ax.set_xticklabels(monitors, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    axes[1].axhline(1.0, color="k", lw=0.8, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: CalibrationConfig, root: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the study; returns the summary rows."""
    out = results_dir(cfg.out, root)
    save_run_metadata(out, cfg, [cfg.seed0 + s for s in range(cfg.seeds)])
    log = out / "updates.jsonl"
    done: dict[str, list] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a truncated last line of an interrupted run: redone
            done[rec["key"]] = rec["rows"]
    conf = asdict(cfg)
    jobs = [dict(family=f, delta=d, monitor=m, seed=cfg.seed0 + s, config=conf)
            for f in cfg.families for d in cfg.deltas for m in cfg.monitors for s in range(cfg.seeds)]
    todo = [j for j in jobs if job_key(j) not in done]
    with open(log, "a") as fh:
        for res in run_pool(run_job, todo, workers=cfg.workers, desc="kl_calibration"):
            fh.write(json.dumps(res) + "\n")
            fh.flush()
            done[res["key"]] = res["rows"]
    rows = [r for j in jobs for r in done[job_key(j)]]
    write_csv(out / "updates.csv", rows)
    summary = summarise(rows, ("monitor", "delta"))
    by_family = summarise(rows, ("monitor", "delta", "family"))
    write_csv(out / "summary.csv", summary)
    write_csv(out / "summary_by_family.csv", by_family)
    write_json(out / "summary.json", {"summary": summary, "by_family": by_family})
    plot(summary, out / "kl_calibration.png")
    return {"summary": summary, "by_family": by_family, "out": out}


def format_table(summary: list[dict[str, Any]]) -> str:
    head = f"{'monitor':<15}{'delta':>7}{'accepted':>9}{'>d':>8}{'>1.5d':>8}{'>2d':>8}{'med true/d':>11}{'max true/d':>11}"
    lines = [head]
    for r in summary:
        lines.append(f"{r['monitor']:<15}{r['delta']:>7g}{r['accepted']:>9d}{r['exceed_1delta']:>8.3f}"
                     f"{r['exceed_1.5delta']:>8.3f}{r['exceed_2delta']:>8.3f}{r['median_true_over_delta']:>11.3f}"
                     f"{r['max_true_over_delta']:>11.3f}")
    return "\n".join(lines)


COST_VARIANTS = (
    ("no trust region", dict(delta=math.inf, kl_target=0.01)),
    ("k1 monitor, retry", dict(monitor_estimator="k1")),
    ("exact monitor, retry", dict()),
    ("exact monitor, line search", dict(backtrack="line_search")),
)


def bench_update_cost(family: str = "layered", n_agents: int = 3, repeats: int = 20, lr: float = 0.2,
                      delta: float = 0.01) -> list[dict[str, Any]]:
    """Wall time of one agent update (tabular engine, the study's update settings) per variant of
    :data:`COST_VARIANTS`, on the same batches (median over ``repeats`` updates, each from the
    same start), with the accepted and rejected steps and monitor passes; ratios against the
    update without a trust region measured in the same run."""
    import time

    import torch

    from occupancy.families import initial_policy, make_family
    from occupancy.policy import make_tabular_team
    from occupancy.sampling import TabularSampler
    from trust_region.advantage import AdvantageConfig, compute_advantages
    from trust_region.update import UpdateConfig, update_agent

    torch.set_num_threads(1)
    cfg = CalibrationConfig()
    mdp = make_family(family, n_agents, seed=0, rounds=1, gamma=0.95)
    pi0 = initial_policy(mdp, seed=0)
    sampler = TabularSampler(mdp, seed=0)
    team = make_tabular_team(mdp, pi0)
    batches = [sampler.sample(team, sampler.draw_prompts(cfg.prompts), cfg.group_size) for _ in range(repeats)]
    out = []
    for name, kw in COST_VARIANTS:
        ucfg = UpdateConfig(**{**dict(delta=delta, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size), **kw})
        times, steps, rejected, passes = [], [], [], []
        for b in batches:
            agent = make_tabular_team(mdp, pi0)[1]
            opt = torch.optim.Adam(agent.trainable_parameters(), lr=lr)
            own = b.agent == 1
            adv = compute_advantages(b, 1, AdvantageConfig()).select(own)
            t0 = time.perf_counter()
            rep = update_agent(agent, opt, b.select(own), adv, ucfg, rng=np.random.default_rng(0))
            times.append(time.perf_counter() - t0)
            steps.append(rep.n_steps)
            rejected.append(rep.n_rejected)
            passes.append(rep.n_monitor_passes)
        out.append(dict(variant=name, wall_ms=1e3 * float(np.median(times)), steps=float(np.mean(steps)),
                        rejected=float(np.mean(rejected)), monitor_passes=float(np.mean(passes))))
    ref = out[0]["wall_ms"]
    for r in out:
        r["ratio_vs_no_tr"] = r["wall_ms"] / ref
    return out


# ---------------------------------------------------------------------------- LLM part
@dataclass(frozen=True)
class LLMCalibrationConfig:
    """LLM part: preset (experiments.bench_llm.PRESETS with random weights; 'tiny' default) or model
    (a local folder or 'builtin:smollm2', pretrained; opt-in); monitors (exact, k1, ...);
    deltas; seeds; updates per run; prompts x group_size rollouts per update of new_tokens tokens
    from prompts of prompt_len tokens; epochs, minibatch_size and lr (AdamW) of an update;
    temperature of the policy; fresh_prompts for the truth measurement."""

    preset: str = "tiny"
    model: str | None = None
    monitors: tuple[str, ...] = ("exact", "k1")
    deltas: tuple[float, ...] = (0.01, 0.1)
    seeds: int = 3
    updates: int = 6
    prompts: int = 8
    group_size: int = 4
    prompt_len: int = 8
    new_tokens: int = 8
    epochs: int = 2
    minibatch_size: int = 8
    lr: float = 3e-3
    temperature: float = 1.0
    fresh_prompts: int = 16
    out: str = "kl_calibration_llm"


LLM_QUICK = dict(deltas=(0.1,), seeds=1, updates=2, prompts=4, group_size=2, fresh_prompts=4,
                 out="kl_calibration_llm_quick")


def _load_llm(cfg: "LLMCalibrationConfig", seed: int) -> tuple[Any, int, int, int]:
    """(model float32 on the CPU, vocabulary size, eos id, pad id): ``cfg.model`` when set (a local
    folder or ``builtin:smollm2``; pretrained weights), else the ``cfg.preset`` architecture of
    ``experiments.bench_llm`` with seeded random weights."""
    import torch

    if cfg.model is None:
        from experiments.bench_llm import build_model, preset_config

        qcfg = preset_config(cfg.preset)
        return build_model(qcfg, torch.device("cpu"), torch.float32, seed), qcfg.vocab_size, qcfg.vocab_size - 1, 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.models import resolve_builtin

    path = resolve_builtin(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    eos = int(tok.eos_token_id)
    pad = int(tok.pad_token_id) if tok.pad_token_id is not None else eos
    return model, int(model.config.vocab_size), eos, pad


def _even_share_batch(prompts: list[list[int]], gens: list[Any], group_size: int) -> Any:
    """MessageBatch of the rollouts (one message each; ``group`` = prompt index; returns = share of
    even token ids in the message)."""
    import torch

    from experiments.bench_llm import message_batch

    b = message_batch(prompts, gens)
    ret = torch.tensor([sum(1 for t in g.token_ids if t % 2 == 0) / max(len(g.token_ids), 1) for g in gens])
    return b.with_fields(group=torch.arange(len(gens)) // group_size, returns=ret.float(), reward=ret.float())


def run_llm_job(cfg: LLMCalibrationConfig, monitor: str, delta: float, seed: int) -> list[dict[str, Any]]:
    """One (monitor, delta, seed) run of the LLM part; one row per update."""
    from types import SimpleNamespace

    import torch

    from experiments.bench_llm import random_prompts
    from llm.agent import LLMAgent
    from llm.rollout.base import SamplingConfig
    from llm.rollout.hf import HFBackend
    from trust_region.advantage import AdvantageConfig, compute_advantages
    from trust_region.interfaces import supports_exact_kl
    from trust_region.kl import per_message
    from trust_region.update import UpdateConfig, eval_exact_kl, update_agent

    model, vocab, eos, pad = _load_llm(cfg, seed)
    agent = LLMAgent(0, cfg.model or cfg.preset, model, SimpleNamespace(pad_token_id=pad, eos_token_id=eos),
                     temperature=cfg.temperature, micro_batch_size=8, max_new_tokens=cfg.new_tokens)
    if not supports_exact_kl(agent):
        raise RuntimeError("LLMAgent offers no exact_kl: the LLM part needs the exact full-vocabulary KL")
    backend = HFBackend([model], [[eos]], [pad], batch_size=cfg.prompts * cfg.group_size, fixed_length=True)
    sampling = SamplingConfig(max_new_tokens=cfg.new_tokens, temperature=cfg.temperature, top_p=1.0)
    opt = torch.optim.AdamW(agent.trainable_parameters(), lr=cfg.lr)
    ucfg = UpdateConfig(delta=delta, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size, monitor_estimator=monitor)
    rng = np.random.default_rng(seed)
    beta, rows = ucfg.beta, []
    for u in range(cfg.updates):
        base = random_prompts(cfg.prompts, cfg.prompt_len, vocab, 1000 * seed + 2 * u, exclude=eos)
        prompts = [p for p in base for _ in range(cfg.group_size)]
        batch = _even_share_batch(prompts, backend.generate(0, prompts, sampling, seed=1000 * seed + 2 * u),
                                  cfg.group_size)
        reference = agent.kl_reference(batch)  # pi_cur, kept for the truth measurement below
        adv = compute_advantages(batch, 0, AdvantageConfig())
        rep = update_agent(agent, opt, batch, adv, ucfg, beta=beta, rng=rng)
        beta = rep.beta_end
        fresh_prompts = random_prompts(cfg.fresh_prompts, cfg.prompt_len, vocab, 1000 * seed + 2 * u + 1, exclude=eos)
        fresh = _even_share_batch(fresh_prompts, backend.generate(0, fresh_prompts, sampling,
                                                                  seed=10**6 + 1000 * seed + u), 1)
        true = float(per_message(eval_exact_kl(agent, fresh, reference, "reverse"), fresh.mask).mean())
        rows.append(dict(monitor=f"{monitor}/train", delta=delta, seed=seed, update=u, accepted=rep.n_steps > 0,
                         n_steps=rep.n_steps, n_rejected=rep.n_rejected, kl_monitor=rep.kl,
                         kl_exact_batch=rep.kl_exact_mean, kl_k1_batch=rep.kl_k1_mean, kl_true=true,
                         reward=float(batch.returns.mean())))
    return rows


def bench_llm_update_cost(preset: str = "tiny", repeats: int = 3, delta: float = 0.01, seed: int = 0,
                          cfg: LLMCalibrationConfig | None = None) -> list[dict[str, Any]]:
    """Wall time of one LLM agent update per variant of :data:`COST_VARIANTS` (same start weights,
    same batch; best of ``repeats``), accepted/rejected steps, monitor passes, ratio against the
    update without a trust region measured in the same run; also the bytes of the exact monitor's
    reference (the copy of the trainable parameters) and of the model."""
    import time
    from types import SimpleNamespace

    import torch

    from experiments.bench_llm import random_prompts
    from llm.agent import LLMAgent
    from llm.rollout.base import SamplingConfig
    from llm.rollout.hf import HFBackend
    from trust_region.advantage import AdvantageConfig, compute_advantages
    from trust_region.update import UpdateConfig, update_agent

    cfg = cfg or LLMCalibrationConfig(preset=preset)
    model, vocab, eos, pad = _load_llm(cfg, seed)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    agent = LLMAgent(0, cfg.model or cfg.preset, model, SimpleNamespace(pad_token_id=pad, eos_token_id=eos),
                     temperature=cfg.temperature, micro_batch_size=8, max_new_tokens=cfg.new_tokens)
    backend = HFBackend([model], [[eos]], [pad], batch_size=cfg.prompts * cfg.group_size, fixed_length=True)
    sampling = SamplingConfig(max_new_tokens=cfg.new_tokens, temperature=cfg.temperature, top_p=1.0)
    base = random_prompts(cfg.prompts, cfg.prompt_len, vocab, seed, exclude=eos)
    prompts = [p for p in base for _ in range(cfg.group_size)]
    batch = _even_share_batch(prompts, backend.generate(0, prompts, sampling, seed=seed), cfg.group_size)
    adv = compute_advantages(batch, 0, AdvantageConfig())
    ref_bytes = sum(t.numel() * t.element_size() for t in agent.kl_reference(batch).values())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = []
    for name, kw in COST_VARIANTS:
        ucfg = UpdateConfig(**{**dict(delta=delta, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size), **kw})
        best, rep = math.inf, None
        for _ in range(repeats):
            model.load_state_dict(start)
            opt = torch.optim.AdamW(agent.trainable_parameters(), lr=cfg.lr)
            t0 = time.perf_counter()
            rep = update_agent(agent, opt, batch, adv, ucfg, rng=np.random.default_rng(seed))
            best = min(best, time.perf_counter() - t0)
        out.append(dict(variant=name, wall_ms=1e3 * best, steps=float(rep.n_steps), rejected=float(rep.n_rejected),
                        monitor_passes=float(rep.n_monitor_passes), kl=rep.kl, reference_mib=ref_bytes / 2**20,
                        model_mib=model_bytes / 2**20))
    for r in out:
        r["ratio_vs_no_tr"] = r["wall_ms"] / out[0]["wall_ms"]
    return out


def print_cost(rows: list[dict[str, Any]]) -> None:
    print(f"{'variant':<30}{'wall ms':>9}{'ratio':>7}{'steps':>7}{'rejected':>9}{'monitor passes':>15}")
    for r in rows:
        print(f"{r['variant']:<30}{r['wall_ms']:>9.2f}{r['ratio_vs_no_tr']:>7.2f}{r['steps']:>7.1f}"
              f"{r['rejected']:>9.1f}{r['monitor_passes']:>15.1f}")
    if "reference_mib" in rows[0]:
        print(f"exact-monitor reference: {rows[0]['reference_mib']:.2f} MiB (model {rows[0]['model_mib']:.2f} MiB)")


def run_llm(cfg: LLMCalibrationConfig, root: str | Path | None = None) -> dict[str, Any]:
    """The LLM part (all runs in this process; tqdm over runs); summary per (monitor, delta)."""
    from tqdm import tqdm

    out = results_dir(cfg.out, root)
    save_run_metadata(out, cfg, range(cfg.seeds))
    rows = []
    jobs = [(m, d, s) for m in cfg.monitors for d in cfg.deltas for s in range(cfg.seeds)]
    for m, d, s in tqdm(jobs, desc="kl_calibration llm"):
        rows.extend(run_llm_job(cfg, m, d, s))
    summary = summarise(rows, ("monitor", "delta"))
    write_csv(out / "updates.csv", rows)
    write_csv(out / "summary.csv", summary)
    write_json(out / "summary.json", {"summary": summary})
    plot(summary, out / "kl_calibration_llm.png")
    return {"summary": summary, "rows": rows, "out": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version (seconds)")
    parser.add_argument("--families", nargs="+")
    parser.add_argument("--deltas", nargs="+", type=float)
    parser.add_argument("--monitors", nargs="+")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out")
    parser.add_argument("--cost", action="store_true", help="only the update-cost benchmark (tabular)")
    parser.add_argument("--llm", action="store_true", help="only the LLM part (tiny model; with --quick: smoke)")
    parser.add_argument("--model", help="LLM part: a local model folder or builtin:smollm2 instead of the tiny model")
    parser.add_argument("--lr", type=float, help="LLM part: AdamW learning rate")
    args = parser.parse_args(argv)
    if args.llm and args.cost:
        rows = bench_llm_update_cost(cfg=LLMCalibrationConfig(model=args.model, lr=args.lr or 3e-3))
        print_cost(rows)
        write_json(results_dir("kl_calibration_cost") / "cost_llm.json", rows)
        return 0
    if args.llm:
        kw = dict(LLM_QUICK) if args.quick else {}
        kw.update(cli_overrides(args, tuples=("deltas", "monitors"), scalars=("seeds", "out", "model", "lr")))
        res = run_llm(LLMCalibrationConfig(**kw))
        print(format_table(res["summary"]))
        print(f"wrote {res['out']}")
        return 0
    if args.cost:
        limit_blas_threads()
        rows = bench_update_cost()
        print_cost(rows)
        write_json(results_dir("kl_calibration_cost") / "cost.json", rows)
        return 0
    kwargs = dict(QUICK) if args.quick else {}
    kwargs.update(cli_overrides(args, tuples=("families", "deltas", "monitors"), scalars=("seeds", "workers", "out")))
    limit_blas_threads()
    res = run(CalibrationConfig(**kwargs))
    print(format_table(res["summary"]))
    print(f"wrote {res['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
