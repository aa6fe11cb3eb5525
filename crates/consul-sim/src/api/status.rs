//! `/v1/status/leader` and `/v1/status/peers` (no ACL check, as in Consul).

use super::Call;
use super::response::{Answer, json_value, not_found_page};

const LEADER_ADDRESS: &str = "127.0.0.1:8300";

/// `rest` is the decoded path after `/v1/status/`.
pub(super) fn route(call: &Call<'_>, rest: &str) -> Answer {
    match rest {
        "leader" => {
            call.require_get()?;
            // Without a leader Consul answers `""`.
            let leader = if call.sim.lock().no_leader() {
                ""
            } else {
                LEADER_ADDRESS
            };
            Ok(json_value(&leader))
        }
        "peers" => {
            call.require_get()?;
            Ok(json_value(&[LEADER_ADDRESS]))
        }
        _ => Ok(not_found_page()),
    }
}
