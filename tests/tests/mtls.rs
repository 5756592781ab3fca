//! mTLS and roles, over real TLS on loopback against a real agent process: every way a caller
//! can be refused, the gRPC code it gets, and the agent's log line saying why.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use jex_agent::pki::{DevCa, LeafSpec};
use jex_e2e::*;
use jex_proto::v1 as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::Code;

const LOG_WAIT: Duration = Duration::from_secs(5);

/// The call was refused with `code`, and the message tells the caller what to fix.
fn assert_refused(status: &tonic::Status, code: Code, says: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{}", status.message());
}

async fn get_host_code(
    pki: &TestPki,
    agent: &AgentProcess,
    who: Option<&ClientFiles>,
) -> Result<Result<pb::Host, tonic::Status>> {
    let mut c = client(pki, agent, who).await?;
    Ok(c.get_host(pb::GetHostRequest {})
        .await
        .map(|r| r.into_inner().host.unwrap_or_default()))
}

fn start(pki: &TestPki) -> Result<(tempfile::TempDir, AgentProcess)> {
    let dir = tempfile::tempdir()?;
    let agent = start_agent(pki, dir.path(), &AgentOptions::default())?;
    Ok((dir, agent))
}

#[tokio::test]
async fn controller_gets_host_identity_from_the_agent_certificate() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let host = get_host_code(&pki, &agent, Some(&pki.controller())).await??;
    assert_eq!(host.host_id, HOST_ID);
    assert_eq!(host.agent_version, env!("CARGO_PKG_VERSION"));
    // The build the binary says it is, field by field, is what GetHost reports.
    let build = host.agent_build.clone().unwrap_or_default();
    let version = std::process::Command::new(jex_e2e::agent_bin()?)
        .arg("--version")
        .output()?;
    let printed = String::from_utf8(version.stdout)?;
    assert_eq!(
        printed.trim(),
        format!(
            "jex-agent {} (commit {}, {}, built {}, {})",
            build.version, build.commit, build.target, build.build_date, build.rustc
        )
    );
    assert_eq!(build.version, env!("CARGO_PKG_VERSION"));
    assert!(build.rustc.starts_with("rustc 1."), "{}", build.rustc);
    assert!(build.target.contains('-'), "{}", build.target);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    assert_eq!(build.commit, String::from_utf8(head.stdout)?.trim());
    assert_eq!(build.build_date.len(), 10, "{}", build.build_date);
    assert_eq!(host.lifecycle_state, pb::LifecycleState::Serving as i32);
    assert_eq!(host.telemetry_interval_ms, 100);
    agent.wait_for_log(
        &["\"rpc\":\"GetHost\"", "spiffe://fleet.example/controller"],
        LOG_WAIT,
    )?;
    Ok(())
}

#[tokio::test]
async fn no_client_certificate_is_unauthenticated() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let status = get_host_code(&pki, &agent, None)
        .await?
        .expect_err("refused");
    assert_refused(&status, Code::Unauthenticated, "client certificate");
    agent.wait_for_log(
        &["call refused", "no client certificate", "GetHost"],
        LOG_WAIT,
    )?;
    Ok(())
}

#[tokio::test]
async fn certificate_from_another_ca_fails_the_handshake() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let rogue = DevCa::generate("rogue CA")?;
    let files = pki.issue(
        "rogue",
        Some(&rogue),
        &LeafSpec::client(
            "rogue",
            vec![jex_agent::pki::controller_uri(TRUST_DOMAIN)],
            30,
        ),
    )?;
    let status = get_host_code(&pki, &agent, Some(&files))
        .await?
        .expect_err("refused");
    // The TLS layer refuses it: the client sees a transport failure, not a gRPC answer.
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{status:?}"
    );
    let line = agent.wait_for_log(&["TLS handshake refused"], LOG_WAIT)?;
    assert!(
        line.contains("certificate not issued by the fleet CA (unknown issuer)"),
        "{line}"
    );
    assert!(!line.contains("BEGIN"), "no PEM in logs: {line}");
    Ok(())
}

