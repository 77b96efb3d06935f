"""One stage of sequential trust-region training (TeamTR Algorithm 1, SAT Algorithm 1, baselines).

A stage draws one prompt batch (``prompt_source(prompts_per_stage)``), chooses an update order sigma
(fixed, reversed or random per stage) and updates the agents one at a time, each with
:func:`trust_region.update.update_agent` on its own messages. The modes differ only in which team
produced the batch an update sees and how it is reweighted.

Modes (hat_pi^{i-1} = the team with agents sigma(1..i-1) already updated; N agents). They are
the rows of one table, :data:`STAGE_MODES` (name -> :class:`StageMode`: when a fresh batch is
sampled, which prompts it uses, how the objective is reweighted, whether prefix reuse applies);
a new mode is one :func:`register_stage_mode` call:

- ``intermediate`` (TeamTR): fresh rollouts of hat_pi^{i-1} before every update. N ``sample`` calls.
- ``intermediate`` + ``prefix_reuse``: fresh rollouts for the first update; before update i > 1,
  ``sampler.resample_from(team, previous_batch, agent=sigma(i-1))`` keeps every trajectory up to the
  first turn of the agent changed last (still exact samples of hat_pi^{i-1}) and regenerates the
  rest. 1 ``sample`` + N-1 ``resample_from`` calls.
- ``token_matched``: intermediate rollouts on the stale mode's budget. The stage's
  ``prompts_per_stage`` prompts are split into N consecutive parts and update i samples fresh
  rollouts of hat_pi^{i-1} on part i only (``group_size`` trajectories per prompt). Part sizes are
  floor(P/N) or ceil(P/N), the first P mod N updates of the order getting the larger part, so the
  stage generates exactly P * G trajectories, as many as ``stale`` (equal actions in the tabular
  engine up to the random episode lengths). Needs P >= N. N ``sample`` calls.
- ``stale`` (naive sequential): every update on the stage-start batch. 1 ``sample``.
- ``stale_is`` (SAT): the stage-start batch reweighted by truncated importance weights. With the
  ``"group"`` advantage estimator each message's objective is multiplied by c(tau) = min(1, rho(tau)),
  rho(tau) = product over the trajectory's messages of already-updated agents of the message ratio
  pi_now / pi_behaviour; with ``"gae"`` the per-message c_t = min(1, rho_t) enter the GAE traces
  instead (papers.md B.4). 1 ``sample``.
- ``stale_happo`` (HAPPO): as ``stale_is`` with the untruncated rho(tau). 1 ``sample``.
- ``joint``: every agent updated from the stage-start batch with its own ratio, as if simultaneously
  (the order is irrelevant). 1 ``sample``.
- ``resample_every_k``: fresh rollouts before updates 1, k+1, 2k+1, ...; stale in between (TeamTR's
  "resample every 2 updates" baseline). ceil(N/k) ``sample`` calls.

No trust region: ``UpdateConfig(delta=math.inf)`` with any mode.

Note: in the sampled engine an update on a fixed batch depends only on the updated agent's own
parameters (other agents' messages are fixed context), so ``stale`` and ``joint`` produce the same
parameter updates; they differ in what the batch represents (the base team of the surrogate), which
the exact tabular engine evaluates.

Advantages are recomputed for every update from the batch the update sees (group-normalised over
all trajectories of each prompt group; see :mod:`trust_region.advantage`). The per-agent KL penalty
coefficient beta is carried between stages through ``StageReport.betas`` / ``run_stage(betas=...)``.

Per-update hooks and resuming: ``run_stage(on_update=f)`` calls ``f(progress)`` with the live
:class:`StageProgress` after every update; ``run_stage(resume=progress)`` continues a stage from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from trust_region.advantage import AdvantageConfig, compute_advantages
from trust_region.batch import MessageBatch
from trust_region.certificate import CertificateConfig, stage_certificate
from trust_region.interfaces import AgentPolicy, Sampler
from trust_region.kl import per_message
from trust_region.update import UpdateConfig, UpdateReport, eval_log_probs, update_agent

ORDERS = ("fixed", "reversed", "random")


# ---------------------------------------------------------------------------- the mode table
@dataclass(frozen=True)
class StageMode:
    """One row of the stage-mode table.

    - ``name``, ``help``: the mode's name (``StageConfig.mode``) and a one-line description.
    - ``fresh``: ``fresh(config, i) -> bool``, whether update i (0-based position in the order)
      gets a freshly sampled batch (the first update always does).
    - ``split_prompts``: True when the fresh batch of update i uses only the i-th of N parts of the
      stage's prompts (token-matched budgets), False when it uses all of them.
    - ``weighting``: importance weights of the already-updated agents on a reused batch: None,
      ``"truncated"`` (SAT: c = min(1, rho)) or ``"untruncated"`` (HAPPO: rho).
    - ``prefix_reuse``: whether ``StageConfig.prefix_reuse`` may be combined with the mode.
    """

    name: str
    help: str
    fresh: Callable[["StageConfig", int], bool]
    split_prompts: bool = False
    weighting: Literal["truncated", "untruncated"] | None = None
    prefix_reuse: bool = False


#: the stage-mode table (name -> StageMode); extend it with :func:`register_stage_mode`
STAGE_MODES: dict[str, StageMode] = {}


def register_stage_mode(mode: StageMode) -> StageMode:
    """Add a row to :data:`STAGE_MODES` (a name may be registered once)."""
    if mode.name in STAGE_MODES:
        raise ValueError(f"stage mode {mode.name!r} is already registered")
    if mode.weighting not in (None, "truncated", "untruncated"):
        raise ValueError(f"stage mode {mode.name!r}: weighting must be None, 'truncated' or 'untruncated'")
    STAGE_MODES[mode.name] = mode
    return mode


def _every_update(config: "StageConfig", i: int) -> bool:
    return True


def _first_update(config: "StageConfig", i: int) -> bool:
    return i == 0


def _every_k_updates(config: "StageConfig", i: int) -> bool:
    return i % config.resample_every == 0


register_stage_mode(StageMode("intermediate", "TeamTR: fresh rollouts of the partly updated team before every update",
                              _every_update, prefix_reuse=True))
register_stage_mode(StageMode("stale", "naive sequential: every update on the stage-start batch", _first_update))
register_stage_mode(StageMode("stale_is", "SAT: the stage-start batch with truncated importance weights",
                              _first_update, weighting="truncated"))
register_stage_mode(StageMode("stale_happo", "HAPPO: the stage-start batch with untruncated importance weights",
                              _first_update, weighting="untruncated"))
register_stage_mode(StageMode("joint", "all agents from the stage-start batch, as if simultaneously", _first_update))
register_stage_mode(StageMode("resample_every_k", "fresh rollouts before updates 1, k+1, 2k+1, ...; stale in between",
                              _every_k_updates))
register_stage_mode(StageMode("token_matched", "fresh rollouts before every update on 1/N of the stage's prompts "
                              "(the stale mode's budget)", _every_update, split_prompts=True))

#: the mode names (the keys of :data:`STAGE_MODES` at import)
MODES = tuple(STAGE_MODES)

__all__ = [
    "MODES",
    "ORDERS",
    "STAGE_MODES",
    "StageMode",
    "register_stage_mode",
    "StageConfig",
    "StageReport",
    "UpdateConfig",
    "UpdateReport",
    "AdvantageConfig",
    "CertificateConfig",
    "run_stage",
    "stage_order",
    "prompt_part",
    "StageProgress",
]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class StageConfig:
    """One stage's settings (validated; nested configs may be given as dicts, e.g. from YAML).
    Every field carries its help text in ``metadata["help"]``."""

    mode: str = field(default="intermediate", metadata=_help(
        "which team produced the batch each update sees: one of " + ", ".join(MODES)
        + " (trust_region.stage.STAGE_MODES)"))
    prefix_reuse: bool = field(default=False, metadata=_help(
        "with mode 'intermediate': keep trajectory prefixes before the agent changed last, regenerate the rest"))
    resample_every: int = field(default=2, metadata=_help("k >= 1 of mode 'resample_every_k'"))
    order: Literal["fixed", "reversed", "random"] = field(default="fixed", metadata=_help(
        "update order per stage: 'fixed' (fixed_order or 0..N-1), 'reversed' (of that) or 'random'"))
    fixed_order: tuple[int, ...] | None = field(default=None, metadata=_help(
        "a permutation of 0..N-1 for order 'fixed'/'reversed'; null = 0..N-1"))
    prompts_per_stage: int = field(default=8, metadata=_help("prompts P drawn per stage (>= 1)"))
    group_size: int = field(default=4, metadata=_help(
        "trajectories G per prompt (>= 2 when advantages subtract a group mean)"))
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig, metadata=_help("advantage estimation"))
    update: UpdateConfig = field(default_factory=UpdateConfig, metadata=_help("one agent update (trust region)"))
    certificate: CertificateConfig | None = field(default_factory=CertificateConfig, metadata=_help(
        "certificate constants; null = no certificate terms"))
    is_log_ratio_clip: float = field(default=20.0, metadata=_help(
        "|log rho(tau)| is clamped to this (> 0) before exponentiation (stale_is / stale_happo)"))

    def __post_init__(self) -> None:
        for name, cls in (("advantage", AdvantageConfig), ("update", UpdateConfig), ("certificate", CertificateConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, cls(**value))
            elif not (isinstance(value, cls) or (name == "certificate" and value is None)):
                raise ValueError(f"StageConfig.{name} must be a {cls.__name__} (or a dict of its fields), got {value!r}")
        if self.fixed_order is not None:
            object.__setattr__(self, "fixed_order", tuple(int(x) for x in self.fixed_order))
        if self.mode not in STAGE_MODES:
            raise ValueError(f"StageConfig.mode must be one of {tuple(STAGE_MODES)}, got {self.mode!r}")
        if self.prefix_reuse and not STAGE_MODES[self.mode].prefix_reuse:
            allowed = [m.name for m in STAGE_MODES.values() if m.prefix_reuse]
            raise ValueError(f"StageConfig.prefix_reuse needs mode in {allowed}, got mode={self.mode!r}")
        if not (isinstance(self.resample_every, int) and self.resample_every >= 1):
            raise ValueError(f"StageConfig.resample_every must be an int >= 1, got {self.resample_every!r}")
        if self.order not in ORDERS:
            raise ValueError(f"StageConfig.order must be one of {ORDERS}, got {self.order!r}")
        if self.fixed_order is not None and sorted(self.fixed_order) != list(range(len(self.fixed_order))):
            raise ValueError(f"StageConfig.fixed_order must be a permutation of 0..N-1, got {self.fixed_order}")
        if not (isinstance(self.prompts_per_stage, int) and self.prompts_per_stage >= 1):
            raise ValueError(f"StageConfig.prompts_per_stage must be an int >= 1, got {self.prompts_per_stage!r}")
        if not (isinstance(self.group_size, int) and self.group_size >= 1):
            raise ValueError(f"StageConfig.group_size must be an int >= 1, got {self.group_size!r}")
        if self.group_size == 1 and self.advantage.normalization != "none":
            raise ValueError(
                f"StageConfig.group_size must be >= 2 with advantage.normalization="
                f"{self.advantage.normalization!r} (a group of one has advantage 0); use normalization='none'"
            )
        if self.certificate is not None and self.certificate.a_max is None and math.isinf(self.advantage.a_clip):
            raise ValueError(
                "StageConfig.certificate.a_max must be set when advantage.a_clip is infinite (A_max defaults to A_clip)"
            )
        if not (self.is_log_ratio_clip > 0):
            raise ValueError(f"StageConfig.is_log_ratio_clip must be > 0, got {self.is_log_ratio_clip}")

    @property
    def stage_mode(self) -> StageMode:
        """This config's row of :data:`STAGE_MODES`."""
        return STAGE_MODES[self.mode]

    def to_dict(self) -> dict[str, Any]:
        """Resolved config as plain nested dicts (for saving next to results)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageConfig":
        """Build from a (YAML) mapping; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"StageConfig: unknown field(s) {unknown}")
        return cls(**d)


