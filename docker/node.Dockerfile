# syntax=docker/dockerfile:1
#
# The BEAM node as a service: a `mix release` of elixir_node, built on an
# official Elixir image (Elixir 1.14, OTP 25, the versions the tests run on)
# and run on slim Debian as an unprivileged user. The entrypoint is the
# repository's own launcher, elixir_node/bin/beam_bridge_node, which reads
# every setting from BEAM_BRIDGE_* variables; `beam_bridge_node health` is
# the readiness probe.
#
# Build from the repository root: docker build -f docker/node.Dockerfile .

# The runtime image must be the Debian release the build image is based on:
# OTP's crypto links the system's libcrypto. The check at the end of the
# runtime stage fails the build when they disagree.
ARG ELIXIR_IMAGE=elixir:1.14-otp-25-slim
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${ELIXIR_IMAGE} AS build

ENV MIX_ENV=prod LANG=C.UTF-8
WORKDIR /build

# No hex dependencies: the release needs only the project's own sources.
COPY elixir_node/mix.exs ./
COPY elixir_node/config config
COPY elixir_node/lib lib
RUN mix release --path /release

FROM ${RUNTIME_IMAGE}

RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 libncurses6 libstdc++6 \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --user-group --home-dir /app \
      --shell /usr/sbin/nologin beambridge

COPY --from=build /release /app/release
COPY elixir_node/bin /app/elixir_node/bin

# Defaults for the container; compose (or `docker run -e`) overrides them.
# A crash dump goes to /tmp, the one writable place under a read-only root.
ENV LANG=C.UTF-8 \
    BEAM_BRIDGE_RELEASE=/app/release/bin/beam_bridge \
    BEAM_BRIDGE_HOST=0.0.0.0 \
    BEAM_BRIDGE_PORT=9100 \
    BEAM_BRIDGE_SECRET_FILE=/run/secrets/node_secret \
    RELEASE_TMP=/tmp \
    ERL_CRASH_DUMP=/tmp/erl_crash.dump

RUN /app/release/bin/beam_bridge eval '{:ok, _} = Application.ensure_all_started(:crypto)'

USER beambridge
WORKDIR /app
EXPOSE 9100

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/app/elixir_node/bin/beam_bridge_node", "health"]

ENTRYPOINT ["/app/elixir_node/bin/beam_bridge_node"]
CMD ["start"]
