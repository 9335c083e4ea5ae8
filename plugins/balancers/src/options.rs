//! Checking an upstream's options against what an algorithm uses.
//!
//! The options are the upstream's whole configuration table as JSON, so keys the gateway
//! itself reads (`name`, `backends`, timeouts, …) pass. Two keys belong to the balancers
//! and are refused where they would be ignored: `hash_key` (the hash algorithms only) and
//! `resource` (`resource-based` only). This module also holds the small duration parser
//! the options use.

use std::time::Duration;
use switchyard_plugin::duration::parse_duration;

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

/// A duration option inside a table: absent or null gives `default`; anything but a
/// duration string as the rest of the configuration writes them
/// ([`switchyard_plugin::duration::parse_duration`]) is an error naming `what`.
pub(crate) fn duration_field(
    table: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    what: &str,
    default: Duration,
) -> Result<Duration, BuildError> {
    match table.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(serde_json::Value::String(text)) => {
            parse_duration(text).map_err(|e| BuildError(format!("{what}.{key}: {e}")))
        }
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
    fn duration_fields() {
        let table = json!({"ok": "250ms", "decimal": "1.5s", "number": 5});
        let table = table.as_object().unwrap();
        let d = |key| duration_field(table, key, "upstream.options", Duration::from_secs(9));
        assert_eq!(d("ok").unwrap(), Duration::from_millis(250));
        assert_eq!(d("absent").unwrap(), Duration::from_secs(9));
        let err = d("decimal").unwrap_err().0;
        assert!(err.starts_with("upstream.options.decimal: "), "{err}");
        assert!(err.contains("\"250ms\""), "{err}");
        assert!(d("number").unwrap_err().0.contains("duration string"));
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
