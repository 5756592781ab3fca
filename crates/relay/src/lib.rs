//! `jex-relay`: the controller side of the fleet's telemetry. It follows `StreamTelemetry`
//! from every agent of its host list over mTLS (an observer certificate of the fleet CA),
//! resumes each host from the last message NATS JetStream stored for it, and lands every
//! record there exactly once and in order (one subject per host, the record's protobuf as the
//! payload, gap records and spool resets as explicit markers), and optionally as samples in
//! Prometheus remote_write.
//!
//! - [`config`]: the TOML file (`[tls]`, `[[hosts]]`, `[jetstream]`, `[remote_write]`,
//!   `[metrics]`, `[follow]`), validated with line and key in every refusal;
//! - [`layout`]: the JetStream subject and message layout, the contract controllers consume;
//! - [`jetstream`]: the stream, the cursor and the publishes;
//! - [`remote_write`]: the Prometheus remote_write 1.0 encoding and client (HTTP, or HTTPS
//!   with the receiver's CA and an optional client certificate);
//! - [`tls`]: the TLS client settings of both peers (TLS 1.3 only, the configured CA only);
//! - [`sink`]: the store (exactly once, the resume cursor) and sink traits the follower
//!   writes through;
//! - [`follow`]: one host's sessions, backpressure and reconnects;
//! - [`backoff`]: jittered exponential backoff;
//! - [`metrics`]: the relay's own `/metrics`;
//! - [`run`]: the process, its follower tasks and SIGHUP reloads;
//! - [`cli`]: the command line.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod config;
pub mod follow;
pub mod jetstream;
pub mod layout;
pub mod metrics;
pub mod remote_write;
pub mod run;
pub mod sink;
pub mod tls;
