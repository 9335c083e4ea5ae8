//! The `[session_store]` configuration table and the [`build`] constructor.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::{
    Error, MemoryStore, RedisEndpoint, RedisStore, SessionStore, DEFAULT_KEY_PREFIX,
    DEFAULT_TIMEOUT,
};

/// Which backend holds the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded [`MemoryStore`] (the default): per process, lost on restart.
    #[default]
    Memory,
    /// A [`RedisStore`]: a single Redis (`url`) or a Redis Cluster (`nodes`).
    Redis,
}

/// The `[session_store]` table of the gateway configuration.
///
/// Every key is optional; an absent table means the memory store with its defaults.
/// Unknown keys are rejected. Deserialize it with serde (e.g. from TOML), check it
/// with [`validate`](Self::validate) and turn it into a store with [`build`].
///
/// ```toml
/// [session_store]
/// kind = "redis"                          # "memory" (default) or "redis"
/// url = "redis://127.0.0.1:6379/0"        # single Redis ...
/// # nodes = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]   # ... or a Redis Cluster
/// timeout = "50ms"                        # per operation (redis); default 50ms
/// key_prefix = "switchyard:"              # default "switchyard:"
/// # max_entries = 100000                  # memory only; default 100000
/// ```
///
/// `timeout` is written as a string with a unit (`"50ms"`, `"5s"`, `"2m"`, `"1h"`,
/// see [`parse_duration`]) and held here already parsed, as `Option<Duration>`
/// (`None`: the default, [`DEFAULT_TIMEOUT`]). The memory store ignores it.
///
/// `Debug` output hides passwords in `url` and `nodes`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionStoreConfig {
    /// The backend: `"memory"` (default) or `"redis"`.
    pub kind: StoreKind,
    /// The URL of a single Redis, e.g. `redis://127.0.0.1:6379/0` (redis only;
    /// exactly one of `url` and `nodes`).
    pub url: Option<String>,
    /// The URLs of some Redis Cluster nodes (redis only; exactly one of `url` and
    /// `nodes`). The rest of the cluster is discovered from them.
    pub nodes: Option<Vec<String>>,
    /// The bound on each Redis operation; `None` means [`DEFAULT_TIMEOUT`] (50 ms).
    #[serde(deserialize_with = "deserialize_opt_duration")]
    pub timeout: Option<Duration>,
    /// The prefix every key is stored under; default `"switchyard:"`.
    pub key_prefix: String,
    /// The most entries the memory store holds (memory only); `None` means
    /// [`MemoryStore::DEFAULT_MAX_ENTRIES`] (100 000).
    pub max_entries: Option<usize>,
}

impl Default for SessionStoreConfig {
    fn default() -> Self {
        SessionStoreConfig {
            kind: StoreKind::Memory,
            url: None,
            nodes: None,
            timeout: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            max_entries: None,
        }
    }
}

