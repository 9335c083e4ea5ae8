//! TLS passthrough: the ClientHello is read (never consumed: the bytes are replayed to the
//! backend) and parsed with `tls-parser` for its server name, which picks the upstream.
//!
//! The hello may come in several TCP segments and, rarely, in several TLS records: bytes
//! are read until the handshake message is complete, at most [`MAX_HELLO_BYTES`]; the
//! caller bounds the whole read with the stream's `handshake_timeout`.

use tls_parser::nom::Err as NomErr;
use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_message_handshake, parse_tls_record_header,
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, TlsRecordType,
};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most bytes read while looking for a complete ClientHello.
pub const MAX_HELLO_BYTES: usize = 32 * 1024;

/// The largest TLS record accepted (2^14 plus the expansion TLS allows).
const MAX_RECORD: usize = 16384 + 2048;

pub use crate::server_name::{normalize_pattern, ServerNameTable as SniTable};

/// Why no ClientHello could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// The bytes are not a TLS handshake starting with a ClientHello.
    NotTls,
    /// No complete ClientHello within [`MAX_HELLO_BYTES`].
    TooLarge,
    /// The client closed (or the read failed) before the hello was complete.
    Closed,
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete ClientHello, with its server name (lower case) if it sent one.
    Hello(Option<String>),
    /// A ClientHello may follow: read more.
    NeedMore,
    /// Not a TLS ClientHello.
    Invalid,
}

/// Look at the bytes received so far for a complete ClientHello (over one or more
/// handshake records).
pub fn parse_hello(buf: &[u8]) -> Parsed {
    let mut rest = buf;
    let mut handshake = Vec::new();
    loop {
        let (after, header) = match parse_tls_record_header(rest) {
            Ok(v) => v,
            Err(NomErr::Incomplete(_)) => return Parsed::NeedMore,
            Err(_) => return Parsed::Invalid,
        };
        let len = usize::from(header.len);
        if header.record_type != TlsRecordType::Handshake || len == 0 || len > MAX_RECORD {
            return Parsed::Invalid;
        }
        let Some(fragment) = after.get(..len) else {
            return Parsed::NeedMore;
        };
        handshake.extend_from_slice(fragment);
        rest = &after[len..];
        match parse_tls_message_handshake(&handshake) {
            Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) => {
                return Parsed::Hello(hello.ext.and_then(server_name));
            }
            Ok(_) => return Parsed::Invalid,
            // The message goes on in the next record.
            Err(NomErr::Incomplete(_)) => continue,
            Err(_) => return Parsed::Invalid,
        }
    }
}

/// The host name of a ClientHello's `server_name` extension.
fn server_name(extensions: &[u8]) -> Option<String> {
    let (_, extensions) = parse_tls_client_hello_extensions(extensions).ok()?;
    extensions.iter().find_map(|e| match e {
        TlsExtension::SNI(names) => names
            .iter()
            .find(|(kind, _)| *kind == SNIType::HostName)
            .and_then(|(_, name)| std::str::from_utf8(name).ok())
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase()),
        _ => None,
    })
}

