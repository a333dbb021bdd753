//! Inbound verification (DESIGN §2 `verify`, §3 `secret:` shorthands): Basic Auth, shared
//! tokens in a header or body field, HMAC signatures, and source IP allow-lists. Every
//! secret comparison is constant-time. All configured checks must pass.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderName};
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::config::model::{OneOrMany, RawToken, RawVerify};
use crate::config::units::parse_duration;
use crate::config::Problems;
use crate::signature::{basic_auth_header, compile_hmac, compile_standard_keys, header_name, standard_signature_valid, StandardKey};
pub use crate::signature::{hmac_digest, HmacAlgorithm, HmacCheck, SignatureEncoding, SignedMessage};
use crate::values::{secret_eq, unix_seconds};

#[derive(Debug, Clone)]
pub enum Check {
    BasicAuth {
        expected: String,
    },
    HeaderToken {
        header: HeaderName,
        value: String,
    },
    FieldToken {
        path: JsonPath,
        value: String,
    },
    Hmac(Box<HmacCheck>),
    IpAllow(Vec<ipnet::IpNet>),
    /// Standard Webhooks: `webhook-signature` over `id.timestamp.body` by any of the keys
    /// (`v1` shared secrets, `v1a` ed25519 public keys), timestamp fresh.
    StandardWebhooks {
        keys: Vec<StandardKey>,
        tolerance: Duration,
    },
    /// Gitee: `X-Gitee-Token` is the password, or base64 HMAC-SHA256 of `timestamp\nsecret`
    /// with the millisecond `X-Gitee-Timestamp` inside the tolerance.
    Gitee {
        secret: String,
        tolerance: Duration,
    },
}

impl Check {
    /// Adds what this check reads as a credential to what is redacted when recorded.
    pub fn mark_credentials(&self, redactions: &mut crate::redact::Redactions) {
        match self {
            Check::HeaderToken { header, value } => {
                redactions.add_header(header);
                redactions.add_value(value);
            }
            Check::Hmac(hmac) => {
                redactions.add_header(&hmac.header);
                redactions.add_value(&String::from_utf8_lossy(&hmac.secret));
            }
            Check::FieldToken { path, value } => {
                redactions.add_field(path);
                redactions.add_value(value);
            }
            // Its header (X-Gitee-Token) is on the fixed list; a template may copy the secret.
            Check::Gitee { secret, .. } => redactions.add_value(secret),
            // Their headers (Authorization, webhook-signature) are on the fixed list.
            Check::BasicAuth { .. } | Check::StandardWebhooks { .. } | Check::IpAllow(_) => {}
        }
    }
}

/// The parts of a request a check may read.
pub struct VerifyInput<'a> {
    pub headers: &'a HeaderMap,
    pub raw_body: &'a [u8],
    pub body: Option<&'a Value>,
    pub peer: IpAddr,
    /// Seconds since the Unix epoch, passed in so tests control the clock.
    pub now_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing or wrong credentials")]
    BadCredentials,
    #[error("missing or wrong token")]
    BadToken,
    #[error("missing or wrong signature in {0}")]
    BadSignature(String),
    #[error("timestamp missing or outside the allowed tolerance")]
    StaleTimestamp,
    #[error("source address not allowed")]
    AddressNotAllowed,
}

impl Check {
    pub fn check(&self, input: &VerifyInput<'_>) -> Result<(), VerifyError> {
        match self {
            Check::BasicAuth { expected } => {
                let given = input.headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
                secret_eq(given, expected.as_bytes()).then_some(()).ok_or(VerifyError::BadCredentials)
            }
            Check::HeaderToken { header, value } => {
                let given = input.headers.get(header).map(|v| v.as_bytes()).unwrap_or_default();
                secret_eq(given, value.as_bytes()).then_some(()).ok_or(VerifyError::BadToken)
            }
            Check::FieldToken { path, value } => {
                let given = input.body.and_then(|b| path.query(b).first()).and_then(Value::as_str).unwrap_or_default();
                secret_eq(given.as_bytes(), value.as_bytes()).then_some(()).ok_or(VerifyError::BadToken)
            }
            Check::Hmac(hmac) => hmac.check(input),
            Check::IpAllow(nets) => {
                nets.iter().any(|net| net.contains(&canonical(input.peer))).then_some(()).ok_or(VerifyError::AddressNotAllowed)
            }
            Check::StandardWebhooks { keys, tolerance } => check_standard_webhooks(keys, *tolerance, input),
            Check::Gitee { secret, tolerance } => check_gitee(secret, *tolerance, input),
        }
    }
}

