//! The JetStream message layout: the contract a controller consumes. Pure functions, so the
//! layout is tested without a server.
//!
//! - Stream `JEX_TELEMETRY` (configurable), subjects `jex.telemetry.>`, one subject per host:
//!   `jex.telemetry.<host_id>`.
//! - One message per telemetry record, in `seq` order: the payload is the record's protobuf
//!   encoding (`jex.agent.v1.TelemetryRecord`, exactly as the agent sent it), and the headers:
//!   - `Nats-Msg-Id: <host_id>:<seq>` (epoch 0) or `<host_id>:e<epoch>:<seq>` (epoch ≥ 1):
//!     JetStream drops a re-sent message with an id it has seen within the stream's duplicate
//!     window, which is what makes a resend after a relay restart land exactly once;
//!   - `Jex-Seq: <seq>`, `Jex-Host: <host_id>`, and `Jex-Epoch: <epoch>` from epoch 1 on;
//!   - for a gap record also `Jex-Gap: <GapReason name>` (e.g. `GAP_REASON_AGENT_DOWN`) and
//!     `Jex-Gap-First-Seq` / `Jex-Gap-Last-Seq` (0 and 0 when no seq was lost, only time).
//! - A reset marker when the agent's spool is a new life (the agent answered `OUT_OF_RANGE`
//!   to the stored cursor: its records were lost or the host was replaced): an empty payload
//!   and `Jex-Reset: spool-lost`, `Jex-Epoch: <n>`, `Jex-Host`, `Nats-Msg-Id:
//!   <host_id>:e<n>:reset`. The records after it start again at seq 1, in epoch `n`.
//!
//! The resume cursor is the last message on the host's subject: its `Jex-Seq` (0 after a
//! reset marker) and its `Jex-Epoch` (0 when absent).

use jex_proto::v1 as pb;

/// The subject prefix; a host's subject is `jex.telemetry.<host_id>`.
pub const SUBJECT_PREFIX: &str = "jex.telemetry";
/// The header that makes a re-sent message a duplicate.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The record's sequence number.
pub const SEQ: &str = "Jex-Seq";
/// The host id.
pub const HOST: &str = "Jex-Host";
/// The epoch (spool lives seen by the relay), from 1 on.
pub const EPOCH: &str = "Jex-Epoch";
/// A gap record's reason.
pub const GAP: &str = "Jex-Gap";
/// A gap record's first missing seq.
pub const GAP_FIRST: &str = "Jex-Gap-First-Seq";
/// A gap record's last missing seq.
pub const GAP_LAST: &str = "Jex-Gap-Last-Seq";
/// A reset marker's header.
pub const RESET: &str = "Jex-Reset";
/// The only reset reason so far.
pub const RESET_SPOOL_LOST: &str = "spool-lost";

/// The subject of `host_id`'s records.
pub fn subject(host_id: &str) -> String {
    format!("{SUBJECT_PREFIX}.{host_id}")
}

/// The subjects the stream holds.
pub fn stream_subjects() -> String {
    format!("{SUBJECT_PREFIX}.>")
}

/// The message id of record `seq` of `host_id` in `epoch`.
pub fn msg_id(host_id: &str, epoch: u64, seq: u64) -> String {
    if epoch == 0 {
        format!("{host_id}:{seq}")
    } else {
        format!("{host_id}:e{epoch}:{seq}")
    }
}

/// The headers of a record's message, in order.
pub fn record_headers(
    host_id: &str,
    epoch: u64,
    record: &pb::TelemetryRecord,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (MSG_ID, msg_id(host_id, epoch, record.seq)),
        (SEQ, record.seq.to_string()),
        (HOST, host_id.to_owned()),
    ];
    if epoch > 0 {
        h.push((EPOCH, epoch.to_string()));
    }
    if let Some(pb::telemetry_record::Body::Gap(g)) = &record.body {
        h.push((GAP, gap_reason_name(g.reason).to_owned()));
        h.push((GAP_FIRST, g.first_missing_seq.to_string()));
        h.push((GAP_LAST, g.last_missing_seq.to_string()));
    }
    h
}

/// The headers of the reset marker that opens `epoch` (≥ 1).
pub fn reset_headers(host_id: &str, epoch: u64) -> Vec<(&'static str, String)> {
    vec![
        (MSG_ID, format!("{host_id}:e{epoch}:reset")),
        (RESET, RESET_SPOOL_LOST.to_owned()),
        (EPOCH, epoch.to_string()),
        (HOST, host_id.to_owned()),
    ]
}

