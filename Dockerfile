# syntax=docker/dockerfile:1
# The training image, for a host with an NVIDIA GPU and the NVIDIA Container Toolkit (README: "GPU host").
#   docker compose up --build -d          # PostgreSQL + MLflow tracking server + this trainer (compose.yaml)
# or the image alone (a local SQLite store under /work/mlruns):
#   docker build -t audio-world-model .
#   docker run --gpus all --init --shm-size 8g -v awm-work:/work audio-world-model --configs defaults audio small
# torch's wheels carry their CUDA runtime, so a slim Python base is enough; the host gives the driver. The CUDA
# version is pinned here, not left to whatever PyPI's torch brings: TORCH_VARIANT (PyTorch's index for it,
# `make TORCH=...`), by default cu128 = CUDA 12.8, which needs an NVIDIA driver of 570 or newer on the host.
# Another: docker build --build-arg TORCH_VARIANT=cu126 (an older driver) or cu130, or cpu (no GPU: ~4.5 GB smaller).
# libsndfile (mp3 included) comes in the soundfile wheel and eSpeak NG in espeakng-loader's: apt adds make, and a
# C compiler for `pesq` (the `hear` extra), which PyPI has only as source.
# Stages: `base` (the project installed by `make install`), `mlflow` (the tracking server compose.yaml
# runs: base + the PostgreSQL driver) and `trainer` (the default target: launch.py).

FROM python:3.11-slim AS base

# DL3008 (pin apt versions): the base image's tag fixes the Debian release; pinning make's exact
# Debian revision would break the build at each point release of that release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --user-group app \
 && mkdir -p /app /work /artifacts \
 && chown app:app /app /work /artifacts

# PIP_NO_CACHE_DIR: pip's cache of the multi-GB torch/CUDA wheels would otherwise stay in the layer.
# NUMBA_CACHE_DIR, MPLCONFIGDIR: writable for any --user (librosa's numba functions cache compiled code).
ENV PATH=/app/.venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    GIT_PYTHON_REFRESH=quiet

WORKDIR /app
# Numeric, so a runtime (e.g. Kubernetes runAsNonRoot) can tell it is not root without /etc/passwd.
USER 1000:1000

# The dependency layer: only what `make deps` reads (pyproject.toml's one list, through docker/deps.py),
# so it is rebuilt when pyproject.toml or the Makefile changes, not when the source does. torch first, from
# TORCH_VARIANT's index; TORCH_FALLBACK=no: the build fails rather than bring another CUDA when it is unreachable.
COPY --chown=1000:1000 pyproject.toml Makefile ./
COPY --chown=1000:1000 docker/deps.py docker/
ARG TORCH_VARIANT=cu128
RUN make deps TORCH="$TORCH_VARIANT" TORCH_FALLBACK=no

# The source, then the same `make install` as a developer's: it finds the dependencies in place and
# adds the project itself (editable) to /app/.venv.
COPY --chown=1000:1000 . .
RUN make install


# The MLflow tracking server of compose.yaml: the trainer's own MLflow (same version as its client)
# and the PostgreSQL driver, which only the server needs.
FROM base AS mlflow
RUN pip install --no-cache-dir psycopg2-binary==2.9.13
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]


# The trainer (the default target). Relative paths land on the /work volume, so
# `docker run IMAGE --configs defaults audio small` keeps its data and runs there too.
# Exec form: launch.py gets SIGTERM from `docker stop` (use --init / compose `init: true` to reap children).
FROM base AS trainer
WORKDIR /work
ENTRYPOINT ["python", "/app/launch.py"]
CMD ["--configs", "defaults", "audio", "--data_dir", "/work/data", "--mlflow_dir", "/work/mlruns"]
