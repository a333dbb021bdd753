//! The outbound guard for untrusted targets (routes created through the admin API): no
//! destination in a special-purpose range — loopback, private-use, link-local, CGNAT,
//! documentation, benchmarking, multicast, reserved and the like — unless
//! `outbound.allow_private` is true. The ranges come from the IANA IPv4 and IPv6
//! Special-Purpose Address Registries (the rows that are not globally reachable), plus
//! multicast and the deprecated IPv6 site-local block from the IPv4/IPv6 address space
//! registries; they are one table, `SPECIAL_PURPOSE`. IPv6 forms that carry an IPv4
//! address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged by that IPv4 address.
//! Names are checked after DNS resolution, inside the connector, so a name that later
//! resolves to a private address (DNS rebinding) is refused at send time too.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use ipnet::{Ipv4Net, Ipv6Net};
use tower_service::Service;

/// One special-purpose range. `reason` starts with the range in CIDR notation (a test checks
/// it against `range`) and names the RFC, so a refusal can say which range refused the address.
#[derive(Debug)]
struct Row {
    range: Range,
    reason: &'static str,
}

#[derive(Debug, Clone, Copy)]
enum Range {
    V4(Ipv4Net),
    V6(Ipv6Net),
    /// An IPv6 range whose addresses carry an IPv4 address: the verdict is that of the IPv4 address.
    Carrying(Ipv6Net, Carried),
}

/// Where an IPv6 address carries its IPv4 address.
#[derive(Debug, Clone, Copy)]
enum Carried {
    /// The last 32 bits (IPv4-mapped, IPv4-compatible, NAT64 well-known prefix).
    Low32,
    /// Bits 16..48, after the 2002::/16 prefix (6to4).
    SixToFour,
}

impl Carried {
    fn ipv4(self, ip: Ipv6Addr) -> Ipv4Addr {
        let o = ip.octets();
        match self {
            Carried::Low32 => Ipv4Addr::new(o[12], o[13], o[14], o[15]),
            Carried::SixToFour => Ipv4Addr::new(o[2], o[3], o[4], o[5]),
        }
    }
}

// Row builders. They run at compile time (the table is a `static`), so `new_assert` turns a
// prefix length out of range into a build error, never a runtime panic.
const fn v4(octets: [u8; 4], prefix_len: u8, reason: &'static str) -> Row {
    let [a, b, c, d] = octets;
    Row { range: Range::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix_len)), reason }
}

/// `leading` are the first segments of the network address; the rest are zero.
const fn net6(leading: &[u16], prefix_len: u8) -> Ipv6Net {
    let mut segments = [0u16; 8];
    let mut i = 0;
    while i < leading.len() {
        segments[i] = leading[i];
        i += 1;
    }
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix_len)
}

const fn v6(leading: &[u16], prefix_len: u8, reason: &'static str) -> Row {
    Row { range: Range::V6(net6(leading, prefix_len)), reason }
}

const fn carrying(leading: &[u16], prefix_len: u8, carried: Carried, reason: &'static str) -> Row {
    Row { range: Range::Carrying(net6(leading, prefix_len), carried), reason }
}

