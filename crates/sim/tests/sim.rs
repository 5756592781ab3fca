//! The simulator end to end, in one process: 20 simulated hosts, each a real agent with its own
//! certificate on its own loopback address, reached with the real generated client over mTLS
//! (observer and controller certificates of the fleet CA). GetHost, telemetry with contiguous
//! numbers, the AGENT_DOWN gap after a restart, OUT_OF_RANGE after a lost spool, SAMPLER_ERROR
//! gaps while failing, a killed host refusing and coming back, and a Terminate driven to a
//! signed certificate that verifies against the fleet CA.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expect is a failed test

use std::path::Path;
use std::time::Duration;

use jex_proto::v1 as pb;
use jex_proto::v1::node_agent_client::NodeAgentClient;
use jex_sim::{Fleet, FleetConfig};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Long enough for any single step on a loaded 2-core machine; a deadline, not a measurement.
const STEP: Duration = Duration::from_secs(30);

async fn client(fleet: &Fleet, host_id: &str, cert: &Path, key: &Path) -> NodeAgentClient<Channel> {
    let pki = fleet.pki();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).expect("ca")))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            std::fs::read(cert).expect("cert"),
            std::fs::read(key).expect("key"),
        ));
    let addr = fleet.addr(host_id).await.expect("addr");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    NodeAgentClient::new(channel)
}

async fn observer(fleet: &Fleet, host_id: &str) -> NodeAgentClient<Channel> {
    let p = fleet.pki().clone();
    client(fleet, host_id, &p.observer_cert, &p.observer_key).await
}

async fn controller(fleet: &Fleet, host_id: &str) -> NodeAgentClient<Channel> {
    let p = fleet.pki().clone();
    client(fleet, host_id, &p.controller_cert, &p.controller_key).await
}

async fn open(
    c: &mut NodeAgentClient<Channel>,
    after_seq: u64,
) -> Result<tonic::Streaming<pb::StreamTelemetryResponse>, tonic::Status> {
    Ok(c.stream_telemetry(pb::StreamTelemetryRequest {
        after_seq,
        max_batch_records: 0,
        history_only: false,
    })
    .await?
    .into_inner())
}

/// Reads records until `done` says so; every `seq` one above the previous.
async fn read_until(
    stream: &mut tonic::Streaming<pb::StreamTelemetryResponse>,
    after_seq: u64,
    mut done: impl FnMut(&[pb::TelemetryRecord]) -> bool,
) -> Vec<pb::TelemetryRecord> {
    let mut records: Vec<pb::TelemetryRecord> = Vec::new();
    let mut last = after_seq;
    while !done(&records) {
        let batch = tokio::time::timeout(STEP, stream.message())
            .await
            .expect("a batch within the deadline")
            .expect("stream ok")
            .expect("stream open");
        for r in batch.records {
            assert_eq!(r.seq, last + 1, "contiguous numbers");
            last = r.seq;
            records.push(r);
        }
    }
    records
}

fn gap(r: &pb::TelemetryRecord) -> Option<pb::GapReason> {
    match &r.body {
        Some(pb::telemetry_record::Body::Gap(g)) => pb::GapReason::try_from(g.reason).ok(),
        _ => None,
    }
}

