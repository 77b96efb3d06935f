"""Penalty versus team size N (log-log) per family, with fits and the bounds' shapes; exponents.

Reads results/scaling_sweep/{curves.json, fits.json} (``python -m experiments.scaling_sweep``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from experiments.common import read_json
from paper_figures import figure
from paper_figures.style import FULL_WIDTH, MODE_COLOURS, MODE_LABELS, new_figure, save

NEEDS = ["scaling_sweep/curves.json", "scaling_sweep/fits.json"]
COMMAND = "python -m experiments.scaling_sweep"
BOUND_OF = {"seq": ("bound_seq", "Thm 3.6 shape"), "stale_occ": ("bound_stale_sharp", "Thm 3.7 shape")}


def _middle(values: list[float]) -> float:
    values = sorted(set(values))
    return values[len(values) // 2]


def _fit(fits: list[dict], family: str, mode: str, delta: float, metric: str) -> dict | None:
    for f in fits:
        if (f["family"], f["mode"], f["delta"], f["metric"]) == (family, mode, delta, metric):
            return f
    return None


@figure("scaling_penalty", needs=NEEDS, command=COMMAND)
def scaling_penalty(results: Path, out: Path) -> list[Path]:
    """One panel per family: mean stage penalty |sum_i Gap_i| over seeds (5-95% band) against N for
    the three evaluations at the middle delta, the fitted power law (dashed) and the bound curves
    rescaled to meet the data at the smallest N (dotted; their absolute value is the factor shown)."""
    curves = read_json(results / "scaling_sweep/curves.json")["curves"]
    fits = read_json(results / "scaling_sweep/fits.json")["fits"]
    families = list(dict.fromkeys(c["family"] for c in curves))
    delta = _middle([c["delta"] for c in curves])
    ncols = 3
    nrows = math.ceil(len(families) / ncols)
    fig, axes = new_figure(FULL_WIDTH, 2.1 * nrows, nrows, ncols, squeeze=False)
    for ax in axes.flat[len(families):]:
        ax.axis("off")
    for ax, family in zip(axes.flat, families):
        for mode in ("seq", "stale_occ", "stale_batch"):
            c = next((c for c in curves if c["family"] == family and c["mode"] == mode and c["delta"] == delta), None)
            if c is None:
                continue
            n = np.asarray(c["N"], dtype=float)
            y = np.asarray(c["penalty"]["mean"], dtype=float)
            f = _fit(fits, family, mode, delta, "penalty")
            colour = MODE_COLOURS[mode]
            if f is not None and f.get("exact"):
                ax.plot([], [], color=colour, label=f"{MODE_LABELS[mode]}: exact (0)")
                continue
            style = "--" if mode == "stale_batch" else "-"
            label = MODE_LABELS[mode]
            if f is not None and np.isfinite(f["alpha"]):
                label += f": $\\alpha$={f['alpha']:.2f} [{f['ci_low']:.2f}, {f['ci_high']:.2f}]"
            ax.plot(n, y, style, marker="o", color=colour, label=label)
            ax.fill_between(n, c["penalty"]["q05"], c["penalty"]["q95"], color=colour, alpha=0.12, linewidth=0)
            if f is not None and np.isfinite(f["alpha"]):
                ax.plot(n, np.exp(f["intercept"]) * n ** f["alpha"] if "intercept" in f else
                        y[0] * (n / n[0]) ** f["alpha"], ":", color=colour, linewidth=0.8)
            if mode in BOUND_OF:
                key, name = BOUND_OF[mode]
                b = np.asarray(c[key]["mean"], dtype=float)
                if b[0] > 0 and y[0] > 0:
                    k = y[0] / b[0]
                    ax.plot(n, b * k, color="0.45", linestyle=(0, (1, 1)) if mode == "seq" else (0, (4, 1, 1, 1)),
                            linewidth=0.9, label=f"{name} ($\\times${k:.0e})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{family}")
        ax.set_xlabel("team size N (agents)")
        ax.set_ylabel("stage penalty |Σ gap| (return units)")
        ax.set_xticks([2, 4, 8, 16, 32])
        ax.get_xaxis().set_major_formatter(__import__("matplotlib").ticker.ScalarFormatter())
        ax.legend(loc="best", fontsize=5.2, handlelength=1.8)
    fig.suptitle(f"Surrogate penalty vs team size (per-agent KL δ = {delta:g}, mean over seeds, 5–95% band)", fontsize=8)
    fig.tight_layout()
    return save(fig, out, "scaling_penalty")


@figure("scaling_exponents", needs=NEEDS, command=COMMAND)
def scaling_exponents(results: Path, out: Path) -> list[Path]:
    """Fitted exponent alpha (penalty ~ N^alpha) with its 95% bootstrap interval per family and
    evaluation, for every delta (marker shade), beside the references 1 and 2."""
    fits = [f for f in read_json(results / "scaling_sweep/fits.json")["fits"] if f["metric"] == "penalty"]
    families = list(dict.fromkeys(f["family"] for f in fits))
    deltas = sorted(set(f["delta"] for f in fits))
    modes = ("seq", "stale_occ", "stale_batch")
    fig, ax = new_figure(height=2.6)
    width = 0.8 / (len(modes) * len(deltas))
    for fi, family in enumerate(families):
        for mi, mode in enumerate(modes):
            for di, delta in enumerate(deltas):
                f = _fit(fits, family, mode, delta, "penalty")
                if f is None:
                    continue
                x = fi - 0.4 + width * (mi * len(deltas) + di + 0.5)
                if f.get("exact") or not np.isfinite(f["alpha"]):
                    ax.plot(x, -2.9, marker="x", color=MODE_COLOURS[mode], markersize=3)
                    continue
                ax.errorbar(x, f["alpha"], yerr=[[f["alpha"] - f["ci_low"]], [f["ci_high"] - f["alpha"]]],
                            fmt="o", color=MODE_COLOURS[mode], markersize=2.5, elinewidth=0.8,
                            alpha=0.45 + 0.55 * (di + 1) / len(deltas))
    for ref in (1.0, 2.0):
        ax.axhline(ref, color="0.5", linewidth=0.6, linestyle="--")
    ax.axhline(0.0, color="0.3", linewidth=0.5)
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels(families)
    ax.set_ylabel("fitted exponent α (penalty ∝ N^α)")
    ax.set_ylim(-3, 3)
    for mode in modes:
        ax.plot([], [], "o", color=MODE_COLOURS[mode], label=MODE_LABELS[mode])
    ax.plot([], [], "x", color="0.3", label="exact (penalty 0)")
    ax.legend(loc="lower left", fontsize=5.5, ncol=2)
    ax.set_title(f"Exponents with 95% bootstrap CI; δ = {', '.join(f'{d:g}' for d in deltas)} (light to dark)")
    return save(fig, out, "scaling_exponents")
