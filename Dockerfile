# syntax=docker/dockerfile:1
# neqforce GPU force server: ONNX Runtime (CUDA execution provider, CPU fallback) + exact NEGF fallback.
#
#   docker build -t neqforce:latest .
#   docker run --rm --gpus all -p 50051:50051 -p 9090:9090 neqforce:latest
#   docker run --rm --gpus all -p 50051:50051 -v "$PWD/models:/models:ro" neqforce:latest \
#       --host 0.0.0.0 --port 50051 --model /models/my_model.onnx
#
# Multi-stage: the wheel (with the bundled model inside) is built in a slim Python image; the serving
# image gets only the wheel and its runtime dependencies (no torch, no compilers).

ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
ARG PYTHON_BUILD_IMAGE=python:3.12-slim

# ---------------------------------------------------------------- build: the neqforce wheel
FROM ${PYTHON_BUILD_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2.post1
COPY pyproject.toml README.md ./
COPY neqforce ./neqforce
COPY physics ./physics
COPY training ./training
COPY server ./server
COPY client ./client
COPY protos ./protos
RUN python -m build --wheel --outdir /wheels .

# ---------------------------------------------------------------- serve: CUDA runtime + onnxruntime-gpu
FROM ${CUDA_IMAGE} AS serve
# onnxruntime-gpu 1.31 is built for CUDA 13 / cuDNN 9; cuDNN comes from its pip extra.
ARG ORT_GPU_VERSION=1.31.1
ENV DEBIAN_FRONTEND=noninteractive \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NEQFORCE_CACHE=/tmp/neqforce-cache \
    OMP_NUM_THREADS=4
# The distribution's python3 is pinned by the CUDA image tag; apt versions are not pinned on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
COPY --from=build /wheels /wheels
# onnxruntime and onnxruntime-gpu are the same module: install the package, then swap the CPU build for
# the GPU build (one per environment).
RUN pip install --no-cache-dir /wheels/neqforce-*.whl \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]==${ORT_GPU_VERSION}" \
    && rm -rf /wheels \
    && python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" \
    && groupadd --gid 10001 neqforce \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin neqforce
USER 10001:10001
WORKDIR /home/neqforce
# Extra models: mount a folder here and pass --model /models/NAME.onnx (the bundled model is in the wheel).
VOLUME ["/models"]
# gRPC (ForceService, health, reflection) and Prometheus metrics.
EXPOSE 50051 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["neqforce", "health", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["neqforce", "serve"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9090"]
