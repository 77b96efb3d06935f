"""Generation with transformers ``generate``: batched, left padded, temperature / top-p sampling.

The backend serves every agent of a team with the agent's own model (heterogeneous models and
tokenizers are fine: prompts and outputs are token ids in the agent's tokenizer). Because the
models are the very objects the trainer updates, :meth:`HFBackend.update_weights` has nothing to do.

Sampling is done by one logits processor of ours (temperature, then nucleus filtering) while the
library's own warpers are switched off, so the log-prob reported for a sampled token is exactly the
log-prob under the distribution it was drawn from: ``log_softmax(top_p(logits / T))``. The
processor keeps one (B, V) row of log-probs at a time (memory O(B V), not O(B V T)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor
from transformers import GenerationConfig

from llm.rollout.base import Generation, SamplingConfig
from llm.tokens import left_pad


def apply_temperature_top_p(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """Sampling logits: ``logits / T`` with tokens outside the top-p nucleus set to -inf.

    logits: (B, V) -> (B, V). The most likely token is always kept.
    """
    scores = logits.float() / temperature
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    probs = torch.softmax(sorted_scores, dim=-1)
    # mass strictly before each token; a token is kept while that mass is < top_p
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


class _RecordingWarper:
    """Logits processor: applies temperature/top-p and records the log-prob of each sampled token.

    At step t it stores ``log_softmax`` of the processed scores (B, V); at step t+1 the token drawn
    at step t is the last column of ``input_ids`` and its log-prob is gathered. The last token's
    log-prob is gathered by :meth:`finish`.
    """

    def __init__(self, temperature: float, top_p: float) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self._last: Tensor | None = None
        self.logprobs: list[Tensor] = []  # each (B,)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self._last is not None:
            self.logprobs.append(self._last.gather(1, input_ids[:, -1:]).squeeze(1))
        processed = apply_temperature_top_p(scores, self.temperature, self.top_p)
        self._last = torch.log_softmax(processed, dim=-1)
        return processed

    def finish(self, last_tokens: Tensor) -> Tensor:
        """last_tokens: (B,) -> log-probs (B, steps)."""
        if self._last is not None:
            self.logprobs.append(self._last.gather(1, last_tokens[:, None]).squeeze(1))
            self._last = None
        return torch.stack(self.logprobs, dim=1)


def generate_in_chunks(model: torch.nn.Module, prompts: list[list[int]], batch_size: int, seed: int | None,
                       run: Callable[[list[list[int]]], list[Generation]]) -> list[Generation]:
    """``run`` on chunks of ``batch_size`` prompts under one seeded RNG fork (the caller's RNG
    state is left untouched; a seeded call is repeatable)."""
    device = next(model.parameters()).device
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    out: list[Generation] = []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            out.extend(run(prompts[start: start + batch_size]))
    return out


@torch.no_grad()
def generate_messages(model: torch.nn.Module, prompts: list[list[int]], pad_id: int, eos_ids: Sequence[int],
                      sampling: SamplingConfig, *, min_new_tokens: int | None = None,
                      extra_processors: Callable[[Tensor], list[Any]] | None = None) -> list[Generation]:
    """Left pad, ``model.generate`` with our recording temperature/top-p warper, cut at the first EOS.

    ``extra_processors(attention_mask)`` returns logits processors that run before the warper (the
    decoding-time mixing of :mod:`llm.rollout.mixing`). Returns one Generation per prompt, EOS kept.
    """
    device = next(model.parameters()).device
    input_ids, attention = left_pad(prompts, pad_id)
    warper = _RecordingWarper(sampling.temperature, sampling.top_p)
    processors = (extra_processors(attention) if extra_processors is not None else []) + [warper]
    config = GenerationConfig(do_sample=True, max_new_tokens=sampling.max_new_tokens, min_new_tokens=min_new_tokens,
                              temperature=1.0, top_p=1.0, top_k=0, eos_token_id=list(eos_ids), pad_token_id=pad_id)
    was_training = model.training
    model.eval()
    try:
        sequences = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                   generation_config=config, logits_processor=processors)
    finally:
        model.train(was_training)
    width = input_ids.shape[1]
    new = sequences[:, width:].cpu()
    logp = warper.finish(sequences[:, -1]).cpu()
    if logp.shape != new.shape:
        raise RuntimeError(f"generate: recorded {tuple(logp.shape)} log-probs for {tuple(new.shape)} tokens")
    eos = set(int(e) for e in eos_ids)
    gens = []
    for i in range(len(prompts)):
        ids = new[i].tolist()
        length, reason = len(ids), "length"
        for u, t in enumerate(ids):
            if t in eos:
                length, reason = u + 1, "stop"
                break
        gens.append(Generation(ids[:length], logp[i, :length].tolist(), reason))
    return gens


@dataclass
class GenerationCounter:
    """Cost accounting: ``calls`` to generate, ``prompts`` sampled, ``tokens`` generated, per agent."""

    calls: dict[int, int] = field(default_factory=dict)
    prompts: dict[int, int] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)

    def add(self, agent: int, prompts: int, tokens: int) -> None:
        self.calls[agent] = self.calls.get(agent, 0) + 1
        self.prompts[agent] = self.prompts.get(agent, 0) + prompts
        self.tokens[agent] = self.tokens.get(agent, 0) + tokens

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())


class HFBackend:
    """:class:`llm.rollout.base.GenerationBackend` on top of ``model.generate``.

    ``models[j]`` is agent j's causal LM; ``eos_ids[j]`` the token ids that end its message;
    ``pad_ids[j]`` its padding id. ``batch_size`` caps the prompts per ``generate`` call.
    ``fixed_length`` (for throughput benchmarks, not training): every message has exactly
    ``max_new_tokens`` tokens, the EOS ids being masked until then (``min_new_tokens``); the
    recorded log-probs are then those of the masked distribution.
    """

    def __init__(
        self,
        models: Sequence[torch.nn.Module],
        eos_ids: Sequence[Sequence[int]],
        pad_ids: Sequence[int],
        batch_size: int = 64,
        fixed_length: bool = False,
    ) -> None:
        if not (len(models) == len(eos_ids) == len(pad_ids)):
            raise ValueError("HFBackend: models, eos_ids and pad_ids need one entry per agent")
        if batch_size < 1:
            raise ValueError(f"HFBackend.batch_size must be >= 1, got {batch_size}")
        self.models = list(models)
        self.eos_ids = [list(e) for e in eos_ids]
        self.pad_ids = list(pad_ids)
        self.batch_size = batch_size
        self.fixed_length = fixed_length
        self.counter = GenerationCounter()
        for j, model in enumerate(self.models):
            # A clean config: the model's shipped defaults (top_k, repetition penalty, ...) would
            # otherwise change the sampling distribution behind our back.
            model.generation_config = GenerationConfig(eos_token_id=self.eos_ids[j], pad_token_id=self.pad_ids[j])

    @classmethod
    def from_team(cls, team, batch_size: int = 64) -> "HFBackend":
        """A backend over the models of an :class:`llm.team.LLMTeam`."""
        return cls(
            [a.model for a in team.agents],
            [a.eos_token_ids for a in team.agents],
            [a.pad_token_id for a in team.agents],
            batch_size=batch_size,
        )

    def generate(
        self, agent: int, prompts: list[list[int]], sampling: SamplingConfig, seed: int | None = None
    ) -> list[Generation]:
        """Sample one message per prompt from agent ``agent`` (token ids in its tokenizer)."""
        if not 0 <= agent < len(self.models):
            raise ValueError(f"HFBackend.generate: agent {agent} out of range [0, {len(self.models)})")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("HFBackend.generate: empty prompt")
        model = self.models[agent]
        out = generate_in_chunks(model, prompts, self.batch_size, seed, lambda chunk: generate_messages(
            model, chunk, self.pad_ids[agent], self.eos_ids[agent], sampling,
            min_new_tokens=sampling.max_new_tokens if self.fixed_length else None))
        self.counter.add(agent, len(prompts), sum(len(g.token_ids) for g in out))
        return out

    def update_weights(self, agent: int, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """No-op: the backend generates with the trainer's own model objects."""
        return None
