//! `body-limit`: refuse request bodies larger than `max_bytes` with 413.
//!
//! ```toml
//! { kind = "body-limit", max_bytes = 1048576 }
//! ```
//!
//! Two checks:
//!
//! - [`Filter::on_request`]: a `Content-Length` over the limit is answered 413 at once,
//!   before any of the body is read and before a backend is chosen;
//! - [`Filter::on_request_body`]: a body without a length (chunked, or HTTP/2 without
//!   `content-length`) is counted as it streams; the piece that takes the count over the
//!   limit fails with 413. The gateway then stops the request: nothing more is sent
//!   upstream and the client gets 413 if no response has started (part of the body may
//!   have reached the backend already, which sees an aborted request).

use http::header::CONTENT_LENGTH;
use http::StatusCode;
use serde::Deserialize;
use switchyard_plugin::{
    async_trait, BodyChunk, Filter, FilterError, Flow, Hooks, RequestContext, Response,
};

/// The configuration of `body-limit`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyLimitConfig {
    /// The largest request body accepted, in bytes.
    pub max_bytes: u64,
}

/// The `body-limit` filter.
#[derive(Debug)]
pub struct BodyLimit {
    max_bytes: u64,
}

const TOO_LARGE: &str = "request body too large\n";

impl BodyLimit {
    /// Check `config`.
    pub fn new(config: &BodyLimitConfig) -> Result<Self, String> {
        Ok(Self {
            max_bytes: config.max_bytes,
        })
    }

    /// The limit in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

#[async_trait]
impl Filter for BodyLimit {
    fn kind(&self) -> &'static str {
        "body-limit"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            request_body: true,
            ..Hooks::NONE
        }
    }

    async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<Flow, FilterError> {
        // The gateway has already refused ambiguous or malformed framing.
        let declared = ctx
            .request
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(len) if len > self.max_bytes => Ok(Flow::Respond(Response::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                TOO_LARGE,
            ))),
            _ => Ok(Flow::Continue),
        }
    }

    fn on_request_body(&self, chunk: &BodyChunk<'_>) -> Result<(), FilterError> {
        if chunk.received > self.max_bytes {
            return Err(FilterError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                TOO_LARGE.trim_end(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Extensions, HeaderMap, HeaderValue, Method, Uri};
    use switchyard_plugin::filter::block_on_ready;
    use switchyard_plugin::{FilterChain, RequestInfo};

    #[test]
    fn content_length_is_checked_up_front() {
        let f = BodyLimit::new(&BodyLimitConfig { max_bytes: 10 }).unwrap();
        for (len, status) in [(Some("10"), 200), (Some("11"), 413), (None, 200)] {
            let (m, u) = (Method::POST, Uri::from_static("/"));
            let mut h = HeaderMap::new();
            if let Some(len) = len {
                h.insert(CONTENT_LENGTH, HeaderValue::from_static(len));
            }
            let mut ext = Extensions::new();
            let mut ctx = RequestContext::new(RequestInfo::new(&m, &u, &h), &mut ext);
            let got = match block_on_ready(f.on_request(&mut ctx)).unwrap() {
                Flow::Continue => 200,
                Flow::Respond(r) => r.status.as_u16(),
            };
            assert_eq!(got, status, "{len:?}");
        }
    }

    #[test]
    fn streamed_bodies_are_counted() {
        let chain = FilterChain::new(vec![std::sync::Arc::new(
            BodyLimit::new(&BodyLimitConfig { max_bytes: 10 }).unwrap(),
        )]);
        assert!(chain.needs_request_body());
        let mut received = 0u64;
        let mut results = Vec::new();
        for piece in [&b"abcd"[..], b"efgh", b"ij", b"k"] {
            received += piece.len() as u64;
            results.push(chain.on_request_body(&BodyChunk::new(piece, received, false)));
        }
        assert!(results[..3].iter().all(Result::is_ok));
        let err = results[3].clone().unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