@dataclass
class StageReport:
    """What a stage did (plain numbers; :meth:`to_dict` gives floats for JSONL).

    - ``stage``: the caller's stage counter; ``order``: sigma as agent ids.
    - ``updates``: one :class:`UpdateReport` per agent, in update order (an agent without messages in
      its batch gets a report with ``n_messages=0`` and no certificate).
    - ``sample_calls``, ``resample_calls``: rollout calls made; ``trajectories_generated`` and
      ``tokens_generated``: their cost (reused prefixes excluded).
    - ``betas``: per-agent KL coefficients at the end of the stage (indexed by agent id); pass them
      to the next ``run_stage``.
    - ``batch_mean_returns``: mean trajectory return of each batch sampled in the stage (the first is
      an estimate of J(pi_cur)).
    - ``certificate``: per-stage sums of the updates' certificate terms (empty without certificate).
    """

    stage: int
    order: list[int]
    updates: list[UpdateReport]
    sample_calls: int
    resample_calls: int
    trajectories_generated: int
    tokens_generated: int
    betas: list[float]
    batch_mean_returns: list[float]
    certificate: dict[str, float]

    def to_dict(self) -> dict[str, float]:
        """Flat dict of floats: ``stage/<name>``, ``stage/order/<i>``, ``stage/cert/<sum_...>``,
        ``stage/beta/<j>`` and every update's ``agent{j}/<name>``."""
        out: dict[str, float] = {
            "stage/stage": float(self.stage),
            "stage/sample_calls": float(self.sample_calls),
            "stage/resample_calls": float(self.resample_calls),
            "stage/trajectories_generated": float(self.trajectories_generated),
            "stage/tokens_generated": float(self.tokens_generated),
            "stage/n_rejected": float(sum(u.n_rejected for u in self.updates)),
        }
        out.update({f"stage/order/{i}": float(j) for i, j in enumerate(self.order)})
        out.update({f"stage/beta/{j}": float(b) for j, b in enumerate(self.betas)})
        out.update({f"stage/batch_mean_return/{i}": float(r) for i, r in enumerate(self.batch_mean_returns)})
        out.update({f"stage/cert/{k}": float(v) for k, v in self.certificate.items()})
        for u in self.updates:
            out.update(u.to_dict(prefix=True))
        return out


