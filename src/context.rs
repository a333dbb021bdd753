//! The template context for one event (DESIGN §4): built once per request, then the
//! route-specific fields are swapped in for each matched route, so the parsed body is
//! never copied per route.

use chrono::{DateTime, SecondsFormat, Utc};
use handlebars::Context;
use serde_json::{Map, Value};

use crate::inbound::InboundRequest;
use crate::routing::RouteMatch;

/// The fields shared by every route of one request. `raw` is included only when some
/// template needs it, to avoid a copy of the body otherwise.
/// `body` is the parsed body, moved in (see [`InboundRequest::take_body`]).
pub fn base(request: &InboundRequest, body: Value, received_at: DateTime<Utc>, include_raw: bool) -> Context {
    let mut root = Map::with_capacity(16);
    // A CloudEvent (from any route) also gives `ce`, its attributes, and `data`.
    if let Some((attributes, data)) = crate::routing::cloudevents::template_fields(&request.headers, &body) {
        root.insert("ce".into(), attributes);
        root.insert("data".into(), data);
    }
    root.insert("body".into(), body);
    let raw = if include_raw { Value::String(String::from_utf8_lossy(&request.raw).into_owned()) } else { Value::String(String::new()) };
    root.insert("raw".into(), raw);
    root.insert("headers".into(), Value::Object(headers_object(&request.headers)));
    let mut query = Map::new();
    for (name, value) in &request.query {
        query.entry(name.clone()).or_insert_with(|| Value::String(value.clone()));
    }
    root.insert("query".into(), Value::Object(query));
    root.insert("method".into(), Value::String(request.method.as_str().to_string()));
    root.insert("path".into(), Value::String(request.path.clone()));
    root.insert("received_at".into(), Value::String(received_at.to_rfc3339_opts(SecondsFormat::Millis, true)));
    Context::from(Value::Object(root))
}

/// Lower-cased names; repeated headers joined with `, `.
fn headers_object(headers: &http::HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        let mut joined = values.next().map(|first| String::from_utf8_lossy(first.as_bytes()).into_owned()).unwrap_or_default();
        for more in values {
            joined.push_str(", ");
            joined.push_str(&String::from_utf8_lossy(more.as_bytes()));
        }
        out.insert(name.as_str().to_string(), Value::String(joined));
    }
    out
}

/// Sets `id` (the route's event id), `route`, `params`, `event`, `delivery_id` and `vars`
/// for one matched route.
pub fn set_route(context: &mut Context, matched: &RouteMatch<'_>, event_id: &str) {
    let Value::Object(root) = context.data_mut() else {
        return;
    };
    root.insert("id".into(), Value::String(event_id.to_string()));
    root.insert("route".into(), Value::String(matched.route.name.clone()));
    let params: Map<String, Value> = matched.params.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    root.insert("params".into(), Value::Object(params));
    root.insert("event".into(), matched.info.event.clone().map(Value::String).unwrap_or(Value::Null));
    root.insert("delivery_id".into(), matched.info.delivery_id.clone().map(Value::String).unwrap_or(Value::Null));
    root.insert("vars".into(), matched.route.vars.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_see_each_header_once_with_repeats_joined() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-one", http::HeaderValue::from_static("a"));
        headers.append("x-many", http::HeaderValue::from_static("b"));
        headers.append("x-many", http::HeaderValue::from_static("c, d"));
        headers.append("x-many", http::HeaderValue::from_bytes(b"\xffe").unwrap());
        let seen = headers_object(&headers);
        assert_eq!(Value::Object(seen), serde_json::json!({ "x-one": "a", "x-many": "b, c, d, \u{fffd}e" }));
    }
}
