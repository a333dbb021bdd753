//! The HMAC and Standard Webhooks primitives shared by inbound verification and outbound
//! signing: algorithms, encodings, digests, keys, and compiling an `hmac:` block. Nothing
//! here reads a request or sends one.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use http::HeaderName;

use crate::config::model::{OneOrMany, RawBasicAuth, RawHmac};
use crate::config::units::parse_duration;
use crate::config::Problems;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// Which bytes are signed.
#[derive(Debug, Clone)]
pub enum SignedMessage {
    /// The raw body, as GitHub and most platforms do.
    Body,
    /// `{{timestamp}}` and `{{raw}}` placeholders, e.g. `"{{timestamp}}.{{raw}}"`.
    Pattern(String),
}

#[derive(Debug, Clone)]
pub struct HmacCheck {
    pub header: HeaderName,
    pub secret: Vec<u8>,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub prefix: String,
    pub message: SignedMessage,
    pub tolerance: Option<Duration>,
    pub timestamp_header: Option<HeaderName>,
}

/// `None` only if the key is refused, which HMAC never does (any key length is valid);
/// callers treat it as a failed check, so an impossible error can only fail closed.
pub fn hmac_digest(algorithm: HmacAlgorithm, key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
        let mut mac = <M as KeyInit>::new_from_slice(key).ok()?;
        mac.update(message);
        Some(mac.finalize().into_bytes().to_vec())
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<hmac::Hmac<sha1::Sha1>>(key, message),
        HmacAlgorithm::Sha256 => run::<hmac::Hmac<sha2::Sha256>>(key, message),
        HmacAlgorithm::Sha512 => run::<hmac::Hmac<sha2::Sha512>>(key, message),
    }
}

/// A Standard Webhooks secret: `whsec_` followed by base64 key bytes.
pub fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "a Standard Webhooks secret is `whsec_` followed by base64".to_string())?;
    // An empty key would accept signatures anyone can make; a key of a few bytes (or all
    // zeros) is guessed as easily. Standard Webhooks keys are 24 to 64 random bytes.
    if key.is_empty() {
        return Err("the Standard Webhooks key is empty (an unset ${VAR} after `whsec_`?)".to_string());
    }
    if key.len() < 16 || key.iter().all(|byte| *byte == 0) {
        return Err(format!("the Standard Webhooks key is {} bytes: use at least 16 random bytes", key.len()));
    }
    Ok(key)
}

/// A Standard Webhooks key as written: `whsec_` (a shared secret: `v1`, HMAC-SHA256),
/// `whsk_` (an ed25519 signing key: `v1a`) or `whpk_` (an ed25519 public key, to verify `v1a`).
#[derive(Clone)]
pub enum StandardKey {
    Secret(Vec<u8>),
    Signing(std::sync::Arc<ring::signature::Ed25519KeyPair>),
    Public(Vec<u8>),
}

/// Names the kind of key, never its bytes.
impl std::fmt::Debug for StandardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StandardKey::Secret(_) => "StandardKey::Secret(***)",
            StandardKey::Signing(_) => "StandardKey::Signing(***)",
            StandardKey::Public(_) => "StandardKey::Public(..)",
        })
    }
}

impl StandardKey {
    pub fn parse(text: &str) -> Result<StandardKey, String> {
        let text = text.trim();
        let decode = |encoded: &str, prefix: &str| {
            base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| format!("`{prefix}` must be followed by base64"))
        };
        if let Some(encoded) = text.strip_prefix("whsk_") {
            let bytes = decode(encoded, "whsk_")?;
            // The seed alone, or the seed followed by its public key (libsodium's form).
            let pair = match bytes.len() {
                32 => ring::signature::Ed25519KeyPair::from_seed_unchecked(&bytes),
                64 => ring::signature::Ed25519KeyPair::from_seed_and_public_key(&bytes[..32], &bytes[32..]),
                other => return Err(format!("an ed25519 signing key (`whsk_`) is 32 bytes, or 64 with its public key, not {other}")),
            };
            if bytes[..32].iter().all(|byte| *byte == 0) {
                return Err("the `whsk_` key is all zeros, which anyone can sign with".to_string());
            }
            return pair
                .map(|pair| StandardKey::Signing(std::sync::Arc::new(pair)))
                .map_err(|_| "the `whsk_` key is not an ed25519 key".to_string());
        }
        if let Some(encoded) = text.strip_prefix("whpk_") {
            let bytes = decode(encoded, "whpk_")?;
            let Ok(array) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                return Err(format!("an ed25519 public key (`whpk_`) is 32 bytes, not {}", bytes.len()));
            };
            // A small-order point verifies signatures made without any secret.
            return match ed25519_dalek::VerifyingKey::from_bytes(&array) {
                Ok(key) if !key.is_weak() => Ok(StandardKey::Public(bytes)),
                Ok(_) => Err("the `whpk_` key is a weak (small-order) ed25519 point: signatures could be forged".to_string()),
                Err(_) => Err("the `whpk_` key is not an ed25519 public key".to_string()),
            };
        }
        standard_webhooks_key(text).map(StandardKey::Secret)
    }

    /// The signature of `content` as sent in `webhook-signature` (`v1,…` or `v1a,…`); `None`
    /// for a public key, which cannot sign.
    pub fn sign(&self, content: &[u8]) -> Option<String> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        match self {
            StandardKey::Secret(key) => hmac_digest(HmacAlgorithm::Sha256, key, content).map(|digest| format!("v1,{}", b64(&digest))),
            StandardKey::Signing(pair) => Some(format!("v1a,{}", b64(pair.sign(content).as_ref()))),
            StandardKey::Public(_) => None,
        }
    }
}

