"""experiments.bench_rollout's pure parts (default suite): the equal-work and per-seed ratios, the
EOS-masked log-prob gap of fixed-length rows, config validation."""

from __future__ import annotations

import pytest
import torch

from experiments.bench_rollout import BenchConfig, logprob_gap, ratios
from llm.rollout.base import Generation, SamplingConfig


def _row(backend, setting, seed, tps):
    return {"backend": backend, "setting": setting, "seed": seed, "tokens_per_s": tps}


def test_ratios_per_setting_and_seed_with_spread():
    rows = [_row("hf", "fixed", 0, 20.0), _row("vllm", "fixed", 0, 50.0),
            _row("hf", "natural", 0, 20.0), _row("vllm", "natural", 0, 40.0),
            _row("hf", "natural", 1, 25.0), _row("vllm", "natural", 1, 25.0),
            _row("hf", "natural", 2, 10.0), _row("vllm", "natural", 2, 30.0)]
    r = ratios(rows)
    assert r["fixed"]["per_seed"] == {0: 2.5} and r["fixed"]["std"] == 0.0
    assert r["natural"]["per_seed"] == {0: 2.0, 1: 1.0, 2: 3.0}
    assert r["natural"]["mean"] == pytest.approx(2.0) and r["natural"]["std"] == pytest.approx(1.0)
    assert (r["natural"]["min"], r["natural"]["max"], r["natural"]["n"]) == (1.0, 3.0, 3)
    assert ratios([_row("hf", "fixed", 0, 1.0)]) == {}


class _Logits(torch.nn.Module):
    """A 'model' whose next-token logits are a fixed vector at every position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, ids):
        return type("Out", (), {"logits": self.logits.expand(1, ids.shape[1], -1).clone()})()


def test_fixed_length_gap_masks_eos_like_the_samplers():
    model = _Logits([0.0, 1.0, 2.0, 0.5])  # EOS = 3
    sampling = SamplingConfig(max_new_tokens=2, temperature=1.0)
    masked = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0]), -1)
    gens = [Generation([2, 1], [float(masked[2]), float(masked[1])], "length")]  # recorded under the EOS mask
    assert logprob_gap(model, [[0]], gens, sampling, masked=[3])["gap_max_abs"] < 1e-6
    assert logprob_gap(model, [[0]], gens, sampling)["gap_max_abs"] > 1e-2  # unmasked: not the sampled distribution


def test_config_validation():
    with pytest.raises(ValueError, match="seeds"):
        BenchConfig(seeds=())
    with pytest.raises(ValueError, match="backends"):
        BenchConfig(backends=("tgi",))
