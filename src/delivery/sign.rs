//! Outbound signatures (DESIGN §5), computed at send time over the exact bytes sent:
//! Standard Webhooks, GitHub's `X-Hub-Signature-256`, a generic HMAC header, DingTalk's
//! `timestamp`/`sign` query parameters and Feishu's `timestamp`/`sign` body fields.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::Value;

use crate::config::model::{RawHmac, RawSign};
use crate::config::Problems;
use crate::delivery::request::OutgoingRequest;
use crate::signature::{compile_standard_keys, hmac_digest, HmacAlgorithm, SignatureEncoding, StandardKey};

#[derive(Debug, Clone)]
pub enum Signer {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` over `id.timestamp.body`: one
    /// signature per key (`v1,<base64>` or `v1a,<base64>`), space-separated, newest key first.
    StandardWebhooks {
        keys: Vec<StandardKey>,
    },
    /// `X-Hub-Signature-256: sha256=<hex>` over the body.
    Github {
        secret: Vec<u8>,
    },
    Hmac {
        header: HeaderName,
        secret: Vec<u8>,
        algorithm: HmacAlgorithm,
        encoding: SignatureEncoding,
        prefix: String,
        message: String,
    },
    /// Query `timestamp` (ms) and `sign` = base64(HMAC-SHA256(secret, "timestamp\nsecret")).
    Dingtalk {
        secret: String,
    },
    /// Body fields `timestamp` (s) and `sign` = base64(HMAC-SHA256(key = "timestamp\nsecret", "")).
    Feishu {
        secret: String,
    },
}

impl Signer {
    /// The body as recorded: Feishu's signature travels in it and is masked.
    pub fn recorded_body(&self, sent: &bytes::Bytes) -> bytes::Bytes {
        let Signer::Feishu { .. } = self else { return sent.clone() };
        match serde_json::from_slice::<serde_json::Value>(sent) {
            Ok(serde_json::Value::Object(mut fields)) if fields.contains_key("sign") => {
                fields.insert("sign".to_string(), serde_json::Value::String(crate::redact::REDACTED.to_string()));
                serde_json::to_vec(&fields).map_or_else(|_| sent.clone(), bytes::Bytes::from)
            }
            _ => sent.clone(),
        }
    }

    /// The header this signer writes, when it is not on the fixed list of signature headers.
    pub fn custom_header(&self) -> Option<&HeaderName> {
        match self {
            Signer::Hmac { header, .. } => Some(header),
            Signer::StandardWebhooks { .. } | Signer::Github { .. } | Signer::Dingtalk { .. } | Signer::Feishu { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignError {
    #[error("signing failed: {0}")]
    Failed(String),
}

fn digest(algorithm: HmacAlgorithm, key: &[u8], message: &[u8]) -> Result<Vec<u8>, SignError> {
    hmac_digest(algorithm, key, message).ok_or_else(|| SignError::Failed("the HMAC key was refused".to_string()))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn header(value: String) -> Result<HeaderValue, SignError> {
    HeaderValue::from_str(&value).map_err(|_| SignError::Failed("signature is not a valid header value".to_string()))
}

impl Signer {
    /// Signs `request` in place. `message_id` identifies the delivery (the idempotency key),
    /// `now_ms` is the send time.
    pub fn apply(&self, request: &mut OutgoingRequest, message_id: &str, now_ms: i64) -> Result<(), SignError> {
        let seconds = now_ms.div_euclid(1000);
        match self {
            Signer::StandardWebhooks { keys } => {
                let mut content = format!("{message_id}.{seconds}.").into_bytes();
                content.extend_from_slice(&request.body);
                let signatures: Vec<String> = keys.iter().filter_map(|key| key.sign(&content)).collect();
                if signatures.is_empty() {
                    return Err(SignError::Failed("no Standard Webhooks key could sign".to_string()));
                }
                request.headers.insert(HeaderName::from_static("webhook-id"), header(message_id.to_string())?);
                request.headers.insert(HeaderName::from_static("webhook-timestamp"), header(seconds.to_string())?);
                request.headers.insert(HeaderName::from_static("webhook-signature"), header(signatures.join(" "))?);
            }
            Signer::Github { secret } => {
                let signature = hex::encode(digest(HmacAlgorithm::Sha256, secret, &request.body)?);
                request.headers.insert(HeaderName::from_static("x-hub-signature-256"), header(format!("sha256={signature}"))?);
            }
            Signer::Hmac { header: name, secret, algorithm, encoding, prefix, message } => {
                let text = message.replace("{{timestamp}}", &seconds.to_string()).replace("{{id}}", message_id);
                let mut content = Vec::with_capacity(text.len() + request.body.len());
                let mut parts = text.split("{{raw}}");
                content.extend_from_slice(parts.next().unwrap_or_default().as_bytes());
                for part in parts {
                    content.extend_from_slice(&request.body);
                    content.extend_from_slice(part.as_bytes());
                }
                let raw = digest(*algorithm, secret, &content)?;
                let encoded = match encoding {
                    SignatureEncoding::Hex => hex::encode(raw),
                    SignatureEncoding::Base64 => b64(&raw),
                };
                request.headers.insert(name.clone(), header(format!("{prefix}{encoded}"))?);
            }
            Signer::Dingtalk { secret } => {
                let to_sign = format!("{now_ms}\n{secret}");
                let sign = b64(&digest(HmacAlgorithm::Sha256, secret.as_bytes(), to_sign.as_bytes())?);
                let mut url = url::Url::parse(&request.url).map_err(|err| SignError::Failed(err.to_string()))?;
                url.query_pairs_mut().append_pair("timestamp", &now_ms.to_string()).append_pair("sign", &sign);
                request.url = url.to_string();
            }
            Signer::Feishu { secret } => {
                let to_sign = format!("{seconds}\n{secret}");
                let sign = b64(&digest(HmacAlgorithm::Sha256, to_sign.as_bytes(), b"")?);
                let mut body: Value = serde_json::from_slice(&request.body)
                    .map_err(|_| SignError::Failed("feishu signing needs a JSON object body".to_string()))?;
                let Some(fields) = body.as_object_mut() else {
                    return Err(SignError::Failed("feishu signing needs a JSON object body".to_string()));
                };
                fields.insert("timestamp".into(), Value::String(seconds.to_string()));
                fields.insert("sign".into(), Value::String(sign));
                request.body = Bytes::from(body.to_string());
            }
        }
        Ok(())
    }
}

pub fn compile(raw: &RawSign, at: &str, problems: &mut Problems) -> Option<Signer> {
    let given = [raw.standard_webhooks.is_some(), raw.github.is_some(), raw.hmac.is_some(), raw.dingtalk.is_some(), raw.feishu.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        problems.push(at, "give exactly one of standard_webhooks, github, hmac, dingtalk, feishu");
        return None;
    }
    if let Some(keys) = &raw.standard_webhooks {
        let keys = compile_standard_keys(&keys.secret, &format!("{at}.standard_webhooks.secret"), true, problems);
        return (!keys.is_empty()).then_some(Signer::StandardWebhooks { keys });
    }
    let secret = [
        raw.github.as_ref().map(|s| ("github", &s.secret)),
        raw.dingtalk.as_ref().map(|s| ("dingtalk", &s.secret)),
        raw.feishu.as_ref().map(|s| ("feishu", &s.secret)),
    ];
    if let Some((scheme, secret)) = secret.into_iter().flatten().next() {
        if !problems.secret(format!("{at}.{scheme}.secret"), secret) {
            return None;
        }
    }
    if let Some(secret) = &raw.github {
        return Some(Signer::Github { secret: secret.secret.as_bytes().to_vec() });
    }
    if let Some(secret) = &raw.dingtalk {
        return Some(Signer::Dingtalk { secret: secret.secret.clone() });
    }
    if let Some(secret) = &raw.feishu {
        return Some(Signer::Feishu { secret: secret.secret.clone() });
    }
    raw.hmac.as_ref().and_then(|hmac| compile_hmac(hmac, &format!("{at}.hmac"), problems))
}

fn compile_hmac(raw: &RawHmac, at: &str, problems: &mut Problems) -> Option<Signer> {
    let check = crate::signature::compile_hmac(raw, at, problems)?;
    Some(Signer::Hmac {
        header: check.header,
        secret: check.secret,
        algorithm: check.algorithm,
        encoding: check.encoding,
        prefix: check.prefix,
        message: raw.message.clone().unwrap_or_else(|| "{{raw}}".to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};

    fn request(url: &str, body: &str) -> OutgoingRequest {
        OutgoingRequest {
            route: "r".into(),
            target: "t".into(),
            ordered_key: None,
            method: Method::POST,
            url: url.into(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    // Vectors computed with Python from each platform's documented algorithm:
    //   dingtalk: base64(hmac.new(secret, f"{ts}\n{secret}", sha256).digest())
    //   feishu:   base64(hmac.new(f"{ts}\n{secret}", b"", sha256).digest())
    //   standard: base64(hmac.new(base64decode(key), f"{id}.{ts}.{body}", sha256).digest())
    #[test]
    fn dingtalk_signs_the_query() {
        let mut req = request("https://oapi.dingtalk.com/robot/send?access_token=abc", "{}");
        Signer::Dingtalk { secret: "SEC000".into() }.apply(&mut req, "m", 1_700_000_000_000).unwrap();
        assert_eq!(
            req.url,
            format!("https://oapi.dingtalk.com/robot/send?access_token=abc&timestamp=1700000000000&sign={}", DINGTALK_SIGN)
        );
    }

    #[test]
    fn feishu_signs_the_body() {
        let mut req = request("https://open.feishu.cn/open-apis/bot/v2/hook/x", r#"{"msg_type":"text"}"#);
        Signer::Feishu { secret: "feishu-secret".into() }.apply(&mut req, "m", 1_700_000_000_000).unwrap();
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], FEISHU_SIGN);
        assert_eq!(body["msg_type"], "text");
    }

    #[test]
    fn standard_webhooks_and_github() {
        let mut req = request("https://example.com/hook", r#"{"a":1}"#);
        let key = StandardKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        Signer::StandardWebhooks { keys: vec![key] }.apply(&mut req, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330_000).unwrap();
        assert_eq!(req.headers["webhook-id"], "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(req.headers["webhook-timestamp"], "1614265330");
        assert_eq!(req.headers["webhook-signature"], format!("v1,{STANDARD_SIGN}").as_str());
        let mut req = request("https://example.com/hook", "Hello, World!");
        Signer::Github { secret: b"It's a Secret to Everybody".to_vec() }.apply(&mut req, "m", 0).unwrap();
        assert_eq!(req.headers["x-hub-signature-256"], "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
    }

    const DINGTALK_SIGN: &str = "ltBBey5eZrWKh1cPzFIdz3v3xpkc4Tjx4lLsPSHqdtA%3D";
    const FEISHU_SIGN: &str = "OrBzY1Y01Gq+HgJsl+7OfWcMVwc7YocohQm5iiZwjhU=";
    const STANDARD_SIGN: &str = "eWbO+OPhT2JUpF3dbJUxlLHb0oUfKtdFE1jL2Ow+m/U=";
}
