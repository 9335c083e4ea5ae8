//! Switchyard's session store.
//!
//! The gateway keeps two kinds of short-lived state outside its request path:
//! application session data (`{prefix}session:{id}`) and upstream affinity pins
//! (`{prefix}affinity:{upstream}:{session}`, whose value is a short backend id).
//! Both live behind the object-safe [`SessionStore`] trait, with two backends:
//!
//! * [`MemoryStore`]: embedded, per-process, TTL-aware and bounded in size
//!   (`max_entries`), so a flood of new sessions can never grow memory without bound.
//! * [`RedisStore`]: a single Redis (`url`) or a Redis Cluster (`nodes`). Every
//!   operation is bounded by `timeout` (default 50 ms); past it the call returns
//!   [`Error::Timeout`] and the gateway degrades instead of stalling. A Redis that is
//!   down at startup does not prevent construction: the store connects in the
//!   background and operations fail fast with [`Error::Unavailable`] until it is
//!   reachable, then work again without a restart.
//!
//! The store is chosen by the `[session_store]` table of the gateway configuration,
//! deserialized into [`SessionStoreConfig`] and turned into a store by [`build`]:
//!
//! ```toml
//! [session_store]
//! kind = "redis"                  # or "memory" (the default)
//! url = "redis://127.0.0.1:6379/0"
//! timeout = "50ms"
//! key_prefix = "switchyard:"
//! ```
//!
//! Keys given to the trait are *logical* keys (build them with [`session_key`] and
//! [`affinity_key`]); the store adds its `key_prefix` itself. Values are JSON
//! ([`serde_json::Value`]) or, through the `*_raw` methods, plain strings.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

mod config;
mod error;
mod memory;
mod redis_store;

pub use config::{build, parse_duration, SessionStoreConfig, StoreKind};
pub use error::Error;
pub use memory::MemoryStore;
pub use redis_store::{RedisEndpoint, RedisStore};

/// The key prefix used when the configuration names none.
pub const DEFAULT_KEY_PREFIX: &str = "switchyard:";

/// The per-operation timeout of the Redis store when the configuration names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The longest logical key (in bytes) a store accepts; longer keys get
/// [`Error::InvalidKey`]. This bounds what a client-chosen session id can cost.
pub const MAX_KEY_BYTES: usize = 1024;

/// The longest TTL a store honours; longer TTLs are clamped to it.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A key-value store for session data and affinity pins, with per-entry TTLs.
///
/// Object safe: the gateway holds an `Arc<dyn SessionStore>`. Implementations never
/// panic and never block the calling task for long: the Redis store bounds every call
/// by its timeout.
///
/// `key` is a logical key; the store stores it under its [`key_prefix`](Self::key_prefix).
/// A zero `ttl` deletes the entry (as Redis does for a zero expiry); TTLs above
/// [`MAX_TTL`] are clamped to it.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// Returns the string stored at `key`, or `None` if it is absent or expired.
    async fn get_raw(&self, key: &str) -> Result<Option<String>, Error>;

    /// Stores `value` at `key` for `ttl`, replacing any previous value and TTL.
    async fn set_raw(&self, key: &str, value: &str, ttl: Duration) -> Result<(), Error>;

    /// Slides the TTL of `key` to `ttl` from now, keeping its value.
    ///
    /// Returns whether the key existed (and so was touched).
    async fn touch(&self, key: &str, ttl: Duration) -> Result<bool, Error>;

    /// Removes `key`. Returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, Error>;

    /// Returns the JSON value stored at `key`, or `None` if it is absent or expired.
    ///
    /// A stored string that is not JSON gives [`Error::Serde`].
    async fn get(&self, key: &str) -> Result<Option<Value>, Error> {
        match self.get_raw(key).await? {
            Some(text) => Ok(Some(serde_json::from_str(&text)?)),
            None => Ok(None),
        }
    }

    /// Stores the JSON `value` at `key` for `ttl`, replacing any previous value and TTL.
    async fn set(&self, key: &str, value: &Value, ttl: Duration) -> Result<(), Error> {
        let text = serde_json::to_string(value)?;
        self.set_raw(key, &text, ttl).await
    }

    /// The backend's name, `"memory"` or `"redis"`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// The prefix every key is stored under (e.g. `"switchyard:"`).
    fn key_prefix(&self) -> &str;

    /// Adds one to the counter at `key` and returns the new value; the counter expires `ttl`
    /// after its last change. Cluster rate limits count with it. The default reads then
    /// writes (not atomic across processes, which only the memory store, private to one
    /// process, relies on); the Redis store overrides it with one atomic script whose expiry
    /// is set when the counter is created.
    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, Error> {
        let current = self
            .get_raw(key)
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let next = current.saturating_add(1);
        self.set_raw(key, &next.to_string(), ttl).await?;
        Ok(next)
    }
}

/// The logical key of the application session `id`: `session:{id}`.
///
/// Stored as `{prefix}session:{id}`.
pub fn session_key(id: &str) -> String {
    let mut key = String::with_capacity(8 + id.len());
    key.push_str("session:");
    key.push_str(id);
    key
}

/// The logical key of the affinity pin of `session` to a backend of `upstream`:
/// `affinity:{upstream}:{session}`.
///
/// Stored as `{prefix}affinity:{upstream}:{session}`. So that two different
/// (upstream, session) pairs never share a key, `%` and `:` in `upstream` are
/// percent-encoded (`%25`, `%3A`); names without them (the usual case) are unchanged.
pub fn affinity_key(upstream: &str, session: &str) -> String {
    let mut key = String::with_capacity(10 + upstream.len() + session.len());
    key.push_str("affinity:");
    for c in upstream.chars() {
        match c {
            '%' => key.push_str("%25"),
            ':' => key.push_str("%3A"),
            c => key.push(c),
        }
    }
    key.push(':');
    key.push_str(session);
    key
}

/// Checks a logical key: not empty and at most [`MAX_KEY_BYTES`] long.
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidKey("empty key".to_owned()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidKey(format!(
            "key of {} bytes is longer than the {MAX_KEY_BYTES}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_key_scheme() {
        assert_eq!(session_key("abc123"), "session:abc123");
    }

    #[test]
    fn affinity_key_scheme() {
        assert_eq!(affinity_key("api", "s1"), "affinity:api:s1");
        // A ':' in the upstream name cannot make two pairs collide.
        assert_ne!(affinity_key("a:b", "c"), affinity_key("a", "b:c"));
        assert_eq!(affinity_key("a:b", "c"), "affinity:a%3Ab:c");
        assert_eq!(affinity_key("50%", "c"), "affinity:50%25:c");
    }

    #[test]
    fn key_checks() {
        assert!(check_key("session:x").is_ok());
        assert!(matches!(check_key(""), Err(Error::InvalidKey(_))));
        let long = "x".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(check_key(&long), Err(Error::InvalidKey(_))));
        assert!(check_key(&long[1..]).is_ok());
    }

    #[test]
    fn trait_is_object_safe() {
        fn takes(_: &dyn SessionStore) {}
        let store = MemoryStore::default();
        takes(&store);
        let _: std::sync::Arc<dyn SessionStore> = std::sync::Arc::new(store);
    }
}
