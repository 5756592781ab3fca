//! The overwrite pattern: a seekable CSPRNG keystream.
//!
//! The pattern is the AES-256-CTR keystream under a fresh 256-bit [`PatternKey`], with a 128-bit
//! big-endian counter equal to the byte offset divided by 16. The 16 bytes at offset `16·n` are
//! therefore `AES-256(key, n as u128 big-endian)`, for any `n`: the expected content of any block
//! of a target is computed directly from `(key, offset)`, without generating what comes before.
//! Every target of an operation gets the same keystream at the same offsets.
//!
//! Invariants:
//! - offsets handed to [`Pattern::fill`] are multiples of 16 (direct I/O offsets always are);
//! - the key is secret until the certificate is signed, then revealed in it (so anyone holding the
//!   media can re-check any block): it is zeroized on drop and never printed by `Debug`.
//!
//! The AES implementation is picked at run time (AES-NI on x86_64). On `aarch64` the `aes` crate
//! uses the ARMv8 AES instructions only when built with `--cfg aes_armv8`.

use aes::Aes256;
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The algorithm, as written into certificates.
pub const PATTERN_ALGORITHM: &str =
    "AES-256-CTR keystream, 128-bit big-endian counter = byte offset / 16";

/// Length of a [`PatternKey`] in bytes.
pub const PATTERN_KEY_LEN: usize = 32;

/// The AES block size: offsets given to [`Pattern::fill`] are multiples of it.
pub const PATTERN_ALIGN: u64 = 16;

/// A 256-bit pattern key. Zeroized on drop; `Debug` prints `"..."`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct PatternKey([u8; PATTERN_KEY_LEN]);

impl std::fmt::Debug for PatternKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("...")
    }
}

/// A pattern key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// The system random generator failed.
    #[error("generating a pattern key: the system random generator failed")]
    Random,
    /// A stored key is not 64 hex digits.
    #[error("decoding a pattern key: expected {} hex digits", PATTERN_KEY_LEN * 2)]
    Malformed,
}

impl PatternKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate(rng: &SystemRandom) -> Result<Self, PatternError> {
        let mut key = PatternKey([0u8; PATTERN_KEY_LEN]);
        rng.fill(&mut key.0).map_err(|_| PatternError::Random)?;
        Ok(key)
    }

    /// A key from its bytes (tests, and re-checking a certificate offline).
    pub fn from_bytes(bytes: [u8; PATTERN_KEY_LEN]) -> Self {
        PatternKey(bytes)
    }

    /// Decodes a key from lowercase or uppercase hex (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, PatternError> {
        let mut key = PatternKey([0u8; PATTERN_KEY_LEN]);
        hex::decode_to_slice(text.trim(), &mut key.0).map_err(|_| PatternError::Malformed)?;
        Ok(key)
    }

    /// The key as lowercase hex: only for the key file and for the signed certificate.
    pub fn reveal_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    /// SHA-256 of the key, lowercase hex: a commitment that can be journaled and logged.
    pub fn commitment(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.0))
    }
}

/// The keystream generator for one key. Cheap to clone; holds the key (zeroized on drop).
#[derive(Clone)]
pub struct Pattern {
    key: PatternKey,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pattern(...)")
    }
}

impl Pattern {
    /// A generator for `key`.
    pub fn new(key: PatternKey) -> Self {
        Pattern { key }
    }

    /// The key (to reveal it in a certificate or store it in the key file).
    pub fn key(&self) -> &PatternKey {
        &self.key
    }