# ---------------------------------------------------------------------------- helpers
def stage_order(config: StageConfig, n_agents: int, rng: np.random.Generator) -> list[int]:
    """The update order sigma of one stage (agent ids)."""
    base = list(config.fixed_order) if config.fixed_order is not None else list(range(n_agents))
    if len(base) != n_agents:
        raise ValueError(f"StageConfig.fixed_order has {len(base)} entries for a team of {n_agents} agents")
    if config.order == "fixed":
        return base
    if config.order == "reversed":
        return base[::-1]
    return [int(x) for x in rng.permutation(n_agents)]


def prompt_part(prompts: Sequence[Any], n_parts: int, i: int) -> list[Any]:
    """The i-th of ``n_parts`` consecutive parts of ``prompts`` (mode ``token_matched``).

    Part sizes are floor(P / n) or ceil(P / n), the first P mod n parts the larger, so the parts
    cover every prompt exactly once. Raises ValueError if P < n (some update would get no prompt).
    """
    p = len(prompts)
    if p < n_parts:
        raise ValueError(f"StageConfig.prompts_per_stage ({p}) must be >= the number of agents ({n_parts}) "
                         "to split the stage's prompts over the updates (mode 'token_matched')")
    base, extra = divmod(p, n_parts)
    start = i * base + min(i, extra)
    return list(prompts[start : start + base + (1 if i < extra else 0)])


