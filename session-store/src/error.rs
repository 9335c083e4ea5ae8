//! The session store's error type.

use std::fmt;

/// What can go wrong with a session store operation or its construction.
///
/// Every variant is a reason for the gateway to degrade (serve without the session
/// data or the affinity pin), never to fail the request outright.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The backend did not answer within the configured per-operation timeout.
    Timeout,
    /// The backend cannot be reached or refused the operation; the text says why.
    Unavailable(String),
    /// A value could not be encoded to or decoded from JSON.
    Serde(serde_json::Error),
    /// The key is empty or longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES).
    InvalidKey(String),
    /// The store configuration is invalid (reported by [`build`](crate::build) and
    /// [`SessionStoreConfig::validate`](crate::SessionStoreConfig::validate)).
    Config(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("session store operation timed out"),
            Error::Unavailable(why) => write!(f, "session store unavailable: {why}"),
            Error::Serde(e) => write!(f, "session value is not valid JSON: {e}"),
            Error::InvalidKey(why) => write!(f, "invalid session store key: {why}"),
            Error::Config(why) => write!(f, "invalid session_store configuration: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Serde(e) => Some(e),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serde(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        assert_eq!(
            Error::Timeout.to_string(),
            "session store operation timed out"
        );
        assert_eq!(
            Error::Unavailable("connection refused".into()).to_string(),
            "session store unavailable: connection refused"
        );
        let serde = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let e = Error::from(serde);
        assert!(e.to_string().starts_with("session value is not valid JSON"));
        assert!(std::error::Error::source(&e).is_some());
        assert!(Error::Config("x".into())
            .to_string()
            .contains("session_store"));
        assert!(Error::InvalidKey("empty key".into())
            .to_string()
            .contains("empty key"));
    }
}