/// The ranges an untrusted target may not reach. The first row containing the address decides,
/// so a range nested in another comes before it (a test checks that no row is shadowed).
///
/// The whole of 192.0.0.0/24 and 2001::/23 is refused although the registries mark a few
/// assignments inside them globally reachable (PCP and TURN anycast, AMT, AS112, ORCHIDv2,
/// drone DETs): none of them is a webhook receiver. Globally reachable special-purpose blocks
/// outside these (AS112 192.31.196.0/24 and 192.175.48.0/24, AMT 192.52.193.0/24,
/// 2620:4f:8000::/48) are ordinary destinations and not listed.
static SPECIAL_PURPOSE: &[Row] = &[
    // IPv4 Special-Purpose Address Registry.
    v4([0, 0, 0, 0], 8, "0.0.0.0/8 \"this network\" (RFC 791)"),
    v4([10, 0, 0, 0], 8, "10.0.0.0/8 private-use (RFC 1918)"),
    v4([100, 64, 0, 0], 10, "100.64.0.0/10 shared address space, carrier-grade NAT (RFC 6598)"),
    v4([127, 0, 0, 0], 8, "127.0.0.0/8 loopback (RFC 1122)"),
    v4([169, 254, 0, 0], 16, "169.254.0.0/16 link-local, cloud metadata endpoints (RFC 3927)"),
    v4([172, 16, 0, 0], 12, "172.16.0.0/12 private-use (RFC 1918)"),
    v4([192, 0, 0, 0], 24, "192.0.0.0/24 IETF protocol assignments (RFC 6890)"),
    v4([192, 0, 2, 0], 24, "192.0.2.0/24 documentation, TEST-NET-1 (RFC 5737)"),
    v4([192, 88, 99, 0], 24, "192.88.99.0/24 6to4 relay anycast, deprecated (RFC 7526)"),
    v4([192, 168, 0, 0], 16, "192.168.0.0/16 private-use (RFC 1918)"),
    v4([198, 18, 0, 0], 15, "198.18.0.0/15 benchmarking (RFC 2544)"),
    v4([198, 51, 100, 0], 24, "198.51.100.0/24 documentation, TEST-NET-2 (RFC 5737)"),
    v4([203, 0, 113, 0], 24, "203.0.113.0/24 documentation, TEST-NET-3 (RFC 5737)"),
    // Multicast is in the IPv4 address space registry, not the special-purpose one.
    v4([224, 0, 0, 0], 4, "224.0.0.0/4 multicast (RFC 5771)"),
    v4([240, 0, 0, 0], 4, "240.0.0.0/4 reserved, including the 255.255.255.255 limited broadcast (RFC 1112, RFC 919)"),
    // IPv6 Special-Purpose Address Registry. ::/128 and ::1/128 lie inside ::/96, so they come first.
    v6(&[], 128, "::/128 unspecified (RFC 4291)"),
    v6(&[0, 0, 0, 0, 0, 0, 0, 1], 128, "::1/128 loopback (RFC 4291)"),
    carrying(&[0, 0, 0, 0, 0, 0xffff], 96, Carried::Low32, "::ffff:0:0/96 IPv4-mapped, judged by its IPv4 address (RFC 4291)"),
    carrying(&[], 96, Carried::Low32, "::/96 IPv4-compatible, deprecated, judged by its IPv4 address (RFC 4291)"),
    carrying(&[0x64, 0xff9b], 96, Carried::Low32, "64:ff9b::/96 NAT64 well-known prefix, judged by its IPv4 address (RFC 6052)"),
    v6(&[0x64, 0xff9b, 1], 48, "64:ff9b:1::/48 local-use NAT64 (RFC 8215)"),
    v6(&[0x100], 64, "100::/64 discard-only (RFC 6666)"),
    // Teredo is refused outright rather than judged by the addresses it carries (the server IPv4 in
    // bits 32..64, the client IPv4 in the last 32 bits XOR 0xffffffff): where the packets go depends
    // on whichever Teredo relay the host's routing picks, the mechanism is all but extinct, and no
    // webhook receiver is reachable only through it. 2001::/23 below refuses it anyway; this row
    // (like the benchmarking one) only names the range in the refusal, so it comes first.
    v6(&[0x2001], 32, "2001::/32 Teredo (RFC 4380)"),
    v6(&[0x2001, 2], 48, "2001:2::/48 benchmarking (RFC 5180)"),
    v6(&[0x2001], 23, "2001::/23 IETF protocol assignments (RFC 2928)"),
    v6(&[0x2001, 0xdb8], 32, "2001:db8::/32 documentation (RFC 3849)"),
    carrying(&[0x2002], 16, Carried::SixToFour, "2002::/16 6to4, judged by its IPv4 address (RFC 3056)"),
    v6(&[0x3fff], 20, "3fff::/20 documentation (RFC 9637)"),
    v6(&[0x5f00], 16, "5f00::/16 segment routing (SRv6) SIDs (RFC 9602)"),
    v6(&[0xfc00], 7, "fc00::/7 unique-local (RFC 4193)"),
    v6(&[0xfe80], 10, "fe80::/10 link-local (RFC 4291)"),
    // IPv6 address space registry: site-local (deprecated, still routed inside some sites) and multicast.
    v6(&[0xfec0], 10, "fec0::/10 site-local, deprecated (RFC 3879)"),
    v6(&[0xff00], 8, "ff00::/8 multicast (RFC 4291)"),
];

/// Why an untrusted target may not reach `ip`: the reason of the first `SPECIAL_PURPOSE` row
/// containing it, or `None` for a public address. An IPv6 address that carries an IPv4 address
/// (IPv4-mapped, IPv4-compatible, NAT64, 6to4) gets the reason of that IPv4 address.
pub fn private_reason(ip: IpAddr) -> Option<&'static str> {
    for row in SPECIAL_PURPOSE {
        match (row.range, ip) {
            (Range::V4(net), IpAddr::V4(addr)) if net.contains(&addr) => return Some(row.reason),
            (Range::V6(net), IpAddr::V6(addr)) if net.contains(&addr) => return Some(row.reason),
            // One level only: the carried address is IPv4, and IPv4 rows carry nothing.
            (Range::Carrying(net, carried), IpAddr::V6(addr)) if net.contains(&addr) => {
                return private_reason(IpAddr::V4(carried.ipv4(addr)));
            }
            _ => {}
        }
    }
    None
}

/// Addresses an untrusted target may not reach.
pub fn is_private(ip: IpAddr) -> bool {
    private_reason(ip).is_some()
}

