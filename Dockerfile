# syntax=docker/dockerfile:1.7
# Build: the cargo registry and target directory are cache mounts, so a code change rebuilds only
# this crate, not its dependencies.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY web ./web
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin baby-discord \
 && cp target/release/baby-discord /baby-discord

# Run: distroless (glibc, CA certificates, no shell), as a non-root user. The binary needs no
# writable filesystem: the web page and migrations are embedded in it.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /baby-discord /usr/local/bin/baby-discord
USER nonroot:nonroot
ENV LOG_FORMAT=json
EXPOSE 9001 3001
ENTRYPOINT ["/usr/local/bin/baby-discord"]
