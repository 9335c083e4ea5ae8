//! Configuration: the TOML file format ([`file`](mod@file)), parsed section by section so that every
//! error in the file is reported at once, then validated as a whole.
//!
//! Every error names `FILE:LINE:COLUMN` and what was expected (see [`ConfigError`]).

pub mod duration;
pub mod error;
pub mod file;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::Path;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use switchyard_plugin::Registry;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

pub use duration::{parse_duration, ConfigDuration};
pub use error::{ConfigError, ConfigErrors, ErrorSink};
pub use file::*;

/// The filter kinds the configuration accepts (see the contract's filter list).
pub const FILTER_KINDS: &[&str] = &switchyard_filters::KINDS;

/// A parsed and validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: String,
    /// `[server]`.
    pub server: ServerSection,
    /// `[admin]`.
    pub admin: AdminSection,
    /// `[session_store]`.
    pub session_store: SessionStoreSection,
    /// `[[listener]]`, in file order.
    pub listeners: Vec<ListenerSection>,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteSection>,
    /// `[[upstream]]`, in file order.
    pub upstreams: Vec<UpstreamSection>,
    /// `[[stream]]` (L4 listeners), in file order.
    pub streams: Vec<StreamSection>,
    /// `trusted_proxies`, parsed.
    pub trusted_proxies: Vec<IpNet>,
    /// Each upstream's backends, resolved to socket addresses (same order as the file).
    pub resolved: Vec<Vec<SocketAddr>>,
    /// Each route's filters, built and checked (same order as `routes`).
    pub route_filters: Vec<std::sync::Arc<switchyard_filters::RouteFilters>>,
    /// `[gslb]`, the authoritative DNS responder.
    pub gslb: Option<GslbSection>,
}