impl fmt::Debug for SessionStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStoreConfig")
            .field("kind", &self.kind)
            .field("url", &self.url.as_deref().map(redact_url))
            .field(
                "nodes",
                &self
                    .nodes
                    .as_ref()
                    .map(|n| n.iter().map(|u| redact_url(u)).collect::<Vec<_>>()),
            )
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl SessionStoreConfig {
    /// The per-operation timeout in force: `timeout`, or [`DEFAULT_TIMEOUT`].
    pub fn effective_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The memory store's bound in force: `max_entries`, or
    /// [`MemoryStore::DEFAULT_MAX_ENTRIES`].
    pub fn effective_max_entries(&self) -> usize {
        self.max_entries.unwrap_or(MemoryStore::DEFAULT_MAX_ENTRIES)
    }

    /// Checks the table without connecting anywhere.
    ///
    /// Rules: `redis` needs exactly one of `url` and `nodes` (and `nodes` must not be
    /// empty); `url`/`nodes` are refused with `memory`, `max_entries` with `redis`;
    /// `timeout` and `max_entries` must not be zero; URLs must parse as Redis URLs.
    pub fn validate(&self) -> Result<(), Error> {
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config("timeout must be greater than zero".into()));
        }
        match self.kind {
            StoreKind::Memory => {
                if self.url.is_some() || self.nodes.is_some() {
                    return Err(Error::Config(
                        "url and nodes are for kind = \"redis\"; \
                         the memory store takes neither"
                            .into(),
                    ));
                }
                if self.max_entries == Some(0) {
                    return Err(Error::Config("max_entries must be at least 1".into()));
                }
                Ok(())
            }
            StoreKind::Redis => {
                if self.max_entries.is_some() {
                    return Err(Error::Config(
                        "max_entries is for kind = \"memory\"; \
                         bound a Redis with its own maxmemory"
                            .into(),
                    ));
                }
                RedisStore::check_endpoint(&self.redis_endpoint()?)
            }
        }
    }

    fn redis_endpoint(&self) -> Result<RedisEndpoint, Error> {
        match (&self.url, &self.nodes) {
            (Some(url), None) => Ok(RedisEndpoint::Single(url.clone())),
            (None, Some(nodes)) if nodes.is_empty() => Err(Error::Config(
                "nodes is empty: list at least one Redis Cluster node".into(),
            )),
            (None, Some(nodes)) => Ok(RedisEndpoint::Cluster(nodes.clone())),
            (Some(_), Some(_)) => Err(Error::Config(
                "kind = \"redis\" takes either url (single Redis) or nodes \
                 (Redis Cluster), not both"
                    .into(),
            )),
            (None, None) => Err(Error::Config(
                "kind = \"redis\" needs url (single Redis) or nodes (Redis Cluster)".into(),
            )),
        }
    }
}

/// Builds the store a configuration describes, after [validating](SessionStoreConfig::validate) it.
///
/// A Redis store does not need its Redis to be up: this waits at most about a second
/// for a first connection, then returns a store that keeps connecting in the
/// background and whose operations fail with [`Error::Unavailable`] meanwhile. The
/// Redis connections run on a small runtime of the store's own, so this can be
/// called from any Tokio runtime (or none), e.g. a short-lived one at startup.
///
/// Errors: [`Error::Config`] for an invalid configuration, [`Error::Unavailable`] if
/// the store's background thread cannot be started.
pub async fn build(config: &SessionStoreConfig) -> Result<Arc<dyn SessionStore>, Error> {
    config.validate()?;
    match config.kind {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new(
            config.effective_max_entries(),
            config.key_prefix.clone(),
        ))),
        StoreKind::Redis => {
            let store = RedisStore::connect(
                config.redis_endpoint()?,
                config.effective_timeout(),
                config.key_prefix.clone(),
            )
            .await?;
            Ok(Arc::new(store))
        }
    }
}

/// Parses a duration written as a whole number and a unit: `ms`, `s`, `m` or `h`
/// (`"50ms"`, `"5s"`, `"2m"`, `"1h"`). No spaces, signs or fractions.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let bad = || {
        format!("invalid duration {text:?}: expected a whole number and a unit (ms, s, m, h), like \"50ms\" or \"5s\"")
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

