//! `/v1/sim/*`: the simulator's own endpoints (real Consul has none). Not logged, faulted
//! or ACL-checked.
//!
//! - `GET /v1/sim/stats`: [`crate::ServerStats`] as JSON (what reached the servers);
//! - `PUT /v1/sim/break-streams`: [`crate::Sim::break_streams`] (a server restart);
//! - `PUT /v1/sim/restore-snapshot`: [`crate::Sim::restore_snapshot`].

use http::Method;

use super::response::{Resp, json_value, method_not_allowed, not_found_page};
use crate::Sim;

/// `rest` is the path after `/v1/sim/`.
pub(super) fn route(sim: &Sim, method: &Method, rest: &str) -> Resp {
    match rest {
        "stats" if *method == Method::GET => json_value(&sim.server_stats()),
        "stats" => method_not_allowed(method, "GET"),
        "break-streams" if *method == Method::PUT => {
            sim.break_streams();
            json_value(&true)
        }
        "restore-snapshot" if *method == Method::PUT => {
            sim.restore_snapshot();
            json_value(&true)
        }
        "break-streams" | "restore-snapshot" => method_not_allowed(method, "PUT"),
        _ => not_found_page(),
    }
}
