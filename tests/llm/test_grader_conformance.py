"""The graders against the scorers the field publishes numbers with.

Every case names the reference it was written from (its public behaviour, read from the
reference's code or test suite; nothing is copied from them):

- **Math-Verify** (huggingface/Math-Verify, ``parse`` / ``verify`` with the default extraction,
  ``tests/test_all.py``): MATH-500's reference scorer. Its cases are also run through the
  installed ``math_verify`` here, so a case whose stated reference outcome is wrong fails.
- **hendrycks MATH** ``is_equiv`` (hendrycks/math ``modeling/math_equivalence.py``): string
  normalisation (units, ``\\left``, ``\\dfrac``, ``x =``, spaces).
- **Qwen2.5-Math** ``evaluation/parser.py`` ``extract_answer`` and ``evaluation/grader.py``
  ``math_equal``: the Minerva "final answer is $X$. I hope" form, the last ``\\boxed``, a box before
  any "answer is", the last number as fallback (``use_last_number=True``), numeric tolerance.
- **open-r1** ``src/open_r1/rewards.py`` ``accuracy_reward`` (Math-Verify with boxed priority).
- **ZeroEval** ``src/evaluation/zebra_grid_eval.py`` + ``eval_utils.extract_last_complete_json``:
  ZebraLogic's official scorer and leaderboard.
- **AutoLogi** ``evaluation/eval.py`` ``compute_coding_pass1``: AutoLogi's official extraction.

Where the project deliberately differs from the reference, the case says ``DIFFERS`` and states both
outcomes; ``docs/graders.md`` lists every convention with its default.
"""

from __future__ import annotations

import json

import pytest
from latex2sympy2_extended.math_normalization import extract_boxed_content
from math_verify import parse, verify

from llm.data import load_benchmark, shared_benchmark_dir
from llm.evaluate.config import BenchmarkEntry, EvalSection
from llm.evaluate.harness import BenchmarkRun, _add_cells, build_summary, grade_record, sample_result
from llm.evaluate.metrics import ratio_bootstrap_interval
from llm.rewards import Problem, get_grader
from llm.rewards.extract import boxed_answer, extract_final_answer, leading_answer, parse_integer
from llm.rewards.logic import extract_autologi_answer, extract_zeroeval_json


def _math(answer: str) -> Problem:
    return Problem("conformance", "q", answer, "math")


def _int(answer: int) -> Problem:
    return Problem("conformance", "q", str(answer), "integer")


def math_verify_reference(gold: str, response: str) -> bool:
    """Math-Verify's own verdict with its default extraction on the whole response."""
    return bool(verify(parse("\\boxed{" + gold + "}"), parse(response)))


# ----------------------------------------------------------------------------- MATH (kind "math")

