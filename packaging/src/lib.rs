//! jex-packaging: builds, signs and verifies the jex-agent macOS flat package on Linux or macOS.
//!
//! # Layout
//!
//! - [`layout`]: where every installed file goes and the service facts (label, drain grace).
//! - [`launchd`], [`newsyslog`]: the shipped plist and rotation rules, typed and checked.
//! - [`codesign`]: the binary's signing identifier and the code requirement that the MDM profiles
//!   in `mdm/` grant Full Disk Access by.
//! - [`cpio`], [`bom`], [`xar`]: the three archive formats of a flat package (odc Payload and
//!   Scripts, the Bom bill of materials, the XAR container).
//! - [`build`]: stages the payload and writes an unsigned, byte-reproducible product archive.
//! - [`integrity`]: the TOC checksum, the heap layout and every file's checksums (no signatures).
//! - [`x509`], [`key`], [`cms`]: certificates and the chain check (`rustls-webpki`, the signer
//!   must allow code signing), the RSA signing key, and the detached CMS SignedData.
//! - [`sign`]: signs like `productsign`: an RSA `<signature>` and a CMS `<x-signature>` over the
//!   TOC checksum, with the certificate chain.
//! - [`verify`]: checks the package's integrity, both signatures and the chain to a given CA.
//!
//! # Module dependencies
//!
//! Dependencies point one way, from the top of this list to the bottom; no module uses one
//! above it (test code included):
//!
//! ```text
//! verify    -> cms, integrity, x509, xar        (tests: build, sign)
//! sign      -> cms, integrity, key, x509, xar   (tests: build)
//! cms       -> key, x509
//! integrity -> xar
//! build     -> bom, cpio, launchd, layout, newsyslog, xar
//! bom       -> cpio
//! launchd   -> layout
//! newsyslog -> none                             (tests: layout)
//! key, x509, xar, cpio, layout, codesign: no crate dependency (key's tests use x509's test PKI)
//! ```
//!
//! Each module's error type holds only the error types of modules below it: [`sign::SignError`]
//! and [`verify::VerifyError`] both hold a [`cms::CmsError`] and an
//! [`integrity::IntegrityError`], and neither holds the other.
//!
//! All cryptography is done by `ring`, directly or through `rustls-webpki`; the RustCrypto
//! `der`/`cms`/`x509-cert` crates only encode and decode ASN.1.

#![forbid(unsafe_code)]

pub mod bom;
pub mod build;
pub mod cms;
pub mod codesign;
pub mod cpio;
pub mod integrity;
pub mod key;
pub mod launchd;
pub mod layout;
pub mod newsyslog;
pub mod sign;
pub mod verify;
pub mod x509;
pub mod xar;
