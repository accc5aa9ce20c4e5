//! The client's address behind trusted proxies (pure): per-IP limits and request logs use it
//! instead of the TCP peer when the edge sits behind a load balancer.
//!
//! A forwarding header is believed only as far as the proxies that wrote it are trusted: the TCP
//! peer must be inside `http.trusted_proxies`, and the header is walked from the right (the entry
//! the nearest proxy appended) past every entry that is itself a trusted proxy; the first entry
//! that is not is the client. Everything left of it was written by the client or by proxies we
//! know nothing about, so a client prepending fake entries cannot choose its address.
//!
//! An entry that is not an address (`unknown`, an obfuscated identifier such as `_hidden`, a
//! typo, a `Forwarded` element without `for=`) ends the walk at the nearest trusted hop: the
//! proxy that wrote it is the last address known not to be made up. Such requests then share that
//! proxy's per-IP budget, which is conservative (they are limited, never unlimited).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use serde::Deserialize;

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("trusted proxy {0:?}: not an IP address or CIDR (expected e.g. \"10.0.0.0/8\" or \"::1/128\")")]
    Syntax(String),
    #[error("trusted proxy {text:?}: prefix length {prefix} is over {max} for this address family")]
    Prefix { text: String, prefix: u8, max: u8 },
    // A typo such as 10.1.0.0/8 would silently trust far more (or other) addresses than meant.
    #[error("trusted proxy {text:?}: address has bits set beyond the /{prefix} prefix; did you mean \"{suggested}\"?")]
    HostBits { text: String, prefix: u8, suggested: String },
}

impl Cidr {
    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what
    /// a dual-stack socket reports for an IPv4 peer) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix) == net,
            _ => false,
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    Ipv4Addr::from(if prefix == 0 { 0 } else { bits & (u32::MAX << (32 - u32::from(prefix))) })
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    Ipv6Addr::from(if prefix == 0 { 0 } else { bits & (u128::MAX << (128 - u32::from(prefix))) })
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(text.to_string());
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => {
                // `u8::from_str` takes a leading `+`; a prefix is digits only.
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                (addr, Some(prefix.parse::<u8>().map_err(|_| syntax())?))
            }
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(CidrError::Prefix { text: text.to_string(), prefix, max });
        }
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(mask_v4(a, prefix)),
            IpAddr::V6(a) => IpAddr::V6(mask_v6(a, prefix)),
        };
        if network != addr {
            return Err(CidrError::HostBits {
                text: text.to_string(),
                prefix,
                suggested: format!("{network}/{prefix}"),
            });
        }
        Ok(Self { network, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(text: String) -> Result<Self, CidrError> {
        text.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Which header the trusted proxies write the client's address into. Only one is read: a proxy
/// appends to the header it knows and passes the other through untouched, so a client could fill
/// that one with any address it likes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: <client>, <proxy1>, <proxy2>` (nginx, HAProxy, Envoy, cloud balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=<client>;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// The client's address: `peer` (the TCP peer) unless it is a trusted proxy, else the rightmost
/// untrusted address of the forwarding header (see the module doc). With `trusted` empty the
/// headers are never read. The result is canonical (an IPv4-mapped IPv6 address becomes IPv4), so
/// one client has one per-IP budget whichever way it is reported.
pub fn client_ip(peer: IpAddr, trusted: &[Cidr], header: ForwardedHeader, headers: &HeaderMap) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut nearest = peer.to_canonical();
    if !is_trusted(nearest) {
        return nearest;
    }
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    // Several header lines are one list in order (RFC 9110 §5.3); the nearest proxy's entry is
    // the last. A line that is not text is one malformed entry at its place.
    let mut entries: Vec<Option<IpAddr>> = Vec::new();
    for line in headers.get_all(name) {
        match (line.to_str(), header) {
            (Ok(text), ForwardedHeader::XForwardedFor) => entries.extend(xff_entries(text)),
            (Ok(text), ForwardedHeader::Forwarded) => entries.extend(forwarded_entries(text)),
            (Err(_), _) => entries.push(None),
        }
    }
    for entry in entries.into_iter().rev() {
        match entry {
            Some(ip) => {
                let ip = ip.to_canonical();
                if !is_trusted(ip) {
                    return ip;
                }
                nearest = ip;
            }
            None => return nearest,
        }
    }
    // Every hop was a trusted proxy: the request started at the leftmost of them.
    nearest
}

/// `X-Forwarded-For` entries, left to right; `None` for one that is not an address.
fn xff_entries(text: &str) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    // Empty list elements (`a, , b`) are allowed by the list syntax and mean nothing.
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse_node)
}

