"""Exact J during tabular training per mode: against stages (updates) and against generated actions.

Reads results/tabular_training/curves.json (``python -m experiments.tabular_training``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.common import read_json
from paper_figures import figure
from paper_figures.style import COLUMN_WIDTH, new_figure, save

NEEDS = ["tabular_training/curves.json"]
COMMAND = "python -m experiments.tabular_training"

#: mode -> (colour, line style, short label); Okabe-Ito colours
STYLE = {
    "intermediate": ("#0072B2", "-", "intermediate (TeamTR)"),
    "intermediate_prefix": ("#56B4E9", "--", "interm. + prefix reuse"),
    "stale": ("#D55E00", "-", "stale (naive)"),
    "stale_is": ("#E69F00", "--", "stale + IS (SAT)"),
    "stale_happo": ("#CC79A7", ":", "stale + IS (HAPPO)"),
    "joint": ("#000000", (0, (1, 2)), "joint (= stale)"),
    "resample_every_2": ("#009E73", "-.", "resample every 2"),
    "no_tr": ("#7F7F7F", "-", "no TR (δ=∞)"),
}


def _pick_n(curves: list[dict], preferred: int = 4) -> int:
    ns = sorted({c["N"] for c in curves})
    return preferred if preferred in ns else ns[len(ns) // 2]


def draw(curves: list[dict], n: int, out: Path, name: str) -> list[Path]:
    """Two rows (J vs stage; J vs generated actions) x one column per family, team size ``n``."""
    sel = [c for c in curves if c["N"] == n]
    families = list(dict.fromkeys(c["family"] for c in sel))
    fig, axes = new_figure(COLUMN_WIDTH, 3.8, 2, len(families), squeeze=False)
    for col, family in enumerate(families):
        top, bottom = axes[0, col], axes[1, col]
        for c in sel:
            if c["family"] != family:
                continue
            colour, ls, label = STYLE.get(c["mode"], ("#333333", "-", c["mode"]))
            y_key = "gain_stage" if "gain_stage" in c else "J_stage"
            for ax, x, y in ((top, np.asarray(c["stage"], float), c[y_key]),
                             (bottom, np.asarray(c["cum_tokens_mean"], float) / 1000.0, c[y_key])):
                mean = np.asarray(y["mean"], dtype=float)
                ax.plot(x, mean, color=colour, linestyle=ls, linewidth=0.9, label=label)
                lo, hi = np.asarray(y["lo"], dtype=float), np.asarray(y["hi"], dtype=float)
                ax.fill_between(x, lo, hi, color=colour, alpha=0.10, linewidth=0)
        first = next(c for c in sel if c["family"] == family)
        j_opt, j0 = first["J_opt"], first.get("J0_mean", float("nan"))
        budget = min(float(np.asarray(c["tokens"], float)[-1]) for c in sel if c["family"] == family)
        bottom.axvline(budget / 1000.0, color="0.4", linewidth=0.6, linestyle=":")
        top.set_title(f"{family}\nJ(π₀)≈{j0:.2f}, J*={j_opt:.2f}", fontsize=6, pad=2)
        if col == len(families) // 2:
            top.set_xlabel("stage (= N updates)", fontsize=6.5, labelpad=1)
            bottom.set_xlabel("generated actions (×1000)", fontsize=6.5, labelpad=1)
        for ax in (top, bottom):
            ax.tick_params(labelsize=5.5, pad=1)
        if col == 0:
            top.set_ylabel("exact J − J(π₀)", fontsize=7)
            bottom.set_ylabel("exact J − J(π₀)", fontsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=5.2, handlelength=2.2, columnspacing=0.8,
               bbox_to_anchor=(0.5, -0.01))
    fig.suptitle(f"Tabular training, N = {n}: gain over the initial team, mean over seeds, 95% t-band",
                 fontsize=6.5, y=0.995)
    fig.tight_layout(rect=(0, 0.09, 1, 1), h_pad=0.6, w_pad=0.3)
    return save(fig, out, name)


@figure("tabular_training", needs=NEEDS, command=COMMAND)
def tabular_training(results: Path, out: Path) -> list[Path]:
    """One column per family at N = 4: exact gain J - J(pi_0) (per seed) against the stage (equal updates, top) and against the
    mean cumulative generated actions (equal samples, bottom; each mode up to its own total, the dotted
    line marks the smallest total, where the summary's equal-token J is read), one line per mode with
    its 95% t-band over seeds."""
    curves = read_json(results / "tabular_training/curves.json")["curves"]
    return draw(curves, _pick_n(curves), out, "tabular_training")
