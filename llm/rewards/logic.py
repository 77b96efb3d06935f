"""Logic-puzzle graders: ZebraLogic (grid cells) and AutoLogi (the benchmark's own verifier code).

ZebraLogic (kind ``"zebra"``)
-----------------------------
Reference (``problem.answer``): ``{"header": ["House", attr1, ...], "rows": [["1", v, ...], ...]}``
as in the shared file. The model answers with a JSON object, in any of three layouts:

- ZeroEval's grid-mode format: ``{"reasoning": ..., "solution": {"House 1": {"Name": "Bob", ...}}}``;
- the same without the ``solution`` wrapper: ``{"House 1": {...}, ...}``;
- the reference layout ``{"header": [...], "rows": [[...]]}``.

The last JSON object of the output that parses is used. Cells are compared case-insensitively
with whitespace collapsed (as ZeroEval does); attribute names are matched ignoring case, spaces and
underscores. ``info["cell_accuracy"]`` is the fraction of the N x M solution cells right (missing
cells count as wrong); the grade's ``score`` is puzzle accuracy (1 only when every cell is right)
by default, or the cell accuracy with ``ZebraGrader(score="cell")``. No parsable JSON grid: parse
failure.

AutoLogi (kind ``"autologi"``)
------------------------------
Format of the official data (``8188zq/AutoLogi``, ``testing-data/AutoLogi_{en,cn}.jsonl``) and of
its scorer (``evaluation/eval.py``, ``compute_coding_pass1``): each item carries Python source
``code.Inputs_Check_code`` (defines ``inputs_check(inputs) -> bool``) and
``code.Constraint_List_code`` (defines constraint functions and ``constraint_list``). A model
answer is a Python literal (dict/list, often with sets) that is correct when ``inputs_check``
accepts it and every constraint in ``constraint_list`` holds. Extraction as in the official scorer:
the last fenced code block, else the last ``{...}``, else the last ``[...]``; ``//`` comments
removed, ``true/false`` mapped to Python; ``name = {...}`` accepted. The answer is read with
``ast.literal_eval`` only (never executed). The benchmark's verifier code *is* executed, in a
separate isolated interpreter (``python -I``) with a timeout (20 s as in the official scorer), and
only when the caller opts in with ``trust_verifier_code=True`` (like ``trust_remote_code``).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from llm.rewards.base import Grade, Problem
from llm.rewards.extract import balanced_spans, extract_last_json_object

# ----------------------------------------------------------------------------- ZebraLogic


def _norm_cell(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value)).strip().lower()


def _norm_key(key: Any) -> str:
    return re.sub(r"[\s_\-]+", "", str(key)).lower()


def zebra_reference_cells(answer: dict[str, Any]) -> dict[tuple[int, str], str]:
    """{(house number, normalised attribute): normalised value} of a reference grid; the House
    column itself is not a cell. Raises ValueError naming the missing field when malformed."""
    for key in ("header", "rows"):
        if key not in answer:
            raise ValueError(f"ZebraLogic reference answer lacks the field {key!r}")
    header = [_norm_key(h) for h in answer["header"]]
    cells: dict[tuple[int, str], str] = {}
    for row in answer["rows"]:
        if len(row) != len(header):
            raise ValueError(f"ZebraLogic reference row {row!r} does not match header {answer['header']!r}")
        house = int(str(row[0]).strip())
        for name, value in zip(header[1:], row[1:]):
            cells[(house, name)] = _norm_cell(value)
    return cells


def zebra_prediction_cells(obj: Any) -> dict[tuple[int, str], str] | None:
    """Cells of a predicted grid in any accepted layout (module docstring), or None."""
    if not isinstance(obj, dict):
        return None
    if "header" in obj and "rows" in obj:
        try:
            return zebra_reference_cells(obj)
        except (ValueError, TypeError):
            return None
    sol = obj.get("solution", obj)
    if not isinstance(sol, dict):
        return None
    cells: dict[tuple[int, str], str] = {}
    for house_key, attrs in sol.items():
        m = re.search(r"\d+", str(house_key))
        if m is None or not isinstance(attrs, dict):
            continue
        house = int(m.group())
        for name, value in attrs.items():
            if isinstance(value, (dict, list)):
                continue
            cells[(house, _norm_key(name))] = _norm_cell(value)
    return cells or None


@dataclass(frozen=True)
class ZebraGrader:
    """Cell and puzzle accuracy of a JSON grid answer (see the module docstring)."""

    score: str = "puzzle"

    def __post_init__(self) -> None:
        if self.score not in ("puzzle", "cell"):
            raise ValueError(f"ZebraGrader.score must be 'puzzle' or 'cell', got {self.score!r}")

    def __call__(self, response: str, problem: Problem) -> Grade:
        gold = zebra_reference_cells(problem.answer)
        obj = extract_last_json_object(response)
        pred = zebra_prediction_cells(obj) if obj is not None else None
        if pred is None:
            return Grade(0.0, parsed=False, extracted=None, info={"cell_accuracy": 0.0})
        right = sum(pred.get(key) == value for key, value in gold.items())
        cell_acc = right / len(gold)
        puzzle = float(right == len(gold))
        extracted = json.dumps(_canonical_grid(pred), ensure_ascii=False, sort_keys=True)
        score = puzzle if self.score == "puzzle" else cell_acc
        return Grade(score, parsed=True, extracted=extracted, info={"cell_accuracy": cell_acc, "puzzle_accuracy": puzzle})


def _canonical_grid(cells: dict[tuple[int, str], str]) -> dict[str, dict[str, str]]:
    grid: dict[str, dict[str, str]] = {}
    for (house, name), value in sorted(cells.items()):
        grid.setdefault(f"House {house}", {})[name] = value
    return grid


# ----------------------------------------------------------------------------- AutoLogi

AUTOLOGI_TIMEOUT_S = 20.0

# Runs in a fresh `python -I` process: reads {"check": src, "constraints": src, "answer": repr}
# from stdin, prints "True"/"False". Mirrors verify_function of AutoLogi's evaluation/eval.py.
_AUTOLOGI_RUNNER = r"""
import ast, json, sys
job = json.loads(sys.stdin.read())
ns = {}
exec(compile(job["check"], "<Inputs_Check_code>", "exec"), ns)
exec(compile(job["constraints"], "<Constraint_List_code>", "exec"), ns)
inputs = ast.literal_eval(job["answer"])
ok = bool(ns["inputs_check"](inputs)) and all(bool(c(inputs)) for c in ns["constraint_list"])
print("AUTOLOGI_RESULT", ok)
"""


def extract_autologi_answer(text: str) -> Any | None:
    """The model's answer as a Python literal, following AutoLogi's official extraction (see the
    module docstring); None when nothing can be read. Never executes the text."""
    blocks = re.findall(r"```(?:\s*[\w]+)?\s*\n(.*?)```", text, re.DOTALL)
    if blocks:
        candidate: str | None = blocks[-1]
    else:
        dicts = balanced_spans(text, "{", "}")
        lists = re.findall(r"\[.*?\]", text, re.DOTALL)
        candidate = dicts[-1] if dicts else (lists[-1] if lists else None)
    if candidate is None:
        return None
    candidate = re.sub(r"//.*?\n", "\n", candidate)
    for attempt in (candidate, candidate.split("=", 1)[1] if "=" in candidate else None):
        if attempt is None:
            continue
        value = _literal(attempt.strip())
        if value is not None:
            return value
    try:
        return json.loads(candidate)
    except (json.JSONDecodeError, ValueError):
        return None


def _literal(s: str) -> Any | None:
    s = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", s))
    try:
        value = ast.literal_eval(s)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, (dict, list, tuple, set)) else None


@dataclass(frozen=True)
class AutoLogiGrader:
    """Runs the item's own verifier code on the extracted answer (see the module docstring).

    ``problem.answer`` must be ``{"Inputs_Check_code": str, "Constraint_List_code": str}``.
    """

    trust_verifier_code: bool = False
    timeout_s: float = AUTOLOGI_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"AutoLogiGrader.timeout_s must be > 0, got {self.timeout_s}")

    def __call__(self, response: str, problem: Problem) -> Grade:
        if not self.trust_verifier_code:
            raise PermissionError(
                "AutoLogi grading executes the Python verifier code shipped in the data file "
                f"(problem {problem.id!r}). Opt in with AutoLogiGrader(trust_verifier_code=True) "
                "or `trust_verifier_code: true` in the eval config, for files you trust."
            )
        answer = problem.answer if isinstance(problem.answer, dict) else {}
        for key in ("Inputs_Check_code", "Constraint_List_code"):
            if not isinstance(answer.get(key), str):
                raise ValueError(f"AutoLogi problem {problem.id!r}: answer lacks the field code.{key}")
        value = extract_autologi_answer(response)
        if value is None:
            return Grade(0.0, parsed=False, extracted=None)
        literal = repr(value)
        job = json.dumps(
            {"check": answer["Inputs_Check_code"], "constraints": answer["Constraint_List_code"], "answer": literal}
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _AUTOLOGI_RUNNER],
                input=job,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
            )
        except subprocess.TimeoutExpired:
            return Grade(0.0, parsed=True, extracted=literal, info={"error": "timeout"})
        ok = "AUTOLOGI_RESULT True" in proc.stdout
        info: dict[str, Any] = {}
        if proc.returncode != 0:
            # An answer of the wrong shape makes the verifier raise (KeyError, TypeError, ...):
            # the official scorer counts that as wrong, not as an extraction failure.
            info["error"] = "verifier_raised"
            info["stderr_tail"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
        return Grade(float(ok), parsed=True, extracted=literal, info=info)
