# GPU image for training on a host with the NVIDIA container toolkit:
#   docker build -t audio-world-model .
#   docker run --gpus all -v $PWD/work:/work audio-world-model                       # launch.py --configs defaults audio
#   docker run --gpus all -v $PWD/work:/work audio-world-model python -m tokenizer all --configs defaults audio --data_dir /work/data
# PyPI's torch wheels carry their CUDA runtime, so a slim Python base is enough; the host gives the driver.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The install step is the same as a developer's: `make install` (a .venv with the project, editable).
COPY pyproject.toml Makefile README.md ./
COPY config ./config
COPY tokenizer ./tokenizer
COPY pydreamer ./pydreamer
COPY envs ./envs
COPY launch.py ./
COPY bench ./bench
RUN make install

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1
# Data, MLflow store and artifacts (replay store, checkpoints) live on the mounted volume.
VOLUME /work
CMD ["python", "launch.py", "--configs", "defaults", "audio", "--data_dir", "/work/data", "--mlflow_dir", "/work/mlruns"]