# (gold, response, expected score, source). The project's MathVerifyGrader gives `expected`, and so
# does Math-Verify itself (checked live below).
MATH_AGREE = [
    ("14400", "Final Answer: The final answer is 14400. I hope it is correct.", 1.0,
     "Math-Verify: 'final answer is X. I hope' (Minerva format; issue 17 reproducer)"),
    ("\\frac{3}{4}", "So the final answer is 3/4, which we verify below.", 1.0,
     "Math-Verify: 'final answer ... is' followed by an expression and punctuation (issue 17)"),
    ("14400", "Answer: 14400. I hope it is correct.", 1.0, "Math-Verify: 'answer:' then a number (issue 17)"),
    ("\\frac{3}{4}", "The final answer is $\\frac{3}{4}$. I hope it is correct.", 1.0,
     "Qwen2.5-Math extract_answer: 'final answer is $X$. I hope'; Math-Verify the same"),
    ("1,-2", "the roots are \\boxed{-2} and \\boxed{1}", 1.0,
     "Math-Verify: boxes joined by 'and' are one answer (latex2sympy2_extended extract_boxed_content)"),
    ("1,-2", "the roots are $\\boxed{-2}$, $\\boxed{1}$.", 1.0, "Math-Verify: boxes joined by a comma"),
    ("1,-2", "first \\boxed{-2}. Then later it is \\boxed{1}", 0.0,
     "Math-Verify: boxes far apart without a separator are not joined: the last box is read"),
    ("2,-1", "\\boxed{-1,2}", 1.0, "Math-Verify: a list of roots compares as a set"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$", 1.0,
     "Math-Verify tests/test_all.py (MATH notations)"),
    ("\\text{Evelyn}", "Therefore, $\\boxed{\\text{Evelyn}}$ is our answer.", 1.0, "Math-Verify tests/test_all.py"),
    ("\\frac{1}{3}", "Answer: $\\dfrac{1}{3}$", 1.0, "Math-Verify tests/test_all.py: frac variants; hendrycks is_equiv (dfrac)"),
    ("\\frac{1}{3}", "\\boxed{\\frac13}", 1.0, "Math-Verify tests/test_all.py: malformed fractions; hendrycks _fix_fracs"),
    ("\\sqrt{3}", "\\boxed{\\sqrt3}", 1.0, "Math-Verify tests/test_all.py: malformed sqrt; hendrycks _fix_sqrt"),
    ("\\frac{1}{3}", "Answer: $k = \\frac{1}{3}$", 1.0, "Math-Verify tests/test_all.py: the last '=' is the answer"),
    ("5", "\\boxed{x = 5}", 1.0, "hendrycks is_equiv: 'x =' prefix removed; Math-Verify the same"),
    ("90", "\\boxed{90^\\circ}", 1.0, "hendrycks is_equiv: degrees removed; Math-Verify the same"),
    ("10", "\\boxed{10\\text{ cm}}", 1.0, "hendrycks is_equiv: units removed; Math-Verify the same"),
    ("7425000", "\\boxed{7,425,000}", 1.0, "Math-Verify tests/test_all.py: thousands separators"),
    ("32349", "\\boxed{32,\\! 349}", 1.0, "Math-Verify: LaTeX thin space in a thousands group (issue 17)"),
    ("0.4", "\\boxed{.4}", 1.0, "Math-Verify tests/test_all.py: no leading zero; hendrycks the same"),
    ("[0,1)", "\\boxed{[0,1)}", 1.0, "Math-Verify tests/test_all.py: intervals"),
    ("[0,1)", "\\boxed{(0,1)}", 0.0, "Math-Verify tests/test_all.py: open vs half-open interval"),
    ("\\frac{63}{400}", "\\boxed{\\frac{63}{400}}", 1.0, "open-r1 accuracy_reward (correct answer)"),
    ("\\frac{63}{400}", "\\boxed{\\frac{64}{400}}", 0.0, "open-r1 accuracy_reward (wrong answer)"),
    ("\\frac{1}{2}", "<answer>\n0.5\n</answer>", 1.0, "Math-Verify: 0.5 equals 1/2 (hendrycks is_equiv would say no)"),
    ("\\frac{1}{3}", "\\boxed{0.3333}", 0.0,
     "Math-Verify: floats compared after rounding to 6 digits (Qwen2.5-Math math_equal, rel_tol 1e-4, says yes)"),
]


@pytest.mark.parametrize("gold,response,expected,source", MATH_AGREE, ids=[c[3][:60] for c in MATH_AGREE])
def test_math_grader_agrees_with_math_verify(gold: str, response: str, expected: float, source: str) -> None:
    assert math_verify_reference(gold, response) == bool(expected), f"reference outcome misstated ({source})"
    g = get_grader("math")(response, _math(gold))
    assert g.parsed
    assert g.score == expected, source