/// A gap reason's proto name (`GAP_REASON_AGENT_DOWN`), or `GAP_REASON_<n>` for a number this
/// relay does not know.
pub fn gap_reason_name(reason: i32) -> String {
    pb::GapReason::try_from(reason).map_or_else(
        |_| format!("GAP_REASON_{reason}"),
        |r| r.as_str_name().to_owned(),
    )
}

/// Where to resume a host: after `seq`, in `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The last seq stored (0: none in this epoch).
    pub seq: u64,
    /// The epoch of the last message.
    pub epoch: u64,
}

/// A stored message's headers do not make a cursor.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the last message on {subject} has {problem}: it was not written by jex-relay")]
pub struct CursorError {
    /// The subject.
    pub subject: String,
    /// What is wrong.
    pub problem: String,
}

/// The cursor from the last stored message's headers (`get` looks one up by name).
pub fn cursor_from<'a>(
    subject: &str,
    get: impl Fn(&str) -> Option<&'a str>,
) -> Result<Cursor, CursorError> {
    let number = |name: &str| -> Result<Option<u64>, CursorError> {
        get(name)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| CursorError {
                    subject: subject.to_owned(),
                    problem: format!("header {name}: {v:?}, not a number"),
                })
            })
            .transpose()
    };
    let epoch = number(EPOCH)?.unwrap_or(0);
    if get(RESET).is_some() {
        return Ok(Cursor { seq: 0, epoch });
    }
    match number(SEQ)? {
        Some(seq) => Ok(Cursor { seq, epoch }),
        None => Err(CursorError {
            subject: subject.to_owned(),
            problem: format!("no {SEQ} header"),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gap(seq: u64, first: u64, last: u64) -> pb::TelemetryRecord {
        pb::TelemetryRecord {
            seq,
            time_unix_ms: 1,
            body: Some(pb::telemetry_record::Body::Gap(pb::Gap {
                reason: pb::GapReason::AgentDown as i32,
                first_missing_seq: first,
                last_missing_seq: last,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn msg_ids_carry_the_epoch_from_one_on() {
        assert_eq!(msg_id("sim-0001", 0, 42), "sim-0001:42");
        assert_eq!(msg_id("sim-0001", 1, 42), "sim-0001:e1:42");
        assert_eq!(msg_id("h", 12, 1), "h:e12:1");
        assert_eq!(subject("sim-0001"), "jex.telemetry.sim-0001");
        assert_eq!(stream_subjects(), "jex.telemetry.>");
    }

    #[test]
    fn a_sample_has_id_seq_and_host_and_a_gap_its_reason_and_range() {
        let sample = pb::TelemetryRecord {
            seq: 7,
            time_unix_ms: 1,
            body: Some(pb::telemetry_record::Body::Sample(pb::Sample::default())),
        };
        assert_eq!(
            record_headers("h1", 0, &sample),
            vec![
                (MSG_ID, "h1:7".to_owned()),
                (SEQ, "7".to_owned()),
                (HOST, "h1".to_owned())
            ]
        );
        let h = record_headers("h1", 2, &gap(9, 3, 8));
        assert_eq!(
            h,
            vec![
                (MSG_ID, "h1:e2:9".to_owned()),
                (SEQ, "9".to_owned()),
                (HOST, "h1".to_owned()),
                (EPOCH, "2".to_owned()),
                (GAP, "GAP_REASON_AGENT_DOWN".to_owned()),
                (GAP_FIRST, "3".to_owned()),
                (GAP_LAST, "8".to_owned()),
            ]
        );
        assert_eq!(gap_reason_name(99), "GAP_REASON_99");
    }

    #[test]
    fn the_cursor_reads_seq_epoch_and_resets() {
        let of = |pairs: Vec<(&'static str, String)>| {
            cursor_from("s", move |n| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| -> &'static str { Box::leak(v.clone().into_boxed_str()) })
            })
        };
        assert_eq!(
            of(record_headers("h", 0, &gap(5, 1, 4))).unwrap(),
            Cursor { seq: 5, epoch: 0 }
        );
        assert_eq!(
            of(record_headers("h", 3, &gap(5, 0, 0))).unwrap(),
            Cursor { seq: 5, epoch: 3 }
        );
        assert_eq!(
            of(reset_headers("h", 4)).unwrap(),
            Cursor { seq: 0, epoch: 4 }
        );
        let e = of(vec![(HOST, "h".into())]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the last message on s has no Jex-Seq header: it was not written by jex-relay"
        );
        assert!(of(vec![(SEQ, "x1".into())]).is_err());
    }
}
