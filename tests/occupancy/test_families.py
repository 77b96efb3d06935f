"""Instance families: API, structure, seeding, sizes and the properties THEORY section 4 needs."""

from __future__ import annotations

import numpy as np
import pytest

from occupancy.exact import evaluate
from occupancy.families import FAMILIES, decode_states, initial_policy, make_family
from occupancy.mdp import TeamMDP


def test_families_tuple():
    assert FAMILIES == ("layered", "board", "vote", "chain", "agree", "crowd")


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("rounds", [1, 3, 0])
def test_structure(name, rounds):
    n = 4
    mdp = make_family(name, n, seed=1, rounds=rounds, gamma=0.9)
    assert isinstance(mdp, TeamMDP)
    assert mdp.n_agents == n and mdp.gamma == 0.9
    assert mdp.info["family"] == name and mdp.info["seed"] == 1 and mdp.info["rounds"] == rounds
    assert isinstance(mdp.info["params"], dict)
    coords = decode_states(mdp)
    nt = ~mdp.terminal
    # agent t acts at turn t; turn is recorded; terminal iff rounds >= 1
    np.testing.assert_array_equal(mdp.router[nt], coords["turn"][nt])
    np.testing.assert_array_equal(mdp.turn, coords["turn"])
    assert mdp.terminal.sum() == (1 if rounds >= 1 else 0)
    # ids round-trip through the layout
    e, c = mdp.info["n_env"], mdp.info["n_context"]
    ids = ((coords["round"] * e + coords["env"]) * n + coords["turn"]) * c + coords["context"]
    np.testing.assert_array_equal(ids[nt], np.flatnonzero(nt))
    # mu: round 0, turn 0
    start = mdp.initial > 0
    assert np.all(coords["turn"][start] == 0) and np.all(coords["round"][start] == 0)
    # every transition goes one turn forward inside a round, or to turn 0 of the next round / terminal
    t_coo = mdp.transitions.tocoo()
    x, y = t_coo.row // mdp.n_actions, t_coo.col
    inside = nt[x] & (coords["turn"][x] < n - 1)
    assert np.all(coords["turn"][y[inside]] == coords["turn"][x[inside]] + 1)
    assert np.all(coords["round"][y[inside]] == coords["round"][x[inside]])
    assert np.all(coords["env"][y[inside]] == coords["env"][x[inside]])
    end = nt[x] & (coords["turn"][x] == n - 1)
    if rounds == 1:
        assert np.all(mdp.terminal[y[end]])
    elif rounds == 0:
        assert np.all(coords["turn"][y[end]] == 0)
    else:
        last = coords["round"][x[end]] == rounds - 1
        assert np.all(mdp.terminal[y[end][last]])
        assert np.all(coords["round"][y[end][~last]] == coords["round"][x[end][~last]] + 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_seeded(name):
    a = make_family(name, 5, seed=3, rounds=2)
    b = make_family(name, 5, seed=3, rounds=2)
    assert (a.transitions != b.transitions).nnz == 0
    np.testing.assert_array_equal(a.rewards, b.rewards)
    if name != "vote":  # the vote family has no random draws
        c = make_family(name, 5, seed=4, rounds=2)
        assert (a.transitions != c.transitions).nnz > 0 or not np.array_equal(a.rewards, c.rewards)


@pytest.mark.parametrize("name", ["board", "vote", "chain"])
@pytest.mark.parametrize("rounds", [1, 3, 0])
def test_n32_is_small(name, rounds):
    mdp = make_family(name, 32, seed=0, rounds=rounds)
    assert mdp.n_states <= 10_000
    ev = evaluate(mdp, initial_policy(mdp, seed=0))
    assert abs(ev.d.sum() - 1) < 1e-9


def test_layered_context_is_bounded():
    mdp = make_family("layered", 32, seed=0, n_context=5, n_env=2)
    assert mdp.n_states == 32 * 5 * 2 + 1


def test_initial_policy():
    mdp = make_family("board", 3, seed=0, rounds=2)
    pi = initial_policy(mdp, seed=1)
    assert pi.shape == (mdp.n_states, mdp.n_actions)
    assert pi.min() > 0
    np.testing.assert_allclose(pi.sum(axis=1), 1.0)
    np.testing.assert_array_equal(pi, initial_policy(mdp, seed=1))
    assert not np.array_equal(pi, initial_policy(mdp, seed=2))
    hot = initial_policy(mdp, seed=1, temperature=100.0)
    assert np.abs(hot - 1 / 3).max() < 0.05
    with pytest.raises(ValueError, match="temperature"):
        initial_policy(mdp, seed=1, temperature=0.0)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("nope", 3), {"seed": 0}, "unknown family"),
        (("board", 0), {"seed": 0}, "n_agents"),
        (("board", 3), {"seed": 0, "rounds": -1}, "rounds"),
        (("board", 3), {"seed": 0, "gamma": 1.0}, "gamma"),
        (("board", 3), {"seed": 0, "colour": 1}, "unknown parameter"),
        (("board", 3), {"seed": 0, "kappa": -1.0}, "'kappa'"),
        (("vote", 3), {"seed": 0, "flip": 0.9}, "'flip'"),
        (("layered", 3), {"seed": 0, "n_context": 0}, "'n_context'"),
        (("chain", 3), {"seed": 0, "n_actions": 1}, "'n_actions'"),
    ],
)
def test_bad_parameters(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_family(*args, **kwargs)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_board_does_not_saturate(n):
    """Everyone always proposes (and revises a wrong board): P(correct board) stays bounded away from
    1 as N grows, P(board non-empty) <= 1 - (1 - kappa/N)^N ~ 1 - 1/e."""
    kappa = 1.0
    mdp = make_family("board", n, seed=0, rounds=1, gamma=0.5, kappa=kappa)
    coords = decode_states(mdp)
    pi = np.zeros((mdp.n_states, 3))
    ctx = coords["context"]
    pi[ctx == 0, 1] = 1.0  # propose on an empty board
    pi[ctx == 1, 2] = 1.0  # revise a wrong answer
    pi[ctx == 2, 0] = 1.0  # keep a correct one
    pi[mdp.terminal] = 1 / 3
    ev = evaluate(mdp, pi)
    p_correct = ev.J / mdp.gamma ** (n - 1)  # reward 1 for a correct final board, paid at turn N-1
    # P(empty at the end) = (1 - kappa/N)^N exactly under this policy
    last = ~mdp.terminal & (coords["turn"] == n - 1)
    p_last = ev.d / ((1 - mdp.gamma) * mdp.gamma ** (n - 1))
    p_empty_before_last = p_last[last & (ctx == 0)].sum()
    p_empty_end = p_empty_before_last * (1 - min(1.0, kappa / n))
    assert abs(p_empty_end - (1 - min(1.0, kappa / n)) ** n) < 1e-10
    assert p_correct < 1 - (1 - min(1.0, kappa / n)) ** n + 1e-12
    assert p_correct < 0.7


def test_board_advantage_depends_on_the_board():
    """Proposing is good on an empty board and revising is bad on a correct one: the coherent
    occupancy shift x advantage correlation of THEORY section 4."""
    mdp = make_family("board", 6, seed=0, rounds=1, gamma=0.99)
    pi = np.full((mdp.n_states, 3), 1 / 3)
    ev = evaluate(mdp, pi)
    coords = decode_states(mdp)
    mid = ~mdp.terminal & (coords["turn"] == 2)
    ctx = coords["context"]
    assert np.all(ev.A[mid & (ctx == 0), 1] > 0)  # propose on empty
    assert np.all(ev.A[mid & (ctx == 2), 2] < 0)  # revise on correct
    assert np.all(ev.A[mid & (ctx == 1), 2] > 0)  # revise on wrong


def test_vote_best_action_depends_on_count():
    n = 8
    mdp = make_family("vote", n, seed=0, rounds=1, gamma=0.99)
    ev = evaluate(mdp, np.full((mdp.n_states, 2), 0.5))
    coords = decode_states(mdp)
    t = 4
    at_t = ~mdp.terminal & (coords["turn"] == t) & (coords["context"] <= t)
    adv_yes = ev.A[at_t, 1]
    assert adv_yes.max() > 0 > adv_yes.min()  # pivotal counts favour yes, decided ones favour no


def test_chain_rewards_depend_on_adjacent_pair_only():
    mdp = make_family("chain", 5, seed=0, rounds=1)
    coords = decode_states(mdp)
    # context = previous agent's recorded action; next context is the own action (up to noise)
    t_dense = mdp.dense_transitions()
    for x in np.flatnonzero(~mdp.terminal & (coords["turn"] < 4)):
        for a in range(mdp.n_actions):
            ys = np.flatnonzero(t_dense[x, a] > 0)
            assert np.argmax(t_dense[x, a]) in ys
            assert coords["context"][np.argmax(t_dense[x, a])] == a


def _stale_penalty_exponent(scale: str, ns=(4, 8, 16)) -> float:
    """Fitted exponent of the stale-occupancy stage penalty in N when every agent takes a small
    step of fixed per-state size along the stage-start advantage (evaluated exactly)."""
    from occupancy.exact import evaluate_stage

    pens = []
    for n in ns:
        mdp = make_family("agree", n, seed=0, rounds=1, gamma=0.99, scale=scale)
        pi0 = np.full((mdp.n_states, 2), 0.5)
        adv = evaluate(mdp, pi0).A
        size = np.abs(adv).max(axis=1, keepdims=True)
        step = np.where(size > 1e-12, adv / np.where(size > 0, size, 1.0), 0.0)
        pi1 = pi0 * np.exp(0.02 * step)
        pi1 /= pi1.sum(axis=1, keepdims=True)
        stage = evaluate_stage(mdp, pi0, list(range(n)), [pi1] * n)
        pens.append(stage.penalty("stale_occ"))
        assert stage.penalty("seq") < 1e-12  # one round: the intermediate surrogate is exact
    return float(np.polyfit(np.log(ns), np.log(pens), 1)[0])


def test_agree_stale_penalty_grows_like_pairs():
    """Dense pairwise interactions: N^2 when A_max grows like N, about N at fixed A_max."""
    assert 1.7 < _stale_penalty_exponent("pair") < 2.5
    assert 0.7 < _stale_penalty_exponent("agent") < 1.5


def test_variant_agree_pair_is_agree_with_pair_scale():
    from occupancy.families import FAMILY_NAMES, VARIANTS

    assert "agree_pair" in FAMILY_NAMES and VARIANTS["agree_pair"] == ("agree", {"scale": "pair"})
    a = make_family("agree_pair", 4, seed=2, rounds=2)
    b = make_family("agree", 4, seed=2, rounds=2, scale="pair")
    assert (a.transitions != b.transitions).nnz == 0
    np.testing.assert_array_equal(a.rewards, b.rewards)
    assert a.info["family"] == "agree_pair" and a.info["variant_of"] == "agree" and a.name.startswith("agree_pair-")
    assert not np.array_equal(a.rewards, make_family("agree", 4, seed=2, rounds=2).rewards)


def test_crowd_rewards_and_layout():
    """crowd: yes pays b_t + kappa z_t(c) with b_t in the bonus band; the count moves by the action."""
    n = 4
    mdp = make_family("crowd", n, seed=0, rounds=1, kappa=0.0)
    coords = decode_states(mdp)
    assert mdp.n_states == n * (n + 1) + 1 and mdp.info["n_env"] == 1
    nt = ~mdp.terminal
    assert np.all(mdp.rewards[nt, 0] == 0)
    b = mdp.rewards[nt, 1]
    assert np.all((0.25 <= b) & (b <= 0.75))
    t_dense = mdp.dense_transitions()
    for x in np.flatnonzero(nt & (coords["turn"] < n - 1)):
        for a in (0, 1):
            y = int(np.argmax(t_dense[x, a]))
            assert coords["context"][y] == min(coords["context"][x] + a, n)
    with pytest.raises(ValueError, match="'kappa'"):
        make_family("crowd", 3, seed=0, kappa=-1.0)