/// An address as proxies write it: bare, with a port (`192.0.2.1:4711`), or bracketed IPv6 with
/// or without one (`[2001:db8::1]:4711`).
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let ip = inner.parse::<Ipv6Addr>().ok()?;
        return (after.is_empty() || valid_port(after.strip_prefix(':')?)).then_some(IpAddr::V6(ip));
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    // RFC 7239 allows an obfuscated port (`192.0.2.1:_abc`), which `SocketAddr` does not.
    let (ip, port) = text.split_once(':')?;
    let ip = ip.parse::<Ipv4Addr>().ok()?;
    valid_port(port).then_some(IpAddr::V4(ip))
}

/// RFC 7239 `node-port`: a port number, or `_` and an obfuscated identifier.
fn valid_port(port: &str) -> bool {
    let digits = port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok();
    let obfuscated = port.len() > 1
        && port.starts_with('_')
        && port.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    digits || obfuscated
}

/// The `for=` of each `Forwarded` element, left to right; `None` for an element that has none,
/// has it twice, or whose value is not an address (`unknown`, `_hidden`) or does not parse.
fn forwarded_entries(text: &str) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let (element, next) = split_element(rest);
        if let Some(element) = element {
            if !element.trim().is_empty() {
                out.push(forwarded_for(element.trim()));
            }
        } else {
            // An unterminated quoted string: nothing from here on can be read.
            out.push(None);
            return out;
        }
        match next {
            Some(next) => rest = next,
            None => return out,
        }
    }
}

/// The text up to the first comma outside a quoted string, and what follows that comma; `None`
/// as the element when a quoted string is not closed.
fn split_element(text: &str) -> (Option<&str>, Option<&str>) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return (Some(&text[..i]), Some(&text[i + 1..])),
            _ => {}
        }
    }
    if quoted { (None, None) } else { (Some(text), None) }
}

/// The address in one element's `for=` parameter (pairs separated by `;`, names case-insensitive).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in split_pairs(element) {
        let (name, value) = pair.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("for") {
            if found.is_some() {
                // Two `for=` in one hop: which one the proxy meant is unknowable.
                return None;
            }
            found = Some(unquote(value.trim())?);
        }
    }
    parse_node(&found?)
}

