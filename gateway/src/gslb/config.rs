//! The `[gslb]` table: serde structs mirroring the TOML (`deny_unknown_fields` everywhere)
//! and the checks `-t` reports with `FILE:LINE:COLUMN`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{parse_cidr, ConfigDuration};

/// `[gslb]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GslbSection {
    /// Where the responder listens, UDP and TCP.
    pub addr: Spanned<SocketAddr>,
    /// The zone it is authoritative for.
    pub zone: Spanned<String>,
    /// TTL of A/AAAA answers (default 30 s).
    pub ttl: Option<Spanned<ConfigDuration>>,
    /// NS records of the apex; the SOA names the first (default `ns1.<zone>`).
    pub nameservers: Option<Spanned<Vec<Spanned<String>>>>,
    /// The SOA's responsible mailbox, as a name (default `hostmaster.<zone>`).
    pub hostmaster: Option<Spanned<String>>,
    /// Optional MaxMind database enabling `countries` / `continents`.
    pub geoip: Option<Spanned<String>>,
    /// `[[gslb.site]]`.
    #[serde(default)]
    pub site: Vec<SiteSection>,
    /// `[[gslb.name]]`.
    #[serde(default)]
    pub name: Vec<NameSection>,
}

/// One `[[gslb.site]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Unique name names refer to.
    pub name: Spanned<String>,
    /// The addresses an answer for this site holds (A and AAAA).
    pub addrs: Spanned<Vec<Spanned<String>>>,
    /// Geo: clients in these networks are this site's.
    #[serde(default)]
    pub cidrs: Vec<Spanned<String>>,
    /// Geo through `geoip`: ISO 3166 country codes.
    #[serde(default)]
    pub countries: Vec<Spanned<String>>,
    /// Geo through `geoip`: continent codes (AF, AN, AS, EU, NA, OC, SA).
    #[serde(default)]
    pub continents: Vec<Spanned<String>>,
    /// The site's health check; none: always up.
    pub health_check: Option<Spanned<SiteCheckSection>>,
    /// The site's load report.
    pub load: Option<Spanned<SiteLoadSection>>,
    /// For `weighted` (default 1).
    pub weight: Option<Spanned<u32>>,
}

/// `health_check = { ... }` of a site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteCheckSection {
    /// `"http"` (the default with `url`) or `"tcp"` (the default with `addr`).
    pub kind: Option<String>,
    /// HTTP checks: `http://host[:port]/path`.
    pub url: Option<String>,
    /// TCP checks: `host:port`.
    pub addr: Option<String>,
    /// Time between probes (default 5 s).
    pub interval: Option<ConfigDuration>,
    /// Probe timeout (default 1 s).
    pub timeout: Option<ConfigDuration>,
    /// Consecutive failures that mark the site down (default 3).
    pub fails: Option<u32>,
    /// Consecutive successes that mark it up (default 2).
    pub passes: Option<u32>,
    /// Each gap between probes is `interval` ± up to this (default a tenth of `interval`).
    pub jitter: Option<ConfigDuration>,
    /// Healthy statuses of HTTP checks (default `"200-399"`).
    pub expect: Option<String>,
}

/// `load = { ... }` of a site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteLoadSection {
    /// `http://host[:port]/path` answering JSON `{"load": 0.42}`.
    pub url: String,
    /// Time between polls (default 5 s).
    pub interval: Option<ConfigDuration>,
    /// Poll timeout (default 1 s).
    pub timeout: Option<ConfigDuration>,
}

/// One `[[gslb.name]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameSection {
    /// The name, relative to the zone (`"api"`), or absolute inside it.
    pub name: Spanned<String>,
    /// How a site is chosen (default `"failover"`).
    pub strategy: Option<Spanned<String>>,
    /// The candidate sites, in failover order.
    pub sites: Spanned<Vec<Spanned<String>>>,
    /// TTL of this name's answers (default `gslb.ttl`).
    pub ttl: Option<Spanned<ConfigDuration>>,
}

/// How a name picks its site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The first healthy site in `sites`.
    Failover,
    /// The healthy site matching the client, else failover order.
    Geo,
    /// The healthy site with the lowest smoothed check round trip.
    Latency,
    /// The healthy site with the lowest fresh load report.
    Load,
    /// Healthy sites at random in proportion to `weight`.
    Weighted,
}

impl Strategy {
    /// Every strategy's configuration name.
    pub const NAMES: [&'static str; 5] = ["failover", "geo", "latency", "load", "weighted"];

    /// The strategy called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "failover" => Self::Failover,
            "geo" => Self::Geo,
            "latency" => Self::Latency,
            "load" => Self::Load,
            "weighted" => Self::Weighted,
            _ => return None,
        })
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failover => "failover",
            Self::Geo => "geo",
            Self::Latency => "latency",
            Self::Load => "load",
            Self::Weighted => "weighted",
        }
    }
}

