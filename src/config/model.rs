//! Raw configuration types: exactly what `hookrelay.yaml` says, as serde reads it.
//! Nothing here is validated beyond its shape; `config::compile` turns these into the
//! snapshot the hot path uses. Durations and sizes stay strings so that a bad value is
//! reported with its YAML path alongside every other error.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

// Routes stay untyped here so that each one is read and compiled on its own: one broken
// route must not hide the errors of the others.
/// hookrelay's config file (`hookrelay.yaml`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hookrelay config")]
pub struct RawConfig {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub admin: Option<RawAdmin>,
    pub upstream: Option<String>,
    pub store: Option<RawStore>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub outbound: RawOutbound,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    #[schemars(with = "Vec<RawRoute>")]
    pub routes: Vec<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutbound {
    /// Routes created through the admin API may target private addresses only when true.
    #[serde(default)]
    pub allow_private: bool,
    /// Extra CA certificates (PEM) trusted for HTTPS targets, beside the public roots.
    pub ca_file: Option<String>,
}

/// An included file: it may hold only routes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInclude {
    #[serde(default)]
    #[schemars(with = "Vec<RawRoute>")]
    pub routes: Vec<serde_yaml::Value>,
}

/// Inbound HTTPS: PEM certificate chain and private key, relative to the config file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    /// CA (PEM) whose client certificates the admin listener requires (mutual TLS).
    pub client_ca: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    #[serde(default)]
    pub token: Option<String>,
    /// Without a token, the names (besides its own address and `localhost`) a browser may
    /// reach the admin listener by; others are refused (DNS rebinding).
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// SQLite database file (the default store), relative to the config's folder.
    pub path: Option<String>,
    /// A PostgreSQL database shared by several relays: `postgres://user:pass@host:5432/db`
    /// (`sslmode=disable|prefer|require|verify-ca|verify-full`, `sslrootcert=FILE`).
    pub url: Option<String>,
    pub retention: Option<String>,
    /// Keep requests that a route's path and method could take but no route matched, for
    /// this long (e.g. `24h`), so that a replay under a fixed config can pick them up.
    pub keep_unmatched: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body: Option<String>,
    pub header_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub queue_capacity: Option<usize>,
    pub max_connections: Option<usize>,
    /// Request line and headers together (HTTP/1.1), or the header list (HTTP/2).
    pub max_header_bytes: Option<String>,
    pub max_headers: Option<usize>,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: Option<u32>,
    pub shutdown_grace: Option<String>,
    /// Time from sending a proxied request to the service's response headers; `0` = none.
    pub upstream_header_timeout: Option<String>,
    /// All request bodies held in memory at once, across connections.
    pub max_buffered_bytes: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub timeout: Option<String>,
    #[serde(default)]
    pub retry: RawRetry,
    pub rate_limit: Option<RawRateLimit>,
    /// Every target's `max_queued` unless it sets its own (default `"50%"`).
    pub max_queued: Option<RawQueueBound>,
}

/// How many of a target's deliveries may wait at once: a count (`2000`) or a share of
/// `limits.queue_capacity` (`"25%"`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawQueueBound {
    Count(u64),
    Share(String),
}

/// Outbound: `per_second` / `per_minute` / `per_hour` (one of them), `burst`, a shared `key`
/// and, for sync routes, how long to wait for a permit.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub burst: Option<u32>,
    /// Also never more than the rate's count in any sliding period (e.g. any 60 s).
    #[serde(default)]
    pub window: bool,
    pub key: Option<String>,
    pub max_wait: Option<String>,
}

