//! Generates the Rust code for `imagegate/v1/*.proto` at build time, with
//! protox (a protobuf compiler in Rust) instead of a system `protoc`, so
//! the API crate builds anywhere cargo does; and writes the descriptor set
//! the agent serves through gRPC reflection.

use std::{env, error::Error, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &["imagegate/v1/agent.proto", "imagegate/v1/feed.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("imagegate_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
