//! The Consul HTTP API's response models as the client reads them
//! (`serde_json::from_slice`), and the instance rules applied to them.
//!
//! Input: byte 0 picks the model, the rest is the JSON body.
#![no_main]

use dnsfront_consul::{
    AgentService, CatalogNode, HealthCheck, InstanceStatus, KvPair, Node, NodeInfo, ServiceEntry,
    ServiceInstance,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 6 {
        0 => {
            let Ok(entries) = serde_json::from_slice::<Vec<ServiceEntry>>(body) else {
                return;
            };
            for entry in &entries {
                let strict = ServiceInstance::from_entry(entry, true);
                let lenient = ServiceInstance::from_entry(entry, false);
                // Passing-only is stricter, never looser.
                assert!(strict.is_none() || lenient.is_some(), "{entry:?}");
                assert_eq!(entry.passes_dns_health(true), strict.is_some());
                assert_eq!(entry.passes_dns_health(false), lenient.is_some());
                if let Some(instance) = lenient {
                    assert_eq!(instance.port, entry.service.port);
                    for tag in &entry.service.tags {
                        assert!(instance.has_tag(tag));
                    }
                    if let Some(address) = instance.address() {
                        assert_eq!(
                            instance.uses_node_address(),
                            instance.service_address.is_none()
                        );
                        assert!(
                            instance.service_address.or(instance.node_address) == Some(address)
                        );
                    }
                }
            }
        }
        1 => {
            if let Ok(checks) = serde_json::from_slice::<Vec<HealthCheck>>(body) {
                if let Some(status) = InstanceStatus::of_checks(&checks) {
                    assert!(!status.as_str().is_empty());
                }
            }
        }
        2 => {
            if let Ok(node) = serde_json::from_slice::<CatalogNode>(body) {
                let _ = format!("{node:?}");
            }
        }
        3 => {
            if let Ok(pairs) = serde_json::from_slice::<Vec<KvPair>>(body) {
                let _ = format!("{pairs:?}");
            }
        }
        4 => {
            if let Ok(info) = serde_json::from_slice::<NodeInfo>(body) {
                let _ = Node::from_info(&info);
            }
        }
        _ => {
            if let Ok(service) = serde_json::from_slice::<AgentService>(body) {
                let _ = format!("{service:?}");
            }
        }
    }
});