def mean_trajectory_return(batch: MessageBatch) -> float:
    """Mean over the batch's trajectories of their return (each trajectory counted once)."""
    ids, inv = torch.unique(batch.trajectory, return_inverse=True)
    ret = torch.zeros(ids.numel(), dtype=torch.float64).index_put_((inv,), batch.returns.to(torch.float64))
    return float(ret.mean()) if ids.numel() else math.nan


def updated_agents_log_rho(team: Sequence[AgentPolicy], batch: MessageBatch, agents: Sequence[int],
                           chunk: int | None = None) -> Tensor:
    """log rho_t (M,) per message: for messages of ``agents`` the token-summed log-ratio of the
    agent's current policy over the batch's behaviour log-probs, 0 for every other message."""
    out = torch.zeros(len(batch), dtype=torch.float64)
    for k in agents:
        own = batch.agent == k
        if not bool(own.any()):
            continue
        sub = batch.select(own)
        logp = eval_log_probs(team[k], sub, chunk)
        out[own] = per_message(logp.to(torch.float64) - sub.behaviour_logp.to(torch.float64), sub.mask).to(torch.float64)
    return out


def trajectory_weights(batch: MessageBatch, log_rho: Tensor, truncate: bool, clip: float) -> Tensor:
    """Per-message weight (M,) of its trajectory: rho(tau) = exp(sum of the trajectory's log rho_t)
    (clamped at +-``clip``), truncated to min(1, rho) when ``truncate`` (SAT) or not (HAPPO)."""
    _, inv = torch.unique(batch.trajectory, return_inverse=True)
    k = int(inv.max()) + 1 if len(batch) else 0
    total = torch.zeros(k, dtype=torch.float64).index_add_(0, inv, log_rho.to(torch.float64))
    rho = torch.exp(total.clamp(-clip, clip))
    if truncate:
        rho = rho.clamp(max=1.0)
    return rho[inv].to(torch.float32)


