//! jex-packaging: builds, signs and verifies the jex-agent macOS flat package on Linux or macOS.
//!
//! # Layout
//!
//! - [`layout`]: where every installed file goes and the service facts (label, drain grace).
//! - [`launchd`], [`newsyslog`]: the shipped plist and rotation rules, typed and checked.
//! - [`cpio`], [`bom`], [`xar`]: the three archive formats of a flat package (odc Payload and
//!   Scripts, the Bom bill of materials, the XAR container).
//! - [`build`]: stages the payload and writes an unsigned, byte-reproducible product archive.
//! - [`x509`], [`cms`], [`sign`]: signs like `productsign`: an RSA `<signature>` and a CMS
//!   `<x-signature>` over the TOC checksum, with the certificate chain.
//! - [`verify`]: checks the TOC checksum, both signatures, the chain to a given CA and every
//!   file's checksums.
//!
//! All cryptography is done by `ring`; the RustCrypto `der`/`cms`/`x509-cert` crates only encode
//! and decode ASN.1.

pub mod bom;
pub mod build;
pub mod cms;
pub mod cpio;
pub mod launchd;
pub mod layout;
pub mod newsyslog;
pub mod sign;
pub mod verify;
pub mod x509;
pub mod xar;
