//! The state directory: where the journal, the lock, pattern keys and certificates live, and
//! the file operations on them.
//!
//! ```text
//! <state_dir>/                        0700
//!   journal.log                       every Record, append-only, fsync'd (crate::journal)
//!   lock                              flock'd by the running agent
//!   keys/                             0700
//!     <operation_id>.key              the pattern key, hex, 0600: secret until the certificate
//!                                     is signed, needed to resume an overwrite; deleted once
//!                                     the certificate is journaled (before `reclaimable`) or
//!                                     once the operation failed
//!   certificates/                     0755
//!     <operation_id>.json             SignedCertificate bundle JSON, 0644, kept forever
//! ```

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::error::EraseError;
use crate::journal;
use crate::pattern::PatternKey;
use jex_attest::SignedCertificate;

/// The journal file in the state directory.
pub const JOURNAL_FILE: &str = "journal.log";
/// The lock file in the state directory.
pub const LOCK_FILE: &str = "lock";
/// Directory of pattern key files.
pub const KEYS_DIR: &str = "keys";
/// Directory of signed certificates.
pub const CERTIFICATES_DIR: &str = "certificates";

/// Paths of the state directory.
#[derive(Debug, Clone)]
pub struct StateDirs {
    /// The state directory.
    pub root: PathBuf,
}

impl StateDirs {
    /// The journal.
    pub fn journal(&self) -> PathBuf {
        self.root.join(JOURNAL_FILE)
    }
    /// The lock file.
    pub fn lock(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }
    /// The directory of pattern keys.
    pub fn keys(&self) -> PathBuf {
        self.root.join(KEYS_DIR)
    }
    /// The pattern key of an operation.
    pub fn key_file(&self, operation_id: &str) -> PathBuf {
        self.keys().join(format!("{operation_id}.key"))
    }
    /// The directory of certificates.
    pub fn certificates(&self) -> PathBuf {
        self.root.join(CERTIFICATES_DIR)
    }
    /// The certificate of an operation.
    pub fn certificate_file(&self, operation_id: &str) -> PathBuf {
        self.certificates().join(format!("{operation_id}.json"))
    }

    /// Creates the directories (or fixes their modes).
    pub fn create(&self) -> Result<(), EraseError> {
        create_dir(&self.root, 0o700)?;
        create_dir(&self.keys(), 0o700)?;
        create_dir(&self.certificates(), 0o755)
    }

    /// Takes the state directory's lock, held as long as the returned value lives.
    pub fn lock_exclusive(&self) -> Result<nix::fcntl::Flock<File>, EraseError> {
        let lock_path = self.lock();
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| EraseError::State {
                operation: "opening the lock file",
                path: lock_path.clone(),
                source,
            })?;
        nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| EraseError::Locked { path: lock_path })
    }

    /// Removes the key file of an operation that ended; best effort, logged.
    pub fn remove_key_file(&self, operation_id: &str) {
        let path = self.key_file(operation_id);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                // Best effort: the key is public (certified) or useless (failed) by now.
                let _ = journal::sync_parent_dir(&path);
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(path = %path.display(), error = %err, "removing the pattern key file failed")
            }
        }
    }

    /// Removes key files of operations that are not running: their keys are either public (in
    /// a certificate) or belong to a request that was never journaled.
    pub fn remove_orphan_keys(&self, unfinished: &[String]) {
        let Ok(entries) = std::fs::read_dir(self.keys()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let keep = path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|stem| unfinished.iter().any(|id| id == stem));
            if !keep && let Err(err) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), error = %err, "removing a stale pattern key file failed");
            }
        }
    }

    /// Stores a signed certificate durably (0644), in the bundle format `jex-agent verify-erase`
    /// reads.
    pub fn store_certificate(
        &self,
        operation_id: &str,
        certificate: &SignedCertificate,
    ) -> Result<(), EraseError> {
        let path = self.certificate_file(operation_id);
        journal::write_file_atomic(&path, &certificate.to_bundle_json(), 0o644).map_err(|source| {
            EraseError::State {
                operation: "writing the certificate",
                path,
                source,
            }
        })
    }

    /// Reads the stored certificate of an operation.
    pub fn load_certificate(&self, operation_id: &str) -> Result<SignedCertificate, EraseError> {
        load_certificate(&self.certificate_file(operation_id))
    }
}

fn create_dir(path: &Path, mode: u32) -> Result<(), EraseError> {
    let state = |operation, source| EraseError::State {
        operation,
        path: path.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| state("creating the state directory", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| state("setting the permissions of", e))
}

/// Writes a new pattern key file (0600, created exclusively) and syncs it and its directory.
pub fn write_key_file(path: &Path, key: &PatternKey) -> Result<(), EraseError> {
    let state = |operation, source| EraseError::State {
        operation,
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| state("creating the pattern key file", e))?;
    file.write_all(key.reveal_hex().as_bytes())
        .map_err(|e| state("writing the pattern key file", e))?;
    file.sync_all()
        .map_err(|e| state("syncing the pattern key file", e))?;
    journal::sync_parent_dir(path).map_err(|e| state("syncing the directory of", e))
}

/// Reads a pattern key file and checks it against the journaled `commitment`.
pub fn read_key_file(path: &Path, commitment: &str) -> Result<PatternKey, EraseError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        EraseError::State {
            operation: "reading the pattern key file",
            path: path.to_path_buf(),
            source,
        }
    })?);
    let key = PatternKey::from_hex(&text).map_err(|_| EraseError::PatternKeyMismatch {
        path: path.to_path_buf(),
    })?;
    if key.commitment() != commitment {
        return Err(EraseError::PatternKeyMismatch {
            path: path.to_path_buf(),
        });
    }
    Ok(key)
}

/// Reads a stored certificate.
pub fn load_certificate(path: &Path) -> Result<SignedCertificate, EraseError> {
    let bytes = std::fs::read(path).map_err(|source| EraseError::State {
        operation: "reading the certificate",
        path: path.to_path_buf(),
        source,
    })?;
    SignedCertificate::from_bundle_json(&bytes).map_err(|err| EraseError::CertificateFormat {
        path: path.to_path_buf(),
        detail: jex_platform::error_chain(&err),
    })
}
