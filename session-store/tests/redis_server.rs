//! The Redis store against real `redis-server` processes on 127.0.0.1: a single
//! server (killed, frozen and restarted under the store) and a 3-node Redis Cluster.
//!
//! Each test starts its own servers on free ports, in temporary directories, and
//! kills them when it ends (even on panic). Without `redis-server` on the PATH the
//! tests print a note and pass, except under CI (`CI` set), where they fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_session::{
    affinity_key, build, session_key, Error, SessionStore, SessionStoreConfig, StoreKind,
};

/// The per-operation timeout the stores under test use.
const OP_TIMEOUT: Duration = Duration::from_millis(50);
/// How long a failing operation may take, at most: the timeout and a margin.
const PROMPT: Duration = Duration::from_millis(500);

/// Whether `redis-server` and `redis-cli` can run; fails under CI if not.
fn redis_available() -> bool {
    let works = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("redis-server") && works("redis-cli") {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "redis-server/redis-cli are not installed, and CI is set: the Redis store tests \
             need them (.ci/setup installs the redis-server package)"
        );
    }
    eprintln!("note: redis-server/redis-cli not found; skipping this Redis test");
    false
}

/// A port nothing listens on right now (and, for cluster nodes, whose bus port,
/// 10000 higher, is free too).
fn free_port(with_bus: bool) -> u16 {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        if !with_bus {
            return port;
        }
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// One `redis-server` process, killed when dropped.
struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    fn start(port: u16, dir: &Path, extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!("redis-server on port {} did not come up:\n{log}", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain synchronous connection, to look at what the store wrote.
    fn direct(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("connect directly to redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `PING` over a raw socket; true on `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

async fn redis_store(url: String) -> Arc<dyn SessionStore> {
    let config = SessionStoreConfig {
        kind: StoreKind::Redis,
        url: Some(url),
        timeout: Some(OP_TIMEOUT),
        ..Default::default()
    };
    build(&config).await.expect("build the Redis store")
}

/// Retries `op` until it succeeds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let started = Instant::now();
    loop {
        match op().await {
            Ok(()) => return started.elapsed(),
            Err(e) if started.elapsed() > within => {
                panic!("still failing after {within:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_touch_delete_and_expiry() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(free_port(false), dir.path(), &[]);
    let store = redis_store(server.url()).await;
    assert_eq!(store.kind(), "redis");
    let mut direct = server.direct();

    // JSON values under {prefix}session:{id}.
    let key = session_key("abc123");
    assert_eq!(store.get(&key).await.unwrap(), None);
    let data = json!({"user": "ada", "roles": ["admin"], "n": 3});
    store
        .set(&key, &data, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap(), Some(data.clone()));
    let stored: String = redis::cmd("GET")
        .arg("switchyard:session:abc123")
        .query(&mut direct)
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stored).unwrap(),
        data
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg("switchyard:session:abc123")
        .query(&mut direct)
        .unwrap();
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");

    // Raw values under {prefix}affinity:{upstream}:{session}.
    let pin = affinity_key("api", "abc123");
    store
        .set_raw(&pin, "10.0.0.7:8080", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        store.get_raw(&pin).await.unwrap().as_deref(),
        Some("10.0.0.7:8080")
    );
    let stored: String = redis::cmd("GET")
        .arg("switchyard:affinity:api:abc123")
        .query(&mut direct)
        .unwrap();
    assert_eq!(stored, "10.0.0.7:8080");
    // Not JSON: an error, not a panic.
    assert!(matches!(store.get(&pin).await, Err(Error::Serde(_))));

    // touch slides the TTL.
    store
        .set_raw("slide", "v", Duration::from_millis(400))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(store.touch("slide", Duration::from_secs(5)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.get_raw("slide").await.unwrap().as_deref(), Some("v"));
    let pttl: i64 = redis::cmd("PTTL")
        .arg("switchyard:slide")
        .query(&mut direct)
        .unwrap();
    assert!(pttl > 4_000, "{pttl}");
    assert!(!store
        .touch("missing", Duration::from_secs(5))
        .await
        .unwrap());

    // Expiry.
    store
        .set_raw("short", "v", Duration::from_millis(100))
        .await
        .unwrap();
    assert!(store.get_raw("short").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(store.get_raw("short").await.unwrap(), None);

    // Zero TTLs delete.
    store
        .set_raw("z", "v", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(store.touch("z", Duration::ZERO).await.unwrap());
    assert_eq!(store.get_raw("z").await.unwrap(), None);
    store
        .set_raw("z", "v", Duration::from_secs(5))
        .await
        .unwrap();
    store.set_raw("z", "v", Duration::ZERO).await.unwrap();
    assert_eq!(store.get_raw("z").await.unwrap(), None);

    // delete.
    assert!(store.delete(&key).await.unwrap());
    assert!(!store.delete(&key).await.unwrap());
    assert_eq!(store.get(&key).await.unwrap(), None);

    // Many concurrent operations over the one multiplexed connection.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let key = session_key(&format!("c{t}-{i}"));
                store
                    .set(&key, &json!({"i": i}), Duration::from_secs(10))
                    .await
                    .unwrap();
                assert_eq!(store.get(&key).await.unwrap(), Some(json!({"i": i})));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_fails_promptly_then_recovers_after_restart() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start(free_port(false), dir.path(), &[]);
    let store = redis_store(server.url()).await;
    store
        .set_raw("k", "before", Duration::from_secs(60))
        .await
        .unwrap();

    server.kill();
    let outage = Instant::now();
    let mut timeouts = 0;
    let mut unavailable = 0;
    for i in 0..40 {
        let started = Instant::now();
        let result = if i % 2 == 0 {
            store.get_raw("k").await.map(|_| ())
        } else {
            store.set_raw("k", "during", Duration::from_secs(60)).await
        };
        let took = started.elapsed();
        assert!(took < PROMPT, "operation {i} took {took:?}");
        match result {
            Err(Error::Timeout) => timeouts += 1,
            Err(Error::Unavailable(_)) => unavailable += 1,
            other => panic!("operation {i} against a dead Redis gave {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(timeouts + unavailable, 40);
    assert!(outage.elapsed() < Duration::from_secs(10));

    // Same port again: the same store works again, without being rebuilt.
    server.restart();
    let took = eventually(Duration::from_secs(5), || {
        let store = Arc::clone(&store);
        async move { store.set_raw("k", "after", Duration::from_secs(60)).await }
    })
    .await;
    eprintln!("recovered {took:?} after the restart");
    // The data did not survive (no persistence), but everything works.
    assert_eq!(store.get_raw("k").await.unwrap().as_deref(), Some("after"));
    for i in 0..20 {
        let key = format!("after-{i}");
        store
            .set_raw(&key, "v", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.touch(&key, Duration::from_secs(60)).await.unwrap());
        assert!(store.delete(&key).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_times_out_instead_of_stalling() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(
        free_port(false),
        dir.path(),
        &["--enable-debug-command", "yes"],
    );
    let store = redis_store(server.url()).await;
    store
        .set_raw("k", "v", Duration::from_secs(60))
        .await
        .unwrap();

    // DEBUG SLEEP blocks the whole server, as a hung or overloaded Redis would be.
    let port = server.port;
    let sleeper = std::thread::spawn(move || {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection())
            .unwrap();
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1.5")
            .query(&mut conn)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut timeouts = 0;
    for i in 0..10 {
        let started = Instant::now();
        let result = store.get_raw("k").await;
        let took = started.elapsed();
        assert!(took < PROMPT, "operation {i} took {took:?}");
        match result {
            Err(Error::Timeout) => {
                timeouts += 1;
                assert!(took >= OP_TIMEOUT, "{took:?}");
            }
            // After three timeouts in a row it fails fast.
            Err(Error::Unavailable(why)) => assert!(timeouts >= 3, "{why}"),
            other => panic!("operation {i} against a frozen Redis gave {other:?}"),
        }
    }
    assert!(timeouts >= 3, "{timeouts}");
    sleeper.join().unwrap();
    eventually(Duration::from_secs(5), || {
        let store = Arc::clone(&store);
        async move {
            match store.get_raw("k").await? {
                Some(v) if v == "v" => Ok(()),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_startup_does_not_prevent_construction() {
    if !redis_available() {
        return;
    }
    let port = free_port(false);
    let started = Instant::now();
    let store = redis_store(format!("redis://127.0.0.1:{port}")).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..5 {
        let started = Instant::now();
        match store.get_raw("k").await {
            Err(Error::Unavailable(why)) => assert!(why.contains("not connected"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < PROMPT);
    }

    let dir = tempfile::tempdir().unwrap();
    let _server = RedisServer::start(port, dir.path(), &[]);
    let took = eventually(Duration::from_secs(5), || {
        let store = Arc::clone(&store);
        async move { store.set_raw("k", "v", Duration::from_secs(60)).await }
    })
    .await;
    eprintln!("connected {took:?} after Redis came up");
    assert_eq!(store.get_raw("k").await.unwrap().as_deref(), Some("v"));
}

/// Runs `redis-cli` with `args`, returning its standard output.
fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_spreads_keys_over_slots() {
    if !redis_available() {
        return;
    }
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    let mut ports: Vec<u16> = Vec::new();
    for _ in 0..3 {
        let mut port = free_port(true);
        while ports.contains(&port) {
            port = free_port(true);
        }
        let dir = tempfile::tempdir().unwrap();
        nodes.push(RedisServer::start(
            port,
            dir.path(),
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ],
        ));
        dirs.push(dir);
        ports.push(port);
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    redis_cli(&args);
    let deadline = Instant::now() + Duration::from_secs(15);
    for port in &ports {
        let port = port.to_string();
        while !redis_cli(&["-p", &port, "cluster", "info"]).contains("cluster_state:ok") {
            assert!(
                Instant::now() < deadline,
                "the cluster never reached state ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let config = SessionStoreConfig {
        kind: StoreKind::Redis,
        nodes: Some(vec![
            format!("redis://{}", addrs[0]),
            format!("redis://{}", addrs[1]),
        ]),
        timeout: Some(Duration::from_millis(500)),
        key_prefix: "sy:".into(),
        ..Default::default()
    };
    let store = build(&config).await.unwrap();
    // The first operations may see MOVED/TRYAGAIN while slots settle.
    eventually(Duration::from_secs(5), || {
        let store = Arc::clone(&store);
        async move { store.set_raw("warmup", "v", Duration::from_secs(60)).await }
    })
    .await;

    let count = 60;
    for i in 0..count {
        let key = session_key(&format!("user-{i}"));
        store
            .set(&key, &json!({"i": i}), Duration::from_secs(60))
            .await
            .unwrap();
    }
    for i in 0..count {
        let key = session_key(&format!("user-{i}"));
        assert_eq!(store.get(&key).await.unwrap(), Some(json!({"i": i})));
        assert!(store.touch(&key, Duration::from_secs(120)).await.unwrap());
    }
    let pin = affinity_key("api", "user-1");
    store
        .set_raw(&pin, "backend-2", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.get_raw(&pin).await.unwrap().as_deref(),
        Some("backend-2")
    );

    // The keys really are spread over the three masters.
    let mut total = 0;
    for port in &ports {
        let keys: usize = redis_cli(&["-p", &port.to_string(), "dbsize"])
            .trim()
            .parse()
            .unwrap();
        assert!(keys > 0, "node {port} holds no key");
        total += keys;
    }
    assert_eq!(total, count + 2);

    for i in 0..count {
        let key = session_key(&format!("user-{i}"));
        assert!(store.delete(&key).await.unwrap());
        assert_eq!(store.get(&key).await.unwrap(), None);
    }
}
