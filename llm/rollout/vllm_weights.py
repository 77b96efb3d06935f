"""What a weight push to a vLLM engine must send (pure; torch only, no vLLM).

A push sends Hugging Face-named tensors that vLLM's in-place, layer-wise ``reload_weights``
writes into the engine's layers. Three facts of that reload (vLLM 0.32, read from its source and
checked on CPU; see docs/vllm.md) decide what must be sent:

- a vLLM layer that receives no tensor keeps its current weights, so a push may send only the
  layers that changed;
- a *fused* layer (``qkv_proj`` = q, k, v; ``gate_up_proj`` = gate, up: the model's
  ``packed_modules_mapping``) is rebuilt from what it receives, and the parts it did not receive
  are left undefined: every member of a fused group (weights and biases) goes together;
- each reload call is complete in itself, so a push can be cut into chunks of whole layers, each
  chunk loaded and committed on its own (no whole model staged anywhere at once).

"Changed" is decided per engine tensor from the training-side parameters it is made of (a LoRA
layer's merged weight ``W + scale * B @ A`` is made of its base weight and its adapters): a
parameter's fingerprint is its storage pointer, in-place version counter, shape and dtype, which
every optimizer step, ``restore`` or ``load_state_dict`` changes (the sampler relies on the same
counters). Writing through ``param.data`` bypasses the counter and is not detected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch

Fingerprint = tuple


def fingerprint(tensor: torch.Tensor) -> Fingerprint:
    """Changes whenever ``tensor`` is modified in place or replaced (see the module doc)."""
    return (tensor.data_ptr(), tensor._version, tuple(tensor.shape), str(tensor.dtype), str(tensor.device))


@dataclass(frozen=True)
class WeightSource:
    """One engine tensor: its HF ``name``, the training parameters it is made of, how to build it."""

    name: str
    parts: tuple[torch.Tensor, ...]
    build: Callable[[], torch.Tensor]

    def fingerprint(self) -> Fingerprint:
        return tuple(fingerprint(p) for p in self.parts)


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def weight_sources(model: torch.nn.Module) -> list[WeightSource]:
    """The engine tensors of ``model`` in HF names, in module order.

    A plain model: its ``named_parameters``. A peft (LoRA) model: the base model's weights with
    each adapted layer merged (``W + get_delta_weight(adapter)`` for the active adapters) under the
    base names (``base_model.model.`` and ``.base_layer`` removed, ``lora_*`` tensors dropped); a
    tied ``lm_head`` (the embedding's tensor) appears once. Nothing is modified or copied until
    ``build()`` is called.
    """
    if not _is_peft(model):
        return [WeightSource(n, (p,), (lambda p=p: p.detach())) for n, p in model.named_parameters()]
    out: list[WeightSource] = []
    seen: set[int] = set()
    for module_name, module in model.get_base_model().named_modules():
        base_layer = getattr(module, "base_layer", None)
        if base_layer is not None and hasattr(module, "get_delta_weight"):
            adapters = [a for a in getattr(module, "active_adapters", []) if a in getattr(module, "lora_A", {})]
            parts = (base_layer.weight, *[t for a in adapters for t in (module.lora_A[a].weight, module.lora_B[a].weight)])

            def merged(module=module, base_layer=base_layer, adapters=adapters) -> torch.Tensor:
                with torch.no_grad():
                    w = base_layer.weight.detach().clone()
                    for a in adapters:
                        w += module.get_delta_weight(a).to(w.dtype)
                return w

            out.append(WeightSource(f"{module_name}.weight", parts, merged))
            bias = getattr(base_layer, "bias", None)
            if bias is not None:
                out.append(WeightSource(f"{module_name}.bias", (bias,), (lambda b=bias: b.detach())))
            continue
        if ".lora_" in f".{module_name}" or module_name.endswith("base_layer"):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if "lora_" in pname or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{module_name}.{pname}" if module_name else pname
            out.append(WeightSource(name, (p,), (lambda p=p: p.detach())))
    return out


def merged_named_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every engine tensor of ``model`` (:func:`weight_sources`, built)."""
    for source in weight_sources(model):
        yield source.name, source.build()


def layer_key(name: str, packed: Mapping[str, Sequence[str]]) -> str:
    """The vLLM layer an HF tensor lands in: ``a.b.q_proj.weight`` -> ``a.b.qkv_proj`` (fused groups
    from ``packed``, vLLM's ``packed_modules_mapping``), ``a.b.o_proj.bias`` -> ``a.b.o_proj``."""
    module, _, _ = name.rpartition(".")
    parent, _, leaf = module.rpartition(".")
    for fused, members in packed.items():
        if leaf in members:
            return f"{parent}.{fused}" if parent else fused
    return module


def expand_to_layers(names: Iterable[str], all_names: Sequence[str], packed: Mapping[str, Sequence[str]]) -> list[str]:
    """``names`` plus every tensor of the same vLLM layers (fused siblings, biases), in ``all_names`` order."""
    keys = {layer_key(n, packed) for n in names}
    return [n for n in all_names if layer_key(n, packed) in keys]


def changed_names(sources: Sequence[WeightSource], pushed: Mapping[str, Fingerprint]) -> list[str]:
    """Names whose training parameters changed since they were last pushed (or never were)."""
    return [s.name for s in sources if pushed.get(s.name) != s.fingerprint()]


def chunk_by_layer(names: Sequence[str], nbytes: Mapping[str, int], packed: Mapping[str, Sequence[str]],
                   limit: int) -> list[list[str]]:
    """Consecutive chunks of at most ``limit`` bytes that never split a vLLM layer (a layer larger
    than ``limit`` is a chunk of its own)."""
    units: list[list[str]] = []
    last = None
    for n in names:
        key = layer_key(n, packed)
        if key != last:
            units.append([])
            last = key
        units[-1].append(n)
    chunks: list[list[str]] = []
    size = 0
    for unit in units:
        unit_bytes = sum(nbytes[n] for n in unit)
        if chunks and size + unit_bytes <= limit:
            chunks[-1].extend(unit)
            size += unit_bytes
        else:
            chunks.append(list(unit))
            size = unit_bytes
    return chunks


@dataclass
class EngineWeights:
    """What the backend knows about one engine's weights.

    ``label``: the weight version the engine stamps on its outputs (vLLM's ``set_weight_version``);
    ``valid``: False once the engine's weights were discarded (level-2 sleep) or a push failed half
    way, until a full push; ``pushed``: fingerprint of each tensor at its last push from the
    training model; ``follows_source``: the engine holds the training model's weights (False after a
    push of other tensors), so a changed training model is pushed before it generates;
    ``asleep``: the engine's sleeping memory pools (``{"weights", "kv_cache"}``; empty = awake).
    """

    label: str
    valid: bool = True
    pushed: dict[str, Fingerprint] | None = None
    follows_source: bool = False
    asleep: frozenset[str] = frozenset()
    pushes: int = 0

    def __post_init__(self) -> None:
        if self.pushed is None:
            self.pushed = {}
