//! The compiled route table and the pure selection of routes for one request: path and
//! method, source event extraction, conditions, `final`. No I/O happens here.

pub mod cloudevents;
pub mod events;
pub mod path;
pub mod source;

use std::collections::HashMap;

use http::{HeaderName, Method};
use serde_json::Value;

use crate::condition::{header_text, Condition, MatchInput};
use crate::config::model::Respond;
use crate::delivery::target::Target;
use crate::inbound::InboundRequest;
use crate::ratelimit::LimitSpec;
use crate::verify::Check;
use path::{Params, PathPattern};
use source::{EventInfo, Source};

/// Where a route was defined: YAML is trusted operator config, API routes are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Yaml,
    Api,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub origin: Origin,
    /// The file that defined the route.
    pub file: String,
    pub source: Source,
    pub path: PathPattern,
    pub methods: Vec<Method>,
    pub condition: Condition,
    pub needs_body: bool,
    pub verify: Vec<Check>,
    /// Origins the CloudEvents validation handshake allows (`*`: any); empty: no handshake.
    pub cloudevents_origins: Vec<String>,
    pub ingress_limit: Option<IngressLimit>,
    /// Drop repeats of the same sender delivery id within this window.
    pub dedupe: Option<std::time::Duration>,
    pub vars: Value,
    pub respond: Respond,
    pub is_final: bool,
    pub targets: Vec<Target>,
}

/// Who an `ingress_limit` budget belongs to.
#[derive(Debug, Clone)]
pub enum LimitBy {
    Ip,
    Header(http::HeaderName),
}

#[derive(Debug, Clone)]
pub struct IngressLimit {
    pub spec: LimitSpec,
    pub by: LimitBy,
}

impl IngressLimit {
    /// The sender's key: its IP, or the header's value (absent header: one shared bucket).
    pub fn sender<'a>(&self, request: &'a InboundRequest) -> std::borrow::Cow<'a, [u8]> {
        match &self.by {
            LimitBy::Ip => std::borrow::Cow::Owned(match request.peer {
                std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
                std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
            }),
            LimitBy::Header(name) => std::borrow::Cow::Borrowed(request.headers.get(name).map_or(&[][..], |v| v.as_bytes())),
        }
    }

    /// Keys taken from request data are charged only after verification; the IP is not
    /// chosen by the sender, so it may be charged before.
    pub fn before_verification(&self) -> bool {
        matches!(self.by, LimitBy::Ip)
    }
}

/// A route that matched one request, with what matching learned about it.
#[derive(Debug)]
pub struct RouteMatch<'a> {
    pub route: &'a Route,
    pub params: Params,
    pub info: EventInfo,
}

impl Route {
    fn takes(&self, method: &Method, path: &str) -> Option<Params> {
        if !self.methods.contains(method) {
            return None;
        }
        self.path.matches(path)
    }
}

/// The routes in file order, indexed by path: routes with a literal path are found by a
/// map lookup, so a request only meets the routes that could take its path (plus those
/// with `{param}` or `/*` patterns), still in file order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Per route (same index): the header value its condition requires, if any, kept
    /// apart from the routes so that skipping many of them touches little memory.
    required_headers: Vec<Option<(HeaderName, String)>>,
    exact: HashMap<String, Vec<usize>>,
    patterned: Vec<usize>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut patterned = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            match route.path.literal_key() {
                Some(key) => exact.entry(key).or_default().push(index),
                None => patterned.push(index),
            }
        }
        let required_headers = routes.iter().map(|route| route.condition.required_header()).collect();
        RouteTable { routes, required_headers, exact, patterned }
    }

    /// Routes that may take `path`, in file order: the literal ones for this exact path
    /// merged with every patterned one.
    fn candidates<'a>(&'a self, path: &str) -> impl Iterator<Item = Candidate<'a>> + 'a {
        let literal: &[usize] = self.exact.get(&PathPattern::normalize(path)).map(Vec::as_slice).unwrap_or_default();
        let (mut literal, mut patterned) = (literal.iter().copied().peekable(), self.patterned.iter().copied().peekable());
        std::iter::from_fn(move || {
            let (next, path_matched) = match (literal.peek(), patterned.peek()) {
                (Some(a), Some(b)) if a < b => (literal.next(), true),
                (Some(_), Some(_)) | (None, Some(_)) => (patterned.next(), false),
                (Some(_), None) => (literal.next(), true),
                (None, None) => (None, false),
            };
            let index = next?;
            self.routes.get(index).map(|route| Candidate { route, path_matched, required_header: self.required_headers[index].as_ref() })
        })
    }
}

/// A route that may take a request's path.
struct Candidate<'a> {
    route: &'a Route,
    /// Found by its literal path: it takes this path, with no parameters.
    path_matched: bool,
    required_header: Option<&'a (HeaderName, String)>,
}

impl Candidate<'_> {
    fn takes(&self, method: &Method, path: &str) -> Option<Params> {
        if self.path_matched {
            return self.route.methods.contains(method).then(Params::new);
        }
        self.route.takes(method, path)
    }
}

impl std::ops::Deref for RouteTable {
    type Target = [Route];
    fn deref(&self) -> &[Route] {
        &self.routes
    }
}

/// True when some route could take a request with this method and path; only such
/// requests are buffered and parsed, everything else is streamed to `upstream`.
pub fn may_take(table: &RouteTable, method: &Method, path: &str) -> bool {
    table.candidates(path).any(|candidate| candidate.takes(method, path).is_some())
}

