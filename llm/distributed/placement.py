"""Where the agents run: Ray actor groups (``placement: ray``) and the proxies the driver uses.

:func:`start_remote_team` starts one actor group per agent (``world_size`` workers with the agent's
``num_cpus``/``num_gpus``), loads every agent's model in parallel and returns a :class:`RemoteTeam`:
an :class:`llm.team.LLMTeam` of :class:`~llm.distributed.proxy.RemoteAgent` (router and handoff as in
the local placement), their :class:`~llm.distributed.proxy.RemoteOptimizer` and a
:class:`~llm.distributed.proxy.RemoteBackend`. The caller builds its
:class:`llm.sampler.TeamSampler` over that backend and calls ``trust_region.stage.run_stage`` as in
the local placement.

An actor that dies raises :class:`AgentActorDied`, naming the agent; the run then resumes from its
last checkpoint when the same command is run again (``llm.train`` resumes by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from llm.config.errors import ConfigError
from llm.config.sections import SamplingSection, TeamConfig
from llm.distributed.config import RaySection
from llm.distributed.proxy import RemoteAgent, RemoteBackend, RemoteExactAgent, RemoteOptimizer
from llm.distributed.worker import AgentWorker, WorkerSpec, with_rank
from llm.models import load_tokenizer
from llm.team import LLMTeam, Router

INSTALL_HINT = 'pip install -c constraints.txt -e ".[distributed]"   (or: pip install "ray>=2.50")'


# Ray runs its worker processes at niceness 15 (background priority): the agents' actors, which
# are the job, then lose the CPU to any process at niceness 0 on the node. Measured on 2 cores with
# three other training processes running: 30 s per stage of the tiny team at 15, 3.3 s at 0 (the
# local placement 1.1-1.9 s). A cluster started with `ray start` takes it from the environment:
# RAY_worker_niceness=0 ray start --head (docs/distributed.md).
LOCAL_CLUSTER_SYSTEM_CONFIG = {"worker_niceness": 0}


class AgentActorDied(RuntimeError):
    """An agent's actor (one worker of its group) is gone; the message names the agent."""


def require_ray() -> Any:
    """The ``ray`` module, or ConfigError with the install command."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError(f"placement: ray needs the Ray package, which is not installed here: {INSTALL_HINT}",
                          key="placement") from err
    return ray


def ensure_ray(section: RaySection) -> Any:
    """Join ``section.address`` or start a local cluster (once per process); returns ``ray``."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        if section.address is None:
            kwargs.update(num_cpus=section.num_cpus, object_store_memory=section.object_store_memory_mb * 2**20,
                          _system_config=LOCAL_CLUSTER_SYSTEM_CONFIG)
        ray.init(address=section.address, **kwargs)
    return ray


# ---------------------------------------------------------------------------- actor groups
class LocalGroup:
    """An agent's 'group' of one :class:`AgentWorker` in this process (tests, debugging)."""

    world_size = 1

    def __init__(self, worker: AgentWorker) -> None:
        self.worker = worker
        self.name = worker.spec.agent.name

    def call(self, method: str, *args: Any) -> list[Any]:
        return [getattr(self.worker, method)(*args)]

    def call_each(self, method: str, per_rank: Sequence[tuple]) -> list[Any]:
        return [getattr(self.worker, method)(*per_rank[0])]

    def call_rank0(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)

    def submit_rank0(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)

    def collect(self, result: Any) -> Any:
        return result


class RayGroup:
    """The ``world_size`` Ray actors of one agent; every call goes to all ranks in parallel."""

    def __init__(self, ray: Any, name: str, agent_id: int, handles: list[Any]) -> None:
        self.ray, self.name, self.agent_id, self.handles = ray, name, agent_id, handles
        self.world_size = len(handles)
        self.round_trips = 0  # driver <-> actor calls made (benchmarks)

    def _get(self, refs: list[Any]) -> list[Any]:
        self.round_trips += 1
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayActorError as err:
            raise AgentActorDied(
                f"agent {self.name!r} (agent {self.agent_id}, {self.world_size} worker(s)): its Ray actor died "
                f"({type(err).__name__}). Run the same command again: training resumes from the last checkpoint."
            ) from err

    def call(self, method: str, *args: Any) -> list[Any]:
        return self._get([getattr(h, method).remote(*args) for h in self.handles])

    def call_each(self, method: str, per_rank: Sequence[tuple]) -> list[Any]:
        return self._get([getattr(h, method).remote(*a) for h, a in zip(self.handles, per_rank)])

    def call_rank0(self, method: str, *args: Any) -> Any:
        return self.collect(self.submit_rank0(method, *args))

    def submit_rank0(self, method: str, *args: Any) -> Any:
        """Start ``method`` on rank 0 without waiting; :meth:`collect` its result."""
        return getattr(self.handles[0], method).remote(*args)

    def collect(self, ref: Any) -> Any:
        return self._get([ref])[0]

    def kill(self) -> None:
        """End the actors now (failure tests; :meth:`RemoteTeam.shutdown`)."""
        for h in self.handles:
            self.ray.kill(h, no_restart=True)


