"""The one reward interface: a grader maps (model output, problem) to a Grade.

Training tasks (reasoning-gym, JSONL problem files) and evaluation benchmarks (AIME, MATH-500,
ZebraLogic, AutoLogi) all produce :class:`Problem` objects and are graded through :class:`Grader`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Problem:
    """One task item.

    - ``id``: stable identifier (used for resuming and contamination checks).
    - ``prompt``: the problem statement shown to the team.
    - ``answer``: the reference answer, in the form the grader of ``kind`` expects.
    - ``kind``: which grader applies (e.g. "integer", "math", "zebra", "autologi", "reasoning_gym").
    - ``meta``: extra read-only information a grader may need (e.g. a reasoning-gym entry).
    """

    id: str
    prompt: str
    answer: Any
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grade:
    """Outcome of grading one output: ``score`` in [0, 1]; ``parsed`` False when no answer could be
    extracted (counted separately from wrong answers); ``extracted`` the answer that was read.

    ``info`` holds optional per-grader numbers and flags (e.g. ``cell_accuracy`` for ZebraLogic,
    ``error="timeout"`` when a verifier ran out of time). It defaults to empty, so
    ``Grade(score, parsed, extracted)`` stays valid.
    """

    score: float
    parsed: bool
    extracted: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Grade.score must be in [0, 1], got {self.score}")

    @property
    def correct(self) -> bool:
        """Fully correct (``score == 1``); what pass@K and maj@K count."""
        return self.score >= 1.0


class Grader(Protocol):
    def __call__(self, response: str, problem: Problem) -> Grade: ...
