//! Response constructors shared by every endpoint family.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};

pub(super) const JSON: &str = "application/json";
pub(super) const TEXT: &str = "text/plain; charset=utf-8";

/// A finished response.
pub(super) type Resp = Response<Bytes>;

/// What an endpoint returns: `Err` carries an early error response, so `?` ends a handler
/// with it; [`super::handle`] answers either side.
pub(super) type Answer = Result<Resp, Resp>;

pub(super) fn text(status: StatusCode, body: &str) -> Resp {
    let mut response = Response::new(Bytes::from(body.to_owned()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    response
}

fn json_bytes(body: Vec<u8>) -> Resp {
    let mut response = Response::new(Bytes::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

pub(super) fn json_value<T: serde::Serialize>(value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(body),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

pub(super) fn bad_request(message: &str) -> Resp {
    text(StatusCode::BAD_REQUEST, message)
}

pub(super) fn server_error(message: &str) -> Resp {
    text(StatusCode::INTERNAL_SERVER_ERROR, message)
}

pub(super) fn not_found_page() -> Resp {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

pub(super) fn method_not_allowed(method: &Method, allow: &'static str) -> Resp {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method {method} not allowed"),
    );
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    response
}

pub(super) fn no_leader() -> Resp {
    server_error("No cluster leader")
}

pub(super) fn no_path_to_dc() -> Resp {
    server_error("No path to datacenter")
}