#[tokio::test]
async fn expired_certificate_fails_the_handshake() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let mut spec = LeafSpec::client(
        "expired",
        vec![jex_agent::pki::controller_uri(TRUST_DOMAIN)],
        1,
    );
    spec.not_before = time::Duration::days(-30);
    spec.not_after = time::Duration::days(-1);
    let files = pki.issue("expired", None, &spec)?;
    let status = get_host_code(&pki, &agent, Some(&files))
        .await?
        .expect_err("refused");
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{status:?}"
    );
    let line = agent.wait_for_log(&["TLS handshake refused"], LOG_WAIT)?;
    // A sentence with both times, not Rust debug text.
    assert!(line.contains("certificate expired at "), "{line}");
    assert!(line.contains(", now 20"), "{line}");
    assert!(!line.contains("ExpiredContext"), "{line}");
    Ok(())
}

#[tokio::test]
async fn each_cause_of_a_refused_certificate_is_logged_at_once_with_its_detail() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let controller = vec![jex_agent::pki::controller_uri(TRUST_DOMAIN)];
    let rogue = DevCa::generate("rogue CA")?;
    let unknown = pki.issue(
        "rogue",
        Some(&rogue),
        &LeafSpec::client("rogue", controller.clone(), 30),
    )?;
    let mut spec = LeafSpec::client("expired", controller.clone(), 1);
    spec.not_before = time::Duration::days(-30);
    spec.not_after = time::Duration::days(-1);
    let expired = pki.issue("expired", None, &spec)?;
    let mut spec = LeafSpec::client("early", controller, 1);
    spec.not_before = time::Duration::days(2);
    spec.not_after = time::Duration::days(30);
    let early = pki.issue("early", None, &spec)?;

    // A run of unknown-issuer refusals from 127.0.0.1: one line, the rest counted.
    for _ in 0..5 {
        get_host_code(&pki, &agent, Some(&unknown))
            .await?
            .expect_err("refused");
    }
    agent.wait_for_log(
        &[
            "TLS handshake refused",
            "client certificate from an unknown issuer",
            "unknown issuer",
        ],
        LOG_WAIT,
    )?;
    // Then, from the same address and within the same 10 s window, an expired certificate and
    // one not valid yet: each is a cause of its own, logged at once with its detail (the
    // immediate line, not a summary: the summary lines say "refusals from").
    get_host_code(&pki, &agent, Some(&expired))
        .await?
        .expect_err("refused");
    let line = agent.wait_for_log(
        &[
            "TLS handshake refused",
            "client certificate expired",
            "certificate expired at ",
        ],
        LOG_WAIT,
    )?;
    assert!(line.contains("127.0.0.1"), "{line}");
    get_host_code(&pki, &agent, Some(&early))
        .await?
        .expect_err("refused");
    agent.wait_for_log(
        &[
            "TLS handshake refused",
            "client certificate not yet valid",
            "certificate not valid before ",
        ],
        LOG_WAIT,
    )?;
    // The rest of the unknown-issuer run is summed when its window ends, not logged one by one
    // (a window boundary inside the run can make it two immediate lines, never five).
    agent.wait_for_log(
        &["refusals from 127.0.0.1", "unknown issuer"],
        Duration::from_secs(15),
    )?;
    let immediate = agent
        .log()
        .lines()
        .filter(|l| l.contains("TLS handshake refused") && l.contains("unknown issuer"))
        .count();
    assert!((1..=2).contains(&immediate), "{immediate} immediate lines");
    Ok(())
}

#[tokio::test]
async fn valid_certificate_without_a_role_is_permission_denied() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let files = pki.issue(
        "norole",
        None,
        &LeafSpec::client("norole", vec!["spiffe://fleet.example/intern".into()], 30),
    )?;
    let status = get_host_code(&pki, &agent, Some(&files))
        .await?
        .expect_err("refused");
    assert_refused(
        &status,
        Code::PermissionDenied,
        "spiffe://fleet.example/intern",
    );
    agent.wait_for_log(
        &[
            "call refused",
            "client certificate holds no role",
            "spiffe://fleet.example/intern",
        ],
        LOG_WAIT,
    )?;
    // A certificate with no URI SAN at all is refused the same way.
    let bare = pki.issue("bare", None, &LeafSpec::client("bare", vec![], 30))?;
    let status = get_host_code(&pki, &agent, Some(&bare))
        .await?
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn observer_may_read_but_not_terminate() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let host = get_host_code(&pki, &agent, Some(&pki.observer())).await??;
    assert_eq!(host.host_id, HOST_ID);
    let mut c = client(&pki, &agent, Some(&pki.observer())).await?;
    let status = c
        .terminate(pb::TerminateRequest {
            request_id: "r1".into(),
            host_id: HOST_ID.into(),
            nonce: vec![7; 32],
        })
        .await
        .expect_err("observer refused");
    assert_refused(&status, Code::PermissionDenied, "controller role");
    agent.wait_for_log(
        &[
            "call refused",
            "not allowed for the caller's role",
            "Terminate",
        ],
        LOG_WAIT,
    )?;
    Ok(())
}

