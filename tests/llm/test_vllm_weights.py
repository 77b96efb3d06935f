"""What a vLLM weight push sends (default suite; no vLLM): changed layers only, fused groups whole,
LoRA merged layers only, chunks of whole layers."""

from __future__ import annotations

import pytest
import torch

from llm.rollout.vllm_weights import (
    changed_names,
    chunk_by_layer,
    expand_to_layers,
    layer_key,
    merged_named_tensors,
    weight_sources,
)

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def test_layer_keys_follow_vllm_fused_layers():
    assert layer_key("model.layers.3.self_attn.k_proj.weight", PACKED) == "model.layers.3.self_attn.qkv_proj"
    assert layer_key("model.layers.3.self_attn.k_proj.bias", PACKED) == "model.layers.3.self_attn.qkv_proj"
    assert layer_key("model.layers.3.mlp.up_proj.weight", PACKED) == "model.layers.3.mlp.gate_up_proj"
    assert layer_key("model.layers.3.self_attn.o_proj.weight", PACKED) == "model.layers.3.self_attn.o_proj"
    assert layer_key("model.layers.3.self_attn.q_norm.weight", PACKED) == "model.layers.3.self_attn.q_norm"
    names = [f"model.layers.0.self_attn.{m}.{k}" for m in ("q_proj", "k_proj", "v_proj", "o_proj") for k in ("weight", "bias")]
    assert expand_to_layers(["model.layers.0.self_attn.q_proj.weight"], names, PACKED) == names[:6]


def test_only_changed_layers_are_sent_and_fused_siblings_go_along(tiny_qwen3_model):
    model = tiny_qwen3_model()
    sources = weight_sources(model)
    names = [s.name for s in sources]
    assert changed_names(sources, {}) == names  # never pushed: everything
    pushed = {s.name: s.fingerprint() for s in sources}
    assert changed_names(weight_sources(model), pushed) == []
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight.add_(1.0)  # an in-place step on one tensor
    changed = changed_names(weight_sources(model), pushed)
    assert changed == ["model.layers.1.self_attn.q_proj.weight"]
    assert expand_to_layers(changed, names, PACKED) == [f"model.layers.1.self_attn.{m}_proj.weight" for m in "qkv"]
    opt = torch.optim.AdamW(model.model.layers[0].mlp.parameters(), lr=1e-2)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    changed = changed_names(weight_sources(model), pushed)
    assert set(changed) == {"model.layers.1.self_attn.q_proj.weight"} | {
        f"model.layers.0.mlp.{m}_proj.weight" for m in ("gate", "up", "down")}


def test_lora_sends_merged_adapted_layers_only_after_a_step(tiny_qwen3_model):
    peft = pytest.importorskip("peft")
    base = tiny_qwen3_model()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    sources = weight_sources(model)
    plain = [n for n, _ in tiny_qwen3_model().named_parameters()]
    assert [s.name for s in sources] == plain  # base names, tied lm_head once, no lora_ tensors
    pushed = {s.name: s.fingerprint() for s in sources}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    changed = changed_names(weight_sources(model), pushed)
    assert sorted(changed) == sorted(f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1) for m in "qv")
    # fused with the frozen k_proj: 6 of the model's tensors go, none of the embedding / MLP / norms
    assert len(expand_to_layers(changed, plain, PACKED)) == 6
    assert sorted(n for n, _ in merged_named_tensors(model)) == sorted(plain)  # built: the same names


def test_chunks_never_split_a_layer():
    names = [f"l{i}.self_attn.{m}_proj.weight" for i in range(3) for m in "qkvo"]
    sizes = {n: 10 for n in names}
    layers = [names[0:3], names[3:4], names[4:7], names[7:8], names[8:11], names[11:12]]  # qkv, o per layer
    assert chunk_by_layer(names, sizes, PACKED, limit=40) == [layers[0] + layers[1], layers[2] + layers[3],
                                                             layers[4] + layers[5]]
    assert chunk_by_layer(names, sizes, PACKED, limit=35) == layers  # qkv + o = 40 > 35
    assert chunk_by_layer(names, sizes, PACKED, limit=1) == layers  # a layer over the limit is a chunk alone
    assert chunk_by_layer(names, sizes, PACKED, limit=10**9) == [names]
