"""Run-directory files, written once: atomic writes, safetensors checkpoints, the run cursor.

- Every file is written atomically: a temp file beside it, ``fsync``, then ``os.replace``; model
  folders are written to ``<name>.tmp`` and renamed. A kill at any point leaves either the old or
  the new file.
- ``checkpoints/agent{j}/weights-uNNNNNN.safetensors``: an agent's trainable parameters only (LoRA:
  the adapters); ``optim-uNNNNNN.pt``: its AdamW state (loaded with ``weights_only=True``).
- ``cursor.json`` (:data:`CURSOR`): what the trainer needs to resume; :func:`read_cursor` reads it
  (also for plug-and-play's ``incumbent_run``). Non-finite floats are stored as strings.
- :func:`save_batch` / :func:`load_batch`: a mid-stage MessageBatch with its rollout payload.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from llm.config.errors import ConfigError
from llm.rewards.base import Grade, Problem
from llm.sampler import RolloutPayload
from trust_region.batch import MessageBatch
from trust_region.certificate import CertificateTerms
from trust_region.stage import UpdateReport

CURSOR = "cursor.json"


# ---------------------------------------------------------------------------- atomic files
def check_writable_dir(path: Path, what: str = "output_dir", remove_created: bool = False) -> None:
    """Prove that ``path`` can be created and written (a probe file), fast, before anything loads
    (the folder is left in place, empty; ``remove_created``: folders made for the probe are removed)."""
    path = Path(path)
    created: list[Path] = []
    try:
        missing = [p for p in [path, *path.parents] if not p.exists()]
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
        if not path.is_dir():
            raise NotADirectoryError(20, "not a directory", str(path))
        probe = path / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be created or written: {err.strerror or err}", key=what) from None
    finally:
        if remove_created:
            for p in reversed(created):
                p.rmdir()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or Ctrl-C leaves no half-written temp file
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata))


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def save_model_dir(model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
    """``save_pretrained`` (safetensors) + tokenizer into ``path``, via a temp folder then a rename."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- JSON with non-finite floats
def json_floats(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings 'inf'/'-inf'/'nan'."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_floats(v) for v in obj]
    return obj


def from_json_floats(obj: Any) -> Any:
    if isinstance(obj, str) and obj in ("inf", "-inf", "nan"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: from_json_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_floats(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------- weights and cursor
def load_trainable(agent: Any, path: Path, what: str) -> None:
    """Copy the safetensors file ``path`` into ``agent``'s trainable parameters (names must match)."""
    tensors = load_file(str(path))
    params = dict(agent.named_trainable_parameters())
    if set(params) != set(tensors):
        raise ConfigError(f"{what} does not match agent {agent.name}'s parameters")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n].to(p.device, p.dtype))


def read_cursor(run_dir: Path) -> dict[str, Any]:
    """The cursor of an ``llm.train`` run directory (floats restored); ConfigError when absent."""
    path = Path(run_dir) / CURSOR
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no llm.train {CURSOR}")
    return from_json_floats(json.loads(path.read_text(encoding="utf-8")))


def write_cursor(run_dir: Path, cursor: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / CURSOR, json.dumps(json_floats(cursor)))


# ---------------------------------------------------------------------------- batch (de)serialisation
_BATCH_FIELDS = [f.name for f in dataclasses.fields(MessageBatch) if f.name != "payload"]


def save_batch(directory: Path, batch: MessageBatch) -> None:
    atomic_save_safetensors(directory / "batch.safetensors", {k: getattr(batch, k) for k in _BATCH_FIELDS})
    p = batch.payload
    if isinstance(p, RolloutPayload):
        data = {
            "problems": {str(t): pr.id for t, pr in p.problems.items()},
            "schedules": {str(t): s for t, s in p.schedules.items()},
            "texts": [[t, u, x] for (t, u), x in p.texts.items()],
            "finish": [[t, u, x] for (t, u), x in p.finish.items()],
            "grades": {str(t): [g.score, g.parsed, g.extracted] for t, g in p.grades.items()},
        }
        atomic_write_text(directory / "payload.json", json.dumps(data))


def load_batch(directory: Path, problems_by_id: dict[str, Problem]) -> MessageBatch:
    tensors = load_file(str(directory / "batch.safetensors"))
    payload = None
    if (directory / "payload.json").is_file():
        d = json.loads((directory / "payload.json").read_text(encoding="utf-8"))
        payload = RolloutPayload(
            problems={int(t): problems_by_id[i] for t, i in d["problems"].items()},
            schedules={int(t): list(s) for t, s in d["schedules"].items()},
            texts={(int(t), int(u)): x for t, u, x in d["texts"]},
            finish={(int(t), int(u)): x for t, u, x in d["finish"]},
            grades={int(t): Grade(float(s), bool(ok), e) for t, (s, ok, e) in d["grades"].items()},
        )
    return MessageBatch(**{k: tensors[k] for k in _BATCH_FIELDS}, payload=payload)


def report_from_dict(d: dict[str, Any]) -> UpdateReport:
    d = dict(d)
    cert = d.pop("certificate", None)
    return UpdateReport(**d, certificate=CertificateTerms(**cert) if cert is not None else None)
