"""Plug-and-play replacement in a tabular team (results/plug_and_play_tabular)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from experiments.common import read_csv, read_json
from paper_figures import figure
from paper_figures.style import FULL_WIDTH, PALETTE, new_figure, save

NEEDS = ["plug_and_play_tabular/summary.json", "plug_and_play_tabular/curves.csv"]
COMMAND = "python -m experiments.plug_and_play_tabular"


def _paired_curves(curves: list[dict], name: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Stages, mean and std over seeds of J(variant) - J(no swap) at each stage (paired by seed)."""
    table: dict[tuple[str, int, str], float] = {}
    for row in curves:
        table[(row["variant"], int(row["stage"]), row["seed"])] = float(row["J"])
    seeds = sorted({row["seed"] for row in curves})
    stages = sorted({int(row["stage"]) for row in curves if row["variant"] == name})
    diff = np.array([[table[(name, k, s)] - table[("none", k, s)] for s in seeds] for k in stages])
    std = diff.std(axis=1, ddof=1) if diff.shape[1] > 1 else np.zeros(len(stages))
    return stages, diff.mean(axis=1), std


@figure("plug_and_play", needs=NEEDS, command=COMMAND)
def plug_and_play(results: Path, out: Path) -> list[Path]:
    """Top: exact J of the team minus the no-swap team's J (paired by seed) over training stages
    (stage 0 = the swap) for each replacement, directly swapped (dashed) and projected with each
    delta_0 (solid), mean over seeds (band: one std). Bottom: the swap's exact change
    J_after - J_before against delta_0 (direct swap at the right), and minus the per-update lower
    bound L - c sqrt(delta) of the swap (SAT's forward max KL and TeamTR's reverse KL, Achiam's eps
    scale; log scale: the bound is below zero, i.e. vacuous as a guarantee of improvement, by that
    much)."""
    summary = read_json(results / "plug_and_play_tabular/summary.json")
    curves = read_csv(results / "plug_and_play_tabular/curves.csv")
    variants = summary["variants"]
    kinds = [k for k in ("stronger", "random", "perturbed") if f"{k}/direct" in variants]
    deltas0 = sorted({v["delta0"] for v in variants.values() if v["replacement"] != "none" and math.isfinite(v["delta0"])})
    fig, axes = new_figure(FULL_WIDTH, 4.6, 2, max(len(kinds), 2), squeeze=False)
    colours = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(deltas0)}
    for ax, kind in zip(axes[0], kinds):
        for name, v in variants.items():
            if v["replacement"] != kind:
                continue
            stages, mean, std = _paired_curves(curves, name)
            direct = not math.isfinite(v["delta0"])
            colour = "k" if direct else colours[v["delta0"]]
            label = "direct swap" if direct else f"δ₀ = {v['delta0']:g}"
            ax.plot(stages, mean, "--" if direct else "-", color=colour, label=label)
            ax.fill_between(stages, mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.axvline(0.0, color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(f"replacement: {kind}")
        ax.set_xlabel("stage (0 = swap)")
    axes[0, 0].set_ylabel("J − J(no swap)")
    axes[0, 0].legend(loc="best", fontsize=5.5)
    xs = list(range(len(deltas0) + 1))
    labels = [f"{d:g}" for d in deltas0] + ["direct"]
    ax_c, ax_b = axes[1, 0], axes[1, 1]
    for i, kind in enumerate(kinds):
        names = [f"{kind}/proj{d:g}" for d in deltas0] + [f"{kind}/direct"]
        colour = PALETTE[(i + 3) % len(PALETTE)]
        change = [variants[n]["swap_change"]["mean"] for n in names]
        err = [variants[n]["swap_change"]["std"] for n in names]
        ax_c.errorbar(xs, change, yerr=err, marker="o", color=colour, label=kind, capsize=2)
        for key, style in (("swap_bound[forward_max,eps]", "-"), ("swap_bound[reverse,eps]", ":")):
            pen = [-variants[n][key]["mean"] for n in names]
            ax_b.plot(xs, pen, style, marker="o", markersize=2.5, color=colour,
                      label=f"{kind}, {'SAT fwd max' if 'forward' in key else 'TeamTR reverse'}")
    ax_c.axhline(0.0, color="grey", linewidth=0.6)
    ax_c.set_xticks(xs, labels)
    ax_c.set_xlabel("δ₀ (per-state forward KL)")
    ax_c.set_ylabel("J_after − J_before")
    ax_c.set_title("exact change of J at the swap")
    ax_c.legend(loc="lower left", fontsize=5.5)
    lowest = min((ln.get_ydata().min() for ln in ax_b.get_lines()), default=1.0)
    if lowest > 0:
        ax_b.set_yscale("log")
    else:  # a bound above zero (a certified improvement) cannot be drawn on a log scale
        ax_b.set_yscale("symlog", linthresh=1e-3)
    ax_b.set_xticks(xs, labels)
    ax_b.set_xlabel("δ₀ (per-state forward KL)")
    ax_b.set_ylabel("− lower bound (L − c√δ)")
    ax_b.set_title("per-update bound of the swap (ε scale)")
    ax_b.legend(loc="upper left", fontsize=5)
    for ax in axes[1, 2:]:
        ax.axis("off")
    fig.suptitle(f"Plug-and-play in a tabular team ({summary['config']['family']}, "
                 f"N = {summary['config']['n_agents']}, trainer {summary['config']['trainer']}, "
                 f"{next(iter(variants.values()))['seeds']} seeds)", fontsize=8)
    fig.tight_layout()
    return save(fig, out, "plug_and_play")
