"""Real-model CPU comparison (results/llm_cpu_demo): learning curves and held-out before/after."""

from __future__ import annotations

from pathlib import Path

from experiments.common import read_csv, read_json
from paper_figures import figure
from paper_figures.style import FULL_WIDTH, PALETTE, new_figure, save

NEEDS = ["llm_cpu_demo/summary.json", "llm_cpu_demo/curves.csv"]
COMMAND = ("python -m experiments.llm_cpu_demo --run teamtr=runs/teamtr --run stale=runs/stale "
           "--run single=runs/single --base-from teamtr")


@figure("llm_cpu_demo", needs=NEEDS, command=COMMAND)
def llm_cpu_demo(results: Path, out: Path) -> list[Path]:
    """Left: mean team reward of the rollout each agent update trained on ("reward before the
    update"), per method, against the update number (updates without a fresh rollout, e.g. the
    later updates of a stale stage, are not drawn). Right: held-out accuracy (200 items, avg@1)
    before and after training with 95% bootstrap intervals over items."""
    summary = read_json(results / "llm_cpu_demo/summary.json")
    curves = read_csv(results / "llm_cpu_demo/curves.csv")
    fig, (left, right) = new_figure(FULL_WIDTH, 2.6, 1, 2)
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(summary)}
    for name in summary:
        rows = [r for r in curves if r["method"] == name and r["reward_before"] not in ("", "None")]
        xs = [int(r["update"]) for r in rows]
        ys = [float(r["reward_before"]) for r in rows]
        left.plot(xs, ys, "o-", color=colours[name], label=name, markersize=3)
    left.xaxis.get_major_locator().set_params(integer=True)
    left.set_xlabel("agent update")
    left.set_ylabel("train reward before the update")
    left.legend(frameon=False)
    names = [n for n in summary if "heldout" in summary[n]]
    for i, name in enumerate(names):
        h = summary[name]["heldout"]
        for k, (when, shift) in enumerate((("before", -0.12), ("after", 0.12))):
            m = h[when]
            right.errorbar([i + shift], [m["value"]], yerr=[[m["value"] - m["low"]], [m["high"] - m["value"]]],
                           fmt="o" if when == "after" else "s", color=colours[name], mfc="white" if k == 0 else None,
                           capsize=2, label=when if i == 0 else None)
    right.set_xticks(range(len(names)), names)
    right.set_xlim(-0.5, len(names) - 0.5)
    right.set_ylabel("held-out accuracy (95% CI)")
    right.legend(frameon=False)
    return save(fig, out, "llm_cpu_demo")
