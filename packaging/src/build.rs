//! Builds the unsigned jex-agent product archive (a distribution-style flat package).
//!
//! ```text
//! jex-agent.pkg (XAR)
//! ├── Distribution          installer-gui-script: arm64 only, root volume, macOS >= 13
//! └── jex-agent.pkg/
//!     ├── PackageInfo       identifier, version, install-location "/", auth root, scripts
//!     ├── Bom               every payload path with mode, owner, size and cksum
//!     ├── Payload           gzip'd odc cpio of the tree below
//!     └── Scripts           gzip'd odc cpio of ./preinstall and ./postinstall (0755)
//! ```
//!
//! Payload tree (owner root; `Library/Application Support` keeps group admin, as on a stock
//! macOS, because Installer applies the package's permissions to existing directories):
//!
//! ```text
//! ./Library/Application Support/JexCloud/bin/jex-agent               0755
//! ./Library/Application Support/JexCloud/bin/jex-agent-uninstall     0755
//! ./Library/Application Support/JexCloud/agent.toml.example          0644
//! ./Library/LaunchDaemons/com.jexcloud.agent.plist                   0644
//! ./private/etc/newsyslog.d/com.jexcloud.agent.conf                  0644
//! ```
//!
//! The configuration, state and log directories are not in the payload: postinstall creates
//! them, so that `pkgutil --files` and the uninstaller never treat them as package files.
//!
//! Reproducibility: every timestamp is `source_date_epoch`, every owner is fixed, the trees are
//! walked in sorted order and the compressors are deterministic, so the same inputs give the same
//! bytes. The plist and newsyslog rules are checked against [`crate::layout`] before packaging.

use crate::bom::{self, BomError};
use crate::cpio::{self, CpioError, Entry, EntryKind};
use crate::launchd;
use crate::layout;
use crate::newsyslog;
use crate::xar::{self, XarError, XarFile, XarKind};

/// `preinstall` as shipped.
pub const PREINSTALL: &[u8] = include_bytes!("../scripts/preinstall");
/// `postinstall` as shipped.
pub const POSTINSTALL: &[u8] = include_bytes!("../scripts/postinstall");
/// The uninstall script as shipped (installed at [`layout::UNINSTALL_SCRIPT`]).
pub const UNINSTALL: &[u8] = include_bytes!("../scripts/uninstall");

/// Timestamp used when the caller gives none: 2025-01-01T00:00:00Z.
pub const DEFAULT_SOURCE_DATE_EPOCH: u32 = 1_735_689_600;

/// Group id of `admin` on macOS.
const GID_ADMIN: u32 = 80;

/// Everything a build depends on.
#[derive(Clone)]
pub struct BuildInputs {
    /// The `jex-agent` executable (an arm64 Mach-O for a release).
    pub binary: Vec<u8>,
    /// The configuration example installed as `agent.toml.example`.
    pub config_example: Vec<u8>,
    /// Package version (`1.2.3`, `1.2.3-rc.1`).
    pub version: String,
    /// Package identifier.
    pub identifier: String,
    /// Timestamp of every file and of the archive, unix seconds.
    pub source_date_epoch: u32,
}

impl std::fmt::Debug for BuildInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildInputs")
            .field("binary_bytes", &self.binary.len())
            .field("config_example_bytes", &self.config_example.len())
            .field("version", &self.version)
            .field("identifier", &self.identifier)
            .field("source_date_epoch", &self.source_date_epoch)
            .finish()
    }
}

