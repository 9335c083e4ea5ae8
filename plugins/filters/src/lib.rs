//! Switchyard's compiled-in request/response filters, one module each.
//!
//! | kind | module | hooks |
//! | --- | --- | --- |
//! | `rate-limit` | [`rate_limit`] | request |
//! | `ip-allow`, `ip-deny` | [`ip_acl`] | request |
//! | `request-headers` | [`headers`] | upstream request |
//! | `response-headers` | [`headers`] | response |
//! | `redirect` | [`redirect`] | request |
//! | `rewrite` | [`rewrite`] | upstream request |
//! | `body-limit` | [`body_limit`] | request, request body |
//! | `cors` | [`cors`] | request (preflight), response |
//! | `compress` | [`compress`] | none: settings for pingora's compression module |
//! | `cache` | [`cache`] | none: settings for pingora's cache |
//!
//! The configuration is a typed enum, [`FilterConfig`], tagged by `kind`, whose variants
//! hold each filter's own configuration (unknown keys refused). [`FilterConfig::build`]
//! checks the values and builds the filter. The gateway calls [`build_route_filters`] for
//! each route's `filters` list: while validating the file (errors carry the index of the
//! bad table, to be reported at its line and column) and again when it compiles the
//! routes. Kinds registered by plugin crates ([`Registry::register_filter`]) are built
//! through their factory.
//!
//! ```
//! use switchyard_filters::{build_filter_toml, build_route_filters};
//! use switchyard_plugin::Registry;
//!
//! let tables: Vec<toml::Table> = [
//!     r#"kind = "ip-allow"
//!        cidrs = ["10.0.0.0/8"]"#,
//!     r#"kind = "rate-limit"
//!        requests_per_second = 100
//!        burst = 200"#,
//!     r#"kind = "compress""#,
//! ]
//! .iter()
//! .map(|t| t.parse().unwrap())
//! .collect();
//! let route = build_route_filters(&tables, &Registry::new()).unwrap();
//! assert_eq!(route.chain.len(), 2);
//! assert!(route.compress.is_some() && route.cache.is_none());
//!
//! let bad: toml::Table = "kind = \"rate-limit\"\nrequests_per_second = 0".parse().unwrap();
//! let err = build_filter_toml(&bad).err().unwrap();
//! assert!(err.contains("requests_per_second"), "{err}");
//! ```

use std::sync::Arc;

use serde::Deserialize;
use switchyard_plugin::{Filter, FilterChain, Hooks, Registry};

pub mod body_limit;
pub mod cache;
pub mod compress;
pub mod cors;
pub mod headers;
pub mod ip_acl;
pub mod rate_limit;
pub mod redirect;
pub mod rewrite;
mod util;

pub use body_limit::{BodyLimit, BodyLimitConfig};
pub use cache::{CacheConfig, CacheSettings};
pub use compress::{Compress, CompressConfig, Encoding};
pub use cors::{Cors, CorsConfig};
pub use headers::{HeaderRules, HeadersConfig, RequestHeaders, ResponseHeaders};
pub use ip_acl::{CidrListConfig, CidrSet, IpAcl};
pub use rate_limit::{RateLimit, RateLimitConfig};
pub use redirect::{Redirect, RedirectConfig};
pub use rewrite::{Rewrite, RewriteConfig};
pub use util::{parse_duration, ConfigDuration};

/// Every compiled-in filter kind, as the configuration writes it.
pub const KINDS: [&str; 11] = [
    "rate-limit",
    "ip-allow",
    "ip-deny",
    "request-headers",
    "response-headers",
    "redirect",
    "rewrite",
    "compress",
    "body-limit",
    "cache",
    "cors",
];

