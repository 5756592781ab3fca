//! What a `Terminate` would erase: each configured target's size, identity and safety checks,
//! computed without writing anything (devices are opened read-only, key backends only check
//! identity). Shown by `jex-agent erase-plan` and the `Plan` query.

use std::path::PathBuf;

use crate::config::{EraseConfig, TargetConfig};
use crate::deps::{DirectOpener, IoOpener, KeyDestroyerFactory};
use crate::error::EraseError;
use jex_platform::blockdev::{Access, SystemDevices};
use jex_platform::error_chain;

/// One configured target as `jex-agent erase-plan` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTarget {
    /// Name.
    pub name: String,
    /// Key backend.
    pub backend: String,
    /// What would be overwritten.
    pub device: PathBuf,
    /// Size, when it could be read.
    pub size_bytes: Option<u64>,
    /// The identity that would be pinned, when it could be read.
    pub identity: Option<String>,
    /// Each check and its result.
    pub checks: Vec<PlanCheck>,
    /// Every check passed.
    pub ready: bool,
}

/// One safety check of a planned target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCheck {
    /// What is checked.
    pub check: String,
    /// Whether it passed.
    pub passed: bool,
    /// Details, or what to fix.
    pub detail: String,
}

/// What a `Terminate` would destroy under `config`, computed without a running service and
/// without the journal (for `jex-agent erase-plan` when no agent runs). Touches nothing: devices
/// are opened read-only, key backends only check identity.
pub fn plan_offline(
    config: &EraseConfig,
    key_destroyer_factory: &KeyDestroyerFactory,
) -> Result<Vec<PlannedTarget>, EraseError> {
    config.validate()?;
    plan_targets(config, &DirectOpener, key_destroyer_factory)
}

pub(crate) fn plan_targets(
    config: &EraseConfig,
    io: &dyn IoOpener,
    factory: &KeyDestroyerFactory,
) -> Result<Vec<PlannedTarget>, EraseError> {
    let (system, apfs) = crate::rails::system_devices_and_map(&config.tools.diskutil)?;
    let mut planned = Vec::with_capacity(config.targets.len());
    for (index, target) in config.targets.iter().enumerate() {
        planned.push(plan_target(
            io,
            factory,
            index,
            target,
            &system,
            apfs.as_ref(),
        ));
    }
    Ok(planned)
}

fn plan_target(
    io: &dyn IoOpener,
    factory: &KeyDestroyerFactory,
    index: usize,
    target: &TargetConfig,
    system: &SystemDevices,
    apfs: Option<&jex_reclaim::diskutil::ApfsList>,
) -> PlannedTarget {
    let mut checks = Vec::new();
    let mut check = |name: &str, result: Result<String, String>| {
        let passed = result.is_ok();
        checks.push(PlanCheck {
            check: name.to_owned(),
            passed,
            detail: result.unwrap_or_else(|e| e),
        });
        passed
    };
    let refusal = system
        .refusal_for_path(&target.device)
        .map_err(|e| error_chain(&e));
    let refused = !matches!(refusal, Ok(None));
    check(
        "not a system or mounted device",
        match refusal {
            Ok(None) => Ok("not the root, boot or a mounted device".into()),
            Ok(Some(reason)) => Err(reason),
            Err(err) => Err(err),
        },
    );
    if refused {
        // Never opened, not even read-only.
        return PlannedTarget {
            name: target.name.clone(),
            backend: target.backend().as_str().to_owned(),
            device: target.device.clone(),
            size_bytes: None,
            identity: None,
            checks,
            ready: false,
        };
    }
    let opened = io.open(index, &target.device, Access::Read);
    let (size, identity) = match &opened {
        Ok(io) => match io.open_identity() {
            Ok(identity) => (Some(identity.size_bytes), Some(identity)),
            Err(_) => (Some(io.size()), None),
        },
        Err(_) => (None, None),
    };
    check(
        "direct I/O",
        opened
            .as_ref()
            .map(|io| format!("opened with direct I/O, alignment {} bytes", io.io_align()))
            .map_err(|e| error_chain(e)),
    );
    if let Ok(io) = &opened
        && let Some(fs) = io.copy_on_write_fs()
    {
        check(
            "overwrite in place",
            Err(format!(
                "file on a copy-on-write filesystem ({fs}): the certificate would be ERASED_WITH_EXCEPTIONS"
            )),
        );
    }
    let keys = (factory)(target).and_then(|destroyer| {
        destroyer
            .check_identity()
            .map(|()| format!("{} pinned: {}", destroyer.backend(), target.pin()))
            .map_err(|source| EraseError::Keys {
                target: target.name.clone(),
                source,
            })
    });
    check("key backend identity", keys.map_err(|e| error_chain(&e)));
    if let Some(on_device) = crate::rails::check_target_container(apfs, target) {
        check("volume on this device", on_device);
    }
    let ready = checks.iter().all(|c| c.passed);
    PlannedTarget {
        name: target.name.clone(),
        backend: target.backend().as_str().to_owned(),
        device: target.device.clone(),
        size_bytes: size,
        identity: identity.map(|i| format!("{}; {}", target.pin(), i.fingerprint())),
        checks,
        ready,
    }
}