/// The continent codes MaxMind databases use.
pub const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// Whether `name` is a DNS name: dot-separated labels of 1 to 63 letters, digits, `-` or
/// `_`, at most 253 characters, with an optional trailing dot.
pub fn valid_dns_name(name: &str) -> bool {
    let bare = name.strip_suffix('.').unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The zone as a lowercase name without the trailing dot.
pub fn normalize_zone(zone: &str) -> String {
    zone.trim_end_matches('.').to_ascii_lowercase()
}

/// The absolute name (lowercase, no trailing dot) a `[[gslb.name]]` answers, or why it is
/// not inside `zone` (lowercase, no trailing dot). `"@"` is the apex; a name ending with
/// a dot, or with the zone itself, is absolute; any other is relative to the zone.
pub fn qualify(name: &str, zone: &str) -> Result<String, String> {
    if name == "@" {
        return Ok(zone.to_owned());
    }
    if !valid_dns_name(name) {
        return Err(format!(
            "invalid name `{name}`: expected a DNS name like \"api\" (relative to the zone) or \"api.{zone}.\""
        ));
    }
    let lower = name.to_ascii_lowercase();
    let in_zone = |n: &str| n == zone || n.ends_with(&format!(".{zone}"));
    if let Some(abs) = lower.strip_suffix('.') {
        if in_zone(abs) {
            return Ok(abs.to_owned());
        }
        return Err(format!(
            "name `{name}` is outside the zone `{zone}`: expected a name ending with \"{zone}.\" or a name relative to the zone"
        ));
    }
    if in_zone(&lower) {
        return Ok(lower);
    }
    Ok(format!("{lower}.{zone}"))
}

/// Where an `http://host[:port]/path` URL points: (host:port for `Host`, socket, path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpTarget {
    /// The authority, as the `Host` header carries it.
    pub host: String,
    /// Where to connect.
    pub socket: SocketAddr,
    /// Path and query.
    pub path: String,
}

/// Parse and resolve an `http://` URL (`what` names it in errors).
pub fn http_target(url: &str, what: &str) -> Result<HttpTarget, String> {
    let bad = || {
        format!("{what} `{url}`: expected an http:// URL like \"http://192.0.2.10:8080/health\"")
    };
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?;
    if authority.as_str().contains('@') {
        return Err(bad());
    }
    let host = authority.host();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    let socket = resolve_host_port(host.trim_start_matches('[').trim_end_matches(']'), port)
        .map_err(|e| format!("{what} `{url}`: {e}"))?;
    Ok(HttpTarget {
        host: authority.as_str().to_owned(),
        socket,
        path,
    })
}

fn resolve_host_port(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve `{host}`: no address"))
}

/// Parse and resolve a `host:port` check address.
pub fn tcp_target(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = || format!("health_check.addr `{addr}`: expected host:port, like \"192.0.2.10:443\"");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    resolve_host_port(host, port).map_err(|e| format!("health_check.addr `{addr}`: {e}"))
}

/// A site's check, with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SiteCheck {
    /// The gateway's health check (probe kind, interval, timeout, fails, passes).
    pub check: crate::health::HealthCheck,
    /// Where to connect.
    pub socket: SocketAddr,
    /// The `Host` header of HTTP checks.
    pub host: String,
    /// The most a gap between probes moves from `interval`.
    pub jitter: Duration,
}