impl Config {
    /// Read, parse and validate the file at `path`.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: name.clone(),
                line: None,
                column: None,
                message: format!("cannot read the configuration file: {e}"),
            }])
        })?;
        Self::parse(&name, &text, registry)
    }

    /// Parse and validate configuration text; `name` is used in error messages.
    pub fn parse(name: &str, text: &str, registry: &Registry) -> Result<Config, ConfigErrors> {
        let mut sink = ErrorSink::new(name, text);
        let (doc, syntax) = DeTable::parse_recoverable(text);
        for e in &syntax {
            sink.toml(e);
        }
        if !syntax.is_empty() {
            return Err(ConfigErrors(sink.errors));
        }
        let mut server = None;
        let mut admin = None;
        let mut session_store = None;
        let mut listeners = Vec::new();
        let mut listener_tables = 0;
        let mut routes = Vec::new();
        let mut upstreams = Vec::new();
        let mut streams = Vec::new();
        let mut stream_tables = 0;
        let mut gslb = None;
        for (key, value) in doc.get_ref().iter() {
            match key.get_ref().as_ref() {
                "server" => server = section::<ServerSection>(&mut sink, value),
                "admin" => admin = section::<AdminSection>(&mut sink, value),
                "session_store" => session_store = section::<SessionStoreSection>(&mut sink, value),
                "listener" => {
                    listener_tables = value.get_ref().as_array().map_or(1, |a| a.len());
                    listeners = array::<ListenerSection>(&mut sink, "listener", value);
                }
                "route" => routes = array::<RouteSection>(&mut sink, "route", value),
                "upstream" => upstreams = array::<UpstreamSection>(&mut sink, "upstream", value),
                "stream" => {
                    stream_tables = value.get_ref().as_array().map_or(1, |a| a.len());
                    streams = array::<StreamSection>(&mut sink, "stream", value);
                }
                "gslb" => gslb = section::<GslbSection>(&mut sink, value),
                other => sink.at(
                    Some(key.span()),
                    format!(
                        "unknown section `{other}`, expected one of `server`, `admin`, `session_store`, `listener`, `route`, `upstream`, `stream`, `gslb`"
                    ),
                ),
            }
        }
        let mut config = Config {
            path: name.to_owned(),
            server: server.unwrap_or_default(),
            admin: admin.unwrap_or_default(),
            session_store: session_store.unwrap_or_default(),
            listeners,
            routes,
            upstreams,
            streams,
            trusted_proxies: Vec::new(),
            resolved: Vec::new(),
            route_filters: Vec::new(),
            gslb: None,
        };
        if let Some(g) = gslb {
            for (span, message) in crate::gslb::config::validate(&g) {
                sink.at(span, message);
            }
            config.gslb = Some(g);
        }
        config.validate(&mut sink, registry, listener_tables, stream_tables);
        if sink.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(sink.into_sorted()))
        }
    }

    fn validate(
        &mut self,
        sink: &mut ErrorSink<'_>,
        registry: &Registry,
        listener_tables: usize,
        stream_tables: usize,
    ) {
        let s = &self.server;
        if s.threads == 0 {
            sink.at(None, "server.threads: expected at least 1");
        }
        if s.max_header_bytes < 1024 {
            sink.at(None, "server.max_header_bytes: expected at least 1024");
        }
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&s.log_level.as_str()) {
            sink.at(
                None,
                format!(
                    "server.log_level: unknown level `{}`, expected one of error, warn, info, debug, trace, off",
                    s.log_level
                ),
            );
        }
        if s.access_log.is_empty() {
            sink.at(
                None,
                "server.access_log: expected \"stdout\", \"off\" or a file path",
            );
        }
        for cidr in &s.trusted_proxies {
            match parse_cidr(cidr.get_ref()) {
                Some(net) => self.trusted_proxies.push(net),
                None => sink.at(
                    Some(cidr.span()),
                    format!(
                        "invalid CIDR `{}` in trusted_proxies: expected an address or network like \"10.0.0.0/8\" or \"::1/128\"",
                        cidr.get_ref()
                    ),
                ),
            }
        }
        if let Some(t) = &self.admin.token {
            if t.is_empty() {
                sink.at(None, "admin.token: expected a non-empty token");
            }
        }
        let store = &self.session_store;
        if *store.kind.get_ref() == SessionStoreKind::Redis
            && store.url.is_some() == store.nodes.is_some()
        {
            sink.at(
                Some(store.kind.span()),
                "session_store: kind = \"redis\" needs exactly one of `url` (single Redis) or `nodes` (Redis Cluster)",
            );
        } else if let Err(e) = crate::affinity::store_config(store).validate() {
            sink.at(span_of(&store.kind), e.to_string());
        }

        // Listeners.
        // Something must serve traffic: HTTP listeners, L4 streams or the GSLB responder.
        let serves_traffic = listener_tables > 0 || stream_tables > 0 || self.gslb.is_some();
        if !serves_traffic {
            sink.at(
                None,
                "no [[listener]], no [[stream]] and no [gslb]: expected at least one listener, stream or gslb responder",
            );
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for l in &self.listeners {
            if !names.insert(l.name.get_ref().clone()) {
                sink.at(
                    Some(l.name.span()),
                    format!(
                        "duplicate listener name `{}`: names must be unique",
                        l.name.get_ref()
                    ),
                );
            }
            if !addrs.insert(*l.addr.get_ref()) {
                sink.at(
                    Some(l.addr.span()),
                    format!("duplicate listener address `{}`", l.addr.get_ref()),
                );
            }
            if *l.addr.get_ref() == self.admin.addr {
                sink.at(
                    Some(l.addr.span()),
                    "listener address is the admin listener's: admin endpoints are never served on a public listener",
                );
            }
            if let Some(tls) = &l.tls {
                for e in crate::tls::validate_listener(l) {
                    sink.at(Some(tls.span()), e);
                }
            }
            if !l.sni.is_empty() && l.tls.is_none() {
                sink.at(
                    Some(l.name.span()),
                    "`sni` needs `tls` on the same listener",
                );
            }
        }
        if self.listeners.iter().any(|l| l.redirect_https)
            && !self.listeners.iter().any(|l| l.tls.is_some())
        {
            let l = self
                .listeners
                .iter()
                .find(|l| l.redirect_https)
                .expect("found above");
            sink.at(
                Some(l.name.span()),
                "redirect_https needs a TLS listener to send clients to: add `tls` to another [[listener]]",
            );
        }
        if self.listeners.len() > 64 {
            sink.at(None, "at most 64 listeners are supported");
        }

        // Upstreams.
        let mut upstream_names = HashSet::new();
        for u in &self.upstreams {
            if !upstream_names.insert(u.name.get_ref().clone()) {
                sink.at(
                    Some(u.name.span()),
                    format!(
                        "duplicate upstream name `{}`: names must be unique",
                        u.name.get_ref()
                    ),
                );
            }
            if let Some(factory) = registry.balancer(u.algorithm.get_ref()) {
                // Build the balancer once now, so that options it refuses (an unusable
                // hash_key, a bad plugin option) are configuration errors with a position.
                let backends: Vec<switchyard_plugin::Backend> = u
                    .backends
                    .get_ref()
                    .iter()
                    .map(|b| {
                        switchyard_plugin::Backend::new(
                            b.addr.get_ref().clone(),
                            *b.weight.get_ref(),
                        )
                    })
                    .collect();
                if let Err(e) = factory.build(&backends, &balancer_options(u)) {
                    let span = u
                        .options
                        .as_ref()
                        .map(|o| o.span())
                        .or_else(|| u.hash_key.as_ref().map(|k| k.span()))
                        .or_else(|| span_of(&u.algorithm))
                        .unwrap_or_else(|| u.name.span());
                    sink.at(
                        Some(span),
                        format!(
                            "upstream `{}` ({}): {e}",
                            u.name.get_ref(),
                            u.algorithm.get_ref()
                        ),
                    );
                }
            }
            if registry.balancer(u.algorithm.get_ref()).is_none() {
                let known: Vec<_> = registry.balancer_names().collect();
                sink.at(
                    Some(u.algorithm.span()),
                    format!(
                        "unknown algorithm `{}`, expected one of: {}",
                        u.algorithm.get_ref(),
                        known.join(", ")
                    ),
                );
            }
            if u.backends.get_ref().is_empty() {
                sink.at(
                    Some(u.backends.span()),
                    format!(
                        "upstream `{}` has no backends: expected at least one",
                        u.name.get_ref()
                    ),
                );
            }
            let mut resolved = Vec::new();
            let mut seen = HashSet::new();
            for b in u.backends.get_ref() {
                if *b.weight.get_ref() == 0 {
                    sink.at(Some(b.weight.span()), "weight must be at least 1");
                }
                if !seen.insert(b.addr.get_ref().clone()) {
                    sink.at(
                        Some(b.addr.span()),
                        format!(
                            "duplicate backend `{}` in upstream `{}`",
                            b.addr.get_ref(),
                            u.name.get_ref()
                        ),
                    );
                }
                match resolve(b.addr.get_ref()) {
                    Ok(a) => resolved.push(a),
                    Err(msg) => {
                        sink.at(Some(b.addr.span()), msg);
                        resolved.push(SocketAddr::from(([0, 0, 0, 0], 0)));
                    }
                }
            }
            self.resolved.push(resolved);
            let tiers: HashSet<u32> = u.backends.get_ref().iter().map(|b| b.priority).collect();
            if tiers.len() > crate::tiers::MAX_TIERS {
                sink.at(
                    Some(u.backends.span()),
                    format!(
                        "upstream `{}` uses {} priorities: expected at most {}",
                        u.name.get_ref(),
                        tiers.len(),
                        crate::tiers::MAX_TIERS
                    ),
                );
            }
            if let Some(key) = &u.hash_key {
                if let Err(msg) = validate_hash_key(key.get_ref()) {
                    sink.at(Some(key.span()), msg);
                }
            }
            for msg in crate::health::validate(u) {
                sink.at(Some(u.name.span()), msg);
            }
            for e in crate::tls::validate_upstream(u) {
                sink.at(Some(u.name.span()), e);
            }
            if let Some(a) = &u.affinity {
                if a.kind != "cookie" && a.kind != "session" {
                    sink.at(
                        Some(u.name.span()),
                        format!(
                            "affinity.kind `{}`: expected \"cookie\" or \"session\"",
                            a.kind
                        ),
                    );
                }
                for e in crate::affinity::validate_section(a) {
                    sink.at(Some(u.name.span()), e);
                }
            }
        }

        // Routes.
        let mut route_names = HashSet::new();
        let mut route_filters = Vec::with_capacity(self.routes.len());
        for r in &self.routes {
            if !route_names.insert(r.name.get_ref().clone()) {
                sink.at(
                    Some(r.name.span()),
                    format!(
                        "duplicate route name `{}`: names must be unique",
                        r.name.get_ref()
                    ),
                );
            }
            if !upstream_names.contains(r.upstream.get_ref()) {
                sink.at(
                    Some(r.upstream.span()),
                    format!(
                        "route `{}` names upstream `{}`, which is not defined: expected the name of an [[upstream]]",
                        r.name.get_ref(),
                        r.upstream.get_ref()
                    ),
                );
            }
            for l in r.listeners.iter().flatten() {
                if !names.contains(l.get_ref()) && self.listeners.len() == listener_tables {
                    sink.at(
                        Some(l.span()),
                        format!(
                            "route `{}` names listener `{}`, which is not defined: expected the name of a [[listener]]",
                            r.name.get_ref(),
                            l.get_ref()
                        ),
                    );
                }
            }
            let path_keys = [&r.path, &r.path_prefix, &r.path_regex];
            if path_keys.iter().filter(|p| p.is_some()).count() > 1 {
                sink.at(
                    Some(r.name.span()),
                    format!(
                        "route `{}`: use only one of `path`, `path_prefix`, `path_regex`",
                        r.name.get_ref()
                    ),
                );
            }
            for p in [&r.path, &r.path_prefix].into_iter().flatten() {
                if !p.get_ref().starts_with('/') {
                    sink.at(Some(p.span()), "a path must start with `/`");
                }
            }
            if let Some(re) = &r.path_regex {
                if let Err(e) = regex::Regex::new(re.get_ref()) {
                    let msg = e.to_string().replace('\n', " ");
                    sink.at(Some(re.span()), format!("invalid regex: {msg}"));
                }
            }
            if r.strip_prefix && r.path_prefix.is_none() && r.path.is_none() {
                sink.at(
                    Some(r.name.span()),
                    "strip_prefix needs `path_prefix` (or `path`) on the same route",
                );
            }
            if let Some(h) = &r.host {
                let host = h.get_ref();
                let bare = host.strip_prefix("*.").unwrap_or(host);
                if bare.is_empty() || bare.contains(['*', '/', ' ']) {
                    sink.at(
                        Some(h.span()),
                        "invalid host: expected a name like \"api.example.com\" or \"*.example.com\"",
                    );
                }
            }
            for m in r.methods.iter().flatten() {
                if http::Method::from_bytes(m.get_ref().as_bytes()).is_err()
                    || m.get_ref().is_empty()
                {
                    sink.at(Some(m.span()), format!("invalid method `{}`", m.get_ref()));
                }
            }
            for name in r.headers.keys() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    sink.at(
                        Some(r.name.span()),
                        format!("invalid header name `{name}` in headers"),
                    );
                }
            }
            match switchyard_filters::build_route_filters(
                r.filters.iter().map(|f| f.get_ref()),
                registry,
            ) {
                Ok(built) => route_filters.push(std::sync::Arc::new(built)),
                Err(errors) => {
                    for (i, message) in errors {
                        sink.at(r.filters.get(i).map(|f| f.span()), message);
                    }
                    route_filters.push(Default::default());
                }
            }
        }
        self.route_filters = route_filters;

        // L4 streams.
        crate::stream::config::validate(self, sink);
    }

    /// Index of the listener named `name`.
    pub fn listener_index(&self, name: &str) -> Option<usize> {
        self.listeners.iter().position(|l| l.name.get_ref() == name)
    }
}