impl HmacCheck {
    fn check(&self, input: &VerifyInput<'_>) -> Result<(), VerifyError> {
        let bad = || VerifyError::BadSignature(self.header.to_string());
        let timestamp = match &self.timestamp_header {
            Some(name) => {
                let text = input.headers.get(name).and_then(|v| v.to_str().ok()).ok_or(VerifyError::StaleTimestamp)?;
                if let Some(tolerance) = self.tolerance {
                    let seconds = parse_timestamp_seconds(text).ok_or(VerifyError::StaleTimestamp)?;
                    if input.now_unix.abs_diff(seconds) > tolerance.as_secs() {
                        return Err(VerifyError::StaleTimestamp);
                    }
                }
                text
            }
            None => "",
        };
        let given = input.headers.get(&self.header).and_then(|v| v.to_str().ok()).ok_or_else(bad)?;
        let given = given.strip_prefix(self.prefix.as_str()).ok_or_else(bad)?;
        let message: std::borrow::Cow<'_, [u8]> = match &self.message {
            SignedMessage::Body => input.raw_body.into(),
            SignedMessage::Pattern(pattern) => {
                let text = pattern.replace("{{timestamp}}", timestamp);
                let mut bytes = Vec::with_capacity(text.len() + input.raw_body.len());
                let mut parts = text.split("{{raw}}");
                if let Some(first) = parts.next() {
                    bytes.extend_from_slice(first.as_bytes());
                }
                for part in parts {
                    bytes.extend_from_slice(input.raw_body);
                    bytes.extend_from_slice(part.as_bytes());
                }
                bytes.into()
            }
        };
        let expected = hmac_digest(self.algorithm, &self.secret, &message).ok_or_else(bad)?;
        let decoded = match self.encoding {
            SignatureEncoding::Hex => hex::decode(given.trim()).ok(),
            SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(given.trim()).ok(),
        }
        .ok_or_else(bad)?;
        secret_eq(&decoded, &expected).then_some(()).ok_or_else(bad)
    }
}

/// Unix seconds, or milliseconds when the number is that large.
fn parse_timestamp_seconds(text: &str) -> Option<i64> {
    text.trim().parse().ok().map(unix_seconds)
}

/// IPv4-mapped IPv6 peers (from a dual-stack listener) match IPv4 allow-lists.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        IpAddr::V4(_) => ip,
    }
}

fn header_text<'a>(input: &'a VerifyInput<'_>, name: &str) -> Option<&'a str> {
    input.headers.get(name).and_then(|v| v.to_str().ok())
}

fn fresh(seconds: i64, now: i64, tolerance: Duration) -> Result<(), VerifyError> {
    if now.abs_diff(seconds) > tolerance.as_secs() {
        return Err(VerifyError::StaleTimestamp);
    }
    Ok(())
}

fn check_standard_webhooks(keys: &[StandardKey], tolerance: Duration, input: &VerifyInput<'_>) -> Result<(), VerifyError> {
    let bad = || VerifyError::BadSignature("webhook-signature".to_string());
    let id = header_text(input, "webhook-id").ok_or_else(bad)?;
    let timestamp = header_text(input, "webhook-timestamp").ok_or(VerifyError::StaleTimestamp)?;
    fresh(timestamp.trim().parse().map_err(|_| VerifyError::StaleTimestamp)?, input.now_unix, tolerance)?;
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(input.raw_body);
    // The header lists signatures separated by spaces (key rotation); any one by any key passes.
    let signatures = header_text(input, "webhook-signature").ok_or_else(bad)?;
    standard_signature_valid(keys, signatures, &content).then_some(()).ok_or_else(bad)
}

fn check_gitee(secret: &str, tolerance: Duration, input: &VerifyInput<'_>) -> Result<(), VerifyError> {
    let token = header_text(input, "x-gitee-token").ok_or(VerifyError::BadToken)?;
    if secret_eq(token.as_bytes(), secret.as_bytes()) {
        return Ok(());
    }
    let timestamp = header_text(input, "x-gitee-timestamp").ok_or(VerifyError::BadToken)?;
    let millis: i64 = timestamp.trim().parse().map_err(|_| VerifyError::StaleTimestamp)?;
    fresh(unix_seconds(millis), input.now_unix, tolerance)?;
    let expected = hmac_digest(HmacAlgorithm::Sha256, secret.as_bytes(), format!("{}\n{secret}", timestamp.trim()).as_bytes())
        .ok_or(VerifyError::BadToken)?;
    // Gitee documents the signature URL-encoded; accept it either way.
    let decoded = percent_encoding::percent_decode_str(token).decode_utf8_lossy();
    let given = base64::engine::general_purpose::STANDARD.decode(decoded.trim()).map_err(|_| VerifyError::BadToken)?;
    secret_eq(&given, &expected).then_some(()).ok_or(VerifyError::BadToken)
}

