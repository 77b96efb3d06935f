"""The vLLM backend's weight bookkeeping with a fake engine (default suite; no vLLM needed).

:class:`FakeLLM` stands in for ``vllm.LLM`` with the behaviour that matters here, taken from
vLLM 0.32's source: a level-2 sleep leaves the weights undefined (NaN here), a partial wake-up
(``tags=["weights"]``) does not resume scheduling (generating then is an error here, a hang in
vLLM), every output carries the engine's weight-version label, and pushes arrive through the
backend's worker-extension methods. Each "generated" token's log-prob is a checksum of the
engine's weights, so a test can tell exactly which weights produced it.
"""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load, load_file

from llm.rollout import vllm as vb
from llm.rollout.base import SamplingConfig
from llm.rollout.vllm_config import VLLMEngineConfig
from llm.rollout.vllm_memory import MemoryBudgetError

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
EOS = 3
SAMPLING = SamplingConfig(max_new_tokens=4, temperature=1.0)
PROMPTS = [[1, 5, 6], [1, 7]]


def checksum(named) -> float:
    return float(sum(float(t.detach().double().sum()) * (i + 1) for i, (_, t) in enumerate(sorted(named, key=lambda x: x[0]))))


class FakeLLM:
    """``vllm.LLM`` as far as the backend uses it (see the module doc)."""

    started: list["FakeLLM"] = []
    checkpoint: dict[str, torch.Tensor] = {}

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.visible = os.environ.get("FAKE_VISIBLE")
        self.weights = {n: t.clone() for n, t in FakeLLM.checkpoint.items()}
        self.asleep: set[str] = set()
        self.label = "default"
        self.calls: list[tuple] = []
        self.pending: dict[str, torch.Tensor] = {}
        self.commits: list[list[str]] = []  # the tensor names of every committed chunk
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(dtype=torch.float32),
                                          set_weight_version=self._set_label,
                                          engine_core=SimpleNamespace(shutdown=lambda: None))
        FakeLLM.started.append(self)

    def _set_label(self, label: str) -> None:
        self.label = label

    def collective_rpc(self, method, args=()):
        self.calls.append((method, args))
        if method == "teamtr_packed_modules":
            return [PACKED]
        if method == "teamtr_stage_weights":
            self.pending.update(load(args[0]))
            return [len(self.pending)]
        if method == "teamtr_load_weight_files":
            for path in args[0]:
                self.pending.update(load_file(path))
            method = "teamtr_commit_weights"
        if method == "teamtr_commit_weights":
            assert "weights" not in self.asleep, "push into sleeping weights"
            n = len(self.pending)
            self.commits.append(sorted(self.pending))
            self.weights.update(self.pending)
            self.pending = {}
            return [n]
        raise AssertionError(method)

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))
        if level == 2:
            self.weights = {n: torch.full_like(t, float("nan")) for n, t in self.weights.items()}
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags=None) -> bool:
        self.calls.append(("wake_up", tuple(tags) if tags else None))
        self.asleep -= set(tags) if tags else set(self.asleep)
        return not self.asleep

    def reset_prefix_cache(self) -> bool:
        return True

    def generate(self, inputs, params, use_tqdm=False):
        assert not self.asleep, f"generate with sleeping pools {self.asleep} (vLLM would not schedule)"
        value = checksum(self.weights.items())
        step = {EOS: SimpleNamespace(logprob=value)}
        span = SimpleNamespace(version=self.label, start=0, end=1)
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[EOS], logprobs=[step], weight_versions=[span])])
                for _ in inputs]


@pytest.fixture
def fake_vllm(monkeypatch):
    """``vllm`` replaced by the fake; a sleep-capable platform of ``device_type`` (default cpu)."""
    platform = SimpleNamespace(device_type="cpu", is_cuda_alike=lambda: False, is_sleep_mode_available=lambda: True,
                               device_control_env_var="FAKE_VISIBLE")
    fake = SimpleNamespace(LLM=FakeLLM, SamplingParams=lambda **kw: SimpleNamespace(**kw))
    monkeypatch.setattr(vb, "require_vllm", lambda: fake)
    monkeypatch.setattr(vb, "vllm_platform", lambda: platform)
    FakeLLM.started = []
    return platform


