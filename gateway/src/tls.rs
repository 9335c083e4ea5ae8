//! TLS: termination on listeners and re-encryption to upstreams.
//!
//! **Listeners** (`tls = { cert, key }`, `sni = [{ name, cert, key }]`): the certificate is
//! chosen during the handshake from the client's server name (SNI): an exact `sni` name
//! first, then the most specific `*.example.com` wildcard, else the listener's own
//! certificate. Only TLS 1.2 and 1.3 are offered, with Mozilla's "intermediate" cipher
//! suites; ALPN offers `h2` then `http/1.1`.
//!
//! **Upstreams** (`tls = { sni, ca, verify, client_cert, client_key, h2 }`): each backend's
//! [`HttpPeer`] speaks TLS, verifies the backend's certificate against `ca` (the system roots
//! when absent) and the name `sni` (the backend's host name when absent), presents a client
//! certificate when one is configured, and offers HTTP/2 by ALPN with `h2 = true`.
//!
//! Every file is read and checked when the configuration is validated, so a missing file, a
//! file that is not PEM or a key that does not belong to its certificate is a configuration
//! error, not a failure at the first handshake.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};

use arc_swap::ArcSwap;

use async_trait::async_trait;
use openssl::asn1::Asn1Time;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::ALPN;
use pingora_core::tls::ext;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::ssl::{NameType, SslOptions, SslVersion};
use pingora_core::tls::x509::X509;
use pingora_core::upstreams::peer::{HttpPeer, Scheme};
use pingora_core::utils::tls::CertKey;

use crate::config::{ListenerSection, ListenerTls, SniEntry, UpstreamSection, UpstreamTls};
use crate::server_name::ServerNameTable;

/// Read a PEM certificate chain (leaf first) and its private key, and check that they
/// belong together. The error names the file and what is wrong with it.
pub fn load_cert_key(cert_path: &str, key_path: &str) -> Result<CertKey, String> {
    let chain = load_certificates(cert_path)?;
    let key = load_private_key(key_path)?;
    let matches = chain[0]
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(format!(
            "the private key `{key_path}` does not belong to the certificate `{cert_path}`"
        ));
    }
    Ok(CertKey::new(chain, key))
}

