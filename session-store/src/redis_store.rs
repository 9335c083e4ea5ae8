//! The Redis store: a single Redis or a Redis Cluster.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::{socket2, TcpSettings};
use redis::{Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::redact_url;
use crate::{check_key, Error, SessionStore, MAX_TTL};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Delays between attempts at the first connection.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Consecutive failures (connection errors or timeouts) after which operations
/// fail fast for a while instead of each waiting out its timeout.
const FAILURES_TO_OPEN: u32 = 3;
/// How long operations fail fast after the failures above; doubled on each further
/// failure, up to the maximum, and reset by a success.
const FAIL_FAST_MIN: Duration = Duration::from_millis(100);
const FAIL_FAST_MAX: Duration = Duration::from_secs(1);

/// Where a [`RedisStore`] finds its Redis.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// A single Redis, e.g. `redis://127.0.0.1:6379/0`.
    Single(String),
    /// Some nodes of a Redis Cluster; the rest is discovered from them.
    Cluster(Vec<String>),
}

impl fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisEndpoint::Single(url) => f.debug_tuple("Single").field(&redact_url(url)).finish(),
            RedisEndpoint::Cluster(nodes) => f
                .debug_tuple("Cluster")
                .field(&nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl fmt::Display for RedisEndpoint {
    /// The endpoint for logs, passwords hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisEndpoint::Single(url) => f.write_str(&redact_url(url)),
            RedisEndpoint::Cluster(nodes) => {
                f.write_str("cluster[")?;
                for (i, node) in nodes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(&redact_url(node))?;
                }
                f.write_str("]")
            }
        }
    }
}

/// A session store in a single Redis or a Redis Cluster.
///
/// * Values are Redis strings (`SET key value PX ttl`, `GET`, `PEXPIRE`, `DEL`) under
///   `{key_prefix}{key}`.
/// * Every operation is bounded by the store's timeout and returns [`Error::Timeout`]
///   past it. After three failures in a row (connection errors or timeouts),
///   operations fail fast with [`Error::Unavailable`] for 100 ms, doubling up to 1 s
///   while failures go on; the first success closes that window.
/// * A single Redis is reached through a multiplexed [`ConnectionManager`], which
///   reconnects by itself after the connection drops; a cluster through a
///   [`ClusterConnection`], which follows the slot map and reconnects to nodes.
/// * Construction never needs Redis to be up: [`connect`](Self::connect) waits about
///   a second at most, then the first connection keeps being attempted in the
///   background (100 ms doubling to 1 s between attempts), and operations fail fast
///   with [`Error::Unavailable`] until it succeeds.
/// * Connections run on a one-thread Tokio runtime owned by the store (thread
///   `switchyard-redis`), so the store outlives whatever runtime built it; it stops
///   when the last clone of the store is dropped. Operations themselves must be
///   awaited inside a Tokio runtime with its time driver (as pingora's are); outside
///   one they return [`Error::Unavailable`].
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    timeout: Duration,
    prefix: String,
    endpoint: String,
    breaker: Breaker,
    /// Stops the background runtime when dropped.
    _background: oneshot::Sender<()>,
}

