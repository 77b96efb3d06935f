"""Rollout and update throughput, and peak memory per agent update, of Qwen3-architecture agents.

``python -m experiments.bench_llm`` builds each requested preset from a ``transformers.Qwen3Config``
(random weights, seeded; no hub download, no tokenizer) and measures, through the project's own
training path:

1. **Rollout** (generated tokens/s). ``batch`` random prompts of ``prompt_len`` token ids are
   sampled with :class:`llm.rollout.hf.HFBackend` (batched ``model.generate``, ``do_sample=True``,
   the backend's temperature processor recording each token's log-prob), with ``fixed_length=True``
   (``min_new_tokens = max_new_tokens = new_tokens``) so that every message has exactly
   ``new_tokens`` tokens (random weights would otherwise stop at a random EOS). One short warm-up
   call, then ``repeats`` timed calls; the best (shortest) is kept, as in ``bench_rollout``.
   Tokens counted: ``batch * new_tokens``.
2. **Update** (tokens/s). The rollout's messages form a :class:`trust_region.batch.MessageBatch`
   (context = prompt (B, P), tokens = message (B, N)); the behaviour log-probs are recomputed
   without grad (:func:`trust_region.update.eval_log_probs`, as ``update_agent`` does at update
   start). One timed unit is :func:`trust_region.update.minibatch_step` (the optimizer step of
   ``update_agent``) over the whole batch: :meth:`llm.agent.LLMAgent.log_probs` with grad (micro-batched by
   ``micro_batch`` rows, optional gradient checkpointing), the clipped surrogate + KL penalty of
   :func:`trust_region.objective.surrogate_loss` (``UpdateConfig`` defaults) with seeded random
   advantages, backward, gradient-norm clipping, and an AdamW step over all parameters.
   One warm-up step (it allocates the gradients and AdamW state), then ``repeats`` timed steps,
   best kept. Tokens counted: ``batch * (prompt_len + new_tokens)`` (every position goes through
   the forward and backward; the LM head runs on the message positions only).
   A full ``update_agent`` call adds no-grad log-prob passes around its steps (behaviour log-probs,
   trust-region checks, final report); they are not timed here.
3. **Peak memory per agent update**, over the warm-up and timed update steps. On CUDA:
   ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (``memory_kind``
   ``cuda_max_allocated``): the absolute peak of tensors allocated (weights, gradients, AdamW state,
   activations), and the delta over what was allocated before the warm-up. On CPU: the process
   peak resident set size from ``resource.getrusage`` (``memory_kind`` ``cpu_max_rss``): the
   absolute high-water mark of the whole process, and its growth during the update (a lower
   bound of the update's own extra memory when an earlier phase had already raised the mark).

Presets ``0.6b`` and ``1.7b`` follow the published ``config.json`` of Qwen/Qwen3-0.6B and
Qwen/Qwen3-1.7B (architecture only: random weights); ``tiny`` is a two-layer model for CPU tests.

Writes ``<out>/bench.json`` and ``bench.csv`` (plus ``config.json`` / ``seeds.json``; ``<out>``
defaults to ``results/bench_llm``) and prints a table: preset, parameters (M), rollout and update
tokens/s, peak memory (GiB), torch and transformers versions, device name.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

from experiments.common import results_dir, save_run_metadata, write_csv, write_json
from llm.agent import LLMAgent
from llm.rollout.base import Generation, SamplingConfig
from llm.rollout.hf import HFBackend
from trust_region.batch import MessageBatch
from trust_region.update import UpdateConfig, eval_log_probs, minibatch_step

#: Qwen3ForCausalLM architectures. 0.6b / 1.7b: the published config.json of Qwen/Qwen3-0.6B and
#: Qwen/Qwen3-1.7B (tied input/output embeddings, rope_theta 1e6, 40960 positions).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                 tie_word_embeddings=True, rope_theta=1e6),
    "0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                 tie_word_embeddings=True, rope_theta=1e6),
    "1.7b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                 tie_word_embeddings=True, rope_theta=1e6),
}
DTYPES = ("bfloat16", "float32")
#: CSV columns (the JSON rows also hold the per-repeat times).
COLUMNS = ("preset", "params_m", "device", "device_name", "threads", "dtype", "batch", "prompt_len", "new_tokens",
           "micro_batch", "grad_checkpointing", "build_s", "rollout_tokens", "rollout_s", "rollout_tok_s",
           "update_tokens", "update_message_tokens", "update_s", "update_tok_s", "update_loss",
           "peak_mem_gib", "peak_mem_delta_gib", "memory_kind", "torch", "transformers")


def preset_config(name: str) -> Any:
    """The ``transformers.Qwen3Config`` of preset ``name`` (one of :data:`PRESETS`)."""
    from transformers import Qwen3Config

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    spec = dict(PRESETS[name])
    theta = spec.pop("rope_theta")
    return Qwen3Config(**spec, rope_parameters={"rope_type": "default", "rope_theta": theta}, use_sliding_window=False)


def count_parameters(config: Any) -> int:
    """Parameters of ``Qwen3ForCausalLM(config)`` (tied embeddings counted once), built on the meta
    device: no weights are allocated."""
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class BenchLLMConfig:
    """What to measure.

    - ``presets``: names from :data:`PRESETS`, measured in order.
    - ``device``: ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``; None = cuda if available, else cpu.
    - ``dtype``: ``"bfloat16"`` or ``"float32"`` (weights, gradients and AdamW state).
    - ``batch`` B prompts per rollout / messages per update step; ``prompt_len`` P tokens per prompt;
      ``new_tokens`` N tokens per message.
    - ``micro_batch``: rows per forward in ``LLMAgent.log_probs``; ``grad_checkpointing``: the agent's
      gradient checkpointing.
    - ``repeats``: timed calls per measurement (best kept); ``seed``: weights, prompts, sampling and
      advantages.
    - ``temperature``: the policy's sampling temperature; ``lr``: AdamW learning rate.
    - ``threads``: torch CPU threads (None: leave torch's setting).
    """

    presets: tuple[str, ...] = ("0.6b", "1.7b")
    device: str | None = None
    dtype: str = "bfloat16"
    batch: int = 16
    prompt_len: int = 256
    new_tokens: int = 256
    micro_batch: int = 8
    grad_checkpointing: bool = False
    repeats: int = 3
    seed: int = 0
    temperature: float = 1.0
    lr: float = 1e-6
    threads: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"BenchLLMConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        object.__setattr__(self, "presets", tuple(self.presets))
        if not self.presets or any(p not in PRESETS for p in self.presets):
            raise bad("presets", f"a non-empty list of {', '.join(PRESETS)}")
        if len(set(self.presets)) != len(self.presets):
            raise bad("presets", "a list without repeats")
        if self.device is not None:
            dev = self.device
            ok = dev in ("cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())
            if not ok:
                raise bad("device", "'cpu', 'cuda', 'cuda:<index>' or None")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"one of {', '.join(DTYPES)}")
        for name in ("batch", "prompt_len", "new_tokens", "micro_batch", "repeats"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise bad(name, "an int >= 1")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise bad("seed", "an int >= 0")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise bad("temperature", "a finite number > 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad("lr", "a finite number > 0")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise bad("threads", "an int >= 1 or None")


# ------------------------------------------------------------------------------ device helpers
def resolve_device(spec: str | None) -> torch.device:
    """``spec`` as a torch device (None: cuda if available, else cpu): :func:`llm.models.resolve_device`."""
    from llm.models import resolve_device as resolve

    try:
        return resolve("auto" if spec is None else spec)
    except ValueError as err:
        raise ValueError(f"BenchLLMConfig.device: {err} (use --device cpu)") from err


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024  # Linux reports KiB


class PeakMemory:
    """Peak memory between :meth:`start` and :meth:`stop` (see the module docstring).

    ``stop()`` -> (absolute peak bytes, growth bytes over the start, kind)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_max_rss"
        self._base = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _max_rss_bytes()

    def stop(self) -> tuple[int, int, str]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _max_rss_bytes()
        return peak, max(peak - self._base, 0), self.kind


def best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, list[float], Any]:
    """(best seconds, all seconds, last result) of ``repeats`` synchronised calls of ``fn``."""
    times, result = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), times, result