impl SiteCheck {
    /// The check a site's `health_check` table describes.
    pub fn from_section(s: &SiteCheckSection) -> Result<Self, String> {
        let kind = match (s.kind.as_deref(), &s.url, &s.addr) {
            (Some("http") | None, Some(_), None) => "http",
            (Some("tcp") | None, None, Some(_)) => "tcp",
            (Some(k), _, _) if k != "http" && k != "tcp" => {
                return Err(format!(
                    "health_check.kind `{k}`: expected \"http\" (with `url`) or \"tcp\" (with `addr`)"
                ))
            }
            (Some("http"), _, _) => {
                return Err("health_check: kind = \"http\" needs `url` (and no `addr`)".into())
            }
            (Some("tcp"), _, _) => {
                return Err("health_check: kind = \"tcp\" needs `addr` (and no `url`)".into())
            }
            _ => {
                return Err(
                    "health_check: expected exactly one of `url` (an HTTP check) or `addr` (a TCP check)"
                        .into(),
                )
            }
        };
        let section = crate::config::HealthCheckSection {
            kind: Some(kind.to_owned()),
            path: None,
            interval: s.interval,
            timeout: s.timeout,
            fails: s.fails,
            passes: s.passes,
            host: None,
            expect: s.expect.clone(),
        };
        let (socket, host, path) = match (kind, &s.url, &s.addr) {
            ("http", Some(url), _) => {
                let t = http_target(url, "health_check.url")?;
                (t.socket, t.host, Some(t.path))
            }
            (_, _, Some(addr)) => (tcp_target(addr)?, addr.clone(), None),
            _ => return Err("health_check: expected `url` or `addr`".into()),
        };
        let section = crate::config::HealthCheckSection { path, ..section };
        let check = crate::health::HealthCheck::from_section(&section, false)?;
        let check = match check.kind {
            crate::health::CheckKind::Http {
                path,
                expect_min,
                expect_max,
                ..
            } => crate::health::HealthCheck {
                kind: crate::health::CheckKind::Http {
                    path,
                    host: Some(host.clone()),
                    expect_min,
                    expect_max,
                },
                ..check
            },
            _ => check,
        };
        let jitter = s.jitter.map_or(check.interval / 10, |j| j.get());
        if jitter >= check.interval {
            return Err(format!(
                "health_check.jitter {jitter:?}: expected less than the interval ({:?})",
                check.interval
            ));
        }
        Ok(Self {
            check,
            socket,
            host,
            jitter,
        })
    }
}

/// A site's load poll, with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoadPoll {
    /// Where the report is.
    pub target: HttpTarget,
    /// Time between polls.
    pub interval: Duration,
    /// Bound on one poll.
    pub timeout: Duration,
}

impl LoadPoll {
    /// The poll a site's `load` table describes.
    pub fn from_section(s: &SiteLoadSection) -> Result<Self, String> {
        let target = http_target(&s.url, "load.url")?;
        let interval = s.interval.map_or(Duration::from_secs(5), |d| d.get());
        let timeout = s.timeout.map_or(Duration::from_secs(1), |d| d.get());
        if interval.is_zero() || timeout.is_zero() {
            return Err("load: interval and timeout must be more than 0".into());
        }
        Ok(Self {
            target,
            interval,
            timeout,
        })
    }
}

/// The most seconds a TTL may have (RFC 2181: 2^31 - 1).
const MAX_TTL: u64 = (1 << 31) - 1;

fn ttl_error(ttl: &Spanned<ConfigDuration>) -> Option<String> {
    (ttl.get_ref().get().as_secs() > MAX_TTL)
        .then(|| format!("ttl: expected at most {MAX_TTL} seconds"))
}

