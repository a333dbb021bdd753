//! Dry runs: which routes a request matches and the exact requests they would send,
//! through the same selection and rendering as live traffic, with nothing sent. Used by
//! `hookrelay render` (and the admin API's render call); replay reports why a route did
//! not fire the same way.

use chrono::Utc;
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;

use crate::delivery::target::OutgoingRequest;
use crate::inbound::InboundRequest;
use crate::plan::{plan, PlannedRoute};
use crate::redact::{is_sensitive_header, Redactions};
use crate::routing::{self, path::Params, source::EventInfo, Route, RouteMatch};
use crate::snapshot::Snapshot;
use crate::verify::VerifyInput;

#[derive(Debug, Serialize)]
pub struct DryRun {
    pub routes: Vec<RouteReport>,
}

#[derive(Debug, Serialize)]
pub struct RouteReport {
    pub route: String,
    pub matched: bool,
    /// Verification failures; a route that fails verification would answer 401.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_errors: Vec<String>,
    /// For a route that did not match: the first thing that failed, and what it saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
    pub event: Option<String>,
    pub delivery_id: Option<String>,
    pub requests: Vec<TargetReport>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum TargetReport {
    Request(RequestView),
    Skipped { target: String, skipped: String },
    Error { target: String, error: String },
}

/// An outgoing request in readable form: the body as JSON when it is JSON, else text.
#[derive(Debug, Serialize, PartialEq)]
pub struct RequestView {
    pub target: String,
    pub method: String,
    pub url: String,
    pub headers: IndexMap<String, String>,
    pub body: Value,
}

impl RequestView {
    /// `redactions` masks what the config marks as credentials, unless `show_secrets`.
    pub fn new(request: &OutgoingRequest, show_secrets: bool, redactions: &Redactions) -> RequestView {
        let mut headers = IndexMap::new();
        for (name, value) in &request.headers {
            let secret = value.is_sensitive() || is_sensitive_header(name.as_str());
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let text = match (show_secrets, secret) {
                (true, _) => text,
                (false, true) => "[redacted]".to_string(),
                (false, false) => redactions.headers(&[(name.as_str().to_string(), text)]).remove(0).1,
            };
            headers.insert(name.as_str().to_string(), text);
        }
        let url = if show_secrets { request.url.clone() } else { redactions.url(&request.url) };
        let body =
            serde_json::from_slice(&request.body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&request.body).into_owned()));
        RequestView { target: request.target.clone(), method: request.method.to_string(), url, headers, body }
    }
}

/// Why `route` did not fire for `request` when `final_route` (if any) fired: the first
/// thing that failed (configured secret values masked), or that it was not reached.
pub fn why_not_fired(snapshot: &Snapshot, route: &Route, request: &InboundRequest, final_route: Option<&str>) -> String {
    match (final_route, routing::why_not(route, request)) {
        (Some(final_route), why) if why == "it matches" => format!("not reached: the final route {final_route} fired before it"),
        (_, why) => snapshot.redactions.mask_values(&why),
    }
}

/// Matches `request` against every route (or only `only_route`, rendered whether or not
/// it matches) and renders each target.
pub fn dry_run(snapshot: &Snapshot, request: &InboundRequest, only_route: Option<&str>, show_secrets: bool) -> Result<DryRun, String> {
    let matched = routing::select(&snapshot.routes, request);
    let mut candidates: Vec<(RouteMatch<'_>, bool)> = matched.into_iter().map(|m| (m, true)).collect();
    if let Some(name) = only_route {
        let route = snapshot.route(name).ok_or_else(|| format!("no route named {name:?}"))?;
        candidates.retain(|(m, _)| m.route.name == name);
        if candidates.is_empty() {
            let params: Params = route.path.matches(&request.path).unwrap_or_default();
            let info: EventInfo = route.source.extract(&request.headers, request.body.as_matchable());
            candidates.push((RouteMatch { route, params, info }, false));
        }
    }
    let verify_input = VerifyInput {
        headers: &request.headers,
        raw_body: &request.raw,
        body: request.body.as_matchable(),
        peer: request.peer,
        now_unix: Utc::now().timestamp(),
    };
    let (candidates, did_match): (Vec<RouteMatch<'_>>, Vec<bool>) = candidates.into_iter().unzip();
    let planned = plan(snapshot, request, request.body.to_value(), candidates, Utc::now(), || "dry-run".to_string());
    let mut routes = Vec::new();
    for (PlannedRoute { matched, targets, .. }, did_match) in planned.into_iter().zip(did_match) {
        let route = matched.route;
        let verify_errors = route.verify.iter().filter_map(|check| check.check(&verify_input).err()).map(|e| e.to_string()).collect();
        let requests = targets
            .into_iter()
            .map(|(target, rendered)| {
                match rendered {
                    Ok(Some(outgoing)) => {
                        // Shown as sent, credentials included (redacted unless asked); signatures
                        // depend on the send time and are left out.
                        TargetReport::Request(RequestView::new(&target.with_credentials(outgoing), show_secrets, &snapshot.redactions))
                    }
                    Ok(None) => {
                        TargetReport::Skipped { target: target.name.clone(), skipped: "`when` did not render \"true\"".to_string() }
                    }
                    Err(err) => TargetReport::Error { target: target.name.clone(), error: err.to_string() },
                }
            })
            .collect();
        routes.push(RouteReport {
            route: route.name.clone(),
            matched: did_match,
            why_not: (!did_match).then(|| snapshot.redactions.mask_values(&routing::why_not(route, request))),
            verify_errors,
            event: matched.info.event.clone(),
            delivery_id: matched.info.delivery_id.clone(),
            requests,
        });
    }
    if only_route.is_none() {
        // Every other route, with why it did not fire.
        let fired: Vec<String> = routes.iter().map(|r| r.route.clone()).collect();
        let stopped_by = routes.iter().find(|r| snapshot.route(&r.route).is_some_and(|route| route.is_final)).map(|r| r.route.clone());
        for route in snapshot.routes.iter().filter(|route| !fired.contains(&route.name)) {
            routes.push(RouteReport {
                route: route.name.clone(),
                matched: false,
                why_not: Some(why_not_fired(snapshot, route, request, stopped_by.as_deref())),
                verify_errors: Vec::new(),
                event: None,
                delivery_id: None,
                requests: Vec::new(),
            });
        }
    }
    Ok(DryRun { routes })
}
