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
    the three evaluations at the middle delta, the fitted power law (thin dotted) and the bounds'
    N-dependence (grey: TeamTR Thm 3.7 sharp and the chain-rule stale bound), rescaled to meet the
    stale penalty at the smallest N (their absolute values are far larger)."""
    import matplotlib.ticker as mticker

    curves = read_json(results / "scaling_sweep/curves.json")["curves"]
    fits = read_json(results / "scaling_sweep/fits.json")["fits"]
    families = list(dict.fromkeys(c["family"] for c in curves))
    delta = _middle([c["delta"] for c in curves])
    ncols = 4
    nrows = math.ceil((len(families) + 1) / ncols)
    fig, axes = new_figure(FULL_WIDTH, 1.85 * nrows + 0.3, nrows, ncols, squeeze=False)
    for ax in axes.flat[len(families):]:
        ax.axis("off")
    handles = {}
    for ax, family in zip(axes.flat, families):
        notes = []
        n_all = None
        for mode in ("seq", "stale_occ", "stale_batch"):
            c = next((c for c in curves if c["family"] == family and c["mode"] == mode and c["delta"] == delta), None)
            if c is None:
                continue
            n = np.asarray(c["N"], dtype=float)
            n_all = n
            y = np.asarray(c["penalty"]["mean"], dtype=float)
            f = _fit(fits, family, mode, delta, "penalty")
            colour = MODE_COLOURS[mode]
            short = {"seq": "int.", "stale_occ": "stale occ.", "stale_batch": "stale batch"}[mode]
            if f is not None and f.get("exact"):
                notes.append((f"{short}: exact (0)", colour))
                continue
            style = "--" if mode == "stale_batch" else "-"
            (h,) = ax.plot(n, y, style, marker="o", color=colour, markersize=2.5)
            handles[MODE_LABELS[mode]] = h
            ax.fill_between(n, c["penalty"]["q05"], c["penalty"]["q95"], color=colour, alpha=0.12, linewidth=0)
            if f is not None and np.isfinite(f["alpha"]):
                if mode != "stale_batch":
                    notes.append((f"{short} α={f['alpha']:.2f} [{f['ci_low']:.2f},{f['ci_high']:.2f}]", colour))
                fit_y = np.exp(f["intercept"]) * n ** f["alpha"] if "intercept" in f else y[0] * (n / n[0]) ** f["alpha"]
                ax.plot(n, fit_y, ":", color=colour, linewidth=0.8)
            if mode == "stale_occ":
                for key, name, ls in (("bound_stale_sharp", "Thm 3.7 (sharp) shape, rescaled", (0, (4, 1, 1, 1))),
                                      ("bound_stale_chain", "chain-rule stale bound shape, rescaled", (0, (1, 1)))):
                    if key not in c:
                        continue
                    b = np.asarray(c[key]["mean"], dtype=float)
                    if b[0] > 0 and y[0] > 0:
                        (h,) = ax.plot(n, b * y[0] / b[0], color="0.4", linestyle=ls, linewidth=0.9)
                        handles[name] = h
        for k, (text, colour) in enumerate(notes):
            ax.text(0.03, 0.97 - 0.09 * k, text, transform=ax.transAxes, fontsize=5, color=colour, va="top",
                    bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 0.5})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(family, pad=2)
        ax.set_xlabel("team size N")
        if n_all is not None:
            ticks = [t for t in (2, 4, 8, 16, 32) if n_all.min() <= t <= n_all.max()]
            ax.xaxis.set_major_locator(mticker.FixedLocator(ticks))
            ax.xaxis.set_major_formatter(mticker.FixedFormatter([str(t) for t in ticks]))
            ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    for row in axes:
        row[0].set_ylabel("penalty |Σ gap| (return)")
    legend_ax = axes.flat[len(families)]
    legend_ax.legend(list(handles.values()), list(handles.keys()), loc="center", fontsize=6)
    fig.suptitle(f"Stage penalty vs team size, per-agent KL δ = {delta:g} (mean over seeds, 5–95% band; "
                 f"dotted: fitted N^α)", fontsize=7.5)
    fig.tight_layout(h_pad=0.6, w_pad=0.6)
    return save(fig, out, "scaling_penalty")


@figure("scaling_exponents", needs=NEEDS, command=COMMAND)
def scaling_exponents(results: Path, out: Path) -> list[Path]:
    """Fitted exponent alpha (penalty ~ N^alpha, all N) with its 95% bootstrap interval per family
    and evaluation, for every delta (marker shade), the large-N slope (open diamonds, N >= 8),
    beside the references 1 and 2."""
    fits = [f for f in read_json(results / "scaling_sweep/fits.json")["fits"] if f["metric"] == "penalty"]
    families = list(dict.fromkeys(f["family"] for f in fits))
    deltas = sorted(set(f["delta"] for f in fits))
    modes = ("seq", "stale_occ", "stale_batch")
    fig, ax = new_figure(height=2.6)
    width = 0.8 / (len(modes) * len(deltas))
    finite = [f for f in fits if not f.get("exact") and np.isfinite(f["alpha"])]
    lo = min([-1.5] + [f["ci_low"] if np.isfinite(f["ci_low"]) else f["alpha"] for f in finite]) - 0.3
    hi = max([2.5] + [f["ci_high"] if np.isfinite(f["ci_high"]) else f["alpha"] for f in finite]) + 1.0  # room for the legend
    for fi, family in enumerate(families):
        for mi, mode in enumerate(modes):
            for di, delta in enumerate(deltas):
                f = _fit(fits, family, mode, delta, "penalty")
                if f is None:
                    continue
                x = fi - 0.4 + width * (mi * len(deltas) + di + 0.5)
                if f.get("exact") or not np.isfinite(f["alpha"]):
                    ax.plot(x, lo + 0.15, marker="x", color=MODE_COLOURS[mode], markersize=3)
                    continue
                ax.errorbar(x, f["alpha"], yerr=[[f["alpha"] - f["ci_low"]], [f["ci_high"] - f["alpha"]]],
                            fmt="o", color=MODE_COLOURS[mode], markersize=2.5, elinewidth=0.8,
                            alpha=0.45 + 0.55 * (di + 1) / len(deltas))
                if np.isfinite(f.get("alpha_tail", np.nan)):
                    ax.plot(x, f["alpha_tail"], marker="D", markerfacecolor="none", markeredgewidth=0.6,
                            color=MODE_COLOURS[mode], markersize=3)
    for ref in (1.0, 2.0):
        ax.axhline(ref, color="0.5", linewidth=0.6, linestyle="--")
    ax.axhline(0.0, color="0.3", linewidth=0.5)
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels(families, rotation=30, ha="right")
    ax.set_ylabel("fitted exponent α (penalty ∝ N^α)")
    ax.set_ylim(lo, hi)
    for mode in modes:
        ax.plot([], [], "o", color=MODE_COLOURS[mode], label=MODE_LABELS[mode])
    ax.plot([], [], "x", color="0.3", label="exact (penalty 0)")
    ax.plot([], [], "D", markerfacecolor="none", color="0.3", markersize=3, label="large-N slope (N ≥ 8)")
    ax.legend(loc="upper left", fontsize=5.5, ncol=2)
    ax.set_title(f"Exponents with 95% bootstrap CI; δ = {', '.join(f'{d:g}' for d in deltas)} (light to dark)")
    return save(fig, out, "scaling_exponents")
