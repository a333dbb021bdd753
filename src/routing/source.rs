//! Source presets (DESIGN §3): where each platform puts the event name and the delivery id.
//! Event names keep the platform's own spelling.

use http::{HeaderMap, HeaderName};
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::values::scalar_text;
use crate::verify::{SecretScheme, TOKEN_HEADER};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Generic,
    Github,
    Gitlab,
    Codeup,
    Gitee,
    Tapd,
    Codearts,
    Bkrepo,
    Standard,
    Cloudevents,
}

impl SourceKind {
    pub const NAMES: &'static str = "github, gitlab, codeup, gitee, tapd, codearts, bkrepo, standard, cloudevents, generic";

    const ALL: [SourceKind; 10] = [
        SourceKind::Generic,
        SourceKind::Github,
        SourceKind::Gitlab,
        SourceKind::Codeup,
        SourceKind::Gitee,
        SourceKind::Tapd,
        SourceKind::Codearts,
        SourceKind::Bkrepo,
        SourceKind::Standard,
        SourceKind::Cloudevents,
    ];

    pub fn parse(name: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The name a config gives it.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Generic => "generic",
            SourceKind::Github => "github",
            SourceKind::Gitlab => "gitlab",
            SourceKind::Codeup => "codeup",
            SourceKind::Gitee => "gitee",
            SourceKind::Tapd => "tapd",
            SourceKind::Codearts => "codearts",
            SourceKind::Bkrepo => "bkrepo",
            SourceKind::Standard => "standard",
            SourceKind::Cloudevents => "cloudevents",
        }
    }

    /// What `verify: { secret: … }` checks for this platform.
    pub fn secret_scheme(self) -> SecretScheme {
        match self {
            SourceKind::Github => SecretScheme::HubSignature,
            SourceKind::Gitlab => SecretScheme::HeaderToken("x-gitlab-token"),
            SourceKind::Codeup => SecretScheme::HeaderToken("x-codeup-token"),
            SourceKind::Tapd => SecretScheme::BodyField("secret"),
            SourceKind::Gitee => SecretScheme::Gitee,
            // Neither signs its webhooks; both let users add custom headers.
            SourceKind::Codearts | SourceKind::Bkrepo => SecretScheme::HeaderToken(TOKEN_HEADER),
            SourceKind::Standard => SecretScheme::StandardWebhooks,
            // CloudEvents defines no signature; senders use tokens, HMAC or Standard Webhooks.
            SourceKind::Generic | SourceKind::Cloudevents => SecretScheme::Unsupported,
        }
    }
}

/// Where one value is read from: a header, or a JSONPath into the parsed body.
#[derive(Debug, Clone)]
pub enum Extractor {
    Header(HeaderName),
    Body(JsonPath),
}

impl Extractor {
    /// `$…` is a JSONPath, anything else a header name.
    pub fn parse(spec: &str) -> Result<Extractor, String> {
        if spec.starts_with('$') {
            JsonPath::parse(spec).map(Extractor::Body).map_err(|err| format!("invalid JSONPath {spec:?}: {err}"))
        } else {
            HeaderName::from_bytes(spec.as_bytes())
                .map(Extractor::Header)
                .map_err(|_| format!("{spec:?} is neither a header name nor a JSONPath ($.…)"))
        }
    }

    fn header(name: &'static str) -> Extractor {
        Extractor::Header(HeaderName::from_static(name))
    }

    /// Preset paths are literals checked by the tests below; one that failed to parse
    /// would only disable that extraction (filtered out by the caller), never panic.
    fn body(path: &str) -> Option<Extractor> {
        JsonPath::parse(path).ok().map(Extractor::Body)
    }

    pub fn read(&self, headers: &HeaderMap, body: Option<&Value>) -> Option<String> {
        match self {
            Extractor::Header(name) => headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string),
            Extractor::Body(path) => body.and_then(|b| path.query(b).first()).and_then(scalar_text).map(|t| t.into_owned()),
        }
    }
}

