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
    /// Where webhooks arrive and the sidecar proxy listens (default `0.0.0.0:8080`).
    pub listen: Option<String>,
    /// HTTPS on `listen`.
    pub tls: Option<RawTls>,
    /// The admin listener: health, metrics, API and console. None without it.
    pub admin: Option<RawAdmin>,
    /// The service beside the relay: requests no route takes are proxied to it unchanged.
    pub upstream: Option<String>,
    /// Where events and deliveries are kept (default: SQLite at `data/hookrelay.db` beside the config).
    pub store: Option<RawStore>,
    /// Bounds on requests, connections and the queue.
    #[serde(default)]
    pub limits: RawLimits,
    /// Defaults for every target.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Outbound HTTP settings.
    #[serde(default)]
    pub outbound: RawOutbound,
    /// Telemetry export (off by default).
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Globs of more files holding routes, relative to this file.
    #[serde(default)]
    pub include: Vec<String>,
    /// The routes, tried in order.
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

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Spans exported over OTLP: the request, matching, rendering, the store commit and each
    /// delivery attempt. Read at start (a change needs a restart).
    pub otlp: Option<RawOtlp>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The collector: `http://host:4318` (`/v1/traces` is added when the URL has no path)
    /// for `http/protobuf`, `http://host:4317` for `grpc`.
    pub endpoint: String,
    /// `http/protobuf` (default) or `grpc`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers sent with every export (an API key, say); values may use `${VAR}`.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// The `service.name` resource attribute (default `hookrelay`).
    pub service_name: Option<String>,
}

/// How spans are sent to the collector.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

/// An included file: it may hold only routes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInclude {
    /// The routes this file adds.
    #[serde(default)]
    #[schemars(with = "Vec<RawRoute>")]
    pub routes: Vec<serde_yaml::Value>,
}

/// Inbound HTTPS: PEM certificate chain and private key, relative to the config file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, relative to the config file.
    pub cert: String,
    /// PEM private key of the certificate.
    pub key: String,
    /// CA (PEM) whose client certificates the admin listener requires (mutual TLS).
    pub client_ca: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin listener (`127.0.0.1:9090`).
    pub listen: String,
    /// Bearer token for `/metrics` and `/api/*`; without one the listener must be on loopback.
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
    /// Events older than this are deleted with their deliveries (default `7d`).
    pub retention: Option<String>,
    /// Keep requests that a route's path and method could take but no route matched, for
    /// this long (e.g. `24h`), so that a replay under a fixed config can pick them up.
    pub keep_unmatched: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request body (default `1MiB`); over it `413`.
    pub max_body: Option<String>,
    /// From accept to complete headers, and between requests (default `10s`).
    pub header_timeout: Option<String>,
    /// The whole request body must arrive within it (default `30s`); else `408`.
    pub request_timeout: Option<String>,
    /// Deliveries accepted and not finished (default 10000); over it `503`.
    pub queue_capacity: Option<usize>,
    /// Connections open at once (default 10000).
    pub max_connections: Option<usize>,
    /// Request line and headers together (HTTP/1.1), or the header list (HTTP/2).
    pub max_header_bytes: Option<String>,
    /// Most request headers (default 100); over it `431`.
    pub max_headers: Option<usize>,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: Option<u32>,
    /// How long in-flight work gets on stop (default `10s`).
    pub shutdown_grace: Option<String>,
    /// Time from sending a proxied request to the service's response headers; `0` = none.
    pub upstream_header_timeout: Option<String>,
    /// All request bodies held in memory at once, across connections.
    pub max_buffered_bytes: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Each attempt's time limit (default `10s`).
    pub timeout: Option<String>,
    /// Retry policy for every target without its own.
    #[serde(default)]
    pub retry: RawRetry,
    /// Outbound rate limit for every target without its own.
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
    /// Permits per second.
    pub per_second: Option<u32>,
    /// Permits per minute.
    pub per_minute: Option<u32>,
    /// Permits per hour.
    pub per_hour: Option<u32>,
    /// How many may go at once (default: the rate's count).
    pub burst: Option<u32>,
    /// Also never more than the rate's count in any sliding period (e.g. any 60 s).
    #[serde(default)]
    pub window: bool,
    /// Targets with the same key share one bucket.
    pub key: Option<String>,
    /// How long a sync route waits for a permit before answering 429 (default `2s`).
    pub max_wait: Option<String>,
}