/// An element's `name=value` pairs: split on `;` outside quoted strings.
fn split_pairs(element: &str) -> Vec<&str> {
    let mut pairs = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in element.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                pairs.push(&element[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pairs.push(&element[start..]);
    pairs.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

/// A token as is, or a quoted string with its quoted pairs (`\x`) resolved.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.is_empty() && !value.contains('"')).then(|| value.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().expect("test CIDR")).collect()
    }

    fn headers(name: &str, lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"), line.parse().expect("value"));
        }
        h
    }

    /// The client of a request from `peer` with these `X-Forwarded-For` lines, behind the
    /// proxies 10.0.0.0/8 and ::1.
    fn xff(peer: &str, lines: &[&str]) -> IpAddr {
        let trusted = cidrs(&["10.0.0.0/8", "::1/128"]);
        client_ip(ip(peer), &trusted, ForwardedHeader::XForwardedFor, &headers("x-forwarded-for", lines))
    }

    fn fwd(peer: &str, lines: &[&str]) -> IpAddr {
        let trusted = cidrs(&["10.0.0.0/8", "::1/128"]);
        client_ip(ip(peer), &trusted, ForwardedHeader::Forwarded, &headers("forwarded", lines))
    }

    #[test]
    fn cidr_parses_networks_and_hosts() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")), "no family mixing");
        let host: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let lo: Cidr = "::1/128".parse().unwrap();
        assert!(lo.contains(ip("::1")) && !lo.contains(ip("::2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
    }

    #[test]
    fn cidr_matches_ipv4_mapped_peers() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("::ffff:10.1.2.3")));
    }

    #[test]
    fn cidr_rejects_bad_input_with_clear_errors() {
        for bad in ["", "10.0.0.0/", "10.0.0/8", "10.0.0.0/+8", "10.0.0.0/8/8", "abc", "10.0.0.0 /8", "/8"] {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError::Syntax(bad.into())), "{bad:?}");
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix { text: "10.0.0.0/33".into(), prefix: 33, max: 32 })
        );
        assert!(matches!("::/129".parse::<Cidr>(), Err(CidrError::Prefix { max: 128, .. })));
        assert_eq!("10.0.0.0/999".parse::<Cidr>(), Err(CidrError::Syntax("10.0.0.0/999".into())));
        let e = "10.1.0.0/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "trusted proxy \"10.1.0.0/8\": address has bits set beyond the /8 prefix; did you mean \"10.0.0.0/8\"?"
        );
    }

    #[test]
    fn no_trusted_proxies_means_headers_are_ignored() {
        let h = headers("x-forwarded-for", &["198.51.100.1"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &[], ForwardedHeader::XForwardedFor, &h), ip("10.0.0.1"));
    }

    #[test]
    fn untrusted_peer_is_limited_by_its_own_address_whatever_it_sends() {
        assert_eq!(xff("203.0.113.5", &["198.51.100.1"]), ip("203.0.113.5"));
        assert_eq!(xff("203.0.113.5", &["10.0.0.9"]), ip("203.0.113.5"), "claiming to be a proxy changes nothing");
        assert_eq!(fwd("203.0.113.5", &["for=198.51.100.1"]), ip("203.0.113.5"));
    }

    #[test]
    fn trusted_peer_without_header_is_the_client() {
        assert_eq!(xff("10.0.0.1", &[]), ip("10.0.0.1"));
        assert_eq!(xff("10.0.0.1", &[""]), ip("10.0.0.1"), "an empty header lists nobody");
    }

    #[test]
    fn trusted_peer_forwards_its_client() {
        assert_eq!(xff("10.0.0.1", &["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(xff("::1", &["2001:db8::7"]), ip("2001:db8::7"));
    }

    #[test]
    fn prepended_fake_entries_cannot_pick_the_address() {
        // The client sent `X-Forwarded-For: 1.1.1.1`; the proxy appended what it saw.
        assert_eq!(xff("10.0.0.1", &["1.1.1.1, 198.51.100.1"]), ip("198.51.100.1"));
        // Even a fake entry that looks like a trusted proxy's only stands left of the real one.
        assert_eq!(xff("10.0.0.1", &["1.1.1.1, 10.0.0.2, 198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(fwd("10.0.0.1", &["for=1.1.1.1, for=198.51.100.1"]), ip("198.51.100.1"));
    }

    #[test]
    fn chains_of_trusted_proxies_are_skipped_from_the_right() {
        // client -> 10.0.0.3 -> 10.0.0.2 -> (peer) 10.0.0.1
        assert_eq!(xff("10.0.0.1", &["198.51.100.1, 10.0.0.3, 10.0.0.2"]), ip("198.51.100.1"));
        assert_eq!(xff("10.0.0.1", &["1.1.1.1, 198.51.100.1, 10.0.0.3, 10.0.0.2"]), ip("198.51.100.1"));
    }

    #[test]
    fn only_trusted_hops_means_the_leftmost_of_them() {
        assert_eq!(xff("10.0.0.1", &["10.0.0.3, 10.0.0.2"]), ip("10.0.0.3"));
    }

    #[test]
    fn several_header_lines_are_one_list() {
        assert_eq!(xff("10.0.0.1", &["1.1.1.1", "198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(xff("10.0.0.1", &["198.51.100.1", "10.0.0.2"]), ip("198.51.100.1"));
    }

    #[test]
    fn xff_entries_with_ports_and_brackets() {
        assert_eq!(xff("10.0.0.1", &["198.51.100.1:4711"]), ip("198.51.100.1"));
        assert_eq!(xff("10.0.0.1", &["[2001:db8::1]:4711"]), ip("2001:db8::1"));
        assert_eq!(xff("10.0.0.1", &["[2001:db8::1]"]), ip("2001:db8::1"));
        assert_eq!(xff("10.0.0.1", &["  198.51.100.1 ,, "]), ip("198.51.100.1"), "spaces and empty elements");
    }

    #[test]
    fn ipv4_mapped_addresses_are_canonical() {
        assert_eq!(xff("::ffff:10.0.0.1", &["198.51.100.1"]), ip("198.51.100.1"), "a mapped peer is trusted");
        assert_eq!(xff("10.0.0.1", &["::ffff:198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(xff("203.0.113.1", &[]), ip("203.0.113.1"));
        assert_eq!(
            client_ip(ip("::ffff:203.0.113.1"), &[], ForwardedHeader::XForwardedFor, &HeaderMap::new()),
            ip("203.0.113.1"),
            "one client, one budget"
        );
    }

    #[test]
    fn malformed_entries_fall_back_to_the_nearest_trusted_hop() {
        assert_eq!(xff("10.0.0.1", &["garbage"]), ip("10.0.0.1"));
        assert_eq!(xff("10.0.0.1", &["198.51.100.1, unknown"]), ip("10.0.0.1"), "the peer wrote `unknown`");
        assert_eq!(xff("10.0.0.1", &["198.51.100.1, nope, 10.0.0.2"]), ip("10.0.0.2"), "10.0.0.2 wrote `nope`");
        assert_eq!(xff("10.0.0.1", &["198.51.100.1:99999"]), ip("10.0.0.1"), "port out of range");
        assert_eq!(xff("10.0.0.1", &["[2001:db8::1]x"]), ip("10.0.0.1"));
        assert_eq!(xff("10.0.0.1", &["[198.51.100.1]"]), ip("10.0.0.1"), "brackets are for IPv6");
        // An untrusted entry right of a malformed one is found before the malformed one matters.
        assert_eq!(xff("10.0.0.1", &["junk, 198.51.100.1"]), ip("198.51.100.1"));
    }

    #[test]
    fn a_header_line_that_is_not_text_is_malformed() {
        let mut h = headers("x-forwarded-for", &["198.51.100.1"]);
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").expect("opaque value"));
        let trusted = cidrs(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &trusted, ForwardedHeader::XForwardedFor, &h), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_for_values() {
        assert_eq!(fwd("10.0.0.1", &["for=198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(fwd("10.0.0.1", &["For=198.51.100.1"]), ip("198.51.100.1"), "names are case-insensitive");
        assert_eq!(fwd("10.0.0.1", &["for=\"198.51.100.1:4711\""]), ip("198.51.100.1"));
        assert_eq!(fwd("10.0.0.1", &["for=\"[2001:db8:cafe::17]:4711\""]), ip("2001:db8:cafe::17"));
        assert_eq!(fwd("10.0.0.1", &["for=\"[2001:db8:cafe::17]\""]), ip("2001:db8:cafe::17"));
        assert_eq!(fwd("10.0.0.1", &["for=\"198.51.100.1:_abc\""]), ip("198.51.100.1"), "obfuscated port");
        assert_eq!(fwd("10.0.0.1", &["for=\"\\1\\98.51.100.1\""]), ip("198.51.100.1"), "quoted pairs");
        assert_eq!(fwd("10.0.0.1", &["proto=https;for=198.51.100.1;by=10.0.0.1"]), ip("198.51.100.1"));
        assert_eq!(fwd("10.0.0.1", &[" for = 198.51.100.1 ; proto=http "]), ip("198.51.100.1"));
    }

    #[test]
    fn forwarded_chains_and_quoted_separators() {
        let line = "for=192.0.2.43, for=\"[2001:db8:cafe::17]\";proto=\"a,b;c\", for=10.0.0.2";
        assert_eq!(fwd("10.0.0.1", &[line]), ip("2001:db8:cafe::17"));
        assert_eq!(fwd("10.0.0.1", &["for=1.1.1.1", "for=198.51.100.1;proto=https"]), ip("198.51.100.1"));
    }

    #[test]
    fn forwarded_unknown_and_obfuscated_fall_back() {
        assert_eq!(fwd("10.0.0.1", &["for=198.51.100.1, for=unknown"]), ip("10.0.0.1"));
        assert_eq!(fwd("10.0.0.1", &["for=198.51.100.1, for=_hidden, for=10.0.0.2"]), ip("10.0.0.2"));
        assert_eq!(fwd("10.0.0.1", &["proto=https"]), ip("10.0.0.1"), "an element without for=");
        assert_eq!(fwd("10.0.0.1", &["for=198.51.100.1;for=1.1.1.1"]), ip("10.0.0.1"), "two for= in one hop");
        assert_eq!(fwd("10.0.0.1", &["for=\"198.51.100.1"]), ip("10.0.0.1"), "unterminated quote");
        assert_eq!(fwd("10.0.0.1", &["for=198.51.100.1, for=\"1.1.1.1"]), ip("10.0.0.1"));
        assert_eq!(fwd("10.0.0.1", &["for"]), ip("10.0.0.1"), "no value");
        assert_eq!(fwd("10.0.0.1", &["for=2001:db8::1"]), ip("2001:db8::1"), "unquoted IPv6 is read leniently");
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let mut h = headers("forwarded", &["for=1.1.1.1"]);
        h.append("x-forwarded-for", "198.51.100.1".parse().expect("value"));
        let trusted = cidrs(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &trusted, ForwardedHeader::XForwardedFor, &h), ip("198.51.100.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), &trusted, ForwardedHeader::Forwarded, &h), ip("1.1.1.1"));
        let only_xff = headers("x-forwarded-for", &["198.51.100.1"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, ForwardedHeader::Forwarded, &only_xff),
            ip("10.0.0.1"),
            "an X-Forwarded-For a Forwarded-writing proxy passed through is the client's own claim"
        );
    }
}