/// A package that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An input value is not acceptable.
    #[error("build package: {0}")]
    Input(String),
    /// The shipped plist disagrees with the layout.
    #[error("build package: launchd/com.jexcloud.agent.plist is wrong: {}", .0.join("; "))]
    Plist(Vec<String>),
    /// The shipped plist does not parse.
    #[error("build package: launchd plist")]
    PlistParse(#[from] launchd::LaunchdError),
    /// The shipped newsyslog rules do not parse or miss a launchd log file.
    #[error("build package: newsyslog rules: {0}")]
    Newsyslog(String),
    /// Writing the Payload or Scripts archive failed.
    #[error("build package: cpio archive")]
    Cpio(#[from] CpioError),
    /// Writing the Bom failed.
    #[error("build package: bom")]
    Bom(#[from] BomError),
    /// Writing the XAR failed.
    #[error("build package: xar archive")]
    Xar(#[from] XarError),
}

/// Whether `bytes` start like a Mach-O executable (thin 64-bit or universal).
pub fn is_mach_o(bytes: &[u8]) -> bool {
    matches!(
        bytes.get(..4),
        Some([0xcf, 0xfa, 0xed, 0xfe]) | Some([0xca, 0xfe, 0xba, 0xbe])
    )
}

fn check_inputs(inputs: &BuildInputs) -> Result<(), BuildError> {
    let version_ok = !inputs.version.is_empty()
        && inputs.version.len() <= 64
        && inputs.version.starts_with(|c: char| c.is_ascii_digit())
        && inputs
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if !version_ok {
        return Err(BuildError::Input(format!(
            "version {:?} must start with a digit and use only letters, digits, '.', '-', '+'",
            inputs.version
        )));
    }
    let id = &inputs.identifier;
    let id_ok = id.contains('.')
        && !id.starts_with('.')
        && !id.ends_with('.')
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    if !id_ok {
        return Err(BuildError::Input(format!(
            "identifier {id:?} must be reverse-DNS (letters, digits, '-', dots), e.g. {}",
            layout::PKG_IDENTIFIER
        )));
    }
    if inputs.binary.is_empty() {
        return Err(BuildError::Input("the agent binary is empty".to_owned()));
    }
    let daemon = launchd::parse(launchd::PLIST_BYTES)?;
    let problems = launchd::check(&daemon);
    if !problems.is_empty() {
        return Err(BuildError::Plist(problems));
    }
    let text = std::str::from_utf8(newsyslog::CONF_BYTES)
        .map_err(|_| BuildError::Newsyslog("not UTF-8".to_owned()))?;
    let rules = newsyslog::parse(text).map_err(|e| BuildError::Newsyslog(e.to_string()))?;
    for log in [layout::LAUNCHD_STDOUT_LOG, layout::LAUNCHD_STDERR_LOG] {
        if !rules.iter().any(|r| r.path == log) {
            return Err(BuildError::Newsyslog(format!("no rule for {log}")));
        }
    }
    Ok(())
}

/// The payload files: absolute install path, mode and content.
fn payload_files(inputs: &BuildInputs) -> Vec<(&'static str, u32, Vec<u8>)> {
    vec![
        (layout::AGENT_BINARY, 0o755, inputs.binary.clone()),
        (layout::UNINSTALL_SCRIPT, 0o755, UNINSTALL.to_vec()),
        (
            layout::CONFIG_EXAMPLE_PATH,
            0o644,
            inputs.config_example.clone(),
        ),
        (layout::PLIST_PATH, 0o644, launchd::PLIST_BYTES.to_vec()),
        (
            layout::NEWSYSLOG_CONF_PATH,
            0o644,
            newsyslog::CONF_BYTES.to_vec(),
        ),
    ]
}

/// The payload tree in archive order: `.`, then every directory and file, parents first,
/// siblings sorted by name.
pub fn payload_entries(inputs: &BuildInputs) -> Vec<Entry> {
    let mtime = inputs.source_date_epoch;
    let mut entries: std::collections::BTreeMap<Vec<String>, Entry> =
        std::collections::BTreeMap::new();
    let mut add_dir = |components: &[String]| {
        let path = if components.is_empty() {
            ".".to_owned()
        } else {
            format!("./{}", components.join("/"))
        };
        let gid = if path == "./Library/Application Support" {
            GID_ADMIN
        } else {
            0
        };
        entries.entry(components.to_vec()).or_insert(Entry {
            path,
            kind: EntryKind::Directory,
            perm: 0o755,
            uid: 0,
            gid,
            mtime,
        });
    };
    let files = payload_files(inputs);
    for (absolute, _, _) in &files {
        let components: Vec<String> = absolute
            .trim_start_matches('/')
            .split('/')
            .map(str::to_owned)
            .collect();
        for depth in 0..components.len() {
            add_dir(&components[..depth]);
        }
    }
    for (absolute, perm, data) in files {
        let components: Vec<String> = absolute
            .trim_start_matches('/')
            .split('/')
            .map(str::to_owned)
            .collect();
        entries.insert(
            components,
            Entry {
                path: layout::payload_path(absolute),
                kind: EntryKind::File(data),
                perm,
                uid: 0,
                gid: 0,
                mtime,
            },
        );
    }
    entries.into_values().collect()
}

fn scripts_entries(mtime: u32) -> Vec<Entry> {
    [("./postinstall", POSTINSTALL), ("./preinstall", PREINSTALL)]
        .into_iter()
        .map(|(path, data)| Entry {
            path: path.to_owned(),
            kind: EntryKind::File(data.to_vec()),
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime,
        })
        .collect()
}

fn install_kbytes(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| (e.data().len() as u64).div_ceil(1024))
        .sum()
}

fn package_info(inputs: &BuildInputs, entries: &[Entry]) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<pkg-info overwrite-permissions="true" relocatable="false" identifier="{id}" postinstall-action="none" version="{version}" format-version="2" generator-version="jex-packaging/{generator}" install-location="/" auth="root">
    <payload numberOfFiles="{files}" installKBytes="{kbytes}"/>
    <bundle-version/>
    <upgrade-bundle/>
    <update-bundle/>
    <atomic-update-bundle/>
    <strict-identifier/>
    <relocate/>
    <scripts>
        <preinstall file="./preinstall"/>
        <postinstall file="./postinstall"/>
    </scripts>
</pkg-info>
"#,
        id = inputs.identifier,
        version = inputs.version,
        generator = env!("CARGO_PKG_VERSION"),
        files = entries.len(),
        kbytes = install_kbytes(entries),
    )
}