    /// Writes the pattern bytes for `[offset, offset + buf.len())` into `buf`.
    ///
    /// `offset` must be a multiple of [`PATTERN_ALIGN`]; it is rounded down otherwise, which only
    /// happens through a caller bug (direct I/O offsets are block aligned).
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        debug_assert_eq!(
            offset % PATTERN_ALIGN,
            0,
            "pattern offsets are 16-byte aligned"
        );
        let counter = u128::from(offset / PATTERN_ALIGN).to_be_bytes();
        let mut cipher = Ctr128BE::<Aes256>::new((&self.key.0).into(), (&counter).into());
        buf.fill(0);
        cipher.apply_keystream(buf);
        // The expanded key schedule inside `cipher` is zeroized on drop (`aes/zeroize`).
    }

    /// Compares `actual` (read back from `offset`) with the pattern, using `scratch` (same length)
    /// for the expected bytes. Returns the offset of the first mismatching byte, if any.
    pub fn first_mismatch(&self, offset: u64, actual: &[u8], scratch: &mut [u8]) -> Option<u64> {
        let scratch = &mut scratch[..actual.len()];
        self.fill(offset, scratch);
        if scratch == actual {
            return None;
        }
        actual
            .iter()
            .zip(scratch.iter())
            .position(|(a, e)| a != e)
            .map(|index| offset + index as u64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fixed_key() -> PatternKey {
        let mut bytes = [0u8; PATTERN_KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        PatternKey::from_bytes(bytes)
    }

    #[test]
    fn first_block_is_aes256_of_counter_zero() {
        // FIPS-197 Appendix C.3 uses key 00..1f; its plaintext differs, so compute the reference
        // with the block cipher directly: keystream block n = AES-256(key, n as big-endian u128).
        use aes::cipher::{BlockEncrypt, KeyInit};
        let key = fixed_key();
        let aes = Aes256::new((&key.0).into());
        for n in [0u128, 1, 7, 1 << 40] {
            let mut expected = aes::Block::from(n.to_be_bytes());
            aes.encrypt_block(&mut expected);
            let mut got = [0u8; 16];
            Pattern::new(key.clone()).fill((n as u64) * 16, &mut got);
            assert_eq!(got.as_slice(), expected.as_slice(), "block {n}");
        }
    }

    #[test]
    fn any_window_equals_the_same_bytes_of_one_long_stream() {
        let pattern = Pattern::new(fixed_key());
        let mut whole = vec![0u8; 64 * 1024];
        pattern.fill(0, &mut whole);
        for (start, len) in [
            (0usize, 16usize),
            (4096, 4096),
            (16 * 1001, 777),
            (60 * 1024, 4096),
        ] {
            let mut part = vec![0u8; len];
            pattern.fill(start as u64, &mut part);
            assert_eq!(part, whole[start..start + len], "window at {start}");
        }
    }

    #[test]
    fn different_keys_give_different_streams() {
        let rng = SystemRandom::new();
        let a = Pattern::new(PatternKey::generate(&rng).unwrap());
        let b = Pattern::new(PatternKey::generate(&rng).unwrap());
        let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
        a.fill(0, &mut x);
        b.fill(0, &mut y);
        assert_ne!(x, y);
        assert_ne!(a.key().commitment(), b.key().commitment());
    }

    #[test]
    fn first_mismatch_reports_the_exact_byte_offset() {
        let pattern = Pattern::new(fixed_key());
        let mut data = vec![0u8; 8192];
        pattern.fill(1 << 20, &mut data);
        let mut scratch = vec![0u8; 8192];
        assert_eq!(pattern.first_mismatch(1 << 20, &data, &mut scratch), None);
        data[5000] ^= 1;
        assert_eq!(
            pattern.first_mismatch(1 << 20, &data, &mut scratch),
            Some((1 << 20) + 5000)
        );
    }

    #[test]
    fn key_debug_and_hex_round_trip_never_leak_in_debug() {
        let key = fixed_key();
        assert_eq!(format!("{key:?}"), "...");
        assert_eq!(format!("{:?}", Pattern::new(key.clone())), "Pattern(...)");
        let hex = key.reveal_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(PatternKey::from_hex(&hex).unwrap(), key);
        assert!(matches!(
            PatternKey::from_hex("abc"),
            Err(PatternError::Malformed)
        ));
    }
}
