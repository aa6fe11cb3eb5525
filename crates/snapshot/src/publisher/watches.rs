//! The leader's publish loop: three blocking queries side by side, each on its own
//! [`consul::Watch`] and failure streak, and a publish round whenever one moves.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use dnsfront_consul::{self as consul, Pace, QueryOptions};
use tokio::time::Instant;

use super::{LeaderState, Publisher, Round, backoff};
use crate::retry::ConsulRetry;

/// One blocking query of the publish loop: Consul's index rules and rate limit
/// ([`consul::Watch`]) and its own failure streak.
struct LeaderWatch {
    what: &'static str,
    watch: consul::Watch,
    retry: ConsulRetry,
}

impl LeaderWatch {
    /// A watch blocking up to `wait`; paced, as Consul asks, with a burst of 2 and then one
    /// read per `min_interval` (the rounds' own rate), so a server that answers at once
    /// (an index stuck at 0) is not read in a loop.
    fn new(what: &'static str, wait: Duration, min_interval: Duration) -> Self {
        let pace = Pace::new(Duration::ZERO, min_interval, Instant::now());
        Self {
            what,
            watch: consul::Watch::new(wait).paced(pace),
            retry: ConsulRetry::new(backoff()),
        }
    }

    /// Takes one answer: its value and whether the index moved, or after an error (logged
    /// once per streak) the delay before asking again.
    fn take<T>(
        &mut self,
        result: Result<consul::Response<T>, consul::Error>,
    ) -> Result<(T, bool), Duration> {
        match result {
            Ok(response) => {
                self.retry.ok();
                let change = self.watch.observe(response.meta.index);
                Ok((response.value, change.changed()))
            }
            Err(error) => {
                self.retry
                    .failed(self.what, &error, "Consul call failed, retrying");
                Err(self.retry.next_delay())
            }
        }
    }

    /// Options and start of the next request: after `delay` (a backoff), when the pace allows.
    fn next_call(&mut self, delay: Duration) -> (QueryOptions, Instant) {
        let start_at = self.watch.start_at(Instant::now() + delay);
        (self.watch.options(), start_at)
    }
}

impl Publisher {
    /// The leader's loop: three blocking queries kept in flight side by side (the catalog's
    /// service list, every check's state, the node list), and a publish round whenever one
    /// moves (coalesced and rate-limited by `min_interval`).
    ///
    /// The futures live across iterations: when one returns, only that one is re-armed with
    /// its new index, so the others keep their place; dropping this future (leadership lost)
    /// cancels every request.
    pub(super) async fn publish_loop(&self, state: &mut LeaderState) -> Infallible {
        let (wait, min_interval) = (self.config.catalog_wait, self.config.min_interval);
        let mut catalog_watch = LeaderWatch::new("watching the catalog", wait, min_interval);
        let mut health_watch = LeaderWatch::new("watching health checks", wait, min_interval);
        let mut nodes_watch = LeaderWatch::new("watching catalog nodes", wait, min_interval);
        let catalog = self.catalog_call(catalog_watch.next_call(Duration::ZERO));
        let health = self.health_call(health_watch.next_call(Duration::ZERO));
        let nodes = self.nodes_call(nodes_watch.next_call(Duration::ZERO));
        tokio::pin!(catalog, health, nodes);
        // Service names from the latest catalog answer; a round needs them.
        let mut names: Option<Vec<String>> = None;
        // The first health answer (or failure) is in: the first round then sees both indexes.
        let mut health_seen = false;
        let mut due = false;
        loop {
            let ready = due && health_seen && names.is_some();
            tokio::select! {
                biased;
                result = &mut catalog => {
                    let delay = match catalog_watch.take(result) {
                        Ok((services, _)) => {
                            // Every catalog return is a round, also a timeout without change:
                            // it bounds the age of anything neither index reflects (node
                            // address changes) by `catalog_wait`; an unchanged snapshot costs
                            // reads but no write.
                            due = true;
                            names = Some(services.into_keys().collect());
                            Duration::ZERO
                        }
                        Err(delay) => delay,
                    };
                    catalog.set(self.catalog_call(catalog_watch.next_call(delay)));
                }
                result = &mut health => {
                    health_seen = true;
                    // Check states do not move the catalog index; this one does.
                    let delay = match health_watch.take(result) {
                        Ok((_, moved)) => {
                            due |= moved;
                            Duration::ZERO
                        }
                        Err(delay) => delay,
                    };
                    health.set(self.health_call(health_watch.next_call(delay)));
                }
                result = &mut nodes => {
                    // A node address change moves only the nodes index. The first answer
                    // moves it from 0 too; the catalog's first answer already made a round
                    // due, so that costs nothing extra.
                    let delay = match nodes_watch.take(result) {
                        Ok((_, moved)) => {
                            due |= moved;
                            Duration::ZERO
                        }
                        Err(delay) => delay,
                    };
                    nodes.set(self.nodes_call(nodes_watch.next_call(delay)));
                }
                () = tokio::time::sleep_until(state.next_build), if ready => {
                    due = false;
                    state.next_build = Instant::now() + self.config.min_interval;
                    let service_names = names.clone().unwrap_or_default();
                    let consul_index = catalog_watch
                        .watch
                        .index()
                        .max(health_watch.watch.index())
                        .max(nodes_watch.watch.index());
                    if let Round::Retry = self.publish_round(service_names, consul_index, state).await {
                        due = true;
                        state.next_build = state
                            .next_build
                            .max(Instant::now() + Duration::from_millis(100));
                    }
                }
            }
        }
    }

    /// At `start_at`, a blocking `/v1/catalog/services` (a watch's `options`).
    async fn catalog_call(
        &self,
        (options, start_at): (QueryOptions, Instant),
    ) -> Result<consul::Response<BTreeMap<String, Vec<String>>>, consul::Error> {
        if start_at > Instant::now() {
            tokio::time::sleep_until(start_at).await;
        }
        self.client.catalog_services(&options).await
    }

    /// At `start_at`, a blocking `/v1/health/state/any` (the checks table index).
    async fn health_call(
        &self,
        (options, start_at): (QueryOptions, Instant),
    ) -> Result<consul::Response<Vec<consul::HealthCheck>>, consul::Error> {
        if start_at > Instant::now() {
            tokio::time::sleep_until(start_at).await;
        }
        self.client.health_state("any", &options).await
    }

    /// At `start_at`, a blocking `/v1/catalog/nodes` (the nodes table index).
    async fn nodes_call(
        &self,
        (options, start_at): (QueryOptions, Instant),
    ) -> Result<consul::Response<Vec<consul::NodeInfo>>, consul::Error> {
        if start_at > Instant::now() {
            tokio::time::sleep_until(start_at).await;
        }
        self.client.catalog_nodes(&options).await
    }
}
