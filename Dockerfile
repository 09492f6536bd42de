# syntax=docker/dockerfile:1
#
# memgate's container image: a release build on Debian bookworm, run from a
# distroless image as a non-root user.
#
#   docker build -t memgate .
#   docker run --rm -p 8080:8080 --memory 2g memgate
#
# The configuration is embedded in the binary (config/default.toml); the
# image needs no file. Settings come from MEMGATE__SECTION__KEY variables,
# or from a TOML file named by MEMGATE_CONFIG.

# The toolchain rust-toolchain.toml pins. The image's default toolchain is
# that exact release, so the build needs no rustup download; keep the two
# equal (deploy/validate checks it). rust-toolchain.toml itself stays out
# of the build context (.dockerignore): with it, rustup would fetch the
# rustfmt and clippy components it lists, which a release build never uses.
ARG RUST_VERSION=1.95.0

# Dependencies are cached apart from the source with cargo-chef, the usual
# tool for this in Rust images. The hand-made alternative (copy the
# manifests, build against a dummy src/main.rs) breaks on this crate:
# Cargo.toml declares five [[bench]] targets, and cargo refuses a manifest
# whose declared targets have no source file, so every bench would need a
# dummy file kept in step with Cargo.toml. cargo-chef writes that skeleton
# from the manifest itself.
FROM rust:${RUST_VERSION}-bookworm AS chef
# The full (not -slim) image: jemalloc's build (tikv-jemalloc-sys) needs a
# C compiler and make, and libwebp-sys compiles libwebp from its vendored C
# source; both are there.
RUN cargo install cargo-chef --locked --version 0.1.76
WORKDIR /build

# Reduces the project to its manifests and lockfile. The recipe changes only
# when a dependency or a target does, so the next stage's cached layer
# survives every change to the source.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# The dependency layer: rebuilt only when recipe.json changes.
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin memgate

# The binary links only libc, libm, ld-linux and libgcc_s dynamically
# (readelf -d on a release build; jemalloc and libwebp are linked in
# statically): glibc and libgcc are what the distroless "cc" image holds,
# with no shell and no package manager. The :nonroot tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /build/target/release/memgate /usr/local/bin/memgate

# Cloud Logging reads severity, message, trace and httpRequest from JSON
# lines on stdout; a terminal user can override with MEMGATE__LOG__FORMAT=text.
ENV MEMGATE__LOG__FORMAT=json
EXPOSE 8080
# The image's nonroot user, by number: Kubernetes can check runAsNonRoot
# only against a numeric user.
USER 65532:65532

# No init process (tini, dumb-init): memgate spawns no child processes, so
# there are no zombies to reap, and it installs its own SIGTERM and SIGINT
# handlers, so running as PID 1 (where the kernel ignores signals that have
# no handler) still starts the drain. If memgate ever spawns children (an
# external encoder, say), add an init that reaps them and forwards signals.
# The exec form keeps memgate itself as PID 1, with no shell in between to
# swallow SIGTERM.
ENTRYPOINT ["/usr/local/bin/memgate"]
