//! TLS for the end-to-end tests, all made at run time with the `openssl` crate:
//!
//! - [`Pki`]: a throwaway certificate authority issuing server and client certificates
//!   (and self-signed ones nobody trusts), written as PEM files into a temp directory;
//! - [`TlsBackend`]: a TLS backend speaking HTTP/1.1, and HTTP/2 when ALPN picks it, that
//!   can demand a client certificate and records every handshake and request;
//! - [`TlsClient`]: a TLS client with chosen server name, versions, ciphers and ALPN, with
//!   [`h1_request`] and [`h2_connect`]/[`h2_request`] to speak HTTP over it.
//!
//! Every network wait is bounded by a timeout ([`TLS_IO_TIMEOUT`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    select_next_proto, AlpnError, NameType, Ssl, SslAcceptor, SslConnector, SslFiletype, SslMethod,
    SslRef, SslVerifyMode, SslVersion,
};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_openssl::SslStream;

use crate::gateway::TempDir;

/// How long a TLS handshake, a read or a write of these helpers may take.
pub const TLS_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate and its key as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (leaf only).
    pub cert: PathBuf,
    /// The unencrypted PKCS#8 private key.
    pub key: PathBuf,
}

impl CertFiles {
    /// The certificate's path as a string (for a TOML value).
    pub fn cert_path(&self) -> String {
        self.cert.to_string_lossy().into_owned()
    }

    /// The key's path as a string (for a TOML value).
    pub fn key_path(&self) -> String {
        self.key.to_string_lossy().into_owned()
    }
}

/// A test certificate authority whose files live in a temp directory (removed on drop).
pub struct Pki {
    dir: TempDir,
    ca: X509,
    ca_key: PKey<Private>,
    ca_path: PathBuf,
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("PKey")
}

fn next_serial() -> BigNum {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() << 12);
    BigNum::from_u32(n).expect("serial")
}

/// The kind of certificate [`Pki::issue`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertUse {
    /// A TLS server certificate (`serverAuth`).
    Server,
    /// A TLS client certificate (`clientAuth`).
    Client,
}

