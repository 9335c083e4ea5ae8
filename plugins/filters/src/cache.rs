//! `cache`: settings for the response cache, which the gateway runs with pingora's cache
//! (no per-request hook here).
//!
//! ```toml
//! { kind = "cache", max_bytes = 67108864, default_ttl = "60s" }
//! ```
//!
//! Only `GET` and `HEAD` are cached. A response's own `Cache-Control` (`max-age`,
//! `s-maxage`, `no-store`, `private`, `no-cache`) or `Expires` decides; a response with
//! neither is kept `default_ttl` (default 60 s) if its status is one HTTP lets caches
//! keep by default ([`CacheSettings::fresh_for`]). `max_bytes` (default 64 MiB) bounds the
//! route's cache (least recently used out first); `max_object_bytes` (an addition; default
//! the smaller of `max_bytes` and 8 MiB) bounds one response. The gateway marks answers
//! `X-Cache: HIT` or `MISS`.

use std::time::Duration;

use serde::Deserialize;

use crate::util::ConfigDuration;

/// The configuration of `cache`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The route's cache size in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Freshness of responses that do not say.
    #[serde(default = "default_ttl")]
    pub default_ttl: ConfigDuration,
    /// The largest response body cached.
    pub max_object_bytes: Option<u64>,
}

fn default_max_bytes() -> u64 {
    64 << 20
}

fn default_ttl() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

/// The statuses kept for `default_ttl` when the response says nothing about freshness: the
/// "heuristically cacheable" ones of RFC 9110 §15.1 that are final answers (not 404,
/// 405, 414 or 501, which a fixed deployment turns into stale errors).
pub const DEFAULT_CACHEABLE_STATUSES: [u16; 7] = [200, 203, 204, 300, 301, 308, 410];

/// Checked `cache` settings.
///
/// ```
/// use std::time::Duration;
/// use switchyard_filters::cache::{CacheConfig, CacheSettings};
///
/// let config: CacheConfig = serde_json::from_value(serde_json::json!({
///     "max_bytes": 67108864, "default_ttl": "60s"
/// })).unwrap();
/// let c = CacheSettings::new(&config).unwrap();
/// assert_eq!(c.fresh_for(200), Some(Duration::from_secs(60)));
/// assert_eq!(c.fresh_for(500), None);
/// assert_eq!(c.max_object_bytes, 8 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The route's cache size in bytes.
    pub max_bytes: u64,
    /// Freshness of responses that do not say.
    pub default_ttl: Duration,
    /// The largest response body cached.
    pub max_object_bytes: u64,
}

impl CacheSettings {
    /// Check `config`.
    pub fn new(config: &CacheConfig) -> Result<Self, String> {
        if config.max_bytes < 4096 {
            return Err(format!(
                "max_bytes {} is too small for a cache: at least 4096",
                config.max_bytes
            ));
        }
        let ttl = config.default_ttl.0;
        if ttl.is_zero() {
            return Err("default_ttl must be above 0".into());
        }
        if ttl > Duration::from_secs(365 * 24 * 3600) {
            return Err("default_ttl must be at most a year".into());
        }
        let max_object_bytes = config
            .max_object_bytes
            .unwrap_or_else(|| config.max_bytes.min(8 << 20));
        if max_object_bytes == 0 || max_object_bytes > config.max_bytes {
            return Err(format!(
                "max_object_bytes must be between 1 and max_bytes ({})",
                config.max_bytes
            ));
        }
        Ok(Self {
            max_bytes: config.max_bytes,
            default_ttl: ttl,
            max_object_bytes,
        })
    }

    /// How long a response of `status` without `Cache-Control` freshness or `Expires` stays
    /// fresh: `default_ttl` for [`DEFAULT_CACHEABLE_STATUSES`], else not cached.
    pub fn fresh_for(&self, status: u16) -> Option<Duration> {
        DEFAULT_CACHEABLE_STATUSES
            .contains(&status)
            .then_some(self.default_ttl)
    }

    /// Whether requests of this method may be served from (and stored in) the cache.
    pub fn cacheable_method(method: &http::Method) -> bool {
        *method == http::Method::GET || *method == http::Method::HEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(json: serde_json::Value) -> Result<CacheSettings, String> {
        let c: CacheConfig = serde_json::from_value(json).map_err(|e| e.to_string())?;
        CacheSettings::new(&c)
    }

    #[test]
    fn defaults_and_limits() {
        let c = cache(serde_json::json!({})).unwrap();
        assert_eq!(c.max_bytes, 64 << 20);
        assert_eq!(c.default_ttl, Duration::from_secs(60));
        let c = cache(serde_json::json!({"max_bytes": 100000, "default_ttl": "5m"})).unwrap();
        assert_eq!(c.max_object_bytes, 100000);
        assert_eq!(c.fresh_for(301), Some(Duration::from_secs(300)));
        assert_eq!(c.fresh_for(404), None);
        assert!(CacheSettings::cacheable_method(&http::Method::HEAD));
        assert!(!CacheSettings::cacheable_method(&http::Method::POST));
    }

    #[test]
    fn bad_configurations() {
        for (json, why) in [
            (serde_json::json!({"max_bytes": 10}), "too small"),
            (serde_json::json!({"default_ttl": "0s"}), "above 0"),
            (
                serde_json::json!({"default_ttl": "9000h"}),
                "at most a year",
            ),
            (serde_json::json!({"default_ttl": 60}), "duration"),
            (
                serde_json::json!({"max_bytes": 10000, "max_object_bytes": 20000}),
                "between",
            ),
            (serde_json::json!({"ttl": "1s"}), "unknown field"),
        ] {
            let err = cache(json.clone()).unwrap_err();
            assert!(err.contains(why), "{json}: {err}");
        }
    }
}