fn sample(r: &pb::TelemetryRecord) -> Option<&pb::Sample> {
    match &r.body {
        Some(pb::telemetry_record::Body::Sample(s)) => Some(s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_simulated_hosts_behave_as_agents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = FleetConfig::new(dir.path(), 20);
    config.seed = 7;
    config.interval_ms = 200;
    config.base_ip = "127.0.3.1".parse().expect("ip");
    config.port = 0;
    config.disk_bytes = 2 << 20;
    let fleet = std::sync::Arc::new(Fleet::start(config).await.expect("fleet starts"));
    assert_eq!(fleet.host_ids().len(), 20);

    // The relay's host list names every host at its own address.
    let relay = fleet.relay_config(None).await;
    assert_eq!(relay.hosts.len(), 20);
    assert_eq!(relay.hosts[19].host_id, "sim-0020");
    assert!(relay.hosts[19].addr.starts_with("https://127.0.3.20:"));
    assert_eq!(relay.tls.cert, fleet.pki().observer_cert);

    // GetHost: the host id from each agent's certificate, Apple-shaped hardware.
    for id in ["sim-0001", "sim-0007", "sim-0020"] {
        let mut c = observer(&fleet, id).await;
        let host = c
            .get_host(pb::GetHostRequest {})
            .await
            .expect("GetHost")
            .into_inner()
            .host
            .expect("host");
        let profile = fleet.profile(id).expect("profile");
        assert_eq!(host.host_id, id);
        assert_eq!(host.chip, profile.chip.name);
        assert!(host.chip.starts_with("Apple M"), "{}", host.chip);
        assert!(host.model.starts_with("Mac"), "{}", host.model);
        assert_eq!(host.os_name, "macOS");
        assert_eq!(host.hardware_uuid, profile.hardware_uuid);
        assert_eq!(
            host.logical_cpus,
            host.super_cores + host.performance_cores + host.efficiency_cores
        );
        assert_eq!(host.memory_bytes, profile.memory_bytes);
        assert_eq!(host.telemetry_interval_ms, 200);
    }

    // Telemetry: contiguous numbers, Apple-shaped samples.
    let id = "sim-0003";
    let profile = fleet.profile(id).expect("profile").clone();
    let mut c = observer(&fleet, id).await;
    let mut live = open(&mut c, 0).await.expect("stream");
    let records = read_until(&mut live, 0, |r| r.len() >= 5).await;
    for r in &records {
        let s = sample(r).expect("only samples in a fresh life");
        let m = s.memory.as_ref().expect("memory");
        assert_eq!(m.total_bytes, profile.memory_bytes);
        assert_eq!(m.used_bytes + m.available_bytes, m.total_bytes);
        assert_eq!(m.wired_bytes % 16_384, 0);
        let cpu = s.cpu.as_ref().expect("cpu");
        assert_eq!(cpu.online_cpus, profile.chip.logical_cpus());
        assert_eq!(cpu.clusters.len(), 2);
        assert!(cpu.busy_bp <= 10_000);
    }

    // Restart: the open stream ends UNAVAILABLE after the last record; the resume gets the
    // AGENT_DOWN gap, then samples, with no number skipped.
    let mut last = records.last().expect("records").seq;
    fleet.restart(id).await.expect("restart");
    loop {
        match tokio::time::timeout(STEP, live.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(batch)) => {
                for r in batch.records {
                    assert_eq!(r.seq, last + 1);
                    last = r.seq;
                }
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status}");
                break;
            }
        }
    }
    let mut c = observer(&fleet, id).await;
    let mut resumed = open(&mut c, last).await.expect("resume");
    let after = read_until(&mut resumed, last, |r| {
        r.iter().any(|x| sample(x).is_some())
    })
    .await;
    assert_eq!(gap(&after[0]), Some(pb::GapReason::AgentDown), "{after:?}");
    drop(resumed);

    // Fail: SAMPLER_ERROR gaps until recover, then samples again.
    let id = "sim-0006";
    let mut c = observer(&fleet, id).await;
    let mut s = open(&mut c, 0).await.expect("stream");
    let first = read_until(&mut s, 0, |r| !r.is_empty()).await;
    let mut cursor = first.last().expect("one").seq;
    fleet.fail(id).expect("fail");
    let failing = read_until(&mut s, cursor, |r| {
        r.iter()
            .any(|x| gap(x) == Some(pb::GapReason::SamplerError))
    })
    .await;
    cursor = failing.last().expect("some").seq;
    fleet.recover(id).expect("recover");
    read_until(&mut s, cursor, |r| r.iter().any(|x| sample(x).is_some())).await;
    drop(s);

    // Lose the spool: a cursor from the old life is beyond the new one: OUT_OF_RANGE. The old
    // life is taken well ahead first, so the new one cannot have caught up by the time we ask.
    let id = "sim-0004";
    let mut c = observer(&fleet, id).await;
    let mut s = open(&mut c, 0).await.expect("stream");
    let old = read_until(&mut s, 0, |r| r.len() >= 30).await;
    drop(s);
    let old_cursor = old.last().expect("records").seq;
    fleet.lose_spool(id).await.expect("lose spool");
    let mut c = observer(&fleet, id).await;
    let refused = match open(&mut c, old_cursor).await {
        Err(status) => status,
        Ok(mut stream) => tokio::time::timeout(STEP, stream.message())
            .await
            .expect("an answer")
            .expect_err("an old cursor is refused"),
    };
    assert_eq!(refused.code(), Code::OutOfRange, "{refused}");
    let mut s = open(&mut c, 0).await.expect("a new life from 0");
    let fresh = read_until(&mut s, 0, |r| !r.is_empty()).await;
    assert_eq!(fresh[0].seq, 1);
    drop(s);

    // Kill: calls fail while down; start brings the host back on the same address.
    let id = "sim-0008";
    let addr = fleet.addr(id).await.expect("addr");
    fleet.kill(id).await.expect("kill");
    let mut c = observer(&fleet, id).await;
    let down = c
        .get_host(pb::GetHostRequest {})
        .await
        .expect_err("a killed host does not answer");
    assert_eq!(down.code(), Code::Unavailable, "{down}");
    assert!(fleet.kill(id).await.is_err(), "killing twice is refused");
    fleet.start_host(id).await.expect("start");
    assert_eq!(fleet.addr(id).await.expect("addr"), addr);
    let mut c = observer(&fleet, id).await;
    c.get_host(pb::GetHostRequest {})
        .await
        .expect("back after start");

    // Erase: Terminate as the controller, WatchErase to the end, a certificate that verifies
    // against the fleet CA with this nonce, and the target's key file gone.
    let id = "sim-0005";
    let mut c = controller(&fleet, id).await;
    let nonce: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(5))
        .collect();
    let op = c
        .terminate(pb::TerminateRequest {
            request_id: "sim-test-1".into(),
            host_id: id.into(),
            nonce: nonce.clone(),
        })
        .await
        .expect("Terminate")
        .into_inner()
        .operation
        .expect("operation");
    let mut watch = c
        .watch_erase(pb::WatchEraseRequest {
            operation_id: op.operation_id.clone(),
        })
        .await
        .expect("WatchErase")
        .into_inner();
    let mut last_msg = None;
    while let Some(msg) = tokio::time::timeout(STEP, watch.message())
        .await
        .expect("progress within the deadline")
        .expect("watch ok")
    {
        last_msg = Some(msg);
    }
    let last_msg = last_msg.expect("at least one message");
    let outcome = last_msg
        .operation
        .as_ref()
        .map(|o| o.outcome)
        .expect("operation");
    assert_eq!(
        pb::EraseOutcome::try_from(outcome),
        Ok(pb::EraseOutcome::Erased),
        "{last_msg:?}"
    );
    let wire = last_msg
        .certificate
        .expect("certificate on the last message");
    let mut o = observer(&fleet, id).await;
    let fetched = o
        .get_erase_certificate(pb::GetEraseCertificateRequest {
            operation_id: op.operation_id.clone(),
        })
        .await
        .expect("GetEraseCertificate")
        .into_inner()
        .certificate
        .expect("certificate");
    assert_eq!(wire, fetched);
    let cert = jex_agent::server::convert::certificate_from_proto(wire);
    let ca = std::fs::read(&fleet.pki().ca).expect("ca");
    let doc = jex_attest::verify_any(&cert, &ca, Some(&nonce)).expect("verifies");
    assert_eq!(doc.operation_id(), op.operation_id);
    let json: serde_json::Value = serde_json::from_slice(&cert.document_json).expect("json");
    assert_eq!(json["host"]["host_id"], id);
    assert_eq!(json["outcome"], "ERASED");
    assert!(
        jex_attest::verify_any(&cert, &ca, Some(&[0u8; 32])).is_err(),
        "another nonce is refused"
    );
    let key = fleet
        .host_dir(id)
        .expect("dir")
        .join("keys")
        .join(format!("{}.key", jex_sim::config::ERASE_TARGET));
    assert!(!key.exists(), "the fake key is destroyed");

    // The control socket: commands reach the fleet, bad ones get a clear error.
    let socket = dir.path().join(jex_sim::control::SOCKET);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn({
        let (socket, fleet) = (socket.clone(), fleet.clone());
        async move { jex_sim::control::serve(&socket, fleet, stop_rx).await }
    });
    let ask = |line: &'static str| {
        let socket = socket.clone();
        async move {
            for _ in 0..100 {
                if let Ok(reply) = jex_sim::control::ask(&socket, line).await {
                    return reply;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the control socket never answered");
        }
    };
    let reply = ask("fail sim-0010").await;
    assert!(reply.starts_with("ok: sim-0010 sampler failing"), "{reply}");
    let reply = ask("status sim-0010").await;
    assert!(reply.contains("sim-0010 https://127.0.3.10:"), "{reply}");
    assert!(
        reply.contains(" running ") && reply.contains(" failing"),
        "{reply}"
    );
    assert!(reply.ends_with("ok: 1 hosts\n"), "{reply}");
    let reply = ask("restart sim-0021").await;
    assert_eq!(
        reply,
        "error: no host sim-0021 in this fleet (it has sim-0001 to sim-0020)\n"
    );
    let reply = ask("stall sim-0002 soon").await;
    assert!(
        reply.starts_with("error: \"soon\" is not a duration"),
        "{reply}"
    );
    let reply = ask("recover sim-0010").await;
    assert!(reply.starts_with("ok: "), "{reply}");
    stop_tx.send(true).expect("stop");
    server.await.expect("joined").expect("served");
    assert!(!socket.exists(), "the socket is removed at stop");

    // Hosts untouched by any fault still stream.
    let mut c = observer(&fleet, "sim-0019").await;
    let mut s = open(&mut c, 0).await.expect("stream");
    read_until(&mut s, 0, |r| r.len() >= 3).await;
    drop(s);

    fleet.shutdown().await;
}

