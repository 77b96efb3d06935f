"""Decoding-time Stage-0 projection: geometric mixing of next-token distributions (THEORY.md
section 5; SAT eq. (18)-(19), option (a) of papers.md B.5).

Per prefix (= per state of the token-level MDP) the replacement's next-token distribution p_pre and
the incumbent's p_inc (both at the sampling temperature T) are mixed geometrically,

    p_t(v) proportional to p_pre(v)^t p_inc(v)^(1 - t),   t = 1 / (1 + lambda) in [0, 1],

with the largest t such that KL(p_t || p_inc) <= delta_0 (t = 1, lambda = 0, when p_pre is already
inside). KL(p_t || p_inc) is non-decreasing in t (its derivative is t Var_{p_t}(log p_pre - log
p_inc)), so t is found by bisection, vectorised over the batch: this is the exact per-state
projection of :func:`occupancy.projection.geometric_projection`, for rows of a vocabulary-sized
table. Both models must share the vocabulary (the same tokenizer); ids beyond the smaller of the
two logit widths (padding rows of an embedding matrix) are dropped.

- :func:`geometric_mix` (pure function on log-probabilities (B, V)).
- :class:`GeometricMixLogitsProcessor`: a ``transformers`` LogitsProcessor for ``model.generate``
  of the replacement model; at every step it runs the incumbent on the same prefixes, mixes, and
  returns ``T * log p_mix`` so that a temperature-T warper placed after it samples exactly from
  p_mix (with temperature 1 in ``generate`` it returns ``log p_mix`` directly if built with
  ``output_scale=1``).
- :class:`MixingBackend`: a generation backend (the :class:`llm.rollout.base.GenerationBackend`
  protocol) that serves agent j by mixed decoding and every other agent through a base backend, so
  the evaluation harness and the team sampler can run a team whose agent j is the mixture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor

from llm.rollout.base import Generation, SamplingConfig
from llm.rollout.hf import generate_in_chunks, generate_messages
from llm.tokens import position_ids


@dataclass(frozen=True)
class MixResult:
    """Outcome of :func:`geometric_mix` for B rows: ``logp`` (B, V) log p_mix, ``t`` (B,) the
    exponent of p_pre (1 = lambda 0), ``lam`` (B,) = 1/t - 1 (inf where t = 0), ``kl`` (B,)
    KL(p_mix || p_inc), ``kl_pre`` (B,) KL(p_pre || p_inc)."""

    logp: Tensor
    t: Tensor
    lam: Tensor
    kl: Tensor
    kl_pre: Tensor


def _kl_rows(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) per row (B,) from log-probabilities (B, V) (float64 inside)."""
    p = logp.exp()
    return (p * (logp - logq)).sum(-1).clamp(min=0.0)


def _mix(logp_pre: Tensor, logp_inc: Tensor, t: Tensor) -> Tensor:
    return torch.log_softmax(t[:, None] * logp_pre + (1.0 - t[:, None]) * logp_inc, dim=-1)


@torch.no_grad()
def geometric_mix(logp_pre: Tensor, logp_inc: Tensor, delta0: float, iters: int = 50) -> MixResult:
    """Project p_pre onto {q : KL(q || p_inc) <= delta0} along the geometric path, per row.

    Args:
        logp_pre, logp_inc: log-probabilities (B, V) of the replacement and the incumbent (finite).
        delta0: radius >= 0.
        iters: bisection steps on t in [0, 1] (the interval shrinks by 2^-iters; the returned t is
            the feasible end, so KL <= delta0 always holds).
    """
    if logp_pre.shape != logp_inc.shape or logp_pre.dim() != 2:
        raise ValueError(f"geometric_mix: log-prob tables must both be (B, V), got {tuple(logp_pre.shape)} and "
                         f"{tuple(logp_inc.shape)}")
    if not delta0 >= 0:
        raise ValueError(f"geometric_mix: delta0 must be >= 0, got {delta0}")
    dtype = logp_pre.dtype
    a = torch.log_softmax(logp_pre.double(), -1)
    b = torch.log_softmax(logp_inc.double(), -1)
    kl_pre = _kl_rows(a, b)
    inside = kl_pre <= delta0
    lo = torch.zeros_like(kl_pre)  # feasible end (t = 0 gives p_inc, KL 0)
    hi = torch.ones_like(kl_pre)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        ok = _kl_rows(_mix(a, b, mid), b) <= delta0
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    t = torch.where(inside, torch.ones_like(lo), lo)
    logp = _mix(a, b, t)
    lam = torch.where(t > 0, 1.0 / t - 1.0, torch.full_like(t, float("inf")))
    return MixResult(logp.to(dtype), t, lam, _kl_rows(logp, b), kl_pre)


@dataclass
class MixStats:
    """Running statistics of a processor: per generated position t, lambda and the KLs."""

    t: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    kl_pre: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        if not self.t:
            return {"positions": 0}
        t = torch.tensor(self.t, dtype=torch.float64)
        return {"positions": len(self.t), "active_share": float((t < 1).float().mean()),
                "t_mean": float(t.mean()), "kl_mix_mean": float(torch.tensor(self.kl, dtype=torch.float64).mean()),
                "kl_mix_max": float(torch.tensor(self.kl, dtype=torch.float64).max()),
                "kl_pre_mean": float(torch.tensor(self.kl_pre, dtype=torch.float64).mean())}


