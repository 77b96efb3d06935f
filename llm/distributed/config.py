"""The ``placement`` settings of a run: where the agents live (``llm.train`` reads them).

``placement: local`` (default) keeps the whole team in the driver process. ``placement: ray`` makes
every agent a Ray actor group; the ``ray`` section says which cluster and what each agent gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm.config.errors import ConfigError
from llm.config.fields import Section, option

PLACEMENTS = ("local", "ray")


@dataclass(frozen=True)
class AgentResources(Section):
    """Resources of one agent's actor group (``ray.agents.<name>`` in YAML)."""

    num_cpus: float = option(1.0, ge=0, help="CPU cores Ray reserves for each worker of the agent (also its "
                             "torch thread count, at least 1)")
    num_gpus: float = option(0.0, ge=0, help="GPUs per worker (1 for an agent that trains on its own GPU; "
                             "fractions share a GPU)")
    engine_gpus: float = option(0.0, ge=0, help="extra GPUs for rank 0 only: the agent's generation engine (vLLM "
                                "sees them as the devices after the training GPU(s); sampling.vllm.devices)")
    world_size: int = option(1, ge=1, help="workers of the agent; > 1 shards its weights, gradients and AdamW "
                             "state with FSDP2 (gloo on CPU, NCCL on GPU)")

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))


@dataclass(frozen=True)
class RaySection(Section):
    """The Ray cluster and the per-agent resources of ``placement: ray``."""

    address: str | None = option(None, help="Ray cluster to join ('auto': the one `ray start --head` started on "
                                 "this node; 'ray://host:10001'); null: start a local one for this run")
    num_cpus: int | None = option(None, ge=1, help="CPUs of a local cluster started for the run (null: all)")
    object_store_memory_mb: int = option(512, ge=64, help="object store of a local cluster, MB (only message "
                                         "batches travel through it)")
    default: AgentResources = option(default_factory=AgentResources, help="resources of every agent not listed "
                                     "in agents")
    agents: dict[str, AgentResources] = option(default_factory=dict, help="per-agent resources by agent name")

    def resources(self, name: str) -> AgentResources:
        return self.agents.get(name, self.default)

    def check_names(self, names: list[str]) -> None:
        unknown = sorted(set(self.agents) - set(names))
        if unknown:
            raise ConfigError(f"ray.agents names unknown agent(s) {unknown}; agents are {names}", key="ray.agents")