/// Compiles a route's `verify:` block; `source` decides what `secret:` means.
pub fn compile(raw: &RawVerify, scheme: SecretScheme, at: &str, problems: &mut Problems) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Some(auth) = &raw.basic_auth {
        if problems.secret(format!("{at}.basic_auth.password"), &auth.password) {
            checks.push(Check::BasicAuth { expected: basic_auth_header(auth) });
        }
    }
    if let Some(token) = &raw.token {
        checks.extend(compile_token(token, &format!("{at}.token"), problems));
    }
    if let Some(hmac) = &raw.hmac {
        checks.extend(compile_hmac(hmac, &format!("{at}.hmac"), problems).map(|h| Check::Hmac(Box::new(h))));
    }
    let tolerance = match &raw.tolerance {
        Some(text) => parse_duration(text).unwrap_or_else(|message| {
            problems.push(format!("{at}.tolerance"), message);
            DEFAULT_TOLERANCE
        }),
        None => DEFAULT_TOLERANCE,
    };
    if let Some(standard) = &raw.standard_webhooks {
        // Keys with problems are reported and left out; none left is no check (and an error).
        let keys = compile_standard_keys(&standard.secret, &format!("{at}.standard_webhooks.secret"), false, problems);
        if !keys.is_empty() {
            checks.push(Check::StandardWebhooks { keys, tolerance });
        }
    }
    if let Some(token) = &raw.signing_token {
        let keys = compile_standard_keys(token, &format!("{at}.signing_token"), false, problems);
        if !keys.is_empty() {
            checks.push(Check::StandardWebhooks { keys, tolerance });
        }
    }
    match (&raw.secret, scheme) {
        // Standard Webhooks keys rotate: any of a list may have signed.
        (Some(secret), SecretScheme::StandardWebhooks) => {
            let keys = compile_standard_keys(secret, &format!("{at}.secret"), false, problems);
            if !keys.is_empty() {
                checks.push(Check::StandardWebhooks { keys, tolerance });
            }
        }
        (Some(OneOrMany::Many(_)), _) => {
            problems.push(format!("{at}.secret"), "a list of secrets is for `source: standard` (Standard Webhooks keys); give one")
        }
        (Some(OneOrMany::One(secret)), _) if problems.secret(format!("{at}.secret"), secret) => {
            match secret_scheme(scheme, secret, tolerance) {
                Ok(check) => checks.push(check),
                Err(message) => problems.push(format!("{at}.secret"), message),
            }
        }
        _ => {}
    }
    if let Some(list) = &raw.ip_allow {
        let mut nets = Vec::new();
        for (index, entry) in list.iter().enumerate() {
            let parsed = entry.parse::<ipnet::IpNet>().or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => problems.push(format!("{at}.ip_allow[{index}]"), format!("{entry:?} is not an IP address or CIDR range")),
            }
        }
        checks.push(Check::IpAllow(nets));
    }
    let given = raw.basic_auth.is_some()
        || raw.token.is_some()
        || raw.hmac.is_some()
        || raw.standard_webhooks.is_some()
        || raw.signing_token.is_some()
        || raw.secret.is_some()
        || raw.ip_allow.is_some()
        // The handshake's origins check no webhook, but they are a deliberate setting.
        || raw.cloudevents_origins.is_some();
    if !given {
        problems.push(
            at,
            "`verify` is empty: give basic_auth, token, hmac, secret, standard_webhooks, signing_token, ip_allow or cloudevents_origins",
        );
    }
    checks
}

fn compile_token(token: &RawToken, at: &str, problems: &mut Problems) -> Option<Check> {
    if !problems.secret(format!("{at}.value"), &token.value) {
        return None;
    }
    match (&token.header, &token.field) {
        (Some(header), None) => {
            header_name(header, format!("{at}.header"), problems).map(|header| Check::HeaderToken { header, value: token.value.clone() })
        }
        (None, Some(field)) => match JsonPath::parse(field) {
            Ok(path) => Some(Check::FieldToken { path, value: token.value.clone() }),
            Err(err) => {
                problems.push(format!("{at}.field"), format!("invalid JSONPath {field:?}: {err}"));
                None
            }
        },
        _ => {
            problems.push(at, "a token check needs exactly one of `header` or `field`");
            None
        }
    }
}

