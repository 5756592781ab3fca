//! What the agent knows of each connection, and the rules that bound them.
//!
//! - [`Tracker`]: admission, counted from TCP accept. The total is shared ([`Caps`]) so that
//!   connections with a verified client certificate never compete with the others: handshakes
//!   in progress and connections without a certificate each have a small share of their own,
//!   where a newcomer evicts the oldest connection of the address holding the most, and
//!   verified connections have the rest. Per address, connections before verification and
//!   verified ones are capped apart. A [`Permit`] follows its connection from share to share
//!   and gives the place back when dropped.
//! - [`ConnState`]: per connection, the open streams (a call admitted until its response body
//!   is dropped), whether any request came, when the last stream ended, and whether a call was
//!   refused for want of a certificate. [`verdict`] turns that into "keep it" or "close it, and
//!   why": no request before the first-request deadline, idle (no open stream) for the idle
//!   deadline, or refused. Keepalive pings are not activity: a connection that only answers
//!   them is idle.
//! - [`ConnInfo`]: what each request of a connection carries in its extensions (peer address,
//!   verified certificates, the state above).
//! - [`Tracked`]: the response body that holds a stream open until it is dropped, and remaps
//!   the status of tonic's decode errors in trailers (see [`super::grpc_error::remap_codec_status`]).

use std::collections::{BTreeMap, HashMap};
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

/// Caps on connections held at once, and how the total is shared.
///
/// The total is split so that connections with a verified client certificate never compete
/// with the others: handshakes in progress get [`Caps::handshakes`], connections that finished
/// their handshake without a certificate get [`Caps::unverified`], connections closed to make
/// room but not yet gone get [`Caps::draining`], and verified connections get the rest
/// ([`Caps::verified`]). Build it with [`Caps::shared`], which keeps every share within the
/// total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// In total (every share below adds up to it).
    pub total: u32,
    /// From one IP address, counted apart for verified connections and for the others.
    pub per_peer: u32,
    /// Handshakes in progress.
    pub handshakes: u32,
    /// Connections without a client certificate.
    pub unverified: u32,
}

impl Caps {
    /// The caps with the two shares before verification fitted into `total`: handshakes at
    /// most a third of it, connections without a certificate at most a sixth (each at least
    /// one).
    pub fn shared(total: u32, per_peer: u32, handshakes: u32, unverified: u32) -> Self {
        let total = total.max(1);
        Self {
            total,
            per_peer: per_peer.clamp(1, total),
            handshakes: handshakes.clamp(1, (total / 3).max(1)),
            unverified: unverified.clamp(1, (total / 6).max(1)),
        }
    }

    /// Connections closed to make room that may still hold their socket; while that many are
    /// closing, the agent accepts nothing new (the kernel's backlog holds the newcomers).
    pub fn draining(&self) -> u32 {
        (self.handshakes / 4).max(1)
    }

    /// Connections with a verified client certificate: the rest of the total (at least one).
    pub fn verified(&self) -> u32 {
        self.total
            .saturating_sub(self.handshakes + self.unverified + self.draining())
            .max(1)
    }
}

/// Where a connection stands, for the shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// TCP accepted, TLS handshake in progress.
    Handshake,
    /// TLS done without a client certificate.
    Unverified,
    /// TLS done with a certificate the fleet CA verified.
    Verified,
    /// Closed to make room; its socket is on its way out.
    Draining,
}

/// Set when a connection must close to make room for a newer one.
#[derive(Debug, Default)]
struct Eviction {
    evicted: std::sync::atomic::AtomicBool,
    notify: Notify,
}

/// One share before verification: its connections by address, oldest first, so that the one
/// to evict is the oldest of the address holding the most.
#[derive(Debug, Default)]
struct Pool {
    by_ip: HashMap<IpAddr, BTreeMap<u64, Arc<Eviction>>>,
    len: u32,
}

impl Pool {
    fn insert(&mut self, ip: IpAddr, id: u64, eviction: Arc<Eviction>) {
        self.by_ip.entry(ip).or_default().insert(id, eviction);
        self.len += 1;
    }