/// Read from `reader` into `buf` (which may already hold bytes) until it holds a complete
/// ClientHello; returns its server name. Every byte read stays in `buf`, to be replayed.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<String>, HelloError> {
    loop {
        match parse_hello(buf) {
            Parsed::Hello(name) => return Ok(name),
            Parsed::Invalid => return Err(HelloError::NotTls),
            Parsed::NeedMore => {}
        }
        if buf.len() >= MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        let room = (MAX_HELLO_BYTES - buf.len()).min(4096);
        buf.reserve(room);
        let mut chunk = reader.take(room as u64);
        match chunk.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HelloError::Closed),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello as the TLS client of the `openssl` crate writes it, for `name`.
    pub(crate) fn client_hello(name: Option<&str>) -> Vec<u8> {
        use openssl::ssl::{SslConnector, SslMethod};
        use std::io::{Read, Write};
        // An in-memory transport that records what the client writes and has nothing to read.
        struct Capture(Vec<u8>);
        impl Read for Capture {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        }
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let connector = SslConnector::builder(SslMethod::tls()).unwrap().build();
        let mut config = connector.configure().unwrap();
        config.set_use_server_name_indication(name.is_some());
        config.set_verify_hostname(false);
        let result = config.connect(name.unwrap_or("ignored.invalid"), Capture(Vec::new()));
        match result {
            Err(openssl::ssl::HandshakeError::WouldBlock(mid)) => mid.get_ref().0.clone(),
            _ => panic!("the handshake should wait for the server"),
        }
    }

    #[test]
    fn patterns() {
        assert_eq!(
            normalize_pattern("DB.Example.com").unwrap(),
            "db.example.com"
        );
        assert_eq!(
            normalize_pattern("*.apps.example.com").unwrap(),
            "*.apps.example.com"
        );
        for bad in ["", "*", "*.", "a..b", "a.*.b", "**.a", "a b.com", "*.-x-.*"] {
            assert!(normalize_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_beats_wildcard_and_longer_wildcard_beats_shorter() {
        let t = SniTable::new([
            ("*.example.com".to_owned(), 1),
            ("*.apps.example.com".to_owned(), 2),
            ("db.apps.example.com".to_owned(), 3),
        ]);
        assert_eq!(t.lookup("db.apps.example.com"), Some(&3));
        assert_eq!(t.lookup("DB.Apps.Example.COM."), Some(&3));
        assert_eq!(t.lookup("x.apps.example.com"), Some(&2));
        assert_eq!(t.lookup("a.b.apps.example.com"), Some(&2));
        assert_eq!(t.lookup("www.example.com"), Some(&1));
        assert_eq!(t.lookup("example.com"), None);
        assert_eq!(t.lookup("apps.example.com"), Some(&1));
        assert_eq!(t.lookup("other.org"), None);
    }

    #[test]
    fn a_real_client_hello_gives_its_name() {
        let hello = client_hello(Some("Api.Example.com"));
        assert_eq!(
            parse_hello(&hello),
            Parsed::Hello(Some("api.example.com".into()))
        );
        assert_eq!(parse_hello(&client_hello(None)), Parsed::Hello(None));
    }

    #[test]
    fn every_prefix_of_a_hello_asks_for_more() {
        let hello = client_hello(Some("db.example.com"));
        for cut in 0..hello.len() {
            assert_eq!(parse_hello(&hello[..cut]), Parsed::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn a_hello_fragmented_over_two_records_is_reassembled() {
        let hello = client_hello(Some("split.example.com"));
        // Re-frame the one handshake message as two records.
        let body = &hello[5..];
        let (a, b) = body.split_at(body.len() / 2);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&hello[..3]);
            two.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(
            parse_hello(&two),
            Parsed::Hello(Some("split.example.com".into()))
        );
        assert_eq!(parse_hello(&two[..two.len() - 1]), Parsed::NeedMore);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            parse_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Invalid
        );
        assert_eq!(parse_hello(&[0x16, 3, 1, 0, 0]), Parsed::Invalid);
        assert_eq!(
            parse_hello(&[0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5]),
            Parsed::Invalid
        );
    }

    #[tokio::test]
    async fn reads_a_hello_split_over_several_writes() {
        let hello = client_hello(Some("slow.example.com"));
        let (mut w, mut r) = tokio::io::duplex(64);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in sent.chunks(7) {
                w.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            w
        });
        let mut buf = Vec::new();
        let name = read_client_hello(&mut r, &mut buf).await.unwrap();
        assert_eq!(name.as_deref(), Some("slow.example.com"));
        assert_eq!(buf, hello, "every byte read is kept for the backend");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_client_that_closes_early_is_an_error() {
        let (w, mut r) = tokio::io::duplex(64);
        drop(w);
        let mut buf = Vec::new();
        assert_eq!(
            read_client_hello(&mut r, &mut buf).await,
            Err(HelloError::Closed)
        );
    }
}
