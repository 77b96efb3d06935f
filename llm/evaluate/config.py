"""The evaluation config (``python -m llm.evaluate --config configs/eval_*.yaml``).

Top level (:class:`EvalConfig`): ``team`` and ``sampling`` exactly as in the training config
(:mod:`llm.config.sections`), plus ``eval`` (:class:`EvalSection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from llm.config.build import build
from llm.config.choices import CONTAMINATION_POLICIES, ROUTER_KINDS
from llm.config.errors import ConfigError
from llm.config.fields import Section, option
from llm.config.sections import SamplingSection, TeamConfig
from llm.config.yamlio import load_config_file
from llm.data.benchmarks import BENCHMARKS

PROTOCOLS = ("single", "chain", "best_of", "majority")
#: the benchmark name of a training run's held-out split (``eval.task_run``)
TASK_BENCHMARK = "task"


@dataclass(frozen=True)
class BenchmarkEntry(Section):
    """One benchmark to evaluate (a bare name is short for ``{name: ...}``)."""

    SHORTHAND: ClassVar[str] = "name"

    name: str = option(help=f"benchmark name, one of {sorted(BENCHMARKS)}, or {TASK_BENCHMARK!r}: the held-out split "
                       "of the task of eval.task_run")
    k: int | None = option(None, ge=1, help="samples per problem (null: the papers' K of the benchmark)")
    ks: tuple[int, ...] | None = option(None, help="the k of pass@k (null: 1 and K)")
    limit: int | None = option(None, ge=1, help="evaluate the first N items only")
    path: str | None = option(None, help="data file or datasets id (see llm.data.load_benchmark)")
    root: str | None = option(None, help="benchmark folder laid out like the shared one")
    template: str | None = option(None, help="prompt template (llm.data.prompts.TEMPLATES); null: the benchmark's")
    lang: str | None = option(None, help="AutoLogi: language (en or cn)")
    fields: dict[str, str] | None = option(None, help="field names of a custom file (problem, answer, id)")
    grader: dict[str, Any] = option(default_factory=dict, help="grader options (e.g. {score: cell} for ZebraLogic)")

    def validate(self) -> None:
        if self.name not in BENCHMARKS and self.name != TASK_BENCHMARK:
            raise ConfigError(f"eval.benchmarks: unknown benchmark {self.name!r}; known: {sorted(BENCHMARKS)}",
                              key="name")
        if self.ks is not None:
            bad = [k for k in self.ks if not 1 <= k <= self.samples]
            if bad:
                raise ConfigError(f"eval.benchmarks[{self.name}].ks must lie in [1, k={self.samples}], got {bad}",
                                  key="ks")

    @property
    def samples(self) -> int:
        if self.k is not None:
            return self.k
        return BENCHMARKS[self.name].k if self.name in BENCHMARKS else 1


@dataclass(frozen=True)
class ContaminationSection(Section):
    """Training data to check the evaluation sets against."""

    train_files: tuple[str, ...] = option((), help="JSONL/parquet training files")
    field: str = option("problem", help="problem-text field of the training files")
    train_config: str | None = option(None, help="a training config whose task is the training data")
    policy: str = option("warn", choices=CONTAMINATION_POLICIES, help="error refuses, warn warns, off only reports")
    ngram: int = option(13, ge=1, help="word n-gram length of the loose check")
    ngram_threshold: float = option(0.5, gt=0, le=1, help="share of an item's n-grams found that flags it")


@dataclass(frozen=True)
class ChainRouter(Section):
    """Speaker schedule of the chain protocol (see :class:`llm.team.Router`)."""

    kind: str = option("round_robin", choices=ROUTER_KINDS, help="round_robin (TeamTR's chain evaluation), "
                       "fixed or random")
    rounds: int = option(1, ge=1, help="rounds per trajectory")


@dataclass(frozen=True)
class EvalSection(Section):
    """The ``eval:`` section."""

    benchmarks: tuple[BenchmarkEntry, ...] = option(help="benchmarks to evaluate (names or mappings)")
    protocols: tuple[str, ...] = option(PROTOCOLS, help=f"subset of {list(PROTOCOLS)}")
    output_dir: str = option("runs/eval", help="where traces and the summary go (resumable)")
    seed: int = option(0, help="seed of schedules and generation")
    max_new_tokens: int | None = option(None, ge=1, help="token limit of every message (the papers use 32768); "
                                        "null: each agent's own")
    problems_per_step: int = option(8, ge=1, help="problems generated together (also the resume granularity)")
    chain_router: ChainRouter = option(default_factory=ChainRouter, help="speaker schedule of the chain protocol")
    n_boot: int = option(1000, ge=1, help="bootstrap resamples of the intervals")
    level: float = option(0.95, gt=0, lt=1, help="interval level")
    trust_verifier_code: bool = option(False, help="AutoLogi: run the items' verifier code")
    math_timeout_s: int = option(5, ge=1, help="math-verify timeout per answer in seconds")
    contamination: ContaminationSection = option(default_factory=ContaminationSection,
                                                 help="training data to check the evaluation sets against")
    task_run: str | None = option(None, help=f"an llm.train run directory: benchmark {TASK_BENCHMARK!r} is the "
                                  "held-out split of its task, graded by its training grader")
    progress: bool = option(True, help="tqdm bars")

    def validate(self) -> None:
        if not self.benchmarks:
            raise ConfigError("eval.benchmarks must list at least one benchmark", key="benchmarks")
        names = [b.name + (b.path or "") for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ConfigError(f"eval.benchmarks lists a benchmark twice: {names}", key="benchmarks")
        if any(b.name == TASK_BENCHMARK for b in self.benchmarks) and not self.task_run:
            raise ConfigError(f"eval.benchmarks: {TASK_BENCHMARK!r} needs eval.task_run (a training run directory)",
                              key="task_run")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise ConfigError(f"eval.protocols must be a non-empty subset of {list(PROTOCOLS)}, "
                              f"got {list(self.protocols)}", key="protocols")


@dataclass(frozen=True)
class EvalConfig(Section):
    """An evaluation: the team and sampling as in training, plus ``eval``."""

    team: TeamConfig = option(help="the agents, the router and the handoff format (as in training)")
    eval: EvalSection = option(help="benchmarks, protocols, output")
    sampling: SamplingSection = option(default_factory=SamplingSection, help="rollout settings and backend "
                                       "(as in training)")


def eval_config_from_dict(data: Any) -> EvalConfig:
    """A validated :class:`EvalConfig` from plain data (e.g. parsed YAML)."""
    return build(EvalConfig, data, "")


def load_eval_config(path: str | Path, overrides: Sequence[str] = ()) -> EvalConfig:
    """Read a YAML file (plus ``--set`` overrides) into a validated :class:`EvalConfig`."""
    return load_config_file(path, eval_config_from_dict, overrides)
