//! How the active [`Fault`]s change one request: collected once when it arrives, applied
//! before routing (hang, delay, forced status) and to the finished response (index, body).

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};

use super::response::{JSON, Resp, text};
use crate::fault::Fault;
use crate::state::State;

/// Marks a response whose body the HTTP server streams instead: `[`, spaces, `]`,
/// this many bytes in all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HugeBody(pub(crate) u64);

#[derive(Debug, Default)]
pub(super) struct FaultPlan {
    hang: bool,
    delay: Duration,
    status: Option<(u16, String)>,
    garbage: bool,
    huge_body: Option<u64>,
    truncated: bool,
    index_backwards: bool,
    index_zero: bool,
}

impl FaultPlan {
    /// The faults matching `path`; a counted status fault is used up by this request.
    pub(super) fn collect(state: &mut State, path: &str) -> Self {
        let mut plan = Self::default();
        let mut exhausted = None;
        for (position, fault) in state.faults.iter_mut().enumerate() {
            if !fault.matches(path) {
                continue;
            }
            match fault {
                Fault::Status {
                    status,
                    body,
                    count,
                    ..
                } => {
                    if plan.status.is_some() {
                        continue;
                    }
                    match count {
                        Some(0) => continue,
                        Some(remaining) => {
                            *remaining -= 1;
                            if *remaining == 0 {
                                exhausted = Some(position);
                            }
                        }
                        None => {}
                    }
                    plan.status = Some((*status, body.clone()));
                }
                Fault::Delay { delay, .. } => plan.delay += *delay,
                Fault::Hang { .. } => plan.hang = true,
                Fault::Garbage { .. } => plan.garbage = true,
                Fault::HugeBody { bytes, .. } => plan.huge_body = Some(*bytes),
                Fault::Truncated { .. } => plan.truncated = true,
                Fault::IndexBackwards { .. } => plan.index_backwards = true,
                Fault::IndexZero { .. } => plan.index_zero = true,
                Fault::NoLeader | Fault::LastContact { .. } => {}
            }
        }
        if let Some(position) = exhausted {
            state.faults.remove(position);
        }
        plan
    }

    /// Holds the request: forever under a hang fault, else for the summed delays.
    pub(super) async fn hold(&self) {
        if self.hang {
            std::future::pending::<()>().await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }

    /// The response a status fault answers with instead of the endpoint's.
    pub(super) fn forced_response(&self) -> Option<Resp> {
        self.status.as_ref().map(|(status, body)| {
            text(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
        })
    }

    /// Rewrites `X-Consul-Index` under an index fault; otherwise remembers the index
    /// returned for `path`, which a later [`Fault::IndexBackwards`] goes back from.
    pub(super) fn rewrite_index(&self, state: &mut State, path: &str, response: &mut Resp) {
        let index_header = HeaderName::from_static("x-consul-index");
        let current = response
            .headers()
            .get(&index_header)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if self.index_zero {
            response
                .headers_mut()
                .insert(index_header, HeaderValue::from_static("0"));
        } else if self.index_backwards {
            let last = state.last_index.get(path).copied().or(current).unwrap_or(2);
            response
                .headers_mut()
                .insert(index_header, HeaderValue::from(last / 2));
        } else if let Some(index) = current {
            state.last_index.insert(path.to_owned(), index);
        }
    }

    /// Replaces the body with invalid JSON or a huge one, or cuts it in half.
    pub(super) fn corrupt_body(&self, response: &mut Resp) {
        if let Some(bytes) = self.huge_body {
            *response.status_mut() = StatusCode::OK;
            *response.body_mut() = Bytes::new();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
            response.extensions_mut().insert(HugeBody(bytes));
        } else if self.garbage {
            *response.status_mut() = StatusCode::OK;
            *response.body_mut() =
                Bytes::from_static(b"{\"Node\": {\"ID\": <<<this is not json>>>");
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        } else if self.truncated {
            let body = response.body().clone();
            *response.body_mut() = body.slice(..body.len() / 2);
        }
    }
}