/// Read every PEM certificate in a file (at least one).
pub fn load_certificates(path: &str) -> Result<Vec<X509>, String> {
    if path.is_empty() {
        return Err("expected the path of a PEM certificate file, got an empty string".into());
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let certs = X509::stack_from_pem(&pem).unwrap_or_default();
    if certs.is_empty() {
        return Err(format!(
            "`{path}` holds no PEM certificate: expected \"-----BEGIN CERTIFICATE-----\" blocks"
        ));
    }
    Ok(certs)
}

/// Read an unencrypted PEM private key (PKCS#8, RSA or EC).
pub fn load_private_key(path: &str) -> Result<PKey<Private>, String> {
    if path.is_empty() {
        return Err("expected the path of a PEM private key file, got an empty string".into());
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    if pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(format!(
            "`{path}` is an encrypted private key: expected an unencrypted PEM key"
        ));
    }
    // The callback answers "no passphrase", so OpenSSL never prompts on a terminal.
    PKey::private_key_from_pem_callback(&pem, |_| Ok(0)).map_err(|_| {
        format!("`{path}` holds no PEM private key: expected a \"-----BEGIN ... PRIVATE KEY-----\" block")
    })
}

fn valid_server_name(name: &str) -> bool {
    crate::server_name::is_valid(name)
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A listener's certificates, chosen per handshake by the client's server name.
pub struct CertStore {
    default: Arc<CertKey>,
    /// The `sni` certificates by name (exact, then longest wildcard).
    names: ServerNameTable<Arc<CertKey>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field(
                "names",
                &self.names.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Load the listener's certificate and its `sni` certificates. On failure, every
    /// problem found, each naming the key it is about (`tls.cert`, `sni[1].key`, ...).
    pub fn load(tls: &ListenerTls, sni: &[SniEntry]) -> Result<CertStore, Vec<String>> {
        let mut errors = Vec::new();
        let default = match load_cert_key(&tls.cert, &tls.key) {
            Ok(ck) => Some(Arc::new(ck)),
            Err(e) => {
                errors.push(format!("tls: {e}"));
                None
            }
        };
        let mut names = ServerNameTable::default();
        for (i, entry) in sni.iter().enumerate() {
            let name = normalize(&entry.name);
            if !valid_server_name(&name) {
                errors.push(format!(
                    "sni[{i}].name `{}`: expected a server name like \"api.example.com\" or \"*.example.com\"",
                    entry.name
                ));
                continue;
            }
            let ck = match load_cert_key(&entry.cert, &entry.key) {
                Ok(ck) => Arc::new(ck),
                Err(e) => {
                    errors.push(format!("sni[{i}] (`{}`): {e}", entry.name));
                    continue;
                }
            };
            if names.insert(&name, ck).is_err() {
                errors.push(format!(
                    "sni[{i}].name `{}`: duplicate name: each name may appear once",
                    entry.name
                ));
            }
        }
        match default {
            Some(default) if errors.is_empty() => Ok(CertStore { default, names }),
            _ => Err(errors),
        }
    }

    /// The certificate for a handshake that asked for `server_name` (none: the default).
    /// Exact names win; then the longest wildcard suffix (`*.example.com` covers
    /// `a.example.com` and `a.b.example.com`); then the listener's own certificate.
    pub fn select(&self, server_name: Option<&str>) -> &CertKey {
        server_name
            .and_then(|name| self.names.lookup(name))
            .unwrap_or(&self.default)
    }

    /// Warn (in the gateway's log) about certificates that have expired.
    fn warn_expired(&self, listener: &str) {
        let Ok(now) = Asn1Time::days_from_now(0) else {
            return;
        };
        let all = std::iter::once(("default", &self.default)).chain(self.names.iter());
        for (name, ck) in all {
            if ck.leaf().not_after() < now {
                log::warn!(
                    "listener `{listener}`: the certificate for {name} expired on {}",
                    ck.leaf().not_after()
                );
            }
        }
    }
}

/// A listener's certificates, swappable while the listener runs: a configuration reload
/// re-reads the files and swaps them in; handshakes in progress keep the old ones.
#[derive(Debug)]
pub struct LiveCerts(ArcSwap<CertStore>);

/// The live certificates of every running TLS listener, by listener name.
static LIVE_CERTS: LazyLock<Mutex<HashMap<String, Arc<LiveCerts>>>> =
    LazyLock::new(Default::default);

/// Re-read the certificates of every running TLS listener that `config` still has, and swap
/// them in. Returns how many listeners were refreshed; errors name the listener.
pub fn reload_certificates(config: &crate::config::Config) -> Result<usize, String> {
    let live = LIVE_CERTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut fresh = Vec::new();
    for l in &config.listeners {
        let (Some(tls), Some(current)) = (&l.tls, live.get(l.name.get_ref())) else {
            continue;
        };
        let store = CertStore::load(tls.get_ref(), &l.sni)
            .map_err(|errors| format!("listener `{}`: {}", l.name.get_ref(), errors.join("; ")))?;
        store.warn_expired(l.name.get_ref());
        fresh.push((current.clone(), store));
    }
    let n = fresh.len();
    for (current, store) in fresh {
        current.0.store(Arc::new(store));
    }
    Ok(n)
}

#[async_trait]
impl TlsAccept for LiveCerts {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let store = self.0.load();
        store.use_certificate(ssl);
    }
}

impl CertStore {
    /// Put the certificate for the handshake's server name on the connection.
    fn use_certificate(&self, ssl: &mut TlsRef) {
        let ck = self.select(ssl.servername(NameType::HOST_NAME));
        let result = ext::ssl_use_certificate(ssl, ck.leaf())
            .and_then(|()| ext::ssl_use_private_key(ssl, ck.key()))
            .and_then(|()| {
                ck.intermediates()
                    .iter()
                    .try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
            });
        if let Err(e) = result {
            // The handshake then fails for want of a certificate; nothing else is affected.
            log::error!("TLS: cannot use the certificate: {e}");
        }
    }
}

/// The callback object pingora owns, sharing the listener's [`LiveCerts`].
struct SharedLiveCerts(Arc<LiveCerts>);

#[async_trait]
impl TlsAccept for SharedLiveCerts {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        self.0.certificate_callback(ssl).await;
    }
}

/// Problems with a TLS listener's `tls` and `sni` settings, for configuration validation
/// (empty when the listener is fine or has no `tls`).
pub fn validate_listener(l: &ListenerSection) -> Vec<String> {
    let Some(tls) = &l.tls else {
        return Vec::new();
    };
    match CertStore::load(tls.get_ref(), &l.sni) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| format!("listener `{}`: {e}", l.name.get_ref()))
            .collect(),
    }
}

