"""Training graders: the lenient answer extraction of training tasks and the graders built on it.

One answer extractor for training and evaluation: :func:`llm.rewards.extract.extract_final_answer`
(boxed, "Answer:" line, <answer> tag, "final answer is ...", last occurrence wins). Training tasks
add one lenient fallback for small chat models that end with "... the answer is 5." and use no
anchor (:func:`extract_training_answer`).

- :func:`grade_integer`, :func:`grade_exact`: JSONL tasks (``answer_kind: integer | exact``);
- :class:`ReasoningGymGrader`: a reasoning-gym dataset's own ``score_answer``, with or without its
  partial credit (``partial_credit``);
- :class:`KindGrader`: one grader per ``Problem.kind``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from llm.config.errors import ConfigError
from llm.rewards.base import Grade, Problem
from llm.rewards.extract import extract_final_answer, parse_integer

#: answer kinds graded here (the others come from the llm.rewards registry)
LOCAL_ANSWER_KINDS = ("integer", "exact")
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


def reasoning_gym_score(dataset: Any, answer: str, entry: dict[str, Any], partial_credit: bool = True) -> float:
    """The dataset's ``score_answer(answer, entry)`` clipped to [0, 1]. reasoning-gym's base class
    gives ``len(oracle) / len(answer)`` when the oracle is only a substring of the answer (``-4``
    for ``4`` scores 0.5); ``partial_credit=False`` keeps only full credit: 1 when the dataset
    scores the answer 1, else 0."""
    score = min(max(float(dataset.score_answer(answer, entry)), 0.0), 1.0)
    return score if partial_credit else float(score >= 1.0)


class ReasoningGymGrader:
    """Grader that scores with the reasoning-gym dataset's own ``score_answer``
    (:func:`reasoning_gym_score`; ``partial_credit=False``: no substring credit)."""

    def __init__(self, datasets: dict[str, Any], partial_credit: bool = True) -> None:
        self.datasets = datasets
        self.partial_credit = bool(partial_credit)

    def __call__(self, response: str, problem: Problem) -> Grade:
        extracted = extract_training_answer(response)
        if extracted is None:
            return Grade(0.0, False, None)
        dataset = self.datasets[problem.meta["dataset"]]
        score = reasoning_gym_score(dataset, extracted, problem.meta["entry"], self.partial_credit)
        return Grade(score, True, extracted)


class KindGrader:
    """Dispatches on ``problem.kind`` to one grader per kind."""

    def __init__(self, graders: dict[str, Callable[[str, Problem], Grade]]) -> None:
        self.graders = graders

    def __call__(self, response: str, problem: Problem) -> Grade:
        try:
            grader = self.graders[problem.kind]
        except KeyError:
            raise ConfigError(f"no grader for problem kind {problem.kind!r} (known: {sorted(self.graders)})") from None
        return grader(response, problem)
