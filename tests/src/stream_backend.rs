//! Backends for the L4 stream tests: a TCP echo server that records the bytes each
//! connection brought (so PROXY headers can be checked byte for byte), and a UDP echo
//! server that answers each datagram with its name and records who sent what.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::AbortHandle;

/// The bytes each connection brought, in accept order.
type Recorded = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;
/// Every datagram received, with its source.
type Datagrams = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// Bytes of each connection a [`TcpEcho`] keeps.
const RECORD_LIMIT: usize = 1 << 20;

/// A TCP echo backend on 127.0.0.1: every byte is sent back; when the client closes its
/// side, the backend closes its own after echoing everything (so half-close is visible).
pub struct TcpEcho {
    name: String,
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    received: Recorded,
    task: AbortHandle,
}

impl TcpEcho {
    /// Starts a backend called `name` on a free port.
    pub async fn start(name: &str) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo backend");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let received: Recorded = Arc::default();
        let (c, o, r) = (connections.clone(), open.clone(), received.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let record = Arc::new(Mutex::new(Vec::new()));
                r.lock().unwrap().push(record.clone());
                let o = o.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                {
                                    let mut rec = record.lock().unwrap();
                                    if rec.len() < RECORD_LIMIT {
                                        rec.extend_from_slice(&buf[..n]);
                                    }
                                }
                                if sock.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = sock.shutdown().await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        })
        .abort_handle();
        TcpEcho {
            name: name.to_owned(),
            addr,
            connections,
            open,
            received,
            task,
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its address as `"127.0.0.1:PORT"`.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The bytes connection `i` (in accept order) brought so far.
    pub fn received(&self, i: usize) -> Vec<u8> {
        self.received
            .lock()
            .unwrap()
            .get(i)
            .map(|r| r.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Waits up to `within` until connection `i` brought at least `n` bytes; returns them.
    pub async fn wait_received(&self, i: usize, n: usize, within: Duration) -> Vec<u8> {
        let start = Instant::now();
        loop {
            let got = self.received(i);
            if got.len() >= n || start.elapsed() >= within {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP backend on 127.0.0.1 answering each datagram with `"<name>:"` and the datagram.
pub struct UdpEcho {
    name: String,
    addr: SocketAddr,
    datagrams: Datagrams,
    task: AbortHandle,
}

impl UdpEcho {
    /// Starts a backend called `name` on a free port.
    pub async fn start(name: &str) -> UdpEcho {
        let sock = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind udp backend");
        let addr = sock.local_addr().expect("local addr");
        let datagrams: Datagrams = Arc::default();
        let d = datagrams.clone();
        let prefix = format!("{name}:").into_bytes();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                d.lock().unwrap().push((from, buf[..n].to_vec()));
                let mut reply = prefix.clone();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from).await;
            }
        })
        .abort_handle();
        UdpEcho {
            name: name.to_owned(),
            addr,
            datagrams,
            task,
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address as `"127.0.0.1:PORT"`.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Every datagram received: its source and bytes.
    pub fn datagrams(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.datagrams.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free UDP port on 127.0.0.1 (nothing listens there afterwards).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.local_addr().expect("local addr").port()
}
