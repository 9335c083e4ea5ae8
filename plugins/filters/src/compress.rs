//! `compress`: settings for response compression, which the gateway performs with
//! pingora's compression module (no per-request hook here).
//!
//! ```toml
//! { kind = "compress", min_bytes = 1024, algorithms = ["br", "zstd", "gzip"] }
//! ```
//!
//! `algorithms` (default `["br", "zstd", "gzip"]`) lists the encodings the route may use,
//! most preferred first. [`Compress::negotiate`] picks, among them, the one the client's
//! `Accept-Encoding` rates highest (q-values honoured; a tie goes to the order written
//! here); a client without `Accept-Encoding` gets an uncompressed answer. A response is
//! compressed only when its `Content-Length` is unknown (streamed) or at least
//! `min_bytes` (default 1024), its type is compressible (text, JSON, JavaScript, XML, SVG,
//! fonts: pingora's list) and the backend did not encode it already.

use http::header::ACCEPT_ENCODING;
use http::HeaderMap;
use serde::Deserialize;

/// The configuration of `compress`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// Responses with a smaller `Content-Length` are sent as they are.
    #[serde(default = "default_min_bytes")]
    pub min_bytes: u64,
    /// Encodings allowed, most preferred first: `br`, `zstd`, `gzip`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
}

fn default_min_bytes() -> u64 {
    1024
}

fn default_algorithms() -> Vec<String> {
    vec!["br".into(), "zstd".into(), "gzip".into()]
}

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
    /// `gzip` (also accepted as `x-gzip` from clients).
    Gzip,
}

impl Encoding {
    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    /// A compression level that costs little CPU for a good ratio on text: brotli 5,
    /// zstd 3, gzip 6.
    pub fn default_level(self) -> u32 {
        match self {
            Encoding::Brotli => 5,
            Encoding::Zstd => 3,
            Encoding::Gzip => 6,
        }
    }

    fn parse(token: &str) -> Option<Self> {
        match token {
            "br" => Some(Encoding::Brotli),
            "zstd" => Some(Encoding::Zstd),
            "gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }
}

/// Checked `compress` settings.
///
/// ```
/// use http::HeaderMap;
/// use switchyard_filters::compress::{Compress, CompressConfig, Encoding};
///
/// let config: CompressConfig = serde_json::from_value(serde_json::json!({
///     "min_bytes": 1024, "algorithms": ["br", "gzip"]
/// })).unwrap();
/// let c = Compress::new(&config).unwrap();
/// let mut h = HeaderMap::new();
/// h.insert("accept-encoding", "gzip, deflate, br, zstd".parse().unwrap());
/// assert_eq!(c.negotiate(&h), Some(Encoding::Brotli));
/// h.insert("accept-encoding", "br;q=0.5, gzip".parse().unwrap());
/// assert_eq!(c.negotiate(&h), Some(Encoding::Gzip));
/// assert!(c.worth_compressing(Some(4096)) && !c.worth_compressing(Some(100)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compress {
    /// Smallest `Content-Length` compressed.
    pub min_bytes: u64,
    /// Encodings allowed, most preferred first.
    pub algorithms: Vec<Encoding>,
}

impl Compress {
    /// Check `config`.
    pub fn new(config: &CompressConfig) -> Result<Self, String> {
        if config.algorithms.is_empty() {
            return Err(
                "algorithms is empty: list at least one of \"br\", \"zstd\", \"gzip\"".into(),
            );
        }
        let mut algorithms = Vec::with_capacity(config.algorithms.len());
        for a in &config.algorithms {
            let e = Encoding::parse(a).ok_or_else(|| {
                format!(
                    "unknown compression algorithm {a:?}: expected \"br\", \"zstd\" or \"gzip\""
                )
            })?;
            if algorithms.contains(&e) {
                return Err(format!("algorithm {a:?} is listed twice"));
            }
            algorithms.push(e);
        }
        Ok(Self {
            min_bytes: config.min_bytes,
            algorithms,
        })
    }

