//! Running the real `gateway` binary as a subprocess.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::{get, Client, Response};

/// How long [`Gateway::start`] waits for the gateway to be ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// The gateway binary: `$SWITCHYARD_GATEWAY` if set, else `debug/gateway` in cargo's target
/// directory (`$CARGO_TARGET_DIR`, or `<workspace>/target`). Panics with what to do when it
/// does not exist.
pub fn gateway_bin() -> PathBuf {
    let path = match std::env::var_os("SWITCHYARD_GATEWAY") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| {
                    if t.is_relative() {
                        workspace_root().join(t)
                    } else {
                        t
                    }
                })
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("debug/gateway")
        }
    };
    if !path.is_file() {
        panic!(
            "the gateway binary {} does not exist: run `cargo build --bin gateway` first \
             (or point SWITCHYARD_GATEWAY at a built binary)",
            path.display()
        );
    }
    path
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed
/// out before.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if given.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new empty directory.
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-tests-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` to `name` inside it and returns the file's path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).expect("write a temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The 1-based line and column of the first occurrence of `needle` in `text`.
/// Panics if absent (a broken test).
pub fn line_col(text: &str, needle: &str) -> (usize, usize) {
    line_col_nth(text, needle, 0)
}

/// The 1-based line and column of occurrence number `n` (0-based) of `needle` in `text`.
pub fn line_col_nth(text: &str, needle: &str, n: usize) -> (usize, usize) {
    let offset = text
        .match_indices(needle)
        .nth(n)
        .unwrap_or_else(|| panic!("test bug: {needle:?} (#{n}) not in the config text"))
        .0;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// What a finished run of the binary printed.
#[derive(Debug)]
pub struct Output {
    /// The exit code (`None` if killed by a signal or timed out).
    pub code: Option<i32>,
    /// Whether it had to be killed because it ran past its time.
    pub timed_out: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs the gateway with `args` (cwd = workspace root), killing it after `timeout`.
pub fn run_gateway(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(gateway_bin())
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the gateway binary");
    let out = Captured::new(&mut child);
    let start = Instant::now();
    let (code, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("wait for the gateway") {
            break (status.code(), false);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    out.join();
    Output {
        code,
        timed_out,
        stdout: out.stdout(),
        stderr: out.stderr(),
    }
}

/// The result of `gateway -c FILE -t` on a configuration text.
#[derive(Debug)]
pub struct ConfigCheck {
    /// The path of the file as passed on the command line.
    pub path: String,
    /// The run's output.
    pub output: Output,
    _dir: TempDir,
}

/// Writes `toml` to a temp file named `name` and runs `gateway -c FILE -t` on it (10 s max).
pub fn check_config_named(name: &str, toml: &str) -> ConfigCheck {
    let dir = TempDir::new();
    let path = dir.write(name, toml);
    let path = path.to_string_lossy().into_owned();
    let output = run_gateway(&["-c", &path, "-t"], Duration::from_secs(10));
    ConfigCheck {
        path,
        output,
        _dir: dir,
    }
}

/// Writes `toml` to a temp file and runs `gateway -c FILE -t` on it (10 s max).
pub fn check_config(toml: &str) -> ConfigCheck {
    check_config_named("gateway.toml", toml)
}

struct Captured {
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Captured {
    fn new(child: &mut Child) -> Captured {
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            let sink = stdout.clone();
            threads.push(std::thread::spawn(move || pump(&mut out, &sink)));
        }
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            threads.push(std::thread::spawn(move || pump(&mut err, &sink)));
        }
        Captured {
            stdout,
            stderr,
            threads,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits (at most 2 s) for the readers to see end of file.
    fn join(&self) {
        let start = Instant::now();
        while self.threads.iter().any(|t| !t.is_finished())
            && start.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn pump(src: &mut impl Read, sink: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 8192];
    loop {
        match src.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
        }
    }
}

/// The last `n` characters of `s` (for failure messages).
fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A running gateway process. On drop it gets SIGTERM, then SIGKILL after a second.
pub struct Gateway {
    child: Child,
    out: Captured,
    listeners: Vec<(String, u16)>,
    admin_port: u16,
    config_path: PathBuf,
    exit: Option<ExitStatus>,
    _dir: TempDir,
}

impl Gateway {
    /// Writes `toml` to a temp file, runs `gateway -c FILE` and waits (20 s max) until the
    /// admin `/health/ready` answers 200 and every listener accepts connections. The config
    /// must set `[admin] addr`; listener and admin ports are read from it. Panics with the
    /// gateway's stderr if it does not get ready.
    pub async fn start(toml: &str) -> Gateway {
        let dir = TempDir::new();
        let config_path = dir.write("gateway.toml", toml);
        let (admin_port, listeners) = ports_of(toml);
        let path = config_path.to_string_lossy().into_owned();
        Gateway::launch(&["-c", &path], admin_port, listeners, config_path, dir).await
    }

    /// [`Gateway::start`] with a generated frame: `[server]` holding `server` (plus
    /// `grace_period = "1s"` unless `server` sets one), `[admin]` on a free port, one
    /// listener named `http` on a free port, then `rest` (routes and upstreams).
    pub async fn start_simple(server: &str, rest: &str) -> Gateway {
        Gateway::start(&simple_config(server, rest)).await
    }

    /// Runs the binary with arbitrary `args` and waits for readiness as
    /// [`Gateway::start`] does, given the admin port and the listeners to expect.
    pub async fn launch(
        args: &[&str],
        admin_port: u16,
        listeners: Vec<(String, u16)>,
        config_path: PathBuf,
        dir: TempDir,
    ) -> Gateway {
        let mut child = Command::new(gateway_bin())
            .args(args)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the gateway binary");
        let out = Captured::new(&mut child);
        let mut gw = Gateway {
            child,
            out,
            listeners,
            admin_port,
            config_path,
            exit: None,
            _dir: dir,
        };
        if let Err(why) = gw.wait_ready(START_TIMEOUT).await {
            let code = gw.child.try_wait().ok().flatten();
            panic!(
                "gateway {args:?} did not get ready: {why} (exit status: {code:?})\n--- stderr ---\n{}\n--- stdout ---\n{}",
                tail(&gw.stderr(), 6000),
                tail(&gw.stdout(), 3000)
            );
        }
        gw
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        let mut last = String::from("no attempt yet");
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                self.exit = Some(status);
                return Err(format!("the process exited early with {status}"));
            }
            match self.try_ready_once().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("not ready after {timeout:?}; last attempt: {last}"))
    }

    async fn try_ready_once(&self) -> Result<(), String> {
        let short = Duration::from_millis(500);
        let mut c = Client::try_connect(self.admin_port, short)
            .await
            .map_err(|e| format!("admin 127.0.0.1:{}: {e}", self.admin_port))?;
        c.set_timeout(Duration::from_secs(2));
        c.try_send("GET /health/ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await?;
        let r = c.try_read_response().await?;
        if r.status != 200 {
            return Err(format!("/health/ready answered {}", r.status));
        }
        for (name, port) in &self.listeners {
            Client::try_connect(*port, short)
                .await
                .map_err(|e| format!("listener {name} on 127.0.0.1:{port}: {e}"))?;
        }
        Ok(())
    }

    /// The port of the first listener.
    pub fn port(&self) -> u16 {
        self.listeners.first().expect("the config has a listener").1
    }

    /// The port of the listener called `name`.
    pub fn listener_port(&self, name: &str) -> u16 {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener named {name}"))
            .1
    }

    /// `GET target` with `Host: host` and `Connection: close` on the first listener.
    pub async fn get(&self, host: &str, target: &str) -> Response {
        get(self.port(), host, target).await
    }

    /// The admin listener's port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The configuration file the gateway was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the gateway wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.out.stdout()
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.out.stderr()
    }

    /// The stdout lines that parse as JSON objects (the access log when it goes to stdout).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        json_lines(&self.stdout())
    }

    /// Waits up to `within` until stdout holds at least `n` JSON lines; returns them all.
    pub async fn wait_access_log(&self, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let lines = self.access_log();
            if lines.len() >= n || start.elapsed() >= within {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /health/ready` on the admin listener: `Some(status)`, or `None` if it did not
    /// answer.
    pub async fn ready_status(&self) -> Option<u16> {
        admin_status(self.admin_port, "/health/ready").await
    }

    /// Sends a signal by name (`"TERM"`, `"HUP"`, `"QUIT"`, `"KILL"`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{name} {} failed", self.child.id());
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exit {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
                self.out.join();
                return Some(s);
            }
            if start.elapsed() >= within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exit.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on an admin port: `Some(status)`, or `None` if nothing answered within 2 s.
