//! Durations written as strings with a unit: `"250ms"`, `"5s"`, `"2m"`, `"1h"`, as
//! everywhere in Switchyard's configuration (the gateway's and its plugins' keys alike).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration read from the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// The duration as a `std::time::Duration`.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// Parse `"250ms"`, `"5s"`, `"2m"`, `"1h"` (a whole number and one unit).
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
    if number.is_empty() {
        return Err(expected());
    }
    let n: u64 = number.parse().map_err(|_| expected())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(expected)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(expected)?),
        _ => return Err(expected()),
    };
    Ok(d)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn trims_and_rejects_what_is_not_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration(" 2m ").unwrap(), Duration::from_secs(120));
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
    fn deserializes_from_a_string() {
        let d: ConfigDuration = serde_json::from_value(serde_json::json!("10m")).unwrap();
        assert_eq!(d.get(), Duration::from_secs(600));
        assert!(serde_json::from_value::<ConfigDuration>(serde_json::json!("10")).is_err());
    }

    #[test]
    fn rejects_bad_forms_with_a_hint() {
        for bad in ["5", "s", "5 parsecs", "-1s", "1.5s", "", "5S"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("\"250ms\""), "{bad}: {err}");
        }
    }
}
