//! Calls counted by method and gRPC status code, for the `/metrics` counter
//! `jex_agent_rpcs_total`.
//!
//! A call is counted once, when its status is known: from the response headers for an answer
//! without a body (a refusal, an error before any message), else from the trailers its body
//! ends with. A call whose body is dropped before its trailers (the client went away, the
//! connection was closed) is counted as `CANCELLED`. Methods are those of the role table
//! ([`super::auth::METHODS`]) plus `unknown` for any other path, so the label values are a fixed
//! set whatever a client sends.

use std::sync::atomic::{AtomicU64, Ordering};

use super::auth::METHODS;

/// The gRPC status codes by number (0 to 16), as their canonical names.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The method label of a path that is not in the role table.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Counts of finished calls, per method and code.
#[derive(Debug)]
pub struct CallCounts {
    /// `[method][code]`; the last method row is [`UNKNOWN_METHOD`].
    counts: Vec<[AtomicU64; CODE_NAMES.len()]>,
}

impl Default for CallCounts {
    fn default() -> Self {
        Self {
            counts: (0..=METHODS.len())
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
        }
    }
}

impl CallCounts {
    /// The row of a request path.
    pub fn method_index(path: &str) -> usize {
        METHODS
            .iter()
            .position(|m| m.path == path)
            .unwrap_or(METHODS.len())
    }

    /// Counts one finished call; a code outside 0..=16 counts as `UNKNOWN`.
    pub fn record(&self, method: usize, code: i32) {
        let code = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODE_NAMES.len())
            .unwrap_or(2);
        if let Some(row) = self.counts.get(method) {
            row[code].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every (method, code, count) with a count above zero.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (i, row) in self.counts.iter().enumerate() {
            let method = METHODS.get(i).map_or(UNKNOWN_METHOD, |m| m.path);
            for (code, n) in CODE_NAMES.iter().zip(row) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    out.push((method, *code, n));
                }
            }
        }
        out
    }
}

/// The `grpc-status` of a header map, if it has one.
pub fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A call whose status is not known yet: counted when [`Pending::finish`] is called, or as
/// `CANCELLED` when dropped first.
#[derive(Debug)]
pub struct Pending {
    counts: std::sync::Arc<CallCounts>,
    method: usize,
    done: bool,
}

impl Pending {
    /// A call of `method` (a row of [`CallCounts::method_index`]).
    pub fn new(counts: std::sync::Arc<CallCounts>, method: usize) -> Self {
        Self {
            counts,
            method,
            done: false,
        }
    }

    /// Counts the call with `code` (once; later calls do nothing).
    pub fn finish(&mut self, code: i32) {
        if !self.done {
            self.done = true;
            self.counts.record(self.method, code);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_method_and_code_with_unknown_paths_pooled() {
        let counts = std::sync::Arc::new(CallCounts::default());
        let get_host = CallCounts::method_index("/jex.agent.v1.NodeAgent/GetHost");
        assert!(get_host < METHODS.len());
        counts.record(get_host, 0);
        counts.record(get_host, 0);
        counts.record(CallCounts::method_index("/x.Y/Z"), 12);
        counts.record(CallCounts::method_index("/a.B/C"), 99);
        {
            let mut done = Pending::new(counts.clone(), get_host);
            done.finish(7);
            done.finish(0);
        }
        drop(Pending::new(counts.clone(), get_host));
        assert_eq!(
            counts.snapshot(),
            vec![
                ("/jex.agent.v1.NodeAgent/GetHost", "OK", 2),
                ("/jex.agent.v1.NodeAgent/GetHost", "CANCELLED", 1),
                ("/jex.agent.v1.NodeAgent/GetHost", "PERMISSION_DENIED", 1),
                ("unknown", "UNKNOWN", 1),
                ("unknown", "UNIMPLEMENTED", 1),
            ]
        );
    }

    #[test]
    fn the_status_is_read_from_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(status_of(&h), Some(16));
    }
}
