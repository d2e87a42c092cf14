# Orch: one image for `orch serve`, `orch api` and `orch worker`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin orch

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/orch orch
COPY --from=build /src/target/release/orch /usr/local/bin/orch
USER orch
WORKDIR /var/lib/orch
ENV ORCH_BIND=0.0.0.0:8080 \
    ORCH_DATA_DIR=/var/lib/orch/data
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/orch"]
CMD ["serve"]