def _backend(model, **config):
    FakeLLM.checkpoint = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = VLLMEngineConfig(dtype="float32", **config)
    return vb.VLLMBackend(["/fake/model"], [[EOS]], cfg, source_models=[model], names=["solver"])


def _served(backend, seed: int = 0) -> float:
    return backend.generate(0, PROMPTS, SAMPLING, seed=seed)[0].logprobs[0]


def _step(model, scale: float = 0.1, where: str = "model.layers.1.self_attn.q_proj.weight") -> None:
    with torch.no_grad():
        dict(model.named_parameters())[where].add_(scale)


def test_level2_sleep_between_calls_never_serves_discarded_weights(fake_vllm, tiny_qwen3_model):
    """The issue's bug: an agent speaking twice without an update after a level-2 sleep."""
    model = tiny_qwen3_model()
    backend = _backend(model, enable_sleep_mode=True, sleep_level=2, sleep_between_calls=True)
    engine = FakeLLM.started[0]
    expected = checksum(model.named_parameters())
    assert _served(backend) == pytest.approx(expected)
    assert engine.asleep and all(torch.isnan(t).all() for t in engine.weights.values())  # slept, weights gone
    assert _served(backend, seed=1) == pytest.approx(expected)  # no update in between: re-pushed, not garbage
    assert backend.push_stats.pushes[0] == 2 and backend.push_stats.tensors[0] == 2 * len(engine.weights)


def test_level1_push_to_a_sleeping_engine_wakes_only_weights_sends_only_changes_and_sleeps_again(fake_vllm, tiny_qwen3_model):
    model = tiny_qwen3_model()
    backend = _backend(model, enable_sleep_mode=True, sleep_level=1, sleep_between_calls=True)
    engine = FakeLLM.started[0]
    backend.update_weights(0, model.named_parameters())  # first push: everything (the checkpoint may be older)
    _served(backend)
    assert engine.asleep
    engine.calls.clear()
    engine.commits.clear()
    _step(model)
    backend.update_weights(0, model.named_parameters())
    assert engine.calls[0] == ("wake_up", ("weights",))
    assert engine.calls[-1] == ("sleep", 1) and engine.asleep == {"weights", "kv_cache"}
    assert engine.commits == [[f"model.layers.1.self_attn.{m}_proj.weight" for m in "kqv"]]  # the fused group only
    assert _served(backend) == pytest.approx(checksum(model.named_parameters()))


def test_level2_push_while_asleep_waits_for_the_wake_up(fake_vllm, tiny_qwen3_model):
    model = tiny_qwen3_model()
    backend = _backend(model, enable_sleep_mode=True, sleep_level=2)
    backend.update_weights(0, model.named_parameters())
    backend.sleep(0)
    engine = FakeLLM.started[0]
    engine.calls.clear()
    _step(model)
    backend.update_weights(0, model.named_parameters())
    assert engine.calls == []  # a push now would be discarded by the sleep: deferred
    backend.wake_up(0)
    assert engine.calls[0] == ("wake_up", None)
    assert _served(backend) == pytest.approx(checksum(model.named_parameters()))


def test_a_changed_training_model_is_pushed_before_generating_even_without_update_weights(fake_vllm, tiny_qwen3_model):
    model = tiny_qwen3_model()
    backend = _backend(model)
    assert _served(backend) == pytest.approx(checksum(model.named_parameters()))
    _step(model, where="model.layers.0.mlp.down_proj.weight")
    assert _served(backend) == pytest.approx(checksum(model.named_parameters()))
    assert backend.push_stats.tensors[0] == len(FakeLLM.checkpoint) + 1  # then the one changed layer
    pushes = backend.push_stats.pushes[0]
    _served(backend)
    assert backend.push_stats.pushes[0] == pushes  # nothing changed: nothing sent


