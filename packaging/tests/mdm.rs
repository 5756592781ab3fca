//! Checks the MDM profiles and declarations in `mdm/` against Apple's schemas and against what
//! the package installs and signs.
//!
//! Each configuration profile is parsed with the `plist` crate (what `plutil -lint` would check)
//! into types that hold exactly the keys of Apple's schema for its payload
//! (apple/device-management `mdm/profiles/*.yaml`), unknown keys refused; each declaration is
//! parsed with `serde_json` the same way (`declarative/declarations/**/*.yaml`). The tests then
//! tie them to the package: the Full Disk Access grant names the binary's install path from
//! `layout` and the code requirement from `codesign`, the login-items rule names the Label of the
//! shipped LaunchDaemon plist, and the background tasks asset pins that plist's size and SHA-256.
//! Python's `plistlib` and `json` read every file too, as independent parsers.

#![allow(clippy::expect_used)] // test code: a failed expectation is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use jex_packaging::{codesign, launchd, layout};
use serde::Deserialize;
use serde::de::DeserializeOwned;

const FULL_DISK_ACCESS: &str = "com.jexcloud.agent.full-disk-access.mobileconfig";
const LOGIN_ITEMS: &str = "com.jexcloud.agent.login-items.mobileconfig";
const ASSET: &str = "ddm/com.jexcloud.agent.launchd-plist.asset.json";
const CONFIGURATION: &str = "ddm/com.jexcloud.agent.background-tasks.configuration.json";
const ACTIVATION: &str = "ddm/com.jexcloud.agent.activation.json";
const README: &str = "README.md";

/// `(file, profile PayloadIdentifier, profile PayloadUUID, payload PayloadIdentifier, payload
/// PayloadUUID)`: fixed once, so that a newer profile replaces the installed one.
const PROFILE_IDS: [(&str, &str, &str, &str, &str); 2] = [
    (
        FULL_DISK_ACCESS,
        "com.jexcloud.agent.mdm.full-disk-access",
        "B2D2D47E-4E2A-4DD2-800B-A7DB9002DCC6",
        "com.jexcloud.agent.mdm.full-disk-access.tcc",
        "C1F77494-635A-4759-A984-1474ADD741C5",
    ),
    (
        LOGIN_ITEMS,
        "com.jexcloud.agent.mdm.login-items",
        "8B1E340F-361C-4C7F-B74F-C1340CC4442D",
        "com.jexcloud.agent.mdm.login-items.servicemanagement",
        "4D91A0B3-4333-4260-A14A-59D36D8C189D",
    ),
];

/// `(file, declaration Identifier)`.
const DECLARATION_IDS: [(&str, &str); 3] = [
    (ASSET, "com.jexcloud.agent.ddm.launchd-plist"),
    (CONFIGURATION, "com.jexcloud.agent.ddm.background-tasks"),
    (ACTIVATION, "com.jexcloud.agent.ddm.activation"),
];

// === Apple's schemas, as types ===

/// TopLevel.yaml: a configuration profile (the keys used here; `deny_unknown_fields` makes any
/// other key a failure, so that a key added by hand is checked against the schema first).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Profile<P> {
    payload_content: Vec<P>,
    payload_description: Option<String>,
    payload_display_name: Option<String>,
    payload_identifier: String,
    payload_organization: Option<String>,
    payload_scope: Option<String>,
    payload_type: String,
    #[serde(rename = "PayloadUUID")]
    payload_uuid: String,
    payload_version: u64,
}

/// com.apple.TCC.configuration-profile-policy.yaml, with CommonPayloadKeys.yaml.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct TccPayload {
    payload_description: Option<String>,
    payload_display_name: Option<String>,
    payload_identifier: String,
    payload_type: String,
    #[serde(rename = "PayloadUUID")]
    payload_uuid: String,
    payload_version: u64,
    services: BTreeMap<String, Vec<TccIdentity>>,
}

/// The `IdentityDict` of every TCC service.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct TccIdentity {
    identifier: String,
    identifier_type: String,
    code_requirement: String,
    static_code: Option<bool>,
    allowed: Option<bool>,
    authorization: Option<String>,
    comment: Option<String>,
}

/// com.apple.servicemanagement.yaml, with CommonPayloadKeys.yaml.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ServiceManagementPayload {
    payload_description: Option<String>,
    payload_display_name: Option<String>,
    payload_identifier: String,
    payload_type: String,
    #[serde(rename = "PayloadUUID")]
    payload_uuid: String,
    payload_version: u64,
    rules: Vec<ServiceManagementRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ServiceManagementRule {
    rule_type: String,
    rule_value: String,
    comment: Option<String>,
    team_identifier: Option<String>,
}