    fn remove(&mut self, ip: IpAddr, id: u64) {
        if let Some(mine) = self.by_ip.get_mut(&ip)
            && mine.remove(&id).is_some()
        {
            self.len -= 1;
            if mine.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Takes out the oldest connection of the address holding the most (ties: the address
    /// whose oldest is oldest). A client alone on its address is only taken when every other
    /// address holds one connection too: a crowd must spread over as many addresses as the
    /// share holds to push out a lone client's handshake.
    fn evict(&mut self) -> Option<(IpAddr, u64, Arc<Eviction>)> {
        let (ip, _) = self
            .by_ip
            .iter()
            .filter_map(|(ip, m)| Some((*ip, (m.len(), std::cmp::Reverse(*m.keys().next()?)))))
            .max_by_key(|(_, rank)| *rank)?;
        let mine = self.by_ip.get_mut(&ip)?;
        let (id, eviction) = mine.pop_first()?;
        if mine.is_empty() {
            self.by_ip.remove(&ip);
        }
        self.len -= 1;
        Some((ip, id, eviction))
    }
}

#[derive(Debug, Default)]
struct Counts {
    next_id: u64,
    class: HashMap<u64, Class>,
    handshakes: Pool,
    unverified: Pool,
    verified: u32,
    draining: u32,
    /// Handshakes and unverified connections per address.
    before_verification: HashMap<IpAddr, u32>,
    /// Verified connections per address.
    verified_per_peer: HashMap<IpAddr, u32>,
}

fn decrement(map: &mut HashMap<IpAddr, u32>, ip: IpAddr) {
    if let Some(n) = map.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&ip);
        }
    }
}

impl Counts {
    fn total(&self) -> u32 {
        self.handshakes.len + self.unverified.len + self.verified + self.draining
    }

    /// Moves an evicted connection to draining and tells its task.
    fn drain(&mut self, ip: IpAddr, id: u64, eviction: &Eviction) {
        decrement(&mut self.before_verification, ip);
        self.class.insert(id, Class::Draining);
        self.draining += 1;
        eviction
            .evicted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        eviction.notify.notify_one();
    }
}

/// Counts connections against the caps and their shares.
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

    /// Connections held now (every share, closing ones included).
    pub fn open(&self) -> u32 {
        self.lock().total()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place among the handshakes for a connection from `ip`; when that share is full,
    /// the oldest handshake of the address holding the most is evicted to make room. Refused
    /// only when `ip` holds its cap of connections without a verified certificate.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Reason> {
        let mut c = self.lock();
        if c.before_verification.get(&ip).copied().unwrap_or(0) >= self.caps.per_peer {
            return Err(Reason::OverPeerCap);
        }
        if c.handshakes.len >= self.caps.handshakes
            && let Some((victim_ip, victim, eviction)) = c.handshakes.evict()
        {
            c.drain(victim_ip, victim, &eviction);
        }
        let id = c.next_id;
        c.next_id += 1;
        let eviction = Arc::new(Eviction::default());
        c.handshakes.insert(ip, id, eviction.clone());
        c.class.insert(id, Class::Handshake);
        *c.before_verification.entry(ip).or_default() += 1;
        Ok(Permit {
            tracker: self.clone(),
            ip,
            id,
            eviction,
        })
    }

    /// Waits while [`Caps::draining`] connections are closing: the accept loop calls it before
    /// each accept, so that evictions cannot run ahead of the sockets actually closed. (An
    /// eviction for a connection leaving its handshake can land between this check and the
    /// accept's own eviction: the sockets held then exceed the total by one, for an instant.)
    pub async fn room(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.lock().draining < self.caps.draining() {
                return;
            }
            released.await;
        }
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
    id: u64,
    eviction: Arc<Eviction>,
}

impl Permit {
    /// Completes when the connection was evicted to make room for a newer one (it must close
    /// now). Pending forever for a verified connection.
    pub async fn evicted(&self) {
        loop {
            let notified = self.eviction.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .eviction
                .evicted
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            notified.await;
        }
    }

    /// The handshake verified a client certificate: the connection moves to the verified share.
    /// Refused (the connection must close) when that share, or this address's part of it, is
    /// full, or when the connection was evicted meanwhile.
    pub fn verified(&self) -> Result<(), Reason> {
        let caps = self.tracker.caps;
        let mut c = self.tracker.lock();
        if c.class.get(&self.id) != Some(&Class::Handshake) {
            return Err(Reason::EvictedHandshake);
        }
        if c.verified >= caps.verified() {
            return Err(Reason::OverVerifiedCap);
        }
        if c.verified_per_peer.get(&self.ip).copied().unwrap_or(0) >= caps.per_peer {
            return Err(Reason::OverPeerCap);
        }
        c.handshakes.remove(self.ip, self.id);
        decrement(&mut c.before_verification, self.ip);
        c.verified += 1;
        *c.verified_per_peer.entry(self.ip).or_default() += 1;
        c.class.insert(self.id, Class::Verified);
        Ok(())
    }

