//! The compiled route table and the pure selection of routes for one request: path and
//! method, source event extraction, conditions, `final`. No I/O happens here.

pub mod path;
pub mod source;

use std::collections::HashMap;

use http::Method;
use serde_json::Value;

use crate::condition::{Condition, MatchInput};
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
        RouteTable { routes, exact, patterned }
    }

    /// Routes that may take `path`, in file order: the literal ones for this exact path
    /// merged with every patterned one.
    fn candidates<'a>(&'a self, path: &str) -> impl Iterator<Item = &'a Route> + 'a {
        let literal: &[usize] = self.exact.get(&PathPattern::normalize(path)).map(Vec::as_slice).unwrap_or_default();
        let (mut literal, mut patterned) = (literal.iter().copied().peekable(), self.patterned.iter().copied().peekable());
        std::iter::from_fn(move || {
            let next = match (literal.peek(), patterned.peek()) {
                (Some(a), Some(b)) if a < b => literal.next(),
                (Some(_), Some(_)) | (None, Some(_)) => patterned.next(),
                (Some(_), None) => literal.next(),
                (None, None) => None,
            }?;
            self.routes.get(next)
        })
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
    table.candidates(path).any(|route| route.takes(method, path).is_some())
}

/// Every route that matches, in file order, stopping after a matching `final` route.
pub fn select<'a>(table: &'a RouteTable, request: &InboundRequest) -> Vec<RouteMatch<'a>> {
    let mut matched = Vec::new();
    // Routes of one preset read the event the same way: read it once per request.
    let mut events: Vec<(source::SourceKind, EventInfo)> = Vec::new();
    for route in table.candidates(&request.path) {
        let Some(params) = route.takes(&request.method, &request.path) else {
            continue;
        };
        let body = request.body.as_matchable();
        if route.needs_body && body.is_none() {
            continue;
        }
        let kind = route.source.kind;
        let info = match events.iter().find(|(cached, _)| *cached == kind && kind != source::SourceKind::Generic) {
            Some((_, info)) => info.clone(),
            None => {
                let info = route.source.extract(&request.headers, body);
                if kind != source::SourceKind::Generic {
                    events.push((kind, info.clone()));
                }
                info
            }
        };
        let input = MatchInput { headers: &request.headers, query: &request.query, body, event: info.event.as_deref() };
        if route.condition.eval(&input) {
            matched.push(RouteMatch { route, params, info });
            if route.is_final {
                break;
            }
        }
    }
    matched
}
