# syntax=docker/dockerfile:1
# Robot Fleet Control Platform: one build, one runtime base holding the five
# executables, and one target per service (fixed port, entrypoint, HEALTHCHECK):
#
#   docker build --target webhook-ingest -t robot-fleet/webhook-ingest:dev .
#
# Targets: webhook-ingest robot-registry reboot-command config-center
# stream-processor robot-sim (the simulated vendor platform), and `runtime`, the
# shared base, for mock-broker or tooling.
# Everything runs as uid 10001 with exec-form commands: no shell is needed at
# run time. The HEALTHCHECK uses curl (the only tool added beyond the runtime
# libraries) against the service's own /healthz.

ARG DEBIAN_VERSION=bookworm

# ---- build ------------------------------------------------------------------
FROM debian:${DEBIAN_VERSION} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config \
      librdkafka-dev libmicrohttpd-dev libhiredis-dev libssl-dev libcjson-dev \
      libcurl4-openssl-dev libyaml-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY libcommon/ libcommon/
COPY services/ services/
COPY tests/sim/ tests/sim/
# Only the five services, mock-broker and the robot simulator (not `make services`, which
# also builds the other tools from tests/).
RUN make -j"$(nproc)" build/bin/webhook-ingest build/bin/robot-registry build/bin/reboot-command \
      build/bin/config-center build/bin/stream-processor build/bin/mock-broker build/bin/robot-sim \
 && strip --strip-debug build/bin/*

# ---- runtime base -----------------------------------------------------------
FROM debian:${DEBIAN_VERSION}-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librdkafka1 libmicrohttpd12 libhiredis0.14 libcjson1 libcurl4 libyaml-0-2 \
      libssl3 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 robotfleet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin robotfleet \
 && mkdir -p /var/lib/robot-fleet \
 && chown 10001:10001 /var/lib/robot-fleet
COPY --from=build /src/build/bin/ /usr/local/bin/
COPY services/webhook-ingest/webhook-ingest.yaml \
     services/robot-registry/robot-registry.yaml \
     services/reboot-command/reboot-command.yaml \
     services/config-center/config-center.yaml \
     services/stream-processor/stream-processor.yaml \
     /etc/robot-fleet/
ENV LOG_LEVEL=info
WORKDIR /var/lib/robot-fleet
USER 10001:10001
STOPSIGNAL SIGTERM
HEALTHCHECK NONE

# ---- one target per service ----------------------------------------------------
FROM runtime AS webhook-ingest
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:8081/healthz"]
ENTRYPOINT ["/usr/local/bin/webhook-ingest"]
CMD ["-c", "/etc/robot-fleet/webhook-ingest.yaml"]

FROM runtime AS robot-registry
EXPOSE 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:8082/healthz"]
ENTRYPOINT ["/usr/local/bin/robot-registry"]
CMD ["-c", "/etc/robot-fleet/robot-registry.yaml"]

FROM runtime AS reboot-command
EXPOSE 8083
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:8083/healthz"]
ENTRYPOINT ["/usr/local/bin/reboot-command"]
CMD ["-c", "/etc/robot-fleet/reboot-command.yaml"]

FROM runtime AS config-center
EXPOSE 8084
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:8084/healthz"]
ENTRYPOINT ["/usr/local/bin/config-center"]
CMD ["-c", "/etc/robot-fleet/config-center.yaml"]

# Last stage = default target of a plain `docker build .`.
FROM runtime AS stream-processor
EXPOSE 8085
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:8085/healthz"]
ENTRYPOINT ["/usr/local/bin/stream-processor"]
CMD ["-c", "/etc/robot-fleet/stream-processor.yaml"]

# The simulated robot vendor platform (tests/sim/): a demo fleet; the vendor API's bearer
# token comes from SIM_API_TOKEN.
FROM runtime AS robot-sim
EXPOSE 8090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:8090/healthz"]
ENTRYPOINT ["/usr/local/bin/robot-sim"]
CMD ["--bind", "0.0.0.0", "--port", "8090", "--robots", "20", "--fleets", "2", \
     "--silent", "7@10", "--storm", "b@40:20/10"]
