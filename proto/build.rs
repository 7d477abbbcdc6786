//! Compiles `proto/**/*.proto` with protox (a pure-Rust protobuf compiler, so
//! no system `protoc` is needed), then generates tonic/prost code and writes
//! the encoded descriptor set used by server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "sweepfold/v1/types.proto",
    "sweepfold/v1/coordinator.proto",
    "sweepfold/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sweepfold_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
