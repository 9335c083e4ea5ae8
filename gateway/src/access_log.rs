//! The access log: one JSON object a line, written by a background thread so that a
//! request never waits on stdout or a file.

use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

use serde::Serialize;

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Not written.
    Off,
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(String),
}

impl Destination {
    /// Read the `access_log` setting.
    pub fn parse(setting: &str) -> Self {
        match setting {
            "off" => Destination::Off,
            "stdout" => Destination::Stdout,
            path => Destination::File(path.to_owned()),
        }
    }
}

/// One access log entry.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// RFC 3339 time the request started.
    pub time: &'a str,
    /// Client address (after `trusted_proxies`).
    pub client: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Host header or authority.
    pub host: Option<&'a str>,
    /// Path (with query).
    pub path: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Route name, or `null`.
    pub route: Option<&'a str>,
    /// Upstream name, or `null`.
    pub upstream: Option<&'a str>,
    /// Backend address, `null` when none was reached.
    pub backend: Option<&'a str>,
    /// Response body bytes sent.
    pub bytes: usize,
    /// Time from request start to the end of the response, in milliseconds.
    pub duration_ms: f64,
    /// The request id.
    pub request_id: &'a str,
}

/// One access log entry of an L4 stream: a finished TCP or tls-passthrough connection, or
/// an expired UDP flow.
#[derive(Debug, Serialize)]
pub struct StreamEntry<'a> {
    /// RFC 3339 time the connection (or flow) started.
    pub time: &'a str,
    /// The stream's name.
    pub stream: &'a str,
    /// `tcp`, `udp` or `tls-passthrough`.
    pub protocol: &'a str,
    /// Client address and port (from a trusted PROXY header when one was read).
    pub client: &'a str,
    /// The ClientHello's server name (tls-passthrough), else `null`.
    pub sni: Option<&'a str>,
    /// Upstream name, `null` when none was chosen.
    pub upstream: Option<&'a str>,
    /// Backend address, `null` when none was reached.
    pub backend: Option<&'a str>,
    /// Bytes from the client to the backend.
    pub bytes_in: u64,
    /// Bytes from the backend to the client.
    pub bytes_out: u64,
    /// How long the connection (or flow) lasted, in milliseconds.
    pub duration_ms: f64,
    /// `ok`, `connect_failed`, `no_backend`, `idle_timeout` or `reset`.
    pub result: &'a str,
}

/// The access log writer. Lines are queued to a writer thread started on first use (so
/// that it is started after the server has daemonized).
#[derive(Debug)]
pub struct AccessLog {
    destination: Destination,
    sender: OnceLock<Option<SyncSender<Vec<u8>>>>,
}

/// Lines queued at most before new ones are dropped rather than slowing requests.
const QUEUE: usize = 65536;

impl AccessLog {
    /// An access log writing to `destination`.
    pub fn new(destination: Destination) -> Self {
        Self {
            destination,
            sender: OnceLock::new(),
        }
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.destination != Destination::Off
    }

    /// Queue one entry ([`Entry`] for HTTP requests, [`StreamEntry`] for L4 streams).
    pub fn write<T: Serialize>(&self, entry: &T) {
        if !self.enabled() {
            return;
        }
        let mut line = Vec::with_capacity(256);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        let sender = self.sender.get_or_init(|| self.start());
        if let Some(tx) = sender {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                log::warn!("access log queue full: dropping a line");
            }
        }
    }

    fn start(&self) -> Option<SyncSender<Vec<u8>>> {
        let out: Box<dyn Write + Send> = match &self.destination {
            Destination::Off => return None,
            Destination::Stdout => Box::new(std::io::stdout()),
            Destination::File(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => Box::new(f),
                Err(e) => {
                    log::error!("cannot open access log {path}: {e}");
                    return None;
                }
            },
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out))
            .ok()?;
        Some(tx)
    }
}

fn writer(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        // Drain what is queued, then flush once: lines appear promptly, in batches under load.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(&line);
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_json_object_a_line_to_a_file() {
        let path = std::env::temp_dir().join(format!("swy-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::new(Destination::parse(path.to_str().unwrap()));
        for status in [200, 404] {
            log.write(&Entry {
                time: "2026-01-01T00:00:00Z",
                client: Some("127.0.0.1"),
                method: "GET",
                host: Some("h"),
                path: "/\"x\"",
                status,
                route: None,
                upstream: None,
                backend: None,
                bytes: 2,
                duration_ms: 0.5,
                request_id: "id",
            });
        }
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["status"], 404);
        assert_eq!(lines[0]["path"], "/\"x\"");
        assert!(lines[0]["backend"].is_null());
        let _ = std::fs::remove_file(&path);
    }
}