/// What the background connect task hands over to the operations.
struct Shared {
    conn: OnceLock<Conn>,
    connect_error: Mutex<String>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

enum Connector {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl RedisStore {
    /// Creates a store for `endpoint`, bounding each operation by `timeout` and
    /// storing keys under `key_prefix`.
    ///
    /// Waits for the first connection attempt (about a second at most); if it fails,
    /// returns the store anyway and keeps connecting in the background.
    ///
    /// Errors: [`Error::Config`] for an invalid URL or a zero timeout,
    /// [`Error::Unavailable`] if the background thread cannot be started.
    pub async fn connect(
        endpoint: RedisEndpoint,
        timeout: Duration,
        key_prefix: impl Into<String>,
    ) -> Result<Self, Error> {
        if timeout.is_zero() {
            return Err(Error::Config("timeout must be greater than zero".into()));
        }
        let connector = Connector::new(&endpoint)?;
        let shared = Arc::new(Shared {
            conn: OnceLock::new(),
            connect_error: Mutex::new("connecting".to_owned()),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (first_tx, first_rx) = oneshot::channel();
        let task_shared = Arc::clone(&shared);
        let describe = endpoint.to_string();
        let task_describe = describe.clone();
        std::thread::Builder::new()
            .name("switchyard-redis".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.spawn(connect_loop(
                    task_shared,
                    connector,
                    task_describe,
                    first_tx,
                ));
                let _ = ready_tx.send(Ok(()));
                // Runs until the store is dropped (the sender goes away); dropping the
                // runtime then ends the connections' tasks.
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| Error::Unavailable(format!("cannot start the Redis thread: {e}")))?;
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Error::Unavailable(format!(
                    "cannot start the Redis runtime: {e}"
                )))
            }
            Err(_) => return Err(Error::Unavailable("the Redis thread died".into())),
        }
        // The first attempt is bounded on the background runtime; this only waits.
        let _ = first_rx.await;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                shared,
                timeout,
                prefix: key_prefix.into(),
                endpoint: describe,
                breaker: Breaker::new(),
                _background: stop_tx,
            }),
        })
    }

    /// Whether the first connection has been made. Later outages do not reset this:
    /// the connection then reconnects by itself.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.conn.get().is_some()
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Checks that `endpoint`'s URLs parse, without connecting.
    pub(crate) fn check_endpoint(endpoint: &RedisEndpoint) -> Result<(), Error> {
        Connector::new(endpoint).map(|_| ())
    }

    fn full_key(&self, key: &str) -> Result<String, Error> {
        check_key(key)?;
        let mut full = String::with_capacity(self.inner.prefix.len() + key.len());
        full.push_str(&self.inner.prefix);
        full.push_str(key);
        Ok(full)
    }

    /// Runs `cmd` within the timeout, through the fail-fast window.
    async fn run<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, Error> {
        let inner = &*self.inner;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Unavailable(
                "the Redis store must be used within a Tokio runtime".into(),
            ));
        }
        inner.breaker.check()?;
        let Some(conn) = inner.shared.conn.get() else {
            return Err(Error::Unavailable(format!(
                "not connected to {} yet: {}",
                inner.endpoint,
                inner.shared.connect_error.lock()
            )));
        };
        let mut conn = conn.clone();
        let outcome = tokio::time::timeout(inner.timeout, async move {
            match &mut conn {
                Conn::Single(c) => match cmd.query_async::<T>(c).await {
                    // A refusal comes from a reconnection attempt that failed before
                    // this call; the manager has just started a fresh one, which
                    // succeeds at once if Redis is back. The command was never sent,
                    // so trying again within the same timeout is safe.
                    Err(e) if e.is_connection_refusal() => cmd.query_async::<T>(c).await,
                    result => result,
                },
                Conn::Cluster(c) => cmd.query_async::<T>(c).await,
            }
        })
        .await;
        match outcome {
            Ok(Ok(value)) => {
                if inner.breaker.success() {
                    log::info!("session store: Redis {} is reachable again", inner.endpoint);
                }
                Ok(value)
            }
            Ok(Err(e)) => {
                let why = e.to_string();
                if is_connectivity(&e) {
                    inner.breaker.failure(&why, &inner.endpoint);
                } else {
                    // Redis answered (with an error): it is reachable.
                    inner.breaker.success();
                }
                if e.is_timeout() {
                    Err(Error::Timeout)
                } else {
                    Err(Error::Unavailable(why))
                }
            }
            Err(_) => {
                inner.breaker.failure(
                    &format!("no answer within {:?}", inner.timeout),
                    &inner.endpoint,
                );
                Err(Error::Timeout)
            }
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("endpoint", &self.inner.endpoint)
            .field("timeout", &self.inner.timeout)
            .field("key_prefix", &self.inner.prefix)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// The TTL as Redis milliseconds: at least 1, at most [`MAX_TTL`].
fn ttl_millis(ttl: Duration) -> u64 {
    let ms = ttl.min(MAX_TTL).as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn get_raw(&self, key: &str) -> Result<Option<String>, Error> {
        let key = self.full_key(key)?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.run(cmd).await
    }

    async fn set_raw(&self, key: &str, value: &str, ttl: Duration) -> Result<(), Error> {
        let key = self.full_key(key)?;
        if ttl.is_zero() {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(key);
            return self.run::<i64>(cmd).await.map(|_| ());
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(ttl_millis(ttl));
        self.run::<()>(cmd).await
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, Error> {
        // One round trip, atomic, one key (so it works on Redis Cluster too).
        const INCR_SCRIPT: &str = "local n = redis.call('INCR', KEYS[1]) \
            if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n";
        let full = self.full_key(key)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(INCR_SCRIPT).arg(1).arg(&full).arg(ttl_millis(ttl));
        self.run::<u64>(cmd).await
    }

    async fn touch(&self, key: &str, ttl: Duration) -> Result<bool, Error> {
        let key = self.full_key(key)?;
        // PEXPIRE 0 deletes the key, like a zero TTL elsewhere.
        let ms = if ttl.is_zero() { 0 } else { ttl_millis(ttl) };
        let mut cmd = redis::cmd("PEXPIRE");
        cmd.arg(key).arg(ms);
        self.run::<i64>(cmd).await.map(|n| n > 0)
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let key = self.full_key(key)?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        self.run::<i64>(cmd).await.map(|n| n > 0)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }
}

/// Whether `e` says Redis could not be reached (rather than that it answered with
/// an error).
fn is_connectivity(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterDown
                | ErrorKind::MasterDown
                | ErrorKind::TryAgain
                | ErrorKind::BusyLoadingError
                | ErrorKind::ClusterConnectionNotFound
        )
}

/// Socket options: no Nagle delay, and dead peers detected by keepalive and
/// `TCP_USER_TIMEOUT` (so a connection to a vanished host is replaced).
fn tcp_settings() -> TcpSettings {
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(10));
    #[cfg(target_os = "linux")]
    let keepalive = keepalive
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(Duration::from_secs(10));
    settings
}

impl Connector {
    fn new(endpoint: &RedisEndpoint) -> Result<Self, Error> {
        let bad = |url: &str, e: RedisError| {
            Error::Config(format!("invalid Redis URL {}: {e}", redact_url(url)))
        };
        match endpoint {
            RedisEndpoint::Single(url) => redis::Client::open(url.as_str())
                .map(Connector::Single)
                .map_err(|e| bad(url, e)),
            RedisEndpoint::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(Error::Config("no Redis Cluster nodes".into()));
                }
                let mut infos = Vec::with_capacity(nodes.len());
                for node in nodes {
                    infos.push(
                        node.as_str()
                            .into_connection_info()
                            .map_err(|e| bad(node, e))?,
                    );
                }
                ClusterClient::builder(infos)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .retries(2)
                    .min_retry_wait(5)
                    .max_retry_wait(50)
                    .tcp_settings(tcp_settings())
                    .build()
                    .map(Connector::Cluster)
                    .map_err(|e| Error::Config(format!("invalid Redis Cluster nodes: {e}")))
            }
        }
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        match self {
            Connector::Single(client) => {
                // No retries inside the manager: a reconnection is one attempt, made
                // when an operation finds the connection gone; the fail-fast window
                // spaces those attempts out while Redis stays down.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_tcp_settings(tcp_settings());
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Conn::Single)
            }
            Connector::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }
}

