"""Shared matplotlib style for paper figures: one-column width (3.4 in), 8 pt text, PNG + PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMN_WIDTH = 3.4  # inches, one column of a two-column paper
FULL_WIDTH = 7.0

RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 6.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "legend.frameon": False,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
}

#: Colours per evaluation mode and per family (colour-blind safe Okabe-Ito palette).
MODE_COLOURS = {"seq": "#0072B2", "stale_occ": "#D55E00", "stale_batch": "#CC79A7"}
MODE_LABELS = {"seq": "intermediate (TeamTR)", "stale_occ": "stale occupancy", "stale_batch": "stale batch (naive)"}
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def new_figure(width: float = COLUMN_WIDTH, height: float = 2.4, nrows: int = 1, ncols: int = 1, **kw):
    """A figure and axes with the paper style applied."""
    plt.rcParams.update(RC)
    return plt.subplots(nrows, ncols, figsize=(width, height), **kw)


def save(fig, out: Path, name: str) -> list[Path]:
    """Write ``<out>/<name>.png`` and ``.pdf``; close the figure; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths
