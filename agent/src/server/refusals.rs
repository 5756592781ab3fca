//! Refusals, logged so that a flood cannot fill the disk or bury earlier lines.
//!
//! Every refused call, failed TLS handshake, connection over a cap, connection closed for
//! sending no request, and failed accept goes through [`RefusalLog::refused`]. The first
//! refusal of a (peer, reason) pair is logged at once, with its detail; later ones are only
//! counted, and [`RefusalLog::flush`] (every [`WINDOW`]) writes one line per pair that had any:
//!
//! ```text
//! 12034 refusals from 127.0.0.2 in the last 10 s: no client certificate
//! ```
//!
//! Each cause is a reason of its own ([`Reason`]: a certificate refused as expired, not yet
//! valid, from an unknown issuer, … are separate), so the first refusal of a new cause from a
//! peer is logged at once with its detail even right after a flood of another cause.
//!
//! A pair with nothing to report at a flush is forgotten, so its next refusal is logged at once
//! again. At most [`MAX_TRACKED`] pairs are tracked; refusals beyond that are summed per reason
//! under "other peers". So a window logs at most two lines per tracked pair (and there are at
//! most peers × reasons pairs, and never more than [`MAX_TRACKED`]) plus one per reason,
//! however many refusals arrive.
//!
//! Every refusal is also added to a total per reason ([`RefusalLog::totals`]), never reset,
//! for the `/metrics` counter `jex_agent_refusals_total`. The gRPC edge and the metrics
//! listener each have a log of their own ([`RefusalLog::for_listener`]), whose lines and totals
//! name the listener.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::tls::{CertificateProblem, HandshakeFailure};

/// How often counted refusals are summed up in the log.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The most (peer, reason) pairs tracked at once.
pub const MAX_TRACKED: usize = 256;

/// Why a client was refused or cut off: one reason per cause, so that a cause a peer has not
/// met yet in this window is logged at once, with its detail, however many refusals of
/// another cause came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A call without a client certificate (`UNAUTHENTICATED`).
    NoCertificate,
    /// A certificate whose URI SANs hold no configured role (`PERMISSION_DENIED`).
    NoRole,
    /// A role calling a method it may not (`PERMISSION_DENIED`).
    NotAllowed,
    /// A method not in the table of roles (`UNIMPLEMENTED`).
    UnknownMethod,
    /// Plaintext or garbage on the TLS port.
    NotTls,
    /// The handshake refused the client's certificate, for this cause.
    Certificate(CertificateProblem),
    /// The client does not offer TLS 1.3.
    TlsVersion,
    /// The client shares no cipher suite, group or protocol with the agent.
    Incompatible,
    /// Any other handshake failure.
    HandshakeFailed,
    /// No request (TLS handshake and HTTP/2 preface included) before the first-request
    /// deadline.
    NoRequest,
    /// A connection still in its TLS handshake was closed to make room for a new one (the
    /// handshake share was full).
    EvictedHandshake,
    /// A connection without a client certificate was closed to make room for a new one (the
    /// share of connections without a certificate was full).
    EvictedUnverified,
    /// The share of connections with a verified certificate was full.
    OverVerifiedCap,
    /// The total connection cap was reached (the status socket's requests in progress).
    OverTotalCap,
    /// The client's address holds its cap of connections.
    OverPeerCap,
    /// `accept` failed.
    AcceptFailed,
}

impl Reason {
    /// Every reason, in order: what bounds the lines a window can write.
    pub const ALL: [Reason; 23] = {
        let [c0, c1, c2, c3, c4, c5, c6, c7] = CertificateProblem::ALL;
        [
            Reason::NoCertificate,
            Reason::NoRole,
            Reason::NotAllowed,
            Reason::UnknownMethod,
            Reason::NotTls,
            Reason::Certificate(c0),
            Reason::Certificate(c1),
            Reason::Certificate(c2),
            Reason::Certificate(c3),
            Reason::Certificate(c4),
            Reason::Certificate(c5),
            Reason::Certificate(c6),
            Reason::Certificate(c7),
            Reason::TlsVersion,
            Reason::Incompatible,
            Reason::HandshakeFailed,
            Reason::NoRequest,
            Reason::EvictedHandshake,
            Reason::EvictedUnverified,
            Reason::OverVerifiedCap,
            Reason::OverTotalCap,
            Reason::OverPeerCap,
            Reason::AcceptFailed,
        ]
    };

    /// The reason counted for a failed handshake.
    pub fn of_handshake(f: HandshakeFailure) -> Self {
        match f {
            HandshakeFailure::NotTls => Reason::NotTls,
            HandshakeFailure::Certificate(problem) => Reason::Certificate(problem),
            HandshakeFailure::TlsVersion => Reason::TlsVersion,
            HandshakeFailure::Incompatible => Reason::Incompatible,
            HandshakeFailure::Other => Reason::HandshakeFailed,
        }
    }

