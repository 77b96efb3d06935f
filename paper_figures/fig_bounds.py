"""True improvement versus bound, and how much of each bound's penalty instances use.

Reads results/bound_check/{summary.json, tightness_samples.json} (``python -m experiments.bound_check``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.common import read_json
from paper_figures import figure
from paper_figures.style import PALETTE, new_figure, save

NEEDS = ["bound_check/summary.json", "bound_check/tightness_samples.json"]
COMMAND = "python -m experiments.bound_check --instances 20000"

SHOWN = [
    ("teamtr_per_update[reverse,a_max]", "TeamTR Thm 3.4 (A_max)"),
    ("teamtr_per_update[reverse,eps]", "TeamTR Thm 3.4 (Achiam ε)"),
    ("sat_per_update[forward_max,eps]", "SAT single step (ε)"),
    ("teamtr_prop3.3[reverse,eps]", "TeamTR Prop 3.3 (ε)"),
    ("teamtr_stale_sharp[reverse,eps]", "TeamTR Thm 3.7 sharp (ε)"),
    ("teamtr_per_stage[reverse,eps]", "TeamTR Thm 3.6 (ε)"),
    ("chain_per_update[reverse,eps]", "chain-rule per update (ε), derived"),
]


@figure("bound_truth_vs_bound", needs=NEEDS, command=COMMAND)
def truth_vs_bound(results: Path, out: Path) -> list[Path]:
    """Per-update improvement J(hat_pi^i) - J(hat_pi^{i-1}) against TeamTR's Thm 3.4 lower bound
    L_seq - c sqrt(delta) (Achiam eps scale) on a random subsample of the checked updates;
    every point lies on or above the diagonal."""
    data = read_json(results / "bound_check/tightness_samples.json")["pairs"]
    fig, ax = new_figure(height=2.6)
    for (key, label), colour in zip(SHOWN[:3], PALETTE):
        if key not in data:
            continue
        truth, bound = np.asarray(data[key]["truth"]), np.asarray(data[key]["bound"])
        ax.scatter(bound, truth, s=2, alpha=0.35, color=colour, label=label, linewidths=0, rasterized=True)
    import matplotlib.ticker as mticker

    lim = 1e-4
    allx = np.concatenate([np.asarray(data[k]["bound"]) for k, _ in SHOWN[:3] if k in data])
    ally = np.concatenate([np.asarray(data[k]["truth"]) for k, _ in SHOWN[:3] if k in data])
    lo = float(min(np.quantile(allx, 0.001), np.quantile(ally, 0.001)))
    hi = float(max(np.quantile(allx, 0.999), np.quantile(ally, 0.999)))
    for axis in ("x", "y"):
        getattr(ax, f"set_{axis}scale")("symlog", linthresh=lim)
        getattr(ax, f"{axis}axis").set_major_locator(mticker.SymmetricalLogLocator(linthresh=lim, base=100))
        getattr(ax, f"{axis}axis").set_minor_locator(mticker.NullLocator())
    ax.set_xlim(lo * 1.5 if lo < 0 else -lim, hi * 1.5)
    ax.set_ylim(lo * 1.5 if lo < 0 else -lim, hi * 1.5)
    grid = np.concatenate([-np.logspace(np.log10(max(-lo * 1.5, 2 * lim)), np.log10(lim), 50), np.linspace(-lim, lim, 20),
                           np.logspace(np.log10(lim), np.log10(max(hi * 1.5, 2 * lim)), 50)])
    ax.plot(grid, grid, color="0.2", linewidth=0.8, label="truth = bound")
    ax.set_xlabel("lower bound (return units, symlog)")
    ax.set_ylabel("true improvement (return units, symlog)")
    ax.legend(loc="lower right", fontsize=5.5, markerscale=3)
    ax.set_title("Per-update improvement vs bound (random subsample)")
    return save(fig, out, "bound_truth_vs_bound")


@figure("bound_tightness", needs=NEEDS, command=COMMAND)
def tightness(results: Path, out: Path) -> list[Path]:
    """Complementary CDF of the tightness (share of the penalty used; > 1 would be a violation)
    for the main bounds, with the number of violations from the summary."""
    samples = read_json(results / "bound_check/tightness_samples.json")["by_bound"]
    summary = read_json(results / "bound_check/summary.json")
    fig, ax = new_figure(height=2.4)
    for (key, label), colour in zip(SHOWN, PALETTE):
        if key not in samples:
            continue
        t = np.sort(np.asarray(samples[key], dtype=float))
        t = t[t > 0]
        if t.size == 0:
            continue
        ccdf = 1.0 - np.arange(t.size) / t.size
        worst = summary["bounds"][key]["worst_tightness"]
        ax.step(t, ccdf * (t.size / len(samples[key])), where="post", color=colour,
                label=f"{label}: worst {worst:.3f}, viol. {summary['bounds'][key]['violations']}")
    ax.axvline(1.0, color="0.2", linewidth=0.8, linestyle="--")
    ax.text(1.0, 0.5, " violation", fontsize=6, color="0.2", transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-6, 3.0)
    ax.set_xlabel("tightness = (surrogate − truth) / penalty")
    ax.set_ylabel("share of checks ≥ tightness")
    ax.set_title(f"{summary['instances']} instances, {summary['total_violations']} violations")
    ax.legend(loc="lower left", fontsize=5.2)
    return save(fig, out, "bound_tightness")
