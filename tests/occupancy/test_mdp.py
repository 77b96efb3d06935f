"""TeamMDP rejects bad input with a ValueError that names the problem."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from occupancy.exact import evaluate
from occupancy.mdp import TeamMDP


def parts(s: int = 3, a: int = 2):
    rng = np.random.default_rng(0)
    return {
        "transitions": rng.dirichlet(np.ones(s), size=(s, a)),
        "rewards": rng.normal(size=(s, a)),
        "router": np.array([0, 1, 0][:s]),
        "initial": np.full(s, 1.0 / s),
        "gamma": 0.9,
    }


def test_valid_instance_builds():
    mdp = TeamMDP(**parts())
    assert (mdp.n_states, mdp.n_actions, mdp.n_agents) == (3, 2, 2)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("transitions", np.ones((3, 2, 4)) / 4, r"transitions must have shape \(S, A, S\)"),
        ("transitions", sp.csr_matrix(np.ones((6, 4)) / 4), r"sparse transitions must have shape \(S\*A, S\)"),
        ("rewards", np.zeros(3), r"rewards must have shape \(S, A\)"),
        ("router", np.array([0, 1]), r"router must have shape"),
        ("initial", np.full(4, 0.25), r"initial distribution must have shape"),
    ],
)
def test_wrong_shape(field, value, match):
    kw = parts()
    kw[field] = value
    with pytest.raises(ValueError, match=match):
        TeamMDP(**kw)


def test_transition_row_not_a_distribution():
    kw = parts()
    kw["transitions"] = kw["transitions"].copy()
    kw["transitions"][1, 0] *= 0.5
    with pytest.raises(ValueError, match=r"transition row \(state 1, action 0\) is not a distribution"):
        TeamMDP(**kw)


def test_negative_transition_probability():
    kw = parts()
    t = np.zeros((3, 2, 3))
    t[:, :, 0] = 1.5
    t[:, :, 1] = -0.5
    kw["transitions"] = t
    with pytest.raises(ValueError, match="non-negative"):
        TeamMDP(**kw)


def test_initial_not_a_distribution():
    kw = parts()
    kw["initial"] = np.array([0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="initial distribution must be non-negative and sum to 1"):
        TeamMDP(**kw)


def test_state_without_owner():
    kw = parts()
    kw["router"] = np.array([0, -1, 1])
    with pytest.raises(ValueError, match="state 1 has no owner"):
        TeamMDP(**kw)


def test_router_beyond_n_agents():
    kw = parts()
    with pytest.raises(ValueError, match="state 1 has no owner"):
        TeamMDP(**kw, n_agents=1)


@pytest.mark.parametrize("gamma", [1.0, -0.1, 1.5])
def test_gamma_outside_unit_interval(gamma):
    kw = parts()
    kw["gamma"] = gamma
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\)"):
        TeamMDP(**kw)


def test_non_finite_rewards():
    kw = parts()
    kw["rewards"] = kw["rewards"].copy()
    kw["rewards"][0, 0] = np.nan
    with pytest.raises(ValueError, match="rewards must be finite"):
        TeamMDP(**kw)


def test_terminal_must_be_absorbing_and_ownerless():
    kw = parts()
    kw["terminal"] = np.array([False, False, True])
    with pytest.raises(ValueError, match="terminal states must have router value -1"):
        TeamMDP(**kw)
    kw["router"] = np.array([0, 1, -1])
    kw["rewards"] = kw["rewards"].copy()
    kw["rewards"][2] = 0.0
    with pytest.raises(ValueError, match="terminal states must be absorbing"):
        TeamMDP(**kw)


def test_policy_row_not_a_distribution():
    mdp = TeamMDP(**parts())
    pi = mdp.uniform_policy()
    pi[2] = [0.7, 0.7]
    with pytest.raises(ValueError, match="row 2 is not a distribution"):
        evaluate(mdp, pi)
    with pytest.raises(ValueError, match=r"policy must have shape \(S, A\)"):
        evaluate(mdp, np.full((3, 3), 1 / 3))
