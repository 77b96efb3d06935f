"""The shared sequential trust-region core (TeamTR / SAT), written once for both engines.

Nothing in this package knows about tables or transformers: it sees agents through
:class:`trust_region.interfaces.AgentPolicy` and samplers through
:class:`trust_region.interfaces.Sampler`, and data through :class:`trust_region.batch.MessageBatch`.

Entry points: :func:`trust_region.stage.run_stage` (one stage, any mode) and
:func:`trust_region.update.update_agent` (one agent inside its trust region).
"""

from trust_region.advantage import AdvantageConfig, Advantages, compute_advantages
from trust_region.batch import MessageBatch
from trust_region.certificate import CertificateConfig, CertificateTerms
from trust_region.interfaces import AgentPolicy, ExactKLPolicy, Sampler, supports_exact_kl
from trust_region.stage import (
    MODES,
    ORDERS,
    STAGE_MODES,
    StageConfig,
    StageMode,
    StageProgress,
    StageReport,
    register_stage_mode,
    run_stage,
)
from trust_region.update import UpdateConfig, UpdateReport, update_agent

__all__ = [
    "AgentPolicy",
    "ExactKLPolicy",
    "Sampler",
    "supports_exact_kl",
    "MessageBatch",
    "AdvantageConfig",
    "Advantages",
    "compute_advantages",
    "CertificateConfig",
    "CertificateTerms",
    "MODES",
    "STAGE_MODES",
    "StageMode",
    "register_stage_mode",
    "ORDERS",
    "StageConfig",
    "StageReport",
    "StageProgress",
    "run_stage",
    "UpdateConfig",
    "UpdateReport",
    "update_agent",
]