def _generated_cost(batch: MessageBatch) -> tuple[int, int]:
    trajs = int(torch.unique(batch.trajectory[batch.generated]).numel())
    return trajs, batch.num_generated_tokens


# ---------------------------------------------------------------------------- the stage
@dataclass
class StageProgress:
    """The live state of a stage between two updates (for per-update logging/checkpointing and for
    resuming a stage in the middle).

    ``run_stage(on_update=f)`` calls ``f(progress)`` after every position of the order (the object
    is the live one: serialise what you need before returning). ``run_stage(resume=progress)``
    continues a stage from such a state: the order, prompts, betas, counters and reports are taken
    from it and updates start at ``next_index``.

    - ``stage``, ``order`` (agent ids), ``prompts`` (this stage's prompts).
    - ``next_index``: the position of the next update (after update i, ``i + 1``).
    - ``betas``: per-agent KL coefficients now.
    - ``batch``: the batch the next update would reuse (None before the first sample; a resumed
      stage needs it unless the next update samples fresh rollouts anyway, i.e. ``intermediate``
      without prefix reuse or the start of a ``resample_every_k`` block); ``batch_start``: the
      position at which it was sampled.
    - ``updates``: reports so far; ``sample_calls``, ``resample_calls``, ``trajectories_generated``,
      ``tokens_generated``, ``batch_mean_returns``: as in :class:`StageReport`.
    """

    stage: int
    order: list[int]
    prompts: list[Any]
    next_index: int
    betas: list[float]
    batch: MessageBatch | None = None
    batch_start: int = 0
    updates: list[UpdateReport] = field(default_factory=list)
    sample_calls: int = 0
    resample_calls: int = 0
    trajectories_generated: int = 0
    tokens_generated: int = 0
    batch_mean_returns: list[float] = field(default_factory=list)

    def report(self) -> StageReport:
        """The :class:`StageReport` of the updates done so far."""
        certs = [u.certificate for u in self.updates if u.certificate is not None]
        return StageReport(
            stage=self.stage,
            order=list(self.order),
            updates=list(self.updates),
            sample_calls=self.sample_calls,
            resample_calls=self.resample_calls,
            trajectories_generated=self.trajectories_generated,
            tokens_generated=self.tokens_generated,
            betas=list(self.betas),
            batch_mean_returns=list(self.batch_mean_returns),
            certificate=stage_certificate(certs) if certs else {},
        )


