# syntax=docker/dockerfile:1.7
# Model Gallery model server (port 8500) for GPU nodes: ONNX Runtime with its CUDA and TensorRT execution
# providers. The policy's execution_providers chooses (default: CUDA, then the CPU); a provider that
# cannot start here is passed over with its reason in the model's metadata and model.deployed.
# TensorRT's libraries come from NVIDIA's tensorrt-cu13-libs wheel, found through LD_LIBRARY_PATH: TensorRT
# 10, which onnxruntime-gpu's CUDA 13 builds link (1.25's used 10.15; not checked against 1.31 without a
# GPU: scripts/gpu_check.sh prints whether TensorrtExecutionProvider started or why not).
# onnxruntime-gpu 1.31 on the default index is built for CUDA 13 and cuDNN 9: CUDA_IMAGE must match
# that major version (the node needs a driver for CUDA 13 and the NVIDIA device plugin).
# Build from the repository root:
#   docker build -f deploy/images/modelserver-gpu.Dockerfile -t modelgallery/modelserver-gpu:0.1.0 .

# Wheels are built for the runtime's Python (Ubuntu 24.04: 3.12) on an older glibc than the runtime's.
FROM python:3.12-slim-bookworm AS builder
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ARG TENSORRT_LIBS="tensorrt-cu13-libs>=10.15,<11"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY libs/common libs/common
COPY services/deployer services/deployer
RUN pip wheel --wheel-dir /wheels ./libs/common ./services/deployer "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" \
    "${TENSORRT_LIBS}"

FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ARG TENSORRT_LIBS="tensorrt-cu13-libs>=10.15,<11"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs \
    GALLERY_HOME=/tmp/gallery \
    GALLERY_HOST=0.0.0.0
# The distribution's Python, unpinned: its security updates come with each rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# onnxruntime (CPU), which the package requires, and onnxruntime-gpu install the same module: the GPU
# build replaces the CPU one. The wheels built above are the only index.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && pip install --no-cache-dir --no-index --find-links=/wheels modelgallery-deployer \
    && pip uninstall --yes onnxruntime \
    && pip install --no-cache-dir --no-index --find-links=/wheels "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" \
        "${TENSORRT_LIBS}" \
    && groupadd --system --gid 10001 gallery \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin gallery
WORKDIR /tmp
USER 10001:10001
EXPOSE 8500
ENTRYPOINT ["python", "-m", "gallery_deployer.modelserver"]
