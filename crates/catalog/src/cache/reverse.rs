//! Reverse lookups (PTR) over what the cache holds, and the agent's datacenter as
//! learned from its answers.
//!
//! A PTR query scans the cached entries rather than a reverse index kept beside them:
//! the cache is bounded (`max_entries`, `max_bytes`), entries change on every refresh
//! and leave through moka's eviction, so an index would need the same bookkeeping on
//! every refresh and eviction for the sake of a rare query; the scan costs nothing
//! until a PTR query comes and never asks Consul (Consul itself lists the whole catalog
//! per PTR query). The hosts snapshot, which holds the whole catalog, keeps an index.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Cache, Inner, Key, Value};
use crate::{AddressOwner, Freshness, Node, ServiceInstance};

impl Cache {
    /// The cached node whose address is `ip` and the cached service with an instance
    /// at service address `ip` (each the first found), from the data of every cached
    /// name, fresh or not. No I/O; costs one pass over the cache.
    pub fn owners_of(&self, ip: IpAddr) -> (Option<AddressOwner>, Option<AddressOwner>) {
        let mut service_owner = None;
        for (key, slot) in self.inner.slots.iter() {
            if slot.evicted.load(Ordering::Acquire) {
                continue;
            }
            let entry = slot.entry.load();
            let freshness = if entry.last_refresh_failed {
                Freshness::Stale
            } else {
                Freshness::Fresh
            };
            match (&*key, &entry.value) {
                (_, Value::Node(node)) if node.address == Some(ip) => {
                    return (Some(node_owner(node, freshness)), service_owner);
                }
                (Key::Service { name, .. }, Value::Services(instances)) => {
                    for instance in instances.iter() {
                        if instance.node_address == Some(ip) {
                            let owner = instance_node_owner(instance, freshness);
                            return (Some(owner), service_owner);
                        }
                        if service_owner.is_none() && instance.service_address == Some(ip) {
                            service_owner = Some(AddressOwner {
                                name: name.to_string(),
                                datacenter: instance.datacenter.clone(),
                                freshness,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        (None, service_owner)
    }

    /// The agent's own datacenter, as its answers for names asked without a
    /// datacenter gave it (`None` until one came).
    pub fn local_datacenter(&self) -> Option<Arc<String>> {
        self.inner.local_datacenter.load_full()
    }
}

impl Inner {
    /// Notes the datacenter of data fetched for `key` when `key` names the agent's own.
    pub(super) fn learn_datacenter(&self, key: &Key, value: &Value) {
        if key.datacenter().is_some() {
            return;
        }
        let datacenter = match value {
            Value::Services(instances) => instances.first().map(|i| i.datacenter.as_str()),
            Value::Node(node) => Some(node.datacenter.as_str()),
            Value::Missing => None,
        };
        let Some(datacenter) = datacenter.filter(|dc| !dc.is_empty()) else {
            return;
        };
        let known = self.local_datacenter.load();
        if known.as_deref().map(String::as_str) != Some(datacenter) {
            self.local_datacenter
                .store(Some(Arc::new(datacenter.to_owned())));
        }
    }
}

fn node_owner(node: &Node, freshness: Freshness) -> AddressOwner {
    AddressOwner {
        name: node.name.clone(),
        datacenter: node.datacenter.clone(),
        freshness,
    }
}

fn instance_node_owner(instance: &ServiceInstance, freshness: Freshness) -> AddressOwner {
    AddressOwner {
        name: instance.node.clone(),
        datacenter: instance.datacenter.clone(),
        freshness,
    }
}