def test_math_differences_from_math_verify_are_stated() -> None:
    """DIFFERS: where the project's MATH-500 default is not Math-Verify's, and the option that
    gives Math-Verify's outcome."""
    grader = get_grader("math")
    # 1. Anchor order. Math-Verify (boxed priority 50 < "answer:" 100) and Qwen2.5-Math (boxed before
    #    "answer is") read the box; the project reads the anchor that comes last (the model corrected
    #    itself on its "Answer:" line, the DAPO template it was trained with).
    text = "\\boxed{3}\nWait, I made an error.\nAnswer: 5"
    assert not math_verify_reference("5", text) and math_verify_reference("3", text)
    assert grader(text, _math("5")).score == 1.0
    assert get_grader("math", prefer_boxed=True)(text, _math("3")).score == 1.0
    # 2. No anchor at all. Math-Verify (try_extract_without_anchor) and Qwen2.5-Math
    #    (use_last_number) read the last number; the project reports a parse failure so that format
    #    failures stay visible, unless fallback_last_number is on.
    text = "no anchor, the result is 42"
    assert math_verify_reference("42", text)
    g = grader(text, _math("42"))
    assert not g.parsed and g.score == 0.0
    assert get_grader("math", fallback_last_number=True)(text, _math("42")).score == 1.0
    # 3. Text answers. Math-Verify's default extraction reads no plain word after "Answer:"; the
    #    project's normalised string match (hendrycks is_equiv style) accepts it.
    assert not math_verify_reference("\\text{Evelyn}", "Answer: Evelyn")
    assert grader("Answer: Evelyn", _math("\\text{Evelyn}")).score == 1.0


def test_multiple_boxed_option() -> None:
    """multiple_boxed: "join" (Math-Verify; the MATH default) or "last" (Qwen2.5-Math find_box)."""
    text = "the roots are \\boxed{-2} and \\boxed{1}"
    assert boxed_answer(text, "join")[1] == "-2,1"
    assert boxed_answer(text, "last")[1] == "1"
    assert get_grader("math", multiple_boxed="last")(text, _math("1,-2")).score == 0.0
    # repeated boxes are one answer (Math-Verify drops consecutive duplicates)
    assert boxed_answer("\\boxed{7} i.e. \\boxed{7}", "join")[1] == "7"
    # far apart, no separator: only the last (Math-Verify: gap >= 10 characters and no and/or/,/;)
    assert boxed_answer("\\boxed{1} is wrong, really wrong, it is \\boxed{2}", "join")[1] == "1,2"
    assert boxed_answer("\\boxed{1} was wrong. Thus it is \\boxed{2}", "join")[1] == "2"
    with pytest.raises(ValueError, match="multiple_boxed"):
        get_grader("math", multiple_boxed="first")


@pytest.mark.parametrize(
    "text",
    [
        "the roots are \\boxed{-2} and \\boxed{1}",
        "\\boxed{1} \\boxed{2} and \\boxed{3}",
        "a \\boxed{2} b \\boxed{3} and \\boxed{4}",
        "\\boxed{(1,2)} and \\boxed{3}",
        "$\\boxed{-2}$, $\\boxed{1}$.",
        "\\boxed{3}\nAnswer: \\boxed{5}",
        "\\boxed{\\frac{1}{2}} or \\boxed{\\sqrt{2}}",
        "\\boxed{5}\n\nWait, let me recheck everything; it is \\boxed{6}",
        "\\boxed{5}\n\nWait, let me recheck everything. It is \\boxed{6}",
        "\\boxed{a}" + "x" * 64 + " and \\boxed{b}",
        "\\boxed{a}" + "x" * 65 + " and \\boxed{b}",
        "\\boxed{1}, \\boxed{1}, \\boxed{2}",
        "\\boxed{7} i.e. \\boxed{7}",
    ],
)
def test_boxed_join_is_math_verifys_rule(text: str) -> None:
    """multiple_boxed="join" reproduces Math-Verify's box joining (latex2sympy2_extended's
    extract_boxed_content, which Math-Verify's normalisation calls), run live."""
    assert boxed_answer(text, "join")[1] == extract_boxed_content(text, "last")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("14400. I hope it is correct.", "14400"),
        ("3/4, which we verify below.", "3/4"),
        ("$\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        ("(3, \\frac{\\pi}{2}). Done.", "(3, \\frac{\\pi}{2})"),
        ("1, -2", "1, -2"),
        ("x = 3, y = 4.", "x = 3, y = 4"),
        ("3.5.", "3.5"),
        ("\\text{Evelyn}, since she is fastest", "\\text{Evelyn}"),
        ("7 because 3 + 4 = 7", "7"),
        ("x = 3. So we are done.", "x = 3"),
        # text answers are kept whole, only the Minerva closing sentence goes
        ("Riley is an altruist, and Daniel is an altruist.", "Riley is an altruist, and Daniel is an altruist"),
        ("Evelyn. I hope it is correct.", "Evelyn"),
    ],
)
def test_leading_answer(text: str, expected: str) -> None:
    """After "final answer is" / "Answer:" Math-Verify reads a math span or a number followed by
    punctuation; the project keeps the leading answer the same way."""
    assert leading_answer(text) == expected


