//! Test support (feature `test-util`): the one fake key destroyer, [`FakeKeys`], and the one
//! test signer: [`jex_attest::FileSigner`] over the throwaway PKI of [`jex_attest::testing`],
//! whose CA verifies the certificates it signs.
//!
//! ```text
//! let keys = FakeKeys::new();
//! let ca_pem = write_test_signer(dir, "host-1");
//! let deps = EraseDeps {
//!     signer: Arc::new(load_test_signer(dir)),
//!     host,
//!     key_destroyer_factory: keys.factory(),
//!     fleet_ca: None,
//! };
//! // … erase, then: jex_attest::verify(&certificate, ca_pem.as_bytes(), Some(&nonce))
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure here is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jex_attest::FileSigner;
pub use jex_attest::testing::{TestCa, TestLeaf, write_signer_files};

use crate::config::TargetConfig;
use crate::deps::KeyDestroyerFactory;
use crate::keys::{KeyDestroyer, KeyDestruction, KeyError, KeyState};

/// Called inside [`KeyDestroyer::destroy`], before the keys are marked destroyed.
pub type DestroyHook = Arc<dyn Fn() + Send + Sync>;

/// The fake key backend: every call is logged (`"<target>:<call>"`), `destroy` marks the
/// target's keys destroyed and `verify_destroyed` fails unless they are. Destruction is kept in
/// memory, shared by every destroyer the factory builds, or with [`FakeKeys::persist_in`] as a
/// marker file that survives the process, like a real `luksErase`.
#[derive(Clone, Default)]
pub struct FakeKeys {
    calls: Arc<Mutex<Vec<String>>>,
    destroyed: Arc<Mutex<BTreeSet<String>>>,
    marker_dir: Option<PathBuf>,
    on_destroy: Option<DestroyHook>,
}

impl std::fmt::Debug for FakeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKeys")
            .field("marker_dir", &self.marker_dir)
            .finish_non_exhaustive()
    }
}

impl FakeKeys {
    /// Keys destroyed in memory, no hook.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `hook` inside every `destroy()` (to block, slow down or disturb the engine there).
    pub fn on_destroy(mut self, hook: DestroyHook) -> Self {
        self.on_destroy = Some(hook);
        self
    }

    /// Records destruction as `<dir>/<target>.keys-destroyed`, so that it survives a restart.
    pub fn persist_in(mut self, dir: &Path) -> Self {
        self.marker_dir = Some(dir.to_path_buf());
        self
    }

    /// Every call so far, in order, as `"<target>:<call>"`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// A factory building this fake (the `luks2` backend) for every target.
    pub fn factory(&self) -> KeyDestroyerFactory {
        let keys = self.clone();
        Box::new(move |target: &TargetConfig| {
            Ok(Box::new(FakeKeyDestroyer {
                target: target.name.clone(),
                keys: keys.clone(),
            }) as Box<dyn KeyDestroyer>)
        })
    }

    fn log(&self, target: &str, call: &str) {
        self.calls.lock().unwrap().push(format!("{target}:{call}"));
    }

    fn marker(&self, target: &str) -> Option<PathBuf> {
        self.marker_dir
            .as_ref()
            .map(|dir| dir.join(format!("{target}.keys-destroyed")))
    }

    fn is_destroyed(&self, target: &str) -> bool {
        match self.marker(target) {
            Some(marker) => marker.exists(),
            None => self.destroyed.lock().unwrap().contains(target),
        }
    }

    fn mark_destroyed(&self, target: &str) {
        match self.marker(target) {
            Some(marker) => std::fs::write(marker, b"destroyed").unwrap(),
            None => {
                self.destroyed.lock().unwrap().insert(target.to_owned());
            }
        }
    }
}

/// One target's fake backend, built by [`FakeKeys::factory`].
#[derive(Debug)]
pub struct FakeKeyDestroyer {
    target: String,
    keys: FakeKeys,
}

impl KeyDestroyer for FakeKeyDestroyer {
    fn backend(&self) -> &'static str {
        "luks2"
    }
    fn check_identity(&self) -> Result<(), KeyError> {
        self.keys.log(&self.target, "check_identity");
        Ok(())
    }
    fn snapshot(&self) -> Result<KeyState, KeyError> {
        self.keys.log(&self.target, "snapshot");
        Ok(KeyState {
            facts: [("keyslots".to_owned(), "1".to_owned())].into(),
        })
    }
    fn destroy(&self) -> Result<(), KeyError> {
        self.keys.log(&self.target, "destroy");
        if let Some(hook) = &self.keys.on_destroy {
            hook();
        }
        self.keys.mark_destroyed(&self.target);
        Ok(())
    }
    fn verify_destroyed(&self, before: &KeyState) -> Result<KeyDestruction, KeyError> {
        self.keys.log(&self.target, "verify_destroyed");
        if !self.keys.is_destroyed(&self.target) {
            return Err(KeyError::NotDestroyed {
                target: self.target.clone(),
                detail: "keyslot 0 still active".into(),
            });
        }
        Ok(fake_destruction(&before.facts["keyslots"]))
    }
}

/// The evidence [`FakeKeys`] returns for a target that had `keyslots_before` keyslots.
pub fn fake_destruction(keyslots_before: &str) -> KeyDestruction {
    KeyDestruction {
        method: "fake luksErase".into(),
        tool: "fake 1.0".into(),
        evidence: [
            ("keyslots_before".to_owned(), keyslots_before.to_owned()),
            ("keyslots_after".to_owned(), "0".to_owned()),
        ]
        .into(),
    }
}

/// The URI SAN of the test signer of `host_id`, as the certificate verifier expects it.
pub fn spiffe_id(host_id: &str) -> String {
    format!("spiffe://fleet.example/host/{host_id}")
}

/// Writes the test signer of `host_id` into `dir`: a fresh fleet CA (`fleet-ca.pem`), an agent
/// certificate for `host_id` and its key (`agent-chain.pem`, `agent.key`, mode 0600). Returns
/// the CA certificate, PEM, to verify certificates with.
pub fn write_test_signer(dir: &Path, host_id: &str) -> String {
    let ca = TestCa::new("jex test fleet CA");
    // Valid until 2100-01-01.
    let not_after = time::OffsetDateTime::from_unix_timestamp(4_102_444_800).unwrap();
    let leaf = ca.leaf_until(&spiffe_id(host_id), not_after);
    write_signer_files(dir, &leaf, &[]);
    std::fs::write(dir.join(CA_FILE), &ca.cert_pem).unwrap();
    ca.cert_pem
}

/// The signer [`write_test_signer`] wrote into `dir`.
pub fn load_test_signer(dir: &Path) -> FileSigner {
    FileSigner::load(&dir.join("agent.key"), &dir.join("agent-chain.pem")).unwrap()
}

/// The CA certificate [`write_test_signer`] wrote into `dir`, PEM.
pub fn test_signer_ca(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(CA_FILE)).unwrap()
}

const CA_FILE: &str = "fleet-ca.pem";

/// Threads that keep every core busy until dropped: the CPU contention under which the erase's
/// published views must still agree.
pub struct BusyCores {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCores {
    /// One spinning thread per core.
    pub fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        BusyCores { stop, threads }
    }
}

impl Drop for BusyCores {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