/// Standard Webhooks keys as written at `at` (one key or a list); `signing` refuses public
/// keys, which cannot sign. Problems are reported at each key's path.
pub fn compile_standard_keys(written: &OneOrMany, at: &str, signing: bool, problems: &mut Problems) -> Vec<StandardKey> {
    let (texts, listed) = match written {
        OneOrMany::One(text) => (vec![text.as_str()], false),
        OneOrMany::Many(texts) => (texts.iter().map(String::as_str).collect(), true),
    };
    if texts.is_empty() {
        problems.push(at, "list at least one key");
    }
    let mut keys = Vec::with_capacity(texts.len());
    for (index, text) in texts.into_iter().enumerate() {
        let path = if listed { format!("{at}[{index}]") } else { at.to_string() };
        if !problems.secret(path.clone(), text) {
            continue;
        }
        match StandardKey::parse(text) {
            Ok(StandardKey::Public(_)) if signing => {
                problems.push(path, "a public key (`whpk_`) only verifies: sign with the `whsk_` signing key")
            }
            Ok(key) => keys.push(key),
            Err(message) => problems.push(path, message),
        }
    }
    keys
}

/// The most `webhook-signature` entries read: rotation needs a handful, and each `v1a`
/// entry costs a hash of the whole body per public key.
const MAX_SIGNATURES: usize = 8;

