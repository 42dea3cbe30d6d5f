#!/usr/bin/env bash
# The CUDA and TensorRT paths end to end, for a machine with an NVIDIA GPU (none of this runs on a CPU-only
# machine: the script says so and stops before anything is installed or started).
#
#   scripts/gpu_check.sh            train with NCCL on 1 GPU, optimize, serve with the CUDA provider and with
#                                   TensorRT (then CUDA), call each server and print the figures and the
#                                   provider each one actually used (scripts/gpu_check.py)
#
# It runs in its own venv, GPU_VENV (default .venv-gpu): torch's default wheel (CUDA) and onnxruntime-gpu with
# TensorRT's libraries replace .venv's CPU builds there, as in deploy/images/modelserver-gpu.Dockerfile.
# Made on the first run (needs the package index); GPU_VENV=... points at one already made.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi not found); run it on a machine with a GPU. Nothing was run." >&2
    exit 2
fi
if ! gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) || [[ -z "$gpus" ]]; then
    echo "gpu_check: nvidia-smi lists no usable GPU (${gpus:-no output}); run it on a machine with a GPU. Nothing was run." >&2
    exit 2
fi
echo "GPU: $gpus"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
GPU_VENV=${GPU_VENV:-.venv-gpu}
ONNXRUNTIME_GPU=${ONNXRUNTIME_GPU:-onnxruntime-gpu==1.31.1}
TENSORRT_LIBS=${TENSORRT_LIBS:-tensorrt-cu13-libs>=10.15,<11}
if [[ ! -x "$GPU_VENV/bin/python" ]]; then
    echo "making $GPU_VENV (torch with CUDA, onnxruntime-gpu, TensorRT's libraries, the gallery packages)"
    "$PYTHON" -m venv "$GPU_VENV"
    "$GPU_VENV/bin/pip" install --quiet --upgrade pip
    "$GPU_VENV/bin/pip" install --quiet -e libs/common -e services/trainer -e services/optimizer -e services/deployer
    # both wheels install the `onnxruntime` module: the GPU build replaces the CPU one
    "$GPU_VENV/bin/pip" uninstall --quiet --yes onnxruntime
    "$GPU_VENV/bin/pip" install --quiet "$ONNXRUNTIME_GPU" "$TENSORRT_LIBS"
fi
trt_libs=$("$GPU_VENV/bin/python" -c "import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))" 2>/dev/null || true)
export LD_LIBRARY_PATH="${trt_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

"$GPU_VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'torch in $GPU_VENV sees no CUDA device'"
exec "$GPU_VENV/bin/python" scripts/gpu_check.py "$@"
