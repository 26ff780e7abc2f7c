# imagegate-agent with its eBPF object embedded: the eBPF side needs
# Debian's rustc-web (precompiled BPF core) and bpf-linker on LLVM 22, which
# `cargo xtask setup` installs; `cargo xtask build --release` builds the
# object and the agent. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t registry.example/imagegate/agent:0.1.0 .
FROM debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates curl build-essential pkg-config git && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain 1.95.0 --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# Build-only setup: apt packages (rustc-web, LLVM 22, protoc...) and
# bpf-linker; no kernel checks, mounts or test tools.
RUN IMAGEGATE_SETUP_BUILD_ONLY=1 cargo xtask setup && cargo xtask build --release

FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/imagegate-agent /usr/local/bin/imagegate-agent
# Runs as root with only the capabilities the DaemonSet adds (BPF, PERFMON,
# SYS_RESOURCE, KILL); see deploy/helm/imagegate/templates/agent.yaml.
ENTRYPOINT ["/usr/local/bin/imagegate-agent"]
