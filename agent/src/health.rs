//! What is degraded on this host now: the conditions `GetHost`, `jex-agent status` and
//! `/metrics` report, and the `grpc.health.v1` status of each service, which follows them.
//!
//! A [`Tracker`] (pure: it is handed an [`Observation`] and a clock reading, and keeps no
//! clock of its own) raises and clears five conditions:
//!
//! | condition | raised while | cleared |
//! |---|---|---|
//! | `SPOOL_NOT_DURABLE` | the spool cannot store records | when a record is stored again |
//! | `ERASE_UNAVAILABLE` | the erase service could not be opened | when the retried open succeeds |
//! | `CERTIFICATE_EXPIRES_SOON` | the agent's certificate or the fleet CA expires within `[health] certificate_warning_days` | when the files are renewed and reloaded |
//! | `CLOCK_STEPPED` | the wall clock moved apart from the monotonic clock by more than [`CLOCK_STEP_TOLERANCE`] between two checks | `[health] event_hold_secs` after the last step |
//! | `LOG_LINES_DROPPED` | the log file's queue dropped lines | `event_hold_secs` after the last drop |
//!
//! Each raised condition keeps the wall-clock time it was raised (`since`) until it clears.
//! The first two are states read at every check; the certificate is a deadline; the last two
//! are events, held for a while so that a scrape or a person sees them.
//!
//! The [`Monitor`] checks every [`CHECK_INTERVAL`], publishes the list on a `watch` channel,
//! logs each raise (WARN) and clear (INFO) once, and sets the `grpc.health.v1` statuses
//! ([`statuses`]): the empty name and `jex.agent.v1.NodeAgent` are SERVING until the agent
//! drains; `jex.agent.v1.NodeAgent/telemetry` is NOT_SERVING while the spool is not durable,
//! `jex.agent.v1.NodeAgent/erase` while the erase is unavailable, and both while draining.
//! A status is set only when it changes, so `Watch` sends each change once.
//!
//! A host that sleeps looks like a forward clock step (the monotonic clock stops during
//! sleep); the fleet's Macs do not sleep, and if one did, that is worth knowing too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::HealthConfig;
use crate::server::Erase;
use crate::telemetry::hub::Hub;
use crate::tls::ServerTls;

/// How often the conditions are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The largest difference between the wall clock's and the monotonic clock's advance over one
/// check that is not a step. NTP slews at most 0.5 ms/s; scheduling delay moves both clocks
/// alike.
pub const CLOCK_STEP_TOLERANCE: Duration = Duration::from_secs(2);

/// The gRPC service the agent serves; its health name.
pub const NODE_AGENT: &str = "jex.agent.v1.NodeAgent";
/// The health name of telemetry (NOT_SERVING while the spool is not durable).
pub const TELEMETRY: &str = "jex.agent.v1.NodeAgent/telemetry";
/// The health name of the erase (NOT_SERVING while the erase service is unavailable).
pub const ERASE: &str = "jex.agent.v1.NodeAgent/erase";

/// A kind of degradation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConditionKind {
    /// Telemetry records cannot be stored: streams go on live, and what is missed becomes a gap.
    SpoolNotDurable,
    /// The erase service could not be opened; `Terminate` is refused.
    EraseUnavailable,
    /// The agent's certificate or the fleet CA expires soon (or has expired).
    CertificateExpiresSoon,
    /// The wall clock was stepped.
    ClockStepped,
    /// Log lines were dropped.
    LogLinesDropped,
}

impl ConditionKind {
    /// Every kind, in the order they are listed.
    pub const ALL: [ConditionKind; 5] = [
        ConditionKind::SpoolNotDurable,
        ConditionKind::EraseUnavailable,
        ConditionKind::CertificateExpiresSoon,
        ConditionKind::ClockStepped,
        ConditionKind::LogLinesDropped,
    ];

