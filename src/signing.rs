//! Both signature schemes of SPEC §4, over the exact bytes sent.
//!
//! - Mosend's published scheme, `X-MoSend-Signature`: lowercase hex HMAC-SHA256 of the raw
//!   body, keyed with the whole secret string (`whsec_…`) as UTF-8.
//! - Standard Webhooks, `webhook-signature`: `v1,` + base64 HMAC-SHA256 of
//!   `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of the
//!   secret after `whsec_`. Several signatures (during a rotation) are space-separated.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::webhook::WebhookSecret;

type HmacSha256 = Hmac<Sha256>;

/// The keyed HMAC states of one webhook's secrets, made once per webhook and cloned for each
/// message: keying an HMAC costs two SHA-256 blocks, which a clone skips.
#[derive(Clone)]
pub struct Signer {
    mosend: HmacSha256,
    /// The current secret first, then the previous one during a rotation.
    standard: Vec<HmacSha256>,
}

impl Signer {
    /// Signs with `secret`, and with `previous` too while a rotation's grace period lasts.
    pub fn new(secret: &WebhookSecret, previous: Option<&WebhookSecret>) -> Self {
        let keyed = |key: &[u8]| HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        Signer {
            mosend: keyed(secret.expose().as_bytes()),
            standard: std::iter::once(secret).chain(previous).map(|s| keyed(&s.key_bytes())).collect(),
        }
    }

    /// The `X-MoSend-Signature` value of `body` (current secret only).
    pub fn mosend(&self, body: &[u8]) -> String {
        let mut mac = self.mosend.clone();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// The `webhook-signature` header: one `v1,` entry per secret, space-separated.
    pub fn standard(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mut header = String::with_capacity(48 * self.standard.len());
        for (i, keyed) in self.standard.iter().enumerate() {
            let mut mac = keyed.clone();
            for part in [msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
                mac.update(part);
            }
            if i > 0 {
                header.push(' ');
            }
            header.push_str("v1,");
            STANDARD.encode_string(mac.finalize().into_bytes(), &mut header);
        }
        header
    }
}

/// One `v1,<base64>` Standard Webhooks signature with the raw key bytes, in one go (what a
/// receiver computes to verify).
pub fn standard_signature(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        // https://github.com/standard-webhooks/standard-webhooks test vector.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn mosend_signature_is_hex_hmac_keyed_with_the_whole_secret() {
        // Fixed vector computed independently: `printf '{"a":1}' | openssl dgst -sha256 -hmac 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'`.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = Signer::new(&secret, None).mosend(br#"{"a":1}"#);
        assert_eq!(sig.len(), 64);
        assert_eq!(sig, MOSEND_VECTOR);
    }

    #[test]
    fn the_signer_matches_the_standard_webhooks_vector_for_every_message() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signer = Signer::new(&secret, None);
        let (id, ts, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(signer.standard(id, ts, body), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // The keyed state is cloned per message, never consumed: the next message signs afresh.
        assert_eq!(signer.standard("other", 1, b"{}"), standard_signature(&secret.key_bytes(), "other", 1, b"{}"));
        assert_eq!(signer.standard(id, ts, body), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    const MOSEND_VECTOR: &str = "45ec03b2b33403c8043a90de06bedad0827183927115fd7e448ef97eeb13c5be";

    #[test]
    fn during_a_rotation_both_secrets_sign_space_separated_the_current_first() {
        let (a, b) = (WebhookSecret::generate(), WebhookSecret::generate());
        let signer = Signer::new(&a, Some(&b));
        let header = signer.standard("m", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [standard_signature(&a.key_bytes(), "m", 1, b"{}"), standard_signature(&b.key_bytes(), "m", 1, b"{}")]
        );
        // X-MoSend-Signature stays with the current secret alone.
        assert_eq!(signer.mosend(b"{}"), Signer::new(&a, None).mosend(b"{}"));
    }
}