def test_trailing_text_option_keeps_the_old_reading() -> None:
    text = "Answer: 14400. I hope it is correct."
    assert extract_final_answer(text) == "14400"
    assert extract_final_answer(text, cut_trailing_text=False) == "14400. I hope it is correct"


# ----------------------------------------------------------------------------- AIME (kind "integer")

INTEGER_CASES = [
    (14400, "Final Answer: The final answer is 14400. I hope it is correct.", 1.0, "Qwen2.5-Math / Math-Verify Minerva format (issue 17)"),
    (14400, "Answer: 14400. I hope it is correct.", 1.0, "Math-Verify 'answer:' then a number (issue 17)"),
    (32349, "so the count is \\boxed{32,\\! 349}", 1.0, "Math-Verify; Qwen2.5-Math strip_string removes \\! (issue 17)"),
    (25, "\\boxed{025}", 1.0, "AIME answers with leading zeros (MathArena answers.csv writes 025)"),
    (204, "The walk takes $\\boxed{204}$ minutes.", 1.0, "Qwen2.5-Math extract_answer: last boxed"),
    (1, "the roots are \\boxed{-2} and \\boxed{1}", 1.0, "Qwen2.5-Math find_box: the last box (IntegerGrader default)"),
    (1000, "Answer: 1{,}000", 1.0, "MATH/AIME LaTeX thousands separator {,}"),
    (5, "Answer: 5 because 2 + 3 = 5", 1.0, "Math-Verify: answer then punctuation/space ends the number"),
]


@pytest.mark.parametrize("gold,response,expected,source", INTEGER_CASES, ids=[c[3][:60] for c in INTEGER_CASES])
def test_integer_grader(gold: int, response: str, expected: float, source: str) -> None:
    g = get_grader("integer")(response, _int(gold))
    assert g.parsed and g.score == expected, source


def test_integer_joined_boxes_are_not_an_integer() -> None:
    """With Math-Verify's joining, two boxed integers are a set, never the AIME integer: wrong for
    Math-Verify, ``not_an_integer`` here."""
    text = "the roots are \\boxed{-2} and \\boxed{1}"
    assert not math_verify_reference("1", text)
    g = get_grader("integer", multiple_boxed="join")(text, _int(1))
    assert g.parsed and g.score == 0.0 and g.info["error"] == "not_an_integer"


