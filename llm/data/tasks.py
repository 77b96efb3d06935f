"""Training tasks: seeded reasoning-gym generators and JSONL problem files, as Problem objects.

Every task yields :class:`llm.rewards.base.Problem` items and one grader (``Task.grader``) with
the :class:`llm.rewards.base.Grader` interface ``grader(response, problem) -> Grade``:

- ``kind: reasoning_gym``: ``names`` lists reasoning-gym datasets (e.g. basic_arithmetic,
  zebra_puzzles, knights_knaves); ``size`` items of each, seeded. Graded by the dataset's own
  ``score_answer`` on the answer extracted from the response.
- ``kind: jsonl``: one JSON object per line with a prompt field and an answer field. Graded by the
  grader of ``answer_kind``: any kind registered in :mod:`llm.rewards` (``integer``, ``math``
  (math-verify), ``zebra``, ...) via ``llm.rewards.get_grader``; ``exact`` (normalised string match)
  and, if the registry is unavailable, ``integer`` fall back to the small graders of this module.
- ``kind: arithmetic``: ``a op b`` items with stated ranges (:mod:`llm.data.arithmetic`, settings in
  ``arithmetic:``), seeded; ``split: train`` (default) or ``split: heldout`` (disjoint by
  construction; what ``llm.evaluate --run`` scores). Graded by the ``integer`` grader.

``grader:`` passes options to the registered grader of jsonl and arithmetic tasks, e.g.
``{fallback_last_number: true}``: the integer grader reads the last number of the answer when it
finds no ``Answer:`` line or box (small chat models that answer in a sentence).

Answer extraction is :func:`llm.rewards.extract.extract_final_answer` (the last of: ``\\boxed{...}``,
an "Answer:" line, an ``<answer>...</answer>`` block, "final answer is X"), with one lenient fallback
for training (:func:`extract_training_answer`: the last "... answer is X"). A response with none of
them is graded 0 with ``parsed=False``.

``contamination_policy`` (warn | error | off): the trainer (:mod:`llm.train.trainer`) checks the training problems against
the evaluation benchmarks it can find (``llm.data.contamination.check_against_benchmarks``) before any
model is loaded; ``error`` refuses to train on overlapping problems.

:class:`PromptSource` draws each stage's prompts without replacement (a seeded permutation per
epoch) and has a state that the run's cursor saves for resuming.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llm.config.choices import CONTAMINATION_POLICIES
from llm.config.errors import ConfigError
from llm.config.fields import Section, option
from llm.data.arithmetic import SPLITS, ArithmeticConfig, arithmetic_split
from llm.data.jsonl import DataError, read_jsonl
from llm.rewards import get_grader, grader_kinds
from llm.rewards.base import Grade, Problem
from llm.rewards.extract import parse_integer
from llm.rewards.training import LOCAL_ANSWER_KINDS, KindGrader, ReasoningGymGrader, grade_exact

TASK_KINDS = ("reasoning_gym", "jsonl", "arithmetic")


def answer_kinds() -> tuple[str, ...]:
    """Allowed ``answer_kind`` values: ours plus every kind registered in :mod:`llm.rewards`."""
    return tuple(sorted(set(LOCAL_ANSWER_KINDS) | set(grader_kinds())))


class TaskError(ConfigError):
    """A task definition or task file is unusable (raised before any model is loaded)."""


@dataclass(frozen=True)
class TaskConfig(Section):
    """The training task (``task:`` in the YAML config)."""

    kind: str = option("reasoning_gym", choices=TASK_KINDS, help="reasoning_gym (seeded generators), jsonl "
                       "(a problem file) or arithmetic (a op b with stated ranges)")
    names: tuple[str, ...] = option(("basic_arithmetic",), help="reasoning_gym: dataset names (e.g. "
                                    "basic_arithmetic, zebra_puzzles, knights_knaves)")
    size: int = option(256, ge=1, help="reasoning_gym: items per dataset; arithmetic: items of the train split")
    seed: int = option(0, help="reasoning_gym: generator seed (dataset k uses seed + k); arithmetic: shuffle seed")
    dataset_kwargs: dict[str, dict[str, Any]] = option(default_factory=dict, help="reasoning_gym: extra "
                                                       "arguments per dataset name")
    path: str | None = option(None, help="jsonl: the problem file (one JSON object per line)")
    prompt_field: str = option("problem", help="jsonl: field holding the problem text")
    answer_field: str = option("answer", help="jsonl: field holding the reference answer")
    id_field: str | None = option(None, help="jsonl: field holding a unique id (null: file stem + line)")
    answer_kind: str = option("integer", help="jsonl: grader of the answers: integer, exact or any kind "
                              "registered in llm.rewards (math, zebra, ...)")
    arithmetic: ArithmeticConfig = option(default_factory=ArithmeticConfig, help="arithmetic: operand ranges, "
                                          "operators, prompt template, held-out size")
    split: str = option("train", choices=SPLITS, help="arithmetic: train (what llm.train uses) or heldout (the "
                        "disjoint evaluation items)")
    grader: dict[str, Any] = option(default_factory=dict, help="jsonl/arithmetic: options of the registered grader, "
                                    "e.g. {fallback_last_number: true} for integer answers given in a sentence; "
                                    "reasoning_gym: {partial_credit: false} drops reasoning-gym's substring credit")
    limit: int | None = option(None, ge=1, help="use only the first N problems")
    contamination_policy: str = option("warn", choices=CONTAMINATION_POLICIES, help="check the training "
                                       "problems against the evaluation benchmarks: error refuses, warn "
                                       "warns, off skips")

    def validate(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        if self.kind == "reasoning_gym":
            if not self.names:
                raise TaskError("task.names must list at least one reasoning-gym dataset", key="names")
            unknown = set(self.dataset_kwargs) - set(self.names)
            if unknown:
                raise TaskError(f"task.dataset_kwargs names datasets not in task.names: {sorted(unknown)}",
                                key="dataset_kwargs")
        elif self.kind == "jsonl":
            if not self.path:
                raise TaskError("task.path is required when task.kind is 'jsonl'", key="path")
            if self.answer_kind not in answer_kinds():
                raise TaskError(f"task.answer_kind must be one of {answer_kinds()}, got {self.answer_kind!r}",
                                key="answer_kind")
            if self.answer_kind == "exact" and self.grader:
                raise TaskError("task.grader: the exact grader takes no options", key="grader")
        if self.split != "train" and self.kind != "arithmetic":
            raise TaskError(f"task.split: only kind arithmetic has a held-out split (kind is {self.kind!r})",
                            key="split")


@dataclass
class Task:
    problems: list[Problem]
    grader: Callable[[str, Problem], Grade]
    config: TaskConfig


def _reasoning_gym_task(config: TaskConfig) -> Task:
    try:
        import reasoning_gym
    except ImportError as err:  # pragma: no cover - environment dependent
        raise TaskError("task.kind 'reasoning_gym' needs the reasoning-gym package (pip install reasoning-gym)") from err
    datasets, problems = {}, []
    for k, name in enumerate(config.names):
        try:
            ds = reasoning_gym.create_dataset(name, size=config.size, seed=config.seed + k,
                                              **config.dataset_kwargs.get(name, {}))
        except Exception as err:  # reasoning-gym raises various errors for unknown names/kwargs
            raise TaskError(f"task.names: cannot create reasoning-gym dataset {name!r}: {err}") from err
        datasets[name] = ds
        for i in range(len(ds)):
            entry = ds[i]
            problems.append(
                Problem(id=f"{name}/{config.seed + k}/{i}", prompt=entry["question"], answer=entry["answer"],
                        kind="reasoning_gym", meta={"dataset": name, "entry": entry})
            )
    try:
        grader = ReasoningGymGrader(datasets, **config.grader)  # {partial_credit: false}: no substring credit
    except TypeError as err:  # an option the grader does not take
        raise TaskError(f"task.grader: {err}", key="grader") from None
    return Task(problems, KindGrader({"reasoning_gym": grader}), config)


def read_jsonl_problems(config: TaskConfig) -> list[Problem]:
    """Problems of a JSONL file; clear errors for a missing/empty/non-UTF-8 file and missing fields."""
    path = Path(config.path).expanduser()
    problems: list[Problem] = []
    try:
        for lineno, row in read_jsonl(path, what="task file"):
            if not isinstance(row, dict):
                raise TaskError(f"task.path: {path}:{lineno} must be a JSON object")
            for key in (config.prompt_field, config.answer_field):
                if key not in row:
                    raise TaskError(f"task.path: {path}:{lineno} has no field {key!r} (fields: {sorted(row)})")
            answer = row[config.answer_field]
            if config.answer_kind == "integer" and parse_integer(str(answer)) is None:
                raise TaskError(f"task.path: {path}:{lineno}: answer {answer!r} is not an integer (answer_kind)")
            pid = str(row[config.id_field]) if config.id_field and config.id_field in row else f"{path.stem}/{lineno}"
            problems.append(Problem(id=pid, prompt=str(row[config.prompt_field]), answer=answer,
                                    kind=config.answer_kind, meta={}))
    except DataError as err:
        raise TaskError(f"task.path: {err.message}", key="task.path") from None
    if not problems:
        raise TaskError(f"task.path: {path} contains no problems (empty file)")
    return problems


def _registered_grader(kind: str, options: dict[str, Any]) -> Callable[[str, Problem], Grade]:
    try:
        return get_grader(kind, **options)
    except TypeError as err:  # an option the grader does not take
        raise TaskError(f"task.grader: {err}", key="grader") from None


def _jsonl_task(config: TaskConfig) -> Task:
    kind = config.answer_kind
    grader = grade_exact if kind == "exact" else _registered_grader(kind, config.grader)
    return Task(read_jsonl_problems(config), KindGrader({kind: grader}), config)


def _arithmetic_task(config: TaskConfig) -> Task:
    problems = arithmetic_split(config.arithmetic, config.seed, config.split, config.size)
    return Task(problems, KindGrader({"integer": _registered_grader("integer", config.grader)}), config)


#: task kind -> builder(config) -> Task
TASK_BUILDERS: dict[str, Callable[[TaskConfig], Task]] = {
    "reasoning_gym": _reasoning_gym_task,
    "jsonl": _jsonl_task,
    "arithmetic": _arithmetic_task,
}


def load_task(config: TaskConfig) -> Task:
    """Build the task: all problems in memory plus the grader."""
    task = TASK_BUILDERS[config.kind](config)
    if config.limit is not None:
        task.problems = task.problems[: config.limit]
    return task


class PromptSource:
    """Draws prompts for each stage: without replacement, reshuffled every epoch (seeded).

    Callable as ``source(n) -> list[Problem]``; ``state_dict``/``load_state_dict`` for resuming.
    """

    def __init__(self, problems: Sequence[Problem], seed: int) -> None:
        if not problems:
            raise TaskError("PromptSource needs at least one problem")
        self.problems = list(problems)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.problems)).tolist()

    def __call__(self, n: int) -> list[Problem]:
        out = []
        for _ in range(n):
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            out.append(self.problems[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
