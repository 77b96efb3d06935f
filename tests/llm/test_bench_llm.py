"""experiments.bench_llm: the tiny preset end to end on CPU, argument validation, preset sizes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments import bench_llm
from experiments.bench_llm import BenchLLMConfig, count_parameters, preset_config, run
from experiments.common import read_csv

torch.set_num_threads(1)

TINY = dict(presets=("tiny",), device="cpu", batch=2, prompt_len=5, new_tokens=3, repeats=1, seed=0)


@pytest.mark.parametrize(
    "extra",
    [dict(dtype="float32", micro_batch=1, grad_checkpointing=False),
     dict(dtype="bfloat16", micro_batch=2, grad_checkpointing=True)],
    ids=["fp32-microbatch1", "bf16-checkpointing"],
)
def test_tiny_run_on_cpu(tmp_path, extra):
    config = BenchLLMConfig(**TINY, **extra)
    result = run(config, tmp_path)
    assert result["device"] == "cpu" and result["memory_kind"] == "cpu_max_rss"
    (row,) = result["rows"]
    assert row["preset"] == "tiny" and row["dtype"] == extra["dtype"]
    assert row["rollout_tokens"] == 2 * 3  # batch * new_tokens: min_new_tokens keeps every message full
    assert row["update_tokens"] == 2 * (5 + 3) and row["update_message_tokens"] == 2 * 3
    for key in ("rollout_tok_s", "update_tok_s", "peak_mem_gib"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["peak_mem_delta_gib"] >= 0
    assert math.isfinite(row["update_loss"])
    assert row["params_m"] == pytest.approx(count_parameters(preset_config("tiny")) / 1e6)
    assert {"bench.json", "bench.csv", "config.json", "seeds.json"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["rollout_tokens"] == 6
    (csv_row,) = read_csv(tmp_path / "bench.csv")
    assert csv_row["preset"] == "tiny" and float(csv_row["update_tok_s"]) > 0
    assert "tiny" in bench_llm.format_table(result)


@pytest.mark.parametrize(
    "field, value",
    [("presets", ("7b",)), ("presets", ()), ("presets", ("tiny", "tiny")), ("device", "tpu"),
     ("dtype", "float16"), ("batch", 0), ("prompt_len", 0), ("new_tokens", -1), ("micro_batch", 0),
     ("repeats", 0), ("seed", -1), ("temperature", 0.0), ("lr", 0.0), ("threads", 0)],
)
def test_bad_arguments_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"BenchLLMConfig\.{field}"):
        BenchLLMConfig(**{**TINY, field: value})


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"BenchLLMConfig\.device"):
        bench_llm.resolve_device("cuda")


def test_cli_reports_bad_argument(capsys, tmp_path):
    assert bench_llm.main(["--presets", "tiny,huge", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "BenchLLMConfig.presets" in capsys.readouterr().err


def test_preset_parameter_counts():
    n06 = count_parameters(preset_config("0.6b"))  # meta device: no weights allocated
    n17 = count_parameters(preset_config("1.7b"))
    assert 0.58e9 < n06 < 0.61e9  # Qwen3-0.6B: ~596M with tied embeddings
    assert 1.68e9 < n17 < 1.76e9  # Qwen3-1.7B: ~1.72B with tied embeddings
    cfg = preset_config("0.6b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size, cfg.vocab_size) == (1024, 28, 16, 8, 128, 3072, 151936)
    assert cfg.tie_word_embeddings and cfg.rope_parameters["rope_theta"] == 1e6