fn section<T: DeserializeOwned>(
    sink: &mut ErrorSink<'_>,
    value: &Spanned<DeValue<'_>>,
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(value.clone())) {
        Ok(v) => Some(v),
        Err(e) => {
            // serde stops at the first problem in a table: try each key on its own to report
            // every bad key, ignoring the "missing field" a lone key necessarily causes.
            let mut found = false;
            if let Some(table) = value.get_ref().as_table() {
                for (k, v) in table.iter() {
                    let mut single = DeTable::new();
                    single.insert(k.clone(), v.clone());
                    let single = Spanned::new(value.span(), DeValue::Table(single));
                    if let Err(err) = T::deserialize(ValueDeserializer::from(single)) {
                        if !err.message().starts_with("missing field") {
                            sink.toml(&err);
                            found = true;
                        }
                    }
                }
            }
            if !found {
                sink.toml(&e);
            }
            None
        }
    }
}

fn array<T: DeserializeOwned>(
    sink: &mut ErrorSink<'_>,
    name: &str,
    value: &Spanned<DeValue<'_>>,
) -> Vec<T> {
    let Some(items) = value.get_ref().as_array() else {
        sink.at(
            Some(value.span()),
            format!("`{name}` must be an array of tables: write [[{name}]]"),
        );
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| section::<T>(sink, item))
        .collect()
}

