//! The leader's publish loop: four blocking queries side by side, each on its own
//! [`consul::Watch`] and failure streak, and a publish round whenever one moves.
//!
//! Check states are watched through `/v1/health/state/critical` and `/warning`, not `any`:
//! `any` returns every check in the datacenter on every check update, while these return
//! only the failing ones, and between them see every change the DNS health rule cares
//! about (a check entering or leaving critical or warning).
//!
//! A watch that returns is re-armed no sooner than the next build may start
//! ([`LeaderState::next_build`]), so each watch costs Consul at most one answer per build
//! interval however fast the catalog churns, and a build that takes longer than the interval
//! pushes the next one out by its own duration instead of stacking rounds back to back.

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

    /// Options and start of the next request: after `delay` (a backoff) and not before
    /// `not_before` (the next build), when the pace allows.
    fn next_call(&mut self, delay: Duration, not_before: Instant) -> (QueryOptions, Instant) {
        let start_at = self
            .watch
            .start_at((Instant::now() + delay).max(not_before));
        (self.watch.options(), start_at)
    }
}

impl Publisher {
    /// The leader's loop: four blocking queries kept in flight side by side (the catalog's
    /// service list, the critical and the warning checks, the node list), and a publish
    /// round whenever one moves (coalesced and rate-limited by `min_interval`).
    ///
    /// The futures live across iterations: when one returns, only that one is re-armed with
    /// its new index, so the others keep their place; dropping this future (leadership lost)
    /// cancels every request.
    pub(super) async fn publish_loop(&self, state: &mut LeaderState) -> Infallible {
        let (wait, min_interval) = (self.config.catalog_wait, self.config.min_interval);
        let mut catalog_watch = LeaderWatch::new("watching the catalog", wait, min_interval);
        let mut critical_watch = LeaderWatch::new("watching critical checks", wait, min_interval);
        let mut warning_watch = LeaderWatch::new("watching warning checks", wait, min_interval);
        let mut nodes_watch = LeaderWatch::new("watching catalog nodes", wait, min_interval);
        let now = Instant::now();
        let catalog = self.catalog_call(catalog_watch.next_call(Duration::ZERO, now));
        let critical = self.health_call("critical", critical_watch.next_call(Duration::ZERO, now));
        let warning = self.health_call("warning", warning_watch.next_call(Duration::ZERO, now));
        let nodes = self.nodes_call(nodes_watch.next_call(Duration::ZERO, now));
        tokio::pin!(catalog, critical, warning, nodes);
        // Service names from the latest catalog answer; a round needs them.
        let mut names: Option<Vec<String>> = None;
        // The first answer (or failure) of each health watch is in: the first round then
        // sees every index.
        let (mut critical_seen, mut warning_seen) = (false, false);
        let mut due = false;
        loop {
            let ready = due && critical_seen && warning_seen && names.is_some();
            let not_before = state.next_build;
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
                    catalog.set(self.catalog_call(catalog_watch.next_call(delay, not_before)));
                }
                result = &mut critical => {
                    critical_seen = true;
                    // Check states do not move the catalog index; these do.
                    let delay = match critical_watch.take(result) {
                        Ok((_, moved)) => {
                            due |= moved;
                            Duration::ZERO
                        }
                        Err(delay) => delay,
                    };
                    critical.set(self.health_call(
                        "critical",
                        critical_watch.next_call(delay, not_before),
                    ));
                }
                result = &mut warning => {
                    warning_seen = true;
                    let delay = match warning_watch.take(result) {
                        Ok((_, moved)) => {
                            due |= moved;
                            Duration::ZERO
                        }
                        Err(delay) => delay,
                    };
                    warning.set(self.health_call(
                        "warning",
                        warning_watch.next_call(delay, not_before),
                    ));
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
                    nodes.set(self.nodes_call(nodes_watch.next_call(delay, not_before)));
                }
                () = tokio::time::sleep_until(state.next_build), if ready => {
                    due = false;
                    let started = Instant::now();
                    let service_names = names.clone().unwrap_or_default();
                    let consul_index = catalog_watch
                        .watch
                        .index()
                        .max(critical_watch.watch.index())
                        .max(warning_watch.watch.index())
                        .max(nodes_watch.watch.index());
                    let round = self.publish_round(service_names, consul_index, state).await;
                    // At least `min_interval` between starts, and at least as long idle as
                    // the round took: a slow build never runs back to back.
                    let finished = Instant::now();
                    state.next_build = (started + self.config.min_interval)
                        .max(finished + (finished - started));
                    if let Round::Retry = round {
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

    /// At `start_at`, a blocking `/v1/health/state/STATE` (`critical` or `warning`).
    async fn health_call(
        &self,
        check_state: &'static str,
        (options, start_at): (QueryOptions, Instant),
    ) -> Result<consul::Response<Vec<consul::HealthCheck>>, consul::Error> {
        if start_at > Instant::now() {
            tokio::time::sleep_until(start_at).await;
        }
        self.client.health_state(check_state, &options).await
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
