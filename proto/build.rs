//! Compiles `proto/jex/agent/v1/*.proto` with protox (pure Rust: no `protoc` on the machine)
//! and writes the encoded descriptor set that server reflection serves.
//!
//! The service is generated twice: once with every message (`v1`: messages, client, server),
//! and once as a server only (`stored`) whose messages are `v1`'s except `StreamTelemetry`'s
//! response, which is `stored::StoredBatch`: the same wire form, holding each record as the
//! bytes the spool stored, so a replay sends them without decoding and encoding them again.

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
        .compile_fds(fds.clone())?;
    let stored = out.join("stored");
    std::fs::create_dir_all(&stored)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .out_dir(&stored)
        // Every type is v1's (no message is generated again) but the one response.
        .extern_path(".jex.agent.v1", "crate::v1")
        .extern_path(
            ".jex.agent.v1.StreamTelemetryResponse",
            "crate::stored::StoredBatch",
        )
        .compile_fds(fds)?;
    Ok(())
}