    /// The name, as the proto enum (without its prefix), the status JSON and `/metrics` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionKind::SpoolNotDurable => "SPOOL_NOT_DURABLE",
            ConditionKind::EraseUnavailable => "ERASE_UNAVAILABLE",
            ConditionKind::CertificateExpiresSoon => "CERTIFICATE_EXPIRES_SOON",
            ConditionKind::ClockStepped => "CLOCK_STEPPED",
            ConditionKind::LogLinesDropped => "LOG_LINES_DROPPED",
        }
    }
}

/// One raised condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// What is degraded.
    pub kind: ConditionKind,
    /// When it was raised (Unix ms, wall clock).
    pub since_unix_ms: u64,
    /// What it is and what to do, for a person.
    pub message: String,
}

/// What the [`Tracker`] is told at each check.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Why the spool cannot store records, `None` when it can.
    pub spool_not_durable: Option<String>,
    /// Why the erase service is unavailable, `None` when it is ready.
    pub erase_unavailable: Option<String>,
    /// Each certificate whose expiry is watched: its name and `notAfter` (Unix seconds).
    pub certificates: Vec<(&'static str, i64)>,
    /// Log lines dropped since the process started.
    pub log_lines_dropped_total: u64,
}

/// A reading of both clocks, taken together.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// The wall clock, Unix ms.
    pub wall_unix_ms: u64,
    /// The monotonic clock.
    pub mono: Instant,
}

impl Clocks {
    /// Now.
    pub fn now() -> Self {
        Self {
            mono: Instant::now(),
            wall_unix_ms: jex_attest::clock::now_unix_ms(),
        }
    }
}

/// When conditions are raised and cleared.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `CERTIFICATE_EXPIRES_SOON` this long before `notAfter`.
    pub certificate_warning: Duration,
    /// How long an event condition stays raised after its last event.
    pub event_hold: Duration,
}

impl From<&HealthConfig> for Settings {
    fn from(c: &HealthConfig) -> Self {
        Self {
            certificate_warning: Duration::from_secs(
                u64::from(c.certificate_warning_days) * 86_400,
            ),
            event_hold: Duration::from_secs(u64::from(c.event_hold_secs)),
        }
    }
}

/// The last event of an event condition.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    message: String,
}

/// Raises and clears conditions from observations; see the module docs.
#[derive(Debug)]
pub struct Tracker {
    settings: Settings,
    raised: BTreeMap<ConditionKind, Condition>,
    last_clocks: Option<Clocks>,
    last_step: Option<Event>,
    dropped_seen: Option<u64>,
    /// Lines dropped since `LOG_LINES_DROPPED` was raised.
    dropped_in_run: u64,
    last_drop: Option<Event>,
}

impl Tracker {
    /// A tracker with nothing raised.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            raised: BTreeMap::new(),
            last_clocks: None,
            last_step: None,
            dropped_seen: None,
            dropped_in_run: 0,
            last_drop: None,
        }
    }

    /// The raised conditions, in [`ConditionKind::ALL`] order.
    pub fn current(&self) -> Vec<Condition> {
        self.raised.values().cloned().collect()
    }

    /// Takes one observation at `now`; returns the kinds raised and cleared by it.
    pub fn observe(
        &mut self,
        o: &Observation,
        now: Clocks,
    ) -> (Vec<ConditionKind>, Vec<ConditionKind>) {
        self.note_clock(now);
        self.note_drops(o.log_lines_dropped_total, now);
        let hold = self.settings.event_hold;
        let held = |e: &Option<Event>| {
            e.as_ref()
                .filter(|e| now.mono.saturating_duration_since(e.at) < hold)
                .map(|e| e.message.clone())
        };
        let wanted: [(ConditionKind, Option<String>); 5] = [
            (ConditionKind::SpoolNotDurable, o.spool_not_durable.clone()),
            (ConditionKind::EraseUnavailable, o.erase_unavailable.clone()),
            (
                ConditionKind::CertificateExpiresSoon,
                expiry_message(&o.certificates, now.wall_unix_ms, self.settings),
            ),
            (ConditionKind::ClockStepped, held(&self.last_step)),
            (ConditionKind::LogLinesDropped, held(&self.last_drop)),
        ];
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for (kind, message) in wanted {
            match (message, self.raised.get_mut(&kind)) {
                (Some(message), Some(c)) => c.message = message,
                (Some(message), None) => {
                    self.raised.insert(
                        kind,
                        Condition {
                            kind,
                            since_unix_ms: now.wall_unix_ms,
                            message,
                        },
                    );
                    up.push(kind);
                }
                (None, Some(_)) => {
                    self.raised.remove(&kind);
                    if kind == ConditionKind::LogLinesDropped {
                        self.dropped_in_run = 0;
                    }
                    down.push(kind);
                }
                (None, None) => {}
            }
        }
        (up, down)
    }

    fn note_clock(&mut self, now: Clocks) {
        if let Some(last) = self.last_clocks {
            let mono_ms = now.mono.saturating_duration_since(last.mono).as_millis() as i128;
            let wall_ms = i128::from(now.wall_unix_ms) - i128::from(last.wall_unix_ms);
            let step_ms = wall_ms - mono_ms;
            if step_ms.unsigned_abs() > CLOCK_STEP_TOLERANCE.as_millis() {
                self.last_step = Some(Event {
                    at: now.mono,
                    message: format!(
                        "the wall clock stepped {}{:.1} s at {}; records and certificates stamped around it may look out of order (check NTP)",
                        if step_ms > 0 { "+" } else { "-" },
                        step_ms.unsigned_abs() as f64 / 1000.0,
                        rfc3339_ms(now.wall_unix_ms),
                    ),
                });
            }
        }
        self.last_clocks = Some(now);
    }

    fn note_drops(&mut self, total: u64, now: Clocks) {
        let seen = self.dropped_seen.replace(total).unwrap_or(0);
        if total > seen {
            self.dropped_in_run += total - seen;
            self.last_drop = Some(Event {
                at: now.mono,
                message: format!(
                    "{} log lines dropped, the last at {}: the log file's queue was full (its disk slow or full); the system log still has them",
                    self.dropped_in_run,
                    rfc3339_ms(now.wall_unix_ms),
                ),
            });
        }
    }
}

/// The `CERTIFICATE_EXPIRES_SOON` message, `None` when nothing expires within the warning.
fn expiry_message(certs: &[(&str, i64)], now_unix_ms: u64, s: Settings) -> Option<String> {
    let now = (now_unix_ms / 1000) as i64;
    let warning = s.certificate_warning.as_secs() as i64;
    let parts: Vec<String> = certs
        .iter()
        .filter(|(_, not_after)| not_after.saturating_sub(now) < warning)
        .map(|(name, not_after)| {
            let at = rfc3339_ms(u64::try_from(*not_after).unwrap_or(0).saturating_mul(1000));
            let left = not_after.saturating_sub(now);
            if left <= 0 {
                format!("the {name} expired at {at}: TLS handshakes fail; renew it now")
            } else {
                format!(
                    "the {name} expires at {at}, in {}: renew it",
                    human_duration(left.unsigned_abs())
                )
            }
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `3 d 4 h`, `5 h 2 min`, `40 s`.
fn human_duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{secs} s")
    }
}

/// A Unix ms time as RFC 3339 UTC.
fn rfc3339_ms(unix_ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_ms} ms after the Unix epoch"))
}

/// The `grpc.health.v1` status of each service name for these conditions.
pub fn statuses(conditions: &[Condition], draining: bool) -> [(&'static str, ServingStatus); 4] {
    let up = |ok: bool| {
        if ok && !draining {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let has = |k| conditions.iter().any(|c| c.kind == k);
    [
        ("", up(true)),
        (NODE_AGENT, up(true)),
        (TELEMETRY, up(!has(ConditionKind::SpoolNotDurable))),
        (ERASE, up(!has(ConditionKind::EraseUnavailable))),
    ]
}

/// What the monitor reads at each check.
pub(crate) struct Sources {
    /// Telemetry (spool durability).
    pub hub: Arc<Hub>,
    /// The erase slot.
    pub erase: Erase,
    /// The loaded TLS material (expiry).
    pub tls: Arc<ServerTls>,
}

impl Sources {
    fn observe(&self) -> Observation {
        let spool = self.hub.stats().spool;
        let expiry = self.tls.expiry();
        Observation {
            spool_not_durable: spool.not_durable.then(|| {
                format!(
                    "telemetry records cannot be stored ({} not stored since start: disk full or unwritable); streams go on live and the missed records will be reported as a gap",
                    spool.unwritten_records
                )
            }),
            erase_unavailable: self.erase.unavailable_reason().map(|r| {
                format!("{r}; Terminate is refused, the agent retries opening the erase service")
            }),
            certificates: vec![
                ("agent certificate", expiry.cert_not_after),
                ("fleet CA", expiry.ca_not_after),
            ],
            log_lines_dropped_total: crate::logging::lines_dropped_total(),
        }
    }
}

/// The running monitor's handle: the current conditions, and the drain switch.
#[derive(Clone)]
pub struct Health {
    conditions: watch::Receiver<Arc<[Condition]>>,
    draining: Arc<AtomicBool>,
    setter: Arc<tokio::sync::Mutex<StatusSetter>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("conditions", &*self.conditions.borrow())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// The raised conditions now.
    pub fn conditions(&self) -> Arc<[Condition]> {
        self.conditions.borrow().clone()
    }

    /// Every service NOT_SERVING from now on: the agent is draining. Set before this returns,
    /// so that `Watch` streams send it before the drain ends them.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let now = self.conditions();
        self.setter.lock().await.apply(&now, true).await;
    }
}

/// Checks the conditions every [`CHECK_INTERVAL`] and keeps the health statuses in step;
/// see the module docs.
pub(crate) struct Monitor;

impl Monitor {
    /// Takes a first check at once (so that the statuses and `GetHost` are right before the
    /// first connection), then checks in a task until `stop`.
    pub async fn start(
        sources: Sources,
        settings: Settings,
        reporter: HealthReporter,
        mut stop: watch::Receiver<bool>,
    ) -> Health {
        let mut tracker = Tracker::new(settings);
        check(&mut tracker, &sources);
        let (tx, rx) = watch::channel::<Arc<[Condition]>>(tracker.current().into());
        let health = Health {
            conditions: rx,
            draining: Arc::new(AtomicBool::new(false)),
            setter: Arc::new(tokio::sync::Mutex::new(StatusSetter {
                reporter,
                last: BTreeMap::new(),
            })),
        };
        health
            .setter
            .lock()
            .await
            .apply(&tracker.current(), false)
            .await;
        let (draining, setter) = (health.draining.clone(), health.setter.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                check(&mut tracker, &sources);
                let now = tracker.current();
                {
                    let mut setter = setter.lock().await;
                    setter.apply(&now, draining.load(Ordering::Relaxed)).await;
                }
                tx.send_if_modified(|old| {
                    let changed = **old != *now;
                    if changed {
                        *old = now.into();
                    }
                    changed
                });
            }
        });
        health
    }
}

/// One check: observe, and log what was raised and cleared.
fn check(tracker: &mut Tracker, sources: &Sources) {
    let (up, down) = tracker.observe(&sources.observe(), Clocks::now());
    let current = tracker.current();
    for kind in up {
        if let Some(c) = current.iter().find(|c| c.kind == kind) {
            tracing::warn!(condition = kind.as_str(), detail = %c.message, "condition raised");
        }
    }
    for kind in down {
        tracing::info!(condition = kind.as_str(), "condition cleared");
    }
}

/// Sets each service's status when it changes (a `Watch` stream sends every set).
struct StatusSetter {
    reporter: HealthReporter,
    last: BTreeMap<&'static str, ServingStatus>,
}

impl StatusSetter {
    async fn apply(&mut self, conditions: &[Condition], draining: bool) {
        for (name, status) in statuses(conditions, draining) {
            if self.last.get(name) != Some(&status) {
                self.reporter.set_service_status(name, status).await;
                self.last.insert(name, status);
                tracing::debug!(service = name, status = ?status, "health status set");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn settings() -> Settings {
        Settings {
            certificate_warning: Duration::from_secs(14 * 86_400),
            event_hold: Duration::from_secs(60),
        }
    }

    struct Clock {
        origin: Instant,
        mono_ms: u64,
        wall_ms: u64,
    }

    impl Clock {
        fn new() -> Self {
            Self {
                origin: Instant::now(),
                mono_ms: 0,
                wall_ms: 1_780_000_000_000,
            }
        }
        /// Both clocks advance by `ms`, the wall clock by `extra_wall_ms` more.
        fn tick(&mut self, ms: u64, extra_wall_ms: i64) -> Clocks {
            self.mono_ms += ms;
            self.wall_ms = (self.wall_ms as i64 + ms as i64 + extra_wall_ms) as u64;
            Clocks {
                mono: self.origin + Duration::from_millis(self.mono_ms),
                wall_unix_ms: self.wall_ms,
            }
        }
    }

    fn kinds(t: &Tracker) -> Vec<ConditionKind> {
        t.current().iter().map(|c| c.kind).collect()
    }

    fn far_certs(clock: &Clock) -> Vec<(&'static str, i64)> {
        let now = (clock.wall_ms / 1000) as i64;
        vec![
            ("agent certificate", now + 90 * DAY),
            ("fleet CA", now + 3650 * DAY),
        ]
    }

    #[test]
    fn a_healthy_host_has_no_conditions_and_every_service_serving() {
        let mut clock = Clock::new();
        let mut t = Tracker::new(settings());
        let o = Observation {
            certificates: far_certs(&clock),
            ..Observation::default()
        };
        for _ in 0..5 {
            assert_eq!(t.observe(&o, clock.tick(1000, 3)), (vec![], vec![]));
        }
        assert!(t.current().is_empty());
        assert!(
            statuses(&t.current(), false)
                .iter()
                .all(|(_, s)| *s == ServingStatus::Serving)
        );
    }

    #[test]
    fn state_conditions_keep_their_since_and_clear_when_the_state_does() {
        let mut clock = Clock::new();
        let mut t = Tracker::new(settings());
        let mut o = Observation {
            certificates: far_certs(&clock),
            spool_not_durable: Some("disk full (1 not stored)".into()),
            ..Observation::default()
        };
        let first = clock.tick(1000, 0);
        assert_eq!(
            t.observe(&o, first),
            (vec![ConditionKind::SpoolNotDurable], vec![])
        );
        o.spool_not_durable = Some("disk full (2 not stored)".into());
        o.erase_unavailable = Some("no room".into());
        t.observe(&o, clock.tick(1000, 0));
        let now = t.current();
        assert_eq!(
            kinds(&t),
            vec![
                ConditionKind::SpoolNotDurable,
                ConditionKind::EraseUnavailable
            ]
        );
        assert_eq!(now[0].since_unix_ms, first.wall_unix_ms, "since is kept");
        assert_eq!(
            now[0].message, "disk full (2 not stored)",
            "message is updated"
        );
        let st = statuses(&now, false);
        assert_eq!(st[0], ("", ServingStatus::Serving));
        assert_eq!(st[1], (NODE_AGENT, ServingStatus::Serving));
        assert_eq!(st[2], (TELEMETRY, ServingStatus::NotServing));
        assert_eq!(st[3], (ERASE, ServingStatus::NotServing));
        o.spool_not_durable = None;
        o.erase_unavailable = None;
        assert_eq!(
            t.observe(&o, clock.tick(1000, 0)),
            (
                vec![],
                vec![
                    ConditionKind::SpoolNotDurable,
                    ConditionKind::EraseUnavailable
                ]
            )
        );
    }

    #[test]
    fn draining_takes_every_service_out() {
        assert!(
            statuses(&[], true)
                .iter()
                .all(|(_, s)| *s == ServingStatus::NotServing)
        );
    }

    #[test]
    fn a_certificate_within_the_warning_raises_and_a_renewed_one_clears() {
        let mut clock = Clock::new();
        let mut t = Tracker::new(settings());
        let now = (clock.wall_ms / 1000) as i64;
        let mut o = Observation {
            certificates: vec![
                ("agent certificate", now + 3 * DAY + 7200),
                ("fleet CA", now + 3650 * DAY),
            ],
            ..Observation::default()
        };
        t.observe(&o, clock.tick(1000, 0));
        let c = t.current();
        assert_eq!(kinds(&t), vec![ConditionKind::CertificateExpiresSoon]);
        assert!(
            c[0].message
                .starts_with("the agent certificate expires at ")
                && c[0].message.contains("in 3 d 1 h"),
            "{}",
            c[0].message
        );
        assert!(!c[0].message.contains("fleet CA"));
        o.certificates[1].1 = now - 10;
        t.observe(&o, clock.tick(1000, 0));
        assert!(t.current()[0].message.contains("the fleet CA expired at "));
        o.certificates = far_certs(&clock);
        let (_, down) = t.observe(&o, clock.tick(1000, 0));
        assert_eq!(down, vec![ConditionKind::CertificateExpiresSoon]);
    }

    #[test]
    fn a_clock_step_either_way_is_held_then_cleared_but_jitter_is_not_a_step() {
        let mut clock = Clock::new();
        let mut t = Tracker::new(settings());
        let o = Observation {
            certificates: far_certs(&clock),
            ..Observation::default()
        };
        t.observe(&o, clock.tick(1000, 0));
        // A late check moves both clocks alike; 1.9 s of disagreement is within tolerance.
        t.observe(&o, clock.tick(30_000, 0));
        t.observe(&o, clock.tick(1000, 1900));
        assert!(t.current().is_empty());
        let (up, _) = t.observe(&o, clock.tick(1000, -45_000));
        assert_eq!(up, vec![ConditionKind::ClockStepped]);
        assert!(
            t.current()[0]
                .message
                .starts_with("the wall clock stepped -45.0 s"),
            "{}",
            t.current()[0].message
        );
        let since = t.current()[0].since_unix_ms;
        t.observe(&o, clock.tick(30_000, 0));
        t.observe(&o, clock.tick(1000, 45_000));
        assert_eq!(t.current()[0].since_unix_ms, since);
        assert!(t.current()[0].message.contains("stepped +45.0 s"));
        t.observe(&o, clock.tick(59_000, 0));
        assert_eq!(kinds(&t), vec![ConditionKind::ClockStepped], "held");
        let (_, down) = t.observe(&o, clock.tick(1000, 0));
        assert_eq!(down, vec![ConditionKind::ClockStepped]);
    }

    #[test]
    fn dropped_log_lines_are_counted_per_raise_and_held() {
        let mut clock = Clock::new();
        let mut t = Tracker::new(settings());
        let mut o = Observation {
            certificates: far_certs(&clock),
            log_lines_dropped_total: 7,
            ..Observation::default()
        };
        // Drops before the first check count (the process dropped them).
        t.observe(&o, clock.tick(1000, 0));
        assert!(t.current()[0].message.starts_with("7 log lines dropped"));
        o.log_lines_dropped_total = 10;
        t.observe(&o, clock.tick(1000, 0));
        assert!(t.current()[0].message.starts_with("10 log lines dropped"));
        t.observe(&o, clock.tick(60_000, 0));
        assert!(t.current().is_empty());
        o.log_lines_dropped_total = 11;
        t.observe(&o, clock.tick(1000, 0));
        assert!(
            t.current()[0].message.starts_with("1 log lines dropped"),
            "a new raise counts afresh: {}",
            t.current()[0].message
        );
    }

    #[test]
    fn kinds_serialize_as_their_names() {
        for kind in ConditionKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::Value::String(kind.as_str().to_owned())
            );
        }
    }
}
