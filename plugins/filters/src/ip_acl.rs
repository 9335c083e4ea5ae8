//! `ip-allow` and `ip-deny`: CIDR lists on the client address.
//!
//! ```toml
//! { kind = "ip-allow", cidrs = ["10.0.0.0/8", "::1/128"] }   # others: 403
//! { kind = "ip-deny", cidrs = ["203.0.113.0/24"] }           # those: 403
//! ```
//!
//! The address is the one the gateway passes as [`RequestInfo::client_ip`], already
//! resolved through `trusted_proxies`. IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`, what
//! a dual-stack listener reports for an IPv4 client) are matched as the IPv4 address they
//! carry, in the lists as well as in requests. A bare address is a one-address network;
//! host bits after the prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`).
//!
//! The list is compiled into sorted, merged ranges: a lookup is a binary search, whatever
//! the length of the list. With no client address (a Unix socket), `ip-allow` refuses and
//! `ip-deny` lets through.

use std::net::IpAddr;

use http::StatusCode;
use ipnet::IpNet;
use serde::Deserialize;
use switchyard_plugin::{
    async_trait, Filter, FilterError, Flow, Hooks, RequestContext, RequestInfo, Response,
};

/// The configuration of `ip-allow` and `ip-deny`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrListConfig {
    /// Networks (`"10.0.0.0/8"`, `"2001:db8::/32"`) or single addresses.
    pub cidrs: Vec<String>,
}

/// A set of IPv4 and IPv6 networks, as sorted, merged ranges.
///
/// ```
/// use switchyard_filters::ip_acl::CidrSet;
///
/// let set = CidrSet::parse(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]).unwrap();
/// assert!(set.contains("10.200.0.1".parse().unwrap()));
/// assert!(set.contains("::ffff:10.0.0.1".parse().unwrap()));
/// assert!(set.contains("192.0.2.7".parse().unwrap()));
/// assert!(!set.contains("192.0.2.8".parse().unwrap()));
/// assert!(set.contains("2001:db8::1".parse().unwrap()));
/// assert!(CidrSet::parse(&["10.0.0.0/33"]).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    /// Parse networks or single addresses.
    pub fn parse<S: AsRef<str>>(cidrs: &[S]) -> Result<Self, String> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for text in cidrs {
            let text = text.as_ref().trim();
            let net = match text.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "invalid CIDR {text:?}: expected a network like \"10.0.0.0/8\" or \"2001:db8::/32\", or an address"
                        ))
                    }
                },
            };
            match net.trunc() {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => match n.network().to_ipv4_mapped() {
                    Some(a) if n.prefix_len() >= 96 => {
                        let host_bits = 128 - u32::from(n.prefix_len());
                        let start = u32::from(a);
                        let end = start | ((1u64 << host_bits) - 1) as u32;
                        v4.push((start, end));
                    }
                    _ => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
                },
            }
        }
        Ok(Self {
            v4: merge(v4),
            v6: merge(v6),
        })
    }

    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    /// Whether the set has no network.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Sort ranges and merge those that overlap or touch.
fn merge<T: Ord + Copy + num::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1.succ().is_none_or(|next| start <= next) => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && ranges[i - 1].1 >= x
}

mod num {
    /// The next integer, `None` at the maximum.
    pub trait Succ: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Succ for u32 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
}

/// The `ip-allow` (only listed clients pass) or `ip-deny` (listed clients are refused)
/// filter: 403 for the refused.
#[derive(Debug)]
pub struct IpAcl {
    set: CidrSet,
    allow: bool,
}

impl IpAcl {
    /// `ip-allow`: clients outside `config.cidrs` are refused.
    pub fn allow(config: &CidrListConfig) -> Result<Self, String> {
        Ok(Self {
            set: CidrSet::parse(&config.cidrs)?,
            allow: true,
        })
    }

    /// `ip-deny`: clients inside `config.cidrs` are refused.
    pub fn deny(config: &CidrListConfig) -> Result<Self, String> {
        Ok(Self {
            set: CidrSet::parse(&config.cidrs)?,
            allow: false,
        })
    }

