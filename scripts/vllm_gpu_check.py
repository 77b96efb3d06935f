"""The vLLM part of the prepared GPU check (scripts/gpu_check.sh): what only a GPU can show.

    python scripts/vllm_gpu_check.py --out results/gpu_check          # writes OUT/vllm.json
    python scripts/vllm_gpu_check.py --out DIR --device cpu            # the same steps on CPU (no sleep)

When ``vllm`` does not import in this interpreter, the script re-runs itself under ``$VLLM_PYTHON``
or ``../vllm-venv/bin/python`` when one of them has it; when none has it, it writes
``{"installed": false, "note": ...}`` and exits 0, so the GPU check states that vLLM was not run.

With vLLM on a GPU, one tiny Qwen3 agent (the test suite's model, built locally: no hub) on
``cuda:0``, float32, and the numbers of each step in ``vllm.json``:

1. ``rollout_sleep_level1``: the engine's placement, the sampled vs recomputed log-prob gap (max
   |difference| per token); on a GPU also the device memory freed by ``sleep``
   (``torch.cuda.mem_get_info``), an AdamW step pushed while asleep (weights-only wake, back to
   sleep) and the gap against the trained model afterwards.
2. ``sleep_level2`` (GPU): a second backend with ``sleep_level=2, sleep_between_calls``: the same
   agent generates twice with no update in between; the second gap must stay at round-off (the
   weights were really discarded on the GPU and the backend re-pushed them).

Each step is recorded with ``ok`` and its numbers; a failing step records its error and the rest run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOLERANCE = 1e-4  # float32, the opt-in suite's gap bound on the tiny models
PROMPTS = [[1, 40, 41, 42, 43, 44, 45], [1, 40, 41, 42, 50, 51], [1, 60, 61]]


def _vllm_python() -> str | None:
    for candidate in (os.environ.get("VLLM_PYTHON"), str(REPO.parent / "vllm-venv" / "bin" / "python")):
        if candidate and Path(candidate).is_file() and Path(candidate).resolve() != Path(sys.executable).resolve():
            probe = subprocess.run([candidate, "-c", "import vllm"], capture_output=True, timeout=120)
            if probe.returncode == 0:
                return candidate
    return None


def _tiny_models(root: Path) -> dict:
    spec = importlib.util.spec_from_file_location("tiny_models", REPO / "tests" / "llm" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_tiny_models(root)


def _gap(model, prompts, gens, sampling) -> float:
    import torch

    from llm.rollout.hf import apply_temperature_top_p

    worst = 0.0
    with torch.no_grad():
        for p, g in zip(prompts, gens):
            ids = torch.tensor([p + g.token_ids], device=next(model.parameters()).device)
            logits = model(ids).logits[0, len(p) - 1 : -1].float().cpu()
            logp = torch.log_softmax(apply_temperature_top_p(logits, sampling.temperature, sampling.top_p), -1)
            rec = logp.gather(1, torch.tensor(g.token_ids)[:, None]).squeeze(1)
            worst = max(worst, float((torch.tensor(g.logprobs) - rec).abs().max()))
    return worst


def _adamw_step(model, prompts, gens) -> None:
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    loss = 0
    device = next(model.parameters()).device
    for p, g in zip(prompts, gens):
        ids = torch.tensor([p + g.token_ids], device=device)
        logits = model(ids).logits[0, len(p) - 1 : -1]
        loss = loss - torch.log_softmax(logits, -1).gather(1, torch.tensor(g.token_ids, device=device)[:, None]).sum()
    loss.backward()
    opt.step()
    opt.zero_grad()
    model.eval()


def run_checks(device: str, out: Path) -> dict:
    import torch
    import vllm
    from transformers import AutoModelForCausalLM

    from llm.rollout.base import SamplingConfig
    from llm.rollout.vllm import VLLMBackend, vllm_platform
    from llm.rollout.vllm_config import VLLMEngineConfig

    platform = vllm_platform()
    result: dict = {"installed": True, "version": vllm.__version__, "platform": platform.device_type,
                    "torch": torch.__version__, "steps": {}}
    on_gpu = device.startswith("cuda")
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0)
    engine = VLLMEngineConfig(dtype="float32", max_model_len=512, kv_cache_gib=0.25 if not on_gpu else None,
                              gpu_memory_utilization=0.2)

    def step(name, fn):
        t0 = time.perf_counter()
        try:
            info = fn()
            info["ok"] = bool(info.get("ok", True))
        except Exception as err:  # recorded, the other steps still run
            info = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
        info["seconds"] = time.perf_counter() - t0
        result["steps"][name] = info
        print(f"[vllm_gpu_check] {name}: {'ok' if info['ok'] else 'FAILED'} {json.dumps({k: v for k, v in info.items() if k != 'trace'})}")

    with tempfile.TemporaryDirectory() as tmp:
        path = str(_tiny_models(Path(tmp))["tiny_qwen3"])

        def model():
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()

        def rollout_and_level1():
            m = model()
            cfg = dataclasses.replace(engine, enable_sleep_mode=on_gpu, sleep_level=1)
            with VLLMBackend([path], [[2]], cfg, source_models=[m], devices=[[device]]) as backend:
                gens = backend.generate(0, PROMPTS, sampling, seed=0)
                info = {"rollout_gap_max": _gap(m, PROMPTS, gens, sampling),
                        "engine_devices": [list(p.devices) for p in backend.placements]}
                if on_gpu:
                    free0 = torch.cuda.mem_get_info()[0]
                    backend.sleep(0)
                    info["sleep_freed_gib"] = (torch.cuda.mem_get_info()[0] - free0) / 2**30
                    _adamw_step(m, PROMPTS, gens)
                    backend.update_weights(0, m.named_parameters())  # weights-only wake, back to sleep
                    info["asleep_after_push"] = sorted(backend.state[0].asleep)
                    gens = backend.generate(0, PROMPTS, sampling, seed=1)
                    info["level1_gap_after_push_max"] = _gap(m, PROMPTS, gens, sampling)
                info["ok"] = all(v < TOLERANCE for k, v in info.items() if k.endswith("gap_max") or k.endswith("push_max"))
                return info

        def level2():
            if not on_gpu:
                return {"ok": True, "note": "no sleep mode on CPU: see tests/llm/test_vllm_sleep.py (emulated discard)"}
            m = model()
            cfg = dataclasses.replace(engine, enable_sleep_mode=True, sleep_level=2, sleep_between_calls=True)
            with VLLMBackend([path], [[2]], cfg, source_models=[m], devices=[[device]]) as backend:
                first = backend.generate(0, PROMPTS, sampling, seed=0)
                second = backend.generate(0, PROMPTS, sampling, seed=1)  # same agent, no update in between
                info = {"first_gap_max": _gap(m, PROMPTS, first, sampling),
                        "second_gap_max": _gap(m, PROMPTS, second, sampling),
                        "full_pushes": backend.push_stats.pushes.get(0, 0)}
                info["ok"] = info["first_gap_max"] < TOLERANCE and info["second_gap_max"] < TOLERANCE
                return info

        step("rollout_sleep_level1", rollout_and_level1)
        step("sleep_level2", level2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vllm.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/gpu_check", help="folder of vllm.json")
    parser.add_argument("--device", default="cuda:0", help="cuda:0 (default) or cpu")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if importlib.util.find_spec("vllm") is None:
        other = _vllm_python()
        if other is not None:
            return subprocess.call([other, __file__, *(argv if argv is not None else sys.argv[1:])])
        out.mkdir(parents=True, exist_ok=True)
        note = ("vllm is not importable here (nor in $VLLM_PYTHON / ../vllm-venv): the vLLM GPU checks were not run; "
                "build it with VLLM_PACKAGE=vllm bash scripts/setup_vllm_env.sh")
        (out / "vllm.json").write_text(json.dumps({"installed": False, "note": note}, indent=1))
        print(f"[vllm_gpu_check] {note}")
        return 0
    result = run_checks(args.device, out)
    return 0 if all(s["ok"] for s in result["steps"].values()) else 1


if __name__ == "__main__":  # spawn-safe: vLLM starts its engine processes with spawn
    raise SystemExit(main())
