//! What the admin listener does because browsers reach it (the security headers every
//! answer carries are [`crate::respond::secure`]): `Host` checked against DNS rebinding when no token guards it, state changes
//! accepted only as JSON (a cross-site form cannot send that), and one audit line per
//! change naming who made it by the fingerprint of their token.

use std::net::IpAddr;

use http::{Method, Request};
use sha2::{Digest, Sha256};

use crate::relay::Relay;

/// The name in a `Host` header, without its port (`[::1]:9090` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(name, _)| name);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Without a token, the listener is on a loopback address, and a page from another site
/// could still reach it through a name that resolves there (DNS rebinding): only its own
/// address, `localhost` and the names in `admin.hosts` are served. `None` when the
/// request may go on, else the name refused.
pub fn rebound(relay: &Relay, request: &Request<hyper::body::Incoming>) -> Option<String> {
    if relay.admin_token().is_some() {
        return None;
    }
    // HTTP/2 names the host in the URI, HTTP/1.1 in the header (checked equal before). No
    // name, or one that is not text, is no name of this listener.
    let host = match request.uri().authority() {
        Some(authority) => authority.as_str().to_string(),
        None => match request.headers().get(http::header::HOST).map(|v| v.to_str()) {
            Some(Ok(host)) => host.to_string(),
            Some(Err(_)) => return Some("(a Host that is not ASCII)".to_string()),
            None => return Some("(no Host)".to_string()),
        },
    };
    let name = host_name(&host).trim_end_matches('.').to_ascii_lowercase();
    let snapshot = relay.snapshot();
    let admin = snapshot.settings.admin.as_ref();
    let own = match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || admin.is_some_and(|a| a.listen.ip() == ip),
        Err(_) => name == "localhost" || name.ends_with(".localhost"),
    };
    let listed = admin.is_some_and(|a| a.hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(&name)));
    (!own && !listed).then_some(name)
}

/// Calls that change something.
pub fn changes(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// Whether a state-changing call says its body is `application/json` (`DELETE` has none to say).
pub fn is_json(request: &Request<hyper::body::Incoming>) -> bool {
    if request.method() == Method::DELETE {
        return true;
    }
    let content_type = request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    crate::inbound::media_type(content_type) == "application/json"
}

/// Who made a call: the first 12 hex digits of the SHA-256 of the token it carried
/// (`token:…`), or `no-token` when the listener has none. The token itself is never logged.
pub fn caller(request: &Request<hyper::body::Incoming>, relay: &Relay) -> String {
    if relay.admin_token().is_none() {
        return "no-token".to_string();
    }
    let digest = Sha256::digest(super::bearer(request).as_bytes());
    format!("token:{}", &hex::encode(digest)[..12])
}

/// One line per admin change, on its own log target so that it can be kept apart.
pub fn audit(by: &str, method: &Method, path: &str, status: http::StatusCode) {
    tracing::info!(target: "hookrelay::audit", by, method = %method, path, status = status.as_u16(), "admin change");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        for (host, name) in
            [("127.0.0.1:9090", "127.0.0.1"), ("[::1]:80", "::1"), ("localhost", "localhost"), ("evil.example:1", "evil.example")]
        {
            assert_eq!(host_name(host), name);
        }
    }
}
