//! The outbound guard for untrusted targets (routes created through the admin API): no
//! loopback, private or link-local destinations unless `outbound.allow_private` is true.
//! Names are checked after DNS resolution, inside the connector, so a name that later
//! resolves to a private address (DNS rebinding) is refused at send time too.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tower_service::Service;

/// Addresses an untrusted target may not reach.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // Carrier-grade NAT (100.64.0.0/10) is not public either.
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback() || v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

/// Refuses a URL whose host is a private IP literal (literals never reach the resolver).
pub fn check_literal_host(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|err| err.to_string())?;
    let private = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => is_private(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_private(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost") || name.ends_with(".localhost"),
        None => false,
    };
    if private {
        return Err(REFUSED.to_string());
    }
    Ok(())
}

const REFUSED: &str = "refused: the target is a loopback, private or link-local address (outbound.allow_private is false)";

/// The system resolver, keeping only public addresses.
#[derive(Clone)]
pub struct PublicOnly(GaiResolver);

impl Default for PublicOnly {
    fn default() -> Self {
        PublicOnly(GaiResolver::new())
    }
}

type Resolved = Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, io::Error>> + Send>>;

impl Service<Name> for PublicOnly {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolved;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Resolved {
        let resolving = self.0.call(name);
        Box::pin(async move {
            let public: Vec<SocketAddr> = resolving.await?.filter(|addr| !is_private(addr.ip())).collect();
            if public.is_empty() {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, REFUSED));
            }
            Ok(public.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[tokio::test]
    async fn names_resolving_only_to_private_addresses_are_refused_at_connect_time() {
        let mut resolver = PublicOnly::default();
        let refused = resolver.call(Name::from_str("localhost").unwrap()).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
        assert!(refused.to_string().contains("outbound.allow_private"));
    }

    #[test]
    fn private_ranges() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
        assert!(check_literal_host("http://169.254.169.254/latest/meta-data").is_err());
        assert!(check_literal_host("http://localhost:8080/x").is_err());
        assert!(check_literal_host("https://example.com/x").is_ok());
    }
}
