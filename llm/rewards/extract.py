"""Reading the final answer out of a model's free-text output.

Pure string functions, shared by the math and logic graders and the training graders. The rule is
"last occurrence wins": a model that writes several ``Answer:`` lines is read at the last one (it
usually corrects itself on the way). Every convention below is a keyword option of
:func:`extract_final_answer`; ``docs/graders.md`` lists them with the reference scorer each follows.

Anchors tried by :func:`extract_final_answer`:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, nesting allowed). With
   ``multiple_boxed="join"`` boxes that follow each other closely are joined with commas, as
   Math-Verify does (:func:`boxed_answer`);
2. the last ``Answer: ...`` line (the DAPO / TeamTR training template; also ``**Answer:**``,
   ``Final Answer:``, ``答案：``);
3. the last ``<answer>...</answer>`` block (reasoning-gym's convention);
4. the last "the final answer is ..." sentence.

Whichever of these appears last in the text wins (``prefer_boxed=True``: a box wins whenever there
is one, as Math-Verify and Qwen2.5-Math do). After "Answer:" and "final answer is" only the leading
answer is kept (``cut_trailing_text=True``): ``The final answer is 14400. I hope it is correct.``
reads ``14400`` (:func:`leading_answer`).

If none is present the output has no parsable final answer (``None``); graders count that as a
parse failure, separately from wrong answers. :func:`last_number` is the optional lenient fallback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llm.config.fields import Section, option

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_SPACE = re.compile(r"\\boxed\s+([^\s$]+)")
_ANSWER_LINE = re.compile(
    r"(?im)^[ \t>#*_]*(?:final\s+answer|answer|答案)[ \t*_]*[:：][ \t*_]*(?P<ans>.*?)[ \t*_]*$"
)
_FINAL_IS = re.compile(r"(?i)final answer is[:\s]*(?P<ans>[^\n]*)")
_ANSWER_TAG = re.compile(r"(?is)<answer>(?P<ans>.*?)</answer>")


MULTIPLE_BOXED = ("last", "join")

# Math-Verify's rule for several boxes (latex2sympy2_extended ``extract_boxed_content``): walking
# back from the last box, an earlier box is joined when the text between the two is shorter than
# 10 characters, or shorter than 70 characters, containing a separator and boxing something else.
_JOIN_NEAR = 10
_JOIN_FAR = 70
_JOIN_SEPARATOR = re.compile(r"\b(?:and|or)\b|,|;")


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """Every closed ``\\boxed{...}`` / ``\\fbox{...}`` as ``(start, end, content)``: ``start`` at the
    backslash, ``end`` just after the closing brace, ``content`` stripped. Unclosed boxes are skipped."""
    spans: list[tuple[int, int, str]] = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            spans.append((m.start(), i, text[m.end() : i - 1].strip()))
    return spans


def boxed_answer(text: str, multiple: str = "last") -> tuple[int, str] | None:
    """``(position, content)`` of the final boxed answer, else None.

    ``multiple="last"``: the last closed box (else the last ``\\boxed 5`` space form).
    ``multiple="join"``: the last box joined with the boxes just before it, by Math-Verify's rule
    (gap < 10 characters, or gap < 70 characters with "and"/"or"/","/";" and a different content);
    repeated contents are kept once: ``\\boxed{-2} and \\boxed{1}`` reads ``-2,1``.
    """
    if multiple not in MULTIPLE_BOXED:
        raise ValueError(f"multiple_boxed must be one of {MULTIPLE_BOXED}, got {multiple!r}")
    spans = boxed_spans(text)
    if not spans:
        spaced = list(_BOXED_SPACE.finditer(text))
        return (spaced[-1].start(), spaced[-1].group(1).strip()) if spaced else None
    start, _, content = spans[-1]
    if multiple == "last":
        return start, content
    parts = [content]
    for prev, nxt in zip(reversed(spans[:-1]), reversed(spans[1:])):
        gap = text[prev[1] : nxt[0]]
        near = len(gap) < _JOIN_NEAR
        far = len(gap) < _JOIN_FAR and prev[2] != parts[-1] and _JOIN_SEPARATOR.search(gap) is not None
        if not (near or far):
            break
        if prev[2] != parts[-1]:
            parts.append(prev[2])
    return start, ",".join(reversed(parts))


def last_boxed(text: str, multiple: str = "last") -> str | None:
    """Content of the final ``\\boxed{...}`` (see :func:`boxed_answer`), else None."""
    found = boxed_answer(text, multiple)
    return found[1] if found is not None else None


# Where the answer after "Answer:" / "final answer is" ends: a full stop followed by a space or
# the end ("14400. I hope"), a comma or semicolon followed by a word ("3/4, which"), or a space
# before a word that starts a new clause ("5 I hope", "7 because"). Only outside brackets and $...$.
_TRAILER = re.compile(
    r"\.(?=\s|$)|[,;]\s+(?=[A-Za-z]{2,}\b)"
    r"|\s+(?=(?:I|we|which|where|since|because|hence|thus|therefore)\b)"
)
_DELIMITED = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_OPEN, _CLOSE = "({[", ")}]"


# The Minerva closing sentence ("The final answer is X. I hope it is correct."), removed from any answer.
_HOPE = re.compile(r"\.?\s*\bI hope\b.*$", re.DOTALL)
# An answer that starts like math (a number, a sign, $, a LaTeX command, a bracket, "x =") is cut at
# the first _TRAILER; a text answer ("Riley is an altruist, and Daniel is an egoist") is kept whole.
_MATH_START = re.compile(r"[-+.\d$\\(\[{]|[A-Za-z]\s*=")


def leading_answer(text: str) -> str:
    """The answer at the start of ``text`` without the sentence that follows it.

    ``"14400. I hope it is correct."`` -> ``"14400"``; ``"3/4, which we verify below."`` ->
    ``"3/4"``; ``"$\\frac{1}{2}$. I hope"`` -> ``"\\frac{1}{2}"``. Commas inside brackets and lists of
    numbers (``"(3, \\pi)"``, ``"1, -2"``) are kept. This is how Math-Verify reads the expression
    after "final answer is" (a math span or a number, then punctuation). Only answers that start
    like math are cut; a text answer loses only a closing "I hope it is correct".
    """
    s = _HOPE.sub("", text.strip()).strip()
    m = _DELIMITED.match(s)
    if m is not None:
        rest = s[m.end() :]
        if not rest.strip() or _TRAILER.match(rest):
            return next(g for g in m.groups() if g is not None).strip()
    if _MATH_START.match(s):
        depth, in_math = 0, False
        for i, ch in enumerate(s):
            if ch == "$":
                in_math = not in_math
            elif ch in _OPEN:
                depth += 1
            elif ch in _CLOSE and depth:
                depth -= 1
            elif depth == 0 and not in_math and i > 0 and _TRAILER.match(s, i):
                s = s[:i]
                break
    return _strip_math_delims(s.rstrip("."))


_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (``"3 * 9 = 27."`` -> ``"27"``), else None: the lenient
    fallback of Qwen2.5-Math (``use_last_number``) and Math-Verify (``try_extract_without_anchor``)."""
    nums = [n.rstrip(",") for n in _LAST_NUMBER.findall(text)]
    return nums[-1] if nums else None