/// The pingora TLS settings of a TLS listener: its certificates chosen by SNI, TLS 1.2 and
/// 1.3 only with Mozilla's intermediate cipher suites, ALPN `h2` preferred over `http/1.1`.
pub fn listener_tls_settings(l: &ListenerSection) -> Result<TlsSettings, String> {
    let name = l.name.get_ref();
    let tls = l
        .tls
        .as_ref()
        .ok_or_else(|| format!("listener `{name}` has no `tls`"))?;
    let store = CertStore::load(tls.get_ref(), &l.sni)
        .map_err(|errors| format!("listener `{name}`: {}", errors.join("; ")))?;
    store.warn_expired(name);
    // Mozilla intermediate (v5): TLS 1.2 with ECDHE/DHE AEAD suites, and TLS 1.3.
    let live = Arc::new(LiveCerts(ArcSwap::from_pointee(store)));
    LIVE_CERTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.clone(), live.clone());
    let mut settings = TlsSettings::with_callbacks(Box::new(SharedLiveCerts(live)))
        .map_err(|e| format!("listener `{name}`: TLS setup failed: {e}"))?;
    settings
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .and_then(|()| settings.set_max_proto_version(Some(SslVersion::TLS1_3)))
        .map_err(|e| format!("listener `{name}`: TLS setup failed: {e}"))?;
    settings.set_options(SslOptions::NO_RENEGOTIATION);
    settings.enable_h2();
    Ok(settings)
}

/// An upstream's `tls` settings with every file loaded, ready to apply to each backend.
#[derive(Clone)]
pub struct PeerTls {
    sni: Option<String>,
    verify: bool,
    ca: Option<Arc<Box<[X509]>>>,
    client: Option<Arc<CertKey>>,
    h2: bool,
    /// Keeps connections made with different trust settings out of each other's pool.
    group_key: u64,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client_cert", &self.client.is_some())
            .field("h2", &self.h2)
            .finish()
    }
}

impl PeerTls {
    /// Load the files an upstream's `tls` names. On failure, every problem found, each
    /// naming its key (`tls.ca`, `tls.client_cert`, ...).
    pub fn load(tls: &UpstreamTls) -> Result<PeerTls, Vec<String>> {
        let mut errors = Vec::new();
        if tls.sni.as_deref().is_some_and(|s| !valid_server_name(s)) {
            errors.push(format!(
                "tls.sni `{}`: expected a server name like \"users.internal\"",
                tls.sni.as_deref().unwrap_or_default()
            ));
        }
        let ca = match &tls.ca {
            Some(path) => match load_certificates(path) {
                Ok(certs) => Some(Arc::new(certs.into_boxed_slice())),
                Err(e) => {
                    errors.push(format!("tls.ca: {e}"));
                    None
                }
            },
            None => None,
        };
        let client = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => match load_cert_key(cert, key) {
                Ok(ck) => Some(Arc::new(ck)),
                Err(e) => {
                    errors.push(format!("tls.client_cert/client_key: {e}"));
                    None
                }
            },
            (Some(_), None) => {
                errors.push("tls.client_cert needs tls.client_key".into());
                None
            }
            (None, Some(_)) => {
                errors.push("tls.client_key needs tls.client_cert".into());
                None
            }
            (None, None) => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut hasher = DefaultHasher::new();
        "switchyard-upstream-tls".hash(&mut hasher);
        tls.ca.hash(&mut hasher);
        Ok(PeerTls {
            sni: tls.sni.as_ref().map(|s| normalize(s)),
            verify: tls.verify,
            ca,
            client,
            h2: tls.h2,
            group_key: hasher.finish(),
        })
    }