/// declarationbase.yaml.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Declaration<P> {
    r#type: String,
    identifier: String,
    server_token: String,
    payload: P,
}

/// assets/data.yaml.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct AssetData {
    reference: AssetReference,
    authentication: Option<AssetAuthentication>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssetReference {
    #[serde(rename = "DataURL")]
    data_url: String,
    #[serde(rename = "ContentType")]
    content_type: Option<String>,
    #[serde(rename = "Size")]
    size: Option<u64>,
    #[serde(rename = "Hash-SHA-256")]
    hash_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct AssetAuthentication {
    r#type: String,
}

/// configurations/services.background-tasks.yaml.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct BackgroundTasks {
    task_type: String,
    task_description: Option<String>,
    executable_asset_reference: Option<String>,
    launchd_configurations: Option<Vec<LaunchdItem>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct LaunchdItem {
    file_asset_reference: String,
    context: String,
}

/// activations/simple.yaml.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct SimpleActivation {
    standard_configurations: Vec<String>,
    predicate: Option<String>,
}

// === Reading the folder ===

fn mdm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mdm")
}

fn read(file: &str) -> Vec<u8> {
    let path = mdm_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn profile<P: DeserializeOwned>(file: &str) -> Profile<P> {
    plist::from_bytes(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn declaration<P: DeserializeOwned>(file: &str) -> Declaration<P> {
    serde_json::from_slice(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || c.is_ascii_uppercase() && c.is_ascii_hexdigit(),
        })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// The profile keys every profile here has, whatever its payload.
fn assert_top_level<P>(file: &str, p: &Profile<P>) {
    assert_eq!(p.payload_type, "Configuration", "{file}");
    assert_eq!(p.payload_version, 1, "{file}");
    assert_eq!(p.payload_scope.as_deref(), Some("System"), "{file}");
    assert_eq!(p.payload_content.len(), 1, "{file}: one payload");
    for (key, value) in [
        ("PayloadDescription", &p.payload_description),
        ("PayloadDisplayName", &p.payload_display_name),
        ("PayloadOrganization", &p.payload_organization),
    ] {
        assert!(
            value.as_deref().is_some_and(|v| !v.is_empty()),
            "{file}: {key}"
        );
    }
}

// === The tests ===

#[test]
fn the_folder_holds_exactly_the_files_checked_here() {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read mdm/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let rel = path.strip_prefix(base).expect("inside mdm/");
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(&mdm_dir(), &mdm_dir(), &mut found);
    let expected: BTreeSet<String> = [
        README,
        FULL_DISK_ACCESS,
        LOGIN_ITEMS,
        ASSET,
        CONFIGURATION,
        ACTIVATION,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(
        found, expected,
        "a file added to mdm/ needs its checks in this file"
    );
}

#[test]
fn full_disk_access_profile_grants_the_installed_binary_by_its_signing_requirement() {
    let p: Profile<TccPayload> = profile(FULL_DISK_ACCESS);
    assert_top_level(FULL_DISK_ACCESS, &p);
    let payload = &p.payload_content[0];
    assert_eq!(
        payload.payload_type,
        "com.apple.TCC.configuration-profile-policy"
    );
    assert_eq!(payload.payload_version, 1);
    let (_, _, _, payload_id, payload_uuid) = PROFILE_IDS[0];
    assert_eq!(
        (&*payload.payload_identifier, &*payload.payload_uuid),
        (payload_id, payload_uuid)
    );
    assert!(payload.payload_description.is_some() && payload.payload_display_name.is_some());
    assert_eq!(
        payload.services.keys().collect::<Vec<_>>(),
        ["SystemPolicyAllFiles"],
        "Full Disk Access and nothing else"
    );
    let grants = &payload.services["SystemPolicyAllFiles"];
    assert_eq!(grants.len(), 1);
    let grant = &grants[0];

    // The path the package installs the binary at, and launchd starts it from.
    assert_eq!(grant.identifier, layout::AGENT_BINARY);
    let daemon = launchd::parse(launchd::PLIST_BYTES).expect("shipped plist");
    assert_eq!(grant.identifier, daemon.program_arguments[0]);
    // A binary outside an app bundle is named by path (the schema's rule for IdentifierType).
    assert_eq!(grant.identifier_type, "path");
    // The designated requirement scripts/package.sh signs the binary with.
    assert_eq!(
        grant.code_requirement,
        codesign::designated_requirement(codesign::TEAM_ID_PLACEHOLDER)
    );
    assert!(
        grant
            .code_requirement
            .starts_with(&format!("identifier \"{}\" ", codesign::IDENTIFIER))
    );
    // Either Allowed or Authorization, never both (the schema's rule).
    assert_eq!(grant.allowed, Some(true));
    assert_eq!(grant.authorization, None);
    assert_eq!(grant.static_code, None);
    assert_eq!(grant.comment, None);
}

#[test]
fn login_items_profile_keeps_the_launch_daemon_label_on() {
    let p: Profile<ServiceManagementPayload> = profile(LOGIN_ITEMS);
    assert_top_level(LOGIN_ITEMS, &p);
    let payload = &p.payload_content[0];
    assert_eq!(payload.payload_type, "com.apple.servicemanagement");
    assert_eq!(payload.payload_version, 1);
    let (_, _, _, payload_id, payload_uuid) = PROFILE_IDS[1];
    assert_eq!(
        (&*payload.payload_identifier, &*payload.payload_uuid),
        (payload_id, payload_uuid)
    );
    assert!(payload.payload_description.is_some() && payload.payload_display_name.is_some());
    assert_eq!(payload.rules.len(), 1);
    let rule = &payload.rules[0];
    assert_eq!(rule.rule_type, "Label");
    let daemon = launchd::parse(launchd::PLIST_BYTES).expect("shipped plist");
    assert_eq!(rule.rule_value, daemon.label);
    assert_eq!(rule.rule_value, layout::LABEL);
    assert!(rule.comment.is_some());
    assert_eq!(
        rule.team_identifier, None,
        "the team is unknown here; mdm/README.md says how to add it"
    );
}

#[test]
fn profiles_have_their_fixed_identifiers_and_uuids() {
    let mut uuids = BTreeSet::new();
    for (file, id, uuid, payload_id, payload_uuid) in PROFILE_IDS {
        let p: Profile<plist::Dictionary> = profile(file);
        assert_eq!(p.payload_identifier, id, "{file}");
        assert_eq!(p.payload_uuid, uuid, "{file}");
        let payload = &p.payload_content[0];
        let get = |key: &str| {
            payload
                .get(key)
                .and_then(plist::Value::as_string)
                .unwrap_or_else(|| panic!("{file}: payload {key}"))
        };
        assert_eq!(get("PayloadIdentifier"), payload_id, "{file}");
        assert_eq!(get("PayloadUUID"), payload_uuid, "{file}");
        assert!(payload_id.starts_with(&format!("{id}.")), "{payload_id}");
        assert!(
            id.starts_with(&format!("{}.", layout::PKG_IDENTIFIER)),
            "{id}"
        );
        for u in [uuid, payload_uuid] {
            assert!(is_uuid(u), "{file}: {u} is not an upper-case UUID");
            assert!(uuids.insert(u), "{file}: UUID {u} used twice");
        }
    }
}

#[test]
fn background_tasks_declaration_runs_the_shipped_plist_as_a_daemon() {
    let configuration: Declaration<BackgroundTasks> = declaration(CONFIGURATION);
    let asset: Declaration<AssetData> = declaration(ASSET);
    let activation: Declaration<SimpleActivation> = declaration(ACTIVATION);

    assert_eq!(
        configuration.r#type,
        "com.apple.configuration.services.background-tasks"
    );
    let tasks = &configuration.payload;
    assert_eq!(tasks.task_type, layout::LABEL, "reverse-DNS task type");
    assert!(tasks.task_description.is_some());
    // The schema needs one of the two; the binary comes from the package, not from an asset.
    assert_eq!(tasks.executable_asset_reference, None);
    let items = tasks
        .launchd_configurations
        .as_ref()
        .expect("LaunchdConfigurations");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].context, "daemon", "the system daemon domain");
    assert_eq!(items[0].file_asset_reference, asset.identifier);

    assert_eq!(asset.r#type, "com.apple.asset.data");
    let reference = &asset.payload.reference;
    assert!(reference.data_url.starts_with("https://"));
    assert!(
        reference.data_url.ends_with("/com.jexcloud.agent.plist"),
        "{}",
        reference.data_url
    );
    // The background tasks schema requires ContentType and Hash-SHA-256 of a launchd asset, and
    // allows these content types.
    let content_type = reference.content_type.as_deref().expect("ContentType");
    assert!(
        [
            "application/plist",
            "application/x-plist",
            "application/xml",
            "text/xml"
        ]
        .contains(&content_type),
        "{content_type}"
    );
    assert!(reference.hash_sha256.is_some(), "Hash-SHA-256");
    assert_eq!(
        asset.payload.authentication.as_ref().map(|a| &*a.r#type),
        None,
        "MDM authentication, the default; mdm/README.md says when to add None"
    );

    assert_eq!(activation.r#type, "com.apple.activation.simple");
    assert_eq!(
        activation.payload.standard_configurations,
        std::slice::from_ref(&configuration.identifier)
    );
    assert_eq!(activation.payload.predicate, None);

    // The plist the asset stands for is the daemon the package ships.
    let daemon = launchd::parse(launchd::PLIST_BYTES).expect("shipped plist");
    assert_eq!(daemon.label, layout::LABEL);
    assert!(daemon.run_at_load);
}

#[test]
fn the_plist_asset_pins_the_shipped_plist_by_size_and_sha256() {
    let asset: Declaration<AssetData> = declaration(ASSET);
    let reference = &asset.payload.reference;
    let want_hash = sha256_hex(launchd::PLIST_BYTES);
    let want_size = launchd::PLIST_BYTES.len() as u64;
    let fix = format!(
        "launchd/com.jexcloud.agent.plist changed: set Size {want_size}, Hash-SHA-256 and \
         ServerToken {want_hash} in mdm/{ASSET}"
    );
    assert_eq!(reference.size, Some(want_size), "{fix}");
    assert_eq!(reference.hash_sha256.as_deref(), Some(&*want_hash), "{fix}");
    assert_eq!(asset.server_token, want_hash, "{fix}");
}

#[test]
fn declarations_have_their_fixed_identifiers_within_64_octets() {
    for (file, id) in DECLARATION_IDS {
        let d: Declaration<serde_json::Value> = declaration(file);
        assert_eq!(d.identifier, id, "{file}");
        assert!(
            id.starts_with(&format!("{}.", layout::PKG_IDENTIFIER)),
            "{id}"
        );
        // declarationbase.yaml: neither should exceed 64 octets.
        assert!(d.identifier.len() <= 64, "{file}: Identifier");
        assert!(
            !d.server_token.is_empty() && d.server_token.len() <= 64,
            "{file}: ServerToken"
        );
        assert!(d.payload.is_object(), "{file}: Payload");
    }
}

#[test]
fn a_key_outside_the_schema_is_refused() {
    // The typed parse is what checks the keys: show that it refuses one it does not know.
    let text = String::from_utf8(read(FULL_DISK_ACCESS)).expect("utf-8");
    let extra = text.replacen(
        "<key>IdentifierType</key>",
        "<key>IdentifierKind</key><string>path</string><key>IdentifierType</key>",
        1,
    );
    assert_ne!(extra, text);
    assert!(plist::from_bytes::<Profile<TccPayload>>(extra.as_bytes()).is_err());

    let text = String::from_utf8(read(CONFIGURATION)).expect("utf-8");
    let extra = text.replacen("\"TaskType\"", "\"TaskKind\": \"x\", \"TaskType\"", 1);
    assert_ne!(extra, text);
    assert!(serde_json::from_str::<Declaration<BackgroundTasks>>(&extra).is_err());
}

#[test]
fn independent_readers_accept_every_file() {
    // Python's plistlib and json, as a second parser of each file (python3 is on every CI image
    // used here).
    let script = r#"
import json, plistlib, sys
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        d = json.load(f) if path.endswith(".json") else plistlib.load(f)
    print(d.get("PayloadIdentifier") or d["Identifier"])
"#;
    let files: Vec<String> = [
        FULL_DISK_ACCESS,
        LOGIN_ITEMS,
        ASSET,
        CONFIGURATION,
        ACTIVATION,
    ]
    .iter()
    .map(|f| mdm_dir().join(f).display().to_string())
    .collect();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .expect("python3 must be installed to run this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<&str> = PROFILE_IDS
        .iter()
        .map(|p| p.1)
        .chain(DECLARATION_IDS.iter().map(|d| d.1))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ids
    );
}

#[test]
fn readme_documents_every_file_identifier_and_placeholder() {
    let readme = String::from_utf8(read(README)).expect("utf-8");
    let mut needed: Vec<&str> = vec![
        FULL_DISK_ACCESS,
        LOGIN_ITEMS,
        ASSET,
        CONFIGURATION,
        ACTIVATION,
        codesign::TEAM_ID_PLACEHOLDER,
        "DataURL",
        "com.apple.TCC.configuration-profile-policy",
        "com.apple.servicemanagement",
        "com.apple.configuration.services.background-tasks",
        "SystemPolicyAllFiles",
    ];
    for (_, id, uuid, payload_id, payload_uuid) in &PROFILE_IDS {
        needed.extend([*id, *uuid, *payload_id, *payload_uuid]);
    }
    needed.extend(DECLARATION_IDS.iter().map(|d| d.1));
    for word in needed {
        // File names are listed under their folder; the README names ddm/ files without it.
        let word = word.strip_prefix("ddm/").unwrap_or(word);
        assert!(
            readme.contains(word),
            "mdm/README.md does not mention {word}"
        );
    }
    let asset: Declaration<AssetData> = declaration(ASSET);
    assert!(
        asset.payload.reference.data_url.contains(".invalid/"),
        "the shipped DataURL is a placeholder that cannot resolve"
    );
}