# ------------------------------------------------------------------------------ model and data
def build_model(config: Any, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """``Qwen3ForCausalLM(config)`` with seeded random weights in ``dtype``, created on ``device``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def random_prompts(batch: int, prompt_len: int, vocab: int, seed: int, exclude: int) -> list[list[int]]:
    """(B, P) prompt token ids drawn uniformly from ``[0, vocab)`` minus ``exclude`` (the EOS id)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 1, (batch, prompt_len), generator=gen)
    ids = ids + (ids >= exclude).long()  # skip the excluded id
    return ids.tolist()


def message_batch(prompts: list[list[int]], gens: list[Generation]) -> MessageBatch:
    """One message per prompt, all of agent 0 and turn 0: context (B, P), tokens (B, N)."""
    m = len(prompts)
    tokens = torch.tensor([g.token_ids for g in gens], dtype=torch.long)
    context = torch.tensor(prompts, dtype=torch.long)
    ids = torch.arange(m, dtype=torch.long)
    zeros = torch.zeros(m, dtype=torch.long)
    return MessageBatch(
        trajectory=ids, group=ids.clone(), agent=zeros, turn=zeros.clone(),
        context=context, context_mask=torch.ones_like(context, dtype=torch.bool),
        tokens=tokens, mask=torch.ones_like(tokens, dtype=torch.bool),
        behaviour_logp=torch.tensor([g.logprobs for g in gens], dtype=torch.float32),
        reward=torch.zeros(m), returns=torch.zeros(m), generated=torch.ones(m, dtype=torch.bool),
    )