/// A second simulator joins the first's fleet: its hosts are numbered after the first's, and
/// issued by the first's CA (`--ca`), so the first's observer certificate reads them and their
/// host ids do not collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_simulator_joins_the_first_fleet_with_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut one = FleetConfig::new(dir.path().join("one"), 2);
    one.base_ip = std::net::Ipv4Addr::new(127, 0, 12, 1);
    one.port = 0;
    let first = Fleet::start(one).await.expect("first fleet");
    let mut two = FleetConfig::new(dir.path().join("two"), 2);
    two.first_host = 2;
    two.base_ip = std::net::Ipv4Addr::new(127, 0, 13, 1);
    two.port = 0;
    let ca = jex_sim::load_ca(&dir.path().join("one")).expect("the first fleet's CA loads");
    let second = Fleet::start_with_ca(two, &ca).await.expect("second fleet");
    assert_eq!(second.host_ids(), vec!["sim-0003", "sim-0004"]);
    assert_eq!(
        std::fs::read(&first.pki().ca).expect("ca one"),
        std::fs::read(&second.pki().ca).expect("ca two")
    );

    // The first fleet's observer reads a host of the second.
    let p = first.pki().clone();
    let mut c = client(&second, "sim-0004", &p.observer_cert, &p.observer_key).await;
    let host = c
        .get_host(pb::GetHostRequest {})
        .await
        .expect("GetHost with the first fleet's observer")
        .into_inner()
        .host
        .expect("host");
    assert_eq!(host.host_id, "sim-0004");
    let err = second.restart("sim-0001").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "no host sim-0001 in this fleet (it has sim-0003 to sim-0004)"
    );
    // A directory without a CA key says which file is missing.
    let e = jex_sim::load_ca(&dir.path().join("nowhere")).unwrap_err();
    assert!(
        jex_platform::error_chain(&e).contains("reading the CA certificate"),
        "{}",
        jex_platform::error_chain(&e)
    );
    second.shutdown().await;
    first.shutdown().await;
}