pub async fn admin_status(port: u16, path: &str) -> Option<u16> {
    let mut c = Client::try_connect(port, Duration::from_millis(500))
        .await
        .ok()?;
    c.set_timeout(Duration::from_secs(2));
    c.try_send(format!(
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    ))
    .await
    .ok()?;
    c.try_read_response().await.ok().map(|r| r.status)
}

/// The lines of `text` that parse as JSON objects.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// A configuration with `[server]` (holding `server` and a 1 s grace period unless it sets
/// one), `[admin]` and one listener named `http`, on free ports, followed by `rest`.
pub fn simple_config(server: &str, rest: &str) -> String {
    let grace = if server.contains("grace_period") {
        ""
    } else {
        "grace_period = \"1s\"\n"
    };
    format!(
        "[server]\n{grace}{server}\n\n[admin]\naddr = \"127.0.0.1:{}\"\n\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:{}\"\n\n{rest}\n",
        free_port(),
        free_port()
    )
}

/// The admin port and the `(name, port)` of each listener named in a configuration text.
fn ports_of(toml_text: &str) -> (u16, Vec<(String, u16)>) {
    let table: toml::Table = toml_text
        .parse()
        .unwrap_or_else(|e| panic!("test bug: the test config is not TOML: {e}\n{toml_text}"));
    let port_of = |addr: &str| -> u16 {
        addr.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("test bug: no port in {addr:?}"))
    };
    let admin = table
        .get("admin")
        .and_then(|a| a.get("addr"))
        .and_then(|a| a.as_str())
        .expect("test bug: a test config must set [admin] addr");
    let listeners = table
        .get("listener")
        .and_then(|l| l.as_array())
        .map(|arr| {
            arr.iter()
                .map(|l| {
                    let name = l
                        .get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or("")
                        .to_string();
                    let addr = l
                        .get("addr")
                        .and_then(|a| a.as_str())
                        .expect("listener addr");
                    (name, port_of(addr))
                })
                .collect()
        })
        .unwrap_or_default();
    (port_of(admin), listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based() {
        let t = "[server]\nthreads = 1\n  bogus = 2\n";
        assert_eq!(line_col(t, "[server]"), (1, 1));
        assert_eq!(line_col(t, "threads"), (2, 1));
        assert_eq!(line_col(t, "bogus"), (3, 3));
        assert_eq!(line_col_nth(t, "= ", 1), (3, 9));
    }

    #[test]
    fn ports_are_read_from_the_config() {
        let t = "[admin]\naddr = \"127.0.0.1:9901\"\n[[listener]]\nname = \"a\"\naddr = \"0.0.0.0:8080\"\n[[listener]]\nname = \"b\"\naddr = \"[::1]:8443\"\n";
        let (admin, l) = ports_of(t);
        assert_eq!(admin, 9901);
        assert_eq!(l, vec![("a".to_string(), 8080), ("b".to_string(), 8443)]);
    }

    #[test]
    fn free_ports_are_not_repeated() {
        let a: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(a.len(), 50);
    }
}
