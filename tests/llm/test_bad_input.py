"""Bad input at the config boundary: every case ends with one line on stderr naming the file, the
key and the allowed values, exit status 2, no traceback, nothing written and no model loaded."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import yaml

from llm.config import ConfigError
from llm.train.cli import main as train_main
from llm.train.config import config_from_dict, load_config


@pytest.fixture
def no_model_load(monkeypatch):
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)


def _write(tmp_path: Path, cfg: dict | str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def _fails(capsys, path: Path, *expected: str, extra: tuple[str, ...] = ()) -> str:
    """Run the CLI on ``path``; assert exit 2 and one stderr line containing every ``expected``."""
    rc = train_main(["--config", str(path), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def base(tiny_run_config, tiny_model_dirs, tmp_path):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "out")
    cfg["progress"] = False
    return cfg


def _nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def test_malformed_yaml_names_file_and_line(capsys, tmp_path, no_model_load):
    path = _write(tmp_path, "team:\n  agents: [\n    {name: a\ntrain: {stages: 1}\n")
    line = _fails(capsys, path, str(path), "malformed YAML")
    assert f"{path}:" in line and line.split(f"{path}:")[1].split(":")[0].isdigit()
    _nothing_written(tmp_path)


def test_tab_indentation_names_the_line(capsys, tmp_path, no_model_load):
    path = _write(tmp_path, "train:\n\tstages: 1\n")
    _fails(capsys, path, f"{path}:2:", "tab character")


def test_seed_not_an_integer(capsys, base, tmp_path, no_model_load):
    base["train"]["seed"] = "abc"
    path = _write(tmp_path, base)
    line = _fails(capsys, path, str(path), "train.seed must be an integer, got 'abc'")
    lineno = int(line.split(f"{path}:")[1].split(":")[0])
    assert "seed" in path.read_text().splitlines()[lineno - 1]
    _nothing_written(tmp_path)


def test_fractional_stages_rejected(capsys, base, tmp_path, no_model_load):
    base["train"]["stages"] = 2.5
    _fails(capsys, _write(tmp_path, base), "train.stages must be an integer, got 2.5")
    _nothing_written(tmp_path)


def test_quoted_no_is_not_true(capsys, base, tmp_path, no_model_load):
    text = yaml.safe_dump(base, sort_keys=False).replace("tensorboard: false", 'tensorboard: "no"')
    if 'tensorboard: "no"' not in text:
        text += 'tensorboard: "no"\n'
    _fails(capsys, _write(tmp_path, text), "tensorboard must be true or false, got 'no'")
    _nothing_written(tmp_path)


def test_lr_written_1e_3_is_the_float(base, tmp_path):
    path = _write(tmp_path, yaml.safe_dump(base, sort_keys=False).replace("lr: 0.01", "lr: 1e-3"))
    assert "lr: 1e-3" in path.read_text()
    assert yaml.safe_load(path.read_text())["team"]["agents"][0]["optimizer"]["lr"] == "1e-3"  # PyYAML: a string
    assert load_config(path).team.agents[0].optimizer.lr == pytest.approx(1e-3)


def test_choice_errors_list_the_allowed_values(capsys, base, tmp_path, no_model_load):
    base["team"]["agents"][0]["dtype"] = "float64"
    _fails(capsys, _write(tmp_path, base), "team.agents[0].dtype must be one of ['float32', 'bfloat16', 'float16', "
           "'auto'], got 'float64'")


def test_old_stage_key_names_the_new_place(capsys, base, tmp_path, no_model_load):
    base["train"]["stage"] = {"prefix_reuse": True}
    _fails(capsys, _write(tmp_path, base), "train.stage is no longer a key", "directly under train")


def test_set_overrides_any_key(capsys, base, tmp_path, no_model_load):
    path = _write(tmp_path, base)
    cfg = load_config(path, ["train.update.delta=0.02", "team.agents[1].max_new_tokens=3", "train.mode=stale"])
    assert cfg.stage_config().update.delta == 0.02 and cfg.team.agents[1].max_new_tokens == 3
    assert cfg.stage_config().mode == "stale"
    _fails(capsys, path, "train.update.delta must be > 0", extra=("--set", "train.update.delta=-1"))
    _fails(capsys, path, "--set expects KEY=VALUE", extra=("--set", "train.update.delta"))


def test_non_utf8_data_file(capsys, base, tmp_path, no_model_load):
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "3"}\n')
    base["task"] = {"kind": "jsonl", "path": str(data), "contamination_policy": "off"}
    _fails(capsys, _write(tmp_path, base), "task.path", f"{data}:2: not UTF-8")
    _nothing_written(tmp_path)


def test_directory_as_data_file(capsys, base, tmp_path, no_model_load):
    (tmp_path / "data").mkdir()
    base["task"] = {"kind": "jsonl", "path": str(tmp_path / "data"), "contamination_policy": "off"}
    _fails(capsys, _write(tmp_path, base), "task.path", "is a directory, not a file")
    _nothing_written(tmp_path)


def test_output_dir_not_writable(capsys, base, tmp_path, no_model_load):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    base["output_dir"] = str(blocker / "run")
    _fails(capsys, _write(tmp_path, base), "output_dir", "cannot be created or written")
    assert blocker.read_text() == "a file where a folder should be"


def test_missing_local_looking_model_fails_fast_offline(capsys, base, tmp_path, no_model_load, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    base["team"]["agents"][2]["model"] = "models/my-model"
    t0 = time.monotonic()
    _fails(capsys, _write(tmp_path, base), "agent 'judge'", "model path does not exist: models/my-model",
           "offline")
    assert time.monotonic() - t0 < 10
    _nothing_written(tmp_path)


def test_tokenizer_vocabulary_larger_than_the_model(capsys, base, tiny_model_dirs, tmp_path, no_model_load):
    base["team"]["agents"][1]["tokenizer"] = str(tiny_model_dirs["tiny_qwen3"])  # 384 tokens, tiny_llama has 320
    _fails(capsys, _write(tmp_path, base), "agent 'critic'", "embedding rows", "320")
    _nothing_written(tmp_path)


def test_config_file_missing_or_a_directory(capsys, tmp_path):
    _fails(capsys, tmp_path / "nope.yaml", "config file not found")
    _fails(capsys, tmp_path, "is a directory, not a file")


def test_every_key_has_help():
    from llm.config.build import describe_keys
    from llm.evaluate.config import EvalConfig
    from llm.plug_and_play.config import PnPConfig
    from llm.train.config import RunConfig

    for root in (RunConfig, EvalConfig, PnPConfig):
        keys = list(describe_keys(root))
        assert len(keys) > 40
        assert all(text and not text.startswith("see ") for _, _, text in keys), [k for k, _, t in keys
                                                                                   if t.startswith("see ")]
    assert any(k == "train.update.delta" for k, _, _ in describe_keys(RunConfig))


def test_help_lists_sections_keys_and_docs(capsys):
    with pytest.raises(SystemExit) as info:
        train_main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in ("team.agents[].model", "train.update.delta", "train.advantage.a_clip", "sampling.vllm.",
                 "docs/llm_training.md", "--set"):
        assert text in out


def test_truncated_metrics_line_is_repaired_on_resume(tiny_run_config, make_trainer_plain, tiny_model_dirs,
                                                      tmp_path, caplog):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run", stages=1)

    class Killed(RuntimeError):
        pass

    def hook(n):
        if n == 2:
            raise Killed

    with pytest.raises(Killed):
        make_trainer_plain(cfg, on_update_hook=hook).run()
    metrics = tmp_path / "run" / "metrics.jsonl"
    rows_before = metrics.read_text().splitlines()
    with metrics.open("a") as fh:
        fh.write('{"stage": 0, "update": 3, "agent": 2, "age')  # disk full mid-line
    with caplog.at_level("WARNING"):
        result = make_trainer_plain(cfg).run()
    assert result.resumed_from == 2 and result.updates_done == 3
    assert any("truncated line" in r.getMessage() for r in caplog.records)
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["update"] for r in rows if "agent" in r] == [1, 2, 3]
    assert metrics.read_text().splitlines()[:2] == rows_before[:2]


def test_ctrl_c_and_disk_full_end_with_one_line(capsys, base, tmp_path, monkeypatch):
    from llm import checkpoint
    from llm.sampler import TeamSampler

    base["train"]["stages"] = 1
    path = _write(tmp_path, base)
    real = TeamSampler.sample
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TeamSampler, "sample", interrupted)
    rc = train_main(["--config", str(path)])
    err = capsys.readouterr().err  # model-loading bars of transformers come first
    assert rc == 130 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: ")
    cursor = json.loads((tmp_path / "out" / "cursor.json").read_text())
    assert cursor["updates_done"] == 1

    real_write = checkpoint.atomic_write_bytes

    def disk_full(p, data):
        if p.name == "cursor.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        return real_write(p, data)

    monkeypatch.setattr(TeamSampler, "sample", real)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", disk_full)
    rc = train_main(["--config", str(path)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: disk full"), err
    assert json.loads((tmp_path / "out" / "cursor.json").read_text())["updates_done"] == 1  # still consistent
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real_write)
    assert train_main(["--config", str(path)]) == 0
    assert json.loads((tmp_path / "out" / "cursor.json").read_text())["updates_done"] == 3


def test_config_errors_are_config_errors_with_keys():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"team": {"agents": [{"name": "a", "model": "x/y", "lora": {"r": 0}}]},
                          "task": {"kind": "reasoning_gym"}})
    assert info.value.key == "team.agents[0].lora.r" and "must be >= 1, got 0" in str(info.value)
