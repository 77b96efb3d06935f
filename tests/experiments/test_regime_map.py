"""experiments.regime_map: the prefix-reuse formula, the exact quantities every family gives the
study, order invariance of the stale runs it reuses, the cell aggregation, and --quick end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import common
from experiments import regime_map as rm
from experiments import tabular_training as tt


def test_prefix_reuse_fraction_formula():
    for n in (2, 3, 4, 8, 16):
        rev = list(range(n - 1, -1, -1))
        assert rm.prefix_reuse_fraction(rev, 1) == pytest.approx((n + 1) / (2 * n))
        assert rm.prefix_reuse_fraction(rev, 2) == pytest.approx((3 * n + 1) / (4 * n))
        # upstream first: the agent changed last sits early, almost everything is regenerated
        fwd = rm.prefix_reuse_fraction(list(range(n)), 1)
        assert fwd == pytest.approx((n + (n - 1) * (n + 2) / 2) / n**2)
        assert fwd >= rm.prefix_reuse_fraction(rev, 1)
    assert rm.prefix_reuse_fraction([0, 1], 1) == 1.0  # N = 2 forward: nothing kept


def test_significance():
    assert rm.significance(0.1, 0.2) == 1 and rm.significance(-0.2, -0.1) == -1
    assert rm.significance(-0.1, 0.1) == 0 and rm.significance(math.nan, 1.0) == 0


def test_seeds_per_cell_follow_the_cost_cuts():
    cfg = rm.RegimeConfig()
    assert cfg.seeds_for(8, "stale", 0.5, 1, "reversed") == cfg.seeds  # key cells: every delta
    assert cfg.seeds_for(16, "intermediate", 0.01, 1, "reversed") == cfg.large_n_seeds
    assert cfg.seeds_for(8, "intermediate", 0.1, 1, "fixed") == cfg.other_seeds
    assert cfg.seeds_for(8, "intermediate", 0.5, 1, "fixed") == 0  # other_deltas only elsewhere
    assert cfg.seeds_for(16, "intermediate", 0.01, 2, "reversed") == 0  # multi_round_max_n
    assert cfg.seeds_for(8, "stale_is", 0.1, 1, "reversed") == cfg.extra_seeds
    assert cfg.seeds_for(16, "stale_is", 0.1, 1, "reversed") == 0  # extra_max_n
    assert cfg.seeds_for(4, "intermediate_prefix", 0.01, 2, "fixed") == cfg.prefix_seeds
    assert cfg.seeds_for(4, "no_tr", 0.01, 2, "fixed") == 0
    with pytest.raises(ValueError, match="other_deltas"):
        rm.RegimeConfig(other_deltas=(0.3,))
    # stale / joint run in the key order only; every job is one the grid asks for
    jobs = rm.jobs_for(cfg)
    assert not [j for j in jobs if j[3] in rm.ORDER_INVARIANT_MODES and j[0].order != "reversed"]
    assert all(j[4] < cfg.seeds_for(j[2], j[3], j[0].delta, j[0].rounds, j[0].order) for j in jobs)


def _tiny(order: str = "reversed", rounds: int = 2, **kw) -> tt.StudyConfig:
    base = dict(families=rm.RegimeConfig().families, n_agents=(3,), modes=rm.CORE_MODES, stages=1, prompts=4,
                group_size=2, rounds=rounds, order=order, monitor="exact", workers=1)
    base.update(kw)
    return tt.StudyConfig(**base)


@pytest.mark.parametrize("family", rm.RegimeConfig().families)
def test_every_family_gives_the_exact_quantities_the_study_reads(family):
    cfg = _tiny()
    recs = {m: tt.run_one((cfg, family, 3, m, 0)) for m in ("stale", "token_matched")}
    for mode, r in recs.items():
        assert r["monitor"] == "exact" and r["order"] == "reversed" and r["delta"] == cfg.delta
        assert len(r["J"]) == 2 and all(np.isfinite(r["J"]))
        for key in tt.STAGE_PENALTY_KEYS:
            assert len(r["stages"][key]) == 1 and np.isfinite(r["stages"][key][0]), (mode, key)
            if key != "gap_stale_batch":
                assert r["stages"][key][0] >= 0.0
        u = r["updates"]
        assert len(u["kl_exact"]) == 3 and min(u["kl_exact"]) >= 0.0 and np.all(np.isfinite(u["improvement"]))
        # sequential updates telescope to the stage change
        assert sum(u["improvement"]) == pytest.approx(r["J"][1] - r["J"][0], abs=1e-12)
    # token-matched generates the stale budget (fixed-length episodes: exactly), with N fresh batches
    assert recs["token_matched"]["stages"]["tokens"] == recs["stale"]["stages"]["tokens"]
    assert recs["token_matched"]["stages"]["sample_calls"] == [3] and recs["stale"]["stages"]["sample_calls"] == [1]


def test_stale_runs_do_not_depend_on_the_order():
    """What RegimeConfig.reuse_order_invariant relies on: stale and joint runs are identical in every order."""
    for mode in rm.ORDER_INVARIANT_MODES:
        a = tt.run_one((_tiny("fixed", stages=2, families=("crowd",)), "crowd", 3, mode, 1))
        b = tt.run_one((_tiny("reversed", stages=2, families=("crowd",)), "crowd", 3, mode, 1))
        assert a["J"] == b["J"]
        for key in ("tokens",) + tuple(k for k in tt.STAGE_PENALTY_KEYS if k not in rm.ORDER_DEPENDENT_PENALTIES):
            np.testing.assert_allclose(a["stages"][key], b["stages"][key], rtol=1e-10, atol=1e-15)
    # while the intermediate mode does depend on it (the test can fail)
    a = tt.run_one((_tiny("fixed", stages=2, families=("crowd",)), "crowd", 3, "intermediate", 1))
    b = tt.run_one((_tiny("reversed", stages=2, families=("crowd",)), "crowd", 3, "intermediate", 1))
    assert a["J"] != b["J"]


def _record(mode: str, seed: int, J: list[float], tokens: float, pen: float) -> dict:
    stages = {"tokens": [tokens] * (len(J) - 1)}
    stages.update({k: [pen] * (len(J) - 1) for k in tt.STAGE_PENALTY_KEYS})
    return {"family": "agree", "N": 2, "delta": 0.1, "rounds": 1, "order": "reversed", "mode": mode, "seed": seed,
            "monitor": "exact", "J": J, "stages": stages,
            "updates": {"kl_exact": [0.01, 0.02], "n_rejected": [0, 1]}}


def test_summarize_pairs_by_seed_and_reads_equal_tokens():
    cfg = rm.RegimeConfig(families=("agree",), n_agents=(2,), deltas=(0.1,), rounds=(1,), orders=("reversed",),
                          other_deltas=None)
    recs = []
    for s in range(4):
        base = 0.1 * s  # seed effect, removed by pairing
        recs.append(_record("stale", s, [base, base + 1.0], 100.0, 0.02))
        recs.append(_record("intermediate", s, [base, base + 1.5 + 0.01 * s], 200.0, 0.01))
        recs.append(_record("token_matched", s, [base, base + 0.9 - 0.01 * s], 100.0, 0.01))
    rows, cells = rm.summarize(recs, cfg, {})
    assert len(rows) == 3 and len(cells) == 1
    c = cells[0]
    assert c["d_intermediate_mean"] == pytest.approx(0.5 + 0.015) and c["d_intermediate_sig"] == 1
    assert c["d_token_matched_mean"] == pytest.approx(-0.1 - 0.015) and c["d_token_matched_sig"] == -1
    # at the stale budget (100 actions) intermediate is half-way through its stage: J0 + 0.75 + ...
    assert c["d_intermediate_tokens_mean"] == pytest.approx(np.mean([0.75 + 0.005 * s - 1.0 for s in range(4)]))
    assert c["penalty_stale"] == pytest.approx(0.02) and c["penalty_stale_rel"] == pytest.approx(0.02 / 1.0)
    assert c["d_intermediate_rel"] == pytest.approx(0.515)


def test_quick_writes_every_output_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path)
    assert rm.main(["--quick", "--workers", "2"]) == 0
    out = tmp_path / "regime_map_quick"
    names = ("runs.jsonl", "summary.csv", "summary.json", "cells.csv", "cells.json", "correlation.json",
             "prefix_cost.csv", "tables.md", "config.json", "seeds.json")
    for name in names:
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    cfg = rm.RegimeConfig(**rm.QUICK)
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(records) == len(rm.jobs_for(cfg))
    cells = common.read_json(out / "cells.json")["cells"]
    assert len(cells) == len(cfg.families) * len(cfg.n_agents) * len(cfg.deltas) * len(cfg.rounds) * len(cfg.orders)
    assert {c["monitor"] for c in cells} == {"exact"}
    for row in common.read_csv(out / "prefix_cost.csv"):  # measured prefix-reuse cost = the formula
        assert float(row["ratio"]) == pytest.approx(float(row["formula"]), rel=1e-9)
    assert "Spearman" in capsys.readouterr().out
    # resume: nothing is rerun
    assert rm.main(["--quick", "--workers", "2"]) == 0
    assert "0 runs in" in capsys.readouterr().out
    # the figures draw from these results
    from paper_figures import load_all

    figs = load_all()
    for name in ("regime_map", "regime_map_token_matched", "regime_penalty_scatter"):
        fig = figs[name]
        paths = fig.fn(tmp_path, tmp_path / "figures")
        assert paths and all(p.exists() and p.stat().st_size > 1000 for p in paths), name
