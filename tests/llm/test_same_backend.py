"""Training, evaluation and plug-and-play build their backend from one ``sampling:`` section through
:func:`llm.rollout.factory.make_backend`: the same kind, batch size and vLLM engine settings.

vLLM is not installed here: the factory's VLLMBackend is replaced by a recorder that serves
generation through the transformers backend."""

from __future__ import annotations

import pytest

from llm.rollout import factory
from llm.rollout.hf import HFBackend
from llm.rollout.vllm_config import VLLMEngineConfig

SAMPLING = {"backend": "vllm", "batch_size": 4, "temperature": 1.0,
            "vllm": {"gpu_memory_utilization": 0.25, "kv_cache_gib": 0.5, "enable_prefix_caching": False,
                     "max_model_len": 512, "push_via": "rpc"}}


@pytest.fixture
def recorded(monkeypatch):
    calls: list[dict] = []

    class RecordingVLLM:
        @classmethod
        def from_team(cls, team, batch_size=None, config=None):
            calls.append({"agents": [a.name for a in team.agents], "batch_size": batch_size, "config": config})
            return HFBackend.from_team(team, batch_size=batch_size)

    monkeypatch.setattr(factory, "VLLMBackend", RecordingVLLM)
    monkeypatch.setattr(factory, "require_vllm", lambda: None)
    return calls


def test_train_evaluate_and_plug_and_play_build_the_same_backend(recorded, tiny_run_config, tiny_model_dirs,
                                                                 tmp_path):
    from llm.evaluate import eval_config_from_dict, evaluate
    from llm.plug_and_play import pnp_config_from_dict, run
    from llm.train import Trainer
    from llm.train.config import config_from_dict

    expected = VLLMEngineConfig(**SAMPLING["vllm"])
    base = tiny_run_config(tiny_model_dirs, tmp_path / "train", stages=1)
    base["sampling"] = dict(SAMPLING)

    trainer = Trainer(config_from_dict(base))
    trainer._build()  # team, optimizers, backend, sampler
    assert len(recorded) == 1

    ev = {"team": base["team"], "sampling": SAMPLING,
          "eval": {"benchmarks": [{"name": "aime2024", "limit": 1, "k": 1}], "protocols": ["single", "chain"],
                   "output_dir": str(tmp_path / "eval"), "n_boot": 10, "progress": False}}
    evaluate(eval_config_from_dict(ev), team=trainer.team)
    assert len(recorded) == 2

    pnp = {"base": dict(base, output_dir=str(tmp_path / "base")), "agent": "judge", "method": "direct",
           "replacement": {"model": str(tiny_model_dirs["tiny_qwen3"])}, "contexts": {"prompts": 2, "group_size": 1},
           "score": {"prompts": 2, "group_size": 1}, "continue_stages": 0, "output_dir": str(tmp_path / "pnp")}
    run(pnp_config_from_dict(pnp), progress=False)
    assert len(recorded) == 4  # the incumbent team and the team with the replacement

    for call in recorded:
        assert call["config"] == expected, call
        assert call["batch_size"] == 4
        assert call["agents"] == ["solver", "critic", "judge"]


def test_unsupported_backend_is_an_error():
    from types import SimpleNamespace

    from llm.config import ConfigError

    with pytest.raises(ConfigError, match=r"sampling.backend must be one of \['hf', 'vllm'\], got 'tgi'"):
        factory.make_backend(SimpleNamespace(backend="tgi"), None)
