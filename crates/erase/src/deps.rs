//! What the erase engine gets from outside: the certificate signer, this host's identity, the
//! key backend of each target ([`EraseDeps`]), and how targets are opened (`IoOpener`, crate-private).

use std::path::Path;
use std::sync::Arc;

use crate::config::{EraseConfig, TargetConfig};
use crate::error::EraseError;
use crate::keys::{KeyDestroyer, destroyer_for};
use jex_attest::{HostIdentity, Signer};
use jex_platform::blockdev::{Access, BlockDevError, DirectTarget, TargetIo};

/// Builds the key destroyer of a configured target.
pub type KeyDestroyerFactory =
    Box<dyn Fn(&TargetConfig) -> Result<Box<dyn KeyDestroyer>, EraseError> + Send + Sync>;

/// The production factory: each target's backend from [`destroyer_for`], with the tools the
/// config names; a backend that cannot be built is [`EraseError::Keys`] naming the target.
pub fn production_factory(erase: &EraseConfig) -> KeyDestroyerFactory {
    let tools = erase.tools.clone();
    Box::new(move |t: &TargetConfig| {
        destroyer_for(&tools, t).map_err(|source| EraseError::Keys {
            target: t.name.clone(),
            source,
        })
    })
}

/// What the erase service needs from the rest of the agent.
pub struct EraseDeps {
    /// Signs certificates.
    pub signer: Arc<dyn Signer>,
    /// This host, as written into certificates; `host_id` is compared with `Terminate`'s.
    pub host: HostIdentity,
    /// Builds the key-destruction backend of a target (real `luks2`/`apfs-volume` backends in
    /// the agent, the fake of `testing` in tests).
    pub key_destroyer_factory: KeyDestroyerFactory,
    /// The fleet CA certificate file (PEM), read when an attestation checks a prepare record;
    /// `None`: this engine cannot attest (`AttestErase` fails saying so).
    pub fleet_ca: Option<std::path::PathBuf>,
}

/// Opens targets for the engine. The real one opens [`DirectTarget`]s; tests wrap it to inject
/// I/O faults. Not exposed outside the crate.
pub(crate) trait IoOpener: Send + Sync {
    /// Opens target number `index` at `path`.
    fn open(
        &self,
        index: usize,
        path: &Path,
        access: Access,
    ) -> Result<Box<dyn TargetIo>, BlockDevError>;
}

/// Direct I/O on the real path.
pub(crate) struct DirectOpener;

impl IoOpener for DirectOpener {
    fn open(
        &self,
        _index: usize,
        path: &Path,
        access: Access,
    ) -> Result<Box<dyn TargetIo>, BlockDevError> {
        Ok(Box::new(DirectTarget::open(path, access)?))
    }
}
