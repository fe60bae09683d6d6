# unet-tiles on NVIDIA GPUs: one image for every role of docker-compose.yml.
#
#   flow runner (default):  unet serve /app/pipelines.yaml
#   Dask GPU worker:        dask worker tcp://dask-scheduler:8786 --nthreads 4
#                           (one container per GPU, started with that GPU only; it streams)
#   Dask scheduler:         dask scheduler --host 0.0.0.0 --no-dashboard
#   Prefect server:         prefect server start --host 0.0.0.0
#
# Build: docker build -t unet-tiles .   (another CUDA: --build-arg TORCH_INDEX=.../whl/cu126)
# torch comes from PyTorch's CUDA index; its wheels bring their own CUDA libraries, the base image
# brings cuDNN and the user-space driver hooks of the NVIDIA container toolkit.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_HOME=/var/lib/prefect

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# The CUDA build of torch first: the project's torch pin is then already satisfied.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY unet ./unet
COPY flows ./flows
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[s3]"
COPY pipelines.yaml ./

# Not root; uid 1000 is taken by the base image's "ubuntu" user.
RUN useradd --create-home --uid 10001 unet \
    && mkdir -p /app/data "$PREFECT_HOME" \
    && chown unet /app/data "$PREFECT_HOME"
USER 10001

ENTRYPOINT ["tini", "--"]
CMD ["unet", "serve", "/app/pipelines.yaml"]
