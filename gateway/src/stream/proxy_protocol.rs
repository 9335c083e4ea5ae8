//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), through the `ppp` crate:
//! building the header sent to backends, and reading one from a trusted proxy.

use std::net::SocketAddr;

use ppp::v2::{Builder, Command, Protocol, Version};
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::ProxyProtocolVersion;

/// The longest header read from a client (v1 is at most 107 bytes; v2 with TLVs may be
/// longer, but a proxy's header is far below this).
pub const MAX_HEADER_BYTES: usize = 4096;

/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;

/// The header announcing a connection (`datagram`: a UDP flow, v2 only) from `source` to
/// `destination`. Addresses of different families (never the case for one socket) are
/// sent as v1 `UNKNOWN` / v2 `LOCAL`.
pub fn header(
    version: ProxyProtocolVersion,
    datagram: bool,
    source: SocketAddr,
    destination: SocketAddr,
) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let same = source.is_ipv4() == destination.is_ipv4();
    match version {
        ProxyProtocolVersion::V1 => {
            let addresses = if same {
                ppp::v1::Addresses::from((source, destination))
            } else {
                ppp::v1::Addresses::default()
            };
            addresses.to_string().into_bytes()
        }
        ProxyProtocolVersion::V2 => {
            let protocol = if datagram {
                Protocol::Datagram
            } else {
                Protocol::Stream
            };
            let built = if same {
                Builder::with_addresses(
                    Version::Two | Command::Proxy,
                    protocol,
                    (source, destination),
                )
                .build()
            } else {
                Builder::with_addresses(
                    Version::Two | Command::Local,
                    Protocol::Unspecified,
                    ppp::v2::Addresses::Unspecified,
                )
                .build()
            };
            built.unwrap_or_default()
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so that a dual-stack peer and its local address
/// agree on a family.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let plain = |s: SocketAddr| match s {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => s,
        },
        v4 => v4,
    };
    (plain(a), plain(b))
}

/// Why a PROXY header could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The bytes are not a PROXY v1 or v2 header.
    Invalid(String),
    /// The client closed before the header was complete.
    Closed,
    /// No complete header within [`MAX_HEADER_BYTES`].
    TooLarge,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(why) => write!(f, "not a PROXY header: {why}"),
            Self::Closed => f.write_str("closed before the PROXY header was complete"),
            Self::TooLarge => f.write_str("PROXY header too large"),
        }
    }
}

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes, with its (source, destination) when it carries
    /// inet addresses (`None` for `LOCAL`, `UNKNOWN` and unix addresses).
    Header {
        /// Bytes of the header.
        len: usize,
        /// Its addresses.
        addrs: Option<(SocketAddr, SocketAddr)>,
    },
    /// A header may follow: read more.
    NeedMore,
    /// Not a header.
    Invalid(String),
}

/// Parse a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    // A v1 header ends with CRLF within 107 bytes; `ppp` may take a port cut short for a
    // wrong one, so it is only asked once the line is complete.
    if b"PROXY".starts_with(&buf[..buf.len().min(5)]) {
        let line_end = buf.windows(2).take(V1_MAX).position(|w| w == b"\r\n");
        if line_end.is_none() {
            return if buf.len() >= V1_MAX {
                Parsed::Invalid("no end of line in a v1 header".into())
            } else {
                Parsed::NeedMore
            };
        }
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Parsed::NeedMore;
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let addrs = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Unknown => None,
            };
            Parsed::Header {
                len: h.header.len(),
                addrs,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let addrs = match (h.command, h.addresses) {
                (Command::Proxy, ppp::v2::Addresses::IPv4(a)) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                (Command::Proxy, ppp::v2::Addresses::IPv6(a)) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                _ => None,
            };
            Parsed::Header {
                len: h.header.len(),
                addrs,
            }
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(e.to_string()),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(e.to_string()),
    }
}

/// Read a PROXY header from `reader`. `buf` receives every byte read; on success the
/// header is removed from it and what follows (the client's first bytes) stays.
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<(SocketAddr, SocketAddr)>, HeaderError> {
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Parsed::Header { len, addrs } => {
                    buf.drain(..len.min(buf.len()));
                    return Ok(addrs);
                }
                Parsed::Invalid(why) => return Err(HeaderError::Invalid(why)),
                Parsed::NeedMore => {}
            }
        }
        if buf.len() >= MAX_HEADER_BYTES {
            return Err(HeaderError::TooLarge);
        }
        // Read no further than the header could reach, so that the client's own bytes
        // after it are not waited for.
        let room = MAX_HEADER_BYTES - buf.len();
        let mut chunk = reader.take(room as u64);
        match chunk.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HeaderError::Closed),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_header_bytes() {
        let h = header(
            ProxyProtocolVersion::V1,
            false,
            a("192.0.2.7:51234"),
            a("127.0.0.1:5432"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 5432\r\n");
        let h = header(
            ProxyProtocolVersion::V1,
            false,
            a("[2001:db8::1]:4000"),
            a("[::1]:443"),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 4000 443\r\n");
    }

    #[test]
    fn v2_header_bytes() {
        let h = header(
            ProxyProtocolVersion::V2,
            false,
            a("192.0.2.7:51234"),
            a("127.0.0.1:5432"),
        );
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend([0x21, 0x11, 0, 12, 192, 0, 2, 7, 127, 0, 0, 1]);
        want.extend(51234u16.to_be_bytes());
        want.extend(5432u16.to_be_bytes());
        assert_eq!(h, want);
        let udp = header(
            ProxyProtocolVersion::V2,
            true,
            a("192.0.2.7:53"),
            a("127.0.0.1:53"),
        );
        assert_eq!(udp[13], 0x12, "AF_INET + DGRAM");
    }

    #[test]
    fn mapped_addresses_are_sent_as_ipv4() {
        let h = header(
            ProxyProtocolVersion::V1,
            false,
            a("[::ffff:192.0.2.7]:1000"),
            a("127.0.0.1:80"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 127.0.0.1 1000 80\r\n");
    }

    #[test]
    fn round_trips_and_leaves_what_follows() {
        for version in [ProxyProtocolVersion::V1, ProxyProtocolVersion::V2] {
            let mut bytes = header(version, false, a("192.0.2.7:51234"), a("127.0.0.1:5432"));
            let len = bytes.len();
            bytes.extend_from_slice(b"hello");
            assert_eq!(
                parse(&bytes),
                Parsed::Header {
                    len,
                    addrs: Some((a("192.0.2.7:51234"), a("127.0.0.1:5432")))
                }
            );
            for cut in 1..len {
                assert_eq!(
                    parse(&bytes[..cut]),
                    Parsed::NeedMore,
                    "{version:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn garbage_and_unknown() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(_)
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                addrs: None
            }
        );
    }

    #[tokio::test]
    async fn reads_a_header_split_over_writes() {
        let mut bytes = header(
            ProxyProtocolVersion::V2,
            false,
            a("192.0.2.9:1"),
            a("127.0.0.1:2"),
        );
        bytes.extend_from_slice(b"payload");
        let (mut w, mut r) = tokio::io::duplex(16);
        let sent = bytes.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in sent.chunks(3) {
                w.write_all(c).await.unwrap();
            }
            w
        });
        let mut buf = Vec::new();
        let addrs = read_header(&mut r, &mut buf).await.unwrap();
        assert_eq!(addrs, Some((a("192.0.2.9:1"), a("127.0.0.1:2"))));
        let _w = writer.await.unwrap();
        // What followed the header, as far as it was read, is kept.
        assert!(b"payload".starts_with(&buf), "{buf:?}");
    }
}
