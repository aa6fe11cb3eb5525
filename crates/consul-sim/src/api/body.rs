//! Buffering request bodies, and the 413 answer for ones too large to buffer.

use bytes::Bytes;
use http::StatusCode;
use http::header::{CONTENT_LENGTH, HeaderMap};
use http_body_util::BodyExt as _;

use super::kv::KV_MAX_VALUE_SIZE;
use super::response::{Resp, text};

/// Bodies above this are not read into memory at all.
const MAX_READ_BODY: usize = 8 * 1024 * 1024;

/// Marks a request whose body was too large to read (the declared or observed size).
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyTooLarge(pub(super) u64);

/// Buffers a request's body for [`super::handle`] (both front-ends use it). A body too large
/// to buffer becomes empty and the request is marked [`BodyTooLarge`] with its declared size
/// (`u64::MAX` when undeclared), so [`super::handle`] logs it and answers 413.
pub(crate) async fn buffer_request<B>(request: http::Request<B>) -> http::Request<Bytes>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, body) = request.into_parts();
    let body = match read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(_) => {
            let size = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok())
                .unwrap_or(u64::MAX);
            parts.extensions.insert(BodyTooLarge(size));
            Bytes::new()
        }
    };
    http::Request::from_parts(parts, body)
}

/// Reads a request body, refusing to buffer more than [`MAX_READ_BODY`].
async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, Resp>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = content_length(headers);
    if declared.is_some_and(|length| length > MAX_READ_BODY as u64) {
        return Err(too_large(declared.unwrap_or_default()));
    }
    match http_body_util::Limited::new(body, MAX_READ_BODY)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(too_large(declared.unwrap_or(MAX_READ_BODY as u64 + 1))),
    }
}

/// The request arrived but its body could not be buffered (or exceeds the KV value limit):
/// answer 413 with Consul's message.
pub(super) fn too_large(size: u64) -> Resp {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "Request body({size} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. See https://developer.hashicorp.com/consul/docs/agent/config/config-files#kv_max_value_size."
        ),
    )
}

/// The declared `Content-Length`, if any.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}
