"""Objective: ratio definitions, gradient direction, clipping behaviour, KL penalty."""

from __future__ import annotations

import math

import pytest
import torch


from trust_region.objective import (
    clipped_message_objective,
    clipped_token_objective,
    message_ratio,
    surrogate_loss,
)

EPS = 0.2


def _grad(logp_new: torch.Tensor, logp_cur: torch.Tensor, mask, adv, **kw) -> torch.Tensor:
    x = logp_new.clone().requires_grad_(True)
    terms = surrogate_loss(x, logp_cur, mask, adv, clip_eps=EPS, beta=kw.pop("beta", 0.0), **kw)
    terms.loss.backward()
    return x.grad


def test_message_ratio_is_product_of_token_ratios_with_mask():
    logp_cur = torch.tensor([[-1.0, -2.0, -3.0]])
    logp_new = torch.tensor([[-0.9, -2.3, 5.0]])  # last token is padding
    mask = torch.tensor([[True, True, False]])
    w = message_ratio(logp_new, logp_cur, mask)
    expected = math.exp(0.1) * math.exp(-0.3)
    assert float(w) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("level", ["message", "token"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradient_direction_at_ratio_one(level, sign):
    logp = torch.tensor([[-1.0, -0.5], [-2.0, -0.7]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([sign, 0.0])
    g = _grad(logp, logp, mask, adv, ratio_level=level)
    # minimising the loss raises log-probs of the tokens of a positive-advantage message, lowers them
    # for a negative one, and leaves zero-advantage messages and padding alone
    assert bool((torch.sign(-g[0]) == sign).all())
    assert torch.equal(g[1], torch.zeros(2))


def test_message_clipping_stops_gradient_beyond_the_clip():
    mask = torch.ones(1, 2, dtype=torch.bool)
    cur = torch.tensor([[-1.0, -1.0]])
    up = cur + torch.tensor([[0.15, 0.15]])  # u = 0.3 > log 1.2
    down = cur - torch.tensor([[0.15, 0.15]])  # u = -0.3 < log 0.8
    pos, neg = torch.tensor([1.0]), torch.tensor([-1.0])
    # positive advantage: no gradient once the ratio is above 1 + eps, full gradient below 1 - eps
    assert torch.equal(_grad(up, cur, mask, pos), torch.zeros(1, 2))
    assert bool((_grad(down, cur, mask, pos) < 0).all())
    # negative advantage: mirror image
    assert torch.equal(_grad(down, cur, mask, neg), torch.zeros(1, 2))
    assert bool((_grad(up, cur, mask, neg) > 0).all())
    obj, clipped = clipped_message_objective(up, cur, mask, pos, EPS)
    assert float(obj) == pytest.approx(1.0 + EPS, rel=1e-6)
    assert bool(clipped.all())


def test_message_clip_uses_the_whole_message_not_each_token():
    # each token ratio exp(0.15) < 1.2, but the message ratio exp(0.3) > 1.2: clipped at message level
    mask = torch.ones(1, 2, dtype=torch.bool)
    cur = torch.tensor([[-1.0, -1.0]])
    up = cur + 0.15
    pos = torch.tensor([1.0])
    assert torch.equal(_grad(up, cur, mask, pos, ratio_level="message"), torch.zeros(1, 2))
    assert bool((_grad(up, cur, mask, pos, ratio_level="token") < 0).all())
    obj, clipped = clipped_token_objective(up, cur, mask, pos, EPS)
    assert not bool(clipped.any())
    assert obj.tolist()[0] == pytest.approx([math.exp(0.15)] * 2, rel=1e-6)


def test_weights_scale_objective_and_gradient():
    mask = torch.ones(2, 1, dtype=torch.bool)
    cur = torch.tensor([[-1.0], [-1.0]])
    adv = torch.tensor([1.0, 1.0])
    g1 = _grad(cur, cur, mask, adv)
    g2 = _grad(cur, cur, mask, adv, weights=torch.tensor([0.5, 2.0]))
    assert g2[:, 0].tolist() == pytest.approx([0.5 * g1[0, 0].item(), 2.0 * g1[1, 0].item()])


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_penalty_pulls_back_toward_pi_cur(direction, est):
    mask = torch.ones(1, 1, dtype=torch.bool)
    cur = torch.tensor([[-1.0]])
    zero = torch.tensor([0.0])
    for delta in (0.3, -0.3):
        g = _grad(cur + delta, cur, mask, zero, beta=1.0, kl_estimator=est, kl_direction=direction)
        if est == "k1":
            # single-sample k1 is no restoring force (a known property): d/dl of -l is -1 (reverse),
            # d/dl of r l is r (1 + l) (forward)
            expected = -1.0 if direction == "reverse" else math.exp(delta) * (1 + delta)
            assert float(g) == pytest.approx(expected, rel=1e-6)
        else:
            assert math.copysign(1.0, float(g)) == math.copysign(1.0, delta)


def test_loss_reports_terms():
    mask = torch.ones(2, 2, dtype=torch.bool)
    cur = torch.full((2, 2), -1.0)
    new = cur.clone()
    new[0] += 0.2  # u = 0.4: clipped
    t = surrogate_loss(new, cur, mask, torch.tensor([1.0, -1.0]), clip_eps=EPS, beta=0.5)
    assert t.clip_fraction == pytest.approx(0.5)
    assert t.surrogate == pytest.approx((1.2 + -1.0) / 2, rel=1e-6)
    k3 = (math.exp(0.2) - 1 - 0.2) * 2
    assert t.kl_penalty == pytest.approx(k3 / 2, rel=1e-5)
    assert float(t.loss) == pytest.approx(-t.surrogate + 0.5 * t.kl_penalty, rel=1e-6)