    /// The reason, as a log line says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoCertificate => "no client certificate",
            Reason::NoRole => "client certificate holds no role",
            Reason::NotAllowed => "method not allowed for the caller's role",
            Reason::UnknownMethod => "unknown method",
            Reason::NotTls => "not a TLS client",
            Reason::Certificate(p) => match p {
                CertificateProblem::Expired => "client certificate expired",
                CertificateProblem::NotYetValid => "client certificate not yet valid",
                CertificateProblem::UnknownIssuer => "client certificate from an unknown issuer",
                CertificateProblem::WrongUsage => {
                    "client certificate not issued for client authentication"
                }
                CertificateProblem::BadSignature => "client certificate signature does not verify",
                CertificateProblem::Revoked => "client certificate revoked",
                CertificateProblem::Missing => "no client certificate in the handshake",
                CertificateProblem::Other => "client certificate refused",
            },
            Reason::TlsVersion => "client incompatible (TLS 1.3 required)",
            Reason::Incompatible => {
                "client incompatible (no common cipher suite, group or protocol)"
            }
            Reason::HandshakeFailed => "TLS handshake failed",
            Reason::NoRequest => "no request before the first-request deadline",
            Reason::EvictedHandshake => "handshake closed to make room (handshake share full)",
            Reason::EvictedUnverified => {
                "connection without a certificate closed to make room (its share full)"
            }
            Reason::OverVerifiedCap => "over the verified connection cap",
            Reason::OverTotalCap => "over the total connection cap",
            Reason::OverPeerCap => "over the per-peer connection cap",
            Reason::AcceptFailed => "accept failed",
        }
    }

    /// The reason as a metric label value (snake case, stable).
    pub fn label(self) -> &'static str {
        match self {
            Reason::NoCertificate => "no_certificate",
            Reason::NoRole => "no_role",
            Reason::NotAllowed => "not_allowed",
            Reason::UnknownMethod => "unknown_method",
            Reason::NotTls => "not_tls",
            Reason::Certificate(p) => match p {
                CertificateProblem::Expired => "certificate_expired",
                CertificateProblem::NotYetValid => "certificate_not_yet_valid",
                CertificateProblem::UnknownIssuer => "certificate_unknown_issuer",
                CertificateProblem::WrongUsage => "certificate_wrong_usage",
                CertificateProblem::BadSignature => "certificate_bad_signature",
                CertificateProblem::Revoked => "certificate_revoked",
                CertificateProblem::Missing => "certificate_missing",
                CertificateProblem::Other => "certificate_other",
            },
            Reason::TlsVersion => "tls_version",
            Reason::Incompatible => "incompatible",
            Reason::HandshakeFailed => "handshake_failed",
            Reason::NoRequest => "no_request",
            Reason::EvictedHandshake => "evicted_handshake",
            Reason::EvictedUnverified => "evicted_unverified",
            Reason::OverVerifiedCap => "over_verified_cap",
            Reason::OverTotalCap => "over_total_cap",
            Reason::OverPeerCap => "over_peer_cap",
            Reason::AcceptFailed => "accept_failed",
        }
    }

    /// Its place in [`Reason::ALL`].
    fn index(self) -> usize {
        Reason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(Reason::ALL.len() - 1)
    }

    /// The message of the immediate line, by kind (what an SRE greps for).
    fn message(self) -> &'static str {
        match self {
            Reason::NoCertificate | Reason::NoRole | Reason::NotAllowed | Reason::UnknownMethod => {
                "call refused"
            }
            Reason::NotTls
            | Reason::Certificate(_)
            | Reason::TlsVersion
            | Reason::Incompatible
            | Reason::HandshakeFailed => "TLS handshake refused",
            Reason::NoRequest | Reason::EvictedHandshake | Reason::EvictedUnverified => {
                "connection closed"
            }
            Reason::OverVerifiedCap | Reason::OverTotalCap | Reason::OverPeerCap => {
                "connection refused"
            }
            Reason::AcceptFailed => "accept failed",
        }
    }
}

/// Where refusals came from: a client address, or the listener itself (failed accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A client IP address.
    Peer(IpAddr),
    /// The listening socket.
    Listener,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Peer(ip) => write!(f, "{ip}"),
            Source::Listener => f.write_str("the listener"),
        }
    }
}

/// One summary line due at a flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Who; `None` for the peers beyond [`MAX_TRACKED`].
    pub source: Option<Source>,
    /// Why.
    pub reason: Reason,
    /// Refusals counted since the last flush (the immediately logged first one excluded).
    pub count: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.source {
            Some(s) => s.to_string(),
            None => "other peers".to_owned(),
        };
        write!(
            f,
            "{} refusal{} from {who} in the last {} s: {}",
            self.count,
            if self.count == 1 { "" } else { "s" },
            WINDOW.as_secs(),
            self.reason.as_str()
        )
    }
}

