# syntax=docker/dockerfile:1
#
# The gateway as a service: the beambridge package with the CPU build of
# torch in a virtualenv, run on slim Python as an unprivileged user. The
# entrypoint, docker/gateway.sh, runs `beambridge serve` against the nodes
# given as `--node HOST:PORT` arguments; `gateway.sh health` asks /healthz.
#
# Build from the repository root: docker build -f docker/gateway.Dockerfile .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# erlpack ships no wheels, so it is compiled here, away from the final image.
FROM ${PYTHON_IMAGE} AS build

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# torch first, from the CPU index, so the package's `torch==2.13.0` is
# already met and pip never fetches the CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY pyproject.toml README.md ./
COPY python python
COPY compiled_model compiled_model
RUN pip install .

FROM ${PYTHON_IMAGE}

# The compiled executor reads each fragment's syntax tree from Elixir's own
# parser, so the gateway image carries Elixir (Debian's, as the tests use).
RUN apt-get update \
 && apt-get install -y --no-install-recommends elixir \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --user-group --home-dir /app \
      --shell /usr/sbin/nologin beambridge

COPY --from=build /opt/venv /opt/venv
COPY docker/gateway.sh /app/docker/gateway.sh

# The compiled weights are written once, here, and only read at run time.
# So are the decode kernels (numba), into a cache the unprivileged user may
# write to as well: on another CPU model they are compiled again, once.
ENV BEAMBRIDGE_COMPILED_CACHE=/opt/compiled-weights NUMBA_CACHE_DIR=/opt/numba-cache
RUN /opt/venv/bin/python -c \
      "from compiled_model import engine; engine.decode(engine.load_model(), [0], 1)" \
 && chown -R beambridge:beambridge /opt/numba-cache

ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    BEAMBRIDGE_HOST=0.0.0.0 BEAMBRIDGE_PORT=8765 \
    BEAM_BRIDGE_SECRET_FILE=/run/secrets/node_secret \
    BEAMBRIDGE_TOKEN_FILE=/run/secrets/gateway_token

RUN beambridge --help >/dev/null

USER beambridge
WORKDIR /app
EXPOSE 8765

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/app/docker/gateway.sh", "health"]

ENTRYPOINT ["/app/docker/gateway.sh"]
