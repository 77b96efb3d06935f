"""avg@K, unbiased pass@k (against brute-force enumeration), maj@K and bootstrap intervals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.evaluate.metrics import (
    SampleResult,
    bootstrap_interval,
    majority_answer,
    pass_at_k,
    pass_at_k_exact,
    summarize,
)


def brute_force_pass_at_k(correct: list[bool], k: int) -> float:
    """Fraction of all k-subsets of the samples that contain at least one correct sample."""
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration(n: int) -> None:
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            expected = brute_force_pass_at_k(correct, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
            assert pass_at_k_exact(n, c, k) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_stable_product_matches_exact_binomials(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_exact(n, c, k), abs=1e-9)


def test_pass_at_k_special_cases() -> None:
    assert pass_at_k(64, 0, 64) == 0.0
    assert pass_at_k(64, 1, 64) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_answer() -> None:
    assert majority_answer(["3", "5", "5", None, "3", "5"]) == 1
    assert majority_answer(["3", "5", "5", "3"]) == 0  # tie: first appearance
    assert majority_answer([None, None]) is None


def _samples(scores: list[float], keys: list[str | None]) -> list[SampleResult]:
    return [SampleResult(s, k is not None, k) for s, k in zip(scores, keys)]


def test_summarize_values() -> None:
    results = [
        _samples([1, 0, 0, 1], ["7", "8", "8", "7"]),  # 2/4 correct; vote tie 7 vs 8 -> "7" first -> correct
        _samples([0, 0, 0, 0], ["1", None, "2", "2"]),  # none correct, one parse failure
        _samples([1, 1, 1, 0], ["4", "4", "4", "5"]),
    ]
    out = summarize(results, ks=[1, 2, 4], n_boot=200)
    assert set(out) == {"avg@4", "pass@1", "pass@2", "pass@4", "maj@4", "parse_failure"}
    assert out["avg@4"].value == pytest.approx((0.5 + 0 + 0.75) / 3)
    assert out["pass@1"].value == pytest.approx(out["avg@4"].value)
    assert out["pass@2"].value == pytest.approx((brute_force_pass_at_k([1, 0, 0, 1], 2) + 0 + 1) / 3)
    assert out["pass@4"].value == pytest.approx(2 / 3)
    assert out["maj@4"].value == pytest.approx(2 / 3)
    assert out["parse_failure"].value == pytest.approx(1 / 12)
    for v in out.values():
        assert v.low <= v.value + 1e-12 and v.value - 1e-12 <= v.high


def test_summarize_fractional_scores_count_only_full_credit_for_pass() -> None:
    results = [_samples([0.9, 0.5], ["a", "b"]), _samples([1.0, 0.2], ["c", "d"])]
    out = summarize(results, n_boot=50)
    assert out["avg@2"].value == pytest.approx((0.7 + 0.6) / 2)
    assert out["pass@2"].value == pytest.approx(0.5)


def test_summarize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same number of samples"):
        summarize([_samples([1], ["a"]), _samples([1, 0], ["a", "b"])])
    with pytest.raises(ValueError, match="1 <= k <= K"):
        summarize([_samples([1, 0], ["a", "b"])], ks=[3])
    with pytest.raises(ValueError, match="at least one problem"):
        summarize([])


def test_bootstrap_interval_coverage_and_determinism() -> None:
    rng = np.random.default_rng(0)
    values = rng.binomial(1, 0.3, size=400).astype(float)
    a = bootstrap_interval(values, n_boot=1000, seed=1)
    b = bootstrap_interval(values, n_boot=1000, seed=1)
    assert a == b
    assert a.low < a.value < a.high
    # normal-approximation half width of a binomial mean: 1.96 * sqrt(p(1-p)/n) ~ 0.045
    half = 1.96 * np.sqrt(a.value * (1 - a.value) / values.size)
    assert (a.high - a.low) / 2 == pytest.approx(half, rel=0.2)
    const = bootstrap_interval([1.0] * 10, n_boot=100)
    assert const.low == const.high == const.value == 1.0
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([1.0], level=1.5)