/// One filter of a route's `filters` list, by `kind`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FilterConfig {
    /// `rate-limit`.
    RateLimit(RateLimitConfig),
    /// `ip-allow`.
    IpAllow(CidrListConfig),
    /// `ip-deny`.
    IpDeny(CidrListConfig),
    /// `request-headers`.
    RequestHeaders(HeadersConfig),
    /// `response-headers`.
    ResponseHeaders(HeadersConfig),
    /// `redirect`.
    Redirect(RedirectConfig),
    /// `rewrite`.
    Rewrite(RewriteConfig),
    /// `compress`.
    Compress(CompressConfig),
    /// `body-limit`.
    BodyLimit(BodyLimitConfig),
    /// `cache`.
    Cache(CacheConfig),
    /// `cors`.
    Cors(CorsConfig),
}

/// A filter that only carries settings the gateway applies itself (`compress`, `cache`):
/// it has no hook, so a chain skips it at no cost.
#[derive(Debug)]
pub struct Settings {
    kind: &'static str,
}

impl Filter for Settings {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn hooks(&self) -> Hooks {
        Hooks::NONE
    }
}

impl FilterConfig {
    /// Read a filter table given as JSON (`{"kind": "rate-limit", ...}`).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let kind = value.get("kind").and_then(|k| k.as_str());
        FilterConfig::deserialize(value).map_err(|e| match kind {
            Some(kind) if KINDS.contains(&kind) => format!("filter `{kind}`: {e}"),
            _ => e.to_string(),
        })
    }

    /// Read a filter table of the TOML configuration.
    pub fn from_toml(table: &toml::Table) -> Result<Self, String> {
        Self::from_json(&to_json(table)?)
    }

    /// The `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RateLimit(_) => "rate-limit",
            Self::IpAllow(_) => "ip-allow",
            Self::IpDeny(_) => "ip-deny",
            Self::RequestHeaders(_) => "request-headers",
            Self::ResponseHeaders(_) => "response-headers",
            Self::Redirect(_) => "redirect",
            Self::Rewrite(_) => "rewrite",
            Self::Compress(_) => "compress",
            Self::BodyLimit(_) => "body-limit",
            Self::Cache(_) => "cache",
            Self::Cors(_) => "cors",
        }
    }

    /// Check the values and build the filter. `compress` and `cache` build a hookless
    /// [`Settings`] filter (their settings are [`Compress`] and [`CacheSettings`], which
    /// [`build_route_filters`] returns apart).
    pub fn build(&self) -> Result<Arc<dyn Filter>, String> {
        let built: Result<Arc<dyn Filter>, String> = match self {
            Self::RateLimit(c) => RateLimit::new(c).map(|f| Arc::new(f) as _),
            Self::IpAllow(c) => IpAcl::allow(c).map(|f| Arc::new(f) as _),
            Self::IpDeny(c) => IpAcl::deny(c).map(|f| Arc::new(f) as _),
            Self::RequestHeaders(c) => {
                HeaderRules::new(c).map(|r| Arc::new(RequestHeaders(r)) as _)
            }
            Self::ResponseHeaders(c) => {
                HeaderRules::new(c).map(|r| Arc::new(ResponseHeaders(r)) as _)
            }
            Self::Redirect(c) => Redirect::new(c).map(|f| Arc::new(f) as _),
            Self::Rewrite(c) => Rewrite::new(c).map(|f| Arc::new(f) as _),
            Self::Compress(c) => {
                Compress::new(c).map(|_| Arc::new(Settings { kind: "compress" }) as _)
            }
            Self::BodyLimit(c) => BodyLimit::new(c).map(|f| Arc::new(f) as _),
            Self::Cache(c) => {
                CacheSettings::new(c).map(|_| Arc::new(Settings { kind: "cache" }) as _)
            }
            Self::Cors(c) => Cors::new(c).map(|f| Arc::new(f) as _),
        };
        built.map_err(|e| format!("filter `{}`: {e}", self.kind()))
    }
}

fn to_json(table: &toml::Table) -> Result<serde_json::Value, String> {
    serde_json::to_value(table).map_err(|e| format!("filter table: {e}"))
}

