"""Math graders: AIME integer answers and MATH-500 answers checked with math-verify.

- :class:`IntegerGrader` (kind ``"integer"``): the final answer (last ``\\boxed{}``, last
  ``Answer:`` line, ...) read as an integer with formatting noise removed and compared to the
  reference integer. No final answer: parse failure (or, with ``fallback_last_number``, the last
  number of the text). A final answer that is not an integer (a fraction, two numbers): a parsed,
  wrong answer.
- :class:`MathVerifyGrader` (kind ``"math"``): the final answer and the reference are both wrapped
  in ``\\boxed{}`` and compared with ``math_verify.verify`` (symbolic equivalence) under a timeout,
  after a cheap normalised-string check. The timeout uses math-verify's own ``signal.alarm`` on the
  main thread and a forked worker process elsewhere (math-verify's alarm only works on the main
  thread). A timeout is a wrong answer with ``info["error"] == "timeout"``.

The extraction conventions are constructor options (so YAML ``grader:`` options reach them):
``multiple_boxed`` ("last" | "join"), ``prefer_boxed``, ``cut_trailing_text`` and
``fallback_last_number``; see :mod:`llm.rewards.extract` and ``docs/graders.md`` for the reference
scorer behind each default.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from llm.rewards.base import Grade, Problem
from llm.config.fields import option
from llm.rewards.extract import MULTIPLE_BOXED, AnswerFormat, parse_integer


@dataclass(frozen=True)
class IntegerGrader(AnswerFormat):
    """AIME-style grader: 1 when the extracted integer equals ``problem.answer`` (an int or an
    integer string such as ``"025"``), else 0.

    Defaults: the last box (Qwen2.5-Math's ``extract_answer``; an AIME answer is one integer, so a
    joined ``3,5`` could never be right), the anchor that comes last wins (the DAPO ``Answer:``
    template the project trains with), no last-number fallback so that format failures stay
    visible (``fallback_last_number=True`` for small models that answer in a sentence).
    """

    def __call__(self, response: str, problem: Problem) -> Grade:
        gold = parse_integer(str(problem.answer))
        if gold is None:
            raise ValueError(f"IntegerGrader: problem {problem.id!r} has a non-integer answer {problem.answer!r}")
        raw = self.read(response)
        if raw is None:
            return Grade(0.0, parsed=False, extracted=None)
        value = parse_integer(raw)
        if value is None:
            return Grade(0.0, parsed=True, extracted=raw, info={"error": "not_an_integer"})
        return Grade(float(value == gold), parsed=True, extracted=str(value))


# --------------------------------------------------------------------------- math-verify


_LATEX_NOISE = [
    (re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |~|\\displaystyle"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\text\s*\{([^{}]*)\}|\\textbf\s*\{([^{}]*)\}|\\mathrm\s*\{([^{}]*)\}"), r"\1\2\3"),
    (re.compile(r"\^\s*\{?\\circ\}?|°"), ""),
    (re.compile(r"\s+"), ""),
]


def normalize_latex_answer(s: str) -> str:
    """Cheap canonical form of a LaTeX answer for exact comparison: no sizing commands, spaces,
    ``\\text{}`` wrappers, degree signs, ``$`` delimiters or trailing full stop; lowercase."""
    s = s.strip().strip("$").strip()
    for pat, rep in _LATEX_NOISE:
        s = pat.sub(rep, s)
    s = s.rstrip(".")
    return s.lower()


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> Any:
    from math_verify import parse

    return parse("\\boxed{" + gold + "}", parsing_timeout=timeout)


def _verify(gold: str, pred: str, timeout: int | None) -> tuple[bool, bool] | str:
    """(parsed, equal) with math-verify; ``timeout=None`` disables its signal alarm.

    math-verify swallows its own timeouts (returning "no parse" / "not equal"), so a call that ran
    for the whole budget is reported as ``"timeout"`` instead.
    """
    from math_verify import parse, verify

    start = time.monotonic()
    pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=timeout)
    if not pred_parsed:
        if timeout is not None and time.monotonic() - start >= 0.95 * timeout:
            return "timeout"
        return False, False
    gold_parsed = _parse_gold(gold, timeout)
    if not gold_parsed:
        raise ValueError(f"math-verify cannot parse the reference answer {gold!r}")
    start = time.monotonic()
    equal = bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    if not equal and timeout is not None and time.monotonic() - start >= 0.95 * timeout:
        return "timeout"
    return True, equal


def _verify_child(conn: Any, gold: str, pred: str) -> None:  # pragma: no cover - runs in a child
    try:
        conn.send(("ok", _verify(gold, pred, None)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def _verify_in_process(gold: str, pred: str, timeout: float) -> tuple[bool, bool] | str:
    """Run :func:`_verify` in a forked process; returns "timeout" / an error string on failure."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_verify_child, args=(child, gold, pred), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            return "timeout"
        status, value = parent.recv()
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        parent.close()
    return value if status == "ok" else f"verifier_error: {value}"


@dataclass(frozen=True)
class MathVerifyGrader(AnswerFormat):
    """MATH-500 grader: normalised string match, else math-verify equivalence within ``timeout_s``.

    Parse failure when no final answer is found, or math-verify cannot read it as math. Defaults:
    several close boxes are joined (``multiple_boxed="join"``) as Math-Verify does, so
    ``\\boxed{-2} and \\boxed{1}`` matches the reference ``1,-2``; the other options as in
    :class:`AnswerFormat`.
    """

    multiple_boxed: str = option("join", choices=MULTIPLE_BOXED, help="several boxes: join (Math-Verify's rule; "
                                 "the MATH-500 default) or last")
    timeout_s: int = option(5, ge=1, help="math-verify time limit per answer in seconds (a timeout is wrong)")

    def __call__(self, response: str, problem: Problem) -> Grade:
        gold = str(problem.answer)
        raw = self.read(response)
        if raw is None:
            return Grade(0.0, parsed=False, extracted=None)
        if normalize_latex_answer(raw) == normalize_latex_answer(gold):
            return Grade(1.0, parsed=True, extracted=raw)
        if threading.current_thread() is threading.main_thread():
            result: tuple[bool, bool] | str = _verify(gold, raw, self.timeout_s)
        else:
            result = _verify_in_process(gold, raw, float(self.timeout_s))
        if isinstance(result, str):
            return Grade(0.0, parsed=True, extracted=raw, info={"error": result.split(":")[0]})
        parsed, equal = result
        if not parsed:
            return Grade(0.0, parsed=False, extracted=raw, info={"error": "unparsable_math"})
        return Grade(float(equal), parsed=True, extracted=raw)
