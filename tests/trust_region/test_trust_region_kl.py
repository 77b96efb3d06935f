"""KL estimators against closed forms on categorical distributions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch


from trust_region.kl import (
    categorical_forward_kl,
    categorical_reverse_kl,
    forward_kl_tokens,
    kl_statistic,
    kl_tokens,
    message_kl,
    per_message,
    quantile,
    reverse_kl_tokens,
)

D = torch.float64


def _pair(seed: int, a: int = 6, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(spread * torch.randn(a, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(spread * torch.randn(a, generator=g, dtype=torch.float64), 0)
    return p, q


def _support_expectation(p: torch.Tensor, q: torch.Tensor, fn) -> float:
    """E_{x ~ p}[fn(log q(x), log p(x))] computed exactly over the support (one token per row)."""
    lq, lp = q.log()[:, None], p.log()[:, None]
    return float((p * fn(lq, lp)[:, 0]).sum())


def test_closed_forms_match_torch():
    p, q = _pair(0)
    ref = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=p), torch.distributions.Categorical(probs=q))
    assert float(categorical_reverse_kl(p, q)) == pytest.approx(float(ref), rel=1e-12)
    assert float(categorical_forward_kl(p, q)) == pytest.approx(float(categorical_reverse_kl(q, p)), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("est", ["k1", "k3"])
def test_reverse_unbiased_exact_expectation(seed, est):
    p, q = _pair(seed)  # p = pi_cur (sampler), q = pi_new
    got = _support_expectation(p, q, lambda lq, lp: reverse_kl_tokens(lq, lp, est))
    assert got == pytest.approx(float(categorical_reverse_kl(p, q)), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("est", ["k1", "k3"])
def test_forward_unbiased_exact_expectation(seed, est):
    p, q = _pair(seed)
    got = _support_expectation(p, q, lambda lq, lp: forward_kl_tokens(lq, lp, est))
    assert got == pytest.approx(float(categorical_forward_kl(p, q)), rel=1e-10, abs=1e-12)


def test_directions_differ_on_asymmetric_pair():
    p = torch.tensor([0.9, 0.05, 0.05], dtype=D)
    q = torch.tensor([0.4, 0.3, 0.3], dtype=D)
    rev = _support_expectation(p, q, lambda lq, lp: kl_tokens(lq, lp, "k3", "reverse"))
    fwd = _support_expectation(p, q, lambda lq, lp: kl_tokens(lq, lp, "k3", "forward"))
    assert rev == pytest.approx(float(categorical_reverse_kl(p, q)))
    assert fwd == pytest.approx(float(categorical_forward_kl(p, q)))
    assert abs(rev - fwd) > 0.05  # the two directions really are different numbers here


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_k2_second_order_accurate(direction):
    # k2 is biased, but for close distributions its expectation matches KL to second order
    p, q0 = _pair(3)
    for t, tol in ((0.1, 0.05), (0.01, 0.005)):
        q = torch.softmax((1 - t) * p.log() + t * q0.log(), 0)
        exact = float(categorical_reverse_kl(p, q) if direction == "reverse" else categorical_forward_kl(p, q))
        got = _support_expectation(p, q, lambda lq, lp: kl_tokens(lq, lp, "k2", direction))
        assert got == pytest.approx(exact, rel=tol)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_monte_carlo_average(direction):
    p, q = _pair(7)
    g = torch.Generator().manual_seed(1)
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    vals = kl_tokens(q.log()[x][:, None], p.log()[x][:, None], "k3", direction)[:, 0]
    exact = float(categorical_reverse_kl(p, q) if direction == "reverse" else categorical_forward_kl(p, q))
    se = float(vals.std()) / math.sqrt(vals.numel())
    assert abs(float(vals.mean()) - exact) < 4 * se


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("est", ["k2", "k3"])
def test_nonnegative_estimators(direction, est):
    g = torch.Generator().manual_seed(2)
    lq = -3 * torch.rand(1000, 4, generator=g, dtype=D)
    lp = -3 * torch.rand(1000, 4, generator=g, dtype=D)
    assert bool((kl_tokens(lq, lp, est, direction) >= 0).all())


def test_k1_can_be_negative():
    lq = torch.tensor([[-0.1]])
    lp = torch.tensor([[-1.0]])
    assert float(reverse_kl_tokens(lq, lp, "k1")) < 0
    assert float(forward_kl_tokens(lp, lq, "k1")) < 0


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_equal_distributions_give_zero(direction, est):
    lp = torch.log(torch.tensor([[0.2, 0.5], [0.3, 0.1]]))
    assert torch.equal(kl_tokens(lp, lp, est, direction), torch.zeros_like(lp))
    mask = torch.tensor([[True, True], [True, False]])
    assert torch.equal(message_kl(lp, lp, mask, est, direction), torch.zeros(2))


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("est", ["k1", "k3"])
def test_token_decomposition_exact_on_two_token_messages(direction, est):
    # tokens independent given the context: the sequence KL is the sum of per-position KLs and the
    # expected token-summed estimate equals it, in both directions
    p1, q1 = _pair(11, a=3)
    p2, q2 = _pair(12, a=3)
    seqs = list(itertools.product(range(3), range(3)))
    lq = torch.tensor([[q1[a].log(), q2[b].log()] for a, b in seqs], dtype=D)
    lp = torch.tensor([[p1[a].log(), p2[b].log()] for a, b in seqs], dtype=D)
    prob = torch.tensor([float(p1[a] * p2[b]) for a, b in seqs], dtype=D)
    per_msg = message_kl(lq, lp, torch.ones_like(lq, dtype=torch.bool), est, direction)
    got = float((prob * per_msg).sum())
    if direction == "reverse":
        exact = float(categorical_reverse_kl(p1, q1) + categorical_reverse_kl(p2, q2))
    else:
        exact = float(categorical_forward_kl(p1, q1) + categorical_forward_kl(p2, q2))
    assert got == pytest.approx(exact, rel=1e-10)


def test_per_message_sum_and_mean_respect_mask():
    v = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert per_message(v, mask, "sum").tolist() == [3.0, 3.0]
    assert per_message(v, mask, "mean").tolist() == [1.5, 3.0]


def test_statistics_mean_and_quantile():
    vals = torch.arange(100, dtype=torch.float64)  # 0..99
    assert float(kl_statistic(vals, "mean")) == pytest.approx(49.5)
    q = float(kl_statistic(vals, "quantile", 0.9))
    assert q in vals.tolist()
    assert float((vals <= q).to(torch.float64).mean()) >= 0.9
    assert float(quantile(vals, 1.0)) == 99.0
    with pytest.raises(ValueError):
        kl_statistic(vals, "median")  # type: ignore[arg-type]
