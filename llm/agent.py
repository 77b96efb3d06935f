"""LLMAgent: one language model of the team, as the shared core sees it (AgentPolicy).

The policy of an agent is its model's next-token distribution at the sampling temperature,
``pi(x_u | s, x_<u) = softmax(logits / T)[x_u]``: the distribution the rollouts are drawn from
(top-p = 1, the papers' setting; with top-p < 1 the sampled log-probs are those of the truncated
distribution and the recomputed ones are not, which shows up in the measured gap).

:meth:`LLMAgent.log_probs` teacher-forces ``context ++ message`` for the rows of the batch that
this agent emitted and returns the per-token log-probs of the message tokens (M, T). Rows of other
agents (whose token ids belong to other tokenizers) are returned as zeros and get no gradient.
Gradients reach only this agent's trainable parameters (the full model, or its LoRA adapters).

It is also a :class:`trust_region.interfaces.ExactKLPolicy`: :meth:`LLMAgent.kl_reference` keeps
pi_cur as a copy of the trainable parameters (LoRA: the adapters only, a small fraction of the
model; full fine-tuning: one frozen copy of the weights in their dtype) and
:meth:`LLMAgent.exact_kl` computes the exact KL over the whole vocabulary at every message
position: per micro-batch one forward with the current parameters and one with the reference
swapped in (a zero-copy storage swap, no second model), the KL in chunks of
``kl_chunk_positions`` positions so that at most (micro-batch, positions, V) float32 log-probs
exist at once (never M x T x V).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

from llm.tokens import message_logits, message_rows
from trust_region.batch import MessageBatch
from trust_region.kl import categorical_kl


def left_align(values: Tensor, lengths: list[int]) -> Tensor:
    """(R, T_r) values whose row r holds its message in the last ``lengths[r]`` positions (left
    padded) -> the message moved to the front, right padded with 0."""
    t_r = values.shape[1]
    lengths_t = torch.tensor(lengths, device=values.device)
    cols = torch.arange(t_r, device=values.device)
    src = (t_r - lengths_t[:, None] + cols[None, :]).clamp(max=t_r - 1)
    valid = cols[None, :] < lengths_t[:, None]
    return torch.where(valid, values.gather(1, src), torch.zeros((), dtype=values.dtype, device=values.device))


class LLMAgent(torch.nn.Module):
    """An agent of an :class:`llm.team.LLMTeam`.

    - ``model``: a causal LM (transformers ``PreTrainedModel``, possibly a peft model).
    - ``tokenizer``: its own tokenizer (must carry a chat template; checked by the team builder).
    - ``temperature``: the temperature that defines the policy (the sampling temperature).
    - ``micro_batch_size``: rows per forward pass in :meth:`log_probs`.
    - ``gradient_checkpointing``: trade compute for activation memory in training forwards.
    """

    def __init__(
        self,
        agent_id: int,
        name: str,
        model: torch.nn.Module,
        tokenizer: Any,
        system_prompt: str | None = None,
        temperature: float = 1.0,
        micro_batch_size: int = 8,
        gradient_checkpointing: bool = False,
        max_new_tokens: int = 256,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"LLMAgent.temperature must be > 0, got {temperature}")
        if micro_batch_size < 1:
            raise ValueError(f"LLMAgent.micro_batch_size must be >= 1, got {micro_batch_size}")
        self.agent_id = agent_id
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.temperature = float(temperature)
        self.micro_batch_size = micro_batch_size
        self.max_new_tokens = max_new_tokens
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            if hasattr(self.model, "activation_checkpointing_enable"):  # newer transformers name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(self.model, "enable_input_require_grads"):
                self.model.enable_input_require_grads()
        self.model.eval()

    # ------------------------------------------------------------------ tokenizer facts
    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end a message: the tokenizer's EOS and the model's generation EOS."""
        ids = {int(self.tokenizer.eos_token_id)}
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(extra, int):
            ids.add(extra)
        elif isinstance(extra, (list, tuple)):
            ids.update(int(e) for e in extra)
        return sorted(ids)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ AgentPolicy
    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def snapshot(self) -> dict[str, Tensor]:
        """A copy of the trainable parameters only (LoRA: the adapters)."""
        return {n: p.detach().clone() for n, p in self.named_trainable_parameters()}

    def restore(self, snapshot: dict[str, Tensor]) -> None:
        params = dict(self.named_trainable_parameters())
        if set(params) != set(snapshot):
            raise ValueError(f"LLMAgent.restore: snapshot does not match agent {self.name}'s trainable parameters")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(snapshot[n])

    def version(self) -> tuple[int, ...]:
        """Changes whenever a trainable parameter is modified in place (optimizer step, restore)."""
        return tuple(p._version for p in self.trainable_parameters())

    def log_probs(self, batch: MessageBatch) -> Tensor:
        """Log-probs (M, T) of ``batch.tokens`` given ``batch.context`` for this agent's rows.

        Rows with ``batch.agent != agent_id`` are zeros. Padded positions are zeros.
        Micro-batched over rows (``micro_batch_size``); differentiable when grad is enabled.
        """
        m, t = batch.tokens.shape
        device = self.device
        out = torch.zeros((m, t), dtype=torch.float32, device=device)
        rows = torch.nonzero(batch.agent == self.agent_id).flatten().tolist()
        if not rows:
            return out
        pieces = []
        for start in range(0, len(rows), self.micro_batch_size):
            idx = rows[start : start + self.micro_batch_size]
            pieces.append((idx, self._forward_rows(batch, idx)))
        index = torch.tensor([i for idx, _ in pieces for i in idx], device=device)
        # micro-batches have their own longest message: right pad each to T before joining
        values = torch.cat([torch.nn.functional.pad(v, (0, t - v.shape[1])) for _, v in pieces], dim=0)
        return out.index_copy(0, index, values)

    def _forward_rows(self, batch: MessageBatch, rows: list[int]) -> Tensor:
        """Teacher-forced log-probs (R, T_r) of the messages of ``rows`` (right padded with 0).

        Sequences are left padded so that every message ends at the last position; the model is
        asked for the logits of the last ``T_r + 1`` positions only.
        """
        ctx, msg = message_rows(batch, rows)
        grad = torch.is_grad_enabled()
        was_training = self.model.training
        self.model.train(grad and self.gradient_checkpointing)
        try:
            logits, target, lengths = message_logits(self.model, ctx, msg, self.pad_token_id)
        finally:
            self.model.train(was_training)
        logp = torch.log_softmax(logits.float() / self.temperature, dim=-1)  # (R, t_r, V)
        tok_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (R, t_r), left aligned to the end
        return left_align(tok_logp, lengths)  # each row's message at the front, right padded

    # ------------------------------------------------------------------ ExactKLPolicy
    #: positions per chunk of the exact KL (bounds the (R, chunk, V) float32 temporaries)
    kl_chunk_positions: int = 32

    def kl_reference(self, batch: MessageBatch) -> dict[str, Tensor]:
        """pi_cur for :meth:`exact_kl`: a copy of the trainable parameters (any batch). LoRA: the
        adapters; full fine-tuning: a frozen copy of the trainable weights in their dtype."""
        return self.snapshot()

    @contextlib.contextmanager
    def swapped_parameters(self, params: dict[str, Tensor]) -> Iterator[None]:
        """Point the trainable parameters at ``params`` (a :meth:`snapshot`) for the duration of the
        block, without copying (storage swap); restored on exit, also after an exception."""
        named = dict(self.named_trainable_parameters())
        if set(named) != set(params):
            raise ValueError(f"LLMAgent {self.name}: the KL reference does not match the trainable parameters")
        saved: dict[str, Tensor] = {}
        try:
            for n, p in named.items():
                saved[n] = p.data
                p.data = params[n]
            yield
        finally:
            for n, d in saved.items():
                named[n].data = d

    def exact_kl(self, batch: MessageBatch, reference: dict[str, Tensor], direction: str = "reverse") -> Tensor:
        """(M, T) float64 on the CPU: for this agent's rows, at every message position the exact KL
        over the whole vocabulary (at the policy's temperature) between the ``reference`` parameters
        (pi_cur) and the current ones (``"reverse"``: KL(pi_cur || pi); ``"forward"``: KL(pi ||
        pi_cur)); other agents' rows and padding are 0. No gradient; micro-batched over rows and
        chunked over positions."""
        m, t = batch.tokens.shape
        out = torch.zeros((m, t), dtype=torch.float64)
        rows = torch.nonzero(batch.agent == self.agent_id).flatten().tolist()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(rows), self.micro_batch_size):
                    idx = rows[start : start + self.micro_batch_size]
                    ctx, msg = message_rows(batch, idx)
                    new, _, lengths = message_logits(self.model, ctx, msg, self.pad_token_id)
                    with self.swapped_parameters(reference):
                        ref, _, _ = message_logits(self.model, ctx, msg, self.pad_token_id)
                    kl = torch.empty(new.shape[:2], dtype=torch.float64, device=new.device)
                    for c in range(0, new.shape[1], self.kl_chunk_positions):
                        sl = slice(c, c + self.kl_chunk_positions)
                        kl[:, sl] = categorical_kl(torch.log_softmax(ref[:, sl].float() / self.temperature, dim=-1),
                                                   torch.log_softmax(new[:, sl].float() / self.temperature, dim=-1),
                                                   direction)
                    del new, ref
                    values = left_align(kl, lengths).cpu()
                    out[torch.tensor(idx), : values.shape[1]] = values
        finally:
            self.model.train(was_training)
        return out