    /// The name sent and verified for the backend written as `backend_addr` (`host:port`):
    /// `tls.sni`, else the host when it is a name; `None` for an IP address without `sni`.
    pub fn server_name(&self, backend_addr: &str) -> Option<String> {
        if let Some(sni) = &self.sni {
            return Some(sni.clone());
        }
        if backend_addr.parse::<SocketAddr>().is_ok() {
            return None;
        }
        let host = backend_addr
            .rsplit_once(':')
            .map_or(backend_addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty() && host.parse::<std::net::IpAddr>().is_err()).then(|| normalize(host))
    }

    /// Make `peer` (the backend written as `backend_addr`) speak TLS with these settings.
    pub fn apply(&self, peer: &mut HttpPeer, backend_addr: &str) {
        peer.scheme = Scheme::HTTPS;
        // pingora neither sends SNI nor verifies anything when the name is empty; that only
        // happens with `verify = false` (validation demands `sni` otherwise).
        peer.sni = self.server_name(backend_addr).unwrap_or_default();
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer.group_key = self.group_key;
        if self.h2 {
            peer.options.alpn = ALPN::H2H1;
            // Let concurrent requests share one HTTP/2 connection.
            peer.options.max_h2_streams = 100;
        } else {
            peer.options.alpn = ALPN::H1;
        }
    }
}

/// Set up `peer` for TLS to its backend as the upstream's `tls` says: scheme, SNI, the CA
/// to verify against, certificate and host name verification, the client certificate (mTLS)
/// and ALPN `h2` when `h2 = true`. Reads the files `tls` names.
pub fn apply_upstream_tls(peer: &mut HttpPeer, tls: &UpstreamTls) -> Result<(), String> {
    let loaded = PeerTls::load(tls).map_err(|errors| errors.join("; "))?;
    let addr = peer._address.to_string();
    loaded.apply(peer, &addr);
    Ok(())
}