def test_integer_last_number_fallback() -> None:
    """Issue 16: fallback_last_number (off by default; Qwen2.5-Math use_last_number=True and
    Math-Verify's anchorless extraction have it on: DIFFERS by default)."""
    strict, lenient = get_grader("integer"), get_grader("integer", fallback_last_number=True)
    # correct
    assert lenient("3 * 9 = 27", _int(27)).score == 1.0
    assert lenient("The answer to 9 + 3 is 12.", _int(12)).score == 1.0
    assert lenient("There are 1,234 apples.", _int(1234)).score == 1.0
    # wrong (parsed)
    g = lenient("The answer to 9 + 3 is 12.", _int(13))
    assert g.parsed and g.score == 0.0
    # unparsable: no number at all
    g = lenient("I do not know.", _int(12))
    assert not g.parsed and g.score == 0.0
    # off by default: no anchor is a parse failure
    g = strict("3 * 9 = 27", _int(27))
    assert not g.parsed and g.score == 0.0
    # an anchor always wins over the fallback
    assert lenient("Answer: 26\nso 3 * 9 = 27", _int(26)).score == 1.0


def test_parse_integer_thin_space_and_groups() -> None:
    assert parse_integer("32,\\! 349") == 32349
    assert parse_integer("32\\,349") == 32349
    assert parse_integer("1,000,000") == 1000000
    assert parse_integer("12,34") is None  # not a thousands group: two numbers
    assert parse_integer("3, 4") is None


# ----------------------------------------------------------------------------- ZebraLogic (ZeroEval)

TINY = {"header": ["House", "Name", "Food"], "rows": [["1", "Eric", "grilled cheese"], ["2", "Bob", "pizza"]]}


def _zebra(answer: dict = TINY) -> Problem:
    return Problem("zebra-tiny", "q", answer, "zebra")


def _solution(sol: dict, reasoning: str = "clue 1 then clue 2") -> str:
    return json.dumps({"reasoning": reasoning, "solution": sol})


RIGHT = {"House 1": {"Name": "Eric", "Food": "grilled cheese"}, "House 2": {"Name": "Bob", "Food": "pizza"}}


@pytest.mark.parametrize(
    "response,cells,parsed,source",
    [
        (_solution(RIGHT), 4, True, "ZeroEval: the reasoning/solution layout"),
        (_solution(RIGHT).replace("clue 1 then", "clue 1\nthen"), 4, True,
         "ZeroEval extract_last_complete_json removes newlines: a raw newline in a string parses (issue 17)"),
        (_solution({"House 1": {"Name": ["Eric"], "Food": "grilled cheese"}, "House 2": {"Name": "Bob", "Food": ["pizza"]}}), 4, True,
         "ZeroEval: a list cell counts by its element (issue 17)"),
        (_solution({"House 1": {"Name": ["Eric", "Bob"], "Food": "grilled cheese"}, "House 2": RIGHT["House 2"]}), 4, True,
         "ZeroEval: a longer list counts by its first element"),
        (_solution({"House 1": {"Name": " ERIC ", "Food": "Grilled Cheese"}, "House 2": RIGHT["House 2"]}), 4, True,
         "ZeroEval: lower() and strip() on both sides"),
        (_solution({"House 1": {"Name": "Eric", "Food": "grilled  cheese"}, "House 2": RIGHT["House 2"]}), 3, True,
         "ZeroEval: inner whitespace is not collapsed"),
        (_solution({"house 1": RIGHT["House 1"], "House 2": RIGHT["House 2"]}), 2, True, "ZeroEval: house keys as written"),
        (_solution({"House 1": {"name": "Eric", "Food": "grilled cheese"}, "House 2": RIGHT["House 2"]}), 3, True,
         "ZeroEval: attribute names as in the reference header"),
        (_solution({"House 1": {"Name": "", "Food": None}, "House 2": {"Name": [], "Food": "pizza"}}), 1, True,
         "ZeroEval: empty, null and empty-list cells are skipped (wrong)"),
        (_solution({}), 0, True, "ZeroEval: an empty solution is answered, with no right cell"),
        (json.dumps(RIGHT), 0, False, "ZeroEval: no 'solution' key is 'No answer'"),
        (json.dumps({"reasoning": "x", "solution": None}), 0, False, "ZeroEval: a null solution is 'No answer'"),
        (_solution(RIGHT) + '\nfinal: {"solution": {"House 1": {"Name": "Eric",}}}', 0, False,
         "ZeroEval: only the last complete {...} is tried; it does not parse, so no answer"),
        ("```json\n" + _solution(RIGHT) + "\n```", 4, True, "ZeroEval: a fenced block is found as the last {...}"),
        ('{"reasoning": "a {b", "solution": {"House 1": {"Name": "Eric"}}}', 0, False,
         "ZeroEval: braces inside strings are counted, an unbalanced one hides the answer"),
    ],
)
def test_zebra_matches_zeroeval(response: str, cells: int, parsed: bool, source: str) -> None:
    g = get_grader("zebra")(response, _zebra())
    assert g.parsed == parsed, source
    assert g.info["cells_correct"] == cells and g.info["cells_total"] == 4, source
    assert g.score == float(cells == 4)


