//! Webhook secrets at rest (SPEC §5): sealed with XChaCha20-Poly1305 under the operator's
//! key, with the webhook id as associated data so a sealed secret cannot be moved to
//! another row. Stored form: `v1:` + standard base64 of `nonce (24 bytes) || ciphertext`.
//!
//! The key comes from `MOSEND_WEBHOOKS_ENCRYPTION_KEY` (standard base64 of 32 bytes) or,
//! on the embedded default with no key configured, from a key file beside the database,
//! created on first start with mode 0600.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;

/// The key that seals webhook secrets. `Debug` never shows it.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

impl EncryptionKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// Parses standard base64 of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes =
            STANDARD.decode(text.trim()).map_err(|_| "the encryption key must be standard base64".to_string())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| "the encryption key must be 32 bytes".to_string())?;
        Ok(Self(key))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Reads the key file, or creates it (mode 0600) with a new key. Returns the key and
    /// whether it was created.
    pub fn load_or_create(path: &Path) -> std::io::Result<(Self, bool)> {
        Self::load_or_create_with(path, &Self::generate())
    }

    /// Reads the key file, or creates it (mode 0600) holding `key`.
    pub fn load_or_create_with(path: &Path, key: &Self) -> std::io::Result<(Self, bool)> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .map(|k| (k, false))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = key.clone();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path)?;
                file.write_all(key.to_base64().as_bytes())?;
                file.sync_all()?;
                Ok((key, true))
            }
            Err(e) => Err(e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a sealed secret could not be opened (wrong encryption key, or corrupted data)")]
pub struct OpenError;

/// Seals and opens secrets.
#[derive(Clone)]
pub struct Cipher {
    aead: XChaCha20Poly1305,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(<redacted>)")
    }
}

impl Cipher {
    pub fn new(key: &EncryptionKey) -> Self {
        Self { aead: XChaCha20Poly1305::new(Key::from_slice(&key.0)) }
    }

    /// Seals `plaintext`, bound to `context` (the owning row's id).
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .aead
            .encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: context.as_bytes() })
            .expect("XChaCha20-Poly1305 encryption of a short message cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a value sealed by [`Cipher::seal`] with the same `context`.
    pub fn open(&self, stored: &str, context: &str) -> Result<String, OpenError> {
        let bytes = STANDARD.decode(stored.strip_prefix(PREFIX).ok_or(OpenError)?).map_err(|_| OpenError)?;
        if bytes.len() <= NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: context.as_bytes() })
            .map_err(|_| OpenError)?;
        String::from_utf8(plain).map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let key = EncryptionKey::generate();
        let c = Cipher::new(&key);
        let sealed = c.seal("whsec_abc", "row-1");
        assert!(sealed.starts_with("v1:") && !sealed.contains("whsec_abc"));
        assert_ne!(sealed, c.seal("whsec_abc", "row-1"), "a fresh nonce each time");
        assert_eq!(c.open(&sealed, "row-1").unwrap(), "whsec_abc");
        assert!(c.open(&sealed, "row-2").is_err());
        assert!(Cipher::new(&EncryptionKey::generate()).open(&sealed, "row-1").is_err());
        assert!(c.open("v1:!!", "row-1").is_err());
        assert!(c.open("whsec_abc", "row-1").is_err());
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes_and_never_show_in_debug() {
        let k = EncryptionKey::generate();
        assert!(EncryptionKey::parse(&k.to_base64()).is_ok());
        assert!(EncryptionKey::parse("c2hvcnQ=").is_err());
        assert!(EncryptionKey::parse("not base64!").is_err());
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.key");
        let (k1, created) = EncryptionKey::load_or_create(&path).unwrap();
        assert!(created);
        let (k2, created) = EncryptionKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.0, k2.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
