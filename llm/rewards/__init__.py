"""Rewards: one :class:`Grader` per problem kind.

``get_grader(kind, **options)`` returns the grader for ``Problem.kind``:

| kind | grader | used by | defaults follow |
|---|---|---|---|
| ``integer`` | :class:`IntegerGrader` | AIME 2024 / 2025, integer-answer training sets | Qwen2.5-Math / Math-Verify extraction |
| ``math`` | :class:`MathVerifyGrader` (math-verify, timeout) | MATH-500, LaTeX-answer training sets | Math-Verify |
| ``zebra`` | :class:`ZebraGrader` (cell / puzzle accuracy) | ZebraLogic | ZeroEval |
| ``autologi`` | :class:`AutoLogiGrader` (the item's verifier code) | AutoLogi | AutoLogi ``evaluation/eval.py`` |

``options`` are the grader's constructor fields (the ``grader:`` mapping of a benchmark in YAML);
``docs/graders.md`` lists every convention, its default and the reference scorer behind it.
Other modules add kinds with :func:`register_grader`.
"""

from __future__ import annotations

from typing import Any, Callable

from llm.rewards.base import Grade, Grader, Problem
from llm.rewards.logic import AutoLogiGrader, ZebraGrader
from llm.rewards.math import IntegerGrader, MathVerifyGrader

_FACTORIES: dict[str, Callable[..., Grader]] = {
    "integer": IntegerGrader,
    "math": MathVerifyGrader,
    "zebra": ZebraGrader,
    "autologi": AutoLogiGrader,
}


def register_grader(kind: str, factory: Callable[..., Grader]) -> None:
    """Make ``get_grader(kind, **options)`` return ``factory(**options)``."""
    _FACTORIES[kind] = factory


def grader_kinds() -> list[str]:
    return sorted(_FACTORIES)


def get_grader(kind: str, **options: Any) -> Grader:
    """The grader for problems of ``kind``; ``options`` go to its constructor."""
    if kind not in _FACTORIES:
        raise KeyError(f"no grader for problem kind {kind!r}; known kinds: {grader_kinds()}")
    return _FACTORIES[kind](**options)


__all__ = [
    "AutoLogiGrader",
    "Grade",
    "Grader",
    "IntegerGrader",
    "MathVerifyGrader",
    "Problem",
    "ZebraGrader",
    "get_grader",
    "grader_kinds",
    "register_grader",
]