/// Calls `path` (a unary method taking and returning `GetHostRequest`-shaped messages) as `who`.
async fn call_path(
    pki: &TestPki,
    agent: &AgentProcess,
    who: Option<&ClientFiles>,
    path: &'static str,
) -> Result<tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", agent.addr))?
        .tls_config(tls_config(pki, who)?)?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let answer = grpc
        .unary(
            tonic::Request::new(pb::GetHostRequest {}),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::<pb::GetHostRequest, pb::GetHostResponse>::default(),
        )
        .await;
    match answer {
        Ok(_) => anyhow::bail!("{path} answered"),
        Err(status) => Ok(status),
    }
}

#[tokio::test]
async fn a_method_not_in_the_table_of_roles_is_refused_for_every_role() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    const UNKNOWN: &str = "/jex.agent.v1.NodeAgent/Reboot";
    for who in [pki.controller(), pki.observer()] {
        let status = call_path(&pki, &agent, Some(&who), UNKNOWN).await?;
        assert_refused(&status, Code::Unimplemented, "not a method of this agent");
    }
    // Another service altogether.
    let status = call_path(&pki, &agent, Some(&pki.controller()), "/x.Admin/Shell").await?;
    assert_refused(&status, Code::Unimplemented, "/x.Admin/Shell");
    // Without a certificate the identity is refused first.
    let status = call_path(&pki, &agent, None, UNKNOWN).await?;
    assert_refused(&status, Code::Unauthenticated, "client certificate");
    agent.wait_for_log(&["call refused", "unknown method", "Reboot"], LOG_WAIT)?;
    // The agent still serves.
    let host = get_host_code(&pki, &agent, Some(&pki.observer())).await??;
    assert_eq!(host.host_id, HOST_ID);
    Ok(())
}

#[tokio::test]
async fn plaintext_http2_client_is_refused() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", agent.addr))?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut c = pb::node_agent_client::NodeAgentClient::new(channel);
    let status = tokio::time::timeout(Duration::from_secs(15), c.get_host(pb::GetHostRequest {}))
        .await?
        .expect_err("plaintext refused");
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{status:?}"
    );
    let line = agent.wait_for_log(&["TLS handshake refused"], LOG_WAIT)?;
    assert!(line.contains("not a TLS client"), "{line}");
    Ok(())
}

fn rustls_client(
    pki: &TestPki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.paths.ca_cert)? {
        roots.add(c?)?;
    }
    let chain: Vec<_> =
        CertificateDer::pem_file_iter(&pki.paths.controller_cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&pki.paths.controller_key)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

async fn server_leaf(
    pki: &TestPki,
    agent: &AgentProcess,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<CertificateDer<'static>> {
    let tcp = tokio::net::TcpStream::connect(agent.addr).await?;
    let tls = tokio_rustls::TlsConnector::from(rustls_client(pki, versions)?)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no server cert"))
}

