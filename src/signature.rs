//! The HMAC and Standard Webhooks primitives shared by inbound verification and outbound
//! signing: algorithms, encodings, digests, keys, and compiling an `hmac:` block. Nothing
//! here reads a request or sends one.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use http::HeaderName;

use crate::config::model::{RawBasicAuth, RawHmac};
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
