"""Update one agent inside its trust region (TeamTR Algorithm 1 line "update until d_KL <= delta";
SAT's backtracking rule).

What :func:`update_agent` does, exactly:

1. pi_cur log-probs of the agent's messages are fixed at update start (recomputed with the agent
   under ``torch.no_grad`` unless ``recompute_behaviour_logp=False``, then ``batch.behaviour_logp``).
2. ``epochs`` passes; each shuffles the messages (with ``rng``) into minibatches of
   ``minibatch_size`` messages and takes one optimizer step per minibatch on the loss of
   :func:`trust_region.objective.surrogate_loss` (clipped surrogate + beta * KL penalty).
3. Trust region (``delta`` finite): after each step (``enforce_every="step"``) or each epoch
   (``"epoch"``) the monitored KL is measured on *all* the agent's messages of the batch against the
   update-start log-probs: per message the token-decomposed sum (or mean) of the ``monitor_estimator``
   in ``monitor_direction`` (TeamTR: k1, reverse, eq. 11), then over messages the mean (TeamTR) or the
   ``monitor_quantile`` quantile (SAT). If it exceeds ``delta`` the step is undone: the agent's
   parameters are put back with ``agent.restore(agent.snapshot())`` taken before the step and the
   optimizer's state with ``optimizer.load_state_dict`` of a tensor-cloned ``state_dict`` (nothing
   else is copied); beta is raised (``beta = max(beta * backtrack_beta_factor, beta_floor)``) and the
   learning rate of the retry is scaled by ``lr_backoff ** consecutive_rejections`` (1.0 disables
   this; the learning rates are put back at the end of the update). The same minibatch is retried;
   after ``max_backtracks`` consecutive rejected retries (``max_backtracks + 1`` tries) the update
   stops early. Every accepted state therefore satisfies monitored KL <= delta. ``delta = inf``
   disables enforcement (no snapshots, no measurements during the update).
4. Adaptive beta (Ziegler et al. 2019, verl's ``AdaptiveKLController``), once at the end of the
   update with the final monitored KL and n_steps = number of the agent's messages (samples):
   ``beta *= 1 + clip(KL / kl_target - 1, -0.2, 0.2) * n_steps / kl_horizon``.

Devices: the MessageBatch, the advantages and all measurements live on the CPU; the agent may
compute on any device (an LLM on a GPU): for the loss the minibatch's tensors are moved to the device
of ``agent.log_probs``' output, and no-grad log-probs are brought back to the CPU.

Cost: a finite ``delta`` with ``enforce_every="step"`` snapshots the agent's trainable parameters and
the optimizer state (cloned tensors) before every step and runs a no-grad log-prob pass over all the
agent's messages after it; ``enforce_every="epoch"`` does both once per epoch.

The returned :class:`UpdateReport` carries the final beta, which the caller passes to the next update
of the same agent (``run_stage`` does this through ``StageReport.betas``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from trust_region.advantage import Advantages
from trust_region.batch import MessageBatch
from trust_region.certificate import CertificateConfig, CertificateTerms, certificate_terms
from trust_region.kl import DIRECTIONS, ESTIMATORS, kl_statistic, message_kl
from trust_region.objective import clipped_message_objective, message_ratio, surrogate_loss
from trust_region.interfaces import AgentPolicy


@dataclass(frozen=True)
class UpdateConfig:
    """Settings of one agent update (defaults: TeamTR where reported, else SAT's code).

    Optimisation
    - ``epochs`` >= 1: passes over the agent's messages.
    - ``minibatch_size``: messages per optimizer step (>= 1); None = the whole batch.
    - ``clip_eps`` in (0, 1): PPO ratio clip (0.2).
    - ``ratio_level``: ``"message"`` (product of the message's token ratios; TeamTR/SAT) or ``"token"``.
    - ``max_grad_norm``: gradient-norm clip (> 0) or None.
    - ``recompute_behaviour_logp``: recompute pi_cur log-probs with the agent at update start (True)
      or use ``batch.behaviour_logp`` (False).
    - ``eval_batch_size``: messages per no-grad log-prob evaluation (KL measurements); None = all.

    KL penalty
    - ``beta`` >= 0: initial penalty coefficient (SAT code 0.001); ``adaptive_beta``: Ziegler's rule
      with ``kl_target`` (> 0; None = ``delta``) and ``kl_horizon`` (> 0, in samples = messages).
    - ``penalty_estimator`` (k1|k2|k3) and ``penalty_direction`` (``"reverse"`` = KL(pi_cur||pi_new),
      ``"forward"`` = KL(pi_new||pi_cur) as in SAT's paper).

    Trust region
    - ``delta`` > 0: radius; ``math.inf`` disables enforcement (the "no TR" baseline).
    - ``monitor_estimator`` (k1|k2|k3; TeamTR eq. 11 is k1), ``monitor_direction`` (reverse|forward),
      ``monitor_reduce`` (``"sum"`` over a message's tokens, TeamTR; ``"mean"``, SAT's code),
      ``monitor_statistic`` (``"mean"`` over messages, TeamTR; ``"quantile"``, SAT) with
      ``monitor_quantile`` = 1 - alpha in (0, 1].
    - ``enforce_every``: ``"step"`` or ``"epoch"`` (cheaper for large models).
    - ``backtrack_beta_factor`` >= 1 (1.5), ``beta_floor`` >= 0 (beta after a breach is at least this),
      ``max_backtracks`` >= 0 (5), ``lr_backoff`` in (0, 1].
    """

    epochs: int = 1
    minibatch_size: int | None = None
    clip_eps: float = 0.2
    ratio_level: Literal["message", "token"] = "message"
    max_grad_norm: float | None = 1.0
    recompute_behaviour_logp: bool = True
    eval_batch_size: int | None = None
    beta: float = 0.001
    adaptive_beta: bool = True
    kl_target: float | None = None
    kl_horizon: float = 10000.0
    penalty_estimator: Literal["k1", "k2", "k3"] = "k3"
    penalty_direction: Literal["reverse", "forward"] = "reverse"
    delta: float = 0.01
    monitor_estimator: Literal["k1", "k2", "k3"] = "k1"
    monitor_direction: Literal["reverse", "forward"] = "reverse"
    monitor_reduce: Literal["sum", "mean"] = "sum"
    monitor_statistic: Literal["mean", "quantile"] = "mean"
    monitor_quantile: float = 0.99
    enforce_every: Literal["step", "epoch"] = "step"
    backtrack_beta_factor: float = 1.5
    beta_floor: float = 1e-4
    max_backtracks: int = 5
    lr_backoff: float = 0.5

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
        if self.penalty_estimator not in ESTIMATORS:
            raise bad("penalty_estimator", f"one of {ESTIMATORS}")
        if self.penalty_direction not in DIRECTIONS:
            raise bad("penalty_direction", f"one of {DIRECTIONS}")
        if not (self.delta > 0) or math.isnan(self.delta):
            raise bad("delta", "> 0 (math.inf disables the trust region)")
        if self.adaptive_beta and self.kl_target is None and math.isinf(self.delta):
            raise bad("kl_target", "set (> 0) when adaptive_beta is on and delta is infinite")
        if self.monitor_estimator not in ESTIMATORS:
            raise bad("monitor_estimator", f"one of {ESTIMATORS}")
        if self.monitor_direction not in DIRECTIONS:
            raise bad("monitor_direction", f"one of {DIRECTIONS}")
        if self.monitor_reduce not in ("sum", "mean"):
            raise bad("monitor_reduce", "'sum' or 'mean'")
        if self.monitor_statistic not in ("mean", "quantile"):
            raise bad("monitor_statistic", "'mean' or 'quantile'")
        if not (0.0 < self.monitor_quantile <= 1.0):
            raise bad("monitor_quantile", "in (0, 1]")
        if self.enforce_every not in ("step", "epoch"):
            raise bad("enforce_every", "'step' or 'epoch'")
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
    - ``n_messages``, ``n_trajectories``, ``n_tokens``: the agent's data in the update's batch.
    - ``trajectories_generated``, ``tokens_generated``: rollout cost spent for this update's batch
      (0 when the batch was reused; set by ``run_stage``).
    - ``n_steps`` accepted optimizer steps, ``n_rejected`` undone steps, ``stopped_early``.
    - ``beta_start``, ``beta_end``; ``delta``.
    - ``kl``: the monitored statistic (UpdateConfig's estimator/direction/statistic) of the final
      parameters; ``kl_max_accepted``: the largest monitored KL among accepted checks; also, on the
      final parameters, ``kl_k1_mean`` and ``kl_k3_mean`` (reverse KL(pi_cur||pi_new), mean over
      messages of token sums), ``kl_forward_k3_mean`` (forward KL(pi_new||pi_cur)),
      ``kl_monitor_quantile`` (the monitor's per-message values at ``monitor_quantile``) and
      ``kl_monitor_max``.
    - ``loss_first``/``loss_last``: minibatch losses of the first and last accepted step (NaN if none).
    - ``surrogate_clipped``: mean_m(weight * min(wA, clip(w)A)) at the end; ``clip_fraction`` of
      messages whose ratio is outside [1-eps, 1+eps] at the end.
    - ``advantage_mean``, ``advantage_abs_mean``; IS ``weight_mean``, ``weight_min``, ``weight_max``.
    - ``certificate``: :class:`CertificateTerms` or None.
    """

    agent: int
    position: int = 0
    stage: int = 0
    n_messages: int = 0
    n_trajectories: int = 0
    n_tokens: int = 0
    trajectories_generated: int = 0
    tokens_generated: int = 0
    n_steps: int = 0
    n_rejected: int = 0
    stopped_early: bool = False
    beta_start: float = 0.0
    beta_end: float = 0.0
    delta: float = math.inf
    kl: float = 0.0
    kl_max_accepted: float = 0.0
    kl_k1_mean: float = 0.0
    kl_k3_mean: float = 0.0
    kl_forward_k3_mean: float = 0.0
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
        out = {k: float(v) for k, v in d.items()}
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
    """Train ``agent`` on its own messages inside the trust region; see the module docstring.

    Args:
        batch: the agent's messages only (M rows, all ``batch.agent == agent.agent_id``).
        advantages: (M,) tensor or :class:`Advantages` aligned with ``batch``.
        beta: penalty coefficient to start from (None: ``config.beta``).
        weights: optional (M,) per-message importance weights multiplying the objective (stale_is /
            stale_happo); not applied to the KL monitor or penalty.
        rng: minibatch shuffling (None: a fresh ``np.random.default_rng(0)``).
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
    m = len(batch)
    mask = batch.mask
    a_val = adv.value.to(torch.float32)
    w_is = None if weights is None else weights.to(torch.float32)

    logp_cur = eval_log_probs(agent, batch, config.eval_batch_size) if config.recompute_behaviour_logp else (
        batch.behaviour_logp.detach().cpu()
    )
    mask = mask.cpu()
    a_val = a_val.cpu()
    w_is = None if w_is is None else w_is.cpu()

    def monitor(logp_new: Tensor) -> tuple[float, Tensor]:
        per = message_kl(
            logp_new, logp_cur, mask, config.monitor_estimator, config.monitor_direction, config.monitor_reduce
        )
        return float(kl_statistic(per, config.monitor_statistic, config.monitor_quantile)), per

    report = UpdateReport(
        agent=agent.agent_id,
        position=position,
        stage=stage,
        n_messages=m,
        n_trajectories=batch.num_trajectories,
        n_tokens=batch.num_tokens,
        beta_start=beta,
        delta=config.delta,
    )
    enforce = math.isfinite(config.delta)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    mb = config.minibatch_size or m
    params = list(agent.trainable_parameters())

    def one_step(idx: Tensor, beta_now: float) -> float:
        return minibatch_step(agent, optimizer, batch.select(idx), logp_cur[idx], a_val[idx], config, beta_now,
                              weights=None if w_is is None else w_is[idx], params=params)

    consecutive = 0
    stopped = False
    try:
        for _ in range(config.epochs):
            perm = torch.as_tensor(rng.permutation(m), dtype=torch.int64)
            minibatches = [perm[s : s + mb] for s in range(0, m, mb)]
            units = [[b] for b in minibatches] if config.enforce_every == "step" else [minibatches]
            for unit in units:
                while True:
                    snap = snapshot_state(agent, optimizer) if enforce else None
                    scale = config.lr_backoff**consecutive
                    for g, lr in zip(optimizer.param_groups, base_lrs):
                        g["lr"] = lr * scale
                    losses = [one_step(idx, beta) for idx in unit]
                    if enforce:
                        kl_now, _ = monitor(eval_log_probs(agent, batch, config.eval_batch_size))
                        if not kl_now <= config.delta:  # NaN counts as a breach
                            restore_state(agent, optimizer, snap)
                            report.n_rejected += 1
                            consecutive += 1
                            beta = max(beta * config.backtrack_beta_factor, config.beta_floor)
                            if consecutive > config.max_backtracks:
                                stopped = True
                                break
                            continue
                        report.kl_max_accepted = max(report.kl_max_accepted, kl_now)
                    consecutive = 0
                    report.n_steps += len(unit)
                    if math.isnan(report.loss_first):
                        report.loss_first = losses[0]
                    report.loss_last = losses[-1]
                    break
                if stopped:
                    break
            if stopped:
                break
    finally:
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr
    report.stopped_early = stopped

    # ---- final measurements
    logp_fin = eval_log_probs(agent, batch, config.eval_batch_size)
    kl_fin, per = monitor(logp_fin)
    report.kl = kl_fin
    report.kl_monitor_quantile = float(kl_statistic(per, "quantile", config.monitor_quantile))
    report.kl_monitor_max = float(per.max())
    report.kl_k1_mean = float(message_kl(logp_fin, logp_cur, mask, "k1", "reverse").to(torch.float64).mean())
    report.kl_k3_mean = float(message_kl(logp_fin, logp_cur, mask, "k3", "reverse").to(torch.float64).mean())
    report.kl_forward_k3_mean = float(message_kl(logp_fin, logp_cur, mask, "k3", "forward").to(torch.float64).mean())
    if config.adaptive_beta:
        beta = adaptive_beta(beta, max(kl_fin, 0.0), config.target_kl, m, config.kl_horizon)
    report.beta_end = beta

    w = message_ratio(logp_fin, logp_cur, mask).to(torch.float64)
    c = torch.ones(m, dtype=torch.float64) if w_is is None else w_is.to(torch.float64)
    a64 = a_val.to(torch.float64)
    obj, clipped = clipped_message_objective(logp_fin, logp_cur, mask, a_val, config.clip_eps, w_is)
    unclipped_obj = c * w * a64
    report.surrogate_clipped = float(obj.to(torch.float64).mean())
    report.clip_fraction = float(clipped.to(torch.float64).mean())
    report.advantage_mean = float(a64.mean())
    report.advantage_abs_mean = float(a64.abs().mean())
    report.weight_mean, report.weight_min, report.weight_max = float(c.mean()), float(c.min()), float(c.max())

    if certificate is not None:
        amax = certificate.a_max if certificate.a_max is not None else a_max
        if amax is None or not math.isfinite(amax):
            raise ValueError("certificate terms need a finite A_max: set CertificateConfig.a_max or a finite a_clip")
        zeta_clip = float((adv.unclipped.to(torch.float64) - a64).abs().mean())
        zeta_ratio = float((unclipped_obj.mean() - obj.to(torch.float64).mean()).abs())
        loo = adv.raw_loo.to(torch.float64)
        dev = (adv.unclipped.to(torch.float64) - loo).abs()
        zeta_norm = float(torch.where(torch.isfinite(loo), dev, torch.zeros_like(dev)).mean())
        report.certificate = certificate_terms(
            mean_weighted_ratio_advantage=float(unclipped_obj.mean()),
            kl=kl_fin,
            zeta_clip=zeta_clip,
            zeta_ratio=zeta_ratio,
            zeta_norm=zeta_norm,
            n_agents=n_agents,
            n_trajectories=report.n_trajectories,
            a_max=float(amax),
            config=certificate,
        )
    return report