#[tokio::test]
async fn tls12_only_client_is_refused() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let err = server_leaf(&pki, &agent, &[&rustls::version::TLS12])
        .await
        .expect_err("TLS 1.2 refused");
    assert!(
        err.to_string().to_lowercase().contains("protocol") || err.to_string().contains("alert"),
        "{err}"
    );
    agent.wait_for_log(&["TLS handshake refused", "incompatible"], LOG_WAIT)?;
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_streams() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let before = server_leaf(&pki, &agent, &[&rustls::version::TLS13]).await?;

    // A telemetry stream opened before the reload.
    let mut stream = open_telemetry(&pki, &agent, 0, 0).await?;
    let first = stream.message().await?.expect("a batch before reload");
    let mut last = first.records.last().expect("records").seq;

    // New agent certificate, same names, new key and serial.
    let fresh = pki.ca.issue(&LeafSpec {
        common_name: "jex-agent renewed".into(),
        names: vec!["localhost".into(), "127.0.0.1".into()],
        uris: vec![format!("spiffe://{TRUST_DOMAIN}/host/{HOST_ID}")],
        server: true,
        not_before: time::Duration::hours(-1),
        not_after: time::Duration::days(30),
    })?;
    jex_agent::pki::write_file(&pki.paths.agent_cert, fresh.cert_pem.as_bytes(), 0o644)?;
    jex_agent::pki::write_file(&pki.paths.agent_key, fresh.key_pem.as_bytes(), 0o600)?;
    agent.signal(nix::sys::signal::Signal::SIGHUP)?;
    agent.wait_for_log(&["TLS certificate and key reloaded"], LOG_WAIT)?;

    let after = server_leaf(&pki, &agent, &[&rustls::version::TLS13]).await?;
    assert_ne!(before, after, "new connections get the new certificate");
    let expected = CertificateDer::from_pem_slice(fresh.cert_pem.as_bytes())?;
    assert_eq!(after, expected);

    // The old stream is still delivering, contiguously.
    for _ in 0..3 {
        let batch = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await??
            .expect("stream still open");
        for r in batch.records {
            assert_eq!(r.seq, last + 1);
            last = r.seq;
        }
    }
    Ok(())
}

#[tokio::test]
async fn health_and_reflection_answer_an_authenticated_caller() -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let ch = channel(&pki, &agent, &pki.observer()).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "jex.agent.v1.NodeAgent".into(),
        })
        .await?
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await?
        .into_inner();
    let msg = resp.message().await?.expect("a reflection answer");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"jex.agent.v1.NodeAgent".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    // Without a certificate, health is refused too.
    let anon = tonic::transport::Channel::from_shared(format!("https://{}", agent.addr))?
        .tls_config(tls_config(&pki, None)?)?
        .connect()
        .await?;
    let status = tonic_health::pb::health_client::HealthClient::new(anon)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect_err("anonymous health refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_within_the_grace() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    // An open stream must not hold the agent up.
    let mut stream = open_telemetry(&pki, &agent, 0, 0).await?;
    let _ = stream.message().await?;
    let (code, took) = tokio::task::spawn_blocking(move || agent.terminate()).await??;
    assert_eq!(code, Some(0));
    assert!(took < jex_agent::app::SHUTDOWN_GRACE, "took {took:?}");
    Ok(())
}

#[tokio::test]
async fn replaced_certificate_files_are_picked_up_without_a_signal() -> Result<()> {
    let pki = TestPki::new()?;
    let (_d, agent) = start(&pki)?;
    let before = server_leaf(&pki, &agent, &[&rustls::version::TLS13]).await?;
    let fresh = pki.ca.issue(&LeafSpec {
        common_name: "jex-agent renewed by a certificate manager".into(),
        names: vec!["localhost".into(), "127.0.0.1".into()],
        uris: vec![format!("spiffe://{TRUST_DOMAIN}/host/{HOST_ID}")],
        server: true,
        not_before: time::Duration::hours(-1),
        not_after: time::Duration::days(30),
    })?;
    // The certificate first, then the key: the first change may not load (key mismatch), the
    // second must.
    jex_agent::pki::write_file(&pki.paths.agent_cert, fresh.cert_pem.as_bytes(), 0o644)?;
    jex_agent::pki::write_file(&pki.paths.agent_key, fresh.key_pem.as_bytes(), 0o600)?;
    let wait = jex_agent::app::TLS_FILE_POLL * 3;
    agent.wait_for_log(
        &["TLS files changed on disk: certificate and key reloaded"],
        wait,
    )?;
    let after = server_leaf(&pki, &agent, &[&rustls::version::TLS13]).await?;
    assert_ne!(before, after);
    assert_eq!(
        after,
        CertificateDer::from_pem_slice(fresh.cert_pem.as_bytes())?
    );

    // Files that do not load are refused and the agent keeps serving with the last good ones.
    std::fs::write(&pki.paths.agent_cert, b"not a certificate")?;
    agent.wait_for_log(&["do not load; keeping the previous certificate"], wait)?;
    assert_eq!(
        server_leaf(&pki, &agent, &[&rustls::version::TLS13]).await?,
        after
    );
    Ok(())
}