/// Refuses a URL whose host is a private IP literal (literals never reach the resolver).
/// A URL that does not parse is not refused here: sending it fails on its own.
pub fn check_literal_host(url: &str) -> Result<(), Refused> {
    let Ok(parsed) = url::Url::parse(url) else { return Ok(()) };
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(name)) if name.eq_ignore_ascii_case("localhost") || name.ends_with(".localhost") => {
            return Err(Refused { detail: format!("{name} is loopback") });
        }
        Some(url::Host::Domain(_)) | None => return Ok(()),
    };
    match private_reason(ip) {
        Some(reason) => Err(Refused::address(ip, reason)),
        None => Ok(()),
    }
}

/// The guard said no. A typed error, so the client recognises it in an error chain by type
/// (a refusal is final, never retried as a connect error), whatever the wording.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused: the target is a loopback, private or other special-purpose address (outbound.allow_private is false): {detail}")]
pub struct Refused {
    detail: String,
}

impl Refused {
    fn address(ip: IpAddr, reason: &str) -> Refused {
        Refused { detail: format!("{ip} is in {reason}") }
    }

    /// The refusal somewhere in `err`'s chain, including inside an `io::Error`.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
        let mut current = Some(err);
        while let Some(err) = current {
            if let Some(refused) = err.downcast_ref::<Refused>() {
                return Some(refused);
            }
            let inner = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref::<Refused>());
            if inner.is_some() {
                return inner;
            }
            current = err.source();
        }
        None
    }
}

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
            let mut refused = None;
            let public: Vec<SocketAddr> = resolving
                .await?
                .filter(|addr| match private_reason(addr.ip()) {
                    Some(reason) => {
                        if refused.is_none() {
                            refused = Some((addr.ip(), reason));
                        }
                        false
                    }
                    None => true,
                })
                .collect();
            if public.is_empty() {
                let refusal = refused
                    .map_or_else(|| Refused { detail: "the name has no address".to_string() }, |(ip, reason)| Refused::address(ip, reason));
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, refusal));
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
        assert!(Refused::find(&refused).is_some(), "the refusal is found by type, not by its text");
        let plain = io::Error::new(io::ErrorKind::PermissionDenied, "outbound.allow_private is false");
        assert!(Refused::find(&plain).is_none(), "text alone is not a refusal");
    }

    fn net(range: Range) -> ipnet::IpNet {
        match range {
            Range::V4(net) => net.into(),
            Range::V6(net) | Range::Carrying(net, _) => net.into(),
        }
    }

    #[test]
    fn every_row_names_its_own_range() {
        for row in SPECIAL_PURPOSE {
            let named: ipnet::IpNet = row.reason.split_whitespace().next().unwrap().parse().unwrap();
            assert_eq!(named, net(row.range), "{row:?}");
            assert_eq!(named, named.trunc(), "{row:?} has host bits set");
        }
    }

    #[test]
    fn no_row_is_shadowed_by_an_earlier_one() {
        for (i, earlier) in SPECIAL_PURPOSE.iter().enumerate() {
            for later in &SPECIAL_PURPOSE[i + 1..] {
                assert!(!net(earlier.range).contains(&net(later.range)), "{later:?} is unreachable behind {earlier:?}");
            }
        }
    }

    #[test]
    fn private_ranges() {
        // Row by row: the first and the last address of every range are refused. For a row that judges a carried
        // IPv4 address they carry 0.0.0.0 and 255.255.255.255, both refused too.
        for row in SPECIAL_PURPOSE {
            let range = net(row.range);
            for ip in [range.network(), range.broadcast()] {
                assert!(is_private(ip), "{ip} ({row:?})");
            }
            // A plain row with no other row nested in it (2001::/23 has some) refuses its addresses itself.
            let has_nested = SPECIAL_PURPOSE.iter().any(|other| !std::ptr::eq(other, row) && range.contains(&net(other.range)));
            if matches!(row.range, Range::V4(_) | Range::V6(_)) && !has_nested {
                assert_eq!(private_reason(range.network()), Some(row.reason), "{row:?}");
                assert_eq!(private_reason(range.broadcast()), Some(row.reason), "{row:?}");
            }
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:0001::",
            "2001:0::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.128.0.1",
            "100.63.255.255",
            "172.32.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::",
            "2001:200::1",
            "3fff:1000::1",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
        assert_eq!(private_reason("::ffff:10.0.0.1".parse().unwrap()), Some("10.0.0.0/8 private-use (RFC 1918)"));
        assert_eq!(private_reason("2001:0::".parse().unwrap()), Some("2001::/32 Teredo (RFC 4380)"));
        assert!(check_literal_host("http://169.254.169.254/latest/meta-data").is_err());
        assert!(check_literal_host("http://localhost:8080/x").is_err());
        assert!(check_literal_host("https://example.com/x").is_ok());
        let refused = check_literal_host("http://[64:ff9b::a9fe:a9fe]/").unwrap_err().to_string();
        assert!(refused.contains("outbound.allow_private is false") && refused.contains("169.254.0.0/16"), "{refused}");
    }
}
