//! Small pieces the filters share: durations written as strings, cookie lookup, header
//! name and value checks.

use http::header::{HeaderName, HeaderValue, COOKIE};
use http::HeaderMap;

pub use switchyard_plugin::duration::{parse_duration, ConfigDuration};

/// The value of cookie `name` in the request's `Cookie` headers (surrounding double
/// quotes removed), if present.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() == name.as_bytes() {
                let v = pair[eq + 1..].trim_ascii();
                let v = match v {
                    [b'"', inner @ .., b'"'] => inner,
                    v => v,
                };
                return Some(v);
            }
        }
    }
    None
}

/// Whether `s` is an HTTP token (a header name, a method, a cookie name).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header name from the configuration.
pub(crate) fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name `{name}`"))
}

/// A header value from the configuration (visible ASCII, spaces and tabs).
pub(crate) fn header_value(name: &str, value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value)
        .map_err(|_| format!("invalid value for header `{name}`: {value:?} (use visible ASCII)"))
}

/// Append `token` to the response's `Vary` unless it (or `*`) is already there.
pub(crate) fn add_vary(headers: &mut dyn switchyard_plugin::HeaderEditor, token: &'static str) {
    let present = headers
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .any(|v| {
            v.as_bytes().split(|&b| b == b',').any(|t| {
                let t = t.trim_ascii();
                t == b"*" || t.eq_ignore_ascii_case(token.as_bytes())
            })
        });
    if !present {
        headers.append(http::header::VARY, HeaderValue::from_static(token));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; sid=\"xyz\" ; b"));
        h.append(COOKIE, HeaderValue::from_static("c = 3"));
        assert_eq!(cookie(&h, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie(&h, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(cookie(&h, "si"), None);
    }

    #[test]
    fn vary_is_added_once() {
        let mut h = HeaderMap::new();
        add_vary(&mut h, "Origin");
        add_vary(&mut h, "Origin");
        assert_eq!(h.get_all(http::header::VARY).iter().count(), 1);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::VARY,
            HeaderValue::from_static("accept-encoding, origin"),
        );
        add_vary(&mut h, "Origin");
        assert_eq!(h.get_all(http::header::VARY).iter().count(), 1);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::VARY,
            HeaderValue::from_static("Accept-Encoding"),
        );
        add_vary(&mut h, "Origin");
        assert_eq!(h.get_all(http::header::VARY).iter().count(), 2);
        assert!(is_token("x-user") && !is_token("a b") && !is_token(""));
        assert!(header_name("x y").is_err() && header_value("x", "a\nb").is_err());
    }
}
