//! Who may call what: the caller's role comes from the URI SAN of its verified client
//! certificate, matched exactly against the configured lists, on every call, for every service
//! (NodeAgent, health and reflection alike). This is a tower layer in front of all routes, so no
//! handler can forget it.
//!
//! It is an allow-list: [`METHODS`] is one table of roles per method, built from the entries of
//! the RPC files (`rpc`) plus the health and reflection methods. A unit test over the compiled
//! service descriptors fails for any served method without an entry. In order:
//!
//! - no client certificate → `UNAUTHENTICATED`
//! - a certificate whose URI SANs hold no configured role → `PERMISSION_DENIED`
//! - a method not in the table → `UNIMPLEMENTED`, for every role, without reaching the routes
//!   (the code gRPC gives an unknown method; a method served but left out of the table is
//!   unreachable, never open)
//! - a role the method's entry does not list (an observer calling `Terminate`) →
//!   `PERMISSION_DENIED`
//! - a request that does not carry its connection's details (which the edge always inserts) →
//!   `INTERNAL`, logged, never a role
//!
//! (A certificate from another CA, or an expired one, never gets here: the TLS handshake
//! refuses it, see `tls`.)
//!
//! A connection whose call was refused for want of a certificate is marked, so that the edge
//! closes it once the answer is handed over. Refusals are logged through the rate-limited
//! `RefusalLog`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::conn::ConnInfo;
use super::refusals::{Reason, RefusalLog, Source};
use super::rpc::{ANY_ROLE, Method, NODE_AGENT};
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

/// `grpc.health.v1`: read-only, every role.
const HEALTH: [Method; 2] = [
    Method {
        path: "/grpc.health.v1.Health/Check",
        roles: ANY_ROLE,
    },
    Method {
        path: "/grpc.health.v1.Health/Watch",
        roles: ANY_ROLE,
    },
];

/// Server reflection, both versions: read-only, every role.
const REFLECTION: [Method; 2] = [
    Method {
        path: "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        roles: ANY_ROLE,
    },
    Method {
        path: "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        roles: ANY_ROLE,
    },
];

/// Every method the agent serves, with the roles allowed to call it; nothing else is reachable.
pub const METHODS: [Method; 10] = {
    let [a, b, c, d, e, f] = NODE_AGENT;
    let [h1, h2] = HEALTH;
    let [r1, r2] = REFLECTION;
    [a, b, c, d, e, f, h1, h2, r1, r2]
};

/// The roles allowed to call `path`; `None` when it is not in the table.
pub fn roles_for(path: &str) -> Option<&'static [Role]> {
    METHODS.iter().find(|m| m.path == path).map(|m| m.roles)
}

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
    /// The method is not in the table (not served, or served without an entry).
    UnknownMethod,
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
            Refusal::UnknownMethod => Reason::UnknownMethod,
            Refusal::NotAllowed { .. } => Reason::NotAllowed,
        }
    }

    /// What the log says of it, besides the reason.
    pub fn detail(&self) -> String {
        match self {
            Refusal::NoCertificate | Refusal::UnknownMethod => String::new(),
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
            Refusal::UnknownMethod => tonic::Status::unimplemented(format!(
                "{} is not a method of this agent",
                quoted_method(method)
            )),
            Refusal::NotAllowed { id, role } => {
                let needs = roles_for(method)
                    .unwrap_or_default()
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ");
                tonic::Status::permission_denied(format!(
                    "{method} needs the {needs} role; {id} is {}",
                    role.as_str()
                ))
            }
        }
    }
}

