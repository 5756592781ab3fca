//! The local status socket: `jex-agent status` and `jex-agent erase-plan`, run as root on the
//! host, read the running agent's state through a Unix domain socket (mode 0600, so root only)
//! — no network and no certificates needed.
//!
//! - `protocol`: the request grammar and the documents answered ([`AgentReport`]);
//! - `server`: the socket, served on a thread and runtime of its own with its own connection
//!   cap, so that nothing on the network side can starve it;
//! - `client`: what the command line uses to ask;
//! - `view`: the running agent's parts turned into an [`AgentReport`] or an erase plan;
//! - `render`: those documents as text for a person.
//!
//! The word "status" stays in the command's name (`jex-agent status`) only; what it reads is an
//! [`AgentReport`], and the gRPC status codes live in `server::grpc_error`.

pub(crate) mod client;
mod error;
pub(crate) mod protocol;
pub(crate) mod render;
pub(crate) mod server;
pub(crate) mod view;

pub use client::{ask, query, query_blocking};
pub use error::LocalSocketError;
pub use protocol::{
    AgentReport, ConnectionsReport, EraseReport, Line, MAX_REQUEST_BYTES, Query, REQUEST_ERROR,
    REQUEST_TIMEOUT, StreamReport, TelemetryReport, parse_request, read_request,
};
pub use server::{LocalSocketServer, Responder, serve};

#[cfg(test)]
mod tests;