def _start_or_resume(
    n: int,
    prompt_source: Callable[[int], Sequence[Any]],
    config: StageConfig,
    rng: np.random.Generator,
    betas: Sequence[float] | None,
    stage: int,
    resume: StageProgress | None,
) -> StageProgress:
    """A fresh :class:`StageProgress` (order, prompts, betas) or the validated ``resume``."""
    if resume is None:
        betas_now = [float(config.update.beta)] * n if betas is None else [float(b) for b in betas]
        if len(betas_now) != n:
            raise ValueError(f"run_stage: betas must have one entry per agent ({n}), got {len(betas_now)}")
        order = stage_order(config, n, rng)
        prompts = list(prompt_source(config.prompts_per_stage))
        if not prompts:
            raise ValueError("prompt_source returned no prompts")
        if config.stage_mode.split_prompts:
            prompt_part(prompts, n, 0)  # fail before any rollout if P < N
        return StageProgress(stage=stage, order=order, prompts=prompts, next_index=0, betas=betas_now)
    progress = resume
    if sorted(progress.order) != list(range(n)):
        raise ValueError(f"resume.order must be a permutation of 0..{n - 1}, got {progress.order}")
    if len(progress.betas) != n:
        raise ValueError(f"resume.betas must have one entry per agent ({n}), got {len(progress.betas)}")
    if not 0 <= progress.next_index <= n:
        raise ValueError(f"resume.next_index must be in [0, {n}], got {progress.next_index}")
    i = progress.next_index
    if i < n and progress.batch is None and i > 0 and not (
        config.stage_mode.fresh(config, i) and not config.prefix_reuse
    ):
        raise ValueError(
            f"resume.batch is needed to continue mode {config.mode!r}"
            f"{' with prefix reuse' if config.prefix_reuse else ''} at update {i}"
        )
    return progress


def _batch_for_update(
    team: Sequence[AgentPolicy], sampler: Sampler, config: StageConfig, progress: StageProgress, i: int
) -> tuple[int, int]:
    """Make ``progress.batch`` the batch update i sees (sampling it when the mode says so);
    returns the (trajectories, tokens) generated for it (0, 0 when the batch is reused)."""
    mode = config.stage_mode
    if progress.batch is not None and not mode.fresh(config, i):
        return 0, 0
    if config.prefix_reuse and progress.batch is not None:
        batch = sampler.resample_from(team, progress.batch, agent=progress.order[i - 1])
        progress.resample_calls += 1
    else:
        prompts = prompt_part(progress.prompts, len(team), i) if mode.split_prompts else progress.prompts
        batch = sampler.sample(team, prompts, config.group_size)
        progress.sample_calls += 1
    if not isinstance(batch, MessageBatch):
        raise TypeError(f"sampler must return a MessageBatch, got {type(batch).__name__}")
    progress.batch = batch
    progress.batch_start = i
    gen_traj, gen_tok = _generated_cost(batch)
    progress.trajectories_generated += gen_traj
    progress.tokens_generated += gen_tok
    progress.batch_mean_returns.append(mean_trajectory_return(batch))
    return gen_traj, gen_tok


