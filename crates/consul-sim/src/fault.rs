//! Scriptable faults that change how the simulator answers.

use std::time::Duration;

/// A fault injected with [`crate::Sim::inject`]; several may be active at once.
///
/// `path_prefix` is matched against the request path (for example `/v1/health/service/web`)
/// with `starts_with`, so `/v1/health/` covers every health endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with `status` and a text `body`; `count` limits how many requests it hits (`None` = until cleared).
    Status {
        /// Request path prefix the fault applies to.
        path_prefix: String,
        /// HTTP status code to return.
        status: u16,
        /// Text body to return.
        body: String,
        /// Number of requests to fail before the fault removes itself; `None` = until cleared.
        count: Option<usize>,
    },
    /// No raft leader: non-stale reads and writes fail with 500 `No cluster leader`,
    /// stale reads work with `X-Consul-KnownLeader: false`, `/v1/status/leader` returns `""`.
    NoLeader,
    /// Delay matching responses by `delay` (tokio timer, so paused time controls it).
    Delay {
        /// Request path prefix the fault applies to.
        path_prefix: String,
        /// Extra latency before the request is handled.
        delay: Duration,
    },
    /// Never respond to matching requests.
    Hang {
        /// Request path prefix the fault applies to.
        path_prefix: String,
    },
    /// Answer 200 with a body that is not valid JSON.
    Garbage {
        /// Request path prefix the fault applies to.
        path_prefix: String,
    },
    /// Answer 200 with a valid JSON body of `bytes` bytes (an empty list padded with
    /// spaces), streamed in chunks without a `Content-Length`: never held whole, and
    /// [`crate::Sim::huge_body_bytes_sent`] tells how much of it a client read.
    HugeBody {
        /// Request path prefix the fault applies to.
        path_prefix: String,
        /// Size of the body.
        bytes: u64,
    },
    /// Answer with the real JSON body cut in half.
    Truncated {
        /// Request path prefix the fault applies to.
        path_prefix: String,
    },
    /// Answer with an `X-Consul-Index` lower than the last one returned for that path.
    IndexBackwards {
        /// Request path prefix the fault applies to.
        path_prefix: String,
    },
    /// Answer with `X-Consul-Index: 0`.
    IndexZero {
        /// Request path prefix the fault applies to.
        path_prefix: String,
    },
    /// Report a large `X-Consul-LastContact` (milliseconds) on reads.
    LastContact {
        /// Value of the `X-Consul-LastContact` header.
        millis: u64,
    },
}

impl Fault {
    /// A status fault that lasts until cleared.
    pub fn status(path_prefix: &str, status: u16, body: &str) -> Self {
        Self::Status {
            path_prefix: path_prefix.to_owned(),
            status,
            body: body.to_owned(),
            count: None,
        }
    }

    /// A status fault for the next `count` matching requests only.
    pub fn fail_next(path_prefix: &str, count: usize, status: u16, body: &str) -> Self {
        Self::Status {
            path_prefix: path_prefix.to_owned(),
            status,
            body: body.to_owned(),
            count: Some(count),
        }
    }

    /// 500 `No cluster leader` on a path (the error Consul gives during an election).
    pub fn no_cluster_leader(path_prefix: &str) -> Self {
        Self::status(path_prefix, 500, "No cluster leader")
    }

    /// 429 as returned by a server's `request_limits` read limiter.
    pub fn rate_limited(path_prefix: &str) -> Self {
        Self::status(
            path_prefix,
            429,
            "rate limit exceeded, try again later or against a different server",
        )
    }

    /// 403 `Permission denied` (a token that lacks the needed permission).
    pub fn forbidden(path_prefix: &str) -> Self {
        Self::status(path_prefix, 403, "Permission denied")
    }

    /// 503 as returned for leader-only operations under `request_limits`.
    pub fn unavailable(path_prefix: &str) -> Self {
        Self::status(
            path_prefix,
            503,
            "rate limit exceeded for operation that can only be performed by the leader, try again later",
        )
    }

    /// Delay matching requests.
    pub fn delay(path_prefix: &str, delay: Duration) -> Self {
        Self::Delay {
            path_prefix: path_prefix.to_owned(),
            delay,
        }
    }

    /// Never answer matching requests.
    pub fn hang(path_prefix: &str) -> Self {
        Self::Hang {
            path_prefix: path_prefix.to_owned(),
        }
    }

    /// Answer matching requests with invalid JSON.
    pub fn garbage(path_prefix: &str) -> Self {
        Self::Garbage {
            path_prefix: path_prefix.to_owned(),
        }
    }

    /// Answer matching requests with a streamed JSON body of `bytes` bytes.
    pub fn huge_body(path_prefix: &str, bytes: u64) -> Self {
        Self::HugeBody {
            path_prefix: path_prefix.to_owned(),
            bytes,
        }
    }

    /// Answer matching requests with truncated JSON.
    pub fn truncated(path_prefix: &str) -> Self {
        Self::Truncated {
            path_prefix: path_prefix.to_owned(),
        }
    }

    /// Answer matching requests with an index lower than the last one returned.
    pub fn index_backwards(path_prefix: &str) -> Self {
        Self::IndexBackwards {
            path_prefix: path_prefix.to_owned(),
        }
    }

    /// Answer matching requests with `X-Consul-Index: 0`.
    pub fn index_zero(path_prefix: &str) -> Self {
        Self::IndexZero {
            path_prefix: path_prefix.to_owned(),
        }
    }

    /// The path prefix a fault applies to, or `None` for global faults.
    pub(crate) fn path_prefix(&self) -> Option<&str> {
        match self {
            Self::Status { path_prefix, .. }
            | Self::Delay { path_prefix, .. }
            | Self::Hang { path_prefix }
            | Self::Garbage { path_prefix }
            | Self::HugeBody { path_prefix, .. }
            | Self::Truncated { path_prefix }
            | Self::IndexBackwards { path_prefix }
            | Self::IndexZero { path_prefix } => Some(path_prefix),
            Self::NoLeader | Self::LastContact { .. } => None,
        }
    }

    /// Whether a path-scoped fault applies to `path`.
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.path_prefix()
            .is_some_and(|prefix| path.starts_with(prefix))
    }
}
