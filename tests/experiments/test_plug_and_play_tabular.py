"""Tabular plug-and-play (experiments.plug_and_play_tabular) and extra Stage-0 projection checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments import common
from experiments import plug_and_play_tabular as P
from occupancy.exact import evaluate, kl_rows
from occupancy.families import initial_policy, make_family
from occupancy.projection import geometric_projection


def _policy(rng: np.random.Generator, s: int, a: int, temp: float = 1.0) -> np.ndarray:
    z = rng.normal(size=(s, a)) / temp
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Projection properties the experiment relies on (test_projection.py has the core checks)


def test_projection_lambda_decreases_and_distance_to_pre_shrinks_with_delta0() -> None:
    rng = np.random.default_rng(0)
    pre, cur = _policy(rng, 8, 5, 0.4), _policy(rng, 8, 5, 0.4)
    prev_lam, prev_kl = None, None
    for d0 in (1e-3, 1e-2, 0.1, 0.5):
        res = geometric_projection(pre, cur, d0)
        kl_pre = kl_rows(res.policy, pre)
        if prev_lam is not None:
            assert np.all(res.lam <= prev_lam + 1e-9)  # a larger ball needs less pull towards pi_cur
            assert np.all(kl_pre <= prev_kl + 1e-9)  # and ends closer to pi_pre
        prev_lam, prev_kl = res.lam, kl_pre


def test_projection_is_the_geometric_mixture_with_its_lambda() -> None:
    rng = np.random.default_rng(1)
    pre, cur = _policy(rng, 6, 4, 0.5), _policy(rng, 6, 4, 0.5)
    res = geometric_projection(pre, cur, 0.02)
    for x in range(6):
        lam = res.lam[x]
        w = pre[x] ** (1 / (1 + lam)) * cur[x] ** (lam / (1 + lam))
        np.testing.assert_allclose(res.policy[x], w / w.sum(), rtol=1e-10, atol=1e-14)


def test_projection_zero_radius_gives_the_incumbent() -> None:
    rng = np.random.default_rng(2)
    pre, cur = _policy(rng, 4, 3), _policy(rng, 4, 3)
    res = geometric_projection(pre, cur, 0.0)
    np.testing.assert_allclose(res.policy, cur, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The experiment


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="agent"):
        P.PnPTabularConfig(agent=5)
    with pytest.raises(ValueError, match="deltas0"):
        P.PnPTabularConfig(deltas0=(0.01, -1.0))
    with pytest.raises(ValueError, match="replacements"):
        P.PnPTabularConfig(replacements=("better",))
    with pytest.raises(ValueError, match="trainer"):
        P.PnPTabularConfig(trainer="magic")


def test_near_greedy_replacement_improves_the_team() -> None:
    """Policy improvement on one agent's rows: softmax(A / tau) with tau -> 0 never lowers J."""
    for seed in range(3):
        mdp = make_family("chain", 3, seed=seed, rounds=2, gamma=0.95)
        pi = initial_policy(mdp, seed)
        ev = evaluate(mdp, pi)
        for j in range(3):
            pre = P.stronger_policy(mdp, ev, j, temperature=1e-3)
            assert evaluate(mdp, mdp.replace_agent(pi, j, pre)).J >= ev.J - 1e-9


@pytest.mark.parametrize("trainer", ["exact", "sampled"])
def test_run_seed_swap_numbers(trainer: str) -> None:
    cfg = P.PnPTabularConfig(trainer=trainer, seeds=1, pretrain_stages=2, continue_stages=2, prompts_per_stage=8,
                             group_size=4, deltas0=(0.01, 50.0))
    records, curves, bounds = P.run_seed(cfg, seed=3)
    by = {r["variant"]: r for r in records}
    assert set(by) == {name for name, _, _ in P.variants(cfg)}
    none = by["none"]
    assert none["J_after"] == pytest.approx(none["J_before"], abs=1e-12) and none["swap_kl_forward_max"] == 0.0
    for kind in cfg.replacements:
        direct, tight, loose = by[f"{kind}/direct"], by[f"{kind}/proj0.01"], by[f"{kind}/proj50"]
        assert direct["J_after"] == pytest.approx(direct["J_replacement_alone"], abs=1e-12)
        assert direct["swap_kl_forward_max"] > 0.01  # the replacement starts outside the ball
        # projected: inside the ball, with equality where active (the max over X_j hits delta_0)
        assert tight["swap_kl_forward_max"] == pytest.approx(0.01, rel=1e-6)
        assert tight["active_share"] > 0 and tight["infeasible"] == 0
        # a ball larger than the replacement's distance leaves it unchanged (lambda = 0)
        assert loose["J_after"] == pytest.approx(direct["J_after"], abs=1e-12) and loose["lambda_max"] == 0.0
        # the projection moves J less than the direct swap does (closer to the incumbent)
        assert abs(tight["J_after"] - tight["J_before"]) <= abs(direct["J_after"] - direct["J_before"]) + 1e-12
    assert not any(b["violated"] for b in bounds)
    assert {b["phase"] for b in bounds} == {"swap", "continue"}
    stages = sorted({c["stage"] for c in curves if c["variant"] == "none"})
    assert stages == list(range(-2, 3))


def test_main_writes_results_and_the_figure(tmp_path, monkeypatch, capsys) -> None:
    from paper_figures.__main__ import main as figures_main

    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path)
    assert P.main(["--quick", "--trainer", "exact", "--out", "plug_and_play_tabular", "--seeds", "2",
                   "--replacements", "stronger", "random"]) == 0
    out = tmp_path / "plug_and_play_tabular"
    for name in ("records.csv", "curves.csv", "bounds.csv", "summary.json", "config.json", "seeds.json"):
        assert (out / name).exists(), name
    summary = common.read_json(out / "summary.json")
    assert summary["bound_violations"] == 0 and summary["bounds_checked"] > 0
    stronger = summary["variants"]["stronger/proj0.01"]
    assert stronger["swap_kl_forward_max"]["mean"] <= 0.01 * (1 + 1e-8)
    assert math.isfinite(stronger["J_end"]["mean"])
    capsys.readouterr()
    assert figures_main(["--results", str(tmp_path), "--only", "plug_and_play"]) == 0
    assert "[drawn]   plug_and_play" in capsys.readouterr().out
    assert (tmp_path / "figures" / "plug_and_play.png").stat().st_size > 1000
