//! The fake key backend of the simulated erase: each target's "key" is a small file,
//! `<host dir>/keys/<target>.key`, made when the host is first created. `destroy` overwrites it
//! with zeros and removes it; `verify_destroyed` checks it is gone. The erase engine around it
//! (journal, overwrite and read-back of the target file, signed certificate) is the real one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jex_erase::config::TargetConfig;
use jex_erase::keys::{KeyDestroyer, KeyDestruction, KeyError, KeyState};

/// Bytes of a fake key.
const KEY_BYTES: usize = 64;

/// The fake keys of one simulated host.
#[derive(Debug, Clone)]
pub struct FileKeys {
    dir: PathBuf,
}

impl FileKeys {
    /// The keys kept in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The key file of `target`.
    pub fn key_path(&self, target: &str) -> PathBuf {
        self.dir.join(format!("{target}.key"))
    }

    /// Makes the key of `target` (mode 0600) from `material` repeated, unless one exists.
    pub fn create(&self, target: &str, material: u64) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let path = self.key_path(target);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                let key: Vec<u8> = material
                    .to_le_bytes()
                    .iter()
                    .copied()
                    .cycle()
                    .take(KEY_BYTES)
                    .collect();
                f.write_all(&key)?;
                f.sync_all()
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The factory the agent's erase service builds each target's destroyer with.
    pub fn factory(&self) -> Arc<jex_erase::KeyDestroyerFactory> {
        let keys = self.clone();
        let factory: jex_erase::KeyDestroyerFactory = Box::new(move |target: &TargetConfig| {
            Ok(Box::new(FileKeyDestroyer {
                target: target.name.clone(),
                path: keys.key_path(&target.name),
            }) as Box<dyn KeyDestroyer>)
        });
        Arc::new(factory)
    }
}

/// One target's fake key.
#[derive(Debug)]
pub struct FileKeyDestroyer {
    target: String,
    path: PathBuf,
}

impl FileKeyDestroyer {
    fn io(&self, source: std::io::Error) -> KeyError {
        KeyError::Io {
            target: self.target.clone(),
            path: self.path.display().to_string(),
            source,
        }
    }

    fn present(&self) -> Result<bool, KeyError> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io(e)),
        }
    }
}

impl KeyDestroyer for FileKeyDestroyer {
    fn backend(&self) -> &'static str {
        "luks2"
    }

    fn check_identity(&self) -> Result<(), KeyError> {
        // The key file stands for the pinned volume: present before the erase, gone after it.
        Ok(())
    }

    fn snapshot(&self) -> Result<KeyState, KeyError> {
        let slots = if self.present()? { "1" } else { "0" };
        Ok(KeyState {
            facts: [("keyslots".to_owned(), slots.to_owned())].into(),
        })
    }

    fn destroy(&self) -> Result<(), KeyError> {
        if !self.present()? {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        f.write_all(&[0u8; KEY_BYTES]).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        drop(f);
        std::fs::remove_file(&self.path).map_err(|e| self.io(e))
    }

    fn verify_destroyed(&self, before: &KeyState) -> Result<KeyDestruction, KeyError> {
        if self.present()? {
            return Err(KeyError::NotDestroyed {
                target: self.target.clone(),
                detail: format!("{} still exists", self.path.display()),
            });
        }
        Ok(KeyDestruction {
            method: "simulated luksErase (jex-sim: key file overwritten and removed)".into(),
            tool: format!("jex-sim {}", env!("CARGO_PKG_VERSION")),
            evidence: [
                (
                    "keyslots_before".to_owned(),
                    before.facts.get("keyslots").cloned().unwrap_or_default(),
                ),
                ("keyslots_after".to_owned(), "0".to_owned()),
            ]
            .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_destroyed_once_and_verified_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = FileKeys::new(&dir.path().join("keys"));
        keys.create("disk", 7).expect("create");
        let first = std::fs::read(keys.key_path("disk")).expect("read");
        keys.create("disk", 8).expect("create again keeps the key");
        assert_eq!(std::fs::read(keys.key_path("disk")).expect("read"), first);
        let d = FileKeyDestroyer {
            target: "disk".into(),
            path: keys.key_path("disk"),
        };
        let before = d.snapshot().expect("snapshot");
        assert_eq!(before.facts["keyslots"], "1");
        let err = d.verify_destroyed(&before).expect_err("still there");
        assert!(err.to_string().contains("still exists"), "{err}");
        d.destroy().expect("destroy");
        d.destroy().expect("idempotent");
        let proof = d.verify_destroyed(&before).expect("gone");
        assert_eq!(proof.evidence["keyslots_before"], "1");
        assert_eq!(proof.evidence["keyslots_after"], "0");
    }
}