/// Build one compiled-in filter from its table as JSON (with its `kind`): unknown kinds,
/// unknown keys and bad values are errors naming the filter.
///
/// ```
/// let f = switchyard_filters::build_filter(&serde_json::json!({
///     "kind": "ip-deny", "cidrs": ["203.0.113.0/24"]
/// })).unwrap();
/// assert_eq!(f.kind(), "ip-deny");
/// let err = switchyard_filters::build_filter(&serde_json::json!({
///     "kind": "ip-deny", "cidr": ["203.0.113.0/24"]
/// })).err().unwrap();
/// assert!(err.starts_with("filter `ip-deny`: unknown field `cidr`"), "{err}");
/// ```
pub fn build_filter(value: &serde_json::Value) -> Result<Arc<dyn Filter>, String> {
    FilterConfig::from_json(value)?.build()
}

/// [`build_filter`] for a table of the TOML configuration.
pub fn build_filter_toml(table: &toml::Table) -> Result<Arc<dyn Filter>, String> {
    FilterConfig::from_toml(table)?.build()
}

/// A route's filters, built: the chain the proxy phases call, and the settings of the
/// pingora modules the gateway runs for the route.
#[derive(Debug, Clone, Default)]
pub struct RouteFilters {
    /// The hooks, in the order written.
    pub chain: FilterChain,
    /// `compress`, when the route has it.
    pub compress: Option<Compress>,
    /// `cache`, when the route has it.
    pub cache: Option<CacheSettings>,
}

/// Build a route's `filters` list. Compiled-in kinds come first; other kinds are looked up
/// in `registry` (plugin crates), whose factory gets the table as JSON without `kind`.
///
/// On error, every bad table is reported as its index in `tables` and a message, so that
/// the gateway can point at its line and column. `compress` and `cache` may appear once
/// each.
pub fn build_route_filters<'a, I>(
    tables: I,
    registry: &Registry,
) -> Result<RouteFilters, Vec<(usize, String)>>
where
    I: IntoIterator<Item = &'a toml::Table>,
{
    let mut filters = Vec::new();
    let mut route = RouteFilters::default();
    let mut errors = Vec::new();
    for (i, table) in tables.into_iter().enumerate() {
        match build_one(table, registry, &mut route) {
            Ok(Some(f)) => filters.push(f),
            Ok(None) => {}
            Err(e) => errors.push((i, e)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    route.chain = FilterChain::new(filters);
    Ok(route)
}

fn build_one(
    table: &toml::Table,
    registry: &Registry,
    route: &mut RouteFilters,
) -> Result<Option<Arc<dyn Filter>>, String> {
    let kind = match table.get("kind") {
        None => return Err("a filter needs `kind`".into()),
        Some(toml::Value::String(k)) => k.as_str(),
        Some(other) => return Err(format!("`kind` must be a string, not {other}")),
    };
    if !KINDS.contains(&kind) {
        let Some(factory) = registry.filter(kind) else {
            let mut known: Vec<&str> = KINDS.to_vec();
            known.extend(registry.filter_names());
            return Err(format!(
                "unknown filter kind `{kind}`, expected one of: {}",
                known.join(", ")
            ));
        };
        let mut options = table.clone();
        options.remove("kind");
        return factory
            .build(&to_json(&options)?)
            .map(Some)
            .map_err(|e| format!("filter `{kind}`: {e}"));
    }
    let config = FilterConfig::from_toml(table)?;
    let filter = config.build()?;
    match &config {
        FilterConfig::Compress(c) => {
            if route.compress.is_some() {
                return Err("a route takes one `compress` filter".into());
            }
            route.compress = Some(Compress::new(c)?);
            Ok(None)
        }
        FilterConfig::Cache(c) => {
            if route.cache.is_some() {
                return Err("a route takes one `cache` filter".into());
            }
            route.cache = Some(CacheSettings::new(c)?);
            Ok(None)
        }
        _ => Ok(Some(filter)),
    }
}