/// Makes the first connection, retrying with backoff until it succeeds; tells
/// `first` after the first attempt either way.
async fn connect_loop(
    shared: Arc<Shared>,
    connector: Connector,
    endpoint: String,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut backoff = CONNECT_BACKOFF_MIN;
    loop {
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_millis(250),
            connector.connect(),
        )
        .await;
        let why = match attempt {
            Ok(Ok(conn)) => {
                let _ = shared.conn.set(conn);
                log::info!("session store: connected to Redis {endpoint}");
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {CONNECT_TIMEOUT:?}"),
        };
        if let Some(first) = first.take() {
            log::warn!(
                "session store: cannot connect to Redis {endpoint} ({why}); \
                 starting degraded and retrying in the background"
            );
            let _ = first.send(());
        }
        *shared.connect_error.lock() = why;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
    }
}

/// Counts consecutive failures and, past [`FAILURES_TO_OPEN`], makes operations
/// fail fast for a growing while.
struct Breaker {
    state: Mutex<BreakerState>,
}

struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    window: Duration,
    last_error: String,
}

impl Breaker {
    fn new() -> Self {
        Breaker {
            state: Mutex::new(BreakerState {
                failures: 0,
                open_until: None,
                window: FAIL_FAST_MIN,
                last_error: String::new(),
            }),
        }
    }

