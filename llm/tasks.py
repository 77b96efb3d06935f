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

Answer extraction is :func:`llm.rewards.extract.extract_final_answer` (the last of: ``\\boxed{...}``,
an "Answer:" line, an ``<answer>...</answer>`` block, "final answer is X"), with one lenient fallback
for training (:func:`extract_training_answer`: the last "... answer is X"). A response with none of
them is graded 0 with ``parsed=False``.

``contamination_policy`` (warn | error | off): :func:`llm.train` checks the training problems against
the evaluation benchmarks it can find (``llm.contamination.check_against_benchmarks``) before any
model is loaded; ``error`` refuses to train on overlapping problems.

:class:`PromptSource` draws each stage's prompts without replacement (a seeded permutation per
epoch) and has a state that the run's cursor saves for resuming.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llm.rewards.base import Grade, Problem
from llm.rewards.extract import extract_final_answer, parse_integer

TASK_KINDS = ("reasoning_gym", "jsonl")
CONTAMINATION_POLICIES = ("warn", "error", "off")
LOCAL_ANSWER_KINDS = ("integer", "exact")


def answer_kinds() -> tuple[str, ...]:
    """Allowed ``answer_kind`` values: ours plus every kind registered in :mod:`llm.rewards`."""
    try:
        from llm.rewards import grader_kinds
    except ImportError:  # pragma: no cover - llm.rewards is part of the package
        return LOCAL_ANSWER_KINDS
    return tuple(sorted(set(LOCAL_ANSWER_KINDS) | set(grader_kinds())))


class TaskError(ValueError):
    """A task definition or task file is unusable (raised before any model is loaded)."""


@dataclass(frozen=True)
class TaskConfig:
    """The training task (``task:`` in the YAML config)."""

    kind: str = "reasoning_gym"
    names: tuple[str, ...] = ("basic_arithmetic",)
    size: int = 256
    seed: int = 0
    dataset_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str | None = None
    prompt_field: str = "problem"
    answer_field: str = "answer"
    id_field: str | None = None
    answer_kind: str = "integer"
    limit: int | None = None
    contamination_policy: str = "warn"

    def __post_init__(self) -> None:
        if self.contamination_policy not in CONTAMINATION_POLICIES:
            raise TaskError(f"task.contamination_policy must be one of {CONTAMINATION_POLICIES}, "
                            f"got {self.contamination_policy!r}")
        if self.kind not in TASK_KINDS:
            raise TaskError(f"task.kind must be one of {TASK_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "names", tuple(self.names))
        if self.kind == "reasoning_gym":
            if not self.names:
                raise TaskError("task.names must list at least one reasoning-gym dataset")
            if self.size < 1:
                raise TaskError(f"task.size must be >= 1, got {self.size}")
            unknown = set(self.dataset_kwargs) - set(self.names)
            if unknown:
                raise TaskError(f"task.dataset_kwargs names datasets not in task.names: {sorted(unknown)}")
        else:
            if not self.path:
                raise TaskError("task.path is required when task.kind is 'jsonl'")
            if self.answer_kind not in answer_kinds():
                raise TaskError(f"task.answer_kind must be one of {answer_kinds()}, got {self.answer_kind!r}")
        if self.limit is not None and self.limit < 1:
            raise TaskError(f"task.limit must be >= 1 or null, got {self.limit}")


# ---------------------------------------------------------------------------- graders
# One answer extractor for training and evaluation: llm.rewards.extract (boxed, "Answer:" line,
# <answer> tag, "final answer is ...", last occurrence wins). Training tasks add one lenient
# fallback for small chat models that end with "... the answer is 5." and use no anchor.
_ANSWER_IS = re.compile(r"\banswer is\s*:?\s*([^\n]+?)\s*\.?\s*(?:\n|$)", flags=re.IGNORECASE)


def extract_training_answer(response: str) -> str | None:
    """:func:`llm.rewards.extract.extract_final_answer`, else the last "answer is X", else None."""
    extracted = extract_final_answer(response)
    if extracted is not None:
        return extracted
    said = _ANSWER_IS.findall(response)
    return said[-1].strip().strip("$").strip() if said else None


def _normalise(text: str) -> str:
    text = text.replace("$", "").replace("\\,", "").replace(",", "").strip().rstrip(".").strip()
    return re.sub(r"\s+", " ", text).lower()


def grade_integer(response: str, problem: Problem) -> Grade:
    """Integer answers: :func:`extract_training_answer` read by llm.rewards' integer parser."""
    extracted = extract_training_answer(response)
    if extracted is None:
        return Grade(0.0, False, None)
    value = parse_integer(extracted)
    if value is None:
        return Grade(0.0, False, extracted)
    return Grade(float(value == parse_integer(str(problem.answer))), True, extracted)


def grade_exact(response: str, problem: Problem) -> Grade:
    """Normalised string match of the extracted answer (case, spaces, $ and thousands commas ignored)."""
    extracted = extract_training_answer(response)
    if extracted is None:
        return Grade(0.0, False, None)
    return Grade(float(_normalise(extracted) == _normalise(str(problem.answer))), True, extracted)


class ReasoningGymGrader:
    """Grader that scores with the reasoning-gym dataset's own ``score_answer``."""

    def __init__(self, datasets: dict[str, Any]) -> None:
        self.datasets = datasets

    def __call__(self, response: str, problem: Problem) -> Grade:
        extracted = extract_training_answer(response)
        if extracted is None:
            return Grade(0.0, False, None)
        dataset = self.datasets[problem.meta["dataset"]]
        score = float(dataset.score_answer(extracted, problem.meta["entry"]))
        return Grade(min(max(score, 0.0), 1.0), True, extracted)


class KindGrader:
    """Dispatches on ``problem.kind`` to one grader per kind."""

    def __init__(self, graders: dict[str, Callable[[str, Problem], Grade]]) -> None:
        self.graders = graders

    def __call__(self, response: str, problem: Problem) -> Grade:
        try:
            grader = self.graders[problem.kind]
        except KeyError:
            raise TaskError(f"no grader for problem kind {problem.kind!r} (known: {sorted(self.graders)})") from None
        return grader(response, problem)


# ---------------------------------------------------------------------------- tasks
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
    return Task(problems, KindGrader({"reasoning_gym": ReasoningGymGrader(datasets)}), config)


def read_jsonl_problems(config: TaskConfig) -> list[Problem]:
    """Problems of a JSONL file; clear errors for a missing/empty file and missing fields."""
    path = Path(config.path).expanduser()
    if not path.is_file():
        raise TaskError(f"task.path: file not found: {path}")
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskError(f"task.path: {path}:{lineno} is not valid JSON ({err.msg})") from None
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
    if not problems:
        raise TaskError(f"task.path: {path} contains no problems (empty file)")
    return problems


def _jsonl_grader(config: TaskConfig) -> Callable[[str, Problem], Grade]:
    if config.answer_kind == "exact":
        return grade_exact
    try:
        from llm.rewards import get_grader
    except ImportError:  # pragma: no cover
        return grade_integer
    return get_grader(config.answer_kind)


def load_task(config: TaskConfig) -> Task:
    """Build the task: all problems in memory plus the grader."""
    if config.kind == "reasoning_gym":
        task = _reasoning_gym_task(config)
    else:
        task = Task(read_jsonl_problems(config), KindGrader({config.answer_kind: _jsonl_grader(config)}), config)
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
