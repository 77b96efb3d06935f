"""Evaluation metrics over K samples per problem: avg@K, unbiased pass@k, maj@K, bootstrap CIs.

Inputs are per-problem lists of sample results. With ``n`` samples of which ``c`` are correct:

- **avg@K** (mean@K, pass@1 averaged over K samples): mean over problems of the mean sample
  score. Scores may be fractional (ZebraLogic cell accuracy).
- **pass@k**, unbiased (Chen et al. 2021): per problem ``1 - C(n-c, k) / C(n, k)``, the probability
  that a random k-subset of the n samples contains a correct one; averaged over problems. Needs
  ``k <= n``. "Correct" means score 1.
- **maj@K**: the most common extracted answer among the parsed samples (ties broken by first
  appearance), scored by that answer's grade; 0 when no sample parsed.
- **bootstrap interval**: percentile interval of the metric's mean over problems resampled with
  replacement (problem-level bootstrap), seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)``, computed as a stable product.

    ``n`` samples, ``c`` of them correct, ``1 <= k <= n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_exact(n: int, c: int, k: int) -> float:
    """The same quantity with exact integer binomials (reference for tests and small n)."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"invalid n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_answer(answers: Sequence[Hashable | None]) -> int | None:
    """Index of the first sample carrying the most common non-None answer; None if all are None."""
    counts: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        first.setdefault(a, i)
    if not counts:
        return None
    best = max(counts, key=lambda a: (counts[a], -first[a]))
    return first[best]


@dataclass(frozen=True)
class SampleResult:
    """What the metrics need from one graded sample."""

    score: float
    parsed: bool
    answer_key: Hashable | None = None  # equivalence key of the extracted answer for voting


@dataclass(frozen=True)
class MetricValue:
    """A metric's value with its bootstrap percentile interval at ``level``."""

    value: float
    low: float
    high: float
    level: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level}


def per_problem_avg(samples: Sequence[SampleResult]) -> float:
    return float(np.mean([s.score for s in samples]))


def per_problem_pass(samples: Sequence[SampleResult], k: int) -> float:
    return pass_at_k(len(samples), sum(s.score >= 1.0 for s in samples), k)


def per_problem_maj(samples: Sequence[SampleResult]) -> float:
    idx = majority_answer([s.answer_key if s.parsed else None for s in samples])
    return 0.0 if idx is None else float(samples[idx].score >= 1.0)


def per_problem_parse_failure(samples: Sequence[SampleResult]) -> float:
    return float(np.mean([not s.parsed for s in samples]))


def _bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray], size: int, n_boot: int, level: float, seed: int
) -> tuple[float, float]:
    """Percentile interval of ``statistic(idx)`` over ``n_boot`` resamples of ``size`` problems;
    ``statistic`` maps problem indices (B, P) to one value per resample (B,)."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, size, size=(n_boot, size))  # (B, P)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(statistic(idx), [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_interval(
    values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> MetricValue:
    """Mean of per-problem ``values`` (P,) with a percentile bootstrap interval over problems."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("bootstrap_interval needs a non-empty 1-D sequence of per-problem values")
    low, high = _bootstrap(lambda idx: v[idx].mean(axis=1), v.size, n_boot, level, seed)
    return MetricValue(float(v.mean()), low, high, level)


def ratio_bootstrap_interval(
    numerators: Sequence[float], denominators: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> MetricValue:
    """``sum(numerators) / sum(denominators)`` over P problems (both (P,)) with a percentile
    bootstrap interval that resamples problems. ZebraLogic's leaderboard cell accuracy (ZeroEval:
    total correct cells / total cells) is this with per-puzzle correct and total cell counts."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.ndim != 1 or num.shape != den.shape or num.size == 0 or (den <= 0).any():
        raise ValueError("ratio_bootstrap_interval needs two non-empty 1-D sequences of equal length, denominators > 0")
    low, high = _bootstrap(lambda idx: num[idx].sum(axis=1) / den[idx].sum(axis=1), num.size, n_boot, level, seed)
    return MetricValue(float(num.sum() / den.sum()), low, high, level)


def summarize(
    results: Sequence[Sequence[SampleResult]],
    *,
    ks: Sequence[int] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    extra: dict[str, Callable[[Sequence[SampleResult]], float]] | None = None,
) -> dict[str, MetricValue]:
    """All metrics for P problems with K samples each (``results``: P lists of K results).

    Returns ``avg@K``, ``pass@k`` for every k in ``ks`` (default: 1 and K), ``maj@K`` and
    ``parse_failure`` (fraction of samples without a parsable answer), each with a bootstrap
    interval, plus any ``extra`` per-problem statistics.
    """
    if not results:
        raise ValueError("summarize needs at least one problem")
    n = min(len(r) for r in results)
    if n == 0:
        raise ValueError("every problem needs at least one sample")
    if any(len(r) != n for r in results):
        raise ValueError(f"every problem needs the same number of samples; got {sorted({len(r) for r in results})}")
    ks = sorted(set(ks or [1, n]))
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"pass@k needs 1 <= k <= K={n}; got k={bad}")
    stats: dict[str, Callable[[Sequence[SampleResult]], float]] = {f"avg@{n}": per_problem_avg}
    for k in ks:
        stats[f"pass@{k}"] = lambda s, k=k: per_problem_pass(s, k)
    stats[f"maj@{n}"] = per_problem_maj
    stats["parse_failure"] = per_problem_parse_failure
    stats.update(extra or {})
    return {
        name: bootstrap_interval([fn(r) for r in results], n_boot=n_boot, level=level, seed=seed)
        for name, fn in stats.items()
    }