# ---------------------------------------------------------------------------- the team
@dataclass
class RemoteTeam:
    """The driver's view of a team placed on Ray: ``team`` (an LLMTeam of proxies), one optimizer
    per agent, the backend for the sampler, and the actor groups."""

    team: LLMTeam
    optimizers: list[RemoteOptimizer]
    backend: RemoteBackend
    groups: list[Any]

    def shutdown(self) -> None:
        """Close every agent's backend and end its actors (dead ones are skipped)."""
        for g in self.groups:
            try:
                g.call("close")
            except AgentActorDied:
                pass
            if callable(getattr(g, "kill", None)):
                g.kill()


def worker_specs(team_config: TeamConfig, temperature: float, sampling: SamplingSection | None, seed: int,
                 section: RaySection) -> list[WorkerSpec]:
    """One rank-0 spec per agent (ranks are filled in by :func:`start_remote_team`)."""
    section.check_names(team_config.names)
    specs = []
    for j, agent in enumerate(team_config.agents):
        res = section.resources(agent.name)
        engine = f"cuda:{math.ceil(res.num_gpus)}" if res.engine_gpus >= 1 else None  # after the training GPU(s)
        specs.append(WorkerSpec(agent_id=j, agent=agent, temperature=temperature, sampling=sampling, seed=seed,
                                world_size=res.world_size, num_threads=res.threads, engine_device=engine))
    return specs


def _make_proxies(team_config: TeamConfig, temperature: float, groups: list[Any], infos: list[dict],
                  tokenizers: list[Any] | None) -> RemoteTeam:
    tokenizers = tokenizers if tokenizers is not None else [load_tokenizer(a) for a in team_config.agents]
    agents: list[RemoteAgent] = []
    for j, (spec, group, info, tok) in enumerate(zip(team_config.agents, groups, infos, tokenizers)):
        cls = RemoteExactAgent if info["exact_kl"] else RemoteAgent
        agents.append(cls(group, j, spec.name, tok, spec.system_prompt, temperature, spec.max_new_tokens,
                          spec.chat_template_kwargs))
    optimizers = [RemoteOptimizer(a, spec.optimizer.lr) for a, spec in zip(agents, team_config.agents)]
    team = LLMTeam(agents, Router.from_config(team_config), team_config.protocol, team_config)  # type: ignore[arg-type]
    return RemoteTeam(team, optimizers, RemoteBackend(agents), groups)


def start_remote_team(team_config: TeamConfig, temperature: float, sampling: SamplingSection | None, seed: int,
                      section: RaySection, tokenizers: list[Any] | None = None) -> RemoteTeam:
    """Start one Ray actor group per agent and build the proxies (see the module docstring)."""
    ray = ensure_ray(section)
    actor_cls = ray.remote(AgentWorker)
    specs = worker_specs(team_config, temperature, sampling, seed, section)
    groups: list[RayGroup] = []
    for spec in specs:
        res = section.resources(spec.agent.name)
        handles = [actor_cls.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus + (res.engine_gpus if r == 0 else 0),
                                     max_restarts=0).remote(with_rank(spec, r)) for r in range(spec.world_size)]
        groups.append(RayGroup(ray, spec.agent.name, spec.agent_id, handles))
    setups = []  # load all agents in parallel
    for group in groups:
        addr, port = ray.get(group.handles[0].rendezvous.remote()) if group.world_size > 1 else (None, None)
        setups.append([h.setup.remote(addr, port) for h in group.handles])
    infos = [group._get(refs)[0] for group, refs in zip(groups, setups)]
    return _make_proxies(team_config, temperature, groups, infos, tokenizers)


def start_local_group_team(team_config: TeamConfig, temperature: float, sampling: SamplingSection | None,
                           seed: int, tokenizers: list[Any] | None = None) -> RemoteTeam:
    """The same proxies over in-process workers (no Ray; world_size 1): tests the proxy layer."""
    specs = worker_specs(team_config, temperature, sampling, seed, RaySection())
    groups = [LocalGroup(AgentWorker(s)) for s in specs]
    infos = [g.worker.setup() for g in groups]
    return _make_proxies(team_config, temperature, groups, infos, tokenizers)
