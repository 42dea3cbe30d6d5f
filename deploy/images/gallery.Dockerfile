# syntax=docker/dockerfile:1.7
# Model Gallery web app (port 8000): the one web UI (catalogue, model cards, experiments, lineage,
# try it, monitoring) with its static files (package data), the proxy to every service and the
# aggregations. No torch, no database, no NATS. Build from the repository root:
#   docker build -f deploy/images/gallery.Dockerfile -t modelgallery/gallery:0.1.0 .

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY libs/common libs/common
COPY services/gallery services/gallery
RUN pip wheel --wheel-dir /wheels ./libs/common ./services/gallery

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GALLERY_HOME=/var/lib/modelgallery \
    GALLERY_HOST=0.0.0.0
# The wheels built above are the only index: the versions are the ones the builder resolved.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels modelgallery-gallery \
    && groupadd --system --gid 10001 gallery \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/modelgallery --no-create-home \
        --shell /usr/sbin/nologin gallery \
    && install --directory --owner=10001 --group=10001 /var/lib/modelgallery
WORKDIR /var/lib/modelgallery
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["python", "-m", "gallery_common.serve", "gallery"]
