"""experiments.llm_cpu_demo: curves and the before/after table from run folders (synthetic files)."""

from __future__ import annotations

import json

import pytest

from experiments.llm_cpu_demo import collect, main, read_time_file, table


def _run(tmp_path, name, rewards, before, after):
    run = tmp_path / name
    run.mkdir()
    rows = [{"stage": u // 2, "update": u + 1, "agent": u % 2, "agent_name": f"a{u % 2}", "rollout/mean_score": r,
             "rollout/parsed_rate": 1.0, "rollout/generated_tokens": 100, f"agent{u % 2}/kl": 0.01,
             f"agent{u % 2}/n_steps": 4, f"agent{u % 2}/n_rejected": 0} for u, r in enumerate(rewards)]
    rows.append({"stage": 0, "update": 2, "time": 0.0})  # a stage line is skipped
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for tag, scores in (("base", before), ("latest", after)):
        if scores is None:
            continue
        d = run / "eval" / tag / "traces" / "task"
        d.mkdir(parents=True)
        (d / "chain.jsonl").write_text("".join(
            json.dumps({"problem_id": f"p{i}", "samples": [{"score": s, "parsed": True}]}) + "\n"
            for i, s in enumerate(scores)))
    return run


def test_collect_pairs_items_and_borrows_the_base(tmp_path):
    teamtr = _run(tmp_path, "teamtr", [0.2, 0.3, 0.4, 0.5], [0, 1, 0, 0], [1, 1, 1, 0])
    stale = _run(tmp_path, "stale", [0.2, None, 0.3, None], None, [0, 1, 0, 1])
    summary = collect({"teamtr": teamtr, "stale": stale}, base_from="teamtr", logs=None)
    h = summary["methods"]["teamtr"]["heldout"]
    assert h["items"] == 4 and h["before"]["value"] == 0.25 and h["after"]["value"] == 0.75
    assert h["difference"]["value"] == pytest.approx(0.5)
    assert summary["methods"]["stale"]["heldout"]["before"]["value"] == 0.25  # teamtr's base evaluation
    assert summary["methods"]["teamtr"]["train_generated_tokens"] == 400
    assert [c["reward_before"] for c in summary["curves"] if c["method"] == "teamtr"] == [0.2, 0.3, 0.4, 0.5]
    assert table(summary).count("\n") == 3


def test_time_file_and_cli(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "teamtr_train.time").write_text(
        "\tUser time (seconds): 100.5\n\tSystem time (seconds): 9.5\n"
        "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n\tMaximum resident set size (kbytes): 2097152\n")
    t = read_time_file(logs / "teamtr_train.time")
    assert t == {"wall_s": 3723.0, "cpu_s": 110.0, "peak_rss_gb": 2.0}
    run = _run(tmp_path, "teamtr", [0.1, 0.2], [0, 1], [1, 1])
    out = tmp_path / "llm_cpu_demo"
    assert main(["--run", f"teamtr={run}", "--logs", str(logs), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teamtr"]["resources"]["teamtr_train"]["wall_s"] == 3723.0
    assert (out / "curves.csv").is_file() and (out / "table.md").is_file()
    import matplotlib

    matplotlib.use("Agg")
    from paper_figures.fig_llm_cpu_demo import llm_cpu_demo

    paths = llm_cpu_demo(tmp_path, tmp_path / "fig")  # the figure reads <results>/llm_cpu_demo/
    assert paths and all(p.is_file() for p in paths)
