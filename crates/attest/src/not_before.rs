//! The `notBefore` of an X.509 certificate, read straight from its DER: the one field of the
//! signer certificate a version 2 document states ([`super::SignerRecord`]) that `webpki` does
//! not expose.
//!
//! The walk follows RFC 5280 §4.1: `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
//! [0] version OPTIONAL, serialNumber INTEGER, signature SEQUENCE, issuer SEQUENCE, validity
//! SEQUENCE { notBefore Time, … }, … }, … }`, where `Time` is a `UTCTime` (`YYMMDDHHMMSSZ`,
//! years 50–99 meaning 19xx) or a `GeneralizedTime` (`YYYYMMDDHHMMSSZ`). Only the DER forms
//! RFC 5280 allows are read (definite lengths, `Z`, whole seconds); anything else is `None`.
//! It is only used on a certificate whose signature chain has been, or will be, checked by
//! `webpki`, which rejects malformed certificates on its own.

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The `notBefore` of the DER certificate `der`, or `None` when it cannot be read.
pub fn certificate_not_before(der: &[u8]) -> Option<OffsetDateTime> {
    let (certificate, _) = expect(der, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = tlv(tbs)?.2;
    }
    let (_, rest) = expect(tbs, INTEGER)?;
    let (_, rest) = expect(rest, SEQUENCE)?; // signature algorithm
    let (_, rest) = expect(rest, SEQUENCE)?; // issuer
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (tag, time, _) = tlv(validity)?;
    parse_time(tag, time)
}

/// `t` as RFC 3339 (`2025-06-01T11:00:00Z`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    // Formatting a UTC date between years 0 and 9999 as RFC 3339 cannot fail, and every time a
    // certificate can carry is one.
    t.format(&Rfc3339).unwrap_or_default()
}

/// One TLV: its tag, its content and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (content, after) = rest.split_at_checked(len)?;
    Some((tag, content, after))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = tlv(input)?;
    (found == tag).then_some((content, rest))
}

fn parse_time(tag: u8, text: &[u8]) -> Option<OffsetDateTime> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: i32 = digits.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits.get(..4)?.parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let date = Date::from_calendar_date(year, Month::try_from(field(0)?).ok()?, field(2)?).ok()?;
    let time = Time::from_hms(field(4)?, field(6)?, field(8)?).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{HOST_SPIFFE_ID, TestCa};

    #[test]
    fn reads_the_not_before_of_issued_certificates() {
        let ca = TestCa::new("fleet CA");
        let leaf = ca.leaf();
        let t = certificate_not_before(&leaf.cert_der).unwrap();
        assert_eq!(rfc3339(t), "2020-01-01T00:00:00Z");
        let born = time::macros::datetime!(2051-03-04 05:06:07 UTC);
        let late = ca.leaf_born(HOST_SPIFFE_ID, born, rcgen::date_time_ymd(2100, 1, 1));
        assert_eq!(certificate_not_before(&late.cert_der), Some(born));
    }

    #[test]
    fn reads_both_time_forms() {
        assert_eq!(
            parse_time(UTC_TIME, b"491231235959Z")
                .map(rfc3339)
                .as_deref(),
            Some("2049-12-31T23:59:59Z")
        );
        assert_eq!(
            parse_time(UTC_TIME, b"500101000000Z")
                .map(rfc3339)
                .as_deref(),
            Some("1950-01-01T00:00:00Z")
        );
        assert_eq!(
            parse_time(GENERALIZED_TIME, b"20610203040506Z")
                .map(rfc3339)
                .as_deref(),
            Some("2061-02-03T04:05:06Z")
        );
        for bad in [
            &b"491231235959"[..],
            b"4912312359590Z",
            b"491331235959Z",
            b"49123123595+Z",
        ] {
            assert_eq!(parse_time(UTC_TIME, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn malformed_der_gives_none() {
        let der = TestCa::new("fleet CA").leaf().cert_der;
        for len in [0, 1, 2, 10, 40] {
            assert_eq!(certificate_not_before(&der[..len]), None);
        }
        assert_eq!(certificate_not_before(b"\x30\x80"), None);
        assert_eq!(certificate_not_before(b"\x31\x00"), None);
    }
}
