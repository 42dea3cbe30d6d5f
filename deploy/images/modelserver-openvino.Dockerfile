# syntax=docker/dockerfile:1.7
# Model Gallery model server (port 8500) with ONNX Runtime's OpenVINO execution provider, for Intel CPUs
# (and Intel GPUs/NPUs, GALLERY_OPENVINO_DEVICE_TYPE). The deployer's Kubernetes runtime runs it for CPU
# pods whose policy names `openvino` ahead of `cpu` in execution_providers; the CPU provider is in it too.
# onnxruntime-openvino 1.24 reads ONNX IR up to 13: a model with IR 14 falls back to the CPU provider,
# which in this image is the same 1.24 build (the plain image's newer ONNX Runtime reads IR 14).
# Build from the repository root:
#   docker build -f deploy/images/modelserver-openvino.Dockerfile -t modelgallery/modelserver-openvino:0.1.0 .

FROM python:3.11-slim AS builder
ARG ONNXRUNTIME_OPENVINO_VERSION=1.24.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY libs/common libs/common
COPY services/deployer services/deployer
RUN pip wheel --wheel-dir /wheels ./libs/common ./services/deployer \
    "onnxruntime-openvino==${ONNXRUNTIME_OPENVINO_VERSION}"

FROM python:3.11-slim
ARG ONNXRUNTIME_OPENVINO_VERSION=1.24.1
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GALLERY_HOME=/tmp/gallery \
    GALLERY_HOST=0.0.0.0
# onnxruntime (which the package requires) and onnxruntime-openvino install the same module: the OpenVINO
# build replaces the plain one. The wheels built above are the only index.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels modelgallery-deployer \
    && pip uninstall --yes onnxruntime \
    && pip install --no-cache-dir --no-index --find-links=/wheels \
        "onnxruntime-openvino==${ONNXRUNTIME_OPENVINO_VERSION}" \
    && groupadd --system --gid 10001 gallery \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin gallery
WORKDIR /tmp
USER 10001:10001
EXPOSE 8500
ENTRYPOINT ["python", "-m", "gallery_deployer.modelserver"]
