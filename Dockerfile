# pool-observer images. The default target is the sidecar image (`observer sidecar`, also
# `observer doctor`); the `demo` target adds the demo app for deploy/docker-compose.yml.
#   docker build -t pool-observer .
#   docker build --target demo -t pool-observer-demo .
#   docker run --rm --read-only --cap-drop ALL --security-opt no-new-privileges:true \
#     -p 127.0.0.1:9188:9188 -e PROMETHEUS_MULTIPROC_DIR=... pool-observer
#
# Nothing is resolved at build time: the base image is pinned by digest, every Python package
# comes from a lock with hashes (deploy/requirements-*.txt, made by `sh deploy/lock.sh`) as a
# wheel, and the package itself is built from this tree with the hashed build backend.
#
# Base: python:3.11.15-slim-bookworm, by the digest of its multi-platform index as published in
# docker-library/repo-info (repos/python/remote/3.11.15-slim-bookworm.md) and pinned the same
# in other public repositories. To move to a newer build, on purpose and in every FROM below:
#   docker buildx imagetools inspect python:3.11.15-slim-bookworm   (the "Digest:" line)

FROM python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3 AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/pool-observer/bin:$PATH
# The user every image runs as, and the multiprocess directory (a volume in the compose stack).
RUN groupadd --system --gid 10001 observer \
    && useradd --system --uid 10001 --gid observer --no-create-home --shell /usr/sbin/nologin observer \
    && mkdir -p /var/lib/pool-observer/multiproc \
    && chown -R observer:observer /var/lib/pool-observer

# The package's wheel, built by the hashed build backend without fetching anything.
FROM base AS build
WORKDIR /src
COPY deploy/requirements-build.txt deploy/requirements-sidecar.txt deploy/requirements-demo.txt ./deploy/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: --requirement deploy/requirements-build.txt
COPY pyproject.toml README.md ./
COPY observer ./observer
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /dist .

# One virtual environment per image, at the path it runs from (a venv cannot move); it has no pip.
FROM build AS sidecar-env
RUN python -m venv --without-pip /opt/pool-observer \
    && /opt/build/bin/pip --python /opt/pool-observer/bin/python install --require-hashes --no-deps --only-binary=:all: --requirement deploy/requirements-sidecar.txt \
    && /opt/build/bin/pip --python /opt/pool-observer/bin/python install --no-deps --no-index /dist/*.whl \
    && /opt/build/bin/pip --python /opt/pool-observer/bin/python check

FROM build AS demo-env
RUN python -m venv --without-pip /opt/pool-observer \
    && /opt/build/bin/pip --python /opt/pool-observer/bin/python install --require-hashes --no-deps --only-binary=:all: --requirement deploy/requirements-demo.txt \
    && /opt/build/bin/pip --python /opt/pool-observer/bin/python install --no-deps --no-index /dist/*.whl \
    && /opt/build/bin/pip --python /opt/pool-observer/bin/python check

# The demo app of the compose stack (`observer demo --serve`): not the default target.
FROM base AS demo
COPY --from=demo-env /opt/pool-observer /opt/pool-observer
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["observer"]
CMD ["demo"]

# The sidecar image, the default target: no demo extras, no pip in its environment. It listens
# on all of the container's interfaces (its network namespace is the boundary; publish the port
# on 127.0.0.1 or an internal network only).
FROM base AS runtime
ENV OBSERVER_SIDECAR_ADDRESS=0.0.0.0 \
    OBSERVER_SIDECAR_PORT=9188
COPY --from=sidecar-env /opt/pool-observer /opt/pool-observer
USER 10001:10001
EXPOSE 9188
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["observer", "sidecar", "--check-health"]
ENTRYPOINT ["observer"]
CMD ["sidecar"]
