"""Scaling sweep, IS-degeneracy experiment and the shared experiment helpers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import common
from experiments.common import bootstrap_power_fit, loglog_fit, read_csv, write_csv, write_json
from occupancy.exact import evaluate_stage
from occupancy.projection import trust_region_stage


# ---------------------------------------------------------------------------------------------
# common


def test_loglog_fit_recovers_an_exact_power_law() -> None:
    n = np.array([2, 4, 8, 16, 32])
    alpha, intercept, r2 = loglog_fit(n, 3.0 * n**1.7)
    assert alpha == pytest.approx(1.7) and math.exp(intercept) == pytest.approx(3.0) and r2 == pytest.approx(1.0)
    assert math.isnan(loglog_fit([2, 4], [0.0, 1.0])[0])  # < 2 positive points


def test_bootstrap_interval_covers_the_true_exponent_and_excludes_a_wrong_one() -> None:
    rng = np.random.default_rng(0)
    n = np.array([2, 3, 4, 6, 8, 12, 16])
    samples = (n**2.0)[:, None] * rng.lognormal(0.0, 0.3, size=(n.size, 20))
    fit = bootstrap_power_fit(n, samples, n_boot=500, seed=1)
    assert fit.ci_low <= 2.0 <= fit.ci_high
    assert fit.ci_high < 2.3 and fit.ci_low > 1.7
    assert not (fit.ci_low <= 1.0 <= fit.ci_high)
    with pytest.raises(ValueError, match="shape"):
        bootstrap_power_fit(n, samples[:3])


def test_json_csv_roundtrip_and_metadata(tmp_path) -> None:
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        a: int = 1
        b: tuple = (1.0, 2.0)

    write_json(tmp_path / "x.json", {"arr": np.arange(3), "f": np.float64(0.5), "cfg": Cfg()})
    data = json.loads((tmp_path / "x.json").read_text())
    assert data == {"arr": [0, 1, 2], "f": 0.5, "cfg": {"a": 1, "b": [1.0, 2.0]}}
    write_csv(tmp_path / "x.csv", [{"a": 1, "b": 2.5}, {"a": 2, "c": "z"}])
    rows = read_csv(tmp_path / "x.csv")
    assert rows[1] == {"a": "2", "b": "", "c": "z"}
    common.save_run_metadata(tmp_path, Cfg(), [3, 4])
    assert json.loads((tmp_path / "seeds.json").read_text()) == {"seeds": [3, 4]}
    assert json.loads((tmp_path / "config.json").read_text())["config"] == {"a": 1, "b": [1.0, 2.0]}
    with pytest.raises(ValueError):
        common.results_dir("../escape", tmp_path)


# ---------------------------------------------------------------------------------------------
# the sweep


def test_quick_sweep_writes_results(tmp_path, monkeypatch, capsys) -> None:
    from experiments import scaling_sweep

    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path)
    rc = scaling_sweep.main(["--families", "board", "crowd", "--n-agents", "2", "3", "4", "--deltas", "1e-3",
                             "--seeds", "3", "--workers", "1", "--out", "sweep"])
    assert rc == 0
    out = tmp_path / "sweep"
    for name in ("records.csv", "fits.json", "fits.csv", "curves.json", "config.json", "seeds.json"):
        assert (out / name).exists(), name
    fits = json.loads((out / "fits.json").read_text())["fits"]
    assert {f["family"] for f in fits} == {"board", "crowd"}
    crowd = {(f["mode"], f["metric"]): f for f in fits if f["family"] == "crowd"}
    assert crowd[("seq", "penalty")]["exact"]  # one agent's change never moves its own occupancy here
    assert crowd[("stale_occ", "penalty")]["alpha"] > 1.0
    assert "alpha" in capsys.readouterr().out
    with pytest.raises(ValueError, match="families"):
        scaling_sweep.SweepConfig(families=("nope",))
    with pytest.raises(ValueError, match="n_agents"):
        scaling_sweep.SweepConfig(n_agents=(2, 3))


@pytest.mark.parametrize("family", ["layered", "board", "vote", "chain", "crowd"])
def test_one_round_intermediate_is_exact_and_stale_modes_agree(family) -> None:
    """THEORY section 4: in one round (each agent acts once, turn order) an agent's update cannot
    move its own occupancy, so L_seq is exact; and agent i's advantage depends only on downstream
    agents, not yet updated, so stale occupancy = stale batch."""
    from experiments.scaling_sweep import make_instance
    from occupancy import families

    mdp = make_instance(family, 4, seed=3, rounds=1, gamma=0.95)
    pi = families.initial_policy(mdp, 3, 1.0)
    new, _ = trust_region_stage(mdp, pi, range(4), 0.01, weighting="agent")
    stage = evaluate_stage(mdp, pi, range(4), new)
    scale = max(abs(u.improvement) for u in stage.updates)
    for u in stage.updates:
        assert abs(u.gap("seq")) <= 1e-9 * max(scale, 1e-12)
        assert u.L_stale_occ == pytest.approx(u.L_stale_batch, abs=1e-12)
    assert stage.penalty("stale_occ") > 1e-6 * scale


def test_crowd_family_is_valid_and_realises_a_growing_stale_penalty() -> None:
    from occupancy.families import make_family
    from occupancy import families

    pens = []
    for n in (2, 4, 8):
        mdp = make_family("crowd", n, seed=0, rounds=2, gamma=0.99)
        assert mdp.n_states == 2 * n * (n + 1) + 1 and mdp.n_agents == n
        pi = families.initial_policy(mdp, 0, 1.0)
        new, _ = trust_region_stage(mdp, pi, range(n), 1e-3, weighting="agent", method="sparse")
        pens.append(evaluate_stage(mdp, pi, range(n), new).penalty("stale_occ"))
    assert loglog_fit([2, 4, 8], pens)[0] > 1.5


# ---------------------------------------------------------------------------------------------
# IS degeneracy


def test_weight_stats() -> None:
    from experiments.is_degeneracy import weight_stats

    assert weight_stats(np.ones(10))["ess_frac"] == pytest.approx(1.0)
    w = np.array([1.0] * 9 + [100.0])
    st = weight_stats(w)
    assert st["ess_frac"] == pytest.approx(109**2 / (10 * (9 + 1e4)))
    assert st["max"] == 100.0 and st["share_gt10"] == pytest.approx(0.1)


def test_trajectory_weights_match_the_core() -> None:
    """The experiment's weights equal trust_region.stage.trajectory_weights on TabularAgent teams."""
    torch = pytest.importorskip("torch")
    stage_mod = pytest.importorskip("trust_region.stage")
    from experiments.is_degeneracy import trajectory_log_rho
    from occupancy import families
    from occupancy.policy import make_tabular_team
    from occupancy.sampling import TabularSampler

    mdp = families.make_family("board", 3, seed=1, rounds=2, gamma=0.95)
    pi = families.initial_policy(mdp, 1, 1.0)
    new, _ = trust_region_stage(mdp, pi, [0, 1, 2], 0.1, weighting="agent")
    team_new = pi.copy()
    for j in range(3):
        team_new = mdp.replace_agent(team_new, j, new[j])
    sampler = TabularSampler(mdp, seed=0)
    batch = sampler.sample(pi, sampler.draw_prompts(16), 4)
    agents = make_tabular_team(mdp, team_new)
    log_rho_core = stage_mod.updated_agents_log_rho(agents, batch, [0, 1])
    w_core = stage_mod.trajectory_weights(batch, log_rho_core, truncate=False, clip=50.0).numpy()
    log_ratio = np.log(team_new) - np.log(pi)
    lr = trajectory_log_rho(batch.trajectory.numpy(), batch.context[:, 0].numpy(), batch.tokens[:, 0].numpy(),
                            np.asarray(mdp.router), log_ratio, {0, 1}, 64)
    mine = np.exp(lr)[batch.trajectory.numpy()]
    assert np.allclose(mine, w_core, rtol=1e-4)


