"""Team evaluation harness: ``python -m llm.evaluate --config configs/eval_aime2024.yaml``.

Protocols (``eval.protocols``):

- ``single``: every agent answers alone (one turn, the problem only); metrics per agent
  (``single/<agent name>``).
- ``chain``: the training protocol (text handoff, :mod:`llm.protocol`): the router's schedule
  (default round robin, trajectory s of problem r starts at agent (r + s) mod n, as TeamTR's chain
  evaluation), every turn sees the problem and all earlier messages, the **last** message is
  graded.
- ``best_of``: from the single-agent samples: sample s of a problem counts the best of the n
  agents' sample s (an oracle upper bound of picking the right agent per sample).
- ``majority``: from the single-agent samples: sample s is the majority answer of the n agents'
  sample s (ties broken by agent order; parse failures do not vote).

``best_of`` and ``majority`` reuse the ``single`` generations (no extra model calls).

Every protocol draws K samples per problem (``k`` per benchmark, default the papers' K). Metrics:
avg@K, unbiased pass@k (k in ``ks``, default 1 and K), maj@K, parse-failure rate, each with a
problem-level bootstrap interval (:mod:`llm.metrics`); ZebraLogic adds cell accuracy.

Output (``eval.output_dir``):

- ``traces/<benchmark>/<protocol>.jsonl``: one line per problem: the problem id, the prompt, the
  reference answer, and per sample every agent's message (agent, turn, text, finish reason), the
  extracted answer and the grade. ``best_of``/``majority`` lines reference the single samples.
- ``summary.json`` and ``summary.md``: the table of metrics (value and interval), with problems,
  K, generated tokens and seconds per benchmark and protocol. ``config.json``: resolved config.

Resuming: problems already in a trace file are skipped (a line is written only once all K samples
of a problem are graded). A resumed run is statistically equivalent to an uninterrupted one, not
bit-identical (generation batches differ).

Before generating, the evaluation sets are checked against the training data named in
``eval.contamination`` (files, or the ``task`` of a training config): policy error | warn | off.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import yaml

from llm.contamination import POLICIES, check_contamination, enforce
from llm.data.benchmarks import BENCHMARKS, load_benchmark, load_problems
from llm.metrics import SampleResult, summarize
from llm.rewards import get_grader
from llm.rewards.base import Grade, Problem
from llm.rewards.math import normalize_latex_answer

log = logging.getLogger(__name__)

PROTOCOLS = ("single", "chain", "best_of", "majority")
ROUTER_KINDS = ("round_robin", "fixed", "random")


class EvalConfigError(ValueError):
    """An invalid evaluation config (raised before any model is loaded)."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BenchmarkEntry:
    """One benchmark to evaluate. ``k``: samples per problem (default: the papers' K,
    ``llm.data.BENCHMARKS[name].k``); ``ks``: the k of pass@k (default 1 and K); ``limit``: first
    items only; ``path``/``root``/``template``/``lang``/``fields``: see :func:`llm.data.load_benchmark`;
    ``grader``: options for the grader (e.g. ``{score: cell}`` for ZebraLogic)."""

    name: str
    k: int | None = None
    ks: tuple[int, ...] | None = None
    limit: int | None = None
    path: str | None = None
    root: str | None = None
    template: str | None = None
    lang: str | None = None
    fields: dict[str, str] | None = None
    grader: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in BENCHMARKS:
            raise EvalConfigError(f"eval.benchmarks: unknown benchmark {self.name!r}; known: {sorted(BENCHMARKS)}")
        if self.k is not None and self.k < 1:
            raise EvalConfigError(f"eval.benchmarks[{self.name}].k must be >= 1, got {self.k}")
        if self.limit is not None and self.limit < 1:
            raise EvalConfigError(f"eval.benchmarks[{self.name}].limit must be >= 1, got {self.limit}")
        if self.ks is not None:
            object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
            bad = [k for k in self.ks if not 1 <= k <= self.samples]
            if bad:
                raise EvalConfigError(f"eval.benchmarks[{self.name}].ks must lie in [1, k={self.samples}], got {bad}")

    @property
    def samples(self) -> int:
        return self.k if self.k is not None else BENCHMARKS[self.name].k