/// A route's compiled source: an ordered list of places to look for each value.
#[derive(Debug, Clone)]
pub struct Source {
    pub kind: SourceKind,
    event: Vec<Extractor>,
    delivery_id: Vec<Extractor>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventInfo {
    pub event: Option<String>,
    pub delivery_id: Option<String>,
}

impl Source {
    pub fn preset(kind: SourceKind) -> Source {
        use Extractor as E;
        let (event, delivery_id): (Vec<Option<Extractor>>, Vec<Option<Extractor>>) = match kind {
            SourceKind::Generic => (vec![], vec![]),
            SourceKind::Github => (vec![Some(E::header("x-github-event"))], vec![Some(E::header("x-github-delivery"))]),
            SourceKind::Gitlab => {
                (vec![E::body("$.object_kind"), Some(E::header("x-gitlab-event"))], vec![Some(E::header("x-gitlab-event-uuid"))])
            }
            SourceKind::Codeup => (vec![E::body("$.object_kind"), Some(E::header("codeup-event"))], vec![]),
            SourceKind::Gitee => (vec![Some(E::header("x-gitee-event"))], vec![]),
            SourceKind::Tapd => (vec![E::body("$.event")], vec![E::body("$.id")]),
            SourceKind::Codearts => (vec![E::body("$.eventCode")], vec![E::body("$.event.id")]),
            SourceKind::Bkrepo => (vec![E::body("$.type"), Some(E::header("x-bkrepo-event"))], vec![]),
            SourceKind::Standard => (vec![E::body("$.type")], vec![Some(E::header("webhook-id"))]),
            // Read by `cloudevents::attribute`: which one applies depends on the mode.
            SourceKind::Cloudevents => (vec![], vec![]),
        };
        let (event, delivery_id) = (event.into_iter().flatten().collect(), delivery_id.into_iter().flatten().collect());
        Source { kind, event, delivery_id }
    }

    /// A `generic` source with the user's `event_from` / `id_from`.
    pub fn generic(event_from: Option<Extractor>, id_from: Option<Extractor>) -> Source {
        Source { kind: SourceKind::Generic, event: event_from.into_iter().collect(), delivery_id: id_from.into_iter().collect() }
    }

    pub fn extract(&self, headers: &HeaderMap, body: Option<&Value>) -> EventInfo {
        if self.kind == SourceKind::Cloudevents {
            return EventInfo {
                event: super::cloudevents::attribute(headers, body, "type"),
                delivery_id: super::cloudevents::delivery_id(headers, body),
            };
        }
        let first = |list: &[Extractor]| list.iter().find_map(|e| e.read(headers, body));
        EventInfo { event: first(&self.event), delivery_id: first(&self.delivery_id) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn presets_read_their_platforms_fields() {
        let body = json!({"object_kind": "push"});
        let info = Source::preset(SourceKind::Codeup).extract(&headers(&[("codeup-event", "Push Hook")]), Some(&body));
        assert_eq!(info, EventInfo { event: Some("push".into()), delivery_id: None });
        let info = Source::preset(SourceKind::Codeup).extract(&headers(&[("codeup-event", "Push Hook")]), None);
        assert_eq!(info.event.as_deref(), Some("Push Hook"));
        let info = Source::preset(SourceKind::Github).extract(&headers(&[("x-github-event", "push"), ("x-github-delivery", "d-1")]), None);
        assert_eq!(info, EventInfo { event: Some("push".into()), delivery_id: Some("d-1".into()) });
        let info = Source::preset(SourceKind::Tapd).extract(&HeaderMap::new(), Some(&json!({"event": "bug::create", "id": 1234})));
        assert_eq!(info, EventInfo { event: Some("bug::create".into()), delivery_id: Some("1234".into()) });
        let info = Source::preset(SourceKind::Bkrepo).extract(&headers(&[("x-bkrepo-event", "NODE_CREATED")]), Some(&json!({})));
        assert_eq!(info.event.as_deref(), Some("NODE_CREATED"));
    }

    #[test]
    fn generic_extractors() {
        let source = Source::generic(Some(Extractor::parse("$.kind").unwrap()), Some(Extractor::parse("X-Id").unwrap()));
        let info = source.extract(&headers(&[("x-id", "42")]), Some(&json!({"kind": "deploy"})));
        assert_eq!(info, EventInfo { event: Some("deploy".into()), delivery_id: Some("42".into()) });
        assert!(Extractor::parse("$[").is_err());
        assert!(Extractor::parse("bad header").is_err());
    }
}
