//! Small pieces the filters share: durations written as strings, cookie lookup, header
//! name and value checks.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, COOKIE};
use http::HeaderMap;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as a string with a unit, as everywhere in the configuration:
/// `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
///
/// ```
/// use std::time::Duration;
/// use switchyard_filters::ConfigDuration;
///
/// let d: ConfigDuration = serde_json::from_value(serde_json::json!("10m")).unwrap();
/// assert_eq!(d.0, Duration::from_secs(600));
/// assert!(serde_json::from_value::<ConfigDuration>(serde_json::json!("10")).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

/// Parse `"250ms"`, `"5s"`, `"2m"`, `"1h"`: a whole number and one unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let expected = || {
        format!(
            "invalid duration \"{text}\": expected a whole number with a unit, like \"250ms\", \"5s\", \"2m\" or \"1h\""
        )
    };
    let n: u64 = number.parse().map_err(|_| expected())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(expected),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(expected),
        _ => Err(expected()),
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"250ms\", \"5s\", \"2m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

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
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration(" 2m ").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in [
            "",
            "s",
            "5",
            "5 s",
            "-1s",
            "1.5s",
            "5d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

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
