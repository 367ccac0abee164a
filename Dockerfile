# syntax=docker/dockerfile:1.7
# Build and runtime on one Debian release (trixie), so the binary runs on the glibc it was linked
# against. The cargo registry and target directory are cache mounts: a code change rebuilds only
# this crate, not its dependencies.
FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The workspace's other member (the load generator) must be present for cargo to read the
# workspace; only the server is built.
COPY tools ./tools
COPY src ./src
COPY migrations ./migrations
COPY web ./web
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package baby-discord --bin baby-discord \
 && cp target/release/baby-discord /baby-discord

# Run: a slim Debian with a non-root user and nothing else. The binary needs no writable
# filesystem: the web page and migrations are embedded in it.
FROM debian:trixie-slim
RUN groupadd --system --gid 65532 chat \
 && useradd --system --uid 65532 --gid chat --no-create-home --shell /usr/sbin/nologin chat
COPY --from=build /baby-discord /usr/local/bin/baby-discord
USER 65532:65532
ENV LOG_FORMAT=json
EXPOSE 9001 3001
ENTRYPOINT ["/usr/local/bin/baby-discord"]
