"""The team as a PettingZoo AEC environment."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo.test import api_test

from occupancy.env import TeamAECEnv
from occupancy.exact import evaluate
from occupancy.families import FAMILIES, initial_policy, make_family
from occupancy.mdp import TeamMDP


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("rounds", [1, 2, 0])
def test_api(name, rounds):
    env = TeamAECEnv(make_family(name, 3, seed=0, rounds=rounds, gamma=0.8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "observation is all zeros" when the state id is 0
        api_test(env, num_cycles=100, verbose_progress=False)


def test_api_random_team_mdp():
    rng = np.random.default_rng(0)
    s, a = 5, 2
    t = rng.dirichlet(np.ones(s), size=(s, a))
    t[4] = 0.0
    t[4, :, 4] = 1.0
    router = np.array([1, 0, 1, 0, -1])
    terminal = np.array([False] * 4 + [True])
    rewards = rng.normal(size=(s, a))
    rewards[4] = 0
    mdp = TeamMDP(t, rewards, router, np.array([0.5, 0.5, 0, 0, 0]), 0.9, terminal=terminal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api_test(TeamAECEnv(mdp), num_cycles=100, verbose_progress=False)


def test_spaces_and_turn_order():
    mdp = make_family("board", 4, seed=0, rounds=1)
    env = TeamAECEnv(mdp)
    assert env.possible_agents == [f"agent_{j}" for j in range(4)]
    assert env.observation_space("agent_0") == spaces.Discrete(mdp.n_states)
    assert env.action_space("agent_3") == spaces.Discrete(3)
    env.reset(seed=0)
    seen = []
    for agent in env.agent_iter():
        obs, reward, term, trunc, info = env.last()
        if term or trunc:
            env.step(None)
            continue
        assert int(obs) == info["state"] and mdp.router[int(obs)] == int(agent.split("_")[1])
        seen.append(agent)
        env.step(1)
    assert seen == ["agent_0", "agent_1", "agent_2", "agent_3"]  # one round: each agent once, in turn


def test_returns_match_exact_J():
    """Monte-Carlo discounted team return through the env equals the exact J (4 SE)."""
    mdp = make_family("vote", 3, seed=0, rounds=2, gamma=0.9)
    pi = initial_policy(mdp, seed=1)
    env = TeamAECEnv(mdp)
    rng = np.random.default_rng(0)
    returns = []
    for ep in range(3000):
        env.reset(seed=ep)
        g, t = 0.0, 0
        for agent in env.agent_iter():
            obs, _, term, trunc, _ = env.last()
            if term or trunc:
                env.step(None)
                continue
            x = int(obs)
            a = int(rng.choice(mdp.n_actions, p=pi[x]))
            env.step(a)
            g += mdp.gamma**t * env.rewards[agent]
            t += 1
        returns.append(g)
    returns = np.array(returns)
    exact = evaluate(mdp, pi).J
    assert abs(returns.mean() - exact) <= 4 * returns.std(ddof=1) / np.sqrt(returns.size)


def test_truncation_and_bad_action():
    mdp = make_family("chain", 2, seed=0, rounds=0, gamma=0.9)
    env = TeamAECEnv(mdp, max_steps=5)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be an int"):
        env.step(7)
    steps = 0
    for agent in env.agent_iter():
        _, _, term, trunc, _ = env.last()
        if term or trunc:
            assert trunc and not term
            env.step(None)
            continue
        env.step(0)
        steps += 1
    assert steps == 5
