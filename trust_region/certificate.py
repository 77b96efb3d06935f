"""Certificate terms of THEORY.md section 3, per update and per stage, from logged quantities.

Per update i (agent sigma(i)) with constant c = sqrt(2) gamma A_max / (1 - gamma)^2:

- ``surrogate`` L_hat_i = (1 / (1 - gamma)) * mean over the agent's messages of (weight * w * A),
  w the message-level ratio pi_new / pi_cur at the end of the update (importance-sampled estimate
  of L_{hat pi^{i-1}}(pi_new); ``weight`` = 1 except in the stale_is / stale_happo modes).
- ``kl``: the monitored KL of the accepted update (stands in for delta_i); ``kl_term`` = c sqrt(kl).
  With the exact per-context monitor (default) ``kl`` is used as measured (an exact KL is never
  negative; a negative value is an error). With a sampled estimator (k1/k2/k3) it is clamped at 0
  inside the square root: a k1 mean on the training batch is often negative, and the clamp then
  hides exactly the case where the estimate is most wrong (docs/trust_region.md).
  Which direction and statistic it is follows the UpdateConfig (TeamTR: reverse, mean; SAT:
  quantile). Both conventions share the same constant c (papers.md Part D).
- ``zeta_clip``, ``zeta_ratio``, ``zeta_norm``, ``zeta_proxy`` = their sum: TeamTR's names for the
  estimator-error decomposition (Table 7). **The papers' definitions are unknown** (papers.md A.7,
  F.2); the definitions here are this project's reading:
    zeta_clip  = mean_m |A_unclipped(m) - A_clipped(m)|             (advantage clipping bias)
    zeta_ratio = |mean_m(c w A) - mean_m(c min(w A, clip(w, 1-eps, 1+eps) A))|  (PPO-clip bias)
    zeta_norm  = mean_m |A_unclipped(m) - A_loo(m)| where A_loo = R_g - mean_{g' != g} R_g' is the
                 unbiased leave-one-out advantage estimate in return units: the deviation that
                 group baselining (the group mean contains the sample itself) and sigma-
                 normalisation introduce relative to an unbiased raw-unit advantage; 0 for
                 messages whose group has a single trajectory (no estimate).
  All means are over the updated agent's messages of the update's batch.
- ``bias_term`` = zeta_proxy / (1 - gamma).
- ``hoeffding_term`` = (A_max / (1 - gamma)) sqrt(log(2 n / delta_conf) / (2 N_i)), n = number of
  agents, N_i = trajectories of the batch in which the agent speaks.
- ``certificate`` = L_hat - kl_term - bias_term (TeamTR's certificate proxy, papers.md A.7);
  ``certificate_hp`` = certificate - hoeffding_term (SAT's high-probability form without the
  info-geometric gain, which needs Fisher terms that are not computed).

Per stage: the sums over the stage's updates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class CertificateConfig:
    """Constants of the certificate.

    - ``gamma``: discount in [0, 1) of the bounds (TeamTR does not report it; SAT's code uses 0.99).
    - ``a_max``: advantage bound A_max > 0; None means the advantage clip A_clip (SAT's choice).
    - ``delta_conf``: confidence level of the Hoeffding term, in (0, 1).
    """

    gamma: float = field(default=0.99, metadata={"help": "discount of the bounds, in [0, 1) (SAT's code: 0.99)"})
    a_max: float | None = field(default=None, metadata={
        "help": "advantage bound A_max (> 0); null = the advantage clip A_clip"})
    delta_conf: float = field(default=0.05, metadata={"help": "confidence level of the Hoeffding term, in (0, 1)"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"CertificateConfig.gamma must be in [0, 1), got {self.gamma}")
        if self.a_max is not None and not (self.a_max > 0 and math.isfinite(self.a_max)):
            raise ValueError(f"CertificateConfig.a_max must be a finite number > 0 or None, got {self.a_max}")
        if not 0.0 < self.delta_conf < 1.0:
            raise ValueError(f"CertificateConfig.delta_conf must be in (0, 1), got {self.delta_conf}")


def penalty_constant(gamma: float, a_max: float) -> float:
    """c = sqrt(2) gamma A_max / (1 - gamma)^2 (= SAT's 2 gamma A_max / (1-gamma)^2 * sqrt(1/2))."""
    return math.sqrt(2.0) * gamma * a_max / (1.0 - gamma) ** 2


def hoeffding_term(a_max: float, gamma: float, n_agents: int, n_trajectories: int, delta_conf: float) -> float:
    """(A_max / (1 - gamma)) sqrt(log(2 n / delta_conf) / (2 N)); inf when N = 0."""
    if n_trajectories <= 0:
        return math.inf
    return a_max / (1.0 - gamma) * math.sqrt(math.log(2.0 * n_agents / delta_conf) / (2.0 * n_trajectories))


@dataclass
class CertificateTerms:
    """Certificate terms of one update (all floats; see the module docstring for definitions)."""

    surrogate: float
    kl: float
    kl_term: float
    zeta_clip: float
    zeta_ratio: float
    zeta_norm: float
    zeta_proxy: float
    bias_term: float
    hoeffding_term: float
    certificate: float
    certificate_hp: float
    c: float
    a_max: float
    gamma: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def certificate_terms(
    *,
    mean_weighted_ratio_advantage: float,
    kl: float,
    kl_exact: bool = False,
    zeta_clip: float,
    zeta_ratio: float,
    zeta_norm: float,
    n_agents: int,
    n_trajectories: int,
    a_max: float,
    config: CertificateConfig,
) -> CertificateTerms:
    """Assemble the terms of one update from the estimated quantities.

    ``mean_weighted_ratio_advantage`` is mean_m(weight * w * A) over the agent's messages; ``kl``
    the monitored KL: exact (``kl_exact``; used as is, ValueError if negative) or a sampled
    estimate (clamped at 0 inside the square root).
    """
    g = config.gamma
    c = penalty_constant(g, a_max)
    surrogate = mean_weighted_ratio_advantage / (1.0 - g)
    if kl_exact and not kl >= 0.0:
        raise ValueError(f"an exact KL must be >= 0, got {kl}")
    kl_term = c * math.sqrt(kl if kl_exact else max(kl, 0.0))
    zeta = zeta_clip + zeta_ratio + zeta_norm
    bias = zeta / (1.0 - g)
    hoeff = hoeffding_term(a_max, g, n_agents, n_trajectories, config.delta_conf)
    cert = surrogate - kl_term - bias
    return CertificateTerms(
        surrogate=surrogate,
        kl=kl,
        kl_term=kl_term,
        zeta_clip=zeta_clip,
        zeta_ratio=zeta_ratio,
        zeta_norm=zeta_norm,
        zeta_proxy=zeta,
        bias_term=bias,
        hoeffding_term=hoeff,
        certificate=cert,
        certificate_hp=cert - hoeff,
        c=c,
        a_max=a_max,
        gamma=g,
    )


_SUMMED = (
    "surrogate",
    "kl_term",
    "zeta_proxy",
    "bias_term",
    "hoeffding_term",
    "certificate",
    "certificate_hp",
)


def stage_certificate(terms: list[CertificateTerms]) -> dict[str, float]:
    """Per-stage sums of the per-update terms: ``sum_<name>`` for surrogate, kl_term, zeta_proxy,
    bias_term, hoeffding_term, certificate, certificate_hp, plus ``sum_sqrt_kl``."""
    out = {f"sum_{k}": float(sum(getattr(t, k) for t in terms)) for k in _SUMMED}
    out["sum_sqrt_kl"] = float(sum(math.sqrt(max(t.kl, 0.0)) for t in terms))
    return out
