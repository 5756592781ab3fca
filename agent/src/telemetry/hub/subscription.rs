//! Subscriptions: a stream of record batches after a cursor, first from the spool and then from
//! the live channel, back to the spool whenever it falls behind or sees a hole.

use super::*;

/// A stream of record batches; see [`Hub::subscribe`].
pub struct Subscription {
    pub(super) inner: BoxStream<'static, Result<Vec<WireRecord>, HubError>>,
}

impl Stream for Subscription {
    type Item = Result<Vec<WireRecord>, HubError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Counts a subscription for as long as it exists.
pub(super) struct SubscriberCount(Arc<Shared>);

impl SubscriberCount {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        shared.subscribers.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for SubscriberCount {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a subscription reads its next batch. A subscription starts at [`Source::FirstRead`]
/// and ends at [`Source::Ended`]; it moves between [`Source::Spool`] and [`Source::Live`] as it
/// catches up and falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The first read of the spool, which also checks that the cursor is not beyond every
    /// number this agent has handed out.
    FirstRead,
    /// Replaying the spool from the cursor.
    Spool,
    /// Following the live channel.
    Live,
    /// The stream has yielded its last item (an error, or the end of a history-only read).
    Ended,
}

/// The state of one subscription.
pub(super) struct Follower {
    pub(super) shared: Arc<Shared>,
    /// `None` for history-only subscriptions and once the hub has stopped.
    pub(super) live: Option<broadcast::Receiver<WireRecord>>,
    /// The last number yielded (or the starting cursor).
    pub(super) cursor: u64,
    pub(super) max_batch: usize,
    /// Where the next batch comes from.
    pub(super) source: Source,
    pub(super) _count: SubscriberCount,
}

pub(super) type Step = Option<(Result<Vec<WireRecord>, HubError>, Follower)>;

impl Follower {
    pub(super) async fn step(mut self) -> Step {
        loop {
            match self.source {
                Source::Ended => return None,
                Source::FirstRead | Source::Spool => match self.read_spool().await {
                    Ok(batch) => {
                        if let Some(last) = batch.last() {
                            self.cursor = last.seq();
                            return Some((Ok(batch), self));
                        }
                        // Caught up: follow the live channel, or end when there is none.
                        self.live.as_ref()?;
                        self.source = Source::Live;
                    }
                    Err(err) => {
                        self.source = Source::Ended;
                        return Some((Err(err), self));
                    }
                },
                Source::Live => {
                    if let Some(batch) = self.read_live().await {
                        return Some((Ok(batch), self));
                    }
                }
            }
        }
    }

    /// One batch from the spool, off the runtime's workers.
    pub(super) async fn read_spool(&mut self) -> Result<Vec<WireRecord>, HubError> {
        let shared = Arc::clone(&self.shared);
        let (after_seq, max_batch) = (self.cursor, self.max_batch);
        let check = self.source == Source::FirstRead;
        let read = tokio::task::spawn_blocking(move || {
            let spool = lock(&shared.spool);
            let last_seq = spool.last_seq().unwrap_or(0);
            if check && after_seq > last_seq {
                return Err(HubError::CursorAhead {
                    after_seq,
                    last_seq,
                });
            }
            spool
                .read_after(after_seq, max_batch)
                .map(|items| items.into_iter().map(record_of_item).collect())
                .map_err(|source| HubError::ReadSpool { after_seq, source })
        })
        .await;
        if self.source == Source::FirstRead {
            self.source = Source::Spool;
        }
        read.map_err(|source| HubError::ReadTask { source })?
    }

    /// The next live batch, or `None` after switching back to the spool.
    pub(super) async fn read_live(&mut self) -> Option<Vec<WireRecord>> {
        let Some(live) = self.live.as_mut() else {
            self.source = Source::Spool;
            return None;
        };
        let first = match live.recv().await {
            Ok(record) => record,
            Err(RecvError::Lagged(missed)) => {
                debug!(
                    missed,
                    cursor = self.cursor,
                    "Subscriber fell behind the live channel; reading the spool."
                );
                self.source = Source::Spool;
                return None;
            }
            Err(RecvError::Closed) => {
                // The hub stopped: catch up from the spool, then end.
                self.live = None;
                self.source = Source::Spool;
                return None;
            }
        };
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(record) = next.take() {
            if record.seq() <= self.cursor {
                // Already read from the spool.
            } else if record.seq() == self.cursor + 1 {
                self.cursor = record.seq();
                batch.push(record);
                if batch.len() >= self.max_batch {
                    break;
                }
            } else {
                // A hole: the missing records are in the spool.
                self.source = Source::Spool;
                break;
            }
            match live.try_recv() {
                Ok(record) => next = Some(record),
                Err(TryRecvError::Lagged(_)) => self.source = Source::Spool,
                Err(TryRecvError::Empty | TryRecvError::Closed) => {}
            }
        }
        (!batch.is_empty()).then_some(batch)
    }
}
