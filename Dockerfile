# syntax=docker/dockerfile:1
# One image with every wxgate binary: wx-gateway, wx-worker, wxgate-sim and the wxgate CLI.
# No configuration or secret is baked in: mount the TOML file at run time (docker-compose.yml
# mounts it as /etc/wxgate/wxgate.toml) and override keys with WXGATE__SECTION__KEY.
#
#   docker build -t wxgate .
#   docker run --rm -v "$PWD/config/compose.toml:/etc/wxgate/wxgate.toml:ro" wxgate

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The protobuf compiler is vendored and aws-lc builds with the C compiler of this image: nothing
# else to install. The caches keep the registry and the target directory between builds; the
# target directory is a cache, so the binaries are copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wx-gateway -p wx-worker -p wxgate-sim -p wxgate \
    && mkdir -p /out \
    && cp target/release/wx-gateway target/release/wx-worker target/release/wxgate-sim \
          target/release/wxgate /out/

FROM debian:bookworm-slim
# ca-certificates: HTTPS to api.weixin.qq.com. curl: the compose healthchecks (/readyz).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 wxgate \
    && useradd --system --uid 10001 --gid wxgate --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin wxgate \
    && mkdir -p /etc/wxgate
COPY --from=build /out/wx-gateway /usr/local/bin/wx-gateway
COPY --from=build /out/wx-worker /usr/local/bin/wx-worker
COPY --from=build /out/wxgate-sim /usr/local/bin/wxgate-sim
COPY --from=build /out/wxgate /usr/local/bin/wxgate
USER 10001:10001
# gateway.listen, worker.http_listen, worker.grpc_listen, the simulator's --listen.
EXPOSE 8080 9091 50051 9099
CMD ["wx-gateway", "--config", "/etc/wxgate/wxgate.toml"]