fn distribution(inputs: &BuildInputs, entries: &[Entry]) -> String {
    // No `script` attribute on <volume-check>: Installer evaluates it as JavaScript.
    format!(
        r##"<?xml version="1.0" encoding="utf-8"?>
<installer-gui-script minSpecVersion="2">
    <title>JexCloud Agent</title>
    <options customize="never" require-scripts="false" hostArchitectures="arm64" rootVolumeOnly="true"/>
    <domains enable_anywhere="false" enable_currentUserHome="false" enable_localSystem="true"/>
    <volume-check>
        <allowed-os-versions>
            <os-version min="{min_os}"/>
        </allowed-os-versions>
    </volume-check>
    <choices-outline>
        <line choice="default">
            <line choice="{id}"/>
        </line>
    </choices-outline>
    <choice id="default"/>
    <choice id="{id}" visible="false">
        <pkg-ref id="{id}"/>
    </choice>
    <pkg-ref id="{id}" version="{version}" onConclusion="none" installKBytes="{kbytes}">#{component}</pkg-ref>
</installer-gui-script>
"##,
        min_os = layout::MIN_MACOS_VERSION,
        id = inputs.identifier,
        version = inputs.version,
        kbytes = install_kbytes(entries),
        component = layout::COMPONENT_PKG_NAME,
    )
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a unix timestamp, as XAR writes `creation-time`.
pub fn creation_time(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn xar_file(name: &str, data: Vec<u8>) -> XarFile {
    XarFile {
        name: name.to_owned(),
        kind: XarKind::File(data),
        perm: 0o644,
        uid: 0,
        gid: 0,
    }
}

/// Builds the unsigned product archive from `inputs`.
pub fn build_package(inputs: &BuildInputs) -> Result<Vec<u8>, BuildError> {
    check_inputs(inputs)?;
    let entries = payload_entries(inputs);
    let payload = cpio::gzip(&cpio::write_odc(&entries)?)?;
    let scripts = cpio::gzip(&cpio::write_odc(&scripts_entries(
        inputs.source_date_epoch,
    ))?)?;
    let bom = bom::write_bom(&entries)?;
    let files = vec![
        xar_file("Distribution", distribution(inputs, &entries).into_bytes()),
        XarFile {
            name: layout::COMPONENT_PKG_NAME.to_owned(),
            kind: XarKind::Directory(vec![
                xar_file("PackageInfo", package_info(inputs, &entries).into_bytes()),
                xar_file("Bom", bom),
                xar_file("Payload", payload),
                xar_file("Scripts", scripts),
            ]),
            perm: 0o755,
            uid: 0,
            gid: 0,
        },
    ];
    let sealed = xar::layout(
        &files,
        &creation_time(u64::from(inputs.source_date_epoch)),
        &[],
    )?;
    Ok(sealed.into_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::xar::XarArchive;

    pub(crate) fn inputs() -> BuildInputs {
        BuildInputs {
            binary: b"#!/bin/sh\necho fake agent\n".to_vec(),
            config_example: b"# example\n[server]\nlisten = \"0.0.0.0:7443\"\n".to_vec(),
            version: "1.2.3".to_owned(),
            identifier: layout::PKG_IDENTIFIER.to_owned(),
            source_date_epoch: DEFAULT_SOURCE_DATE_EPOCH,
        }
    }

    fn sha256(bytes: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn same_inputs_give_the_same_bytes() {
        let a = build_package(&inputs()).expect("a");
        let b = build_package(&inputs()).expect("b");
        assert_eq!(sha256(&a), sha256(&b));
        let mut other = inputs();
        other.source_date_epoch += 1;
        assert_ne!(sha256(&a), sha256(&build_package(&other).expect("c")));
    }

    #[test]
    fn payload_holds_the_layout_files_with_their_modes_and_owners() {
        let pkg = build_package(&inputs()).expect("build");
        let archive = XarArchive::parse(&pkg).expect("parse");
        let payload_entry = archive
            .entries
            .iter()
            .find(|e| e.path == "jex-agent.pkg/Payload")
            .expect("payload");
        let payload = cpio::read_odc(
            &cpio::gunzip(archive.archived_data(payload_entry).expect("data")).expect("gunzip"),
        )
        .expect("cpio");
        let find = |abs: &str| {
            payload
                .iter()
                .find(|e| e.path == layout::payload_path(abs))
                .unwrap_or_else(|| panic!("{abs} missing"))
        };
        assert_eq!(find(layout::AGENT_BINARY).perm, 0o755);
        assert_eq!(find(layout::AGENT_BINARY).data(), inputs().binary);
        assert_eq!(find(layout::UNINSTALL_SCRIPT).perm, 0o755);
        assert_eq!(find(layout::PLIST_PATH).perm, 0o644);
        assert_eq!(find(layout::PLIST_PATH).data(), launchd::PLIST_BYTES);
        assert_eq!(find(layout::NEWSYSLOG_CONF_PATH).perm, 0o644);
        assert_eq!(
            find(layout::CONFIG_EXAMPLE_PATH).data(),
            inputs().config_example
        );
        assert!(payload.iter().all(|e| e.uid == 0));
        assert!(payload.iter().all(|e| e.mtime == DEFAULT_SOURCE_DATE_EPOCH));
        let support = payload
            .iter()
            .find(|e| e.path == "./Library/Application Support")
            .expect("dir");
        assert_eq!(support.gid, GID_ADMIN);
        // Config, state and logs are created by postinstall, not shipped.
        for absent in [layout::CONFIG_PATH, layout::STATE_DIR, layout::LOG_DIR] {
            assert!(
                payload
                    .iter()
                    .all(|e| e.path != layout::payload_path(absent))
            );
        }
        // Bom and Payload list the same paths.
        let bom_entry = archive
            .entries
            .iter()
            .find(|e| e.path == "jex-agent.pkg/Bom")
            .expect("bom");
        let bom = apple_bom::ParsedBom::parse(archive.archived_data(bom_entry).expect("bom"))
            .expect("parse bom");
        let mut bom_paths: Vec<String> = bom
            .paths()
            .expect("paths")
            .iter()
            .map(|p| p.path().to_owned())
            .collect();
        bom_paths.sort();
        let mut payload_paths: Vec<String> = payload.iter().map(|e| e.path.clone()).collect();
        payload_paths.sort();
        assert_eq!(bom_paths, payload_paths);
    }

    #[test]
    fn package_info_and_distribution_name_the_identifier_and_version() {
        let mut custom = inputs();
        custom.identifier = "com.jexcloud.agent.staging".to_owned();
        custom.version = "2.0.0-rc.1".to_owned();
        let pkg = build_package(&custom).expect("build");
        let archive = XarArchive::parse(&pkg).expect("parse");
        let text = |path: &str| {
            let entry = archive.entries.iter().find(|e| e.path == path).expect(path);
            String::from_utf8(archive.archived_data(entry).expect("data").to_vec()).expect("utf8")
        };
        let info = text("jex-agent.pkg/PackageInfo");
        let doc = roxmltree::Document::parse(&info).expect("xml");
        let root = doc.root_element();
        assert_eq!(
            root.attribute("identifier"),
            Some("com.jexcloud.agent.staging")
        );
        assert_eq!(root.attribute("version"), Some("2.0.0-rc.1"));
        assert_eq!(root.attribute("install-location"), Some("/"));
        assert_eq!(root.attribute("auth"), Some("root"));
        let payload = root
            .children()
            .find(|c| c.has_tag_name("payload"))
            .expect("payload");
        assert_eq!(
            payload.attribute("numberOfFiles"),
            Some(payload_entries(&custom).len().to_string().as_str())
        );
        let dist = text("Distribution");
        let doc = roxmltree::Document::parse(&dist).expect("xml");
        let pkg_ref = doc
            .descendants()
            .find(|n| n.has_tag_name("pkg-ref") && n.attribute("version").is_some())
            .expect("pkg-ref");
        assert_eq!(pkg_ref.text(), Some("#jex-agent.pkg"));
        assert_eq!(pkg_ref.attribute("id"), Some("com.jexcloud.agent.staging"));
        let options = doc
            .descendants()
            .find(|n| n.has_tag_name("options"))
            .expect("options");
        assert_eq!(options.attribute("hostArchitectures"), Some("arm64"));
    }

    #[test]
    fn rejects_bad_versions_identifiers_and_empty_binaries() {
        for (version, identifier, binary) in [
            ("1.0\"/>", layout::PKG_IDENTIFIER, b"x".to_vec()),
            ("", layout::PKG_IDENTIFIER, b"x".to_vec()),
            ("1.0", "agent", b"x".to_vec()),
            ("1.0", "com.jexcloud.<agent>", b"x".to_vec()),
            ("1.0", layout::PKG_IDENTIFIER, Vec::new()),
        ] {
            let mut bad = inputs();
            bad.version = version.to_owned();
            bad.identifier = identifier.to_owned();
            bad.binary = binary;
            assert!(
                matches!(build_package(&bad), Err(BuildError::Input(_))),
                "{version:?} {identifier:?}"
            );
        }
    }

    #[test]
    fn creation_time_formats_utc_dates() {
        assert_eq!(creation_time(0), "1970-01-01T00:00:00");
        assert_eq!(
            creation_time(u64::from(DEFAULT_SOURCE_DATE_EPOCH)),
            "2025-01-01T00:00:00"
        );
        assert_eq!(creation_time(951_827_696), "2000-02-29T12:34:56");
    }

    #[test]
    fn recognizes_mach_o_magic() {
        assert!(is_mach_o(&[0xcf, 0xfa, 0xed, 0xfe, 0x0c]));
        assert!(is_mach_o(&[0xca, 0xfe, 0xba, 0xbe]));
        assert!(!is_mach_o(b"\x7fELF"));
    }
}
