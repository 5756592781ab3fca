//! The system log sink's memory stays flat however many connections the agent serves.
//!
//! On macOS the sink is `tracing-oslog`, which keeps the text `target::name(field: value, …)` of
//! every distinct new span in a process-wide map it never empties (`NAMES`, `on_new_span` in its
//! `src/logger.rs`). Off macOS that crate is a stub, so a stand-in sink ([`OsLogModel`]) does
//! exactly that with the same text, and is put where the unified log goes: installed through
//! `jex_platform::logsink::install` (as the OS sink is) in the system-log place of the agent's
//! own subscriber (`jex_agent::logging::subscriber_with`). A real agent is started in-process
//! (`jex_agent::app::start`) and served 10,000 real mTLS connections on loopback, each making a
//! `GetHost` call, so each new client port appears in the `rpc` span's `addr` field.
//!
//! Each test installs its subscriber on its own thread and runs the agent on a current-thread
//! runtime there, so connection tasks (and the `rpc` spans they open) run under that
//! subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use jex_agent::logging::{LogTargets, SystemLog};
use jex_e2e::{TestPki, tls_config};
use jex_proto::v1::GetHostRequest;
use jex_proto::v1::node_agent_client::NodeAgentClient;
use tonic::transport::Endpoint;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The connections of the main test.
const CONNECTIONS: usize = 10_000;

/// The names the sink may hold after them: one per span call site the calls pass through
/// (`server`, `rpc`), with room for a few more sites in the code, never one per connection.
const NAMES_BOUND: usize = 16;

/// What `tracing-oslog` 0.3 keeps per new span: a C string of `target::name(k: v, …)`, the
/// fields in name order, strings quoted and other values in `Debug` form (its `visitor.rs`),
/// in a map that is never emptied.
#[derive(Clone, Default)]
struct OsLogModel {
    names: Arc<Mutex<HashMap<String, CString>>>,
}

impl OsLogModel {
    fn len(&self) -> usize {
        self.names.lock().unwrap().len()
    }
}

/// `tracing-oslog`'s `FieldVisitor`: every field into a map ordered by name.
#[derive(Default)]
struct Fields(std::collections::BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), format!("\"{value}\""));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for OsLogModel {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let m = attrs.metadata();
        let listed: Vec<String> = fields.0.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let name = format!("{}::{}({})", m.target(), m.name(), listed.join(", "));
        let text = CString::new(name.clone()).unwrap();
        self.names.lock().unwrap().entry(name).or_insert(text);
    }
}

/// The stand-in in the system log's place, installed the way the platform installs its sink.
struct StandIn(OsLogModel);

impl SystemLog for StandIn {
    fn layer<S>(&self) -> Option<Box<dyn Layer<S> + Send + Sync>>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        Some(jex_platform::logsink::install(self.0.clone()))
    }
}

/// The stand-in installed as the sink was before `install` existed: given spans as they are.
struct BareStandIn(OsLogModel);

impl SystemLog for BareStandIn {
    fn layer<S>(&self) -> Option<Box<dyn Layer<S> + Send + Sync>>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        Some(Box::new(self.0.clone()))
    }
}

/// Starts an agent in-process under a subscriber with `system_log`, makes `connections` new
/// connections with one `GetHost` each, and returns how many names `model` held after the
/// first `warm_up` connections and after all of them.
/// TCP to the agent, remembering each connection's own address (its source port): on loopback
/// the kernel may give a port back to a later connection once the earlier one has closed.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<std::collections::HashSet<std::net::SocketAddr>>>);

type RecordedIo = hyper_util::rt::TokioIo<tokio::net::TcpStream>;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for Recording {
    type Response = RecordedIo;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<RecordedIo, std::io::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let used = self.0.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.to_string())
                .ok_or_else(|| std::io::Error::other("no authority"))?;
            let tcp = tokio::net::TcpStream::connect(authority).await?;
            used.lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .insert(tcp.local_addr()?);
            Ok(hyper_util::rt::TokioIo::new(tcp))
        })
    }
}

/// Serves `connections` connections, one GetHost each: (names after `warm_up` connections,
/// names after all, distinct client addresses used).
fn serve_connections(
    system_log: &impl SystemLog,
    model: &OsLogModel,
    warm_up: usize,
    connections: usize,
) -> Result<(usize, usize, usize)> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let targets = LogTargets {
        level: "info".to_owned(),
        file: Some((dir.path().join("logs"), 16 << 20, 2)),
    };
    let (subscriber, _log) =
        jex_agent::logging::subscriber_with(&targets, std::io::sink, system_log)?;
    let _default = tracing::subscriber::set_default(subscriber);
    let text = jex_agent::demo::demo_config(dir.path(), &pki.paths, 1000);
    let config = jex_agent::config::Config::parse(&dir.path().join("agent.toml"), &text)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let agent = jex_agent::app::start(config).await?;
        let endpoint = Endpoint::from_shared(format!("https://{}", agent.local_addr()))?
            .tls_config(tls_config(&pki, Some(&pki.controller()))?)?;
        let mut after_warm_up = 0;
        let recording = Recording::default();
        for n in 1..=connections {
            // A new channel is a new TCP connection.
            let channel = endpoint.connect_with_connector(recording.clone()).await?;
            let host = NodeAgentClient::new(channel)
                .get_host(GetHostRequest {})
                .await?
                .into_inner();
            assert_eq!(host.host.map(|h| h.host_id).as_deref(), Some("h-e2e"));
            if n == warm_up {
                after_warm_up = model.len();
            }
        }
        let after_all = model.len();
        agent.shutdown().await;
        let addresses = recording.0.lock().map(|u| u.len()).unwrap_or(0);
        Ok((after_warm_up, after_all, addresses))
    })
}

#[test]
fn the_system_log_sink_holds_one_name_per_span_site_over_10000_connections() -> Result<()> {
    let model = OsLogModel::default();
    let (after_warm_up, after_all, _) =
        serve_connections(&StandIn(model.clone()), &model, 100, CONNECTIONS)?;
    let names: Vec<String> = model.names.lock().unwrap().keys().cloned().collect();
    assert!(
        names.iter().any(|n| n.ends_with("::rpc()")),
        "the rpc span reached the sink, by name: {names:?}"
    );
    assert!(
        after_all <= NAMES_BOUND,
        "{after_all} names after {CONNECTIONS} connections: {names:?}"
    );
    assert_eq!(
        after_all, after_warm_up,
        "no new name after the first 100 connections: {names:?}"
    );
    Ok(())
}

#[test]
fn given_spans_with_their_fields_the_sink_keeps_a_name_per_connection() -> Result<()> {
    const FEW: usize = 300;
    let model = OsLogModel::default();
    let (_, after_all, addresses) = serve_connections(&BareStandIn(model.clone()), &model, 1, FEW)?;
    let rpc_names = model
        .names
        .lock()
        .unwrap()
        .keys()
        .filter(|n| n.contains("::rpc(") && n.contains("addr: 127.0.0.1:"))
        .count();
    // One name per client address; a port the kernel gave back to a later connection makes
    // one address (and one name) for two connections.
    assert_eq!(
        rpc_names, addresses,
        "one rpc name per connection's address"
    );
    assert!(
        addresses > FEW / 2,
        "{addresses} addresses for {FEW} connections"
    );
    assert!(after_all >= addresses);
    Ok(())
}
