"""LLM team: config validation and bad-input errors (before any model load), handoff format,
router, tasks and graders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm.config import ConfigError
from llm.train.config import config_from_dict, load_config
from llm.handoff import HandoffFormat, render_prompt
from llm.rewards.base import Problem
from llm.data.tasks import PromptSource, TaskConfig, TaskError, load_task
from llm.rewards.training import grade_integer
from llm.rewards.training import extract_training_answer as extract_final_answer
from llm.team import Router
from llm.train import Trainer, main


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model weights are loaded."""
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)


# ---------------------------------------------------------------------------- bad input
def test_missing_model_path_is_reported_before_loading(tiny_run_config, tiny_model_dirs, tmp_path, no_model_load):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run")
    cfg["team"]["agents"][1]["model"] = str(tmp_path / "no_such_model")
    with pytest.raises(ConfigError, match=r"agent 'critic': model path does not exist"):
        Trainer(config_from_dict(cfg))


def test_tokenizer_without_chat_template_is_reported(tiny_run_config, tiny_model_dirs, tmp_path, no_model_load):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run")
    cfg["team"]["agents"][2]["model"] = str(tiny_model_dirs["tiny_no_template"])
    with pytest.raises(ConfigError, match=r"agent 'judge'.*no chat template"):
        Trainer(config_from_dict(cfg))


@pytest.mark.parametrize("where", ["router", "train"])
def test_unknown_agent_name_is_reported(tiny_run_config, tiny_model_dirs, tmp_path, where):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run")
    if where == "router":
        cfg["team"]["router"] = {"kind": "fixed", "order": ["solver", "critic", "referee"]}
    else:
        cfg["train"]["order"] = ["judge", "solver", "referee"]
    with pytest.raises(ConfigError, match=r"unknown agent.*referee"):
        config_from_dict(cfg)


def test_empty_task_file_is_reported(tiny_run_config, tiny_model_dirs, tmp_path, no_model_load):
    empty = tmp_path / "train.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run")
    cfg["task"] = {"kind": "jsonl", "path": str(empty), "answer_kind": "integer"}
    with pytest.raises(ConfigError, match=r"contains no problems \(empty file\)"):
        Trainer(config_from_dict(cfg))
    cfg["task"]["path"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="file not found"):
        Trainer(config_from_dict(cfg))


def test_unknown_keys_and_bad_values_name_the_field(tiny_run_config, tiny_model_dirs, tmp_path):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run")
    cfg["team"]["agents"][0]["temprature"] = 0.5
    with pytest.raises(ConfigError, match=r"team.agents\[0\]: unknown key\(s\) \['temprature'\]"):
        config_from_dict(cfg)
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run")
    cfg["team"]["agents"][0]["dtype"] = "float64"
    with pytest.raises(ConfigError, match=r"team.agents\[0\].dtype must be one of \[.float32."):
        config_from_dict(cfg)
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run", mode="sideways")
    with pytest.raises(ConfigError, match="mode"):
        Trainer(config_from_dict(cfg))


def test_cli_reports_bad_input_without_traceback(tiny_run_config, tiny_model_dirs, tmp_path, capsys, no_model_load):
    import yaml

    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run")
    cfg["team"]["agents"][0]["model"] = str(tmp_path / "nope")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["--config", str(path)]) == 2
    assert "model path does not exist" in capsys.readouterr().err


def test_example_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("cpu_demo.yaml", "teamtr_3x8b.yaml", "teamtr_1p7b_8b_14b.yaml"):
        cfg = load_config(root / name)
        assert len(cfg.team.agents) == 3
        assert cfg.stage_config().update.delta == 0.01
    lora = load_config(root / "cpu_demo_lora.yaml")
    assert len(lora.team.agents) == 2 and all(a.lora is not None for a in lora.team.agents)


# ---------------------------------------------------------------------------- protocol
def test_default_handoff_format_matches_teamtr_chain():
    fmt = HandoffFormat()
    assert fmt.user_message("What is 2+2?", []) == "What is 2+2?"
    msg = fmt.user_message("What is 2+2?", [(0, "a", "I think 4.\nAnswer: 4"), (2, "c", "<think>hmm</think>It is 4")])
    assert msg.startswith("What is 2+2?\n\nPrevious agents' answers:\nAgent 1:\nI think 4.\nAnswer: 4\n\nAgent 3:\nIt is 4")
    assert msg.endswith(fmt.final_instruction)
    named = HandoffFormat(label_template="[{name}]", strip_thinking=False)
    assert "[c]\n<think>hmm</think>It is 4" in named.user_message("q", [(2, "c", "<think>hmm</think>It is 4")])
    with pytest.raises(ValueError, match="question_template"):
        HandoffFormat(question_template="no placeholder")


