//! A DNS client for tests, on hickory-proto's wire format: UDP (with retries, every wait
//! bounded) and TCP queries to 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How one query is built.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// EDNS with this UDP payload size.
    pub edns: Option<u16>,
    /// An ECS option: address and source prefix.
    pub ecs: Option<(IpAddr, u8)>,
}

/// A query message for `name` / `qtype`.
pub fn query_message(name: &str, qtype: RecordType, ask: &Ask) -> Message {
    let mut m = Message::new();
    m.set_id(rand_id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(
            Name::from_ascii(name).expect("test bug: a bad query name"),
            qtype,
        ));
    if ask.edns.is_some() || ask.ecs.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(ask.edns.unwrap_or(1232));
        if let Some((addr, prefix)) = ask.ecs {
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(addr, prefix, 0)));
        }
        m.set_edns(edns);
    }
    m
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(1);
    N.fetch_add(7919, Ordering::Relaxed)
}

/// Sends `bytes` over UDP to `port` and returns the first datagram back with the same id,
/// retrying 3 times with a 1 s wait each; `None` when nothing came.
pub async fn udp_raw(port: u16, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let mut buf = vec![0u8; 65535];
    for _ in 0..3 {
        socket.send_to(bytes, to).await.ok()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok((n, _))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            if n >= 2 && bytes.len() >= 2 && buf[..2] == bytes[..2] {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

/// Asks `name` / `qtype` over UDP; panics when no answer comes within the retries.
pub async fn ask_udp(port: u16, name: &str, qtype: RecordType, ask: &Ask) -> Message {
    let m = query_message(name, qtype, ask);
    let bytes = m.to_vec().expect("encode a query");
    let reply = udp_raw(port, &bytes)
        .await
        .unwrap_or_else(|| panic!("no UDP answer to {name} {qtype} on port {port}"));
    Message::from_vec(&reply).expect("the answer parses")
}

/// Sends one length-prefixed message over TCP and reads the answer (5 s bound).
pub async fn tcp_raw(port: u16, bytes: &[u8]) -> Option<Vec<u8>> {
    let work = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed).await.ok()?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .ok()
        .flatten()
}

/// Asks `name` / `qtype` over TCP.
pub async fn ask_tcp(port: u16, name: &str, qtype: RecordType, ask: &Ask) -> Message {
    let m = query_message(name, qtype, ask);
    let reply = tcp_raw(port, &m.to_vec().expect("encode a query"))
        .await
        .unwrap_or_else(|| panic!("no TCP answer to {name} {qtype} on port {port}"));
    Message::from_vec(&reply).expect("the answer parses")
}

/// The addresses in the answer section (A and AAAA), as text, sorted.
pub fn addrs(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// The ECS option echoed in an answer: (address, source prefix, scope prefix).
pub fn ecs_of(m: &Message) -> Option<(IpAddr, u8, u8)> {
    let edns = m.extensions().as_ref()?;
    match edns
        .options()
        .get(hickory_proto::rr::rdata::opt::EdnsCode::Subnet)
    {
        Some(EdnsOption::Subnet(cs)) => Some((cs.addr(), cs.source_prefix(), cs.scope_prefix())),
        _ => None,
    }
}