fn build_cert(
    cn: &str,
    names: &[&str],
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    usage: Option<CertUse>,
) -> X509 {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", cn).expect("CN");
    let name = name.build();
    let mut b = X509Builder::new().expect("builder");
    b.set_version(2).expect("version");
    b.set_serial_number(&next_serial().to_asn1_integer().expect("serial"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(issuer.map_or(&*name, |(c, _)| c.subject_name()))
        .expect("issuer");
    b.set_pubkey(key).expect("pubkey");
    b.set_not_before(&Asn1Time::from_unix(0).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::days_from_now(2).expect("time"))
        .expect("not after");
    match usage {
        None => {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        }
        Some(u) => {
            b.append_extension(BasicConstraints::new().critical().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .build()
                    .unwrap(),
            )
            .unwrap();
            let mut eku = ExtendedKeyUsage::new();
            match u {
                CertUse::Server => eku.server_auth(),
                CertUse::Client => eku.client_auth(),
            };
            b.append_extension(eku.build().unwrap()).unwrap();
        }
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if let Some((ca, _)) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(Some(ca), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    if !names.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for n in names {
            if n.parse::<IpAddr>().is_ok() {
                san.ip(n);
            } else {
                san.dns(n);
            }
        }
        let san = san
            .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
            .unwrap();
        b.append_extension(san).unwrap();
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).expect("sign");
    b.build()
}

impl Pki {
    /// A new CA named `cn` ("Switchyard Test CA" style), its certificate in `ca.crt`.
    pub fn new(cn: &str) -> Pki {
        let dir = TempDir::new();
        let ca_key = new_key();
        let ca = build_cert(cn, &[], &ca_key, None, None);
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca.to_pem().unwrap()).expect("write ca.crt");
        Pki {
            dir,
            ca,
            ca_key,
            ca_path,
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate file (what a verifier trusts).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The CA certificate file as a string (for a TOML value).
    pub fn ca_path_string(&self) -> String {
        self.ca_path.to_string_lossy().into_owned()
    }

    /// A certificate with common name `cn` for `names` (DNS names or IP addresses), signed
    /// by this CA, written as `<file>.crt` and `<file>.key`.
    pub fn issue(&self, file: &str, cn: &str, names: &[&str], usage: CertUse) -> CertFiles {
        let key = new_key();
        let cert = build_cert(cn, names, &key, Some((&self.ca, &self.ca_key)), Some(usage));
        self.write(file, &cert, &key)
    }

    /// A self-signed server certificate (trusted by nobody) for `names`.
    pub fn self_signed(&self, file: &str, cn: &str, names: &[&str]) -> CertFiles {
        let key = new_key();
        let cert = build_cert(cn, names, &key, None, None);
        self.write(file, &cert, &key)
    }

    fn write(&self, file: &str, cert: &X509, key: &PKey<Private>) -> CertFiles {
        let files = CertFiles {
            cert: self.dir.path().join(format!("{file}.crt")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.to_pem().unwrap()).expect("write cert");
        std::fs::write(&files.key, key.private_key_to_pem_pkcs8().unwrap()).expect("write key");
        files
    }
}

/// The common name of a certificate's subject.
pub fn common_name(cert: &openssl::x509::X509Ref) -> Option<String> {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
}

/// What a [`TlsBackend`] saw of one completed handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The server name the client sent (SNI).
    pub sni: Option<String>,
    /// The protocol ALPN selected (`h2`, `http/1.1`).
    pub alpn: Option<String>,
    /// The common name of the client's certificate, if it sent one.
    pub client_cert: Option<String>,
    /// The protocol version, e.g. `TLSv1.3`.
    pub version: String,
}

/// A request a [`TlsBackend`] received.
#[derive(Debug, Clone)]
pub struct TlsRequest {
    /// The method.
    pub method: String,
    /// The path and query.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// Header fields (lower-case names for HTTP/2), in order.
    pub headers: Vec<(String, String)>,
}

impl TlsRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct BackendState {
    name: String,
    handshakes: Mutex<Vec<Handshake>>,
    failed_handshakes: AtomicUsize,
    requests: Mutex<Vec<TlsRequest>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// Options of a [`TlsBackend`].
#[derive(Debug, Clone, Default)]
pub struct TlsBackendOptions {
    /// Demand a client certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// Offer HTTP/2 by ALPN (preferred over HTTP/1.1).
    pub h2: bool,
}

/// A TLS test backend on `127.0.0.1:<ephemeral>`. Every request gets 200 with the backend's
/// name as the body and `x-backend-protocol`, `x-backend-sni` and `x-backend-client-cert`
/// headers telling what it saw. Stopped on drop.
pub struct TlsBackend {
    addr: SocketAddr,
    state: Arc<BackendState>,
}

fn alpn_h2_h1<'a>(_: &mut SslRef, client: &'a [u8]) -> Result<&'a [u8], AlpnError> {
    select_next_proto(b"\x02h2\x08http/1.1", client).ok_or(AlpnError::NOACK)
}

fn alpn_h1<'a>(_: &mut SslRef, client: &'a [u8]) -> Result<&'a [u8], AlpnError> {
    select_next_proto(b"\x08http/1.1", client).ok_or(AlpnError::NOACK)
}

impl TlsBackend {
    /// Starts a backend named `name` presenting `cert`.
    pub async fn start(name: &str, cert: &CertFiles, options: TlsBackendOptions) -> TlsBackend {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
        b.set_certificate_chain_file(&cert.cert)
            .expect("backend cert");
        b.set_private_key_file(&cert.key, SslFiletype::PEM)
            .expect("backend key");
        b.check_private_key().expect("backend key matches");
        if let Some(ca) = &options.client_ca {
            b.set_ca_file(ca).expect("client CA");
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        if options.h2 {
            b.set_alpn_select_callback(alpn_h2_h1);
        } else {
            b.set_alpn_select_callback(alpn_h1);
        }
        let acceptor = Arc::new(b.build());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a TLS test backend");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(BackendState {
            name: name.to_owned(),
            handshakes: Mutex::new(Vec::new()),
            failed_handshakes: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tcp.set_nodelay(true).ok();
                let st2 = st.clone();
                let acceptor = acceptor.clone();
                let task = tokio::spawn(async move {
                    serve_tls(tcp, &acceptor, &st2).await;
                });
                st.tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        state.tasks.lock().unwrap().push(accept.abort_handle());
        TlsBackend { addr, state }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its address as `127.0.0.1:PORT`.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Its name (the body of its answers).
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Every completed handshake so far.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.state.handshakes.lock().unwrap().clone()
    }

    /// How many handshakes failed (the client gave up or was refused).
    pub fn failed_handshakes(&self) -> usize {
        self.state.failed_handshakes.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<TlsRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        for t in self.state.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn serve_tls(tcp: TcpStream, acceptor: &SslAcceptor, st: &BackendState) {
    let Ok(ssl) = Ssl::new(acceptor.context()) else {
        return;
    };
    let Ok(mut stream) = SslStream::new(ssl, tcp) else {
        return;
    };
    let accepted = tokio::time::timeout(TLS_IO_TIMEOUT, Pin::new(&mut stream).accept()).await;
    if !matches!(accepted, Ok(Ok(()))) {
        st.failed_handshakes.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let ssl = stream.ssl();
    let hs = Handshake {
        sni: ssl.servername(NameType::HOST_NAME).map(str::to_owned),
        alpn: ssl
            .selected_alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        client_cert: ssl.peer_certificate().and_then(|c| common_name(&c)),
        version: ssl.version_str().to_owned(),
    };
    st.handshakes.lock().unwrap().push(hs.clone());
    if hs.alpn.as_deref() == Some("h2") {
        serve_h2(stream, &hs, st).await;
    } else {
        serve_h1(stream, &hs, st).await;
    }
}

fn info_headers(hs: &Handshake, protocol: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-backend-protocol", protocol.to_owned()),
        (
            "x-backend-sni",
            hs.sni.clone().unwrap_or_else(|| "none".into()),
        ),
        (
            "x-backend-client-cert",
            hs.client_cert.clone().unwrap_or_else(|| "none".into()),
        ),
    ]
}

async fn serve_h1(mut stream: SslStream<TcpStream>, hs: &Handshake, st: &BackendState) {
    let mut buf = Vec::new();
    loop {
        let Ok(Some((head, rest))) = read_head(&mut stream, std::mem::take(&mut buf), None).await
        else {
            return;
        };
        let mut lines = head.lines();
        let first = lines.next().unwrap_or_default().to_owned();
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        buf = rest;
        while buf.len() < length {
            if read_more(&mut stream, &mut buf, None).await.unwrap_or(0) == 0 {
                return;
            }
        }
        buf.drain(..length);
        let close = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
        st.requests.lock().unwrap().push(TlsRequest {
            method,
            target,
            protocol: "HTTP/1.1".into(),
            headers,
        });
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            st.name.len()
        );
        for (n, v) in info_headers(hs, "HTTP/1.1") {
            resp.push_str(&format!("{n}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&st.name);
        if stream.write_all(resp.as_bytes()).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

async fn serve_h2(stream: SslStream<TcpStream>, hs: &Handshake, st: &BackendState) {
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        st.requests.lock().unwrap().push(TlsRequest {
            method: req.method().to_string(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/".to_owned(), |p| p.to_string()),
            protocol: "HTTP/2".into(),
            headers,
        });
        let mut resp = http::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .header("content-length", st.name.len());
        for (n, v) in info_headers(hs, "HTTP/2") {
            resp = resp.header(n, v);
        }
        let Ok(mut send) = respond.send_response(resp.body(()).unwrap(), false) else {
            continue;
        };
        let _ = send.send_data(Bytes::from(st.name.clone()), true);
    }
}

async fn read_more<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limit: Option<Duration>,
) -> Result<usize, String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut tmp = [0u8; 16 * 1024];
    let n = match limit {
        Some(t) => tokio::time::timeout(t, stream.read(&mut tmp))
            .await
            .map_err(|_| format!("read timed out after {t:?}"))?,
        None => stream.read(&mut tmp).await,
    }
    .map_err(|e| format!("read error: {e}"))?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

/// Reads up to the end of a head; `Ok(None)` when the peer closed before sending any byte.
/// Returns the head text and the bytes that followed it.
async fn read_head<S>(
    stream: &mut S,
    mut buf: Vec<u8>,
    limit: Option<Duration>,
) -> Result<Option<(String, Vec<u8>)>, String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(pos + 4);
            buf.truncate(pos);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        if buf.len() > 1 << 20 {
            return Err("head larger than 1 MiB".into());
        }
        if read_more(stream, &mut buf, limit).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("connection closed in the middle of a head".into())
            };
        }
    }
}

/// A client-side TLS setup.
#[derive(Debug, Clone, Default)]
pub struct TlsClient {
    /// The server name to send (SNI); none sends no SNI.
    pub server_name: Option<String>,
    /// Verify the server's certificate chain against this CA (the name is not checked).
    pub ca: Option<PathBuf>,
    /// ALPN protocols to offer, e.g. `["h2", "http/1.1"]`; empty offers none.
    pub alpn: Vec<String>,
    /// Lowest protocol version offered.
    pub min_version: Option<SslVersion>,
    /// Highest protocol version offered.
    pub max_version: Option<SslVersion>,
    /// A TLS 1.2 cipher list to offer instead of the default one.
    pub cipher_list: Option<String>,
    /// Allow what OpenSSL 3 refuses by default (TLS 1.0/1.1, weak ciphers): security level 0,
    /// so that a refusal is the server's.
    pub legacy: bool,
}

impl TlsClient {
    /// A client sending `server_name` and trusting `ca`.
    pub fn new(server_name: &str, ca: &Path) -> TlsClient {
        TlsClient {
            server_name: Some(server_name.to_owned()),
            ca: Some(ca.to_path_buf()),
            ..TlsClient::default()
        }
    }

    /// The same, offering these ALPN protocols.
    pub fn with_alpn(mut self, protocols: &[&str]) -> TlsClient {
        self.alpn = protocols.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// The same, offering exactly protocol version `v`.
    pub fn only(mut self, v: SslVersion) -> TlsClient {
        self.min_version = Some(v);
        self.max_version = Some(v);
        self
    }

    /// Connects to `127.0.0.1:port` and completes the handshake, or says why not.
    pub async fn connect(&self, port: u16) -> Result<SslStream<TcpStream>, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        if self.legacy {
            b.set_security_level(0);
            b.set_cipher_list("ALL:@SECLEVEL=0")
                .map_err(|e| e.to_string())?;
        }
        if let Some(list) = &self.cipher_list {
            b.set_cipher_list(list).map_err(|e| e.to_string())?;
        }
        b.set_min_proto_version(self.min_version)
            .map_err(|e| e.to_string())?;
        b.set_max_proto_version(self.max_version)
            .map_err(|e| e.to_string())?;
        match &self.ca {
            Some(ca) => {
                b.set_ca_file(ca).map_err(|e| e.to_string())?;
                b.set_verify(SslVerifyMode::PEER);
            }
            None => b.set_verify(SslVerifyMode::NONE),
        }
        if !self.alpn.is_empty() {
            let mut wire = Vec::new();
            for p in &self.alpn {
                wire.push(p.len() as u8);
                wire.extend_from_slice(p.as_bytes());
            }
            b.set_alpn_protos(&wire).map_err(|e| e.to_string())?;
        }
        let connector = b.build();
        let mut config = connector.configure().map_err(|e| e.to_string())?;
        config.set_verify_hostname(false);
        config.set_use_server_name_indication(self.server_name.is_some());
        let ssl = config
            .into_ssl(self.server_name.as_deref().unwrap_or("localhost"))
            .map_err(|e| e.to_string())?;
        let tcp = tokio::time::timeout(TLS_IO_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).ok();
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        match tokio::time::timeout(TLS_IO_TIMEOUT, Pin::new(&mut stream).connect()).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
            Err(_) => Err("TLS handshake timed out".into()),
        }
    }
}

/// The common name of the certificate the server presented.
pub fn server_common_name(stream: &SslStream<TcpStream>) -> Option<String> {
    stream
        .ssl()
        .peer_certificate()
        .and_then(|c| common_name(&c))
}

/// The negotiated protocol version (`TLSv1.3`) and ALPN protocol.
pub fn negotiated(stream: &SslStream<TcpStream>) -> (String, Option<String>) {
    let ssl = stream.ssl();
    (
        ssl.version_str().to_owned(),
        ssl.selected_alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
    )
}

/// A response read by [`h1_request`] or [`h2_request`].
#[derive(Debug, Clone)]
pub struct SimpleResponse {
    /// The status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl SimpleResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` (the exact bytes of an HTTP/1.1 request) and reads one response to it
/// (Content-Length, chunked or close-delimited body).
pub async fn h1_request<S>(stream: &mut S, request: &str) -> Result<SimpleResponse, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(TLS_IO_TIMEOUT, async {
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| "write timed out".to_owned())?
    .map_err(|e| format!("write: {e}"))?;
    let (head, mut buf) = read_head(stream, Vec::new(), Some(TLS_IO_TIMEOUT))
        .await?
        .ok_or("the connection closed without a response")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            if read_more(stream, &mut buf, Some(TLS_IO_TIMEOUT)).await? == 0 {
                return Err("closed in the middle of the body".into());
            }
        }
        buf.truncate(len);
        buf
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                if read_more(stream, &mut buf, Some(TLS_IO_TIMEOUT)).await? == 0 {
                    return Err("closed in a chunk size line".into());
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                if read_more(stream, &mut buf, Some(TLS_IO_TIMEOUT)).await? == 0 {
                    return Err("closed in a chunk".into());
                }
            }
            if size == 0 {
                break body;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if status == 204 || status == 304 {
        Vec::new()
    } else {
        while read_more(stream, &mut buf, Some(TLS_IO_TIMEOUT)).await? > 0 {}
        buf
    };
    Ok(SimpleResponse {
        status,
        headers,
        body,
    })
}

/// Starts HTTP/2 on a TLS stream that negotiated `h2`; the connection is driven by a task.
pub async fn h2_connect(
    stream: SslStream<TcpStream>,
) -> Result<h2::client::SendRequest<Bytes>, String> {
    let (send, conn) = tokio::time::timeout(TLS_IO_TIMEOUT, h2::client::handshake(stream))
        .await
        .map_err(|_| "HTTP/2 handshake timed out".to_owned())?
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Sends one HTTP/2 request without a body (`uri` is absolute: `https://host/path`, which
/// becomes `:authority` and `:path`) and reads the whole response.
pub async fn h2_request(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<SimpleResponse, String> {
    let mut req = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(()).map_err(|e| e.to_string())?;
    tokio::time::timeout(TLS_IO_TIMEOUT, async {
        let mut send = send
            .clone()
            .ready()
            .await
            .map_err(|e| format!("HTTP/2 not ready: {e}"))?;
        let (response, _) = send
            .send_request(req, true)
            .map_err(|e| format!("HTTP/2 send: {e}"))?;
        let response = response
            .await
            .map_err(|e| format!("HTTP/2 response: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body_stream = response.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = body_stream.data().await {
            let chunk = chunk.map_err(|e| format!("HTTP/2 body: {e}"))?;
            let _ = body_stream.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        Ok(SimpleResponse {
            status,
            headers,
            body,
        })
    })
    .await
    .map_err(|_| "HTTP/2 request timed out".to_owned())?
}