def test_without_the_training_model_discarded_weights_are_refused(fake_vllm, tiny_qwen3_model):
    model = tiny_qwen3_model()
    backend = _backend(model, enable_sleep_mode=True, sleep_level=2)
    other = tiny_qwen3_model(seed=1)
    backend.update_weights(0, other.named_parameters())  # foreign tensors: the engine stops following `model`
    assert _served(backend) == pytest.approx(checksum(other.named_parameters()))
    backend.sleep(0)
    with pytest.raises(vb.StaleWeightsError, match="'solver'.*no valid weights"):
        backend.generate(0, PROMPTS, SAMPLING)
    backend.update_weights(0, other.named_parameters())
    assert _served(backend) == pytest.approx(checksum(other.named_parameters()))
    with pytest.raises(ValueError, match="sleep_level=2.*training model"):
        vb.VLLMBackend(["/fake"], [[EOS]], VLLMEngineConfig(enable_sleep_mode=True, sleep_level=2))


def test_the_engine_stamp_is_checked(fake_vllm, tiny_qwen3_model):
    """An output stamped with another weight version than the backend pushed is an error."""
    model = tiny_qwen3_model()
    backend = _backend(model)
    _served(backend)
    FakeLLM.started[0].label = "solver:v0"  # e.g. a push the backend does not know about
    with pytest.raises(vb.StaleWeightsError, match="generated with weights \\['solver:v0'\\], expected 'solver:v1'"):
        backend.generate(0, PROMPTS, SAMPLING)


def test_lora_pushes_merged_adapted_layers_only(fake_vllm, tiny_qwen3_model):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_qwen3_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                                init_lora_weights=False))
    FakeLLM.checkpoint = {n: t.clone() for n, t in vb.merged_named_tensors(model)}
    backend = vb.VLLMBackend(["/fake"], [[EOS]], VLLMEngineConfig(dtype="float32"), source_models=[model])
    backend.update_weights(0, model.named_parameters())
    first = backend.push_stats.tensors[0]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    backend.update_weights(0, model.named_parameters())
    assert backend.push_stats.tensors[0] - first == 2 * 3  # q (merged) with its frozen k, v siblings, 2 layers
    merged = dict(vb.merged_named_tensors(model))
    assert _served(backend) == pytest.approx(checksum(merged.items()))
    with pytest.raises(ValueError, match="peft"):
        vb.VLLMBackend(["/fake"], [[EOS]], VLLMEngineConfig(dtype="float32")).update_weights(0, model.named_parameters())


def test_each_engine_starts_on_its_agents_device(fake_vllm, monkeypatch):
    fake_vllm.device_type = "cuda"
    fake_vllm.is_cuda_alike = lambda: True
    monkeypatch.setattr(vb, "_device_count", lambda kind: 3)
    monkeypatch.setattr(vb, "_device_totals", lambda placements: {})
    monkeypatch.setenv("FAKE_VISIBLE", "4,5,6")
    cfg = VLLMEngineConfig(dtype="float32")
    backend = vb.VLLMBackend(["/a", "/b", "/c"], [[EOS]] * 3, [cfg, cfg, dataclasses.replace(cfg, devices=("cuda:0", "cuda:1"))],
                             devices=[["cuda:2"], ["cuda:1"], ["cuda:2"]], names=["a", "b", "c"])
    assert [e.visible for e in FakeLLM.started] == ["6", "5", "4,5"]
    assert [e.kwargs.get("tensor_parallel_size", 1) for e in FakeLLM.started] == [1, 1, 2]
    assert os.environ["FAKE_VISIBLE"] == "4,5,6"
    assert [p.devices for p in backend.placements] == [("cuda:2",), ("cuda:1",), ("cuda:0", "cuda:1")]


def test_memory_budget_fails_before_any_engine_starts(fake_vllm, monkeypatch):
    fake_vllm.device_type = "cuda"
    fake_vllm.is_cuda_alike = lambda: True
    monkeypatch.setattr(vb, "_device_count", lambda kind: 1)
    monkeypatch.setattr(vb, "_device_totals", lambda placements: {"cuda:0": 8 << 30})
    cfg = VLLMEngineConfig(dtype="float32", gpu_memory_utilization=0.45)
    with pytest.raises(MemoryBudgetError, match="'a' 0.45, 'b' 0.45"):
        vb.VLLMBackend(["/a", "/b"], [[EOS]] * 2, cfg, devices=[["cuda:0"]] * 2, names=["a", "b"])
    assert FakeLLM.started == []