class GeometricMixLogitsProcessor:
    """LogitsProcessor: replace the replacement model's scores by the projected mixture.

    Args:
        incumbent: the incumbent causal LM (evaluated on the same prefixes, no KV cache: one
            forward pass over the whole prefix per step, ``logits_to_keep=1``).
        attention_mask: (B, W) mask of the left-padded prompts passed to ``generate``.
        delta0: per-token radius of KL(p_mix || p_inc).
        temperature: T of both policies (p = softmax(logits / T)).
        output_scale: the returned scores are ``output_scale * log p_mix``; use T when a
            temperature-T warper follows, 1 when sampling at temperature 1.
        iters: bisection steps.
        eos_ids: end-of-message ids; rows that already emitted one are left out of ``stats``.
    """

    def __init__(self, incumbent: torch.nn.Module, attention_mask: Tensor, delta0: float, temperature: float,
                 output_scale: float = 1.0, iters: int = 50, eos_ids: Sequence[int] = ()) -> None:
        if not temperature > 0:
            raise ValueError(f"GeometricMixLogitsProcessor.temperature must be > 0, got {temperature}")
        self.incumbent = incumbent
        self.prompt_mask = attention_mask
        self.delta0 = float(delta0)
        self.temperature = float(temperature)
        self.output_scale = float(output_scale)
        self.iters = iters
        self.eos_ids = torch.tensor(list(eos_ids), dtype=torch.long)
        self.stats = MixStats()

    @torch.no_grad()
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        b, w = input_ids.shape
        extra = w - self.prompt_mask.shape[1]
        mask = torch.cat([self.prompt_mask.to(input_ids.device),
                          torch.ones((b, extra), dtype=self.prompt_mask.dtype, device=input_ids.device)], dim=1)
        dev = next(self.incumbent.parameters()).device
        inc = self.incumbent(input_ids=input_ids.to(dev), attention_mask=mask.to(dev),
                             position_ids=position_ids(mask).to(dev), use_cache=False, logits_to_keep=1).logits[:, -1]
        v = min(inc.shape[-1], scores.shape[-1])
        logp_pre = torch.log_softmax(scores[:, :v].float() / self.temperature, -1)
        logp_inc = torch.log_softmax(inc[:, :v].float().to(scores.device) / self.temperature, -1)
        res = geometric_mix(logp_pre, logp_inc, self.delta0, self.iters)
        live = ~torch.isin(input_ids[:, self.prompt_mask.shape[1]:].cpu(), self.eos_ids).any(dim=1)
        self.stats.t += res.t[live].tolist()  # statistics of unfinished rows only
        self.stats.kl += res.kl[live].tolist()
        self.stats.kl_pre += res.kl_pre[live].tolist()
        out = torch.full_like(scores, float("-inf"))
        out[:, :v] = self.output_scale * res.logp.to(scores.dtype)
        return out


class MixingBackend:
    """Serve agent ``agent`` by geometric mixing of ``replacement`` (sampled) and ``incumbent``;
    every other agent through ``base`` (e.g. an :class:`llm.rollout.hf.HFBackend`).

    ``eos_ids`` and ``pad_id``: the replaced agent's end-of-message ids and padding id (shared by the
    two models, which must have the same tokenizer). Log-probs of the returned generations are those
    of the mixture (the sampling distribution).
    """

    def __init__(self, base, agent: int, replacement: torch.nn.Module, incumbent: torch.nn.Module,
                 eos_ids: Sequence[int], pad_id: int, delta0: float, iters: int = 50, batch_size: int = 16) -> None:
        self.base = base
        self.agent = int(agent)
        self.replacement = replacement
        self.incumbent = incumbent
        self.eos_ids = list(eos_ids)
        self.pad_id = int(pad_id)
        self.delta0 = float(delta0)
        self.iters = iters
        self.batch_size = batch_size
        self.stats = MixStats()

    def generate(self, agent: int, prompts: list[list[int]], sampling: SamplingConfig,
                 seed: int | None = None) -> list[Generation]:
        if agent != self.agent:
            return self.base.generate(agent, prompts, sampling, seed=seed)
        if sampling.top_p < 1.0:
            raise ValueError("MixingBackend: top_p < 1 is not supported (the projection is of the full distribution)")
        return generate_in_chunks(self.replacement, prompts, self.batch_size, seed,
                                  lambda chunk: self._chunk(chunk, sampling))

    def _chunk(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[Generation]:
        mixers: list[GeometricMixLogitsProcessor] = []

        def processors(attention: Tensor) -> list[GeometricMixLogitsProcessor]:
            mixers.append(GeometricMixLogitsProcessor(self.incumbent, attention, self.delta0, sampling.temperature,
                                                      output_scale=sampling.temperature, iters=self.iters,
                                                      eos_ids=self.eos_ids))
            return mixers

        gens = generate_messages(self.replacement, prompts, self.pad_id, self.eos_ids,
                                 SamplingConfig(sampling.max_new_tokens, sampling.temperature, 1.0),
                                 extra_processors=processors)
        self.stats.t += mixers[0].stats.t
        self.stats.kl += mixers[0].stats.kl
        self.stats.kl_pre += mixers[0].stats.kl_pre
        return gens

    def update_weights(self, agent: int, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        if agent != self.agent:
            self.base.update_weights(agent, named_tensors)


__all__ = ["MixResult", "geometric_mix", "GeometricMixLogitsProcessor", "MixingBackend", "MixStats"]
