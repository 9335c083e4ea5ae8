//! Checking an upstream's options against what an algorithm uses.
//!
//! The options are the upstream's whole configuration table as JSON, so keys the gateway
//! itself reads (`name`, `backends`, timeouts, …) pass. Two keys belong to the balancers
//! and are refused where they would be ignored: `hash_key` (the hash algorithms only) and
//! `resource` (`resource-based` only). This module also holds the small duration parser
//! the options use.

use std::time::Duration;

use switchyard_plugin::{BuildError, HashKey};

/// What an algorithm reads from the options besides the gateway's own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Uses {
    /// Neither `hash_key` nor `resource`.
    Nothing,
    /// `hash_key` (hash algorithms).
    HashKey,
    /// `resource` (resource-based).
    Resource,
}

/// The algorithms that read `hash_key`, for error messages.
const HASH_ALGORITHMS: &str = "ip-hash, consistent-hash";

/// Check `options` for `algorithm`: a table (or null), with `hash_key` and `resource` only
/// where the algorithm uses them. Returns the parsed `hash_key` when the algorithm uses it.
pub(crate) fn check(
    options: &serde_json::Value,
    algorithm: &str,
    uses: Uses,
) -> Result<Option<HashKey>, BuildError> {
    if !(options.is_null() || options.is_object()) {
        return Err(BuildError(format!(
            "{algorithm}: the upstream options must be a table, not {options}"
        )));
    }
    let present = |key: &str| options.get(key).is_some_and(|v| !v.is_null());
    if present("hash_key") && uses != Uses::HashKey {
        return Err(BuildError(format!(
            "{algorithm} does not use hash_key (only {HASH_ALGORITHMS} do): remove it or \
             change the algorithm"
        )));
    }
    if present("resource") && uses != Uses::Resource {
        return Err(BuildError(format!(
            "{algorithm} does not use resource (only resource-based does): remove it or \
             change the algorithm"
        )));
    }
    if uses == Uses::HashKey {
        return HashKey::from_options(options)
            .map_err(|BuildError(e)| BuildError(format!("{algorithm}: {e}")));
    }
    Ok(None)
}

/// Parse a duration written as a whole or decimal number and a unit: `ms`, `s`, `m` or
/// `h` (`"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"`). `None` for anything else.
///
/// ```
/// use std::time::Duration;
/// use switchyard_balancers::options::parse_duration;
///
/// assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
/// assert_eq!(parse_duration("10"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_secs = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    Duration::try_from_secs_f64(value * unit_secs).ok()
}

/// A duration option inside a table: absent or null gives `default`; anything but a
/// string `parse_duration` accepts is an error naming `what`.
pub(crate) fn duration_field(
    table: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    what: &str,
    default: Duration,
) -> Result<Duration, BuildError> {
    match table.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(serde_json::Value::String(text)) => parse_duration(text).ok_or_else(|| {
            BuildError(format!(
                "{what}.{key} {text:?} is not a duration: write a number and a unit, \
                 ms, s, m or h (\"250ms\", \"5s\", \"2m\", \"1h\")"
            ))
        }),
        Some(other) => Err(BuildError(format!(
            "{what}.{key} must be a duration string such as \"5s\", not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration(" 5s "), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in [
            "", "s", "5", "5 s", "-5s", "5sec", ".5s", "5.s", "1.2.3s", "5d", "1e3s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_are_refused_where_unused() {
        let opts = json!({"name": "users", "hash_key": "path"});
        let err = check(&opts, "least-connections", Uses::Nothing).unwrap_err();
        assert!(
            err.0.contains("least-connections does not use hash_key"),
            "{err}"
        );
        assert_eq!(
            check(&opts, "ip-hash", Uses::HashKey).unwrap(),
            Some(HashKey::Path)
        );
        let opts = json!({"resource": {"path": "/load"}});
        assert!(check(&opts, "random", Uses::Nothing).is_err());
        assert!(check(&opts, "ip-hash", Uses::HashKey).is_err());
        assert_eq!(
            check(&opts, "resource-based", Uses::Resource).unwrap(),
            None
        );
        let err = check(&json!({"hash_key": "nope"}), "ip-hash", Uses::HashKey).unwrap_err();
        assert!(err.0.starts_with("ip-hash: hash_key \"nope\""), "{err}");
        assert!(check(&json!([1]), "random", Uses::Nothing).is_err());
        assert!(check(&serde_json::Value::Null, "random", Uses::Nothing).is_ok());
        assert!(check(&json!({"hash_key": null}), "random", Uses::Nothing).is_ok());
    }
}