/// Every route that matches, in file order, stopping after a matching `final` route.
pub fn select<'a>(table: &'a RouteTable, request: &InboundRequest) -> Vec<RouteMatch<'a>> {
    let mut matched = Vec::new();
    // Routes of one preset read the event the same way: read it once per request.
    let mut events: Vec<(source::SourceKind, EventInfo)> = Vec::new();
    // The request's value of each header some candidate requires, looked up once.
    let mut header_values: Vec<(&HeaderName, Option<std::borrow::Cow<'_, str>>)> = Vec::new();
    let body = request.body.as_matchable();
    for candidate in table.candidates(&request.path) {
        if let Some((name, required)) = candidate.required_header {
            let index = match header_values.iter().position(|(seen, _)| *seen == name) {
                Some(index) => index,
                None => {
                    header_values.push((name, header_text(&request.headers, name)));
                    header_values.len() - 1
                }
            };
            if header_values[index].1.as_deref() != Some(required.as_str()) {
                continue;
            }
        }
        let Some(params) = candidate.takes(&request.method, &request.path) else {
            continue;
        };
        let route = candidate.route;
        if route.needs_body && body.is_none() {
            continue;
        }
        let kind = route.source.kind;
        let own;
        let info = match events.iter().position(|(cached, _)| *cached == kind && kind != source::SourceKind::Generic) {
            Some(index) => &events[index].1,
            None if kind == source::SourceKind::Generic => {
                own = route.source.extract(&request.headers, body);
                &own
            }
            None => {
                events.push((kind, route.source.extract(&request.headers, body)));
                &events[events.len() - 1].1
            }
        };
        let input = MatchInput { headers: &request.headers, query: &request.query, body, event: info.event.as_deref() };
        if route.condition.eval(&input) {
            matched.push(RouteMatch { route, params, info: info.clone() });
            if route.is_final {
                break;
            }
        }
    }
    matched
}

/// Why `route` does not take `request`: the method, the path, a body it cannot read, or
/// the first condition that failed, with what it saw.
pub fn why_not(route: &Route, request: &InboundRequest) -> String {
    if !route.methods.contains(&request.method) {
        let allowed: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
        return format!("method {} not in [{}]", request.method, allowed.join(", "));
    }
    if route.path.matches(&request.path).is_none() {
        return format!("path {} ≠ {}", request.path, route.path.as_str());
    }
    let body = request.body.as_matchable();
    if route.needs_body && body.is_none() {
        return "the body is not JSON or a form, and the route's conditions read it".to_string();
    }
    let info = route.source.extract(&request.headers, body);
    let input = MatchInput { headers: &request.headers, query: &request.query, body, event: info.event.as_deref() };
    route.condition.why_not(&input).unwrap_or_else(|| "it matches".to_string())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::config::env::ProcessEnv;

    const CONFIG: &str = r#"
listen: 127.0.0.1:0
routes:
  - { name: push, match: { path: /hook, headers: { Codeup-Event: Push Hook } }, forward: [ { url: http://127.0.0.1:9/ } ] }
  - { name: tag, match: { path: /hook, headers: { Codeup-Event: Tag Push Hook } }, forward: [ { url: http://127.0.0.1:9/ } ] }
  - { name: number, match: { path: /hook, headers: { X-Count: 7 } }, forward: [ { url: http://127.0.0.1:9/ } ] }
  - { name: joined, match: { path: /hook, headers: { X-Multi: "a, b" } }, forward: [ { url: http://127.0.0.1:9/ } ] }
  - { name: either, match: { path: /hook, any: [ { headers: { Codeup-Event: Tag Push Hook } }, { headers: { X-Count: 8 } } ] }, forward: [ { url: http://127.0.0.1:9/ } ] }
  - { name: anything, match: { path: /hook }, forward: [ { url: http://127.0.0.1:9/ } ] }
"#;

    /// Routes skipped by their required header value are exactly those whose condition
    /// fails: the same selection as evaluating every route.
    #[test]
    fn skipping_by_a_required_header_selects_what_evaluating_every_route_selects() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.yaml"), CONFIG).unwrap();
        let snapshot = crate::snapshot::load(&dir.path().join("c.yaml"), &ProcessEnv).unwrap();
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: [Case; 6] = [
            (&[("codeup-event", "Push Hook")], &["push", "anything"]),
            (&[("codeup-event", "Tag Push Hook")], &["tag", "either", "anything"]),
            (&[], &["anything"]),
            (&[("x-count", "7")], &["number", "anything"]),
            (&[("x-count", "8")], &["either", "anything"]),
            (&[("x-multi", "a"), ("x-multi", "b")], &["joined", "anything"]),
        ];
        for (headers, expected) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
            }
            let request = InboundRequest::new(Method::POST, "/hook", map, Bytes::from_static(b"{}"), std::net::Ipv4Addr::LOCALHOST.into());
            let selected: Vec<&str> = select(&snapshot.routes, &request).iter().map(|m| m.route.name.as_str()).collect();
            let evaluated: Vec<&str> = snapshot
                .routes
                .iter()
                .filter(|route| {
                    let input =
                        MatchInput { headers: &request.headers, query: &request.query, body: request.body.as_matchable(), event: None };
                    route.condition.eval(&input)
                })
                .map(|route| route.name.as_str())
                .collect();
            assert_eq!(selected, expected, "{headers:?}");
            assert_eq!(selected, evaluated, "{headers:?}");
        }
        assert!(snapshot.routes.required_headers[..4].iter().all(Option::is_some));
        assert!(snapshot.routes.required_headers[4..].iter().all(Option::is_none), "`any` and no header: nothing required");
    }
}
