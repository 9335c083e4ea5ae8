//! Validation of `[[stream]]` sections, with `FILE:LINE:COLUMN` positions like every other
//! configuration error. Called from [`crate::config::Config`]'s whole-file validation.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::config::{Config, ErrorSink, ProxyProtocolVersion, StreamProtocol, StreamSection};

use super::sni;

/// Whether two listening addresses of the same transport clash: the same port, and the
/// same address or either one the wildcard of its family (binding both would fail, or
/// silently split traffic).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// Whether a stream listens on TCP (tcp and tls-passthrough) rather than UDP.
pub fn is_tcp(protocol: StreamProtocol) -> bool {
    protocol != StreamProtocol::Udp
}

/// Check every `[[stream]]` of `config` (its upstreams and listeners already parsed).
pub fn validate(config: &Config, sink: &mut ErrorSink<'_>) {
    let upstreams: HashMap<&str, usize> = config
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.get_ref().as_str(), i))
        .collect();
    let mut names = HashSet::new();
    let mut hash_key_reported = HashSet::new();
    for (i, s) in config.streams.iter().enumerate() {
        let name = s.name.get_ref();
        if name.is_empty() {
            sink.at(
                Some(s.name.span()),
                "stream name: expected a non-empty name",
            );
        }
        if !names.insert(name.as_str()) {
            sink.at(
                Some(s.name.span()),
                format!("duplicate stream name `{name}`: names must be unique"),
            );
        }
        let protocol = *s.protocol.get_ref();
        validate_addr(config, i, s, sink);
        match (&s.upstream, protocol) {
            (None, StreamProtocol::Tcp | StreamProtocol::Udp) => sink.at(
                Some(s.name.span()),
                format!(
                    "stream `{name}` ({}) needs `upstream`: expected the name of an [[upstream]]",
                    protocol.as_str()
                ),
            ),
            (None, StreamProtocol::TlsPassthrough) if s.sni_routes.is_none() => sink.at(
                Some(s.name.span()),
                format!("stream `{name}` (tls-passthrough) needs `upstream`, `sni_routes` or both"),
            ),
            _ => {}
        }
        let mut named = Vec::new();
        if let Some(u) = &s.upstream {
            named.push(u);
        }
        if let Some(routes) = &s.sni_routes {
            if protocol != StreamProtocol::TlsPassthrough {
                sink.at(
                    Some(routes.span()),
                    format!(
                        "stream `{name}`: `sni_routes` is only for protocol = \"tls-passthrough\", not \"{}\"",
                        protocol.as_str()
                    ),
                );
            }
            if routes.get_ref().is_empty() {
                sink.at(
                    Some(routes.span()),
                    format!("stream `{name}`: `sni_routes` is empty: expected at least one entry"),
                );
            }
            let mut seen = HashSet::new();
            for r in routes.get_ref() {
                match sni::normalize_pattern(r.sni.get_ref()) {
                    Ok(p) => {
                        if !seen.insert(p) {
                            sink.at(
                                Some(r.sni.span()),
                                format!(
                                    "stream `{name}`: duplicate sni `{}` in sni_routes",
                                    r.sni.get_ref()
                                ),
                            );
                        }
                    }
                    Err(e) => sink.at(Some(r.sni.span()), format!("stream `{name}`: {e}")),
                }
                named.push(&r.upstream);
            }
        }
        for u in named {
            let Some(&index) = upstreams.get(u.get_ref().as_str()) else {
                sink.at(
                    Some(u.span()),
                    format!(
                        "stream `{name}` names upstream `{}`, which is not defined: expected the name of an [[upstream]]",
                        u.get_ref()
                    ),
                );
                continue;
            };
            let section = &config.upstreams[index];
            if let Some(key) = &section.hash_key {
                if key.get_ref() != "client-ip" && hash_key_reported.insert(index) {
                    sink.at(
                        Some(key.span()),
                        format!(
                            "upstream `{}` is used by stream `{name}`: streams hash the client address, so hash_key must be \"client-ip\" (or absent), not `{}`",
                            section.name.get_ref(),
                            key.get_ref()
                        ),
                    );
                }
            }
        }
        if let Some(m) = &s.max_connections {
            if *m.get_ref() == 0 {
                sink.at(Some(m.span()), "max_connections must be at least 1");
            }
        }
        for (key, d) in [
            ("idle_timeout", s.idle_timeout),
            ("handshake_timeout", s.handshake_timeout),
        ] {
            if d.is_some_and(|d| d.get().is_zero()) {
                sink.at(
                    Some(s.name.span()),
                    format!("stream `{name}`: {key} must be longer than 0"),
                );
            }
        }
        if protocol == StreamProtocol::Udp {
            if let Some(pp) = &s.proxy_protocol {
                if *pp.get_ref() == ProxyProtocolVersion::V1 {
                    sink.at(
                        Some(pp.span()),
                        format!(
                            "stream `{name}`: PROXY protocol v1 cannot describe UDP: use proxy_protocol = \"v2\" on a udp stream"
                        ),
                    );
                }
            }
            if s.accept_proxy_protocol {
                sink.at(
                    Some(s.name.span()),
                    format!(
                        "stream `{name}`: accept_proxy_protocol is for tcp and tls-passthrough streams, not udp"
                    ),
                );
            }
        }
        if s.accept_proxy_protocol && config.trusted_proxies.is_empty() {
            sink.at(
                Some(s.name.span()),
                format!(
                    "stream `{name}`: accept_proxy_protocol = true reads the header only from server.trusted_proxies, which is empty: list the proxies' CIDRs there"
                ),
            );
        }
    }
}

/// Addresses: no two streams of the same transport, and no TCP stream on a listener's or
/// the admin listener's address.
fn validate_addr(config: &Config, index: usize, s: &StreamSection, sink: &mut ErrorSink<'_>) {
    let addr = *s.addr.get_ref();
    let tcp = is_tcp(*s.protocol.get_ref());
    let name = s.name.get_ref();
    for other in &config.streams[..index] {
        if is_tcp(*other.protocol.get_ref()) == tcp && clash(addr, *other.addr.get_ref()) {
            sink.at(
                Some(s.addr.span()),
                format!(
                    "stream `{name}`: address `{addr}` is also stream `{}`'s ({}): stream addresses must be unique",
                    other.name.get_ref(),
                    other.addr.get_ref()
                ),
            );
        }
    }
    if !tcp {
        return;
    }
    for l in &config.listeners {
        if clash(addr, *l.addr.get_ref()) {
            sink.at(
                Some(s.addr.span()),
                format!(
                    "stream `{name}`: address `{addr}` is also listener `{}`'s ({})",
                    l.name.get_ref(),
                    l.addr.get_ref()
                ),
            );
        }
    }
    if clash(addr, config.admin.addr) {
        sink.at(
            Some(s.addr.span()),
            format!(
                "stream `{name}`: address `{addr}` is the admin listener's ({})",
                config.admin.addr
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashes() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(clash(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(clash(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(clash(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(!clash(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!clash(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!clash(a("[::]:80"), a("127.0.0.1:80")));
    }
}
