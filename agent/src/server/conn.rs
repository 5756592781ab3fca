//! What the agent knows of each connection, and the rules that bound them.
//!
//! - [`Tracker`]: the total and per-peer connection caps, counted from TCP accept (a TLS
//!   handshake in progress holds its place); a [`Permit`] gives the place back when dropped.
//! - [`ConnState`]: per connection, the open streams (a call admitted until its response body
//!   is dropped), whether any request came, when the last stream ended, and whether a call was
//!   refused for want of a certificate. [`verdict`] turns that into "keep it" or "close it, and
//!   why": no request before the first-request deadline, idle (no open stream) for the idle
//!   deadline, or refused. Keepalive pings are not activity: a connection that only answers
//!   them is idle.
//! - [`ConnInfo`]: what each request of a connection carries in its extensions (peer address,
//!   verified certificates, the state above).
//! - [`Tracked`]: the response body that holds a stream open until it is dropped, and remaps
//!   the status of tonic's decode errors in trailers (see [`super::status::remap_codec_status`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::codegen::Bytes;

use super::refusals::Reason;

/// File descriptors kept for everything but network connections: the spool, the erase journal
/// and its devices, log files, the status socket and its connections, tool pipes, the runtime.
pub const FD_RESERVE: u64 = 256;

/// The total connection cap that fits an open-file limit: the configured cap, lowered so that
/// [`FD_RESERVE`] descriptors stay free (or half the limit, when the limit is that small).
pub fn connection_budget(configured: u32, nofile: u64) -> u32 {
    let room = nofile.saturating_sub(FD_RESERVE).max(nofile / 2).max(1);
    u32::try_from(room).map_or(configured, |room| configured.min(room))
}

/// Caps on connections held at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// In total.
    pub total: u32,
    /// From one IP address.
    pub per_peer: u32,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_peer: HashMap<IpAddr, u32>,
}

/// Counts connections against the caps.
#[derive(Debug)]
pub struct Tracker {
    caps: Caps,
    counts: Mutex<Counts>,
    released: Notify,
}

impl Tracker {
    /// A tracker with these caps.
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            counts: Mutex::new(Counts::default()),
            released: Notify::new(),
        })
    }

    /// The caps.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Connections held now.
    pub fn open(&self) -> u32 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `ip`, or says which cap it is over.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Reason> {
        let mut c = self.lock();
        if c.total >= self.caps.total {
            return Err(Reason::OverTotalCap);
        }
        let mine = c.per_peer.entry(ip).or_default();
        if *mine >= self.caps.per_peer {
            return Err(Reason::OverPeerCap);
        }
        *mine += 1;
        c.total += 1;
        Ok(Permit {
            tracker: self.clone(),
            ip,
        })
    }

    /// Waits until no connection is held.
    pub async fn drained(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            released.await;
        }
    }
}

/// A connection's place under the caps; given back on drop.
#[derive(Debug)]
pub struct Permit {
    tracker: Arc<Tracker>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.tracker.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_peer.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&self.ip);
            }
        }
        drop(c);
        self.tracker.released.notify_waiters();
    }
}

/// What happened on a connection so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// When TCP accepted it.
    pub accepted: Instant,
    /// Streams open now.
    pub open_streams: u32,
    /// Requests seen since accept.
    pub requests: u64,
    /// When the last stream ended (or `accepted`).
    pub last_stream_end: Instant,
    /// A call was refused for want of a client certificate.
    pub refused: bool,
}

/// Why the agent closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No request before the first-request deadline.
    NoRequest,
    /// No open stream for the idle deadline.
    Idle,
    /// Its call was refused with `UNAUTHENTICATED`, and the answer has been handed over.
    Refused,
}

/// Keep a connection (until a deadline, if any) or close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it; look again at this instant (or when something changes).
    Keep(Option<Instant>),
    /// Close it.
    Close(CloseReason),
}

/// The deadlines a connection lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From accept to the first request.
    pub first_request: Duration,
    /// With no open stream.
    pub idle: Duration,
}

/// The rule: a refused connection closes once its answers are handed over; an open stream
/// keeps any other connection; without one, the first-request deadline applies until a request
/// came, the idle deadline after.
pub fn verdict(a: &Activity, now: Instant, d: Deadlines) -> Verdict {
    if a.refused && a.open_streams == 0 {
        return Verdict::Close(CloseReason::Refused);
    }
    if a.open_streams > 0 {
        return Verdict::Keep(None);
    }
    let (deadline, reason) = if a.requests == 0 {
        (a.accepted + d.first_request, CloseReason::NoRequest)
    } else {
        (a.last_stream_end + d.idle, CloseReason::Idle)
    };
    if now >= deadline {
        Verdict::Close(reason)
    } else {
        Verdict::Keep(Some(deadline))
    }
}

/// The live state of one connection.
#[derive(Debug)]
pub struct ConnState {
    activity: Mutex<Activity>,
    changed: Notify,
}

