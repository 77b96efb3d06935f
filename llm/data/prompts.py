"""Prompt templates: how a benchmark item's text is shown to the team.

A template maps the raw problem text (and, for ZebraLogic, its grid header) to the prompt. The raw
text is kept in ``Problem.meta["question"]`` for contamination checks.

- ``dapo``: the DAPO math template that TeamTR trains with (its ``prepare_train_datasets.py``),
  asking for a last line ``Answer: ...``; the math graders read that line (or a ``\\boxed{}``).
- ``boxed``: the Qwen-Math style "put your final answer within \\boxed{}".
- ``zebra_json``: ZeroEval's grid-mode instruction: answer with a JSON object
  ``{"reasoning": ..., "solution": {"House 1": {attr: value, ...}, ...}}``.
- ``raw``: the text as given (AutoLogi items already carry their own instructions).
"""

from __future__ import annotations

import json
from typing import Any, Callable

DAPO = (
    "Solve the following math problem step by step. The last line of your response should be of "
    'the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n'
    "{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)

BOXED = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."

ZEBRA_JSON = (
    "Solve the following logic puzzle. Each house gets exactly one value of every attribute.\n\n"
    "# Puzzle to Solve\n\n{problem}\n\n"
    "# Instruction\n\nNow please solve the above puzzle. Present your reasoning and solution in the "
    "following json format:\n\n{json_template}\n"
)


def zebra_json_template(header: list[str], n_houses: int) -> str:
    """The JSON skeleton of a ZebraLogic answer (ZeroEval grid mode) with blanks to fill."""
    solution = {f"House {i}": {name: "___" for name in header[1:]} for i in range(1, n_houses + 1)}
    return json.dumps({"reasoning": "___", "solution": solution}, indent=4)


def _dapo(problem: str, **_: Any) -> str:
    return DAPO.format(problem=problem)


def _boxed(problem: str, **_: Any) -> str:
    return BOXED.format(problem=problem)


def _raw(problem: str, **_: Any) -> str:
    return problem


def _zebra(problem: str, *, answer: Any = None, **_: Any) -> str:
    if not isinstance(answer, dict) or "header" not in answer or "rows" not in answer:
        raise ValueError("template 'zebra_json' needs the item's reference grid (fields 'header' and 'rows')")
    return ZEBRA_JSON.format(problem=problem, json_template=zebra_json_template(answer["header"], len(answer["rows"])))


TEMPLATES: dict[str, Callable[..., str]] = {"dapo": _dapo, "boxed": _boxed, "zebra_json": _zebra, "raw": _raw}


def apply_template(name: str, problem: str, **item: Any) -> str:
    """``TEMPLATES[name](problem, **item)``; unknown names are an error naming the choices."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name](problem, **item)