/// Inbound, per route: over it the sender gets 429.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIngressLimit {
    /// Requests per second.
    pub per_second: Option<u32>,
    /// Requests per minute.
    pub per_minute: Option<u32>,
    /// Requests per hour.
    pub per_hour: Option<u32>,
    /// How many may come at once.
    pub burst: Option<u32>,
    /// `ip` (default) or `header:NAME`.
    pub by: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts in all (default 10).
    pub max_attempts: Option<u32>,
    /// The first wait (default `1s`).
    pub initial: Option<String>,
    /// The longest wait (default `10m`).
    pub max: Option<String>,
    /// Each wait is the previous one times this (default 2).
    pub factor: Option<f64>,
    /// Spread waits randomly (default true).
    pub jitter: Option<bool>,
    /// Give up once the delivery is this old, whatever the attempt count.
    pub max_age: Option<String>,
    /// Which failures are retried (default: connect, timeout, success_when, 408, 429, 5xx).
    pub retry_on: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique route name, `[a-z0-9_-]+`.
    pub name: String,
    /// The sending platform: how the event and delivery id are read and what `verify.secret` checks.
    #[schemars(extend("enum" = ["github", "gitlab", "codeup", "gitee", "tapd", "codearts", "bkrepo", "standard", "cloudevents", "generic"]))]
    pub source: Option<String>,
    /// `generic` source: a header name or a JSONPath (`$.…`) naming the event.
    pub event_from: Option<String>,
    /// `generic` source: a header name or a JSONPath naming the delivery id.
    pub id_from: Option<String>,
    /// Conditions a request must meet for the route to fire.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// Checks that the request comes from the sender.
    pub verify: Option<RawVerify>,
    /// Inbound rate limit of the route; over it `429`.
    pub ingress_limit: Option<RawIngressLimit>,
    /// Drop a repeat of the same sender delivery id within this window (sender still gets 2xx).
    pub dedupe: Option<String>,
    /// Constants for templates (`{{vars.x}}`).
    #[serde(default)]
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// `async`: 202 once stored, delivered with retries; `sync`: the first target's answer is relayed.
    #[serde(default)]
    pub respond: Respond,
    /// When this route fires, the routes after it are not tried.
    #[serde(rename = "final", default)]
    pub is_final: bool,
    /// Where the event goes.
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
    /// `/hooks/x`, `/hooks/{name}` (captured into `params`), or `/hooks/{rest*}`.
    pub path: Option<String>,
    /// Allowed methods (default any).
    pub methods: Option<Vec<String>>,
    /// Glob or list of globs on the source's event name.
    pub event: Option<OneOrMany>,
    /// Header name → condition (a value, or operators such as `{regex: …}`).
    #[serde(default)]
    #[schemars(with = "IndexMap<String, ConditionShape>")]
    pub headers: IndexMap<String, serde_json::Value>,
    /// Query parameter → condition.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, ConditionShape>")]
    pub query: IndexMap<String, serde_json::Value>,
    /// Conditions on the body: each `{path: $.x, <operator>: …}`.
    #[serde(default)]
    #[schemars(with = "Vec<BodyConditionShape>")]
    pub body: Vec<serde_json::Map<String, serde_json::Value>>,
    /// At least one of these must hold.
    #[serde(default)]
    pub any: Vec<RawMatch>,
    /// This must not hold.
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
    /// Expected Basic Auth credentials.
    pub basic_auth: Option<RawBasicAuth>,
    /// A token compared with a header or a body field.
    pub token: Option<RawToken>,
    /// An HMAC signature over the body (or a pattern) in a header.
    pub hmac: Option<RawHmac>,
    /// The source's own scheme (`github`: HMAC-SHA256, `gitlab`: token header, …); with
    /// `source: standard`, one key or a list while keys rotate.
    pub secret: Option<OneOrMany>,
    /// Standard Webhooks keys (v1 `whsec_…`, v1a `whpk_…`).
    pub standard_webhooks: Option<RawStandardKeys>,
    /// GitLab's webhook signing token (`whsec_…`, or a list while it rotates): checks
    /// `webhook-signature` as Standard Webhooks do, beside or instead of `X-Gitlab-Token`.
    pub signing_token: Option<OneOrMany>,
    /// Addresses and CIDR ranges the request must come from.
    pub ip_allow: Option<Vec<String>>,
    /// How far a signed timestamp may be from now (schemes with a timestamp); default 5m.
    pub tolerance: Option<String>,
    /// Senders allowed by the CloudEvents webhook validation handshake: an `OPTIONS`
    /// request with `WebHook-Request-Origin` naming one of these (or any, with `*`) is
    /// answered with `WebHook-Allowed-Origin`.
    pub cloudevents_origins: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// Outbound signing: exactly one scheme.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSign {
    /// Standard Webhooks signing (`whsec_…` v1, `whsk_…` v1a), one key or a list while rotating.
    pub standard_webhooks: Option<RawStandardKeys>,
    /// `X-Hub-Signature-256` as GitHub sends it.
    pub github: Option<RawSecret>,
    /// An HMAC signature in a header of your choice.
    pub hmac: Option<RawHmac>,
    /// DingTalk robot signing (`timestamp` and `sign` query parameters).
    pub dingtalk: Option<RawSecret>,
    /// Feishu bot signing (`timestamp` and `sign` body fields).
    pub feishu: Option<RawSecret>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// The shared secret.
    pub secret: String,
}

