//! Compiles `proto/jex/agent/v1/*.proto` with protox (pure Rust: no `protoc` on the machine)
//! and writes the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/jex/agent/v1/agent.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds does not write file_descriptor_set_path (that only applies with protoc).
    std::fs::write(out.join("jex_agent_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
