# Builds every wxgate binary into one small image. The protobuf compiler is vendored.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p wx-gateway -p wx-worker -p wxgate-sim

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/wx-gateway /src/target/release/wx-worker \
    /src/target/release/wxgate-sim /usr/local/bin/
COPY config /etc/wxgate
USER nobody