/// The identity and role of the holder of `certs` (a chain the handshake verified, leaf
/// first): the first URI SAN listed in a role. Also what the `/metrics` listener asks over
/// mTLS, where either role may scrape.
pub fn identify(
    roles: &RolesConfig,
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Result<(String, Role), Refusal> {
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
    found.ok_or(Refusal::NoRole { uris })
}

/// Decides whether the holder of `certs` may call `method`.
pub fn authorize(
    roles: &RolesConfig,
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    method: &str,
    addr: &str,
) -> Result<Peer, Refusal> {
    let (id, role) = identify(roles, certs)?;
    let allowed = roles_for(method).ok_or(Refusal::UnknownMethod)?;
    if !allowed.contains(&role) {
        return Err(Refusal::NotAllowed { id, role });
    }
    Ok(Peer {
        id,
        role,
        addr: addr.to_owned(),
    })
}

/// The longest method path a log line or an answer quotes (the path is the client's to
/// choose).
const LOGGED_METHOD_CHARS: usize = 96;

fn quoted_method(method: &str) -> String {
    method.chars().take(LOGGED_METHOD_CHARS).collect()
}

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
        let Some(info) = req.extensions().get::<ConnInfo>().cloned() else {
            // The edge inserts the connection's details in every request: without them there
            // is no peer to authorize, and no role to fall back on.
            tracing::error!(
                rpc = %quoted_method(&method),
                "a request arrived without its connection's details; refused"
            );
            let status = tonic::Status::internal(
                "internal error: the caller could not be identified; the agent log has the details",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let addr = info.remote.to_string();
        let certs = info.peer_certs.clone();
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
                if refusal == Refusal::NoCertificate {
                    info.state.refuse();
                }
                self.refusals
                    .refused(Source::Peer(info.remote.ip()), refusal.reason(), || {
                        let rpc = quoted_method(&method);
                        let detail = refusal.detail();
                        let sep = if detail.is_empty() { "" } else { ": " };
                        format!("{addr} called {rpc}{sep}{detail}")
                    });
                let status = refusal.to_status(&method);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::FileDescriptorSet;

    /// Every method of every service in the descriptor sets the agent serves (the same bytes
    /// reflection serves), as `/<package>.<Service>/<Method>`.
    fn served_methods() -> Vec<String> {
        let sets: [&[u8]; 4] = [
            jex_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut out = Vec::new();
        for bytes in sets {
            let set = FileDescriptorSet::decode(bytes).expect("a compiled descriptor set decodes");
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        out.push(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_served_method_has_an_entry_and_every_entry_is_served() {
        let served = served_methods();
        // The four services are all there (a descriptor set that lost one would pass below).
        for service in [
            "/jex.agent.v1.NodeAgent/",
            "/grpc.health.v1.Health/",
            "/grpc.reflection.v1.ServerReflection/",
            "/grpc.reflection.v1alpha.ServerReflection/",
        ] {
            assert!(
                served.iter().any(|m| m.starts_with(service)),
                "no method of {service} in the descriptors"
            );
        }
        let missing: Vec<_> = served.iter().filter(|m| roles_for(m).is_none()).collect();
        assert!(
            missing.is_empty(),
            "methods served without an entry in auth::METHODS (refused for everyone): {missing:?}"
        );
        let stale: Vec<_> = METHODS
            .iter()
            .filter(|m| !served.iter().any(|s| s == m.path))
            .map(|m| m.path)
            .collect();
        assert!(
            stale.is_empty(),
            "entries for methods not served: {stale:?}"
        );
        for m in METHODS {
            assert!(!m.roles.is_empty(), "{} allows no role", m.path);
            assert_eq!(
                METHODS.iter().filter(|n| n.path == m.path).count(),
                1,
                "{} has two entries",
                m.path
            );
        }
    }

    #[test]
    fn only_the_calls_that_change_the_host_are_the_controllers_alone() {
        let controller_only: Vec<_> = METHODS
            .iter()
            .filter(|m| !m.roles.contains(&Role::Observer))
            .map(|m| m.path)
            .collect();
        assert_eq!(
            controller_only,
            [
                "/jex.agent.v1.NodeAgent/Terminate",
                "/jex.agent.v1.NodeAgent/AttestErase"
            ]
        );
        assert!(METHODS.iter().all(|m| m.roles.contains(&Role::Controller)));
    }

    fn cert_with(uri: &str) -> rustls::pki_types::CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().expect("an IA5 URI")));
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn a_method_not_in_the_table_is_refused_for_every_role() {
        let roles = RolesConfig {
            controller: vec!["spiffe://t/controller".to_owned()],
            observer: vec!["spiffe://t/observer".to_owned()],
        };
        let controller = [cert_with("spiffe://t/controller")];
        let observer = [cert_with("spiffe://t/observer")];
        for certs in [&controller, &observer] {
            let refusal = authorize(&roles, Some(certs), "/jex.agent.v1.NodeAgent/Reboot", "a")
                .expect_err("not in the table");
            assert_eq!(refusal, Refusal::UnknownMethod);
            let status = refusal.to_status("/jex.agent.v1.NodeAgent/Reboot");
            assert_eq!(status.code(), tonic::Code::Unimplemented);
        }
        // The identity is checked first: a caller without a certificate learns nothing more.
        assert_eq!(
            authorize(&roles, None, "/x.Y/Z", "a").expect_err("refused"),
            Refusal::NoCertificate
        );
        let observer_terminates =
            authorize(&roles, Some(&observer), terminate_path(), "a").expect_err("refused");
        assert!(matches!(observer_terminates, Refusal::NotAllowed { .. }));
        assert_eq!(
            observer_terminates.to_status(terminate_path()).message(),
            "/jex.agent.v1.NodeAgent/Terminate needs the controller role; spiffe://t/observer is observer"
        );
        let peer = authorize(&roles, Some(&controller), terminate_path(), "a").expect("allowed");
        assert_eq!(peer.role, Role::Controller);
        let peer = authorize(&roles, Some(&observer), "/grpc.health.v1.Health/Check", "a")
            .expect("allowed");
        assert_eq!(peer.role, Role::Observer);
    }

    fn terminate_path() -> &'static str {
        super::super::rpc::terminate::METHOD.path
    }
}
