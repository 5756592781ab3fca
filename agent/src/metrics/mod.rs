//! The Prometheus `/metrics` endpoint, on a listener of its own (`[metrics]` in the
//! configuration): the agent's health and the host aggregates the telemetry stream carries,
//! never anything of the tenant's.
//!
//! - `encode`: the two exposition formats (Prometheus text 0.0.4 and OpenMetrics 1.0.0) as
//!   pure functions, and the choice between them from the `Accept` header;
//! - `collect`: the families, read from the running agent's parts at each scrape (the counters
//!   are the parts' own: refusals, calls, sampler ticks, log lines dropped; nothing is counted
//!   twice);
//! - `serve`: the listener, bounded like the gRPC edge (a cap on connections, a header-read
//!   timeout and a whole-request deadline, a small request size, `GET` and `HEAD` of
//!   `/metrics` only), plain HTTP on loopback or HTTPS with client certificates from the fleet
//!   CA for the observer and controller roles.
//!
//! Names: `jex_agent_*` for the agent, `process_*` for its own process (the names every
//! Prometheus client library uses), `jex_host_*` for the host figures (node_exporter's naming
//! under the agent's prefix: the figures come from the last sample, not from the moment of the
//! scrape, and a host scraped by both the agent and node_exporter keeps two distinct series).

pub(crate) mod collect;
pub mod encode;
pub(crate) mod serve;

pub use collect::host_families;
pub use encode::{Family, Format, Kind, Value, encode, negotiate};