fn deserialize_opt_duration<'de, D>(deserializer: D) -> Result<Option<Duration>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// `url` with any password replaced by `***`, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    format!("{}{}:***@{}", &url[..scheme_end + 3], user, &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SessionStoreConfig, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Root {
            #[serde(default)]
            session_store: SessionStoreConfig,
        }
        toml::from_str::<Root>(text)
            .map(|r| r.session_store)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "", "ms", "50", "5 s", " 5s", "5s ", "-5s", "+5s", "1.5s", "5sec", "5S", "5d", "s5",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("99999999999999999999ms").is_err());
        assert!(parse_duration("18446744073709551615h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn defaults_are_memory() {
        let config = parse("").unwrap();
        assert_eq!(config, SessionStoreConfig::default());
        assert_eq!(config.kind, StoreKind::Memory);
        assert_eq!(config.key_prefix, "switchyard:");
        assert_eq!(config.effective_timeout(), Duration::from_millis(50));
        assert_eq!(config.effective_max_entries(), 100_000);
        config.validate().unwrap();
        let config = parse("[session_store]\n").unwrap();
        assert_eq!(config, SessionStoreConfig::default());
    }

    #[test]
    fn full_contract_example_parses() {
        let config = parse(
            r#"
            [session_store]
            kind = "redis"
            url = "redis://127.0.0.1:6379/0"
            timeout = "50ms"
            key_prefix = "sy:"
            "#,
        )
        .unwrap();
        assert_eq!(config.kind, StoreKind::Redis);
        assert_eq!(config.url.as_deref(), Some("redis://127.0.0.1:6379/0"));
        assert_eq!(config.timeout, Some(Duration::from_millis(50)));
        assert_eq!(config.key_prefix, "sy:");
        config.validate().unwrap();

        let config = parse(
            r#"
            [session_store]
            kind = "redis"
            nodes = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
            timeout = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(config.nodes.as_ref().map(Vec::len), Some(2));
        assert_eq!(config.effective_timeout(), Duration::from_secs(2));
        config.validate().unwrap();

        let config = parse("[session_store]\nkind = \"memory\"\nmax_entries = 10\n").unwrap();
        assert_eq!(config.effective_max_entries(), 10);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let e = parse("[session_store]\nkind = \"memory\"\nurls = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse("[session_store]\nkind = \"memcached\"\n").unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
        let e = parse("[session_store]\ntimeout = \"50\"\n").unwrap_err();
        assert!(e.contains("invalid duration"), "{e}");
        let e = parse("[session_store]\ntimeout = 50\n").unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn validation_rules() {
        let invalid = |text: &str| -> String {
            match parse(text).unwrap().validate() {
                Err(Error::Config(why)) => why,
                other => panic!("{text}: expected a config error, got {other:?}"),
            }
        };
        assert!(invalid("[session_store]\nkind = \"redis\"\n").contains("needs url"));
        assert!(invalid(
            "[session_store]\nkind = \"redis\"\nurl = \"redis://a\"\nnodes = [\"redis://b\"]\n"
        )
        .contains("not both"));
        assert!(invalid("[session_store]\nkind = \"redis\"\nnodes = []\n").contains("empty"));
        assert!(
            invalid("[session_store]\nkind = \"redis\"\nurl = \"http://x\"\n")
                .contains("invalid Redis URL http://x")
        );
        assert!(invalid(
            "[session_store]\nkind = \"redis\"\nurl = \"redis://x\"\nmax_entries = 5\n"
        )
        .contains("max_entries"));
        assert!(invalid("[session_store]\nurl = \"redis://x\"\n").contains("memory"));
        assert!(invalid("[session_store]\nmax_entries = 0\n").contains("at least 1"));
        assert!(invalid("[session_store]\ntimeout = \"0ms\"\n").contains("greater than zero"));
        assert!(invalid(
            "[session_store]\nkind = \"redis\"\nnodes = [\"redis://a:1\", \"bogus://b\"]\n"
        )
        .contains("bogus"));
    }

    #[test]
    fn debug_hides_passwords() {
        let config = SessionStoreConfig {
            kind: StoreKind::Redis,
            url: Some("redis://user:s3cret@10.0.0.1:6379/0".into()),
            nodes: Some(vec!["redis://:hunter2@10.0.0.2:7000".into()]),
            ..Default::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("redis://user:***@10.0.0.1:6379/0"),
            "{shown}"
        );
        assert_eq!(redact_url("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[tokio::test]
    async fn build_memory_store() {
        let store =
            build(&parse("[session_store]\nmax_entries = 3\nkey_prefix = \"x:\"\n").unwrap())
                .await
                .unwrap();
        assert_eq!(store.kind(), "memory");
        assert_eq!(store.key_prefix(), "x:");
        for i in 0..10 {
            store
                .set_raw(&format!("k{i}"), "v", Duration::from_secs(60))
                .await
                .unwrap();
        }
        let mut live = 0;
        for i in 0..10 {
            live += usize::from(store.get_raw(&format!("k{i}")).await.unwrap().is_some());
        }
        assert_eq!(live, 3);
    }

    #[test]
    fn build_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let config = SessionStoreConfig::default();
        let future = build(&config);
        assert_send(&future);
    }

    #[tokio::test]
    async fn build_rejects_invalid_config() {
        let config = SessionStoreConfig {
            kind: StoreKind::Redis,
            ..Default::default()
        };
        assert!(matches!(build(&config).await, Err(Error::Config(_))));
    }
}