def test_quick_is_degeneracy_runs(tmp_path, monkeypatch) -> None:
    from experiments import is_degeneracy

    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path)
    rc = is_degeneracy.main(["--families", "board", "--n-agents", "2", "3", "--deltas", "0.1", "--seeds", "2",
                             "--prompts", "16", "--group-size", "4", "--workers", "1", "--out", "isd"])
    assert rc == 0
    rows = json.loads((tmp_path / "isd" / "summary.json").read_text())["rows"]
    happo = {(r["N"], r["step"]): r for r in rows if r["mode"] == "stale_happo"}
    sat = {(r["N"], r["step"]): r for r in rows if r["mode"] == "stale_is"}
    assert happo[(3, 1)]["ess_frac_mean"] == pytest.approx(1.0)  # nobody updated yet: all weights 1
    assert happo[(3, 3)]["ess_frac_mean"] < 1.0
    assert all(r["max_mean"] <= 1.0 + 1e-12 for r in sat.values())  # truncated at 1


@pytest.mark.parametrize("family", ["board", "agree", "crowd"])
def test_stage_evaluation_reuse_equals_evaluate_stage(family) -> None:
    from experiments.scaling_sweep import make_instance
    from occupancy import families

    mdp = make_instance(family, 3, seed=2, rounds=2, gamma=0.9)
    pi = families.initial_policy(mdp, 2, 1.0)
    order = [1, 0, 2]
    evals: list = []
    new, _ = trust_region_stage(mdp, pi, order, 0.02, weighting="agent", evaluations=evals)
    assert len(evals) == 3
    ref = evaluate_stage(mdp, pi, order, new)
    got = evaluate_stage(mdp, pi, order, new, evaluations=evals)
    assert got.order == ref.order
    assert got.J_start == pytest.approx(ref.J_start, abs=1e-12) and got.J_end == pytest.approx(ref.J_end, abs=1e-12)
    for a, b in zip(got.updates, ref.updates):
        for name in a.__dataclass_fields__:
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9, abs=1e-12), name
