//! The plan of one request: for each matched route, its event id and what each of its
//! targets renders to (a request, skipped by `when`, or a render error). Pure: nothing is
//! sent or stored. The ingress, `hookrelay render` (and so `hookrelay test`) and the admin
//! API's render and test calls all render through here.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::context;
use crate::delivery::target::{OutgoingRequest, RenderError, Target};
use crate::inbound::InboundRequest;
use crate::routing::RouteMatch;
use crate::snapshot::Snapshot;

/// What one target renders to: a request, `None` when `when` skipped it, or why not.
pub type Rendered = Result<Option<OutgoingRequest>, RenderError>;

pub struct PlannedRoute<'s> {
    pub matched: RouteMatch<'s>,
    pub event_id: String,
    pub targets: Vec<(&'s Target, Rendered)>,
}

/// Renders every target of every matched route, in order. `body` is the parsed body,
/// moved into the template context once; `event_id` names each route's event.
pub fn plan<'s>(
    snapshot: &'s Snapshot,
    inbound: &InboundRequest,
    body: Value,
    matched: Vec<RouteMatch<'s>>,
    received_at: DateTime<Utc>,
    mut event_id: impl FnMut() -> String,
) -> Vec<PlannedRoute<'s>> {
    let mut context = context::base(inbound, body, received_at, snapshot.templates_use_raw);
    matched
        .into_iter()
        .map(|matched| {
            let event_id = event_id();
            context::set_route(&mut context, &matched, &event_id);
            let route = matched.route;
            let targets = route
                .targets
                .iter()
                .map(|target| {
                    let rendered =
                        target.render(&route.name, &snapshot.templates, &context, inbound, snapshot.settings.upstream.as_ref(), &event_id);
                    (target, rendered)
                })
                .collect();
            PlannedRoute { matched, event_id, targets }
        })
        .collect()
}