# ------------------------------------------------------------------------------ the benchmark
def bench_preset(name: str, config: BenchLLMConfig, device: torch.device,
                 tick: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Rollout and update measurements of one preset (a flat row; see the module docstring)."""
    import transformers

    dtype = getattr(torch, config.dtype)
    qcfg = preset_config(name)
    b, p, n = config.batch, config.prompt_len, config.new_tokens
    if p + n > qcfg.max_position_embeddings:
        raise ValueError(f"prompt_len + new_tokens = {p + n} exceeds preset {name}'s "
                         f"{qcfg.max_position_embeddings} positions")
    t0 = time.perf_counter()
    model = build_model(qcfg, device, dtype, config.seed)
    _sync(device)
    build_s = time.perf_counter() - t0
    tick(f"{name}: built")
    eos, pad = qcfg.vocab_size - 1, 0
    tokenizer = SimpleNamespace(pad_token_id=pad, eos_token_id=eos)  # all LLMAgent reads of a tokenizer
    agent = LLMAgent(0, name, model, tokenizer, temperature=config.temperature, micro_batch_size=config.micro_batch,
                     gradient_checkpointing=config.grad_checkpointing, max_new_tokens=n)
    backend = HFBackend([model], [[eos]], [pad], batch_size=b, fixed_length=True)
    prompts = random_prompts(b, p, qcfg.vocab_size, config.seed, exclude=eos)
    sampling = SamplingConfig(max_new_tokens=n, temperature=config.temperature, top_p=1.0)

    # 1. rollout
    backend.generate(0, prompts, SamplingConfig(max_new_tokens=min(n, 8), temperature=config.temperature),
                     seed=config.seed)  # warm-up
    calls = iter(range(config.repeats))
    rollout_s, rollout_all, gens = best_time(
        lambda: backend.generate(0, prompts, sampling, seed=config.seed + 1 + next(calls)), device, config.repeats)
    rollout_tokens = sum(len(g.token_ids) for g in gens)
    if rollout_tokens != b * n:
        raise RuntimeError(f"rollout generated {rollout_tokens} tokens, expected batch * new_tokens = {b * n}")
    tick(f"{name}: rollout")

    # 2. + 3. update steps and their peak memory
    batch = message_batch(prompts, gens)
    update = UpdateConfig()
    logp_cur = eval_log_probs(agent, batch, update.eval_batch_size)  # update-start log-probs, as update_agent
    advantages = torch.randn(b, generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.AdamW(agent.trainable_parameters(), lr=config.lr)
    meter = PeakMemory(device)
    meter.start()
    def step() -> float:
        return minibatch_step(agent, optimizer, batch, logp_cur, advantages, update, update.beta)

    step()  # warm-up: allocates the gradients and the AdamW state
    update_s, update_all, loss = best_time(step, device, config.repeats)
    peak, delta, kind = meter.stop()
    tick(f"{name}: update")

    row = {
        "preset": name,
        "params_m": sum(q.numel() for q in model.parameters()) / 1e6,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "dtype": config.dtype,
        "batch": b, "prompt_len": p, "new_tokens": n,
        "micro_batch": config.micro_batch, "grad_checkpointing": config.grad_checkpointing,
        "build_s": build_s,
        "rollout_tokens": rollout_tokens, "rollout_s": rollout_s, "rollout_s_all": rollout_all,
        "rollout_tok_s": rollout_tokens / rollout_s,
        "update_tokens": b * (p + n), "update_message_tokens": batch.num_tokens,
        "update_s": update_s, "update_s_all": update_all, "update_tok_s": b * (p + n) / update_s,
        "update_loss": loss,
        "peak_mem_gib": peak / 2**30, "peak_mem_delta_gib": delta / 2**30, "memory_kind": kind,
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    del agent, backend, model, optimizer, batch, logp_cur
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run(config: BenchLLMConfig, out: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Measure every preset of ``config``; write ``bench.json`` / ``bench.csv`` / metadata into ``out``
    (when given). Returns {"device", "device_name", "torch", "transformers", "memory_kind", "rows"}."""
    import transformers

    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    from tqdm.auto import tqdm

    bar = tqdm(total=3 * len(config.presets), desc="bench_llm", unit="phase", disable=not progress, leave=False)

    def tick(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update(1)

    try:
        rows = [bench_preset(name, config, device, tick) for name in config.presets]
    finally:
        bar.close()
    result = {
        "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "memory_kind": rows[0]["memory_kind"], "rows": rows,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "bench.json", result)
        write_csv(out / "bench.csv", rows, COLUMNS)
        save_run_metadata(out, config, [config.seed])
    return result


def format_table(result: dict[str, Any]) -> str:
    """The printed table: one line per preset, versions and device as the last columns."""
    mem = {"cuda_max_allocated": "peak GiB (cuda max allocated)",
           "cpu_max_rss": "peak GiB (cpu max RSS; +growth in update)"}[result["memory_kind"]]
    head = ["preset", "params (M)", "rollout tok/s", "update tok/s", mem, "torch", "transformers", "device"]
    lines = []
    for r in result["rows"]:
        peak = f"{r['peak_mem_gib']:.2f}"
        if r["memory_kind"] == "cpu_max_rss":
            peak += f" (+{r['peak_mem_delta_gib']:.2f})"
        lines.append([r["preset"], f"{r['params_m']:.1f}", f"{r['rollout_tok_s']:.1f}", f"{r['update_tok_s']:.1f}",
                      peak, r["torch"], r["transformers"], r["device_name"]])
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    r0 = result["rows"][0]
    settings = (f"dtype {r0['dtype']}, batch {r0['batch']}, prompt {r0['prompt_len']} + {r0['new_tokens']} new tokens, "
                f"micro-batch {r0['micro_batch']}, "
                f"gradient checkpointing {'on' if r0['grad_checkpointing'] else 'off'}")
    return "\n".join([settings, fmt(head), fmt(["-" * w for w in widths]), *(fmt(row) for row in lines)])


def main(argv: list[str] | None = None) -> int:
    d = BenchLLMConfig()
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_llm", description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(d.presets), help=f"comma list of {', '.join(PRESETS)}")
    parser.add_argument("--device", default=None, help="cuda, cuda:<index> or cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=d.dtype, help=f"one of {', '.join(DTYPES)}")
    parser.add_argument("--batch", type=int, default=d.batch, help="prompts per rollout = messages per update step")
    parser.add_argument("--prompt-len", type=int, default=d.prompt_len, help="tokens per prompt")
    parser.add_argument("--new-tokens", type=int, default=d.new_tokens, help="tokens per message")
    parser.add_argument("--micro-batch", type=int, default=d.micro_batch, help="rows per forward in the update")
    parser.add_argument("--grad-checkpointing", action="store_true", help="gradient checkpointing in the update")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed calls per measurement (best kept)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--temperature", type=float, default=d.temperature)
    parser.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="results directory (default results/bench_llm)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = BenchLLMConfig(
            presets=tuple(s.strip() for s in args.presets.split(",") if s.strip()), device=args.device,
            dtype=args.dtype, batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
            micro_batch=args.micro_batch, grad_checkpointing=args.grad_checkpointing, repeats=args.repeats,
            seed=args.seed, temperature=args.temperature, lr=args.lr, threads=args.threads)
        device = resolve_device(config.device)
        print(f"device: {device} ({device_name(device)})" + ("" if config.device else " [auto]"))
        out = Path(args.out) if args.out else results_dir("bench_llm")
        result = run(config, out, progress=not args.no_progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