def _anchored(ans: str, cut_trailing_text: bool) -> str:
    boxed = last_boxed(ans)
    if boxed is not None:
        return boxed
    return leading_answer(ans) if cut_trailing_text else _strip_math_delims(ans.rstrip("."))


def last_answer_line(text: str, cut_trailing_text: bool = True) -> str | None:
    """The answer after the last ``Answer:`` label at the start of a line (markdown bold, ``#``,
    ``>`` and "Final" allowed), without ``$`` delimiters and (``cut_trailing_text``) without the
    sentence after it (:func:`leading_answer`); None when absent or empty."""
    found = _last_answer_line_match(text)
    return _anchored(found.group("ans"), cut_trailing_text) or None if found else None


def last_final_answer_is(text: str, cut_trailing_text: bool = True) -> str | None:
    """The answer after the last "final answer is" (the rest of the line; with ``cut_trailing_text``
    only its leading answer, :func:`leading_answer`); None when absent."""
    found = _last_final_is_match(text)
    return _anchored(found.group("ans"), cut_trailing_text) or None if found else None


def _last_answer_line_match(text: str) -> re.Match[str] | None:
    found = [m for m in _ANSWER_LINE.finditer(text) if m.group("ans").strip().strip("$").strip()]
    return found[-1] if found else None


def _last_final_is_match(text: str) -> re.Match[str] | None:
    found = [m for m in _FINAL_IS.finditer(text) if m.group("ans").strip()]
    return found[-1] if found else None