/// Every problem with a `[gslb]` table, with the position of what is wrong.
pub fn validate(g: &GslbSection) -> Vec<(Option<Range<usize>>, String)> {
    let mut errors: Vec<(Option<Range<usize>>, String)> = Vec::new();
    let mut err = |span: Range<usize>, msg: String| errors.push((Some(span), msg));
    let zone_ok = valid_dns_name(g.zone.get_ref());
    if !zone_ok {
        err(
            g.zone.span(),
            format!(
                "invalid zone `{}`: expected a DNS name like \"gslb.example.com\"",
                g.zone.get_ref()
            ),
        );
    }
    let zone = normalize_zone(g.zone.get_ref());
    if let Some(ns) = &g.nameservers {
        if ns.get_ref().is_empty() {
            err(
                ns.span(),
                "nameservers: expected at least one name server".into(),
            );
        }
        for n in ns.get_ref() {
            if !valid_dns_name(n.get_ref()) {
                err(
                    n.span(),
                    format!(
                        "invalid name server `{}`: expected a DNS name like \"ns1.example.com\"",
                        n.get_ref()
                    ),
                );
            }
        }
    }
    if let Some(h) = &g.hostmaster {
        if !valid_dns_name(h.get_ref()) {
            err(
                h.span(),
                format!(
                    "invalid hostmaster `{}`: expected a name like \"hostmaster.example.com\"",
                    h.get_ref()
                ),
            );
        }
    }
    if let Some(path) = &g.geoip {
        if let Err(e) = super::geo::GeoDb::open(path.get_ref()) {
            err(path.span(), format!("geoip `{}`: {e}", path.get_ref()));
        }
    }
    let mut sites = HashSet::new();
    for s in &g.site {
        let name = s.name.get_ref();
        if name.is_empty() || name.len() > 64 || name.contains(['/', ' ', '"']) {
            err(
                s.name.span(),
                format!("invalid site name `{name}`: expected a short name like \"eu-west\""),
            );
        }
        if !sites.insert(name.clone()) {
            err(
                s.name.span(),
                format!("duplicate site name `{name}`: names must be unique"),
            );
        }
        if s.addrs.get_ref().is_empty() {
            err(
                s.addrs.span(),
                format!("site `{name}` has no addrs: expected at least one IPv4 or IPv6 address"),
            );
        }
        let mut seen = HashSet::new();
        for a in s.addrs.get_ref() {
            match a.get_ref().parse::<IpAddr>() {
                Ok(ip) => {
                    if !seen.insert(ip) {
                        err(a.span(), format!("duplicate address `{ip}` in site `{name}`"));
                    }
                }
                Err(_) => err(
                    a.span(),
                    format!(
                        "invalid address `{}`: expected an IPv4 or IPv6 address like \"192.0.2.10\" or \"2001:db8::10\"",
                        a.get_ref()
                    ),
                ),
            }
        }
        for c in &s.cidrs {
            if parse_cidr(c.get_ref()).is_none() {
                err(
                    c.span(),
                    format!(
                        "invalid CIDR `{}`: expected a network like \"10.1.0.0/16\" or \"2001:db8::/32\"",
                        c.get_ref()
                    ),
                );
            }
        }
        for c in &s.countries {
            let code = c.get_ref();
            if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                err(
                    c.span(),
                    format!("invalid country `{code}`: expected an ISO 3166 code like \"DE\""),
                );
            }
        }
        for c in &s.continents {
            if !CONTINENTS.contains(&c.get_ref().as_str()) {
                err(
                    c.span(),
                    format!(
                        "invalid continent `{}`: expected one of {}",
                        c.get_ref(),
                        CONTINENTS.join(", ")
                    ),
                );
            }
        }
        if g.geoip.is_none() {
            if let Some(c) = s.countries.first().or(s.continents.first()) {
                err(
                    c.span(),
                    format!(
                        "site `{name}`: `countries` and `continents` need `gslb.geoip` (a MaxMind database)"
                    ),
                );
            }
        }
        if let Some(hc) = &s.health_check {
            if let Err(e) = SiteCheck::from_section(hc.get_ref()) {
                err(hc.span(), format!("site `{name}`: {e}"));
            }
        }
        if let Some(l) = &s.load {
            if let Err(e) = LoadPoll::from_section(l.get_ref()) {
                err(l.span(), format!("site `{name}`: {e}"));
            }
        }
        if let Some(w) = &s.weight {
            if *w.get_ref() == 0 {
                err(w.span(), "weight must be at least 1".into());
            }
        }
    }
    let mut names = HashSet::new();
    for n in &g.name {
        if zone_ok {
            match qualify(n.name.get_ref(), &zone) {
                Ok(abs) => {
                    if !names.insert(abs.clone()) {
                        err(
                            n.name.span(),
                            format!(
                                "duplicate name `{}` ({abs}): names must be unique (they compare case-insensitively)",
                                n.name.get_ref()
                            ),
                        );
                    }
                }
                Err(e) => err(n.name.span(), e),
            }
        }
        if let Some(s) = &n.strategy {
            if Strategy::parse(s.get_ref()).is_none() {
                err(
                    s.span(),
                    format!(
                        "unknown strategy `{}`, expected one of: {}",
                        s.get_ref(),
                        Strategy::NAMES.join(", ")
                    ),
                );
            }
        }
        if n.sites.get_ref().is_empty() {
            err(
                n.sites.span(),
                format!(
                    "name `{}` has no sites: expected at least one [[gslb.site]] name",
                    n.name.get_ref()
                ),
            );
        }
        let mut listed = HashSet::new();
        for s in n.sites.get_ref() {
            if !sites.contains(s.get_ref()) {
                err(
                    s.span(),
                    format!(
                        "name `{}` names site `{}`, which is not defined: expected the name of a [[gslb.site]]",
                        n.name.get_ref(),
                        s.get_ref()
                    ),
                );
            } else if !listed.insert(s.get_ref().clone()) {
                err(
                    s.span(),
                    format!(
                        "site `{}` is listed twice in name `{}`",
                        s.get_ref(),
                        n.name.get_ref()
                    ),
                );
            }
        }
        if let Some(t) = &n.ttl {
            if let Some(e) = ttl_error(t) {
                err(t.span(), e);
            }
        }
    }
    if let Some(t) = &g.ttl {
        if let Some(e) = ttl_error(t) {
            err(t.span(), e);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_qualified_inside_the_zone() {
        let z = "gslb.example.com";
        assert_eq!(qualify("api", z).unwrap(), "api.gslb.example.com");
        assert_eq!(qualify("API.v2", z).unwrap(), "api.v2.gslb.example.com");
        assert_eq!(qualify("@", z).unwrap(), z);
        assert_eq!(
            qualify("Api.Gslb.Example.Com.", z).unwrap(),
            "api.gslb.example.com"
        );
        assert_eq!(
            qualify("api.gslb.example.com", z).unwrap(),
            "api.gslb.example.com"
        );
        assert!(qualify("api.example.org.", z)
            .unwrap_err()
            .contains("outside the zone"));
        assert!(qualify("xgslb.example.com.", z).is_err());
        assert!(qualify("bad name", z).is_err());
        assert!(qualify("", z).is_err());
    }

    #[test]
    fn dns_names_and_urls() {
        assert!(valid_dns_name("ns1.example.com."));
        assert!(!valid_dns_name("a..b"));
        assert!(!valid_dns_name(&"a".repeat(64)));
        let t = http_target("http://127.0.0.1:8080/health?x=1", "url").unwrap();
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.socket, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/health?x=1");
        let t = http_target("http://[::1]/", "url").unwrap();
        assert_eq!(t.socket, "[::1]:80".parse().unwrap());
        assert!(http_target("https://127.0.0.1/", "url").is_err());
        assert!(http_target("127.0.0.1/health", "url").is_err());
        assert!(tcp_target("127.0.0.1:443").is_ok());
        assert!(tcp_target("127.0.0.1").is_err());
    }

    #[test]
    fn checks_get_defaults_and_are_checked() {
        let s: SiteCheckSection = toml::from_str("url = \"http://127.0.0.1:9/hc\"").unwrap();
        let c = SiteCheck::from_section(&s).unwrap();
        assert_eq!(c.check.interval, Duration::from_secs(5));
        assert_eq!(c.jitter, Duration::from_millis(500));
        assert!(matches!(
            &c.check.kind,
            crate::health::CheckKind::Http { path, host: Some(h), .. } if path == "/hc" && h == "127.0.0.1:9"
        ));
        let s: SiteCheckSection = toml::from_str("addr = \"127.0.0.1:9\"").unwrap();
        assert_eq!(
            SiteCheck::from_section(&s).unwrap().check.kind,
            crate::health::CheckKind::Tcp
        );
        for bad in [
            "kind = \"tcp\"\nurl = \"http://127.0.0.1/\"",
            "kind = \"icmp\"\naddr = \"127.0.0.1:1\"",
            "url = \"http://127.0.0.1/\"\naddr = \"127.0.0.1:1\"",
            "",
            "addr = \"127.0.0.1:1\"\ninterval = \"1s\"\njitter = \"1s\"",
            "addr = \"127.0.0.1:1\"\nfails = 0",
        ] {
            let s: SiteCheckSection = toml::from_str(bad).unwrap();
            assert!(SiteCheck::from_section(&s).is_err(), "{bad}");
        }
    }

    fn errors(text: &str) -> Vec<String> {
        let g: GslbSection = toml::from_str(text).unwrap();
        validate(&g).into_iter().map(|(_, m)| m).collect()
    }

    #[test]
    fn validation_reports_every_problem() {
        let e = errors(
            r#"
addr = "127.0.0.1:53"
zone = "gslb.example.com"
[[site]]
name = "eu"
addrs = ["192.0.2.1", "192.0.2.1", "x"]
cidrs = ["10.0.0.0/8", "10.0.0.0/40"]
countries = ["de"]
continents = ["XX"]
weight = 0
[[site]]
name = "eu"
addrs = []
[[name]]
name = "api"
sites = ["eu", "eu", "mars"]
strategy = "closest"
[[name]]
name = "API"
sites = []
"#,
        );
        for want in [
            "duplicate address",
            "invalid address `x`",
            "invalid CIDR `10.0.0.0/40`",
            "invalid country `de`",
            "invalid continent `XX`",
            "need `gslb.geoip`",
            "weight must be at least 1",
            "duplicate site name `eu`",
            "has no addrs",
            "listed twice",
            "site `mars`, which is not defined",
            "unknown strategy `closest`",
            "duplicate name `API`",
            "has no sites",
        ] {
            assert!(e.iter().any(|m| m.contains(want)), "no {want:?} in {e:#?}");
        }
        assert!(errors("addr = \"127.0.0.1:53\"\nzone = \"bad zone\"")[0].contains("invalid zone"));
        assert!(errors(
            "addr = \"127.0.0.1:53\"\nzone = \"z.test\"\ngeoip = \"/nonexistent.mmdb\""
        )[0]
        .contains("MaxMind"));
    }
}
