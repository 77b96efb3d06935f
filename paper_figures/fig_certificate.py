"""Certificate calibration in the tabular training study, where the truth is known.

Three panels, pooled over families, team sizes, trust-region modes and seeds:
(a) the sampled per-message KL monitor of every update against the exact KL it estimates;
(b) the logged surrogate L_hat of every update against its exact improvement (rank correlation);
(c) the logged per-stage certificate against the exact stage improvement J(end) - J(start).

Reads results/tabular_training/runs.jsonl (``python -m experiments.tabular_training``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from paper_figures import figure
from paper_figures.style import FULL_WIDTH, PALETTE, new_figure, save

NEEDS = ["tabular_training/runs.jsonl"]
COMMAND = "python -m experiments.tabular_training"
#: modes whose updates are trust-region constrained and logged with a certificate
MODES = ("intermediate", "intermediate_prefix", "stale", "stale_is", "stale_happo", "resample_every_2")


def collect(runs: list[dict]) -> dict[str, np.ndarray]:
    """Flat arrays (one entry per update, or per stage for the ``stage_*`` keys) over the runs."""
    keys = ("kl_exact", "kl_monitor", "surrogate", "improvement")
    out: dict[str, list] = {k: [] for k in keys + ("stage_cert", "stage_gain", "family_index")}
    families = sorted({r["family"] for r in runs})
    for r in runs:
        if r["mode"] not in MODES:
            continue
        for k in keys:
            out[k].extend(r["updates"][k])
        out["family_index"].extend([families.index(r["family"])] * len(r["updates"]["improvement"]))
        j = np.asarray(r["J"], dtype=float)
        out["stage_cert"].extend(r["stages"]["certificate"])
        out["stage_gain"].extend(np.diff(j).tolist())
    arrays = {k: np.asarray(v, dtype=float) for k, v in out.items()}
    arrays["families"] = np.asarray(families)
    return arrays


@figure("certificate_calibration", needs=NEEDS, command=COMMAND)
def certificate_calibration(results: Path, out: Path) -> list[Path]:
    runs = [json.loads(line) for line in (results / NEEDS[0]).read_text().splitlines() if line.strip()]
    d = collect(runs)
    fig, axes = new_figure(width=FULL_WIDTH, height=2.3, ncols=3)

    ax = axes[0]
    for f, fam in enumerate(d["families"]):
        sel = d["family_index"] == f
        ax.scatter(d["kl_exact"][sel], d["kl_monitor"][sel], s=2, alpha=0.3, color=PALETTE[f], label=str(fam), lw=0)
    lim = float(np.nanmax(np.abs(np.concatenate([d["kl_exact"], d["kl_monitor"]]))))
    ax.plot([0, lim], [0, lim], color="k", lw=0.7, ls="--", label="monitor = exact")
    ax.set_xlabel("exact per-message KL (nats)")
    ax.set_ylabel("sampled k1 monitor (nats)")
    ax.set_title("(a) KL monitor")
    ax.legend(markerscale=3, loc="upper left")

    ax = axes[1]
    rho = spearmanr(d["surrogate"], d["improvement"]).statistic
    ax.scatter(d["surrogate"], d["improvement"], s=2, alpha=0.3, color=PALETTE[0], lw=0)
    ax.set_xlabel(r"logged surrogate $\hat L$ (norm. adv. units)")
    ax.set_ylabel(r"exact improvement $\Delta J$")
    ax.set_title("(b) surrogate per update")
    ax.text(0.97, 0.95, f"Spearman {rho:+.2f}", transform=ax.transAxes, ha="right", va="top")

    ax = axes[2]
    rho = spearmanr(d["stage_cert"], d["stage_gain"]).statistic
    viol = float(np.mean(d["stage_cert"] > d["stage_gain"]))
    ax.scatter(d["stage_gain"], d["stage_cert"], s=2, alpha=0.3, color=PALETTE[1], lw=0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(r"exact stage gain $J(\bar\pi)-J(\pi_{cur})$")
    ax.set_ylabel("logged stage certificate")
    ax.set_title("(c) certificate per stage")
    ax.text(0.97, 0.95, f"Spearman {rho:+.2f}\n{100 * viol:.1f}% above truth", transform=ax.transAxes,
            ha="right", va="top")
    fig.tight_layout()
    return save(fig, out, "certificate_calibration")