/// Problems with an upstream's `tls`, for configuration validation (empty when fine).
pub fn validate_upstream(u: &UpstreamSection) -> Vec<String> {
    let Some(tls) = &u.tls else {
        return Vec::new();
    };
    let name = u.name.get_ref();
    let loaded = match PeerTls::load(tls) {
        Ok(t) => t,
        Err(errors) => {
            return errors
                .into_iter()
                .map(|e| format!("upstream `{name}`: {e}"))
                .collect()
        }
    };
    let mut errors = Vec::new();
    if tls.verify {
        for b in u.backends.get_ref() {
            if loaded.server_name(b.addr.get_ref()).is_none() {
                errors.push(format!(
                    "upstream `{name}`: backend `{}` is an IP address: set tls.sni to the name its certificate must carry, or verify = false",
                    b.addr.get_ref()
                ));
                break;
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509Builder, X509NameBuilder};

    fn self_signed(dir: &std::path::Path, file: &str, name: &str) -> (String, String) {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut subject = X509NameBuilder::new().unwrap();
        subject.append_entry_by_text("CN", name).unwrap();
        let subject = subject.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&subject).unwrap();
        b.set_issuer_name(&subject).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .dns(name)
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = dir.join(format!("{file}.crt"));
        let keyf = dir.join(format!("{file}.key"));
        std::fs::write(&cert, b.build().to_pem().unwrap()).unwrap();
        std::fs::write(&keyf, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (
            cert.to_string_lossy().into_owned(),
            keyf.to_string_lossy().into_owned(),
        )
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "switchyard-tls-unit-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn cn(ck: &CertKey) -> String {
        ck.leaf()
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .unwrap()
            .data()
            .to_string()
            .unwrap()
    }

    #[test]
    fn sni_selection_exact_wildcard_default() {
        let dir = tempdir();
        let (dc, dk) = self_signed(&dir, "default", "default.test");
        let (ac, ak) = self_signed(&dir, "api", "api.example.com");
        let (wc, wk) = self_signed(&dir, "wild", "*.example.com");
        let (sc, sk) = self_signed(&dir, "sub", "*.eu.example.com");
        let tls = ListenerTls { cert: dc, key: dk };
        let sni = vec![
            SniEntry {
                name: "API.example.com".into(),
                cert: ac,
                key: ak,
            },
            SniEntry {
                name: "*.example.com".into(),
                cert: wc,
                key: wk,
            },
            SniEntry {
                name: "*.eu.example.com".into(),
                cert: sc,
                key: sk,
            },
        ];
        let store = CertStore::load(&tls, &sni).unwrap();
        assert_eq!(cn(store.select(None)), "default.test");
        assert_eq!(cn(store.select(Some("unknown.test"))), "default.test");
        assert_eq!(cn(store.select(Some("api.example.com"))), "api.example.com");
        assert_eq!(
            cn(store.select(Some("Api.Example.Com."))),
            "api.example.com"
        );
        assert_eq!(cn(store.select(Some("www.example.com"))), "*.example.com");
        assert_eq!(
            cn(store.select(Some("a.eu.example.com"))),
            "*.eu.example.com"
        );
        assert_eq!(cn(store.select(Some("example.com"))), "default.test");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempdir();
        let (dc, dk) = self_signed(&dir, "default", "default.test");
        let (_, other_key) = self_signed(&dir, "other", "other.test");
        let e = load_cert_key("/nonexistent/x.crt", &dk).unwrap_err();
        assert!(e.contains("/nonexistent/x.crt"), "{e}");
        let e = load_cert_key(&dk, &dk).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = load_cert_key(&dc, &dc).unwrap_err();
        assert!(e.contains("no PEM private key"), "{e}");
        let e = load_cert_key(&dc, &other_key).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
        let errors = CertStore::load(
            &ListenerTls {
                cert: dc.clone(),
                key: dk.clone(),
            },
            &[SniEntry {
                name: "bad name".into(),
                cert: dc,
                key: dk,
            }],
        )
        .unwrap_err();
        assert!(errors[0].contains("sni[0].name"), "{errors:?}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn upstream_names_and_peer_settings() {
        let tls = UpstreamTls {
            sni: None,
            ca: None,
            verify: true,
            client_cert: None,
            client_key: None,
            h2: true,
        };
        let loaded = PeerTls::load(&tls).unwrap();
        assert_eq!(loaded.server_name("127.0.0.1:443"), None);
        assert_eq!(loaded.server_name("[::1]:443"), None);
        assert_eq!(
            loaded.server_name("Users.Internal:8443").as_deref(),
            Some("users.internal")
        );
        let mut peer = HttpPeer::new("127.0.0.1:443", false, String::new());
        let with_sni = PeerTls::load(&UpstreamTls {
            sni: Some("users.internal".into()),
            ..tls.clone()
        })
        .unwrap();
        with_sni.apply(&mut peer, "127.0.0.1:443");
        assert!(peer.is_tls());
        assert_eq!(peer.sni, "users.internal");
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        assert_eq!(peer.options.alpn, ALPN::H2H1);
        let e = PeerTls::load(&UpstreamTls {
            client_cert: Some("x".into()),
            ..tls
        })
        .unwrap_err();
        assert!(e[0].contains("client_key"), "{e:?}");
    }
}