impl ConnState {
    /// A connection accepted at `accepted`.
    pub fn new(accepted: Instant) -> Arc<Self> {
        Arc::new(Self {
            activity: Mutex::new(Activity {
                accepted,
                open_streams: 0,
                requests: 0,
                last_stream_end: accepted,
                refused: false,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot.
    pub fn activity(&self) -> Activity {
        *self.lock()
    }

    /// Counts a new stream; it stays open until the guard is dropped.
    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        {
            let mut a = self.lock();
            a.open_streams += 1;
            a.requests += 1;
        }
        self.changed.notify_one();
        StreamGuard(self.clone())
    }

    /// Marks the connection for closing once its open streams are done.
    pub fn refuse(&self) {
        self.lock().refused = true;
        self.changed.notify_one();
    }

    /// Completes when something changed since the last call returned.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// An open stream; ends when dropped.
#[derive(Debug)]
pub struct StreamGuard(Arc<ConnState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        {
            let mut a = self.0.lock();
            a.open_streams = a.open_streams.saturating_sub(1);
            a.last_stream_end = Instant::now();
        }
        self.0.changed.notify_one();
    }
}

/// What every request of a connection carries in its extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The verified client certificate chain, leaf first; `None` without a certificate.
    pub peer_certs: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
    /// The connection's live state.
    pub state: Arc<ConnState>,
}

/// A response body that keeps its stream counted as open until it is dropped, and gives
/// tonic's decode errors in trailers their conventional status codes.
pub struct Tracked {
    inner: tonic::body::Body,
    _stream: StreamGuard,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").finish_non_exhaustive()
    }
}

impl Tracked {
    /// Wraps `inner`, holding `stream` open.
    pub fn new(inner: tonic::body::Body, stream: StreamGuard) -> Self {
        Self {
            inner,
            _stream: stream,
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        frame.map(|f| {
            f.map(|r| {
                r.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        super::status::remap_codec_status(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Deadlines = Deadlines {
        first_request: Duration::from_secs(10),
        idle: Duration::from_secs(300),
    };

    fn fresh(t0: Instant) -> Activity {
        Activity {
            accepted: t0,
            open_streams: 0,
            requests: 0,
            last_stream_end: t0,
            refused: false,
        }
    }

    #[test]
    fn a_silent_connection_closes_at_the_first_request_deadline() {
        let t0 = Instant::now();
        let a = fresh(t0);
        assert_eq!(
            verdict(&a, t0 + Duration::from_secs(9), D),
            Verdict::Keep(Some(t0 + D.first_request))
        );
        assert_eq!(
            verdict(&a, t0 + D.first_request, D),
            Verdict::Close(CloseReason::NoRequest)
        );
    }

    #[test]
    fn an_open_stream_keeps_a_connection_whatever_the_time() {
        let t0 = Instant::now();
        let a = Activity {
            open_streams: 1,
            requests: 1,
            ..fresh(t0)
        };
        assert_eq!(
            verdict(&a, t0 + Duration::from_secs(86_400), D),
            Verdict::Keep(None)
        );
    }

    #[test]
    fn without_a_stream_the_idle_deadline_runs_from_the_last_stream_end() {
        let t0 = Instant::now();
        let ended = t0 + Duration::from_secs(60);
        let a = Activity {
            requests: 3,
            last_stream_end: ended,
            ..fresh(t0)
        };
        assert_eq!(
            verdict(&a, ended + Duration::from_secs(299), D),
            Verdict::Keep(Some(ended + D.idle))
        );
        assert_eq!(
            verdict(&a, ended + D.idle, D),
            Verdict::Close(CloseReason::Idle)
        );
    }

    #[test]
    fn a_refused_connection_closes_once_its_answer_is_handed_over() {
        let t0 = Instant::now();
        let refusing = Activity {
            open_streams: 1,
            requests: 1,
            refused: true,
            ..fresh(t0)
        };
        assert_eq!(verdict(&refusing, t0, D), Verdict::Keep(None));
        let answered = Activity {
            open_streams: 0,
            ..refusing
        };
        assert_eq!(
            verdict(&answered, t0, D),
            Verdict::Close(CloseReason::Refused)
        );
    }

    #[test]
    fn caps_count_from_admission_and_give_places_back() {
        let t = Tracker::new(Caps {
            total: 3,
            per_peer: 2,
        });
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let p1 = t.admit(a).expect("first");
        let _p2 = t.admit(a).expect("second");
        assert_eq!(t.admit(a).err(), Some(Reason::OverPeerCap));
        let _p3 = t.admit(b).expect("another peer");
        assert_eq!(t.admit(b).err(), Some(Reason::OverTotalCap));
        drop(p1);
        assert_eq!(t.open(), 2);
        let _p4 = t.admit(a).expect("a place was given back");
    }

    #[test]
    fn the_total_cap_leaves_file_descriptors_for_the_rest() {
        // launchd's 8192: the configured cap fits.
        assert_eq!(connection_budget(1024, 8192), 1024);
        // A 1024 limit keeps FD_RESERVE free.
        assert_eq!(connection_budget(1024, 1024), 768);
        // A tiny limit: half of it.
        assert_eq!(connection_budget(1024, 256), 128);
        assert_eq!(connection_budget(1024, u64::MAX), 1024);
        assert_eq!(connection_budget(1024, 0), 1);
    }
}
