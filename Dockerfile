# pool-observer image: `observer sidecar` by default; `observer doctor` and `observer demo` too.
#   docker build -t pool-observer .
#   docker run --rm -p 127.0.0.1:9188:9188 -e OBSERVER_SIDECAR_DATABASE_URL=postgresql://... pool-observer
# The base tag is pinned; bump it on purpose (and the same tag in both stages).

FROM python:3.11.11-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY pyproject.toml README.md ./
COPY observer ./observer
# Wheels of the package and of every dependency it resolves to; the runtime stage installs
# exactly this set (listed by path in requirements.txt) without reaching an index.
RUN pip wheel --no-cache-dir --wheel-dir /dist ".[sidecar,demo]" \
    && find /dist -name '*.whl' | sort > /dist/requirements.txt

FROM python:3.11.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OBSERVER_SIDECAR_ADDRESS=0.0.0.0 \
    OBSERVER_SIDECAR_PORT=9188
RUN groupadd --system --gid 10001 observer \
    && useradd --system --uid 10001 --gid observer --no-create-home --shell /usr/sbin/nologin observer \
    && mkdir -p /var/lib/pool-observer/multiproc \
    && chown -R observer:observer /var/lib/pool-observer
COPY --from=build /dist/ /dist/
RUN pip install --no-cache-dir --no-index --requirement /dist/requirements.txt \
    && rm -rf /dist
USER 10001:10001
EXPOSE 9188
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["observer", "sidecar", "--check-health"]
ENTRYPOINT ["observer"]
CMD ["sidecar"]