def test_zebra_lenient_options() -> None:
    """The lenient options (each off by default, ZeroEval has none of them)."""
    p = _zebra()
    trailing = _solution(RIGHT) + '\nfinal: {"solution": {"House 1": {"Name": "Eric",}}}'
    assert get_grader("zebra", json_repair=True)(trailing, p).info["cells_correct"] == 1  # the repaired last one
    broken = _solution(RIGHT) + "\nand {not json}"
    assert not get_grader("zebra")(broken, p).parsed
    assert get_grader("zebra", json_repair=True)(broken, p).score == 1.0  # the earlier object
    tab = _solution(RIGHT).replace("clue 1 then", "clue 1\tthen")  # a raw tab: invalid JSON for ZeroEval too
    assert not get_grader("zebra")(tab, p).parsed
    assert get_grader("zebra", json_repair=True)(tab, p).score == 1.0
    bare = json.dumps(RIGHT)
    assert get_grader("zebra", layouts=["solution", "houses"])(bare, p).score == 1.0
    assert get_grader("zebra", layouts=["rows"])(json.dumps(TINY), p).score == 1.0
    loose_keys = _solution({"house_1": {"NAME": "Eric", "food": "grilled cheese"}, "2": RIGHT["House 2"]})
    assert get_grader("zebra", keys="loose")(loose_keys, p).score == 1.0
    spaced = _solution({"House 1": {"Name": "Eric", "Food": "grilled  cheese"}, "House 2": RIGHT["House 2"]})
    assert get_grader("zebra", cells="collapse_space")(spaced, p).score == 1.0
    two = _solution({"House 1": {"Name": ["Eric", "Bob"], "Food": "grilled cheese"}, "House 2": RIGHT["House 2"]})
    assert get_grader("zebra", list_cells="single")(two, p).info["cells_correct"] == 3
    one = _solution({"House 1": {"Name": ["Eric"], "Food": "grilled cheese"}, "House 2": RIGHT["House 2"]})
    assert get_grader("zebra", list_cells="single")(one, p).score == 1.0
    assert get_grader("zebra", list_cells="wrong")(one, p).info["cells_correct"] == 3
    for bad in ({"keys": "fuzzy"}, {"cells": "x"}, {"list_cells": "all"}, {"layouts": ["grid"]}, {"score": "x"}):
        with pytest.raises(ValueError):
            get_grader("zebra", **bad)


def test_zebra_extracted_grid_is_in_compared_form() -> None:
    """Answers that score alike vote alike in maj@K: the extracted grid holds the compared form."""
    a = get_grader("zebra")(_solution(RIGHT), _zebra())
    loud = {h: {k: v.upper() + " " for k, v in attrs.items()} for h, attrs in RIGHT.items()}
    b = get_grader("zebra")(_solution(loud, reasoning="other words"), _zebra())
    assert a.extracted == b.extracted and json.loads(a.extracted)["House 1"]["Name"] == "eric"


