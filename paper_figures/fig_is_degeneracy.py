"""Importance-weight degeneration (TeamTR Table 10's counterpart) from results/is_degeneracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.common import read_json
from paper_figures import figure
from paper_figures.style import FULL_WIDTH, PALETTE, new_figure, save

NEEDS = ["is_degeneracy/summary.json"]
COMMAND = "python -m experiments.is_degeneracy"


@figure("is_degeneracy", needs=NEEDS, command=COMMAND)
def is_degeneracy(results: Path, out: Path) -> list[Path]:
    """ESS/B and P99 of the trajectory weights against the update step i, per team size N
    (averaged over families and seeds), for HAPPO's untruncated product (solid) and SAT's
    truncated min(1, rho) (dashed), one column per radius delta."""
    rows = read_json(results / "is_degeneracy/summary.json")["rows"]
    deltas = sorted(set(r["delta"] for r in rows))
    ns = sorted(set(r["N"] for r in rows))
    fig, axes = new_figure(FULL_WIDTH if len(deltas) > 1 else 3.4, 3.6, 2, len(deltas), squeeze=False, sharex=True)
    for col, delta in enumerate(deltas):
        ax_e, ax_q = axes[0, col], axes[1, col]
        for n, colour in zip(ns, PALETTE):
            for mode, style in (("stale_happo", "-"), ("stale_is", "--")):
                sel = [r for r in rows if r["delta"] == delta and r["N"] == n and r["mode"] == mode]
                steps = sorted(set(r["step"] for r in sel))
                ess = [np.mean([r["ess_frac_mean"] for r in sel if r["step"] == s]) for s in steps]
                p99 = [np.mean([r["p99_mean"] for r in sel if r["step"] == s]) for s in steps]
                wmax = [np.mean([r["max_mean"] for r in sel if r["step"] == s]) for s in steps]
                label = f"N={n}" if mode == "stale_happo" else None
                ax_e.plot(steps, ess, style, marker="o", color=colour, label=label)
                if mode == "stale_happo":
                    ax_q.plot(steps, p99, style, marker="o", color=colour)
                    ax_q.plot(steps, wmax, ":", color=colour, linewidth=0.9)
        ax_e.set_title(f"per-agent KL δ = {delta:g}")
        ax_e.set_ylabel("ESS / B")
        ax_e.set_ylim(0, 1.02)
        import matplotlib.ticker as mticker

        ax_q.set_ylabel("HAPPO weight: P99 (—), max (⋯)")
        ax_q.set_yscale("log")
        ax_q.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 3.0)))
        ax_q.yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
        ax_q.yaxis.set_minor_formatter(mticker.NullFormatter())
        ax_q.set_xlabel("update step i")
    axes[0, 0].plot([], [], "k-", label="HAPPO ρ")
    axes[0, 0].plot([], [], "k--", label="SAT min(1, ρ)")
    axes[0, 0].legend(loc="lower left", fontsize=5.5, ncol=2)
    fig.suptitle("Importance weights on the stage-start batch at update i (i − 1 agents already updated; "
                 "mean over families and seeds)", fontsize=8)
    fig.tight_layout()
    return save(fig, out, "is_degeneracy")