def _importance_weights(
    team: Sequence[AgentPolicy], config: StageConfig, progress: StageProgress, i: int, own: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """(weights of the agent's messages (M_j,) or None, log_rho of all messages (M,) or None) for
    update i: the mode's importance weighting for the agents updated since the batch was sampled.
    GAE with truncated weights takes the per-message log_rho (traces); otherwise trajectory weights."""
    weighting = config.stage_mode.weighting
    if weighting is None:
        return None, None
    batch = progress.batch
    log_rho = updated_agents_log_rho(team, batch, progress.order[progress.batch_start:i], config.update.eval_batch_size)
    if weighting == "truncated" and config.advantage.estimator != "group":
        return None, log_rho
    weights = trajectory_weights(batch, log_rho, truncate=weighting == "truncated", clip=config.is_log_ratio_clip)
    return weights[own], None


def run_stage(
    team: Sequence[AgentPolicy],
    optimizers: Sequence[torch.optim.Optimizer],
    sampler: Sampler,
    prompt_source: Callable[[int], Sequence[Any]],
    config: StageConfig,
    rng: np.random.Generator,
    *,
    betas: Sequence[float] | None = None,
    stage: int = 0,
    on_update: Callable[[StageProgress], None] | None = None,
    resume: StageProgress | None = None,
) -> StageReport:
    """Run one stage (see the module docstring) and return its :class:`StageReport`.

    Per position i of the order: start or resume (:func:`_start_or_resume`), the batch for update i
    (:func:`_batch_for_update`), its weights (:func:`_importance_weights`), then
    :func:`trust_region.update.update_agent` on the agent's messages.

    Args:
        team: agents, ``team[j].agent_id == j``.
        optimizers: one per agent, holding only that agent's parameters.
        sampler: ``sample(team, prompts, group_size) -> MessageBatch``; with prefix reuse also
            ``resample_from(team, batch, agent=...)``.
        prompt_source: ``prompt_source(n) -> n prompts``; called once per stage (not on resume).
        rng: numpy Generator for the random order and minibatch shuffling.
        betas: per-agent KL coefficients to start from (None: ``config.update.beta`` for all);
            ignored on resume (the progress carries them).
        stage: a counter copied into the reports (on resume: ``resume.stage``).
        on_update: called with the live :class:`StageProgress` after every update position.
        resume: continue a stage from a :class:`StageProgress` (see there).
    """
    n = len(team)
    if n == 0:
        raise ValueError("run_stage needs a team of at least one agent")
    for j, agent in enumerate(team):
        if agent.agent_id != j:
            raise ValueError(f"team[{j}].agent_id must be {j}, got {agent.agent_id}")
    if len(optimizers) != n:
        raise ValueError(f"run_stage needs one optimizer per agent: {n} agents, {len(optimizers)} optimizers")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"run_stage: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if config.prefix_reuse and not callable(getattr(sampler, "resample_from", None)):
        raise ValueError("StageConfig.prefix_reuse needs a sampler with resample_from(team, batch, agent)")

    progress = _start_or_resume(n, prompt_source, config, rng, betas, stage, resume)
    for i in range(progress.next_index, n):
        j = progress.order[i]
        gen_traj, gen_tok = _batch_for_update(team, sampler, config, progress, i)
        batch = progress.batch
        own = batch.agent == j
        if not bool(own.any()):
            report = UpdateReport(agent=j, position=i, stage=progress.stage, beta_start=progress.betas[j],
                                  beta_end=progress.betas[j], delta=config.update.delta)
        else:
            weights, log_rho = _importance_weights(team, config, progress, i, own)
            adv = compute_advantages(batch, j, config.advantage, log_rho=log_rho).select(own)
            report = update_agent(
                team[j],
                optimizers[j],
                batch.select(own),
                adv,
                config.update,
                beta=progress.betas[j],
                weights=weights,
                rng=rng,
                certificate=config.certificate,
                a_max=config.advantage.a_clip,
                n_agents=n,
                position=i,
                stage=progress.stage,
            )
            progress.betas[j] = report.beta_end
        report.trajectories_generated = gen_traj
        report.tokens_generated = gen_tok
        progress.updates.append(report)
        progress.next_index = i + 1
        if on_update is not None:
            on_update(progress)

    return progress.report()
