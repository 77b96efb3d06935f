"""Training graders: reasoning-gym scoring with and without its substring credit (issue 16)."""

from __future__ import annotations

import pytest

from llm.rewards.base import Problem
from llm.rewards.training import ReasoningGymGrader, reasoning_gym_score

reasoning_gym = pytest.importorskip("reasoning_gym")


@pytest.fixture(scope="module")
def arithmetic():
    """A basic_arithmetic dataset (reasoning-gym's base ``score_answer``) and one item whose answer
    is a positive integer of one or two digits."""
    ds = reasoning_gym.create_dataset("basic_arithmetic", size=50, seed=3)
    for i, entry in enumerate(ds):
        if entry["answer"].isdigit():
            return ds, Problem(f"ba-{i}", entry["question"], entry["answer"], "reasoning_gym",
                               meta={"dataset": "basic_arithmetic", "entry": entry})
    raise AssertionError("no non-negative answer among 50 items")


def test_partial_credit_is_reasoning_gyms_default(arithmetic) -> None:
    ds, p = arithmetic
    gold = p.answer
    lenient = ReasoningGymGrader({"basic_arithmetic": ds})
    strict = ReasoningGymGrader({"basic_arithmetic": ds}, partial_credit=False)
    # correct
    for grader in (lenient, strict):
        g = grader(f"Let me compute.\nAnswer: {gold}", p)
        assert g.parsed and g.score == 1.0
    # the oracle as a substring ("-4" for "4"): reasoning-gym gives len(oracle)/len(answer)
    g = lenient(f"Answer: -{gold}", p)
    assert g.parsed and g.score == pytest.approx(len(gold) / (len(gold) + 1))
    assert g.score == pytest.approx(ds.score_answer(f"-{gold}", p.meta["entry"]))
    g = strict(f"Answer: -{gold}", p)
    assert g.parsed and g.score == 0.0
    # wrong
    wrong = str(int(gold) + 1)
    assert gold not in wrong
    for grader in (lenient, strict):
        g = grader(f"Answer: {wrong}", p)
        assert g.parsed and g.score == 0.0
    # unparsable: no anchor
    for grader in (lenient, strict):
        g = grader("I cannot tell.", p)
        assert not g.parsed and g.score == 0.0


def test_reasoning_gym_score_clips_and_binarises() -> None:
    class Scorer:
        def __init__(self, value: float) -> None:
            self.value = value

        def score_answer(self, answer, entry):
            return self.value

    assert reasoning_gym_score(Scorer(1.2), "a", {}) == 1.0
    assert reasoning_gym_score(Scorer(-0.1), "a", {}) == 0.0
    assert reasoning_gym_score(Scorer(0.5), "a", {}) == 0.5
    assert reasoning_gym_score(Scorer(0.5), "a", {}, partial_credit=False) == 0.0
    assert reasoning_gym_score(Scorer(1.0), "a", {}, partial_credit=False) == 1.0


def test_reasoning_gym_task_grader_option_from_config() -> None:
    """``task.grader: {partial_credit: false}`` reaches the reasoning-gym grader; unknown options
    are a config error."""
    from llm.data.tasks import TaskConfig, TaskError, load_task

    strict = load_task(TaskConfig(kind="reasoning_gym", names=("basic_arithmetic",), size=20, seed=3,
                                  grader={"partial_credit": False}))
    lenient = load_task(TaskConfig(kind="reasoning_gym", names=("basic_arithmetic",), size=20, seed=3))
    p = next(q for q in strict.problems if q.answer.isdigit())
    assert lenient.grader(f"Answer: -{p.answer}", p).score > 0.0
    assert strict.grader(f"Answer: -{p.answer}", p).score == 0.0
    assert strict.grader(f"Answer: {p.answer}", p).score == 1.0
    with pytest.raises(TaskError, match="task.grader"):
        load_task(TaskConfig(kind="reasoning_gym", names=("basic_arithmetic",), size=2, grader={"nope": 1}))
