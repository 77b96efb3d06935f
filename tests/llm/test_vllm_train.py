"""`llm.train` with ``sampling.backend: vllm`` (opt-in, ``pytest -m vllm`` in the vLLM environment).

One intermediate stage of the 3-agent heterogeneous tiny team: every rollout after an agent's
update is served by the engines with the pushed weights, which shows as a sampled-vs-recomputed
log-prob gap at float32 round-off in every sampling call (a stale engine gives a gap of order 1).
"""

from __future__ import annotations

import pytest
import torch

from llm.train.config import config_from_dict
from llm.train import Trainer
from test_vllm_backend import pytestmark  # noqa: F401  (vllm marker + skip without vLLM)


def test_train_stage_on_vllm_backend(tiny_run_config, parity_grader, tiny_model_dirs, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run", stages=1)
    cfg["sampling"]["backend"] = "vllm"
    trainer = Trainer(config_from_dict(cfg))
    trainer.task.grader = parity_grader
    try:
        result = trainer.run(resume=False)
        backend = trainer.backend
        assert type(backend).__name__ == "VLLMBackend"
        assert backend.engines == []  # the trainer shut the engines down at the end of the run
        assert sorted(backend.push_stats.pushes) == [0, 1, 2]  # one engine per agent served the run
        assert result.updates_done == 3
        history = result.sampler.history
        assert len(history) == 3  # intermediate: a fresh sample before each of the 3 updates
        for stats in history:
            assert stats.logp_gap_max_abs is not None and stats.logp_gap_max_abs < 1e-4, stats
        # from_team pushes every agent once; the sampler pushes an agent again after its update
        # when a later sample needs it (agents 0 and 1; agent 2 is updated last)
        pushes = backend.push_stats.pushes
        assert pushes.get(0, 0) >= 2 and pushes.get(1, 0) >= 2 and pushes.get(2, 0) >= 1, backend.push_stats
    finally:
        close = getattr(getattr(trainer, "backend", None), "close", None)
        if close is not None:
            close()
