//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, keyed with the bytes of a `whsec_<base64>` secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

/// A signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

const PREFIX: &str = "whsec_";

impl Secret {
    /// A new random secret and its text form, `whsec_` + base64 of 32 bytes.
    pub fn generate() -> (Secret, String) {
        let mut key = vec![0u8; 32];
        rand::rng().fill(&mut key[..]);
        let text = format!("{PREFIX}{}", STANDARD.encode(&key));
        (Secret(key), text)
    }

    /// Parses `whsec_<base64>`; the key must be 24 to 64 bytes.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| "must start with whsec_ followed by base64, e.g. from POST /v1/webhooks".to_owned())?;
        let key = STANDARD.decode(encoded).map_err(|_| "the part after whsec_ is not valid base64".to_owned())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!("the key is {} bytes; use 24 to 64 random bytes", key.len()));
        }
        Ok(Secret(key))
    }

    /// The signing secret of job callbacks submitted with an API key: derived
    /// from the key's secret, so Orch stores nothing new and the key's holder
    /// can compute it: `whsec_` + base64(HMAC-SHA256(key = the API key,
    /// message = "orch webhook signing secret v1")).
    pub fn for_api_key(api_key: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(api_key.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(b"orch webhook signing secret v1");
        format!("{PREFIX}{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_standard_webhooks_reference() {
        // The example of the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn api_key_secrets_are_derived_and_usable() {
        let a = Secret::for_api_key("orch_a");
        assert_eq!(a, Secret::for_api_key("orch_a"));
        assert_ne!(a, Secret::for_api_key("orch_b"));
        assert!(!a.contains("orch_a"));
        Secret::parse(&a).unwrap();
    }

    #[test]
    fn secrets_parse_and_never_print() {
        let (secret, text) = Secret::generate();
        assert_eq!(Secret::parse(&text).unwrap(), secret);
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err().contains("whsec_"));
        assert!(Secret::parse("whsec_!!").unwrap_err().contains("base64"));
        assert!(Secret::parse("whsec_AAAA").unwrap_err().contains("24 to 64"));
    }
}
