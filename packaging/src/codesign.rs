//! The code-signing identity of the agent binary: what `scripts/package.sh` signs it as, and the
//! code requirement that permissions granted to it by MDM name.
//!
//! `scripts/package.sh` signs `jex-agent` with `rcodesign`, identifier [`IDENTIFIER`], hardened
//! runtime, and the team identifier taken from the certificate's OU. With an Apple-issued
//! Developer ID Application certificate the designated requirement recorded in the signature is
//! the one [`designated_requirement`] spells out: `rcodesign` derives it from the certificate as
//! Apple's `codesign` does, and `codesign -d -r - <binary>` prints it on a Mac.
//!
//! macOS grants privacy permissions (TCC) to a binary named by path only together with a code
//! requirement, and checks the running binary against it. The Full Disk Access profile in `mdm/`
//! carries [`designated_requirement`] of [`TEAM_ID_PLACEHOLDER`]: the fleet's Developer ID team
//! is not known here, so the operator replaces the placeholder before deploying (see
//! `mdm/README.md`). Left in place, the placeholder matches no binary and grants nothing.

/// The signing identifier of `jex-agent` (`--binary-identifier` in `scripts/package.sh`).
pub const IDENTIFIER: &str = "com.jexcloud.agent";

/// Stands for the fleet's Developer ID team identifier in the shipped MDM profiles. No real team
/// identifier (ten upper-case letters and digits) can equal it.
pub const TEAM_ID_PLACEHOLDER: &str = "REPLACE_WITH_TEAM_ID";

/// The designated requirement of `jex-agent` signed with a Developer ID Application certificate
/// of team `team_id`, in the text form `codesign -d -r -` prints: the identifier, a chain to
/// Apple's root, an intermediate with the Developer ID marker (1.2.840.113635.100.6.2.6), a leaf
/// with the Developer ID Application marker (1.2.840.113635.100.6.1.13), and the team as the
/// leaf's OU.
pub fn designated_requirement(team_id: &str) -> String {
    format!(
        "identifier \"{IDENTIFIER}\" and anchor apple generic \
         and certificate 1[field.1.2.840.113635.100.6.2.6] /* exists */ \
         and certificate leaf[field.1.2.840.113635.100.6.1.13] /* exists */ \
         and certificate leaf[subject.OU] = \"{team_id}\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGE_SH: &str = include_str!("../../scripts/package.sh");

    #[test]
    fn package_sh_signs_with_the_identifier() {
        let assigned: Vec<&str> = PACKAGE_SH
            .lines()
            .filter_map(|l| l.strip_prefix("IDENTIFIER="))
            .collect();
        assert_eq!(assigned, [IDENTIFIER], "scripts/package.sh IDENTIFIER=");
        assert!(PACKAGE_SH.contains("--binary-identifier \"$IDENTIFIER\""));
        assert!(PACKAGE_SH.contains("--identifier \"$IDENTIFIER\""));
    }

    #[test]
    fn designated_requirement_names_identifier_and_team() {
        let requirement = designated_requirement("ABCDE12345");
        assert_eq!(
            requirement,
            "identifier \"com.jexcloud.agent\" and anchor apple generic and certificate \
             1[field.1.2.840.113635.100.6.2.6] /* exists */ and certificate \
             leaf[field.1.2.840.113635.100.6.1.13] /* exists */ and certificate \
             leaf[subject.OU] = \"ABCDE12345\""
        );
    }

    #[test]
    fn the_placeholder_cannot_be_a_team_identifier() {
        let is_team_id = |s: &str| {
            s.len() == 10
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        };
        assert!(is_team_id("ABCDE12345"));
        assert!(!is_team_id(TEAM_ID_PLACEHOLDER));
    }
}
