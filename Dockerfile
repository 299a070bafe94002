# syntax=docker/dockerfile:1
# tbg-proxy image: `tbg serve` only (no torch; the reference model is not included).

# --- build: wheels for the project and its runtime dependencies ---------------------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY estimator ./estimator
COPY reference ./reference
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: non-root, wheels installed into a clean interpreter -------------------------------
FROM python:3.11-slim AS runtime
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
CMD []