def test_zebra_number_cells_differ_from_zeroeval() -> None:
    """DIFFERS: ZeroEval raises ValueError('Unknown type') on a number cell (its run stops); the
    project compares the number as text."""
    answer = {"header": ["House", "Name", "Age"], "rows": [["1", "Eric", "7"], ["2", "Bob", "9"]]}
    out = _solution({"House 1": {"Name": "Eric", "Age": 7}, "House 2": {"Name": "Bob", "Age": 10}})
    g = get_grader("zebra")(out, _zebra(answer))
    assert g.parsed and g.info["cells_correct"] == 3


def test_zeroeval_json_extraction() -> None:
    assert extract_zeroeval_json('x {"a": "line\nbreak"} y') == {"a": "linebreak"}
    assert extract_zeroeval_json('{"a": 1} then {"b": 2}') == {"b": 2}
    assert extract_zeroeval_json('{"a": 1} then {"b": }') is None
    assert extract_zeroeval_json("no json") is None


@pytest.fixture(scope="module")
def zebra_items() -> list[Problem]:
    root = shared_benchmark_dir()
    if root is None or not (root / "zebralogic" / "test.jsonl").is_file():
        pytest.skip("ZebraLogic lives only in ../shared/benchmarks/zebralogic/ (gated source, never packaged); folder absent")
    items = load_benchmark("zebralogic", root=root)
    # one item of every size, so that puzzles have different numbers of cells
    by_size: dict[str, Problem] = {}
    for p in items:
        by_size.setdefault(f"{len(p.answer['rows'])}x{len(p.answer['header']) - 1}", p)
    return list(by_size.values())


def test_zebra_leaderboard_cell_accuracy_on_benchmark_items(zebra_items: list[Problem]) -> None:
    """ZeroEval's leaderboard 'Cell Acc' is total correct cells / total cells (no-answer puzzles
    count their cells as wrong). Constructed outputs (K = 2 samples) on real items of every size:
    the evaluation summary's ``cell_acc_leaderboard`` equals that direct count, and
    ``cell_acc_puzzle_mean`` (mean of per-puzzle fractions) differs from it."""
    assert len(zebra_items) == 25
    grader = get_grader("zebra")
    correct_direct = total_direct = 0
    per_puzzle: list[float] = []
    samples: list[list[dict]] = []
    for k, p in enumerate(zebra_items):
        header, rows = p.answer["header"], p.answer["rows"]
        n_cells = len(rows) * (len(header) - 1)
        records, fractions = [], []
        for sample in range(2):
            table = {f"House {r[0]}": dict(zip(header[1:], r[1:])) for r in rows}
            # spoil the first ((k + sample) mod (M+1)) attributes of house 1; some samples have no answer
            spoiled = header[1 : 1 + (k + sample) % len(header)]
            for name in spoiled:
                table["House 1"][name] = "nobody"
            if (k + 3 * sample) % 5 == 4:
                response, right = "I could not solve it.", 0
            else:
                response, right = "```json\n" + _solution(table) + "\n```", n_cells - len(spoiled)
            g = grader(response, p)
            assert g.parsed == response.startswith("```")
            assert (g.info["cells_correct"], g.info["cells_total"]) == (right, n_cells)
            correct_direct += right
            total_direct += n_cells
            fractions.append(right / n_cells)
            records.append(grade_record(g))
        per_puzzle.append(sum(fractions) / 2)
        samples.append(records)
    run = BenchmarkRun("zebralogic", "zebra", 2)
    run.results["chain"] = [[sample_result("zebra", r) for r in recs] for recs in samples]
    _add_cells(run, "chain", zebra_items, samples)
    ev = EvalSection(benchmarks=(BenchmarkEntry(name="zebralogic", k=2),), n_boot=200)
    row = build_summary([run], ["a"], ev)["benchmarks"]["zebralogic"]["chain"]
    assert row["cell_acc_leaderboard"]["value"] == pytest.approx(correct_direct / total_direct, abs=1e-12)
    assert row["cell_acc_puzzle_mean"]["value"] == pytest.approx(sum(per_puzzle) / len(per_puzzle), abs=1e-12)
    assert abs(row["cell_acc_leaderboard"]["value"] - row["cell_acc_puzzle_mean"]["value"]) > 1e-3
    low, high = row["cell_acc_leaderboard"]["low"], row["cell_acc_leaderboard"]["high"]
    assert low <= correct_direct / total_direct <= high
    # traces written before cells_total existed are counted from the reference grid
    old = [[{**r, "info": {"cell_accuracy": r["info"]["cell_accuracy"]}} for r in recs] for recs in samples]
    _add_cells(run, "old", zebra_items, old)
    assert [(round(c), t) for c, t in run.cell_counts["old"]] == run.cell_counts["chain"]


