"""Logic-puzzle graders: ZebraLogic (grid cells) and AutoLogi (the benchmark's own verifier code).

ZebraLogic (kind ``"zebra"``)
-----------------------------
Reference (``problem.answer``): ``{"header": ["House", attr1, ...], "rows": [["1", v, ...], ...]}``
as in the shared file. The defaults are those of ZeroEval's official scorer
(``src/evaluation/zebra_grid_eval.py`` with ``extract_last_complete_json``), so that puzzle and
cell accuracy can be compared with the ZebraLogic leaderboard:

- the last complete top-level ``{...}`` of the output is the answer, read with ``json.loads``
  after every newline is removed (a raw newline inside a string is not an error); if it does not
  parse there is no answer (``json_repair=True``: try fenced ```json blocks and earlier objects
  too and drop trailing commas);
- the answer is ``{"reasoning": ..., "solution": {"House 1": {"Name": "Bob", ...}}}``; no
  ``solution`` (or ``null``) is no answer (``layouts``: also accept the bare house map
  ``"houses"`` and the reference layout ``"rows"``);
- house keys ``House i`` and attribute names as in the reference header, exactly (``keys="loose"``:
  case, spaces, underscores ignored and any key with the house number);
- a cell is right when ``value.lower().strip()`` equals the reference's; inner whitespace is kept
  (``cells="collapse_space"``: runs of whitespace count as one space); a list cell counts by its
  first element (``list_cells``: "first" as ZeroEval, "single" only one-element lists, "wrong");
  empty, ``null`` or nested-object cells are wrong. ZeroEval raises on a number cell; here it is
  compared as text (the one deliberate difference).

``info`` holds ``cells_correct`` and ``cells_total`` (so the leaderboard's cell accuracy, total
correct cells / total cells, can be summed over puzzles), ``cell_accuracy`` (this puzzle's
fraction) and ``puzzle_accuracy``; the grade's ``score`` is puzzle accuracy (1 only when every cell
is right) by default, or the cell accuracy with ``ZebraGrader(score="cell")``.

AutoLogi (kind ``"autologi"``)
------------------------------
Format of the official data (``8188zq/AutoLogi``, ``testing-data/AutoLogi_{en,cn}.jsonl``) and of
its scorer (``evaluation/eval.py``, ``compute_coding_pass1``): each item carries Python source
``code.Inputs_Check_code`` (defines ``inputs_check(inputs) -> bool``) and
``code.Constraint_List_code`` (defines constraint functions and ``constraint_list``). A model
answer is a Python literal (dict/list, often with sets) that is correct when ``inputs_check``
accepts it and every constraint in ``constraint_list`` holds. Extraction (``extraction="official"``,
the default) is the official scorer's step by step: the last fenced code block, else the last
``{...}``, else the last ``[...]``; ``//`` comments removed; ``true``/``false`` replaced;
``ast.literal_eval``, else the part after the first ``=``, else ``json.loads``. That includes its
accidents: an indented fenced block (a code block inside a list item) ends in a whitespace-only
line, which ``ast.literal_eval`` rejects (``IndentationError``), so such an answer is read only
when it is valid JSON (a Python set or tuple there is an extraction failure); and ``true`` is
replaced inside words as well. ``extraction="lenient"`` strips the block first, replaces only
whole words and accepts only containers. The answer is read with ``ast.literal_eval`` /
``json.loads`` only (never executed). The benchmark's verifier code *is* executed, in a
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

from llm.config.errors import ConfigError
from llm.config.fields import Section, option
from llm.rewards.base import Grade, Problem
from llm.rewards.extract import balanced_spans, loads_lenient

# ----------------------------------------------------------------------------- ZebraLogic

ZEBRA_LAYOUTS = ("solution", "houses", "rows")
ZEBRA_KEYS = ("exact", "loose")
ZEBRA_CELLS = ("strip_lower", "collapse_space")
ZEBRA_LIST_CELLS = ("first", "single", "wrong")


def _norm_key(key: Any) -> str:
    return re.sub(r"[\s_\-]+", "", str(key)).lower()


def _cell_text(value: Any, list_cells: str) -> str | None:
    """The text of a predicted cell, or None when it cannot be right (empty, null, an object)."""
    if isinstance(value, list):
        if not value or list_cells == "wrong" or (list_cells == "single" and len(value) != 1):
            return None
        value = value[0]
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    return text if text else None


def _cell_norm(value: str, cells: str) -> str:
    """The form in which two cells are compared (ZeroEval: ``lower().strip()``)."""
    if cells == "collapse_space":
        value = re.sub(r"\s+", " ", value)
    return value.lower().strip()


def zebra_reference_grid(answer: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{"House i": {attribute: value}}`` of a reference answer, as ZeroEval builds its solution
    table; the House column itself is not a cell. Raises ValueError naming the missing field."""
    for key in ("header", "rows"):
        if key not in answer:
            raise ValueError(f"ZebraLogic reference answer lacks the field {key!r}")
    header = list(answer["header"])
    grid: dict[str, dict[str, str]] = {}
    for row in answer["rows"]:
        if len(row) != len(header):
            raise ValueError(f"ZebraLogic reference row {row!r} does not match header {header!r}")
        grid[f"House {int(str(row[0]).strip())}"] = {str(h): str(v) for h, v in zip(header[1:], row[1:])}
    return grid