    /// `Err` while operations should fail fast.
    fn check(&self) -> Result<(), Error> {
        let state = self.state.lock();
        match state.open_until {
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Err(Error::Unavailable(format!(
                        "{} (failing fast for {} ms more)",
                        state.last_error,
                        (until - now).as_millis()
                    )))
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Records a success; returns whether this ends an outage.
    fn success(&self) -> bool {
        let mut state = self.state.lock();
        if state.failures == 0 {
            return false;
        }
        let recovered = state.open_until.is_some();
        state.failures = 0;
        state.open_until = None;
        state.window = FAIL_FAST_MIN;
        recovered
    }

    /// Records a failure; opens (or reopens, for longer) the fail-fast window once
    /// there were enough in a row.
    fn failure(&self, why: &str, endpoint: &str) {
        let mut state = self.state.lock();
        state.failures = state.failures.saturating_add(1);
        state.last_error.clear();
        state.last_error.push_str(why);
        if state.failures < FAILURES_TO_OPEN {
            return;
        }
        let now = Instant::now();
        if state.open_until.is_some_and(|until| now < until) {
            // Already failing fast (an operation that started before the window).
            return;
        }
        if state.open_until.is_none() {
            log::warn!(
                "session store: Redis {endpoint} unavailable ({why}); operations fail \
                 fast until it answers again"
            );
        }
        state.open_until = Some(now + state.window);
        state.window = (state.window * 2).min(FAIL_FAST_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_consecutive_failures_and_backs_off() {
        let b = Breaker::new();
        assert!(b.check().is_ok());
        b.failure("refused", "r");
        b.failure("refused", "r");
        assert!(b.check().is_ok(), "two failures do not open it");
        b.failure("refused", "r");
        let e = b.check().unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        tokio::time::advance(FAIL_FAST_MIN).await;
        assert!(b.check().is_ok(), "the window ends");
        // A failed probe reopens it for twice as long.
        b.failure("refused", "r");
        tokio::time::advance(FAIL_FAST_MIN).await;
        assert!(b.check().is_err());
        tokio::time::advance(FAIL_FAST_MIN).await;
        assert!(b.check().is_ok());
        // The window never grows past the maximum.
        for _ in 0..20 {
            b.failure("refused", "r");
            tokio::time::advance(FAIL_FAST_MAX).await;
            assert!(b.check().is_ok());
        }
        // A success closes it and resets the window.
        b.failure("refused", "r");
        assert!(b.check().is_err());
        assert!(b.success());
        assert!(b.check().is_ok());
        assert!(!b.success());
        for _ in 0..3 {
            b.failure("refused", "r");
        }
        tokio::time::advance(FAIL_FAST_MIN).await;
        assert!(b.check().is_ok());
    }

    #[test]
    fn a_success_between_failures_keeps_it_closed() {
        let b = Breaker::new();
        for _ in 0..10 {
            b.failure("x", "r");
            b.failure("x", "r");
            assert!(!b.success());
            assert!(b.check().is_ok());
        }
    }

    #[test]
    fn ttl_conversion() {
        assert_eq!(ttl_millis(Duration::from_micros(10)), 1);
        assert_eq!(ttl_millis(Duration::from_millis(1500)), 1500);
        assert_eq!(ttl_millis(Duration::MAX), MAX_TTL.as_millis() as u64);
    }

    #[test]
    fn endpoints_are_checked_and_shown_without_passwords() {
        let single = RedisEndpoint::Single("redis://:pw@127.0.0.1:6379/0".into());
        assert!(RedisStore::check_endpoint(&single).is_ok());
        assert_eq!(single.to_string(), "redis://:***@127.0.0.1:6379/0");
        assert!(!format!("{single:?}").contains("pw"));
        let cluster = RedisEndpoint::Cluster(vec![
            "redis://127.0.0.1:7000".into(),
            "redis://127.0.0.1:7001".into(),
        ]);
        assert!(RedisStore::check_endpoint(&cluster).is_ok());
        assert_eq!(
            cluster.to_string(),
            "cluster[redis://127.0.0.1:7000, redis://127.0.0.1:7001]"
        );
        for bad in ["http://127.0.0.1", "not a url", ""] {
            let e = RedisStore::check_endpoint(&RedisEndpoint::Single(bad.into())).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad}: {e}");
        }
        assert!(RedisStore::check_endpoint(&RedisEndpoint::Cluster(vec![])).is_err());
    }

    #[tokio::test]
    async fn zero_timeout_is_refused() {
        let e = RedisStore::connect(
            RedisEndpoint::Single("redis://127.0.0.1:1".into()),
            Duration::ZERO,
            "p:",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)));
    }

    /// Port 1 on loopback refuses connections: construction still succeeds, quickly,
    /// and operations fail fast.
    #[tokio::test]
    async fn unreachable_redis_does_not_prevent_construction() {
        let started = std::time::Instant::now();
        let store = RedisStore::connect(
            RedisEndpoint::Single("redis://127.0.0.1:1".into()),
            Duration::from_millis(50),
            "p:",
        )
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!store.is_connected());
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let e = store.get_raw("session:x").await.unwrap_err();
            assert!(matches!(e, Error::Unavailable(_)), "{e}");
            assert!(e.to_string().contains("not connected"), "{e}");
            assert!(started.elapsed() < Duration::from_millis(50));
        }
        // Key checks come first.
        assert!(matches!(store.get_raw("").await, Err(Error::InvalidKey(_))));
        assert!(format!("{store:?}").contains("connected: false"));
    }

    #[test]
    fn used_outside_a_runtime_it_reports_instead_of_panicking() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt
            .block_on(RedisStore::connect(
                RedisEndpoint::Single("redis://127.0.0.1:1".into()),
                Duration::from_millis(50),
                "p:",
            ))
            .unwrap();
        drop(rt);
        use std::future::Future;
        // Poll the operation with a no-op waker, outside any runtime.
        let fut = store.get_raw("k");
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Err(Error::Unavailable(why))) => {
                assert!(why.contains("Tokio runtime"), "{why}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