    /// The handshake finished without a client certificate: the connection moves to the
    /// unverified share, evicting the oldest connection of the address holding the most there
    /// when it is full. When as many connections are already closing as may be
    /// ([`Caps::draining`]), this one is refused instead (it must close).
    pub fn unverified(&self) -> Result<(), Reason> {
        let caps = self.tracker.caps;
        let mut c = self.tracker.lock();
        if c.class.get(&self.id) != Some(&Class::Handshake) {
            return Err(Reason::EvictedHandshake);
        }
        if c.unverified.len >= caps.unverified {
            if c.draining >= caps.draining() {
                return Err(Reason::EvictedUnverified);
            }
            if let Some((ip, id, eviction)) = c.unverified.evict() {
                c.drain(ip, id, &eviction);
            }
        }
        c.handshakes.remove(self.ip, self.id);
        c.unverified.insert(self.ip, self.id, self.eviction.clone());
        c.class.insert(self.id, Class::Unverified);
        Ok(())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.tracker.lock();
        match c.class.remove(&self.id) {
            Some(Class::Handshake) => {
                c.handshakes.remove(self.ip, self.id);
                decrement(&mut c.before_verification, self.ip);
            }
            Some(Class::Unverified) => {
                c.unverified.remove(self.ip, self.id);
                decrement(&mut c.before_verification, self.ip);
            }
            Some(Class::Verified) => {
                c.verified = c.verified.saturating_sub(1);
                decrement(&mut c.verified_per_peer, self.ip);
            }
            Some(Class::Draining) => c.draining = c.draining.saturating_sub(1),
            None => {}
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

/// A response body that keeps its stream counted as open until it is dropped, gives tonic's
/// decode errors in trailers their conventional status codes, and counts the call by the
/// status its trailers carry (see [`super::calls`]).
pub struct Tracked {
    inner: tonic::body::Body,
    _stream: StreamGuard,
    call: Option<super::calls::Pending>,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").finish_non_exhaustive()
    }
}

impl Tracked {
    /// Wraps `inner`, holding `stream` open; `call`, when given, is counted with the status of
    /// the trailers (or as cancelled if the body is dropped before them).
    pub fn new(
        inner: tonic::body::Body,
        stream: StreamGuard,
        call: Option<super::calls::Pending>,
    ) -> Self {
        Self {
            inner,
            _stream: stream,
            call,
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
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        let call = &mut this.call;
        frame.map(|f| {
            f.map(|r| {
                r.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        super::grpc_error::remap_codec_status(&mut trailers);
                        if let (Some(call), Some(code)) =
                            (call.as_mut(), super::calls::status_of(&trailers))
                        {
                            call.finish(code);
                        }
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

    fn ip(a: u8, b: u8) -> IpAddr {
        [127, 0, a, b].into()
    }

    fn is_evicted(p: &Permit) -> bool {
        p.eviction.evicted.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn the_total_is_shared_and_every_share_fits_in_it() {
        // The defaults at an open-file limit of 1024 (768) and of 8192 (1024).
        let c = Caps::shared(768, 64, 256, 128);
        assert_eq!((c.handshakes, c.unverified, c.draining()), (256, 128, 64));
        assert_eq!(c.verified(), 320);
        let c = Caps::shared(1024, 64, 256, 128);
        assert_eq!(c.verified(), 576);
        // Small totals: shares shrink, none is zero, none overflows the total.
        for total in 1..200 {
            let c = Caps::shared(total, 64, 256, 128);
            assert!(c.handshakes >= 1 && c.unverified >= 1 && c.verified() >= 1);
            if total >= 6 {
                assert_eq!(
                    c.handshakes + c.unverified + c.draining() + c.verified(),
                    total,
                    "total {total}"
                );
            }
        }
    }

    #[test]
    fn a_full_handshake_share_evicts_the_oldest_of_the_address_holding_the_most() {
        let t = Tracker::new(Caps::shared(60, 64, 4, 2));
        assert_eq!(t.caps().handshakes, 4);
        let lone = t.admit(ip(0, 1)).expect("the controller's handshake");
        let crowd: Vec<_> = [ip(1, 1), ip(1, 2), ip(1, 1)]
            .into_iter()
            .map(|a| t.admit(a).expect("admitted"))
            .collect();
        // Full: the next one evicts 127.0.1.1's oldest (it holds two), not the older lone one.
        let _new = t.admit(ip(1, 3)).expect("admitted by evicting");
        assert!(is_evicted(&crowd[0]));
        assert!(!is_evicted(&lone) && !is_evicted(&crowd[1]) && !is_evicted(&crowd[2]));
        assert_eq!(
            t.open(),
            5,
            "the evicted one holds its socket until it closes"
        );
        // When every address holds one, the oldest goes: the lone client too, at last.
        drop(crowd);
        let _b = t.admit(ip(1, 4)).expect("admitted");
        let _c = t.admit(ip(1, 5)).expect("admitted");
        let _d = t.admit(ip(1, 6)).expect("admitted, evicting the oldest");
        assert!(is_evicted(&lone));
    }

    #[test]
    fn verified_connections_never_compete_with_the_others() {
        let t = Tracker::new(Caps::shared(12, 64, 4, 2));
        let caps = t.caps();
        assert_eq!(
            (caps.handshakes, caps.unverified, caps.verified()),
            (4, 2, 5)
        );
        // Verified connections up to their share.
        let mut verified = Vec::new();
        for i in 0..5 {
            let p = t.admit(ip(0, 1)).expect("admitted");
            p.verified().expect("verified");
            verified.push((i, p));
        }
        let over = t.admit(ip(0, 1)).expect("admitted as a handshake");
        assert_eq!(over.verified(), Err(Reason::OverVerifiedCap));
        drop(over);
        // A crowd without certificates churning through both of its shares...
        let mut held = Vec::new();
        for i in 0..200u8 {
            let p = t.admit(ip(2, i)).expect("a handshake always gets in");
            if i % 2 == 0 {
                // Refused when too many are still closing: the connection closes.
                let _ = p.unverified();
            }
            held.push(p);
            // Evicted ones close (their task drops the permit).
            held.retain(|p| !is_evicted(p));
        }
        // ... never took a verified place, and a new controller connection still gets one.
        assert!(verified.iter().all(|(_, p)| !is_evicted(p)));
        drop(verified.pop());
        let fresh = t.admit(ip(0, 1)).expect("admitted");
        assert_eq!(fresh.verified(), Ok(()));
        assert!(t.open() <= caps.total, "{} open", t.open());
    }

    #[test]
    fn the_per_peer_cap_counts_before_and_after_verification_apart() {
        let t = Tracker::new(Caps::shared(100, 2, 30, 10));
        let a = ip(3, 1);
        let v1 = t.admit(a).expect("first");
        v1.verified().expect("verified");
        let h1 = t.admit(a).expect("second");
        let h2 = t
            .admit(a)
            .expect("third: the verified one is counted apart");
        assert_eq!(t.admit(a).err(), Some(Reason::OverPeerCap));
        h1.verified().expect("a second verified one");
        let h3 = t.admit(a).expect("h1 left the handshakes");
        assert_eq!(h3.verified(), Err(Reason::OverPeerCap));
        drop(h2);
        drop(v1);
        assert_eq!(t.open(), 2);
    }

    #[tokio::test]
    async fn accepting_waits_while_too_many_evicted_connections_are_closing() {
        let t = Tracker::new(Caps::shared(24, 64, 4, 2));
        assert_eq!(t.caps().draining(), 1);
        let first = t.admit(ip(4, 1)).expect("admitted");
        let _rest: Vec<_> = (2..=4)
            .map(|i| t.admit(ip(4, i)).expect("admitted"))
            .collect();
        let _new = t.admit(ip(4, 5)).expect("evicts the oldest");
        assert!(is_evicted(&first));
        first.evicted().await;
        // One closing: the next accept waits until it is gone.
        let room = tokio::time::timeout(Duration::from_millis(50), t.room()).await;
        assert!(
            room.is_err(),
            "accepted while the evicted one still held its socket"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), t.room())
            .await
            .expect("room once it closed");
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
