"""Reading the final answer out of a model's free-text output.

Pure string functions, shared by the math and logic graders. The rule everywhere is "last
occurrence wins": a model that writes several ``\\boxed{}`` or several ``Answer:`` lines is read at
the last one (it usually corrects itself on the way).

Order of anchors tried by :func:`extract_final_answer`:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, nesting allowed);
2. the last ``Answer: ...`` line (the DAPO / TeamTR training template; also ``**Answer:**``,
   ``Final Answer:``, ``答案：``);
3. the last ``<answer>...</answer>`` block (reasoning-gym's convention);
4. the last "the final answer is ..." sentence.

Whichever of these appears last in the text wins.

If none is present the output has no parsable final answer (``None``); graders count that as a
parse failure, separately from wrong answers.
"""

from __future__ import annotations

import json
import re
from typing import Any

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_SPACE = re.compile(r"\\boxed\s+([^\s$]+)")
_ANSWER_LINE = re.compile(
    r"(?im)^[ \t>#*_]*(?:final\s+answer|answer|答案)[ \t*_]*[:：][ \t*_]*(?P<ans>.*?)[ \t*_]*$"
)
_FINAL_IS = re.compile(r"(?i)final answer is[:\s]*(?P<ans>[^\n]*)")
_ANSWER_TAG = re.compile(r"(?is)<answer>(?P<ans>.*?)</answer>")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, else the
    last ``\\boxed 5`` (space form), else None. An unclosed last box is skipped."""
    found: str | None = None
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1]
    if found is None:
        spaced = _BOXED_SPACE.findall(text)
        if spaced:
            found = spaced[-1]
    return found.strip() if found is not None else None


def last_answer_line(text: str) -> str | None:
    """The text after the last ``Answer:`` label at the start of a line (markdown bold, ``#``,
    ``>`` and "Final" allowed), stripped of ``$`` delimiters; None when absent or empty."""
    matches = [m.group("ans") for m in _ANSWER_LINE.finditer(text)]
    matches = [a for a in matches if a.strip().strip("$").strip()]
    if not matches:
        return None
    ans = matches[-1].strip()
    boxed = last_boxed(ans)
    if boxed is not None:
        return boxed
    return _strip_math_delims(ans)


def last_final_answer_is(text: str) -> str | None:
    """The rest of the line after the last "final answer is", without a trailing full stop."""
    matches = [m.group("ans") for m in _FINAL_IS.finditer(text)]
    matches = [a for a in matches if a.strip()]
    if not matches:
        return None
    ans = matches[-1].strip()
    boxed = last_boxed(ans)
    if boxed is not None:
        return boxed
    return _strip_math_delims(ans.rstrip("."))


def extract_final_answer(text: str) -> str | None:
    """The final answer of ``text`` by the anchors listed in the module docstring, or None.

    Whichever anchor appears last in the text wins, so "... \\boxed{3} ... Answer: 5" reads 5.
    """
    candidates: list[tuple[int, str]] = []
    boxed_pos = max((m.start() for m in _BOXED.finditer(text)), default=-1)
    if boxed_pos < 0:
        boxed_pos = max((m.start() for m in _BOXED_SPACE.finditer(text)), default=-1)
    b = last_boxed(text)
    if b is not None and b != "":
        candidates.append((boxed_pos, b))
    line_matches = [m for m in _ANSWER_LINE.finditer(text) if m.group("ans").strip().strip("$").strip()]
    if line_matches:
        a = last_answer_line(text)
        if a:
            candidates.append((line_matches[-1].start(), a))
    fin = [m for m in _FINAL_IS.finditer(text) if m.group("ans").strip()]
    if fin:
        f = last_final_answer_is(text)
        if f:
            candidates.append((fin[-1].start(), f))
    tags = [m for m in _ANSWER_TAG.finditer(text) if m.group("ans").strip()]
    if tags:
        candidates.append((tags[-1].start(), _strip_math_delims(tags[-1].group("ans"))))
    if not candidates:
        return None
    # An "Answer:" line that only repeats a box ("Answer: \boxed{5}") is found twice; same value.
    return max(candidates, key=lambda c: c[0])[1]


def _strip_math_delims(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s.strip()


_INT_NOISE = [
    (re.compile(r"\\(?:text|textbf|mathrm|mathbf|boxed)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\\[,;:! ]|\\quad|\\qquad|~"), ""),
    (re.compile(r"\^\s*\{?\\circ\}?|\\%|%|°"), ""),
    (re.compile(r"\\(?:dfrac|tfrac)"), r"\\frac"),
]


def parse_integer(answer: str) -> int | None:
    """An integer from a final-answer string with formatting noise, else None.

    Accepts ``"025"``, ``"$204$"``, ``"1,000"``, ``"1{,}000"``, ``"204 minutes"``, ``"12.0"``,
    ``"\\textbf{33}"``, ``"x = 7"``, ``"33^\\circ"``. Rejects anything with two different numbers
    (``"3 or 4"``), fractions, and non-integral decimals.
    """
    s = _strip_math_delims(answer)
    s = s.replace("{,}", "").replace("\\!", "")
    for pat, rep in _INT_NOISE:
        s = pat.sub(rep, s)
    s = s.replace("{", "").replace("}", "")
    s = re.sub(r"^[A-Za-z]\s*=\s*", "", s.strip())  # "x = 7"
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # thousands separators
    if "\\frac" in s or "/" in s or "\\sqrt" in s:
        return None
    nums = re.findall(r"[-+]?\d+(?:\.\d+)?", s)
    if len(nums) != 1:
        return None
    rest = s.replace(nums[0], "", 1)
    if re.search(r"\d", rest):
        return None
    try:
        value = float(nums[0])
    except ValueError:
        return None
    if value != int(value):
        return None
    return int(value)


def extract_last_json_object(text: str) -> Any | None:
    """The last JSON object in ``text`` that parses: fenced ```json blocks first (last one that
    parses), then the last balanced ``{...}`` span. Returns the decoded value or None."""
    for block in reversed(re.findall(r"```(?:json|JSON)?\s*\n?(.*?)```", text, re.DOTALL)):
        value = _loads_lenient(block.strip())
        if isinstance(value, dict):
            return value
    for span in reversed(balanced_spans(text, "{", "}")):
        value = _loads_lenient(span)
        if isinstance(value, dict):
            return value
    return None


def balanced_spans(text: str, left: str, right: str) -> list[str]:
    """Top-level balanced ``left ... right`` spans of ``text`` in order (string quotes ignored)."""
    spans: list[str] = []
    depth, start = 0, -1
    for i, ch in enumerate(text):
        if ch == left:
            if depth == 0:
                start = i
            depth += 1
        elif ch == right and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _loads_lenient(s: str) -> Any | None:
    try:
        return json.loads(s)
    except (json.JSONDecodeError, ValueError):
        pass
    # Trailing commas are the most common JSON slip of small models.
    fixed = re.sub(r",\s*([}\]])", r"\1", s)
    try:
        return json.loads(fixed)
    except (json.JSONDecodeError, ValueError):
        return None
