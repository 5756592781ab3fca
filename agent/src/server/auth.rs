//! Who may call what: the caller's role comes from the URI SAN of its verified client
//! certificate, matched exactly against the configured lists, on every call, for every service
//! (NodeAgent, health and reflection alike). This is a tower layer in front of all routes, so no
//! handler can forget it.
//!
//! - no client certificate → `UNAUTHENTICATED`
//! - a certificate whose URI SANs hold no configured role → `PERMISSION_DENIED`
//! - an observer calling a controller-only RPC (`Terminate`) → `PERMISSION_DENIED`
//!
//! (A certificate from another CA, or an expired one, never gets here: the TLS handshake
//! refuses it, see `tls`.)
//!
//! A connection whose call was refused for want of a certificate is marked, so that the edge
//! closes it once the answer is handed over. Refusals are logged through the rate-limited
//! [`RefusalLog`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::conn::ConnInfo;
use super::refusals::{Reason, RefusalLog, Source};
use crate::config::RolesConfig;
use crate::tls::peer_identity;

/// The role of a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The fleet controller: every RPC.
    Controller,
    /// Read-only access.
    Observer,
}

impl Role {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Observer => "observer",
        }
    }
}

/// The authenticated caller, put in the request extensions for handlers and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The URI SAN that granted the role.
    pub id: String,
    /// The role.
    pub role: Role,
    /// The TCP peer address.
    pub addr: String,
}

/// Methods only a controller may call.
const CONTROLLER_ONLY: &[&str] = &["/jex.agent.v1.NodeAgent/Terminate"];

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No client certificate.
    NoCertificate,
    /// The certificate holds no configured role.
    NoRole {
        /// The URI SANs the certificate holds.
        uris: Vec<String>,
    },
    /// The role does not allow the method.
    NotAllowed {
        /// The caller's id.
        id: String,
        /// Its role.
        role: Role,
    },
}

impl Refusal {
    /// The reason it is counted under.
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::NoCertificate => Reason::NoCertificate,
            Refusal::NoRole { .. } => Reason::NoRole,
            Refusal::NotAllowed { .. } => Reason::NotAllowed,
        }
    }

    /// What the log says of it, besides the reason.
    pub fn detail(&self) -> String {
        match self {
            Refusal::NoCertificate => String::new(),
            Refusal::NoRole { uris } => format!("URI SANs {uris:?}"),
            Refusal::NotAllowed { id, role } => format!("{id} is {}", role.as_str()),
        }
    }

    /// The gRPC status sent to the caller: says what to fix, holds no secret.
    pub fn to_status(&self, method: &str) -> tonic::Status {
        match self {
            Refusal::NoCertificate => tonic::Status::unauthenticated(
                "no client certificate: connect with a certificate issued by the fleet CA",
            ),
            Refusal::NoRole { uris } => tonic::Status::permission_denied(format!(
                "client certificate URI SANs {uris:?} hold no role on this agent: use a controller or observer identity listed in its [roles] config"
            )),
            Refusal::NotAllowed { id, role } => tonic::Status::permission_denied(format!(
                "{method} needs the controller role; {id} is {}",
                role.as_str()
            )),
        }
    }
}

/// Decides whether the holder of `certs` may call `method`.
pub fn authorize(
    roles: &RolesConfig,
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    method: &str,
    addr: &str,
) -> Result<Peer, Refusal> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(Refusal::NoCertificate)?;
    // The handshake already verified this certificate; a parse failure here means no usable SAN.
    let uris = peer_identity(leaf).map(|i| i.uris).unwrap_or_default();
    let found = uris.iter().find_map(|u| {
        if roles.controller.iter().any(|c| c == u) {
            Some((u.clone(), Role::Controller))
        } else if roles.observer.iter().any(|o| o == u) {
            Some((u.clone(), Role::Observer))
        } else {
            None
        }
    });
    let (id, role) = found.ok_or(Refusal::NoRole { uris })?;
    if role != Role::Controller && CONTROLLER_ONLY.contains(&method) {
        return Err(Refusal::NotAllowed { id, role });
    }
    Ok(Peer {
        id,
        role,
        addr: addr.to_owned(),
    })
}

/// The longest method path a log line quotes (the path is the client's to choose).
const LOGGED_METHOD_CHARS: usize = 96;

/// The tower layer.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    roles: Arc<RolesConfig>,
    refusals: Arc<RefusalLog>,
}

impl AuthLayer {
    /// A layer enforcing `roles`, counting refusals in `refusals`.
    pub fn new(roles: RolesConfig, refusals: Arc<RefusalLog>) -> Self {
        Self {
            roles: Arc::new(roles),
            refusals,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            roles: self.roles.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

/// The service the layer wraps around every route.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    roles: Arc<RolesConfig>,
    refusals: Arc<RefusalLog>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let info = req.extensions().get::<ConnInfo>().cloned();
        let addr = info
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |i| i.remote.to_string());
        let certs = info.as_ref().and_then(|i| i.peer_certs.clone());
        match authorize(
            &self.roles,
            certs.as_deref().map(|v| v.as_slice()),
            &method,
            &addr,
        ) {
            Ok(peer) => {
                req.extensions_mut().insert(peer);
                // Take the service that was driven to readiness, leave a fresh clone behind.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(req).await })
            }
            Err(refusal) => {
                if let Some(info) = &info {
                    if refusal == Refusal::NoCertificate {
                        info.state.refuse();
                    }
                    self.refusals
                        .refused(Source::Peer(info.remote.ip()), refusal.reason(), || {
                            let rpc: String = method.chars().take(LOGGED_METHOD_CHARS).collect();
                            let detail = refusal.detail();
                            let sep = if detail.is_empty() { "" } else { ": " };
                            format!("{addr} called {rpc}{sep}{detail}")
                        });
                }
                let status = refusal.to_status(&method);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
