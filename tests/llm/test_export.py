"""llm.export: a trained tiny run -> Hugging Face folders -> from_pretrained gives the trainer's log-probs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm.agent import LLMAgent
from llm.config.errors import ConfigError
from llm.export.cli import main as export_main
from llm.export.run import load_run_team, resolve_checkpoint
from llm.train.config import config_from_dict
from llm.train.trainer import Trainer


def _train(tmp_path, dirs, tiny_run_config, grader, lora: bool, **train):
    cfg = tiny_run_config(dirs, tmp_path / "run", **{"stages": 1, **train})
    cfg["team"]["agents"] = cfg["team"]["agents"][:2]  # tiny Qwen3 + tiny Llama (two tokenizers)
    if lora:
        for agent in cfg["team"]["agents"]:
            agent["lora"] = {"r": 4, "alpha": 8}
    trainer = Trainer(config_from_dict(cfg))
    trainer.task.grader = grader
    result = trainer.run(resume=False)
    batch = result.sampler.sample(result.team, trainer.task.problems[:2], 2)
    return result, batch


def _logp_of_folder(folder, j, name, temperature, batch):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return LLMAgent(j, name, model, tok, temperature=temperature).log_probs(batch)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_export_round_trip_matches_trainer_log_probs(tmp_path, tiny_model_dirs, tiny_run_config, parity_grader, lora):
    result, batch = _train(tmp_path, tiny_model_dirs, tiny_run_config, parity_grader, lora)
    team = result.team
    with torch.no_grad():
        reference = [team[j].log_probs(batch) for j in range(len(team))]
    if lora:  # training moved the adapters (B starts at zero), so the export must carry them
        assert any(p.abs().max() > 0 for n, p in team[0].named_trainable_parameters() if "lora_B" in n)
    modes = ["adapters", "merged"] if lora else ["merged"]
    for mode in modes:
        out = tmp_path / f"export-{mode}"
        assert export_main(["--run", str(result.output_dir), "--out", str(out), "--lora", mode]) == 0
        record = json.loads((out / "export.json").read_text())
        assert record["checkpoint"]["update"] == result.updates_done
        for j, agent in enumerate(team):
            folder = out / agent.name
            if mode == "adapters":
                assert (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()
            else:
                assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
            got = _logp_of_folder(folder, j, agent.name, agent.temperature, batch)
            mask = batch.agent == j
            assert mask.any()
            assert torch.allclose(got[mask], reference[j][mask], atol=1e-5, rtol=0), (mode, agent.name)
    # the exported team config loads as a team config with the merged folders
    import yaml

    head = yaml.safe_load((tmp_path / "export-merged" / "team.yaml").read_text())
    assert [a["model"] for a in head["team"]["agents"]] == [str((tmp_path / "export-merged" / a.name).resolve())
                                                            for a in team]
    assert all(a["lora"] is None for a in head["team"]["agents"])


def test_checkpoint_choice(tmp_path, tiny_model_dirs, tiny_run_config, parity_grader):
    result, batch = _train(tmp_path, tiny_model_dirs, tiny_run_config, parity_grader, lora=False, stages=2)
    run = result.output_dir
    latest = resolve_checkpoint(run, "latest")
    assert latest.update == result.updates_done == 4
    assert latest.files == {0: "checkpoints/agent0/weights-u000003.safetensors",
                            1: "checkpoints/agent1/weights-u000004.safetensors"}
    assert resolve_checkpoint(run, "base").files == {0: None, 1: None}
    assert resolve_checkpoint(run, 4).files == latest.files
    # update 3 needs agent 1's weights after update 2, which the trainer did not keep
    with pytest.raises(ConfigError, match=r"agent 1's weights after update 2 were not kept \(kept updates of agent 1: \[4\]"):
        resolve_checkpoint(run, 3)
    with pytest.raises(ConfigError, match="has done 4 updates"):
        resolve_checkpoint(run, 5)
    with pytest.raises(ConfigError, match="latest"):
        resolve_checkpoint(run, "best")
    # the base team is the untrained one: its log-probs differ from the trained team's
    _, base_team, _ = load_run_team(run, "base")
    with torch.no_grad():
        trained = result.team[0].log_probs(batch)
        base = base_team[0].log_probs(batch)
    mask = batch.agent == 0
    assert not torch.allclose(trained[mask], base[mask], atol=1e-6)


def test_export_errors(tmp_path):
    assert export_main(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