#[derive(Debug, Default)]
struct State {
    tracked: HashMap<(Source, Reason), u64>,
    others: BTreeMap<Reason, u64>,
}

/// The counts behind the rate-limited refusal lines.
#[derive(Debug)]
pub struct RefusalLog {
    state: Mutex<State>,
    max_tracked: usize,
    /// The listener whose refusals these are (`grpc`, `metrics`).
    listener: &'static str,
    /// Every refusal since start, by [`Reason::index`].
    totals: [AtomicU64; Reason::ALL.len()],
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new(MAX_TRACKED)
    }
}

impl RefusalLog {
    /// A log of the gRPC edge tracking at most `max_tracked` (peer, reason) pairs.
    pub fn new(max_tracked: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_tracked,
            listener: "grpc",
            totals: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// A log of the listener called `listener` (its lines and totals name it).
    pub fn for_listener(listener: &'static str) -> Self {
        Self {
            listener,
            ..Self::default()
        }
    }

    /// The listener these refusals are of.
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// Every refusal since start, per reason, in the order of [`Reason::ALL`].
    pub fn totals(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .zip(&self.totals)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Records a refusal; the first of its (source, reason) pair is logged now, with `detail`
    /// (only built then).
    pub fn refused(&self, source: Source, reason: Reason, detail: impl FnOnce() -> String) {
        self.totals[reason.index()].fetch_add(1, Ordering::Relaxed);
        if self.count(source, reason) {
            let detail = detail();
            tracing::warn!(
                listener = self.listener,
                peer = %source,
                reason = reason.as_str(),
                detail = %detail,
                "{}",
                reason.message()
            );
        }
    }

    /// Counts a refusal; true when it is the first of its pair (to be logged now).
    fn count(&self, source: Source, reason: Reason) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = st.tracked.get_mut(&(source, reason)) {
            *n += 1;
            return false;
        }
        if st.tracked.len() < self.max_tracked {
            st.tracked.insert((source, reason), 0);
            return true;
        }
        *st.others.entry(reason).or_default() += 1;
        false
    }

    /// The summaries due now; resets the counts and forgets pairs that had nothing to report.
    pub fn take_summaries(&self) -> Vec<Summary> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Summary> = st
            .tracked
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|((source, reason), n)| Summary {
                source: Some(*source),
                reason: *reason,
                count: *n,
            })
            .collect();
        out.sort_by_key(|s| (s.source, s.reason));
        st.tracked.retain(|_, n| *n > 0);
        st.tracked.values_mut().for_each(|n| *n = 0);
        out.extend(
            std::mem::take(&mut st.others)
                .into_iter()
                .map(|(reason, count)| Summary {
                    source: None,
                    reason,
                    count,
                }),
        );
        out
    }

    /// Writes the summaries due now, one line each.
    pub fn flush(&self) {
        for s in self.take_summaries() {
            let peer = s
                .source
                .map_or_else(|| "other peers".to_owned(), |p| p.to_string());
            tracing::warn!(
                listener = self.listener,
                peer = %peer,
                reason = s.reason.as_str(),
                count = s.count,
                window_secs = WINDOW.as_secs(),
                "{s}"
            );
        }
    }

    /// Flushes every [`WINDOW`] until `stop` turns true, then once more.
    pub async fn run(self: std::sync::Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + WINDOW, WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(),
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8) -> Source {
        Source::Peer(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn the_first_refusal_of_a_pair_is_logged_at_once_and_the_rest_summed() {
        let log = RefusalLog::new(8);
        assert!(log.count(peer(2), Reason::NoCertificate));
        for _ in 0..12_033 {
            assert!(!log.count(peer(2), Reason::NoCertificate));
        }
        // Another reason from the same peer is a pair of its own.
        assert!(log.count(peer(2), Reason::OverPeerCap));
        let s = log.take_summaries();
        assert_eq!(
            s,
            vec![Summary {
                source: Some(peer(2)),
                reason: Reason::NoCertificate,
                count: 12_033
            }]
        );
        assert_eq!(
            s[0].to_string(),
            "12033 refusals from 127.0.0.2 in the last 10 s: no client certificate"
        );
    }

    #[test]
    fn a_pair_quiet_for_a_window_is_forgotten_and_logged_at_once_again() {
        let log = RefusalLog::new(8);
        assert!(log.count(peer(3), Reason::NotTls));
        assert!(!log.count(peer(3), Reason::NotTls));
        assert_eq!(log.take_summaries().len(), 1);
        // Still tracked (it had something to report), so the next one is counted...
        assert!(!log.count(peer(3), Reason::NotTls));
        assert_eq!(log.take_summaries()[0].count, 1);
        // ... then a window with nothing forgets it.
        assert!(log.take_summaries().is_empty());
        assert!(log.count(peer(3), Reason::NotTls));
    }

    #[test]
    fn each_cause_from_a_peer_is_logged_at_once_after_a_flood_of_another() {
        let log = RefusalLog::new(MAX_TRACKED);
        let unknown = Reason::Certificate(CertificateProblem::UnknownIssuer);
        let expired = Reason::Certificate(CertificateProblem::Expired);
        assert!(log.count(peer(9), unknown));
        for _ in 0..1000 {
            assert!(!log.count(peer(9), unknown));
        }
        // Seconds later, in the same window: expired is a cause of its own.
        assert!(
            log.count(peer(9), expired),
            "the first expired refusal is logged at once"
        );
        assert!(!log.count(peer(9), expired));
        // And so is every other reason.
        for reason in Reason::ALL {
            if reason != unknown && reason != expired {
                assert!(log.count(peer(9), reason), "{reason:?} not logged at once");
            }
        }
        let mut said: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        said.sort_unstable();
        said.dedup();
        assert_eq!(said.len(), Reason::ALL.len(), "two reasons read the same");
        let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len(), "two reasons share a label");
        assert!(
            labels
                .iter()
                .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }

    /// Lines one window writes for `refusals`: the immediate ones, then the summaries.
    fn lines_in_a_window(
        log: &RefusalLog,
        refusals: impl Iterator<Item = (Source, Reason)>,
    ) -> usize {
        let immediate = refusals.filter(|(s, r)| log.count(*s, *r)).count();
        immediate + log.take_summaries().len()
    }

    #[test]
    fn a_window_writes_at_most_two_lines_per_pair_plus_one_per_reason() {
        // A few peers, every reason, many times each: two lines per (peer, reason) pair.
        let log = RefusalLog::new(MAX_TRACKED);
        let few = (0..3u8).flat_map(|p| {
            Reason::ALL
                .into_iter()
                .flat_map(move |r| std::iter::repeat_n((peer(p), r), 50))
        });
        assert_eq!(lines_in_a_window(&log, few), 2 * 3 * Reason::ALL.len());
        // A crowd of 1000 addresses, every reason, in two windows: never more than two lines
        // per tracked pair plus one per reason.
        let log = RefusalLog::new(MAX_TRACKED);
        let bound = 2 * MAX_TRACKED + Reason::ALL.len();
        for _ in 0..2 {
            let crowd = (0..1000u32).flat_map(|i| {
                let ip = Source::Peer(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
                Reason::ALL
                    .into_iter()
                    .flat_map(move |r| std::iter::repeat_n((ip, r), 3))
            });
            let lines = lines_in_a_window(&log, crowd);
            assert!(lines <= bound, "{lines} lines in a window, bound {bound}");
            assert!(lines >= MAX_TRACKED, "the tracked pairs were logged");
        }
    }

    #[test]
    fn totals_count_every_refusal_and_are_never_reset() {
        let log = RefusalLog::new(2);
        for last in 0..10 {
            log.refused(peer(last), Reason::NoCertificate, String::new);
        }
        log.refused(Source::Listener, Reason::AcceptFailed, String::new);
        let _ = log.take_summaries();
        let totals: BTreeMap<_, _> = log.totals().into_iter().collect();
        assert_eq!(totals.len(), Reason::ALL.len());
        assert_eq!(totals[&Reason::NoCertificate], 10);
        assert_eq!(totals[&Reason::AcceptFailed], 1);
        assert_eq!(totals[&Reason::NoRole], 0);
        assert_eq!(log.listener(), "grpc");
        assert_eq!(RefusalLog::for_listener("metrics").listener(), "metrics");
    }

    #[test]
    fn pairs_beyond_the_cap_are_summed_under_other_peers() {
        let log = RefusalLog::new(2);
        assert!(log.count(peer(1), Reason::NoCertificate));
        assert!(log.count(peer(2), Reason::NoCertificate));
        for last in 3..=200 {
            assert!(!log.count(peer(last), Reason::NoCertificate));
        }
        assert!(!log.count(Source::Listener, Reason::AcceptFailed));
        let s = log.take_summaries();
        assert_eq!(
            s,
            vec![
                Summary {
                    source: None,
                    reason: Reason::NoCertificate,
                    count: 198
                },
                Summary {
                    source: None,
                    reason: Reason::AcceptFailed,
                    count: 1
                },
            ]
        );
        assert_eq!(
            s[0].to_string(),
            "198 refusals from other peers in the last 10 s: no client certificate"
        );
        assert_eq!(
            s[1].to_string(),
            "1 refusal from other peers in the last 10 s: accept failed"
        );
    }
}