    /// The encoding to use for a request with these headers, `None` for none.
    pub fn negotiate(&self, request_headers: &HeaderMap) -> Option<Encoding> {
        // q in thousandths for each allowed algorithm (None: not mentioned), and for "*".
        let mut q: [Option<u16>; 3] = [None; 3];
        let mut star: Option<u16> = None;
        let mut any = false;
        for value in request_headers.get_all(ACCEPT_ENCODING) {
            any = true;
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let token = parts.next().unwrap_or("").trim();
                let weight = parts
                    .filter_map(|p| {
                        p.trim()
                            .strip_prefix("q=")
                            .or_else(|| p.trim().strip_prefix("Q="))
                    })
                    .find_map(parse_q)
                    .unwrap_or(1000);
                if token == "*" {
                    star = Some(weight);
                    continue;
                }
                let token = if token.eq_ignore_ascii_case("x-gzip") {
                    "gzip"
                } else {
                    token
                };
                if let Some(i) = self
                    .algorithms
                    .iter()
                    .position(|a| a.as_str().eq_ignore_ascii_case(token))
                {
                    q[i] = Some(weight);
                }
            }
        }
        if !any {
            return None;
        }
        let mut best: Option<(u16, Encoding)> = None;
        for (i, &a) in self.algorithms.iter().enumerate() {
            let w = q[i].or(star).unwrap_or(0);
            if w > 0 && best.is_none_or(|(bw, _)| w > bw) {
                best = Some((w, a));
            }
        }
        best.map(|(_, a)| a)
    }

    /// Whether a response of this `Content-Length` (`None`: unknown, streamed) is large
    /// enough to compress.
    pub fn worth_compressing(&self, content_length: Option<u64>) -> bool {
        content_length.is_none_or(|len| len >= self.min_bytes)
    }
}

/// `q=0.8` as 800; `None` when malformed.
fn parse_q(text: &str) -> Option<u16> {
    let text = text.trim();
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole + thousandths;
    (q <= 1000).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(json: serde_json::Value) -> Result<Compress, String> {
        let c: CompressConfig = serde_json::from_value(json).map_err(|e| e.to_string())?;
        Compress::new(&c)
    }

    fn negotiate(c: &Compress, ae: Option<&'static str>) -> Option<Encoding> {
        let mut h = HeaderMap::new();
        if let Some(ae) = ae {
            h.insert(ACCEPT_ENCODING, http::HeaderValue::from_static(ae));
        }
        c.negotiate(&h)
    }

    #[test]
    fn negotiation() {
        let c = compress(serde_json::json!({})).unwrap();
        assert_eq!(c.min_bytes, 1024);
        assert_eq!(
            c.algorithms,
            [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip]
        );
        assert_eq!(negotiate(&c, None), None);
        assert_eq!(negotiate(&c, Some("")), None);
        assert_eq!(negotiate(&c, Some("identity")), None);
        assert_eq!(
            negotiate(&c, Some("gzip, deflate, br, zstd")),
            Some(Encoding::Brotli)
        );
        assert_eq!(negotiate(&c, Some("gzip, deflate")), Some(Encoding::Gzip));
        assert_eq!(negotiate(&c, Some("x-gzip")), Some(Encoding::Gzip));
        assert_eq!(
            negotiate(&c, Some("zstd;q=1, br;q=0.9")),
            Some(Encoding::Zstd)
        );
        assert_eq!(
            negotiate(&c, Some("br;q=0, gzip;q=0.1")),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(&c, Some("*")), Some(Encoding::Brotli));
        assert_eq!(negotiate(&c, Some("*;q=0.5, br;q=0")), Some(Encoding::Zstd));
        assert_eq!(negotiate(&c, Some("GZIP;Q=0.5")), Some(Encoding::Gzip));
        assert_eq!(negotiate(&c, Some("br;q=abc")), Some(Encoding::Brotli));
        let gzip_only =
            compress(serde_json::json!({"algorithms": ["gzip"], "min_bytes": 0})).unwrap();
        assert_eq!(negotiate(&gzip_only, Some("br, zstd")), None);
        assert!(gzip_only.worth_compressing(Some(0)));
        assert!(c.worth_compressing(None) && !c.worth_compressing(Some(1023)));
        assert_eq!(Encoding::Zstd.as_str(), "zstd");
        assert!(Encoding::Gzip.default_level() > 0);
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0.25"), Some(250));
        assert_eq!(parse_q("0"), Some(0));
        for bad in ["1.5", "2", "0.1234", "x", "", ".5"] {
            assert_eq!(parse_q(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_configurations() {
        for (json, why) in [
            (serde_json::json!({"algorithms": []}), "empty"),
            (
                serde_json::json!({"algorithms": ["deflate"]}),
                "unknown compression algorithm",
            ),
            (serde_json::json!({"algorithms": ["br", "br"]}), "twice"),
            (serde_json::json!({"min_bytes": -1}), "invalid value"),
            (serde_json::json!({"level": 3}), "unknown field"),
        ] {
            let err = compress(json.clone()).unwrap_err();
            assert!(err.contains(why), "{json}: {err}");
        }
    }
}
