"""The largest share of each bound's penalty that an adversary over whole instances found, vs gamma.

Reads results/bound_tightness/table.json (``python -m experiments.bound_tightness``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.common import read_json
from paper_figures import figure
from paper_figures.style import PALETTE, new_figure, save

NEEDS = ["bound_tightness/table.json"]
COMMAND = "python -m experiments.bound_tightness"

FAMILIES = [
    ("per_update", "Thm 3.4 / SAT step"),
    ("per_stage", "Thm 3.6 / SAT stage"),
    ("prop3.3", "Prop 3.3"),
    ("stale_sharp", "Thm 3.7 sharp"),
    ("stale_paper", "Thm 3.7 paper"),
    ("chain_per_update", "chain per update"),
    ("chain_stale_surrogate", "chain stale surrogate"),
    ("chain_stale_stage", "chain stale stage"),
    ("sat_upper", "SAT upper (truth / bound)"),
]


def _family(key: str) -> str:
    name = key.split("[")[0]
    for fam, _ in sorted(FAMILIES, key=lambda f: -len(f[0])):
        if name.endswith(fam):
            return fam
    return name


@figure("bound_tightness_adversary", needs=NEEDS, command=COMMAND)
def tightness_vs_gamma(results: Path, out: Path) -> list[Path]:
    """Largest share of the penalty used (1 = attained; > 1 would be a violation confirmed at high
    precision) per bound and gamma; rows: KL convention (TeamTR reverse expected, SAT forward
    per-state max), columns: advantage scale (A_max, Achiam eps)."""
    rows = read_json(results / "bound_tightness/table.json")["rows"]
    gammas = sorted({r["gamma"] for r in rows})
    x = np.arange(len(gammas))
    fig, axes = new_figure(height=4.8, nrows=2, ncols=2, sharex=True, sharey=True)
    colours = dict(zip([f for f, _ in FAMILIES], PALETTE + ["0.5"]))
    for i, kl in enumerate(("reverse", "forward_max")):
        for j, scale in enumerate(("a_max", "eps")):
            ax = axes[i][j]
            for fam, label in FAMILIES:
                sel = {r["gamma"]: r["share"] for r in rows
                       if _family(r["bound"]) == fam and r["bound"].endswith(f"[{kl},{scale}]")}
                if not sel:
                    continue
                ys = np.array([sel.get(g, np.nan) for g in gammas])
                ax.plot(x, np.where(ys > 0, ys, np.nan), marker="o", markersize=2.5, linewidth=0.9,
                        color=colours[fam], label=label)
            ax.axhline(1.0, color="0.2", linewidth=0.7, linestyle="--")
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 2.0)
            ax.set_title(f"{'TeamTR reverse KL' if kl == 'reverse' else 'SAT forward max KL'}, "
                         f"{'A_max' if scale == 'a_max' else 'Achiam ε'}", fontsize=6)
            ax.set_xticks(x, [f"{g:g}" for g in gammas], fontsize=5, rotation=45)
            if i == 1:
                ax.set_xlabel("γ")
            if j == 0:
                ax.set_ylabel("largest share found")
    handles, labels = {}, {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), fontsize=5.5, loc="lower center", ncol=3, frameon=False)
    fig.subplots_adjust(bottom=0.16)
    return save(fig, out, "bound_tightness_adversary")
