"""Update one agent inside its trust region (TeamTR Algorithm 1 line "update until d_KL <= delta";
SAT's backtracking rule).

What :func:`update_agent` does, in three parts (each its own function):

**Steps within the region** (:func:`steps_within_region`).

1. pi_cur is fixed at update start: its log-probs of the agent's messages (recomputed with the
   agent under ``torch.no_grad`` unless ``recompute_behaviour_logp=False``, then
   ``batch.behaviour_logp``) and, for the exact monitor, ``agent.kl_reference(batch)``.
   With ``holdout_fraction`` > 0 a share of the agent's trajectories (drawn with ``rng``) is held
   out: their messages take no gradient step but are monitored.
2. ``epochs`` passes; each shuffles the training messages (with ``rng``) into minibatches of
   ``minibatch_size`` messages and takes one optimizer step per minibatch on the loss of
   :func:`trust_region.objective.surrogate_loss` (clipped surrogate + beta * KL penalty).
3. Trust region (``delta`` finite): after each step (``enforce_every="step"``) or each epoch
   (``"epoch"``) the monitor (:class:`KLMonitor`) measures the KL against pi_cur on the agent's
   messages: per message the token-decomposed sum (or mean) over its positions of the
   ``monitor_estimator`` in ``monitor_direction``, then over messages the mean (TeamTR) or the
   ``monitor_quantile`` = (1 - alpha) quantile (SAT). The default monitor ``"exact"`` is the exact KL
   over the whole next-token distribution at every visited position (never negative); ``k1|k2|k3``
   are sampled estimates from the tokens of the batch, which on the batch the agent was just trained
   on are biased low (the optimiser has just raised those tokens' probabilities: k1 goes negative,
   k3 under-reads; see docs/trust_region.md). ``enforce_on`` names the messages enforced on
   (training, held-out or both). A step whose KL exceeds ``delta`` is rejected:
   - ``backtrack="retry"``: the step is undone (parameters put back with ``agent.restore`` of an
     ``agent.snapshot()`` taken before it; optimizer state with ``optimizer.load_state_dict`` of a
     tensor-cloned ``state_dict``), beta is raised (``beta = max(beta * backtrack_beta_factor,
     beta_floor)``), the learning rate of the retry is scaled by ``lr_backoff **
     consecutive_rejections`` (restored at the end of the update) and the same minibatch is retried;
     after ``max_backtracks`` consecutive rejected retries (``max_backtracks + 1`` tries) the update
     stops early. Each retry costs a forward+backward and a monitor pass.
   - ``backtrack="line_search"``: the step's direction is kept and its length halved
     (theta_old + 2^-k (theta_new - theta_old), k = 1..max_backtracks), one monitor pass per try
     and no new forward/backward; the first length inside the region is accepted (the optimizer
     keeps the state of its step), beta is raised as above. If none is inside, parameters and
     optimizer state are put back exactly and the update stops early.
   Every accepted state therefore satisfies monitored KL <= delta; a rejected step leaves the
   parameters and the optimizer state exactly as before it. ``delta = inf`` disables enforcement
   (no snapshots, no measurements during the update).

**Diagnostics** (:func:`update_diagnostics`): the final monitored KL (training, held-out and the
gap), sampled k1/k3 and exact KLs side by side, ratio/clip/advantage statistics, and the adaptive
beta (Ziegler et al. 2019, verl's ``AdaptiveKLController``), once at the end of the update with the
final monitored KL and n_steps = number of the agent's training messages:
``beta *= 1 + clip(KL / kl_target - 1, -0.2, 0.2) * n_steps / kl_horizon``.

**Certificate** (:func:`update_certificate`): the terms of :mod:`trust_region.certificate` with the
monitored KL (exact: used as is; sampled: clamped at 0 inside the square root).

Devices: the MessageBatch, the advantages and all measurements live on the CPU; the agent may
compute on any device (an LLM on a GPU): for the loss the minibatch's tensors are moved to the device
of ``agent.log_probs``' output, and no-grad log-probs are brought back to the CPU.

Cost: a finite ``delta`` with ``enforce_every="step"`` snapshots the agent's trainable parameters and
the optimizer state (cloned tensors) before every step and runs one monitor pass over the monitored
messages after it (exact: ``agent.exact_kl``; sampled: a no-grad log-prob pass);
``enforce_every="epoch"`` does both once per epoch.

The returned :class:`UpdateReport` carries the final beta, which the caller passes to the next update
of the same agent (``run_stage`` does this through ``StageReport.betas``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch import Tensor

from trust_region.advantage import Advantages
from trust_region.batch import MessageBatch
from trust_region.certificate import CertificateConfig, CertificateTerms, certificate_terms
from trust_region.interfaces import AgentPolicy, supports_exact_kl
from trust_region.kl import DIRECTIONS, KL_ESTIMATORS, MONITORS, kl_statistic, message_kl, per_message
from trust_region.objective import clipped_message_objective, message_ratio, surrogate_loss

ENFORCE_ON = ("train", "heldout", "both")
BACKTRACKS = ("retry", "line_search")

#: the sampled estimator used when the monitor is "exact" but the agent offers no exact_kl
FALLBACK_MONITOR = "k3"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class UpdateConfig:
    """Settings of one agent update (defaults: TeamTR where reported, else SAT's code; the monitor
    is this project's exact per-context KL). Every field carries its help text in
    ``metadata["help"]``; the module docstring gives the algorithm."""

    # optimisation
    epochs: int = field(default=1, metadata=_help("passes over the agent's messages (>= 1)"))
    minibatch_size: int | None = field(default=None, metadata=_help(
        "messages per optimizer step (>= 1); null = the whole batch"))
    clip_eps: float = field(default=0.2, metadata=_help("PPO ratio clip, in (0, 1)"))
    ratio_level: Literal["message", "token"] = field(default="message", metadata=_help(
        "'message': product of the message's token ratios (TeamTR/SAT); 'token': per-token PPO"))
    max_grad_norm: float | None = field(default=1.0, metadata=_help("gradient-norm clip (> 0) or null"))
    recompute_behaviour_logp: bool = field(default=True, metadata=_help(
        "recompute pi_cur log-probs with the agent at update start (true) or use the batch's behaviour log-probs"))
    eval_batch_size: int | None = field(default=None, metadata=_help(
        "messages per no-grad evaluation (log-probs, exact KL); null = all at once"))
    # KL penalty
    beta: float = field(default=0.001, metadata=_help("initial KL penalty coefficient (>= 0; SAT's code 0.001)"))
    adaptive_beta: bool = field(default=True, metadata=_help(
        "Ziegler's adaptive beta at the end of each update (target kl_target)"))
    kl_target: float | None = field(default=None, metadata=_help(
        "KL target of the adaptive beta (> 0); null = delta"))
    kl_horizon: float = field(default=10000.0, metadata=_help("horizon of the adaptive beta, in messages (> 0)"))
    penalty_estimator: Literal["k1", "k2", "k3"] = field(default="k3", metadata=_help(
        "sampled KL estimator of the penalty: k1, k2 or k3"))
    penalty_direction: Literal["reverse", "forward"] = field(default="reverse", metadata=_help(
        "penalty direction: 'reverse' = KL(pi_cur||pi_new) (TeamTR), 'forward' = KL(pi_new||pi_cur) (SAT)"))
    # trust region
    delta: float = field(default=0.01, metadata=_help(
        "trust-region radius on the monitored KL per message (> 0); .inf disables the trust region"))
    monitor_estimator: Literal["exact", "k1", "k2", "k3"] = field(default="exact", metadata=_help(
        "'exact': exact KL over the full next-token distribution at every visited position (default; "
        "agents with exact_kl); k1|k2|k3: sampled estimates from the batch's tokens (biased low on the "
        "training batch)"))
    monitor_direction: Literal["reverse", "forward"] = field(default="reverse", metadata=_help(
        "'reverse' = KL(pi_cur||pi_new) (TeamTR), 'forward' = KL(pi_new||pi_cur) (SAT)"))
    monitor_reduce: Literal["sum", "mean"] = field(default="sum", metadata=_help(
        "per message: 'sum' over its positions (TeamTR) or 'mean' (SAT's code)"))
    monitor_statistic: Literal["mean", "quantile"] = field(default="mean", metadata=_help(
        "over messages: 'mean' (TeamTR) or 'quantile' at monitor_quantile (SAT)"))
    monitor_quantile: float = field(default=0.99, metadata=_help("1 - alpha of the quantile statistic, in (0, 1]"))
    holdout_fraction: float = field(default=0.0, metadata=_help(
        "share in [0, 1) of the agent's trajectories held out of the gradient steps and monitored"))
    enforce_on: Literal["train", "heldout", "both"] = field(default="train", metadata=_help(
        "messages the trust region is enforced on: 'train', 'heldout' or 'both' (both are always logged)"))
    enforce_every: Literal["step", "epoch"] = field(default="step", metadata=_help(
        "check the trust region after every 'step' or every 'epoch' (cheaper for large models)"))
    backtrack: Literal["retry", "line_search"] = field(default="retry", metadata=_help(
        "on a breach: 'retry' (undo, raise beta, retry the minibatch at a lower lr) or 'line_search' "
        "(halve the step along its direction; monitor passes only)"))
    backtrack_beta_factor: float = field(default=1.5, metadata=_help("beta is multiplied by this (>= 1) on a breach"))
    beta_floor: float = field(default=1e-4, metadata=_help("beta after a breach is at least this (>= 0)"))
    max_backtracks: int = field(default=5, metadata=_help(
        "consecutive rejected retries (or step halvings) before the update stops (>= 0)"))
    lr_backoff: float = field(default=0.5, metadata=_help(
        "retry learning rate = lr * lr_backoff ** consecutive rejections, in (0, 1]"))

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"UpdateConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise bad("epochs", "an int >= 1")
        if self.minibatch_size is not None and not (isinstance(self.minibatch_size, int) and self.minibatch_size >= 1):
            raise bad("minibatch_size", "an int >= 1 or None")
        if not (0.0 < self.clip_eps < 1.0):
            raise bad("clip_eps", "in (0, 1)")
        if self.ratio_level not in ("message", "token"):
            raise bad("ratio_level", "'message' or 'token'")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0):
            raise bad("max_grad_norm", "> 0 or None")
        if self.eval_batch_size is not None and not (isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1):
            raise bad("eval_batch_size", "an int >= 1 or None")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise bad("beta", "a finite number >= 0")
        if self.kl_target is not None and not (self.kl_target > 0 and math.isfinite(self.kl_target)):
            raise bad("kl_target", "a finite number > 0 or None")
        if not (self.kl_horizon > 0):
            raise bad("kl_horizon", "> 0")
        if self.penalty_estimator not in KL_ESTIMATORS:
            raise bad("penalty_estimator", f"one of {KL_ESTIMATORS}")
        if self.penalty_direction not in DIRECTIONS:
            raise bad("penalty_direction", f"one of {DIRECTIONS}")
        if not (self.delta > 0) or math.isnan(self.delta):
            raise bad("delta", "> 0 (math.inf disables the trust region)")
        if self.adaptive_beta and self.kl_target is None and math.isinf(self.delta):
            raise bad("kl_target", "set (> 0) when adaptive_beta is on and delta is infinite")
        if self.monitor_estimator not in MONITORS:
            raise bad("monitor_estimator", f"one of {MONITORS}")
        if self.monitor_direction not in DIRECTIONS:
            raise bad("monitor_direction", f"one of {DIRECTIONS}")
        if self.monitor_reduce not in ("sum", "mean"):
            raise bad("monitor_reduce", "'sum' or 'mean'")
        if self.monitor_statistic not in ("mean", "quantile"):
            raise bad("monitor_statistic", "'mean' or 'quantile'")
        if not (0.0 < self.monitor_quantile <= 1.0):
            raise bad("monitor_quantile", "in (0, 1]")
        if not (0.0 <= self.holdout_fraction < 1.0):
            raise bad("holdout_fraction", "in [0, 1)")
        if self.enforce_on not in ENFORCE_ON:
            raise bad("enforce_on", f"one of {ENFORCE_ON}")
        if self.enforce_on != "train" and self.holdout_fraction == 0.0:
            raise bad("enforce_on", "'train' when holdout_fraction is 0 (there are no held-out messages)")
        if self.enforce_every not in ("step", "epoch"):
            raise bad("enforce_every", "'step' or 'epoch'")
        if self.backtrack not in BACKTRACKS:
            raise bad("backtrack", f"one of {BACKTRACKS}")
        if not (self.backtrack_beta_factor >= 1.0 and math.isfinite(self.backtrack_beta_factor)):
            raise bad("backtrack_beta_factor", "a finite number >= 1")
        if not (self.beta_floor >= 0 and math.isfinite(self.beta_floor)):
            raise bad("beta_floor", "a finite number >= 0")
        if not (isinstance(self.max_backtracks, int) and self.max_backtracks >= 0):
            raise bad("max_backtracks", "an int >= 0")
        if not (0.0 < self.lr_backoff <= 1.0):
            raise bad("lr_backoff", "in (0, 1]")

    @property
    def target_kl(self) -> float:
        """The KL target of the adaptive-beta rule (``kl_target``, else ``delta``)."""
        return self.kl_target if self.kl_target is not None else self.delta


@dataclass
class UpdateReport:
    """What one agent update did (plain numbers; :meth:`to_dict` gives floats for JSONL).

    - ``agent``, ``position`` (0-based index i-1 in the stage order), ``stage`` (caller's counter).
    - ``n_messages``, ``n_trajectories``, ``n_tokens``: the agent's data in the update's batch;
      ``n_heldout``: messages of it held out of the gradient steps.
    - ``trajectories_generated``, ``tokens_generated``: rollout cost spent for this update's batch
      (0 when the batch was reused; set by ``run_stage``).
    - ``n_steps`` accepted optimizer steps, ``n_rejected`` rejected monitor checks (undone steps, or
      rejected lengths of a line search), ``n_monitor_passes``, ``stopped_early``.
    - ``beta_start``, ``beta_end``; ``delta``; ``monitor``: the monitor used ("exact" or k1|k2|k3;
      not in :meth:`to_dict`).
    - ``kl``: the monitored statistic on the enforced messages at the final parameters;
      ``kl_train``, ``kl_heldout`` (NaN without held-out messages) and ``kl_gap`` = heldout - train;
      ``kl_max_accepted``: the largest monitored KL among accepted checks; ``kl_monitor_quantile``
      (the monitor's per-message values at ``monitor_quantile``) and ``kl_monitor_max`` on the
      enforced messages.
    - On the final parameters and the training messages: ``kl_k1_mean``, ``kl_k3_mean`` (sampled
      reverse KL(pi_cur||pi_new), mean over messages of token sums), ``kl_forward_k3_mean``
      (sampled forward), and ``kl_exact_mean`` / ``kl_exact_forward_mean`` (exact; NaN for an agent
      without exact_kl).
    - ``loss_first``/``loss_last``: minibatch losses of the first and last accepted step (NaN if none).
    - ``surrogate_clipped``: mean_m(weight * min(wA, clip(w)A)) at the end; ``clip_fraction`` of
      messages whose ratio is outside [1-eps, 1+eps] at the end (training messages).
    - ``advantage_mean``, ``advantage_abs_mean``; IS ``weight_mean``, ``weight_min``, ``weight_max``.
    - ``certificate``: :class:`CertificateTerms` or None.
    """

    agent: int
    position: int = 0
    stage: int = 0
    n_messages: int = 0
    n_trajectories: int = 0
    n_tokens: int = 0
    n_heldout: int = 0
    trajectories_generated: int = 0
    tokens_generated: int = 0
    n_steps: int = 0
    n_rejected: int = 0
    n_monitor_passes: int = 0
    stopped_early: bool = False
    beta_start: float = 0.0
    beta_end: float = 0.0
    delta: float = math.inf
    monitor: str = ""
    kl: float = 0.0
    kl_train: float = 0.0
    kl_heldout: float = math.nan
    kl_gap: float = math.nan
    kl_max_accepted: float = 0.0
    kl_k1_mean: float = 0.0
    kl_k3_mean: float = 0.0
    kl_forward_k3_mean: float = 0.0
    kl_exact_mean: float = math.nan
    kl_exact_forward_mean: float = math.nan
    kl_monitor_quantile: float = 0.0
    kl_monitor_max: float = 0.0
    loss_first: float = math.nan
    loss_last: float = math.nan
    surrogate_clipped: float = 0.0
    clip_fraction: float = 0.0
    advantage_mean: float = 0.0
    advantage_abs_mean: float = 0.0
    weight_mean: float = 1.0
    weight_min: float = 1.0
    weight_max: float = 1.0
    certificate: CertificateTerms | None = field(default=None)

    def to_dict(self, prefix: bool = True) -> dict[str, float]:
        """Flat dict of floats; keys ``agent{j}/<name>`` (certificate terms ``agent{j}/cert/<name>``)
        when ``prefix``, else bare names."""
        d = asdict(self)
        cert = d.pop("certificate")
        out = {k: float(v) for k, v in d.items() if not isinstance(v, str)}
        if cert is not None:
            out.update({f"cert/{k}": float(v) for k, v in cert.items()})
        if prefix:
            out = {f"agent{self.agent}/{k}": v for k, v in out.items()}
        return out


# ---------------------------------------------------------------------------- state helpers
def _clone_tree(obj: Any) -> Any:
    """Copy of a (nested dict/list/tuple) state_dict with every tensor cloned; other leaves shared."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone_tree(v) for v in obj)
    return obj


def snapshot_state(agent: AgentPolicy, optimizer: torch.optim.Optimizer) -> tuple[Any, dict]:
    """(agent.snapshot(), tensor-cloned optimizer.state_dict())."""
    return agent.snapshot(), _clone_tree(optimizer.state_dict())


def restore_state(agent: AgentPolicy, optimizer: torch.optim.Optimizer, snap: tuple[Any, dict]) -> None:
    """Undo to a :func:`snapshot_state`: the agent's parameters and the optimizer state only."""
    agent.restore(snap[0])
    optimizer.load_state_dict(_clone_tree(snap[1]))


def check_optimizer(agent: AgentPolicy, optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError if the optimizer holds a parameter that is not the agent's."""
    own = {id(p) for p in agent.trainable_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in own:
                raise ValueError(
                    f"optimizer of agent {agent.agent_id} holds a parameter that is not in its trainable_parameters()"
                )


def eval_log_probs(agent: AgentPolicy, batch: MessageBatch, chunk: int | None = None) -> Tensor:
    """No-grad log-probs (M, T) of the batch's tokens on the CPU (whatever device the agent computes
    on), evaluated in chunks of ``chunk`` messages."""
    with torch.no_grad():
        if chunk is None or len(batch) <= chunk:
            return agent.log_probs(batch).detach().cpu()
        parts = [
            agent.log_probs(batch.select(torch.arange(s, min(s + chunk, len(batch))))).detach().cpu()
            for s in range(0, len(batch), chunk)
        ]
        return torch.cat(parts)


def adaptive_beta(beta: float, kl: float, target: float, n_steps: int, horizon: float) -> float:
    """Ziegler et al.: beta * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon)."""
    err = float(np.clip(kl / target - 1.0, -0.2, 0.2))
    return beta * (1.0 + err * n_steps / horizon)


# ---------------------------------------------------------------------------- the update
def minibatch_step(
    agent: AgentPolicy,
    optimizer: torch.optim.Optimizer,
    sub: MessageBatch,
    logp_cur: Tensor,
    advantages: Tensor,
    config: UpdateConfig,
    beta: float,
    weights: Tensor | None = None,
    params: list[Tensor] | None = None,
) -> float:
    """One optimizer step of :func:`update_agent` on the messages ``sub``; returns the loss.

    sub: M messages of the agent (T token slots); logp_cur: (M, T) update-start log-probs (the
    ratio's denominator); advantages: (M,); weights: optional (M,) importance weights. The agent
    may compute on an accelerator: the batch tensors are moved to its log-probs' device. Gradients
    are clipped to ``config.max_grad_norm`` over ``params`` (default: the agent's trainable ones).
    """
    logp_new = agent.log_probs(sub)  # (M, T), with grad
    dev = logp_new.device
    terms = surrogate_loss(
        logp_new,
        logp_cur.to(dev),
        sub.mask.to(dev),
        advantages.to(dev),
        clip_eps=config.clip_eps,
        beta=beta,
        ratio_level=config.ratio_level,
        weights=None if weights is None else weights.to(dev),
        kl_estimator=config.penalty_estimator,
        kl_direction=config.penalty_direction,
    )
    optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params if params is not None else list(agent.trainable_parameters()),
                                       config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(terms.loss.detach())


# ---------------------------------------------------------------------------- the monitor
def eval_exact_kl(agent: Any, batch: MessageBatch, reference: Any, direction: str) -> Tensor:
    """No-grad exact per-position KL (M, T) float64 on the CPU (``agent.exact_kl`` on the batch its
    ``reference`` was captured on; the agent chunks over positions), 0 on padding."""
    with torch.no_grad():
        kl = agent.exact_kl(batch, reference, direction).detach().cpu().to(torch.float64)
    return torch.where(batch.mask, kl, torch.zeros_like(kl))


class KLMonitor:
    """The trust-region monitor of one update: per-message KL (M,) of the agent's messages against
    pi_cur, and its statistic on the training / held-out / enforced messages.

    ``monitor``: "exact" (``agent.kl_reference`` captured here, at construction, i.e. at update
    start; ``agent.exact_kl`` at every measurement) or a sampled estimator k1|k2|k3 (no-grad
    log-probs of the batch's tokens against ``logp_cur``). ``train``/``heldout``: (M,) bool masks.
    """

    def __init__(self, agent: Any, batch: MessageBatch, logp_cur: Tensor, config: UpdateConfig, monitor: str,
                 train: Tensor, heldout: Tensor) -> None:
        self.agent, self.batch, self.logp_cur, self.config, self.monitor = agent, batch, logp_cur, config, monitor
        self.train, self.heldout = train, heldout
        self.exact_reference = agent.kl_reference(batch) if supports_exact_kl(agent) else None
        self.passes = 0

    def exact_per_message(self, direction: str) -> Tensor:
        """Exact per-message KL (M,) float64 (token sums or means per ``monitor_reduce``)."""
        kl = eval_exact_kl(self.agent, self.batch, self.exact_reference, direction)
        return per_message(kl, self.batch.mask, self.config.monitor_reduce)

    def per_message(self, logp_new: Tensor | None = None) -> Tensor:
        """The monitor's per-message KL (M,) float64 at the current parameters (one monitor pass;
        ``logp_new``: already computed no-grad log-probs for a sampled monitor)."""
        self.passes += 1
        c = self.config
        if self.monitor == "exact":
            return self.exact_per_message(c.monitor_direction)
        if logp_new is None:
            logp_new = eval_log_probs(self.agent, self.batch, c.eval_batch_size)
        return message_kl(logp_new, self.logp_cur, self.batch.mask, self.monitor, c.monitor_direction,
                          c.monitor_reduce).to(torch.float64)

    def statistic(self, per: Tensor, rows: Tensor) -> float:
        """The monitor statistic (mean or quantile over messages) of ``per`` on ``rows`` (NaN if none)."""
        if not bool(rows.any()):
            return math.nan
        return float(kl_statistic(per[rows], self.config.monitor_statistic, self.config.monitor_quantile))

    def enforced_rows(self) -> Tensor:
        """(M,) bool: the messages the trust region is enforced on."""
        on = self.config.enforce_on
        return self.train if on == "train" else self.heldout if on == "heldout" else self.train | self.heldout

    def enforced(self, per: Tensor) -> float:
        """The enforced KL: the statistic on the enforced messages (``"both"``: the larger of the
        training and the held-out statistic)."""
        if self.config.enforce_on == "both":
            return max(self.statistic(per, self.train), self.statistic(per, self.heldout))
        return self.statistic(per, self.enforced_rows())

    def measure(self) -> float:
        """One monitor pass: the enforced KL at the current parameters (NaN counts as a breach)."""
        return self.enforced(self.per_message())


def resolve_monitor(agent: Any, config: UpdateConfig) -> str:
    """The monitor an update uses: ``config.monitor_estimator``, except that "exact" on an agent
    without ``exact_kl`` falls back to :data:`FALLBACK_MONITOR` with a warning (recorded in
    ``UpdateReport.monitor``)."""
    if config.monitor_estimator != "exact" or supports_exact_kl(agent):
        return config.monitor_estimator
    warnings.warn(
        f"agent {getattr(agent, 'agent_id', '?')} ({type(agent).__name__}) offers no exact_kl: the trust region "
        f"falls back to the sampled {FALLBACK_MONITOR} estimate (biased low on the training batch); set "
        "update.monitor_estimator explicitly to silence this",
        stacklevel=3,
    )
    return FALLBACK_MONITOR


def holdout_split(batch: MessageBatch, fraction: float, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """(train (M,) bool, heldout (M,) bool): round(fraction * K) of the batch's K trajectories
    (at least 1 when fraction > 0 and K >= 2, always leaving one for training), drawn with ``rng``,
    are held out with all their messages. fraction = 0 holds out nothing (and draws nothing)."""
    m = len(batch)
    if fraction == 0.0:
        return torch.ones(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)
    ids = torch.unique(batch.trajectory)
    k = int(ids.numel())
    n_hold = min(max(int(round(fraction * k)), 1 if k >= 2 else 0), k - 1)
    held_ids = ids[torch.as_tensor(rng.permutation(k)[:n_hold], dtype=torch.int64)]
    heldout = torch.isin(batch.trajectory, held_ids)
    return ~heldout, heldout


# ---------------------------------------------------------------------------- the update, in three parts
@dataclass
class _UpdateData:
    """What the three parts of an update share (all on the CPU).

    ``batch`` (M messages), ``adv`` (Advantages, M), ``a_val`` (M,) float32, ``w_is`` (M,) or None,
    ``logp_cur`` (M, T) pi_cur log-probs, ``train`` / ``heldout`` (M,) bool, ``monitor``."""

    batch: MessageBatch
    adv: Advantages
    a_val: Tensor
    w_is: Tensor | None
    logp_cur: Tensor
    train: Tensor
    heldout: Tensor
    monitor: KLMonitor


def _set_lr_scale(optimizer: torch.optim.Optimizer, base_lrs: list[float], scale: float) -> None:
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["lr"] = lr * scale


def _line_search(params: list[Tensor], before: list[Tensor], monitor: KLMonitor, config: UpdateConfig,
                 report: UpdateReport) -> float | None:
    """After a breaching step: try theta_old + 2^-k (theta_new - theta_old), k = 1..max_backtracks;
    return the accepted KL (parameters left there) or None (parameters left at the last try)."""
    with torch.no_grad():
        after = [p.detach().clone() for p in params]
        for k in range(1, config.max_backtracks + 1):
            t = 0.5**k
            for p, b, a in zip(params, before, after):
                p.copy_(b + t * (a - b))
            kl_now = monitor.measure()
            if kl_now <= config.delta:
                return kl_now
            report.n_rejected += 1
    return None


def _step_units(data: _UpdateData, config: UpdateConfig, rng: np.random.Generator) -> Iterator[list[Tensor]]:
    """The units of work checked against the trust region, in order: per epoch a fresh shuffle of
    the training messages into minibatches (index tensors); one unit per minibatch
    (``enforce_every="step"``) or one unit of all of the epoch's minibatches (``"epoch"``)."""
    train_idx = torch.nonzero(data.train).squeeze(1)
    m_train = int(train_idx.numel())
    mb = config.minibatch_size or m_train
    for _ in range(config.epochs):
        perm = train_idx[torch.as_tensor(rng.permutation(m_train), dtype=torch.int64)]
        minibatches = [perm[s : s + mb] for s in range(0, m_train, mb)]
        yield from ([[b] for b in minibatches] if config.enforce_every == "step" else [minibatches])


@dataclass
class _StepState:
    """Mutable state of the steps of one update: the penalty ``beta`` and the count of consecutive
    rejected retries (which scales the retry learning rate)."""

    beta: float
    consecutive: int = 0


def _take_unit(agent: AgentPolicy, optimizer: torch.optim.Optimizer, unit: list[Tensor], data: _UpdateData,
               config: UpdateConfig, state: _StepState, base_lrs: list[float], report: UpdateReport) -> bool:
    """Take the steps of one unit, retried or shortened until inside the trust region; returns
    False when the update must stop (too many rejections; parameters and optimizer state are then
    as before the unit)."""
    enforce = math.isfinite(config.delta)
    params = list(agent.trainable_parameters())
    while True:
        snap = snapshot_state(agent, optimizer) if enforce else None
        before = [p.detach().clone() for p in params] if enforce and config.backtrack == "line_search" else None
        _set_lr_scale(optimizer, base_lrs, config.lr_backoff**state.consecutive)
        losses = [minibatch_step(agent, optimizer, data.batch.select(idx), data.logp_cur[idx], data.a_val[idx],
                                 config, state.beta, weights=None if data.w_is is None else data.w_is[idx],
                                 params=params) for idx in unit]
        if enforce:
            kl_now = data.monitor.measure()
            if not kl_now <= config.delta:  # NaN counts as a breach
                report.n_rejected += 1
                state.beta = max(state.beta * config.backtrack_beta_factor, config.beta_floor)
                if config.backtrack == "line_search":
                    kl_now = _line_search(params, before, data.monitor, config, report)
                    if kl_now is None:
                        restore_state(agent, optimizer, snap)
                        return False
                else:
                    restore_state(agent, optimizer, snap)
                    state.consecutive += 1
                    if state.consecutive > config.max_backtracks:
                        return False
                    continue
            report.kl_max_accepted = max(report.kl_max_accepted, kl_now)
        state.consecutive = 0
        report.n_steps += len(unit)
        if math.isnan(report.loss_first):
            report.loss_first = losses[0]
        report.loss_last = losses[-1]
        return True


def steps_within_region(
    agent: AgentPolicy,
    optimizer: torch.optim.Optimizer,
    data: _UpdateData,
    config: UpdateConfig,
    beta: float,
    rng: np.random.Generator,
    report: UpdateReport,
) -> float:
    """The optimizer steps of an update, each accepted only inside the trust region (module
    docstring, part 1); fills the step counters and losses of ``report``; returns the final beta.
    The learning rates are put back at the end, also after an exception."""
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    state = _StepState(beta=beta)
    try:
        report.stopped_early = not all(
            _take_unit(agent, optimizer, unit, data, config, state, base_lrs, report)
            for unit in _step_units(data, config, rng)
        )
    finally:
        _set_lr_scale(optimizer, base_lrs, 1.0)
    return state.beta


def update_diagnostics(agent: AgentPolicy, data: _UpdateData, config: UpdateConfig, beta: float,
                       report: UpdateReport) -> tuple[Tensor, Tensor, Tensor]:
    """Final measurements (module docstring, part 2) into ``report``, including the adaptive beta.
    Returns (unclipped weighted ratio objective (M_train,), clipped objective (M_train,), A (M_train,))
    for the certificate."""
    mon, batch, tr = data.monitor, data.batch, data.train
    logp_fin = eval_log_probs(agent, batch, config.eval_batch_size)
    per = mon.per_message(logp_fin)
    report.n_monitor_passes = mon.passes
    report.kl = mon.enforced(per)
    report.kl_train = mon.statistic(per, tr)
    report.kl_heldout = mon.statistic(per, data.heldout)
    report.kl_gap = report.kl_heldout - report.kl_train
    enforced = per[mon.enforced_rows()]
    report.kl_monitor_quantile = float(kl_statistic(enforced, "quantile", config.monitor_quantile))
    report.kl_monitor_max = float(enforced.max())
    lf, lc, mask = logp_fin[tr], data.logp_cur[tr], batch.mask[tr]
    report.kl_k1_mean = float(message_kl(lf, lc, mask, "k1", "reverse").to(torch.float64).mean())
    report.kl_k3_mean = float(message_kl(lf, lc, mask, "k3", "reverse").to(torch.float64).mean())
    report.kl_forward_k3_mean = float(message_kl(lf, lc, mask, "k3", "forward").to(torch.float64).mean())
    if mon.exact_reference is not None:
        for direction in DIRECTIONS:
            same = mon.monitor == "exact" and config.monitor_direction == direction and config.monitor_reduce == "sum"
            exact = per if same else per_message(eval_exact_kl(agent, batch, mon.exact_reference, direction), batch.mask)
            value = float(exact[tr].mean())
            if direction == "reverse":
                report.kl_exact_mean = value
            else:
                report.kl_exact_forward_mean = value
    if config.adaptive_beta:
        beta = adaptive_beta(beta, max(report.kl, 0.0), config.target_kl, int(tr.sum()), config.kl_horizon)
    report.beta_end = beta

    a_val = data.a_val[tr]
    w_is = None if data.w_is is None else data.w_is[tr]
    w = message_ratio(lf, lc, mask).to(torch.float64)
    c = torch.ones(len(a_val), dtype=torch.float64) if w_is is None else w_is.to(torch.float64)
    a64 = a_val.to(torch.float64)
    obj, clipped = clipped_message_objective(lf, lc, mask, a_val, config.clip_eps, w_is)
    report.surrogate_clipped = float(obj.to(torch.float64).mean())
    report.clip_fraction = float(clipped.to(torch.float64).mean())
    report.advantage_mean = float(a64.mean())
    report.advantage_abs_mean = float(a64.abs().mean())
    report.weight_mean, report.weight_min, report.weight_max = float(c.mean()), float(c.min()), float(c.max())
    return c * w * a64, obj.to(torch.float64), a64


def update_certificate(data: _UpdateData, report: UpdateReport, unclipped_obj: Tensor, obj: Tensor, a64: Tensor,
                       certificate: CertificateConfig, a_max: float | None, n_agents: int) -> CertificateTerms:
    """The certificate terms of the update (module docstring, part 3) on its training messages."""
    amax = certificate.a_max if certificate.a_max is not None else a_max
    if amax is None or not math.isfinite(amax):
        raise ValueError("certificate terms need a finite A_max: set CertificateConfig.a_max or a finite a_clip")
    adv = data.adv.select(data.train)
    zeta_clip = float((adv.unclipped.to(torch.float64) - a64).abs().mean())
    zeta_ratio = float((unclipped_obj.mean() - obj.mean()).abs())
    loo = adv.raw_loo.to(torch.float64)
    dev = (adv.unclipped.to(torch.float64) - loo).abs()
    zeta_norm = float(torch.where(torch.isfinite(loo), dev, torch.zeros_like(dev)).mean())
    return certificate_terms(
        mean_weighted_ratio_advantage=float(unclipped_obj.mean()),
        kl=report.kl,
        kl_exact=report.monitor == "exact",
        zeta_clip=zeta_clip,
        zeta_ratio=zeta_ratio,
        zeta_norm=zeta_norm,
        n_agents=n_agents,
        n_trajectories=data.batch.select(data.train).num_trajectories,
        a_max=float(amax),
        config=certificate,
    )


def update_agent(
    agent: AgentPolicy,
    optimizer: torch.optim.Optimizer,
    batch: MessageBatch,
    advantages: Advantages | Tensor,
    config: UpdateConfig,
    *,
    beta: float | None = None,
    weights: Tensor | None = None,
    rng: np.random.Generator | None = None,
    certificate: CertificateConfig | None = None,
    a_max: float | None = None,
    n_agents: int = 1,
    position: int = 0,
    stage: int = 0,
) -> UpdateReport:
    """Train ``agent`` on its own messages inside the trust region; see the module docstring
    (steps within the region, diagnostics, certificate).

    Args:
        batch: the agent's messages only (M rows, all ``batch.agent == agent.agent_id``).
        advantages: (M,) tensor or :class:`Advantages` aligned with ``batch``.
        beta: penalty coefficient to start from (None: ``config.beta``).
        weights: optional (M,) per-message importance weights multiplying the objective (stale_is /
            stale_happo); not applied to the KL monitor or penalty.
        rng: minibatch shuffling and the held-out draw (None: a fresh ``np.random.default_rng(0)``).
        certificate, a_max, n_agents: when ``certificate`` is given, certificate terms are computed
            with A_max = ``certificate.a_max`` or else ``a_max``.
    Returns: :class:`UpdateReport`.
    """
    if len(batch) == 0:
        raise ValueError("update_agent needs at least one message of the agent")
    if bool((batch.agent != agent.agent_id).any()):
        raise ValueError(f"update_agent: batch holds messages of agents other than {agent.agent_id}")
    adv = advantages if isinstance(advantages, Advantages) else Advantages(
        advantages, advantages, torch.full_like(advantages, math.nan), torch.ones(len(batch), dtype=torch.bool)
    )
    if adv.value.shape != (len(batch),):
        raise ValueError(f"advantages must have shape ({len(batch)},), got {tuple(adv.value.shape)}")
    if weights is not None and weights.shape != (len(batch),):
        raise ValueError(f"weights must have shape ({len(batch)},), got {tuple(weights.shape)}")
    check_optimizer(agent, optimizer)
    rng = rng if rng is not None else np.random.default_rng(0)
    beta = config.beta if beta is None else float(beta)
    monitor_name = resolve_monitor(agent, config)
    logp_cur = eval_log_probs(agent, batch, config.eval_batch_size) if config.recompute_behaviour_logp else (
        batch.behaviour_logp.detach().cpu()
    )
    batch = batch.to("cpu")
    train, heldout = holdout_split(batch, config.holdout_fraction, rng)
    data = _UpdateData(
        batch=batch,
        adv=adv,
        a_val=adv.value.to(torch.float32).cpu(),
        w_is=None if weights is None else weights.to(torch.float32).cpu(),
        logp_cur=logp_cur,
        train=train,
        heldout=heldout,
        monitor=KLMonitor(agent, batch, logp_cur, config, monitor_name, train, heldout),
    )
    report = UpdateReport(
        agent=agent.agent_id,
        position=position,
        stage=stage,
        n_messages=len(batch),
        n_trajectories=batch.num_trajectories,
        n_tokens=batch.num_tokens,
        n_heldout=int(heldout.sum()),
        beta_start=beta,
        delta=config.delta,
        monitor=monitor_name,
    )
    beta = steps_within_region(agent, optimizer, data, config, beta, rng, report)
    unclipped_obj, obj, a64 = update_diagnostics(agent, data, config, beta, report)
    if certificate is not None:
        report.certificate = update_certificate(data, report, unclipped_obj, obj, a64, certificate, a_max, n_agents)
    return report
