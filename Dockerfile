# The filter's one image, for every command: `docker run IMAGE` runs the worker, and
# `docker run IMAGE topics create | generate ... | verify ... | watch` the others
# (ENTRYPOINT is `python -m stream`, CMD its default command).
#
# - Runs as UID/GID 10001, a number, so Kubernetes' runAsNonRoot can check it without
#   reading /etc/passwd; the Helm chart (deploy/helm) sets the same IDs.
# - Writes only to /data (the worker's state, STREAM_DATA_DIR; a volume) and /tmp, so
#   the root filesystem can be mounted read-only: no bytecode is written at run time,
#   it was compiled when the packages were installed.
# - Every package is installed from a lock file with the hashes of its files
#   (requirements.lock for the runtime, requirements-build.lock for the build backend;
#   `make lock` writes both from pyproject.toml), as wheels only, nothing resolved at
#   build time.
#
# tests/unit/test_dockerfile.py checks all of this without a container engine.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

# The package's own wheel, built with the locked build backend.
# The core (stream/core) is compiled by mypyc (setup.py), so this stage has a C compiler:
# the base image's Debian release fixes its version, and it stays out of the final image.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --require-hashes --no-deps --only-binary :all: -r requirements-build.lock
COPY pyproject.toml setup.py README.md ./
COPY stream ./stream
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# /data is created and owned before VOLUME: a named volume mounted there for the first
# time takes this ownership (Docker copies the image's directory into an empty volume),
# and changes to the directory after VOLUME would be discarded.
RUN groupadd --gid 10001 stream \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin stream \
    && install --directory --owner 10001 --group 10001 --mode 0750 /data
COPY requirements.lock /usr/local/share/eligibility-filter/requirements.lock
RUN pip install --require-hashes --no-deps --only-binary :all: -r /usr/local/share/eligibility-filter/requirements.lock
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist

# jemalloc for every process of the image, tuned as stream/cli.py's JEMALLOC_ENV says
# (tests/unit/test_dockerfile.py keeps the two equal): with glibc's malloc the worker's
# resident memory creeps over a long run as its heap fragments; with jemalloc it stays
# flat (bench/notes.md, "The allocator").
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*
ENV LD_PRELOAD=libjemalloc.so.2 \
    MALLOC_CONF=background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 STREAM_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
# 6066: the worker's /metrics, /healthz and /ready (STREAM_WEB_PORT); 6067: the
# verifier's /metrics (`verify --port`).
EXPOSE 6066 6067
# Liveness of the worker, with Python (a slim image has no curl). Commands without a web
# server (topics, generate, watch) disable it; the verifier checks its own port
# (docker-compose.yml).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAM_WEB_PORT', '6066'), timeout=4)"]
ENTRYPOINT ["python", "-m", "stream"]
CMD ["worker"]
