//! The `jex.agent.v1` gRPC API of the node agent: generated message types, the `NodeAgent`
//! server and client, and the encoded descriptor set for server reflection.
//!
//! The source of truth is `proto/jex/agent/v1/agent.proto`; nothing here is hand-written.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)]

/// Package `jex.agent.v1`.
pub mod v1 {
    tonic::include_proto!("jex.agent.v1");
}

/// The encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jex_agent_v1_descriptor.bin"));
