//! API keys (SPEC §2): `mk_live_` + a 12-character lowercase alphanumeric prefix + `.` + at
//! least 32 random alphanumeric characters. The prefix names the key in listings and
//! looks it up; only a SHA-256 hash of the secret part is stored (the secret is 40 random
//! characters, about 238 bits, so a fast hash is enough: there is nothing to brute-force),
//! and the hash is compared in constant time.

use std::fmt;

use rand::{distributions::Alphanumeric, Rng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

pub const KEY_PREFIX: &str = "mk_live_";
const PREFIX_LEN: usize = 12;
const SECRET_LEN: usize = 40;
const SECRET_MIN: usize = 32;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Mosend's own services: any organization, and the only scope that publishes events.
    Platform,
    /// One organization's own webhooks.
    Organization(Uuid),
}

/// A freshly generated key: shown once, never stored whole.
pub struct GeneratedKey {
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    /// The full `mk_live_…` string to hand to its owner.
    pub full: String,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

pub fn generate() -> GeneratedKey {
    let mut rng = rand::rngs::OsRng;
    let prefix: String = (0..PREFIX_LEN)
        .map(|_| {
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])
        })
        .collect();
    let secret: String = (0..SECRET_LEN).map(|_| char::from(rng.sample(Alphanumeric))).collect();
    GeneratedKey { secret_hash: hash_secret(&secret), full: format!("{KEY_PREFIX}{prefix}.{secret}"), prefix }
}

/// A key as presented by a caller, split into its prefix and secret part.
pub struct PresentedKey<'a> {
    pub prefix: &'a str,
    secret: &'a str,
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl<'a> PresentedKey<'a> {
    /// `None` unless `s` has the exact shape of a key.
    pub fn parse(s: &'a str) -> Option<Self> {
        let rest = s.strip_prefix(KEY_PREFIX)?;
        let (prefix, secret) = rest.split_once('.')?;
        let prefix_ok =
            prefix.len() == PREFIX_LEN && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let secret_ok =
            secret.len() >= SECRET_MIN && secret.len() <= 128 && secret.bytes().all(|b| b.is_ascii_alphanumeric());
        (prefix_ok && secret_ok).then_some(Self { prefix, secret })
    }

    /// Constant-time comparison of this key's secret with a stored hash.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        bool::from(hash_secret(self.secret).as_slice().ct_eq(stored_hash))
    }
}

/// Whether `s` looks like a key prefix (for `keys revoke`).
pub fn is_prefix(s: &str) -> bool {
    s.len() == PREFIX_LEN && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_only_their_own_hash() {
        let k = generate();
        let p = PresentedKey::parse(&k.full).expect("a generated key parses");
        assert_eq!(p.prefix, k.prefix);
        assert!(p.matches(&k.secret_hash));
        let other = generate();
        assert!(!p.matches(&other.secret_hash));
        assert!(!format!("{k:?}").contains(&k.full));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "mk_live_",
            "mk_test_abcdefghijkl.0123456789abcdefghij0123456789ab",
            "mk_live_ABCDEFGHIJKL.0123456789abcdefghij0123456789ab",
            "mk_live_abcdefghijkl.short",
            "mk_live_abcdefghijk.0123456789abcdefghij0123456789ab",
            "mk_live_abcdefghijkl.0123456789abcdefghij0123456789a!",
        ] {
            assert!(PresentedKey::parse(bad).is_none(), "{bad}");
        }
        assert!(PresentedKey::parse("mk_live_abcdefghijkl.0123456789abcdefghij0123456789ab").is_some());
    }
}