    /// Whether this request's client may pass.
    pub fn permits(&self, request: &RequestInfo<'_>) -> bool {
        match request.client_ip {
            Some(ip) => self.set.contains(ip) == self.allow,
            None => !self.allow,
        }
    }
}

#[async_trait]
impl Filter for IpAcl {
    fn kind(&self) -> &'static str {
        if self.allow {
            "ip-allow"
        } else {
            "ip-deny"
        }
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            ..Hooks::NONE
        }
    }

    async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<Flow, FilterError> {
        if self.permits(&ctx.request) {
            Ok(Flow::Continue)
        } else {
            Ok(Flow::Respond(Response::text(
                StatusCode::FORBIDDEN,
                "forbidden: client address not allowed\n",
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Extensions, HeaderMap, Method, Uri};
    use switchyard_plugin::filter::block_on_ready;

    fn config(cidrs: &[&str]) -> CidrListConfig {
        CidrListConfig {
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn status(filter: &IpAcl, ip: Option<&str>) -> u16 {
        let (m, u, h) = (Method::GET, Uri::from_static("/"), HeaderMap::new());
        let mut ext = Extensions::new();
        let info = RequestInfo::new(&m, &u, &h).with_client_ip(ip.map(|s| s.parse().unwrap()));
        let mut ctx = RequestContext::new(info, &mut ext);
        match block_on_ready(filter.on_request(&mut ctx)).unwrap() {
            Flow::Continue => 200,
            Flow::Respond(r) => r.status.as_u16(),
        }
    }

    #[test]
    fn allow_list() {
        let f = IpAcl::allow(&config(&["10.0.0.0/8", "::1/128"])).unwrap();
        assert_eq!(status(&f, Some("10.1.2.3")), 200);
        assert_eq!(status(&f, Some("::1")), 200);
        assert_eq!(status(&f, Some("::ffff:10.9.9.9")), 200);
        assert_eq!(status(&f, Some("11.0.0.1")), 403);
        assert_eq!(status(&f, Some("::2")), 403);
        assert_eq!(status(&f, None), 403);
        assert_eq!(f.kind(), "ip-allow");
    }

    #[test]
    fn deny_list() {
        let f = IpAcl::deny(&config(&["203.0.113.0/24", "2001:db8::/32"])).unwrap();
        assert_eq!(status(&f, Some("203.0.113.77")), 403);
        assert_eq!(status(&f, Some("2001:db8:1::5")), 403);
        assert_eq!(status(&f, Some("203.0.114.1")), 200);
        assert_eq!(status(&f, Some("2001:db9::1")), 200);
        assert_eq!(status(&f, None), 200);
    }

    #[test]
    fn ranges_merge_and_edges_hold() {
        let set = CidrSet::parse(&[
            "10.0.0.0/9",
            "10.128.0.0/9",
            "10.1.0.0/16",
            "0.0.0.0/0",
            "255.255.255.255",
            "::ffff:192.168.0.0/112",
            "::/0",
        ])
        .unwrap();
        assert_eq!(set.v4, vec![(0, u32::MAX)]);
        assert_eq!(set.v6, vec![(0, u128::MAX)]);
        let set =
            CidrSet::parse(&["10.0.0.0/9", "10.128.0.0/9", "::ffff:192.168.0.0/112"]).unwrap();
        assert_eq!(set.v4.len(), 2, "{set:?}");
        assert!(set.contains("10.255.255.255".parse().unwrap()));
        assert!(!set.contains("11.0.0.0".parse().unwrap()));
        assert!(!set.contains("9.255.255.255".parse().unwrap()));
        assert!(set.contains("192.168.44.1".parse().unwrap()));
        assert!(!set.contains("192.169.0.1".parse().unwrap()));
        assert!(CidrSet::parse::<&str>(&[]).unwrap().is_empty());
        for bad in ["10.0.0.0/33", "nope", "10.0.0", "::/129"] {
            assert!(CidrSet::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