def test_prompt_uses_each_agents_chat_template(tiny_model_dirs):
    from transformers import AutoTokenizer

    qwen = AutoTokenizer.from_pretrained(tiny_model_dirs["tiny_qwen3"])
    llama = AutoTokenizer.from_pretrained(tiny_model_dirs["tiny_llama"])
    a = qwen.decode(render_prompt(qwen, "You are a solver.", "What is 1+1?"))
    b = llama.decode(render_prompt(llama, None, "What is 1+1?"))
    assert a == "<|im_start|>system\nYou are a solver.<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert b == "<|user|>\nWhat is 1+1?</s>\n<|assistant|>\n"


# ---------------------------------------------------------------------------- router
def test_routers():
    rng = np.random.default_rng(0)
    rr = Router("round_robin", 3, rounds=2)
    assert rr.schedule(0, 0, rng) == [0, 1, 2, 0, 1, 2]
    assert rr.schedule(1, 1, rng) == [2, 0, 1, 2, 0, 1]
    assert Router("fixed", 3, order=[2, 0, 1]).schedule(5, 7, rng) == [2, 0, 1]
    rand = Router("random", 4, rounds=3)
    draws = [rand.schedule(0, s, rng) for s in range(50)]
    for d in draws:
        assert all(sorted(d[4 * k : 4 * k + 4]) == [0, 1, 2, 3] for k in range(3))
    assert len({tuple(d) for d in draws}) > 10
    with pytest.raises(ValueError):
        Router("fixed", 3, order=[0, 0, 1])


# ---------------------------------------------------------------------------- tasks and graders
def test_answer_extraction_and_integer_grader():
    assert extract_final_answer("blah\nAnswer: 42\n") == "42"
    assert extract_final_answer("Answer: 1\nthen\nanswer: $-7$") == "-7"
    assert extract_final_answer("so <answer> bob </answer>") == "bob"
    assert extract_final_answer("thus \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_final_answer("So the answer is 5.") == "5"
    assert extract_final_answer("no answer here") is None
    p = Problem("p", "q", 1234, "integer")
    assert grade_integer("Answer: 1,234", p).score == 1.0
    assert grade_integer("Answer: 1235", p).score == 0.0
    g = grade_integer("I do not know", p)
    assert (g.score, g.parsed) == (0.0, False)


def test_reasoning_gym_task_uses_its_scorer():
    task = load_task(TaskConfig(kind="reasoning_gym", names=("basic_arithmetic", "knights_knaves"), size=3, seed=1))
    assert len(task.problems) == 6 and len({p.id for p in task.problems}) == 6
    for p in task.problems:
        assert task.grader(f"Reasoning...\nAnswer: {p.answer}", p).score == 1.0
        assert task.grader("Answer: definitely wrong", p).score < 1.0
        assert not task.grader("no commitment", p).parsed
    with pytest.raises(TaskError, match="no_such_dataset"):
        load_task(TaskConfig(kind="reasoning_gym", names=("no_such_dataset",), size=2))


def test_jsonl_task_and_prompt_source(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"problem": f"{i} + 1 = ?", "answer": i + 1}) for i in range(5)), encoding="utf-8")
    task = load_task(TaskConfig(kind="jsonl", path=str(path), answer_kind="integer"))
    assert [p.answer for p in task.problems] == [1, 2, 3, 4, 5]
    assert task.grader("Answer: 3", task.problems[2]).score == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "answer": 1}\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad.jsonl:1 has no field 'problem'"):
        load_task(TaskConfig(kind="jsonl", path=str(bad)))
    src = PromptSource(task.problems, seed=3)
    first = [p.id for p in src(5)]
    assert sorted(first) == sorted(p.id for p in task.problems)  # one epoch = a permutation
    state = src.state_dict()
    nxt = [p.id for p in src(3)]
    src2 = PromptSource(task.problems, seed=3)
    src2.load_state_dict(state)
    assert [p.id for p in src2(3)] == nxt


def test_tiny_fixture_models_are_heterogeneous(tiny_model_dirs):
    from transformers import AutoConfig, AutoTokenizer

    a, b = (AutoConfig.from_pretrained(tiny_model_dirs[k]) for k in ("tiny_qwen3", "tiny_llama"))
    assert (a.model_type, b.model_type) == ("qwen3", "llama")
    assert a.hidden_size != b.hidden_size and a.head_dim >= 32 and b.head_dim >= 32
    ta, tb = (AutoTokenizer.from_pretrained(tiny_model_dirs[k]) for k in ("tiny_qwen3", "tiny_llama"))
    assert len(ta) != len(tb) and ta("Agent 1: 12 + 7")["input_ids"] != tb("Agent 1: 12 + 7")["input_ids"]
    assert torch.get_num_threads() >= 1