/// The options a balancer factory receives for an upstream: `hash_key`, `resource` (with
/// durations in milliseconds) and the keys of the free-form `options` table.
pub fn balancer_options(section: &UpstreamSection) -> serde_json::Value {
    let mut options = serde_json::Map::new();
    if let Some(table) = &section.options {
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(table.get_ref()) {
            options.extend(m);
        }
    }
    if let Some(k) = &section.hash_key {
        options.insert("hash_key".into(), k.get_ref().clone().into());
    }
    if let Some(r) = &section.resource {
        let mut m = serde_json::Map::new();
        if let Some(p) = &r.path {
            m.insert("path".into(), p.clone().into());
        }
        for (key, d) in [("max_age", r.max_age), ("interval", r.interval)] {
            if let Some(d) = d {
                m.insert(key.into(), format!("{}ms", d.get().as_millis()).into());
            }
        }
        options.insert("resource".into(), m.into());
    }
    serde_json::Value::Object(options)
}

/// Parse `"10.0.0.0/8"`, `"::1/128"` or a bare address.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad =
        || format!("invalid backend address `{addr}`: expected host:port, like \"127.0.0.1:9001\"");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve backend `{addr}`: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve backend `{addr}`: no address"))
}

/// Check a `hash_key` form: `client-ip`, `header:NAME`, `cookie:NAME`, `path`, `query:NAME`.
pub fn validate_hash_key(key: &str) -> Result<(), String> {
    let ok = match key.split_once(':') {
        None => key == "client-ip" || key == "path",
        Some(("header", n)) => http::HeaderName::from_bytes(n.as_bytes()).is_ok(),
        Some(("cookie" | "query", n)) => !n.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid hash_key `{key}`: expected \"client-ip\", \"header:NAME\", \"cookie:NAME\", \"path\" or \"query:NAME\""
        ))
    }
}

