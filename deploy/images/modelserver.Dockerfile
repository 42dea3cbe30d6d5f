# syntax=docker/dockerfile:1.7
# Model Gallery model server (port 8500), CPU: one ONNX model over the Open Inference Protocol.
# The deployer's Kubernetes runtime starts it with `python -m gallery_deployer.modelserver --model ...`
# (its pods run as UID 10001 with a read-only root and /tmp as their only writable folder).
# Build from the repository root:
#   docker build -f deploy/images/modelserver.Dockerfile -t modelgallery/modelserver:0.1.0 .

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY libs/common libs/common
COPY services/deployer services/deployer
RUN pip wheel --wheel-dir /wheels ./libs/common ./services/deployer

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GALLERY_HOME=/tmp/gallery \
    GALLERY_HOST=0.0.0.0
# The wheels built above are the only index: the versions are the ones the builder resolved.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels modelgallery-deployer \
    && groupadd --system --gid 10001 gallery \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin gallery
WORKDIR /tmp
USER 10001:10001
EXPOSE 8500
ENTRYPOINT ["python", "-m", "gallery_deployer.modelserver"]
