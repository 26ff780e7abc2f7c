# imagegate-webhook: build with rustup's stable Rust, run from distroless
# as a non-root user. Build from the repository root:
#   docker build -f deploy/docker/webhook.Dockerfile -t registry.example/imagegate/webhook:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package imagegate-webhook --bin imagegate-webhook

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/imagegate-webhook /usr/local/bin/imagegate-webhook
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/imagegate-webhook"]
CMD ["serve"]
