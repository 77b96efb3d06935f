"""The regime map (issue 15): where resampling pays off in training, and the gain vs the measured
stale penalty.

Reads results/regime_map/cells.json (``python -m experiments.regime_map``; the quick run's
results/regime_map_quick/ when the full one is absent).

- ``regime_map``: one row per family, one column per (rounds, order); each panel a grid over
  (delta, N) coloured by the paired exact-J difference intermediate - stale at equal updates
  (diverging colours, symmetric scale per family); a dot marks cells whose 95% interval excludes 0.
- ``regime_map_token_matched``: the same for token-matched intermediate - stale (equal actions).
- ``regime_penalty_scatter``: per cell, the relative training gain of resampling (paired ΔJ / stale's
  total gain) against the relative measured stale penalty, both comparisons, Spearman ρ in the title.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.common import read_json
from paper_figures import figure
from paper_figures.style import COLUMN_WIDTH, new_figure, save

COMMAND = "python -m experiments.regime_map"


def _cells(results: Path) -> list[dict]:
    for name in ("regime_map", "regime_map_quick"):
        p = results / name / "cells.json"
        if p.exists():
            return read_json(p)["cells"]
    raise FileNotFoundError(results / "regime_map/cells.json")


def draw_map(cells: list[dict], mode: str, out: Path, name: str) -> list[Path]:
    """Grid of heatmaps: rows = families, columns = (rounds, order); value d_<mode>_mean."""
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(c["family"] for c in cells))
    slices = sorted({(c["rounds"], c["order"]) for c in cells})
    ns = sorted({c["N"] for c in cells})
    deltas = sorted({c["delta"] for c in cells})
    fig, axes = new_figure(COLUMN_WIDTH * 1.6, 0.95 * len(families) + 0.6, len(families), len(slices), squeeze=False)
    index = {(c["family"], c["rounds"], c["order"], c["N"], c["delta"]): c for c in cells}
    for row, family in enumerate(families):
        vals = [c[f"d_{mode}_mean"] for c in cells if c["family"] == family and np.isfinite(c[f"d_{mode}_mean"])]
        scale = max((abs(v) for v in vals), default=1.0) or 1.0
        for col, (rounds, order) in enumerate(slices):
            ax = axes[row, col]
            grid = np.full((len(deltas), len(ns)), np.nan)
            sig = np.zeros_like(grid)
            for i, d in enumerate(deltas):
                for j, n in enumerate(ns):
                    c = index.get((family, rounds, order, n, d))
                    if c is not None:
                        grid[i, j] = c[f"d_{mode}_mean"]
                        sig[i, j] = c[f"d_{mode}_sig"]
            im = ax.imshow(grid, cmap="RdBu", vmin=-scale, vmax=scale, origin="lower", aspect="auto")
            ax.grid(False)
            for i in range(len(deltas)):
                for j in range(len(ns)):
                    if sig[i, j] != 0:
                        ax.plot(j, i, marker="o" if sig[i, j] > 0 else "x", color="k", markersize=2.5,
                                markeredgewidth=0.6, fillstyle="none" if sig[i, j] > 0 else "full")
            ax.set_xticks(range(len(ns)), [str(n) for n in ns], fontsize=5)
            ax.set_yticks(range(len(deltas)), [f"{d:g}" for d in deltas], fontsize=5)
            ax.tick_params(length=1.5, pad=1)
            if row == 0:
                ax.set_title(f"{rounds} round{'s' if rounds > 1 else ''}, {order}", fontsize=6, pad=2)
            if row == len(families) - 1:
                ax.set_xlabel("N", fontsize=5, labelpad=1)
            if col == 0:
                ax.set_ylabel(f"{family}\nδ", fontsize=5.5, labelpad=1)
            if col == len(slices) - 1:
                cb = fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03)
                cb.ax.tick_params(labelsize=4, length=1.5, pad=1)
    label = {"intermediate": "intermediate − stale, equal updates",
             "token_matched": "token-matched − stale, equal generated actions"}[mode]
    fig.suptitle(f"paired exact ΔJ: {label} (o: CI > 0, x: CI < 0)", fontsize=6.5)
    plt.subplots_adjust(hspace=0.35, wspace=0.25, top=1.0 - 0.45 / (0.95 * len(families) + 0.6))
    return save(fig, out, name)


@figure("regime_map", needs=["regime_map/cells.json"], command=COMMAND)
def regime_map(results: Path, out: Path) -> list[Path]:
    return draw_map(_cells(results), "intermediate", out, "regime_map")


@figure("regime_map_token_matched", needs=["regime_map/cells.json"], command=COMMAND)
def regime_map_token_matched(results: Path, out: Path) -> list[Path]:
    return draw_map(_cells(results), "token_matched", out, "regime_map_token_matched")


@figure("regime_penalty_scatter", needs=["regime_map/cells.json"], command=COMMAND)
def regime_penalty_scatter(results: Path, out: Path) -> list[Path]:
    from experiments.tabular_training import spearman

    cells = _cells(results)
    import matplotlib.pyplot as plt

    fig, axes = new_figure(COLUMN_WIDTH * 1.5, 2.2, 1, 2, squeeze=False)
    families = list(dict.fromkeys(c["family"] for c in cells))
    colours = dict(zip(families, ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000"]))
    for ax, mode, title in zip(axes[0], ("intermediate", "token_matched"),
                               ("interm. − stale, equal updates", "token-m. − stale, equal actions")):
        x = np.array([c["penalty_stale_rel"] for c in cells], dtype=float)
        y = np.array([c[f"d_{mode}_rel"] for c in cells], dtype=float)
        for family in families:
            sel = np.array([c["family"] == family for c in cells])
            sig = np.array([c[f"d_{mode}_sig"] != 0 for c in cells])
            ax.scatter(x[sel & ~sig], y[sel & ~sig], s=4, facecolors="none", edgecolors=colours[family],
                       linewidths=0.5)
            ax.scatter(x[sel & sig], y[sel & sig], s=5, color=colours[family], label=family, linewidths=0)
        ax.axhline(0.0, color="0.5", linewidth=0.5)
        ax.set_xscale("log")
        ax.set_title(f"{title}\nSpearman ρ = {spearman(x, y):+.2f}", fontsize=6, pad=2)
        ax.set_xlabel("stale penalty / mean |ΔJ| per stage", fontsize=5.5)
        ax.tick_params(labelsize=5)
    axes[0, 0].set_ylabel("paired ΔJ / stale's total gain", fontsize=5.5)
    axes[0, 1].legend(fontsize=4.5, frameon=False, loc="best", markerscale=1.2)
    plt.subplots_adjust(wspace=0.3)
    return save(fig, out, "regime_penalty_scatter")
