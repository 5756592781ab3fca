//! The `jex.agent.v1` gRPC API of the node agent: generated message types, the `NodeAgent`
//! server and client, and the encoded descriptor set for server reflection.
//!
//! The source of truth is `proto/jex/agent/v1/agent.proto`; nothing here is hand-written but
//! [`stored::StoredBatch`], the wire twin of `StreamTelemetryResponse` that the agent serves.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)]

/// Package `jex.agent.v1`.
pub mod v1 {
    tonic::include_proto!("jex.agent.v1");
}

/// The `NodeAgent` server as the agent serves it: `v1`'s messages, except that
/// `StreamTelemetry` answers with [`stored::StoredBatch`](StoredBatch).
pub mod stored {
    include!(concat!(env!("OUT_DIR"), "/stored/jex.agent.v1.rs"));

    /// `StreamTelemetryResponse` on the wire (`repeated TelemetryRecord records = 1`), with
    /// each record held as its encoding: `bytes` and a message share the length-delimited wire
    /// type, so a client decodes this as a `StreamTelemetryResponse`. Each element must be one
    /// whole `TelemetryRecord` encoding; the agent sends what its spool stored.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct StoredBatch {
        /// One encoded `TelemetryRecord` each.
        #[prost(bytes = "bytes", repeated, tag = "1")]
        pub records: ::prost::alloc::vec::Vec<::prost::bytes::Bytes>,
    }
}

/// The encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jex_agent_v1_descriptor.bin"));

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prost::Message;

    use super::stored::StoredBatch;
    use super::v1;

    /// A batch of stored encodings is, on the wire, the typed response with those records.
    #[test]
    fn a_stored_batch_decodes_as_the_typed_response() {
        let records: Vec<v1::TelemetryRecord> = (1..=3)
            .map(|seq| v1::TelemetryRecord {
                seq,
                time_unix_ms: 1_000 * seq,
                body: Some(v1::telemetry_record::Body::Gap(v1::Gap {
                    reason: v1::GapReason::Evicted as i32,
                    first_missing_seq: seq,
                    last_missing_seq: seq,
                    start_time_unix_ms: 1,
                    end_time_unix_ms: 2,
                })),
            })
            .collect();
        let stored = StoredBatch {
            records: records.iter().map(|r| r.encode_to_vec().into()).collect(),
        };
        let typed = v1::StreamTelemetryResponse {
            records: records.clone(),
        };
        assert_eq!(stored.encode_to_vec(), typed.encode_to_vec());
        let back = v1::StreamTelemetryResponse::decode(stored.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.records, records);
        assert_eq!(StoredBatch::default().encode_to_vec(), Vec::<u8>::new());
    }
}