/// Inbound, per route: over it the sender gets 429.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIngressLimit {
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub burst: Option<u32>,
    /// `ip` (default) or `header:NAME`.
    pub by: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u32>,
    pub initial: Option<String>,
    pub max: Option<String>,
    pub factor: Option<f64>,
    pub jitter: Option<bool>,
    /// Give up once the delivery is this old, whatever the attempt count.
    pub max_age: Option<String>,
    /// Which failures are retried (default: connect, timeout, success_when, 408, 429, 5xx).
    pub retry_on: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub source: Option<String>,
    /// `generic` source: a header name or a JSONPath (`$.…`) naming the event.
    pub event_from: Option<String>,
    /// `generic` source: a header name or a JSONPath naming the delivery id.
    pub id_from: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub verify: Option<RawVerify>,
    pub ingress_limit: Option<RawIngressLimit>,
    /// Drop a repeat of the same sender delivery id within this window (sender still gets 2xx).
    pub dedupe: Option<String>,
    #[serde(default)]
    pub vars: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub respond: Respond,
    #[serde(rename = "final", default)]
    pub is_final: bool,
    pub forward: Vec<RawTarget>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Respond {
    #[default]
    Async,
    Sync,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
    pub event: Option<OneOrMany>,
    #[serde(default)]
    pub headers: IndexMap<String, serde_json::Value>,
    #[serde(default)]
    pub query: IndexMap<String, serde_json::Value>,
    #[serde(default)]
    pub body: Vec<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub any: Vec<RawMatch>,
    pub not: Option<Box<RawMatch>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub basic_auth: Option<RawBasicAuth>,
    pub token: Option<RawToken>,
    pub hmac: Option<RawHmac>,
    /// The source's own scheme (`github`: HMAC-SHA256, `gitlab`: token header, …).
    pub secret: Option<String>,
    pub standard_webhooks: Option<RawStandardKeys>,
    /// GitLab's webhook signing token (`whsec_…`, or a list while it rotates): checks
    /// `webhook-signature` as Standard Webhooks do, beside or instead of `X-Gitlab-Token`.
    pub signing_token: Option<OneOrMany>,
    pub ip_allow: Option<Vec<String>>,
    /// How far a signed timestamp may be from now (schemes with a timestamp); default 5m.
    pub tolerance: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub username: String,
    pub password: String,
}

/// Outbound signing: exactly one scheme.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSign {
    pub standard_webhooks: Option<RawStandardKeys>,
    pub github: Option<RawSecret>,
    pub hmac: Option<RawHmac>,
    pub dingtalk: Option<RawSecret>,
    pub feishu: Option<RawSecret>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub secret: String,
}

/// Standard Webhooks keys: one, or a list while keys rotate (signing sends a signature for
/// each, newest first; verifying accepts any). `whsec_…` (v1, a shared secret), `whsk_…`
/// (v1a, an ed25519 signing key, to sign) or `whpk_…` (v1a, its public key, to verify).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStandardKeys {
    pub secret: OneOrMany,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub header: Option<String>,
    pub field: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHmac {
    pub header: String,
    pub secret: String,
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub prefix: Option<String>,
    pub message: Option<String>,
    pub tolerance: Option<String>,
    pub timestamp_header: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<u32>,
    pub cooldown: Option<String>,
    pub max_cooldown: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: Option<String>,
    /// A receiver preset (`dingtalk`, `feishu`, `wecom`, `slack`, `discord`, `codearts`).
    pub preset: Option<String>,
    /// The receiver's signing secret, for presets that sign (DingTalk, Feishu).
    pub secret: Option<String>,
    pub url: String,
    pub method: Option<String>,
    #[serde(default)]
    pub query: IndexMap<String, String>,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    pub basic_auth: Option<RawBasicAuth>,
    pub bearer: Option<String>,
    pub content_type: Option<String>,
    pub body: Option<serde_json::Value>,
    pub success: Option<Vec<u16>>,
    pub timeout: Option<String>,
    pub retry: Option<RawRetry>,
    pub rate_limit: Option<RawRateLimit>,
    /// Circuit breaker: after `failures` consecutive retryable failures (default 5; 0 turns
    /// it off) deliveries wait `cooldown` (default 30s, doubling each time, up to
    /// `max_cooldown`, default 1h), then one probe goes.
    pub breaker: Option<RawBreaker>,
    /// How many of this target's deliveries may wait at once (a count, or a share of
    /// `limits.queue_capacity` such as `"25%"`; default `defaults.max_queued`, else `"50%"`).
    /// Beyond it the routes sending to it answer 503, and other targets keep their room.
    pub max_queued: Option<RawQueueBound>,
    pub sign: Option<RawSign>,
    pub when: Option<String>,
    /// Conditions on the answer's JSON body that must also hold for success.
    #[serde(default)]
    pub success_when: Vec<serde_json::Map<String, serde_json::Value>>,
    /// A template: deliveries with the same rendered key go out one at a time, in order.
    pub ordered_by: Option<String>,
    /// Unset: a URL path segment or query value written with a placeholder may not render
    /// empty (a missing value, null, `""`), and a missing value in the URL is an error.
    /// `true`: every template of the target fails on a missing value too. `false`: empty URL
    /// values are sent as they render.
    pub strict: Option<bool>,
}