def test_ratio_bootstrap_interval() -> None:
    m = ratio_bootstrap_interval([1, 9], [4, 36], n_boot=500)
    assert m.value == pytest.approx(10 / 40)
    m = ratio_bootstrap_interval([0, 36], [4, 36], n_boot=500)  # leaderboard 0.9, per-puzzle mean 0.5
    assert m.value == pytest.approx(0.9) and m.low <= 0.9 <= m.high
    with pytest.raises(ValueError):
        ratio_bootstrap_interval([1], [0])
    with pytest.raises(ValueError):
        ratio_bootstrap_interval([], [])


# ----------------------------------------------------------------------------- AutoLogi (official extraction)

INDENTED_SET = '1. My answer:\n   ```python\n   {"female": {"Emily", "Olivia"}}\n   ```\n'
INDENTED_JSON = '1. My answer:\n   ```json\n   ["snacks", "stationery"]\n   ```\n'


@pytest.mark.parametrize(
    "text,official,lenient,source",
    [
        ('Reasoning\n```python\n{"female": {"Emily", "Olivia"}}\n```', {"female": {"Emily", "Olivia"}},
         {"female": {"Emily", "Olivia"}}, "AutoLogi extract_code: the last fenced block, ast.literal_eval"),
        ('no block {"a": [1, 2]} and later {"b": 3}', {"b": 3}, {"b": 3}, "AutoLogi extract_last_dict: the last balanced {...}"),
        ("no dict: [1, 2] then [3, 4]", [3, 4], [3, 4], "AutoLogi extract_last_list: the last [...]"),
        ('```python\nanswer = {"a": 1}\n```', {"a": 1}, {"a": 1}, "AutoLogi: the part after the first '='"),
        ('```json\n["x", // first\n"y"]\n```', ["x", "y"], ["x", "y"], "AutoLogi: // comments removed"),
        ('```json\n{"ok": true}\n```', {"ok": True}, {"ok": True}, "AutoLogi: true/false mapped to Python"),
        (INDENTED_JSON, ["snacks", "stationery"], ["snacks", "stationery"],
         "AutoLogi: an indented block fails ast.literal_eval (IndentationError) but json.loads reads it"),
        (INDENTED_SET, None, {"female": {"Emily", "Olivia"}},
         "AutoLogi: an indented block with a Python set is an extraction failure (issue 17); lenient reads it"),
        ('```python\nx = {"a": true}\n```', None, {"a": True},
         "AutoLogi: true is not mapped in the '=' fallback, so extraction fails; lenient maps it"),
        ('```python\n{"word": "construe"}\n```', {"word": "consTrue"}, {"word": "construe"},
         "AutoLogi: 'true' is replaced inside words too; lenient replaces whole words"),
        ('{"a": 1}\n```python\nnot a literal\n```', None, None, "AutoLogi: a block that does not parse has no fallback"),
        ("nothing here", None, None, "AutoLogi: extraction_failed"),
    ],
)
def test_autologi_extraction(text: str, official, lenient, source: str) -> None:
    assert extract_autologi_answer(text) == official, source
    assert extract_autologi_answer(text, "lenient") == lenient, source


def test_autologi_extraction_option_validated() -> None:
    with pytest.raises(ValueError, match="extraction"):
        get_grader("autologi", trust_verifier_code=True, extraction="loose")