/// Whether a `webhook-signature` header holds a valid signature of `content` by any of
/// `keys`. Each shared secret's HMAC is computed once; only entries of the right length are
/// checked, and only the first [`MAX_SIGNATURES`], so a header of thousands cannot make a
/// request cost more than a few hashes of its body.
pub fn standard_signature_valid(keys: &[StandardKey], header: &str, content: &[u8]) -> bool {
    let decode = |encoded: &str| base64::engine::general_purpose::STANDARD.decode(encoded).ok();
    let entries: Vec<&str> = header.split(' ').filter(|entry| !entry.is_empty()).take(MAX_SIGNATURES).collect();
    let shared: Vec<Vec<u8>> = if entries.iter().any(|entry| entry.starts_with("v1,")) {
        keys.iter()
            .filter_map(|key| match key {
                StandardKey::Secret(secret) => hmac_digest(HmacAlgorithm::Sha256, secret, content),
                _ => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    let public: Vec<&[u8]> = keys
        .iter()
        .filter_map(|key| match key {
            StandardKey::Public(public) => Some(public.as_slice()),
            StandardKey::Signing(pair) => {
                use ring::signature::KeyPair as _;
                Some(pair.public_key().as_ref())
            }
            StandardKey::Secret(_) => None,
        })
        .collect();
    entries.iter().any(|entry| {
        if let Some(given) = entry.strip_prefix("v1,").and_then(decode).filter(|given| given.len() == 32) {
            return shared.iter().any(|expected| crate::values::secret_eq(&given, expected));
        }
        if let Some(signature) = entry.strip_prefix("v1a,").and_then(decode).filter(|signature| signature.len() == 64) {
            return public
                .iter()
                .any(|key| ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key).verify(content, &signature).is_ok());
        }
        false
    })
}

/// Compiles an `hmac:` block (inbound `verify.hmac` and outbound `sign.hmac` share it).
pub fn compile_hmac(raw: &RawHmac, at: &str, problems: &mut Problems) -> Option<HmacCheck> {
    let header = header_name(&raw.header, format!("{at}.header"), problems);
    let algorithm = match raw.algorithm.as_deref().unwrap_or("sha256") {
        "sha1" => Some(HmacAlgorithm::Sha1),
        "sha256" => Some(HmacAlgorithm::Sha256),
        "sha512" => Some(HmacAlgorithm::Sha512),
        other => {
            problems.push(format!("{at}.algorithm"), format!("unknown algorithm {other:?} (sha1, sha256, sha512)"));
            None
        }
    };
    let encoding = match raw.encoding.as_deref().unwrap_or("hex") {
        "hex" => Some(SignatureEncoding::Hex),
        "base64" => Some(SignatureEncoding::Base64),
        other => {
            problems.push(format!("{at}.encoding"), format!("unknown encoding {other:?} (hex, base64)"));
            None
        }
    };
    let tolerance = match &raw.tolerance {
        Some(text) => match parse_duration(text) {
            Ok(duration) => Some(duration),
            Err(message) => {
                problems.push(format!("{at}.tolerance"), message);
                None
            }
        },
        None => None,
    };
    let timestamp_header = match &raw.timestamp_header {
        Some(name) => Some(header_name(name, format!("{at}.timestamp_header"), problems)?),
        None => None,
    };
    if tolerance.is_some() && timestamp_header.is_none() {
        problems.push(format!("{at}.tolerance"), "`tolerance` needs `timestamp_header`");
    }
    let keyed = problems.secret(format!("{at}.secret"), &raw.secret);
    let message = match raw.message.as_deref() {
        None | Some("{{raw}}") => SignedMessage::Body,
        Some(pattern) => SignedMessage::Pattern(pattern.to_string()),
    };
    if !keyed {
        return None;
    }
    Some(HmacCheck {
        header: header?,
        secret: raw.secret.as_bytes().to_vec(),
        algorithm: algorithm?,
        encoding: encoding?,
        prefix: raw.prefix.clone().unwrap_or_default(),
        message,
        tolerance,
        timestamp_header,
    })
}

/// A header name from the config, or a problem at `at`.
pub fn header_name(name: &str, at: String, problems: &mut Problems) -> Option<HeaderName> {
    let parsed = HeaderName::from_bytes(name.as_bytes()).ok();
    if parsed.is_none() {
        problems.push(at, format!("{name:?} is not a valid header name"));
    }
    parsed
}

/// The `Authorization` value for Basic credentials.
pub fn basic_auth_header(auth: &RawBasicAuth) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", auth.username, auth.password));
    format!("Basic {encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn standard_webhooks_keys_say_what_is_wrong_with_them() {
        let seed = [3u8; 32];
        let Ok(StandardKey::Signing(pair)) = StandardKey::parse(&format!("whsk_{}", b64(&seed))) else { panic!("a 32-byte seed") };
        use ring::signature::KeyPair as _;
        let public = pair.public_key().as_ref().to_vec();
        let both = [&seed[..], &public[..]].concat();
        assert!(matches!(StandardKey::parse(&format!("whsk_{}", b64(&both))), Ok(StandardKey::Signing(_))), "seed and public key");
        let mismatched = [&seed[..], &[0u8; 32][..]].concat();
        assert_eq!(StandardKey::parse(&format!("whsk_{}", b64(&mismatched))).unwrap_err(), "the `whsk_` key is not an ed25519 key");
        assert!(StandardKey::parse(&format!("whsk_{}", b64(&[1u8; 16]))).unwrap_err().contains("not 16"));
        assert!(StandardKey::parse(&format!("whpk_{}", b64(&[1u8; 31]))).unwrap_err().contains("32 bytes, not 31"));
        assert!(StandardKey::parse("whpk_***").unwrap_err().contains("base64"));
        assert!(StandardKey::parse(&format!("whsk_{}", b64(&[0u8; 32]))).unwrap_err().contains("all zeros"));
        // Small-order points (the identity, and all zeros) would verify forged signatures.
        let identity = [&[1u8][..], &[0u8; 31][..]].concat();
        for weak in [identity, vec![0u8; 32]] {
            assert!(StandardKey::parse(&format!("whpk_{}", b64(&weak))).unwrap_err().contains("weak"), "{weak:?}");
        }
        // What a key signs, its public half (and only it) verifies; a public key cannot sign.
        let signing = StandardKey::parse(&format!("whsk_{}", b64(&seed))).unwrap();
        let entry = signing.sign(b"m").unwrap();
        assert!(entry.starts_with("v1a,"));
        let keys = [StandardKey::parse(&format!("whpk_{}", b64(&public))).unwrap()];
        assert!(standard_signature_valid(&keys, &entry, b"m"));
        assert!(!standard_signature_valid(&keys, &entry, b"n"));
        assert!(!standard_signature_valid(&keys, &entry.replacen("v1a,", "v1,", 1), b"m"));
        // Only the first eight entries are read.
        assert!(!standard_signature_valid(&keys, &format!("{} {entry}", ["v1a,AAAA"; 8].join(" ")), b"m"));
        assert!(standard_signature_valid(&keys, &format!("{} {entry}", ["v1a,AAAA"; 7].join(" ")), b"m"));
        assert_eq!(keys[0].sign(b"m"), None);
    }
}