/// Turn a span into an `Option` for [`ErrorSink::at`] (spans of defaults are empty).
pub fn span_of<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    let span = s.span();
    (span.end > 0).then_some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let mut r = Registry::new();
        switchyard_balancers::register_all(&mut r);
        r
    }

    const GOOD: &str = r#"
[server]
threads = 2
grace_period = "5s"

[[listener]]
name = "http"
addr = "127.0.0.1:8080"

[[route]]
name = "users"
path_prefix = "/api/v1/users"
upstream = "users"

[[upstream]]
name = "users"
algorithm = "round-robin"
backends = [ { addr = "127.0.0.1:9001", weight = 3 }, { addr = "127.0.0.1:9002" } ]
"#;

    fn errors(text: &str) -> Vec<String> {
        Config::parse("t.toml", text, &registry())
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn good_file_parses() {
        let c = Config::parse("t.toml", GOOD, &registry()).unwrap();
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.upstreams[0].backends.get_ref()[1].weight.get_ref(), &1);
        assert_eq!(c.resolved[0][0], "127.0.0.1:9001".parse().unwrap());
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = GOOD.replace("threads = 2", "threads = 2\nthreadz = 3");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:4:1: "), "{e:?}");
        assert!(e[0].contains("threadz"), "{e:?}");
    }

    #[test]
    fn bad_duration_says_what_was_expected() {
        let text = GOOD.replace("\"5s\"", "\"5 parsecs\"");
        let e = errors(&text);
        assert!(e[0].starts_with("t.toml:4:16: "), "{e:?}");
        assert!(e[0].contains("\"250ms\""), "{e:?}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let text = GOOD.replace("threads = 2", "threads = \"two\"");
        let e = errors(&text);
        assert!(e[0].starts_with("t.toml:3:11: "), "{e:?}");
    }

    #[test]
    fn every_error_is_reported_not_only_the_first() {
        let text = GOOD
            .replace("threads = 2", "threads = \"two\"")
            .replace("upstream = \"users\"", "upstream = \"nope\"")
            .replace("weight = 3", "weight = 0");
        let e = errors(&text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e.iter()
                .any(|m| m.contains("upstream `nope`") && m.starts_with("t.toml:13:12")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("weight must be at least 1")),
            "{e:?}"
        );
    }

    #[test]
    fn every_bad_key_in_one_table_is_reported() {
        let text = GOOD.replace("threads = 2", "threads = \"two\"\nbogus = 1");
        let e = errors(&text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("t.toml:3:11: "), "{e:?}");
        assert!(
            e[1].starts_with("t.toml:4:1: ") && e[1].contains("bogus"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_names_and_dangling_listener() {
        let text = format!(
            "{GOOD}\n[[route]]\nname = \"users\"\nlisteners = [\"nope\"]\nupstream = \"users\"\n"
        );
        let e = errors(&text);
        assert!(
            e.iter().any(|m| m.contains("duplicate route name `users`")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("listener `nope`")), "{e:?}");
    }

    #[test]
    fn unknown_algorithm_lists_known_names() {
        let text = GOOD.replace("\"round-robin\"", "\"fastest\"");
        let e = errors(&text);
        assert!(
            e[0].contains("round-robin") && e[0].contains("weighted-round-robin"),
            "{e:?}"
        );
        assert!(e[0].starts_with("t.toml:17:13"), "{e:?}");
    }

    #[test]
    fn empty_backends_and_bad_regex() {
        let text = GOOD
            .replace(
                "backends = [ { addr = \"127.0.0.1:9001\", weight = 3 }, { addr = \"127.0.0.1:9002\" } ]",
                "backends = []",
            )
            .replace("path_prefix = \"/api/v1/users\"", "path_regex = \"^/(\"");
        let e = errors(&text);
        assert!(e.iter().any(|m| m.contains("no backends")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("invalid regex")), "{e:?}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = errors("[server\nthreads = 1\n");
        assert!(e[0].starts_with("t.toml:1:"), "{e:?}");
    }

    #[test]
    fn hash_key_forms() {
        for ok in [
            "client-ip",
            "path",
            "header:x-user",
            "cookie:sid",
            "query:id",
        ] {
            assert!(validate_hash_key(ok).is_ok(), "{ok}");
        }
        for bad in ["ip", "header:", "cookie:", "body"] {
            assert!(validate_hash_key(bad).is_err(), "{bad}");
        }
    }
}