/// Standard Webhooks keys: one, or a list while keys rotate (signing sends a signature for
/// each, newest first; verifying accepts any). `whsec_…` (v1, a shared secret), `whsk_…`
/// (v1a, an ed25519 signing key, to sign) or `whpk_…` (v1a, its public key, to verify).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStandardKeys {
    /// One key, or a list while keys rotate.
    pub secret: OneOrMany,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// The header holding the token.
    pub header: Option<String>,
    /// The body field (JSONPath) holding the token.
    pub field: Option<String>,
    /// The expected token.
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHmac {
    /// The header holding the signature.
    pub header: String,
    /// The shared secret.
    pub secret: String,
    /// `sha256` (default), `sha1` or `sha512`.
    #[schemars(extend("enum" = ["sha256", "sha1", "sha512"]))]
    pub algorithm: Option<String>,
    /// `hex` (default) or `base64`.
    #[schemars(extend("enum" = ["hex", "base64"]))]
    pub encoding: Option<String>,
    /// Text before the signature in the header (`sha256=`).
    pub prefix: Option<String>,
    /// What is signed: the raw body by default, or a pattern with `{{timestamp}}` and `{{raw}}`.
    pub message: Option<String>,
    /// How far the timestamp may be from now.
    pub tolerance: Option<String>,
    /// The header holding the signed timestamp.
    pub timestamp_header: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive retryable failures that open the breaker (default 5; 0 turns it off).
    pub failures: Option<u32>,
    /// Wait before one probe goes (default `30s`, doubling).
    pub cooldown: Option<String>,
    /// The longest cooldown (default `1h`).
    pub max_cooldown: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Target name, `[a-z0-9_-]+`, unique in the route (default its index).
    pub name: Option<String>,
    /// A receiver preset (`dingtalk`, `feishu`, `wecom`, `slack`, `discord`, `codearts`).
    #[schemars(extend("enum" = ["dingtalk", "feishu", "wecom", "slack", "discord", "codearts"]))]
    pub preset: Option<String>,
    /// The receiver's signing secret, for presets that sign (DingTalk, Feishu).
    pub secret: Option<String>,
    /// Template of the URL, or `upstream:/path`; `user:pass@` becomes Basic Auth.
    pub url: String,
    /// HTTP method (default POST).
    pub method: Option<String>,
    /// Query parameters added to the URL, each a template.
    #[serde(default)]
    pub query: IndexMap<String, String>,
    /// Headers to send, each a template.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// Basic Auth credentials.
    pub basic_auth: Option<RawBasicAuth>,
    /// `Authorization: Bearer` token.
    pub bearer: Option<String>,
    /// `json` (default with a body), `form`, `text`, or `raw` (the original body).
    #[schemars(extend("enum" = ["json", "form", "text", "raw"]))]
    pub content_type: Option<String>,
    /// A string template, or a mapping/list rendered leaf by leaf; without it the original body is sent.
    pub body: Option<serde_json::Value>,
    /// Statuses that count as delivered (default any 2xx).
    pub success: Option<Vec<u16>>,
    /// Each attempt's time limit (default `defaults.timeout`).
    pub timeout: Option<String>,
    /// Retry policy, over `defaults.retry`.
    pub retry: Option<RawRetry>,
    /// Outbound rate limit (default `defaults.rate_limit`).
    pub rate_limit: Option<RawRateLimit>,
    /// Circuit breaker: after `failures` consecutive retryable failures (default 5; 0 turns
    /// it off) deliveries wait `cooldown` (default 30s, doubling each time, up to
    /// `max_cooldown`, default 1h), then one probe goes.
    pub breaker: Option<RawBreaker>,
    /// How many of this target's deliveries may wait at once (a count, or a share of
    /// `limits.queue_capacity` such as `"25%"`; default `defaults.max_queued`, else `"50%"`).
    /// Beyond it the routes sending to it answer 503, and other targets keep their room.
    pub max_queued: Option<RawQueueBound>,
    /// How to sign each request (exactly one scheme).
    pub sign: Option<RawSign>,
    /// A template: the target is skipped unless it renders `true`.
    pub when: Option<String>,
    /// Conditions on the answer's JSON body that must also hold for success.
    #[serde(default)]
    #[schemars(with = "Vec<BodyConditionShape>")]
    pub success_when: Vec<serde_json::Map<String, serde_json::Value>>,
    /// A template: deliveries with the same rendered key go out one at a time, in order.
    pub ordered_by: Option<String>,
    /// Unset: a URL path segment or query value written with a placeholder may not render
    /// empty (a missing value, null, `""`), and a missing value in the URL is an error.
    /// `true`: every template of the target fails on a missing value too. `false`: empty URL
    /// values are sent as they render.
    pub strict: Option<bool>,
    /// Send the request as a CloudEvent: the rendered body is its data.
    pub cloudevents: Option<RawCloudEvents>,
}