@dataclass(frozen=True)
class ContaminationSection:
    """Training data to check the evaluation sets against: JSONL/parquet ``train_files`` (problem
    text in ``field``) and/or the ``task`` of a training config (``train_config``)."""

    train_files: tuple[str, ...] = ()
    field: str = "problem"
    train_config: str | None = None
    policy: str = "warn"
    ngram: int = 13
    ngram_threshold: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_files", tuple(self.train_files))
        if self.policy not in POLICIES:
            raise EvalConfigError(f"eval.contamination.policy must be one of {POLICIES}, got {self.policy!r}")


@dataclass(frozen=True)
class ChainRouter:
    """Speaker schedule of the chain protocol (see :class:`llm.team.Router`)."""

    kind: str = "round_robin"
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ROUTER_KINDS:
            raise EvalConfigError(f"eval.chain_router.kind must be one of {ROUTER_KINDS}, got {self.kind!r}")
        if self.rounds < 1:
            raise EvalConfigError(f"eval.chain_router.rounds must be >= 1, got {self.rounds}")


@dataclass(frozen=True)
class EvalSection:
    """The ``eval:`` section. ``max_new_tokens`` overrides every agent's limit (the papers use
    32,768); ``problems_per_step`` problems are generated together (also the resume granularity)."""

    benchmarks: tuple[BenchmarkEntry, ...]
    protocols: tuple[str, ...] = PROTOCOLS
    output_dir: str = "runs/eval"
    seed: int = 0
    max_new_tokens: int | None = None
    problems_per_step: int = 8
    chain_router: ChainRouter = field(default_factory=ChainRouter)
    n_boot: int = 1000
    level: float = 0.95
    trust_verifier_code: bool = False
    math_timeout_s: int = 5
    contamination: ContaminationSection = field(default_factory=ContaminationSection)
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "benchmarks", tuple(self.benchmarks))
        object.__setattr__(self, "protocols", tuple(self.protocols))
        if not self.benchmarks:
            raise EvalConfigError("eval.benchmarks must list at least one benchmark")
        names = [b.name + (b.path or "") for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise EvalConfigError(f"eval.benchmarks lists a benchmark twice: {names}")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise EvalConfigError(f"eval.protocols must be a non-empty subset of {PROTOCOLS}, got {list(self.protocols)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise EvalConfigError(f"eval.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.problems_per_step < 1:
            raise EvalConfigError(f"eval.problems_per_step must be >= 1, got {self.problems_per_step}")
        if self.n_boot < 1:
            raise EvalConfigError(f"eval.n_boot must be >= 1, got {self.n_boot}")
        if not 0 < self.level < 1:
            raise EvalConfigError(f"eval.level must be in (0, 1), got {self.level}")


@dataclass(frozen=True)
class EvalConfig:
    """``team`` and ``sampling`` as in the training config (:mod:`llm.config`), plus ``eval``."""

    team: Any  # llm.config.TeamConfig
    sampling: Any  # llm.config.SamplingSection
    eval: EvalSection


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EvalConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise EvalConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except EvalConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise EvalConfigError(f"{where}: {err}") from err


def eval_config_from_dict(data: dict[str, Any]) -> EvalConfig:
    """A validated :class:`EvalConfig`; the team and sampling sections are validated by
    :func:`llm.config.team_config_from_dict` and :func:`llm.config.sampling_from_dict`."""
    from llm.config import sampling_from_dict, team_config_from_dict

    if not isinstance(data, dict):
        raise EvalConfigError("the eval config must be a mapping at the top level")
    unknown = sorted(set(data) - {"team", "sampling", "eval"})
    if unknown:
        raise EvalConfigError(f"config: unknown top-level key(s) {unknown}; allowed: ['eval', 'sampling', 'team']")
    team = team_config_from_dict(data.get("team"))
    sampling = sampling_from_dict(data.get("sampling"))
    ev = dict(data.get("eval") or {})
    if "benchmarks" not in ev:
        raise EvalConfigError("eval.benchmarks is required")
    benches = ev["benchmarks"]
    if not isinstance(benches, list):
        raise EvalConfigError("eval.benchmarks must be a list")
    ev["benchmarks"] = tuple(
        _build(BenchmarkEntry, {"name": b} if isinstance(b, str) else b, f"eval.benchmarks[{i}]") for i, b in enumerate(benches)
    )
    ev["chain_router"] = _build(ChainRouter, ev.get("chain_router"), "eval.chain_router")
    ev["contamination"] = _build(ContaminationSection, ev.get("contamination"), "eval.contamination")
    return EvalConfig(team, sampling, _build(EvalSection, ev, "eval"))


def load_eval_config(path: str | os.PathLike[str]) -> EvalConfig:
    path = Path(path)
    if not path.is_file():
        raise EvalConfigError(f"eval config file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        return eval_config_from_dict(yaml.safe_load(fh))


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------- generation


@dataclass
class Message:
    agent: int
    name: str
    turn: int
    text: str
    finish_reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"agent": self.name, "agent_index": self.agent, "turn": self.turn, "text": self.text,
                "finish_reason": self.finish_reason}


class TeamGenerator:
    """Generates single-agent answers and chain trajectories for an :class:`llm.team.LLMTeam`
    through a :class:`llm.rollout.base.GenerationBackend`. Prompts use the team's handoff format
    and each speaker's chat template (:func:`llm.protocol.render_prompt`)."""

    def __init__(self, team: Any, backend: Any, temperature: float, top_p: float, max_new_tokens: int | None,
                 router: ChainRouter, seed: int) -> None:
        self.team = team
        self.backend = backend
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.router_config = router
        self.seed = seed
        self.tokens_generated = 0
        self.tokens_by_agent: dict[int, int] = {}

    def _sampling(self, agent: int) -> Any:
        from llm.rollout.base import SamplingConfig

        limit = self.max_new_tokens or self.team[agent].max_new_tokens
        return SamplingConfig(max_new_tokens=limit, temperature=self.temperature, top_p=self.top_p)

    def _prompt_ids(self, agent: int, problem: Problem, previous: list[Message]) -> list[int]:
        from llm.protocol import render_prompt

        speaker = self.team[agent]
        user = self.team.protocol.user_message(problem.prompt, [(m.agent, m.name, m.text) for m in previous])
        return render_prompt(speaker.tokenizer, speaker.system_prompt, user, speaker.chat_template_kwargs)

    def _generate(self, agent: int, prompts: list[list[int]], seed: int) -> list[tuple[str, str]]:
        gens = self.backend.generate(agent, prompts, self._sampling(agent), seed=seed)
        tok = self.team[agent].tokenizer
        n_tokens = sum(len(g.token_ids) for g in gens)
        self.tokens_generated += n_tokens
        self.tokens_by_agent[agent] = self.tokens_by_agent.get(agent, 0) + n_tokens
        return [(tok.decode(g.token_ids, skip_special_tokens=True), g.finish_reason) for g in gens]

    def user_message(self, problem: Problem, previous: list[Message]) -> str:
        return self.team.protocol.user_message(problem.prompt, [(m.agent, m.name, m.text) for m in previous])

    def single(self, problems: Sequence[Problem], k: int, seed: int) -> list[list[list[Message]]]:
        """out[p][agent][s]: agent's s-th answer to problem p (one message each)."""
        out: list[list[list[Message]]] = [[[] for _ in self.team] for _ in problems]
        for j, agent in enumerate(self.team):
            prompts = [self._prompt_ids(j, p, []) for p in problems for _ in range(k)]
            texts = self._generate(j, prompts, seed=seed * 1000 + j)
            for i, (text, reason) in enumerate(texts):
                out[i // k][j].append(Message(j, agent.name, 0, text, reason))
        return out

    def schedules(self, problem_indices: Sequence[int], k: int, seed: int) -> list[list[list[int]]]:
        from llm.team import Router

        router = Router(self.router_config.kind, len(self.team), self.router_config.rounds)
        rng = np.random.default_rng(seed)
        return [[router.schedule(r, s, rng) for s in range(k)] for r in problem_indices]

    def chain(self, problems: Sequence[Problem], schedules: list[list[list[int]]], seed: int) -> list[list[list[Message]]]:
        """out[p][s]: the messages of trajectory s of problem p, in turn order."""
        k = len(schedules[0])
        trajs = [(p, s) for p in range(len(problems)) for s in range(k)]
        history: dict[tuple[int, int], list[Message]] = {t: [] for t in trajs}
        turns = max(len(sc) for per in schedules for sc in per)
        for turn in range(turns):
            by_agent: dict[int, list[tuple[int, int]]] = {}
            for p, s in trajs:
                sched = schedules[p][s]
                if turn < len(sched):
                    by_agent.setdefault(sched[turn], []).append((p, s))
            for agent, members in sorted(by_agent.items()):
                prompts = [self._prompt_ids(agent, problems[p], history[(p, s)]) for p, s in members]
                texts = self._generate(agent, prompts, seed=seed * 1000 + turn * 37 + agent)
                for (p, s), (text, reason) in zip(members, texts):
                    history[(p, s)].append(Message(agent, self.team[agent].name, turn, text, reason))
        return [[history[(p, s)] for s in range(k)] for p in range(len(problems))]


# ----------------------------------------------------------------------------- grading & aggregation


def answer_key(kind: str, grade: Grade) -> Hashable | None:
    """Equivalence key of an extracted answer for majority voting (None: does not vote)."""
    if not grade.parsed or grade.extracted is None:
        return None
    if kind == "math":
        return normalize_latex_answer(grade.extracted)
    return grade.extracted


def grade_record(grade: Grade) -> dict[str, Any]:
    return {"extracted": grade.extracted, "score": grade.score, "parsed": grade.parsed, "info": grade.info}


def sample_result(kind: str, g: dict[str, Any]) -> SampleResult:
    grade = Grade(float(g["score"]), bool(g["parsed"]), g.get("extracted"), dict(g.get("info") or {}))
    return SampleResult(grade.score, grade.parsed, answer_key(kind, grade))


def best_of_samples(per_agent: Sequence[Sequence[SampleResult]]) -> list[SampleResult]:
    """Sample s = the best of the agents' sample s (per_agent: n lists of K)."""
    return best_of_with_winners(per_agent)[0]


def best_of_with_winners(per_agent: Sequence[Sequence[SampleResult]]) -> tuple[list[SampleResult], list[int | None]]:
    """:func:`best_of_samples` and, per sample, the index of the (first) best agent."""
    k = len(per_agent[0])
    out, winners = [], []
    for s in range(k):
        j = max(range(len(per_agent)), key=lambda a: (per_agent[a][s].score, per_agent[a][s].parsed, -a))
        best = per_agent[j][s]
        out.append(SampleResult(best.score, any(a[s].parsed for a in per_agent), best.answer_key))
        winners.append(j)
    return out, winners


def majority_samples(per_agent: Sequence[Sequence[SampleResult]]) -> tuple[list[SampleResult], list[int | None]]:
    """Sample s = the majority answer among the agents' sample s; also the winning agent index."""
    from llm.metrics import majority_answer

    k = len(per_agent[0])
    out, winners = [], []
    for s in range(k):
        votes = [a[s] for a in per_agent]
        idx = majority_answer([v.answer_key if v.parsed else None for v in votes])
        winners.append(idx)
        out.append(SampleResult(0.0, False, None) if idx is None else votes[idx])
    return out, winners


# ----------------------------------------------------------------------------- traces


def read_traces(path: Path) -> dict[str, dict[str, Any]]:
    """problem id -> trace record of a trace file (unreadable trailing lines are ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: unreadable trace line ignored (interrupted write?)", path, lineno)
                continue
            done[rec["problem_id"]] = rec
    return done


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _base_record(p: Problem, protocol: str, k: int, team: Sequence[str]) -> dict[str, Any]:
    return {"problem_id": p.id, "protocol": protocol, "k": k, "team": list(team), "prompt": p.prompt, "answer": p.answer}


def _resumable(path: Path, index: dict[str, int], k: int, names: list[str]) -> dict[str, dict[str, Any]]:
    """Finished problems of a trace file; a file written by another team is an error."""
    done = {}
    for pid, rec in read_traces(path).items():
        if rec.get("team") != names:
            raise EvalConfigError(
                f"{path} holds traces of team {rec.get('team')}, not {names}; use another eval.output_dir"
            )
        if rec.get("k") == k and pid in index:
            done[pid] = rec
    return done


# ----------------------------------------------------------------------------- runner


@dataclass
class BenchmarkRun:
    """Results of one benchmark: protocol name -> per-problem sample results (P lists of K)."""

    name: str
    kind: str
    k: int
    results: dict[str, list[list[SampleResult]]] = field(default_factory=dict)
    cell_accuracy: dict[str, list[float]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def run_contamination_check(config: EvalConfig, problems: dict[str, list[Problem]]) -> dict[str, Any]:
    """Check every evaluation set against the configured training data (policy applied)."""
    c = config.eval.contamination
    train: list[Problem] = []
    for path in c.train_files:
        train += load_problems(path, kind="raw", benchmark=str(path), id_field="", problem_field=c.field,
                               answer_field=c.field)
    if c.train_config:
        from llm.config import load_config
        from llm.tasks import load_task

        train += load_task(load_config(c.train_config).task).problems
    if not train:
        return {}
    out = {}
    for name, items in problems.items():
        report = check_contamination(train, items, ngram=c.ngram, ngram_threshold=c.ngram_threshold)
        enforce(report, c.policy, name)
        out[name] = {"flagged": report.flagged_ids, "n_train": report.n_train, "n_eval": report.n_eval}
    return out


def evaluate(config: EvalConfig, team: Any = None, backend: Any = None) -> dict[str, Any]:
    """Run the evaluation described by ``config`` and write traces and the summary.

    ``team`` (an :class:`llm.team.LLMTeam`) and ``backend`` are built from the config when not
    given. Returns the summary dict (also written to ``summary.json``).
    """
    ev = config.eval
    out_dir = Path(ev.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(_plain(config), indent=2, default=str), encoding="utf-8")

    problems: dict[str, list[Problem]] = {}
    for b in ev.benchmarks:
        problems[b.name] = load_benchmark(b.name, path=b.path, root=b.root, template=b.template, limit=b.limit,
                                          lang=b.lang, fields=b.fields)
    contamination = run_contamination_check(config, problems)

    graders = {}
    for b in ev.benchmarks:
        kind = BENCHMARKS[b.name].kind
        options = dict(b.grader)
        if kind == "autologi":
            options.setdefault("trust_verifier_code", ev.trust_verifier_code)
        if kind == "math":
            options.setdefault("timeout_s", ev.math_timeout_s)
        graders[b.name] = get_grader(kind, **options)

    if team is None:
        from llm.team import LLMTeam

        team = LLMTeam.from_config(config.team, temperature=config.sampling.temperature)
    if backend is None:
        backend = make_backend(config, team)
    gen = TeamGenerator(team, backend, config.sampling.temperature, config.sampling.top_p, ev.max_new_tokens,
                        ev.chain_router, ev.seed)

    runs: list[BenchmarkRun] = []
    for b in ev.benchmarks:
        runs.append(_run_benchmark(b, problems[b.name], graders[b.name], gen, team, out_dir, ev))
    summary = build_summary(runs, team.names if hasattr(team, "names") else [a.name for a in team], ev)
    summary["contamination"] = contamination
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    table = summary_table(summary)
    (out_dir / "summary.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return summary


def make_backend(config: EvalConfig, team: Any) -> Any:
    if config.sampling.backend == "hf":
        from llm.rollout.hf import HFBackend

        return HFBackend.from_team(team, batch_size=config.sampling.batch_size)
    from llm.rollout.vllm import VLLMBackend  # raises a clear error when vllm is not installed

    return VLLMBackend.from_team(team, batch_size=config.sampling.batch_size)  # pragma: no cover


def _run_benchmark(b: BenchmarkEntry, items: list[Problem], grader: Callable[[str, Problem], Grade],
                   gen: TeamGenerator, team: Any, out_dir: Path, ev: EvalSection) -> BenchmarkRun:
    kind = BENCHMARKS[b.name].kind
    k = b.samples
    run = BenchmarkRun(b.name, kind, k)
    trace_dir = out_dir / "traces" / b.name
    index = {p.id: i for i, p in enumerate(items)}
    names = [a.name for a in team]
    need_single = any(p in ev.protocols for p in ("single", "best_of", "majority"))

    if need_single:
        path = trace_dir / "single.jsonl"
        done = _resumable(path, index, k, names)
        todo = [p for p in items if p.id not in done]
        start, tokens0 = time.monotonic(), dict(gen.tokens_by_agent)
        bar = _progress(len(todo), f"{b.name} single", ev.progress)
        for chunk in _chunks(todo, ev.problems_per_step):
            msgs = gen.single(chunk, k, seed=ev.seed * 7919 + index[chunk[0].id] + 1)
            for p, per_agent in zip(chunk, msgs):
                rec = _base_record(p, "single", k, names)
                rec["agents"] = [
                    {"agent": names[j], "samples": [{"sample": s, "messages": [m.as_dict()], **grade_record(grader(m.text, p))}
                                                    for s, m in enumerate(per_agent[j])]}
                    for j in range(len(names))
                ]
                _append(path, rec)
                done[p.id] = rec
            bar.update(len(chunk))
        bar.close()
        elapsed = time.monotonic() - start
        for j, name in enumerate(names):
            run.tokens[f"single/{name}"] = gen.tokens_by_agent.get(j, 0) - tokens0.get(j, 0)
            run.seconds[f"single/{name}"] = elapsed  # the phase generates for all agents together
        per_problem = [done[p.id] for p in items]
        for j, name in enumerate(names):
            run.results[f"single/{name}"] = [[sample_result(kind, s) for s in rec["agents"][j]["samples"]] for rec in per_problem]
            if kind == "zebra":
                run.cell_accuracy[f"single/{name}"] = [
                    float(np.mean([s["info"].get("cell_accuracy", 0.0) for s in rec["agents"][j]["samples"]])) for rec in per_problem
                ]
        per_agent_results = [[run.results[f"single/{n}"][i] for n in names] for i in range(len(items))]
        if "best_of" in ev.protocols:
            best = [best_of_with_winners(pa) for pa in per_agent_results]
            run.results["best_of"] = [x[0] for x in best]
            _write_derived(trace_dir / "best_of.jsonl", "best_of", items, k, best, names)
        if "majority" in ev.protocols:
            maj = [majority_samples(pa) for pa in per_agent_results]
            run.results["majority"] = [m[0] for m in maj]
            _write_derived(trace_dir / "majority.jsonl", "majority", items, k, maj, names)

    if "chain" in ev.protocols:
        path = trace_dir / "chain.jsonl"
        done = _resumable(path, index, k, names)
        todo = [p for p in items if p.id not in done]
        start, tokens0 = time.monotonic(), gen.tokens_generated
        bar = _progress(len(todo), f"{b.name} chain", ev.progress)
        for chunk in _chunks(todo, ev.problems_per_step):
            seed = ev.seed * 7919 + index[chunk[0].id] + 1
            schedules = gen.schedules([index[p.id] for p in chunk], k, seed)
            trajs = gen.chain(chunk, schedules, seed)
            for p, per_sample in zip(chunk, trajs):
                rec = _base_record(p, "chain", k, names)
                rec["samples"] = [
                    {"sample": s, "schedule": [names[a] for a in schedules[chunk.index(p)][s]],
                     "messages": [m.as_dict() for m in msgs], **grade_record(grader(msgs[-1].text, p))}
                    for s, msgs in enumerate(per_sample)
                ]
                _append(path, rec)
                done[p.id] = rec
            bar.update(len(chunk))
        bar.close()
        run.tokens["chain"] = gen.tokens_generated - tokens0
        run.seconds["chain"] = time.monotonic() - start
        run.results["chain"] = [[sample_result(kind, s) for s in done[p.id]["samples"]] for p in items]
        if kind == "zebra":
            run.cell_accuracy["chain"] = [
                float(np.mean([s["info"].get("cell_accuracy", 0.0) for s in done[p.id]["samples"]])) for p in items
            ]
    return run


def _write_derived(path: Path, protocol: str, items: list[Problem], k: int,
                   rows: list[tuple[list[SampleResult], list[int | None]]], names: list[str]) -> None:
    """best_of / majority traces (rewritten each run; derived from single.jsonl): per sample the
    chosen agent (its message is in single.jsonl), the answer key and the grade."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for p, (samples, winners) in zip(items, rows):
            rec = _base_record(p, protocol, k, names)
            rec["samples"] = [
                {"sample": s, "chosen_agent": None if w is None else names[w], "answer_key": r.answer_key,
                 "score": r.score, "parsed": r.parsed, "source": "single.jsonl"}
                for s, (r, w) in enumerate(zip(samples, winners))
            ]
            fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")


# ----------------------------------------------------------------------------- summary


def build_summary(runs: Sequence[BenchmarkRun], agent_names: Sequence[str], ev: EvalSection) -> dict[str, Any]:
    """{benchmarks: {name: {protocol: {metric: {value, low, high, level}}, ...}}} plus metadata."""
    out: dict[str, Any] = {"benchmarks": {}, "agents": list(agent_names), "level": ev.level}
    entries = {b.name: b for b in ev.benchmarks}
    for run in runs:
        table: dict[str, Any] = {}
        for protocol, results in run.results.items():
            metrics = summarize(results, ks=entries[run.name].ks, n_boot=ev.n_boot, level=ev.level, seed=ev.seed)
            row: dict[str, Any] = {name: m.as_dict() for name, m in metrics.items()}
            if protocol in run.cell_accuracy:
                from llm.metrics import bootstrap_interval

                row["cell_accuracy"] = bootstrap_interval(run.cell_accuracy[protocol], n_boot=ev.n_boot, level=ev.level,
                                                          seed=ev.seed).as_dict()
            row["problems"] = len(results)
            row["k"] = run.k
            if protocol in run.tokens:
                row["generated_tokens"] = run.tokens[protocol]
                row["seconds"] = round(run.seconds[protocol], 2)
            table[protocol] = row
        out["benchmarks"][run.name] = table
    return out


def summary_table(summary: dict[str, Any]) -> str:
    """Markdown table: one row per benchmark and protocol, value [low, high] per metric."""
    lines = []
    for bench, table in summary["benchmarks"].items():
        metric_names: list[str] = []
        for row in table.values():
            for name in row:
                if isinstance(row[name], dict) and name not in metric_names:
                    metric_names.append(name)
        lines.append(f"### {bench}\n")
        lines.append("| protocol | problems | K | " + " | ".join(metric_names) + " | tokens | s |")
        lines.append("|---|---|---|" + "---|" * len(metric_names) + "---|---|")
        for protocol, row in table.items():
            cells = []
            for name in metric_names:
                m = row.get(name)
                cells.append(f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" if m else "")
            lines.append(f"| {protocol} | {row['problems']} | {row['k']} | " + " | ".join(cells)
                         + f" | {row.get('generated_tokens', '')} | {row.get('seconds', '')} |")
        lines.append("")
    lines.append(f"Intervals: {summary['level']:.0%} percentile bootstrap over problems. "
                 "tokens: generated by this run (per agent for single/*; 0 when resumed from traces); "
                 "s: wall time of the protocol's generation phase (single/* rows share one phase).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.evaluate", description="Evaluate an LLM team on benchmarks.")
    parser.add_argument("--config", required=True, help="eval YAML (team, sampling, eval sections)")
    parser.add_argument("--output-dir", default=None, help="override eval.output_dir")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--k", type=int, default=None, help="override the samples per problem of every benchmark")
    parser.add_argument("--protocols", nargs="+", default=None, choices=PROTOCOLS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with open(args.config, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise EvalConfigError(f"{args.config}: the config must be a mapping")
    ev = dict(data.get("eval") or {})
    if args.output_dir:
        ev["output_dir"] = args.output_dir
    if args.protocols:
        ev["protocols"] = args.protocols
    if args.limit is not None or args.k is not None:
        benches = []
        for b in ev.get("benchmarks", []):
            b = {"name": b} if isinstance(b, str) else dict(b)
            if args.limit is not None:
                b["limit"] = args.limit
            if args.k is not None:
                b["k"] = args.k
                b.pop("ks", None)
            benches.append(b)
        ev["benchmarks"] = benches
    data["eval"] = ev
    evaluate(eval_config_from_dict(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