def _rows_to_grid(obj: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return zebra_reference_grid(obj)
    except (ValueError, TypeError):
        return None


def zebra_prediction(obj: Any, layouts: tuple[str, ...] = ("solution",)) -> tuple[bool, Any]:
    """``(answered, house table)`` of a decoded model answer. ``answered`` False is ZeroEval's
    "no answer" (no ``solution`` key or ``null``, unless another accepted layout matches)."""
    if not isinstance(obj, dict):
        return False, None
    if "solution" in layouts and obj.get("solution") is not None:
        return True, obj["solution"]
    if "rows" in layouts and "header" in obj and "rows" in obj:
        grid = _rows_to_grid(obj)
        if grid is not None:
            return True, grid
    if "houses" in layouts and any(re.search(r"\d", str(k)) and isinstance(v, dict) for k, v in obj.items()):
        return True, obj
    return False, None


def _lookup(table: dict[str, Any], key: str, keys: str) -> Any:
    if keys == "exact":
        return table.get(key)
    if key in table:
        return table[key]
    if key.startswith("House "):  # "house 1", "House_1", "1": the house number decides
        number = key.split()[-1]
        for k, v in table.items():
            m = re.search(r"\d+", str(k))
            if m is not None and m.group() == number:
                return v
        return None
    wanted = _norm_key(key)
    for k, v in table.items():
        if _norm_key(k) == wanted:
            return v
    return None


def zebra_count_cells(
    table: Any,
    gold: dict[str, dict[str, str]],
    keys: str = "exact",
    cells: str = "strip_lower",
    list_cells: str = "first",
) -> tuple[int, dict[str, dict[str, str]]]:
    """(number of right cells, the cells that were read, in compared form) of a predicted house
    table; the cells read key the same answers alike (majority voting uses them)."""
    right = 0
    read: dict[str, dict[str, str]] = {}
    if not isinstance(table, dict):
        return 0, read
    for house, attrs in gold.items():
        row = _lookup(table, house, keys)
        if not isinstance(row, dict):
            continue
        for column, truth in attrs.items():
            value = _cell_text(_lookup(row, column, keys), list_cells)
            if value is None:
                continue
            value = _cell_norm(value, cells)
            read.setdefault(house, {})[column] = value
            right += value == _cell_norm(truth, cells)
    return right, read


def extract_zeroeval_json(text: str) -> Any | None:
    """ZeroEval's ``extract_last_complete_json``: the last complete top-level ``{...}`` (braces in
    strings are counted too), decoded after removing every newline; None when it does not parse."""
    spans = balanced_spans(text, "{", "}")
    if not spans:
        return None
    try:
        return json.loads(spans[-1].replace("\n", ""))
    except (json.JSONDecodeError, ValueError):
        return None


@dataclass(frozen=True)
class ZebraGrader(Section):
    """Cell and puzzle accuracy of a JSON grid answer (see the module docstring for each option)."""

    score: str = option("puzzle", choices=("puzzle", "cell"), help="the grade's score: puzzle (1 only when "
                        "every cell is right) or cell (this puzzle's fraction of right cells)")
    json_repair: bool = option(False, help="when the last {...} does not parse, try fenced json blocks and "
                               "earlier objects, with raw tabs and trailing commas (ZeroEval: no)")
    layouts: tuple[str, ...] = option(("solution",), help=f"accepted answer layouts, a subset of {list(ZEBRA_LAYOUTS)}"
                                      " (ZeroEval: solution only)")
    keys: str = option("exact", choices=ZEBRA_KEYS, help="house and attribute keys: exact (ZeroEval) or loose "
                       "(case, spaces, underscores ignored; a house by its number)")
    cells: str = option("strip_lower", choices=ZEBRA_CELLS, help="cell match: strip_lower (ZeroEval: lower() and "
                        "strip() of the ends) or collapse_space (inner whitespace runs count as one space)")
    list_cells: str = option("first", choices=ZEBRA_LIST_CELLS, help="a list cell: first element (ZeroEval), single "
                             "(one-element lists only) or wrong")

    def __post_init__(self) -> None:
        object.__setattr__(self, "layouts", (self.layouts,) if isinstance(self.layouts, str) else tuple(self.layouts))
        super().__post_init__()

    def validate(self) -> None:
        if not self.layouts or set(self.layouts) - set(ZEBRA_LAYOUTS):
            raise ConfigError(f"ZebraGrader.layouts must be a non-empty subset of {list(ZEBRA_LAYOUTS)}, "
                              f"got {list(self.layouts)}", key="layouts")

    def _decode(self, response: str) -> tuple[bool, Any]:
        if not self.json_repair:
            return zebra_prediction(extract_zeroeval_json(response), self.layouts)
        for obj in _repair_candidates(response):
            answered, table = zebra_prediction(obj, self.layouts)
            if answered:
                return answered, table
        return False, None

    def __call__(self, response: str, problem: Problem) -> Grade:
        gold = zebra_reference_grid(problem.answer)
        total = sum(len(attrs) for attrs in gold.values())
        answered, table = self._decode(response)
        if not answered:
            info = {"cell_accuracy": 0.0, "puzzle_accuracy": 0.0, "cells_correct": 0, "cells_total": total}
            return Grade(0.0, parsed=False, extracted=None, info=info)
        right, read = zebra_count_cells(table, gold, self.keys, self.cells, self.list_cells)
        cell_acc = right / total
        puzzle = float(right == total)
        extracted = json.dumps(read, ensure_ascii=False, sort_keys=True)
        score = puzzle if self.score == "puzzle" else cell_acc
        info = {"cell_accuracy": cell_acc, "puzzle_accuracy": puzzle, "cells_correct": right, "cells_total": total}
        return Grade(score, parsed=True, extracted=extracted, info=info)


def _repair_candidates(text: str) -> list[Any]:
    """Decoded JSON objects of ``text``, most preferred first: fenced ```json blocks (last first),
    then top-level ``{...}`` spans (last first); raw control characters and trailing commas allowed."""
    found: list[Any] = []
    blocks = re.findall(r"```(?:json|JSON)?\s*\n?(.*?)```", text, re.DOTALL)
    for chunk in [*reversed(blocks), *reversed(balanced_spans(text, "{", "}"))]:
        value = loads_lenient(chunk.strip())
        if isinstance(value, dict):
            found.append(value)
    return found


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


AUTOLOGI_EXTRACTIONS = ("official", "lenient")
_CODE_BLOCK = re.compile(r"```(?:\s*[\w]+)?\s*\n(.*?)```", re.DOTALL)
_LITERAL_ERRORS = (SyntaxError, ValueError, TypeError, MemoryError, RecursionError)


def _autologi_candidate(text: str) -> str | None:
    blocks = _CODE_BLOCK.findall(text)
    if blocks:
        return blocks[-1]
    dicts = balanced_spans(text, "{", "}")
    lists = re.findall(r"\[.*?\]", text, re.DOTALL)
    return dicts[-1] if dicts else (lists[-1] if lists else None)


def extract_autologi_answer(text: str, extraction: str = "official") -> Any | None:
    """The model's answer as a Python value, by AutoLogi's official extraction or the lenient one
    (module docstring); None when nothing can be read. Never executes the text."""
    if extraction not in AUTOLOGI_EXTRACTIONS:
        raise ValueError(f"AutoLogi extraction must be one of {AUTOLOGI_EXTRACTIONS}, got {extraction!r}")
    candidate = _autologi_candidate(text)
    if candidate is None:
        return None
    if extraction == "official":
        candidate = re.sub(r"//.*?\n", "", candidate)
        try:
            return ast.literal_eval(candidate.replace("true", "True").replace("false", "False"))
        except _LITERAL_ERRORS:
            pass
        try:
            if "=" in candidate:
                return ast.literal_eval(candidate.split("=", 1)[1].strip())
            return json.loads(candidate)
        except (*_LITERAL_ERRORS, json.JSONDecodeError):
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
    except _LITERAL_ERRORS:
        return None
    return value if isinstance(value, (dict, list, tuple, set)) else None


@dataclass(frozen=True)
class AutoLogiGrader(Section):
    """Runs the item's own verifier code on the extracted answer (see the module docstring).

    ``problem.answer`` must be ``{"Inputs_Check_code": str, "Constraint_List_code": str}``.
    """

    trust_verifier_code: bool = option(False, help="run the Python verifier code shipped in the data file "
                                       "(needed to grade; only for files you trust)")
    timeout_s: float = option(AUTOLOGI_TIMEOUT_S, gt=0, help="time limit of one verification in seconds "
                              "(20 as the official scorer; a timeout is wrong)")
    extraction: str = option("official", choices=AUTOLOGI_EXTRACTIONS, help="official (AutoLogi's eval.py step by "
                             "step) or lenient (indented blocks stripped, whole-word true/false, containers only)")

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
        value = extract_autologi_answer(response, self.extraction)
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
