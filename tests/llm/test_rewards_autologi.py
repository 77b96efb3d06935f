"""AutoLogi loader and grader on items built in the official format.

No AutoLogi data is available here. The items below follow the published format of
``8188zq/AutoLogi`` ``testing-data/AutoLogi_{en,cn}.jsonl`` (fields ``idx, prompt, question,
logi_constraints, input_format, example, code{Inputs_Check_code, Constraint_List_code,
Traverse_code}, lang``); the first one is the worked example of the repository's own
verifier-construction prompt (``synthesize/prompts/verify.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm.data import DataError, load_benchmark
from llm.rewards import AutoLogiGrader, get_grader
from llm.rewards.logic import extract_autologi_answer

TEAM_CHECK = '''
def inputs_check(inputs):
    if not isinstance(inputs, dict):
        return False
    if "female" not in inputs or "male" not in inputs:
        return False
    if not isinstance(inputs["female"], set) or not isinstance(inputs["male"], set):
        return False
    if len(inputs["female"]) != 2 or len(inputs["male"]) != 3:
        return False
    if not inputs["female"].issubset({"Emily", "Sophia", "Olivia"}) or not inputs["male"].issubset({"James", "Michael", "William", "David", "Robert"}):
        return False
    return True
'''
TEAM_CONSTRAINTS = '''
def constraint_1(inputs):
    return not ("Sophia" in inputs["female"] and "Robert" in inputs["male"])

def constraint_2(inputs):
    return not ("James" in inputs["male"] and "David" in inputs["male"])

def constraint_3(inputs):
    return not ("Michael" in inputs["male"] and "Robert" in inputs["male"])

constraint_list = [constraint_1, constraint_2, constraint_3]
'''
SHELF_CHECK = '''
GOODS = ["stationery", "snacks", "condiments", "daily necessities", "alcohol", "grains and oils", "beverages"]
def inputs_check(inputs):
    return isinstance(inputs, list) and len(inputs) == 7 and sorted(inputs) == sorted(GOODS)
'''
SHELF_CONSTRAINTS = '''
def c1(x):
    return x.index("alcohol") < x.index("condiments")
def c2(x):
    return abs(x.index("stationery") - x.index("condiments")) == 4
def c3(x):
    return x.index("grains and oils") - x.index("snacks") == 3
def c4(x):
    return abs(x.index("daily necessities") - x.index("stationery")) == 1
def c5(x):
    return x[0] == "snacks"
constraint_list = [c1, c2, c3, c4, c5]
'''
LOOP_CONSTRAINTS = '''
def forever(inputs):
    while True:
        pass
constraint_list = [forever]
'''


def _item(idx: int, lang: str, question: str, check: str, constraints: str, example: str) -> dict:
    return {
        "idx": idx,
        "prompt": f"{question}\n\nGive one arrangement that satisfies all constraints as a Python literal in a code block. Example: {example}",
        "question": question,
        "logi_constraints": "...",
        "input_format": "...",
        "example": example,
        "code": {"Inputs_Check_code": check, "Constraint_List_code": constraints, "Traverse_code": "# enumerates all inputs"},
        "lang": lang,
    }


@pytest.fixture()
def autologi_file(tmp_path: Path) -> Path:
    items = [
        _item(1, "en", "A class selects two girls and three boys ...", TEAM_CHECK, TEAM_CONSTRAINTS,
              '{"female": {"Emily", "Sophia"}, "male": {"James", "Michael", "William"}}'),
        _item(2, "en", "A supermarket has 7 rows of shelves ...", SHELF_CHECK, SHELF_CONSTRAINTS, '["snacks", ...]'),
        _item(3, "cn", "某班打算从三名女生中选拔两人 ...", TEAM_CHECK, TEAM_CONSTRAINTS, "{...}"),
        _item(4, "en", "A puzzle whose verifier never stops.", TEAM_CHECK, LOOP_CONSTRAINTS, "{...}"),
    ]
    path = tmp_path / "AutoLogi_test.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in items) + "\n", encoding="utf-8")
    return path


def test_loader_official_format(autologi_file: Path) -> None:
    problems = load_benchmark("autologi", path=str(autologi_file))
    assert [p.id for p in problems] == ["autologi-en-1", "autologi-en-2", "autologi-cn-3", "autologi-en-4"]
    p = problems[0]
    assert p.kind == "autologi" and p.prompt.startswith("A class selects")
    assert set(p.answer) == {"Inputs_Check_code", "Constraint_List_code"}
    assert p.meta["lang"] == "en" and p.meta["traverse_code"].startswith("#")
    assert [p.id for p in load_benchmark("autologi", path=str(autologi_file), lang="cn")] == ["autologi-cn-3"]


def test_loader_errors(tmp_path: Path, autologi_file: Path) -> None:
    with pytest.raises(DataError, match="AutoLogi"):
        load_benchmark("autologi")  # no path: explains where the data comes from
    broken = json.loads(autologi_file.read_text(encoding="utf-8").splitlines()[0])
    del broken["code"]["Constraint_List_code"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(broken) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1.*code\.Constraint_List_code"):
        load_benchmark("autologi", path=str(bad))


@pytest.fixture()
def problems(autologi_file: Path):
    return {p.id: p for p in load_benchmark("autologi", path=str(autologi_file))}


def test_grader_correct_wrong_invalid_garbled(problems) -> None:
    grader = get_grader("autologi", trust_verifier_code=True)
    team = problems["autologi-en-1"]
    right = grader('Reasoning...\n```python\n{"female": {"Emily", "Olivia"}, "male": {"James", "Michael", "William"}}\n```', team)
    assert right.score == 1.0 and right.parsed
    # violates constraint 2 (James and David together)
    wrong = grader('```python\n{"female": {"Emily", "Olivia"}, "male": {"James", "David", "William"}}\n```', team)
    assert wrong.score == 0.0 and wrong.parsed
    # wrong shape: lists instead of sets fail inputs_check
    shape = grader('{"female": ["Emily", "Olivia"], "male": ["James", "Michael", "William"]}', team)
    assert shape.score == 0.0 and shape.parsed
    assert grader('{"girls": {"Emily"}}', team).score == 0.0
    garbled = grader("I could not decide who goes.", team)
    assert garbled.score == 0.0 and not garbled.parsed
    shelf = problems["autologi-en-2"]
    order = ["snacks", "stationery", "daily necessities", "grains and oils", "alcohol", "condiments", "beverages"]
    assert grader(f"answer = {order!r}", shelf).score == 1.0
    assert grader(f"{list(reversed(order))!r}", shelf).score == 0.0
    # mixed types make the verifier itself raise: wrong, not a parse failure
    raises = grader('[1, "snacks", 2, 3, 4, 5, 6]', shelf)
    assert raises.score == 0.0 and raises.parsed and raises.info["error"] == "verifier_raised"
    # JSON-ish answer with // comments and true/false (handled like the official scorer)
    assert grader('```json\n[\n"snacks", // first\n"stationery", "daily necessities", "grains and oils", "alcohol", "condiments", "beverages"]\n```', shelf).score == 1.0


def test_grader_needs_opt_in_and_times_out(problems) -> None:
    with pytest.raises(PermissionError, match="trust_verifier_code"):
        AutoLogiGrader()("{}", problems["autologi-en-1"])
    slow = AutoLogiGrader(trust_verifier_code=True, timeout_s=1.0)(
        '{"female": {"Emily", "Olivia"}, "male": {"James", "Michael", "William"}}', problems["autologi-en-4"]
    )
    assert slow.score == 0.0 and slow.parsed and slow.info["error"] == "timeout"


def test_answer_is_never_executed(problems, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f'```python\n__import__("pathlib").Path({str(marker)!r}).write_text("x")\n```'
    g = AutoLogiGrader(trust_verifier_code=True)(payload, problems["autologi-en-1"])
    assert not g.parsed and not marker.exists()
    assert extract_autologi_answer("x = {1, 2}") == {1, 2}
    assert extract_autologi_answer("nothing") is None
