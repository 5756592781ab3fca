//! placeholder until the hub lands: same public shape, no behaviour.

use futures::Stream;

use super::sample::Record;

/// The hub failed.
#[derive(Debug, thiserror::Error)]
#[error("hub unavailable")]
pub struct HubError;

/// Placeholder hub.
#[derive(Debug, Clone, Default)]
pub struct Hub;

impl Hub {
    /// Subscribes.
    pub fn subscribe(
        &self,
        _after_seq: u64,
        _max_batch: usize,
        _history_only: bool,
    ) -> impl Stream<Item = Result<Vec<Record>, HubError>> + Send + 'static {
        futures::stream::empty()
    }
}