/// Replays with a timestamp further than this from now are refused (schemes with a timestamp).
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The header CodeArts and bkrepo send the `secret:` in: both let users add custom headers
/// to their webhooks, neither has a signature of its own.
pub const TOKEN_HEADER: &str = "x-hookrelay-token";

/// What `verify: { secret: … }` means; each source says which scheme it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretScheme {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` (GitHub).
    HubSignature,
    /// A header (lower-case name) that must equal the secret.
    HeaderToken(&'static str),
    /// A top-level body or form field that must equal the secret (TAPD's `secret`).
    BodyField(&'static str),
    /// Gitee's password or timestamped signature.
    Gitee,
    StandardWebhooks,
    /// The source has no scheme of its own (generic).
    Unsupported,
}

fn secret_scheme(scheme: SecretScheme, secret: &str, tolerance: Duration) -> Result<Check, String> {
    match scheme {
        SecretScheme::HubSignature => Ok(Check::Hmac(Box::new(HmacCheck {
            header: HeaderName::from_static("x-hub-signature-256"),
            secret: secret.as_bytes().to_vec(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            prefix: "sha256=".to_string(),
            message: SignedMessage::Body,
            tolerance: None,
            timestamp_header: None,
        }))),
        SecretScheme::HeaderToken(name) => Ok(Check::HeaderToken { header: HeaderName::from_static(name), value: secret.to_string() }),
        SecretScheme::BodyField(name) => match JsonPath::parse(&format!("$['{name}']")) {
            Ok(path) => Ok(Check::FieldToken { path, value: secret.to_string() }),
            Err(err) => Err(err.to_string()),
        },
        SecretScheme::Gitee => Ok(Check::Gitee { secret: secret.to_string(), tolerance }),
        SecretScheme::StandardWebhooks => StandardKey::parse(secret).map(|key| Check::StandardWebhooks { keys: vec![key], tolerance }),
        SecretScheme::Unsupported => {
            Err("`secret:` needs a source with its own scheme; for generic use verify.token, verify.hmac or verify.standard_webhooks"
                .to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile_yaml(yaml: &str, scheme: SecretScheme) -> Vec<Check> {
        let raw: RawVerify = serde_yaml::from_str(yaml).unwrap();
        let mut problems = Problems::default();
        let checks = compile(&raw, scheme, "verify", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        checks
    }

    fn run(checks: &[Check], headers: &[(&'static str, &str)], body: &[u8], peer: &str) -> Result<(), VerifyError> {
        let map: HeaderMap = headers.iter().map(|(k, v)| (HeaderName::from_static(k), v.parse().unwrap())).collect();
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let input =
            VerifyInput { headers: &map, raw_body: body, body: parsed.as_ref(), peer: peer.parse().unwrap(), now_unix: 1_700_000_000 };
        checks.iter().try_for_each(|c| c.check(&input))
    }

    #[test]
    fn basic_auth() {
        let checks = compile_yaml("basic_auth: { username: codeup, password: pw }", SecretScheme::HeaderToken("x-codeup-token"));
        assert_eq!(run(&checks, &[("authorization", "Basic Y29kZXVwOnB3")], b"", "127.0.0.1"), Ok(()));
        assert_eq!(run(&checks, &[("authorization", "Basic Y29kZXVwOnB4")], b"", "127.0.0.1"), Err(VerifyError::BadCredentials));
        assert_eq!(run(&checks, &[], b"", "127.0.0.1"), Err(VerifyError::BadCredentials));
    }

    #[test]
    fn github_secret_matches_an_independent_signature() {
        // Signature from GitHub's documentation example: secret "It's a Secret to Everybody", payload "Hello, World!".
        let checks = compile_yaml("secret: \"It's a Secret to Everybody\"", SecretScheme::HubSignature);
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(run(&checks, &[("x-hub-signature-256", good)], b"Hello, World!", "127.0.0.1"), Ok(()));
        assert!(run(&checks, &[("x-hub-signature-256", good)], b"Hello, World?", "127.0.0.1").is_err());
        assert!(run(&checks, &[], b"Hello, World!", "127.0.0.1").is_err());
    }

    #[test]
    fn generic_hmac_with_timestamp_tolerance() {
        let checks = compile_yaml(
            "hmac: { header: X-Sig, secret: k, encoding: base64, message: '{{timestamp}}.{{raw}}', tolerance: 5m, timestamp_header: X-Ts }",
            SecretScheme::Unsupported,
        );
        let signature =
            base64::engine::general_purpose::STANDARD.encode(hmac_digest(HmacAlgorithm::Sha256, b"k", b"1700000000.{}").unwrap());
        assert_eq!(run(&checks, &[("x-sig", &signature), ("x-ts", "1700000000")], b"{}", "127.0.0.1"), Ok(()));
        assert_eq!(run(&checks, &[("x-sig", &signature), ("x-ts", "1699990000")], b"{}", "127.0.0.1"), Err(VerifyError::StaleTimestamp));
    }

    #[test]
    fn tokens_and_ip_allow() {
        let checks = compile_yaml("secret: t0k", SecretScheme::HeaderToken("x-gitlab-token"));
        assert_eq!(run(&checks, &[("x-gitlab-token", "t0k")], b"", "127.0.0.1"), Ok(()));
        assert_eq!(run(&checks, &[("x-gitlab-token", "t0")], b"", "127.0.0.1"), Err(VerifyError::BadToken));
        let checks = compile_yaml("token: { field: $.secret, value: s }", SecretScheme::BodyField("secret"));
        assert_eq!(run(&checks, &[], &serde_json::to_vec(&json!({"secret": "s"})).unwrap(), "127.0.0.1"), Ok(()));
        let checks = compile_yaml("ip_allow: [10.0.0.0/8, 127.0.0.1]", SecretScheme::Unsupported);
        assert_eq!(run(&checks, &[], b"", "::ffff:127.0.0.1"), Ok(()));
        assert_eq!(run(&checks, &[], b"", "10.2.3.4"), Ok(()));
        assert_eq!(run(&checks, &[], b"", "192.0.2.1"), Err(VerifyError::AddressNotAllowed));
    }

    #[test]
    fn standard_webhooks_signed_by_the_official_package() {
        // Webhook("whsec_MfKQ…").sign("msg_2KWP…", 1700000000, body) from the `standardwebhooks` PyPI package.
        let checks = compile_yaml("standard_webhooks: { secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw }", SecretScheme::Unsupported);
        let body = br#"{"type":"invoice.paid"}"#;
        let good = [
            ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
            ("webhook-timestamp", "1700000000"),
            ("webhook-signature", "v0,xx v1,cRz0JuaxwZNcPC7jxrpdWZ2+fvUJFOVYYnvio3vhSU4="),
        ];
        assert_eq!(run(&checks, &good, body, "127.0.0.1"), Ok(()));
        assert!(run(&checks, &good, br#"{"type":"invoice.void"}"#, "127.0.0.1").is_err());
        let stale = [good[0], ("webhook-timestamp", "1699990000"), good[2]];
        assert_eq!(run(&checks, &stale, body, "127.0.0.1"), Err(VerifyError::StaleTimestamp));
    }

    #[test]
    fn gitee_password_or_signature() {
        let checks = compile_yaml("secret: gitee-secret", SecretScheme::Gitee);
        assert_eq!(run(&checks, &[("x-gitee-token", "gitee-secret")], b"{}", "127.0.0.1"), Ok(()));
        // quote_plus(base64(hmac(secret, "1700000000123\ngitee-secret"))) computed with Python.
        let signed = [("x-gitee-token", "OvzH05XVcZps6WiZjOJRmDiFVm31VA3AjbCdWjTENdQ%3D"), ("x-gitee-timestamp", "1700000000123")];
        assert_eq!(run(&checks, &signed, b"{}", "127.0.0.1"), Ok(()));
        let replayed = [signed[0], ("x-gitee-timestamp", "1699000000123")];
        assert!(run(&checks, &replayed, b"{}", "127.0.0.1").is_err());
        assert_eq!(run(&checks, &[("x-gitee-token", "guess")], b"{}", "127.0.0.1"), Err(VerifyError::BadToken));
    }

    #[test]
    fn codearts_and_bkrepo_secrets_travel_in_a_custom_header() {
        use crate::routing::source::SourceKind;
        for source in [SourceKind::Codearts, SourceKind::Bkrepo] {
            let checks = compile_yaml("secret: s", source.secret_scheme());
            assert_eq!(run(&checks, &[("x-hookrelay-token", "s")], b"{}", "127.0.0.1"), Ok(()));
            assert_eq!(run(&checks, &[], b"{}", "127.0.0.1"), Err(VerifyError::BadToken));
        }
    }

    #[test]
    fn bad_settings_are_reported() {
        let raw: RawVerify =
            serde_yaml::from_str("hmac: { header: 'a b', secret: k, algorithm: md5 }\nip_allow: [nope]\ntoken: { value: x }").unwrap();
        let mut problems = Problems::default();
        compile(&raw, SecretScheme::Unsupported, "verify", &mut problems);
        let paths: Vec<String> = problems.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(paths, ["verify.token", "verify.hmac.header", "verify.hmac.algorithm", "verify.ip_allow[0]"]);
    }
}