def extract_final_answer(
    text: str,
    *,
    multiple_boxed: str = "last",
    prefer_boxed: bool = False,
    cut_trailing_text: bool = True,
) -> str | None:
    """The final answer of ``text`` by the anchors listed in the module docstring, or None.

    Whichever anchor appears last in the text wins, so "... \\boxed{3} ... Answer: 5" reads 5;
    with ``prefer_boxed=True`` it reads 3 (a box wins whenever there is one). ``multiple_boxed``:
    see :func:`boxed_answer`; ``cut_trailing_text``: see :func:`leading_answer`.
    """
    candidates: list[tuple[int, str]] = []
    boxed = boxed_answer(text, multiple_boxed)
    if boxed is not None and boxed[1] != "":
        if prefer_boxed:
            return boxed[1]
        candidates.append(boxed)
    line = _last_answer_line_match(text)
    if line is not None:
        a = _anchored(line.group("ans"), cut_trailing_text)
        if a:
            candidates.append((line.start(), a))
    fin = _last_final_is_match(text)
    if fin is not None:
        f = _anchored(fin.group("ans"), cut_trailing_text)
        if f:
            candidates.append((fin.start(), f))
    tags = [m for m in _ANSWER_TAG.finditer(text) if m.group("ans").strip()]
    if tags:
        candidates.append((tags[-1].start(), _strip_math_delims(tags[-1].group("ans"))))
    if not candidates:
        return None
    # An "Answer:" line that only repeats a box ("Answer: \\boxed{5}") is found twice; same value.
    return max(candidates, key=lambda c: c[0])[1]


@dataclass(frozen=True)
class AnswerFormat(Section):
    """How the final answer is read from a response (shared by both math graders); every field is
    a grader option (``grader:`` in YAML). See ``docs/graders.md`` for the reference of each."""

    multiple_boxed: str = option("last", choices=MULTIPLE_BOXED, help="several boxes: last reads the last "
                                 "\\boxed{}; join joins boxes close together (\\boxed{-2} and \\boxed{1} -> -2,1) "
                                 "as Math-Verify does")
    prefer_boxed: bool = option(False, help="a box wins over a later Answer: line / 'final answer is' / <answer> "
                                "(Math-Verify, Qwen2.5-Math); false: the anchor that comes last wins")
    cut_trailing_text: bool = option(True, help="after Answer: / 'final answer is' keep only the leading answer "
                                     "('14400. I hope it is correct.' -> 14400), as Math-Verify does")
    fallback_last_number: bool = option(False, help="no anchor at all: read the last number of the response "
                                        "(Qwen2.5-Math use_last_number, Math-Verify); false: a parse failure")

    def read(self, response: str) -> str | None:
        """The final answer of ``response`` under these options, or None (parse failure)."""
        raw = extract_final_answer(
            response,
            multiple_boxed=self.multiple_boxed,
            prefer_boxed=self.prefer_boxed,
            cut_trailing_text=self.cut_trailing_text,
        )
        if raw is None and self.fallback_last_number:
            raw = last_number(response)
        return raw


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


_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\s?\d{3})+(?![\d,])")


def parse_integer(answer: str) -> int | None:
    """An integer from a final-answer string with formatting noise, else None.

    Accepts ``"025"``, ``"$204$"``, ``"1,000"``, ``"1{,}000"``, ``"204 minutes"``, ``"12.0"``,
    ``"\\textbf{33}"``, ``"x = 7"``, ``"33^\\circ"``, ``"32,\\! 349"`` (LaTeX thin space in a thousands
    group). Rejects anything with two different numbers
    (``"3 or 4"``), fractions, and non-integral decimals.
    """
    s = _strip_math_delims(answer)
    s = s.replace("{,}", "").replace("\\!", "")
    for pat, rep in _INT_NOISE:
        s = pat.sub(rep, s)
    s = s.replace("{", "").replace("}", "")
    s = re.sub(r"^[A-Za-z]\s*=\s*", "", s.strip())  # "x = 7"
    s = s.strip().rstrip(".").strip()
    s = _THOUSANDS.sub(lambda m: re.sub(r"[,\s]", "", m.group()), s)  # "1,000", "32, 349" (from 32,\\! 349)
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


def loads_lenient(s: str) -> Any | None:
    """``json.loads`` that also accepts raw control characters (newlines, tabs) inside strings and
    trailing commas, the most common JSON slips of small models; None when it still fails."""
    for attempt in (s, re.sub(r",\s*([}\]])", r"\1", s)):
        try:
            return json.loads(attempt, strict=False)
        except (json.JSONDecodeError, ValueError):
            continue
    return None