/// A target's CloudEvents envelope (HTTP binding 1.0). `id` is the delivery's
/// Idempotency-Key, `time` the event's receipt time, `datacontenttype` the body's type.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCloudEvents {
    /// `binary` (default: `ce-*` headers, the body as it is) or `structured` (one
    /// `application/cloudevents+json` envelope).
    #[schemars(extend("enum" = ["binary", "structured"]))]
    pub mode: Option<String>,
    /// The event type, a template (`com.example.push`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event source, a template (a URI reference such as `/hookrelay/{{route}}`).
    pub source: String,
    /// The subject, a template; left out when it renders empty.
    pub subject: Option<String>,
}

// Shapes for `hookrelay schema` only: conditions are read as plain JSON and compiled by
// `condition::compile_match`, which reports each problem with its YAML path.

/// A condition: a plain value (equals), or operators that must all hold.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ConditionShape {
    Equals(PlainValue),
    Operators(Box<OperatorsShape>),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum PlainValue {
    Text(String),
    Number(f64),
    Flag(bool),
}

/// Match operators; every one given must hold.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct OperatorsShape {
    /// Equal to this value.
    equals: Option<serde_json::Value>,
    /// One of these values.
    #[serde(rename = "in")]
    one_of: Option<Vec<serde_json::Value>>,
    /// Matches this regular expression (unanchored).
    regex: Option<String>,
    /// Matches this glob (`*`, `?`).
    glob: Option<String>,
    /// Present (`true`) or absent (`false`).
    exists: Option<bool>,
    /// A string holding this substring, or a list holding this element.
    contains: Option<serde_json::Value>,
    /// A number greater than this.
    gt: Option<f64>,
    /// A number greater than or equal to this.
    gte: Option<f64>,
    /// A number less than this.
    lt: Option<f64>,
    /// A number less than or equal to this.
    lte: Option<f64>,
}

/// A condition on the body: a JSONPath and operators.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct BodyConditionShape {
    /// A JSONPath into the body, such as `$.ref`.
    path: String,
    #[serde(flatten)]
    operators: OperatorsShape,
}
