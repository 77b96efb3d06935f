"""The shared sequential trust-region core (TeamTR / SAT), written once for both engines.

Nothing in this package knows about tables or transformers: it sees agents through
:class:`trust_region.protocols.AgentPolicy` and samplers through
:class:`trust_region.protocols.Sampler`, and data through :class:`trust_region.batch.MessageBatch`.
"""

from trust_region.batch import MessageBatch

__all__ = ["MessageBatch"]
