//! The agent model over real HTTP: several agents in front of one set of servers, the
//! server load they cause (`/v1/sim/stats`), a server restart (`break_streams`) and a
//! snapshot restore (`restore_snapshot`).

use std::time::Duration;

use consul_sim::{Registration, ServerStats, Sim, SimServer};
use serde_json::Value;

mod common;

use common::{blocking_answer, client, get, index_of, start_blocking_get};

/// Serves `sim` as the client agent `agent` on a free port.
async fn agent(sim: &Sim, agent: &str) -> SimServer {
    sim.serve_agent("127.0.0.1:0".parse().expect("valid address"), agent)
        .await
        .expect("bind agent")
}

fn sim_with_web() -> Sim {
    let sim = Sim::new();
    sim.register(Registration::new("web").node("n1", "10.0.0.1"));
    sim.register(Registration::new("api").node("n2", "10.0.0.2"));
    sim
}

/// `GET /v1/sim/stats` through one agent's listener.
async fn stats(server: &SimServer) -> ServerStats {
    let body: Value = get(server, "/v1/sim/stats")
        .await
        .json()
        .await
        .expect("stats json");
    ServerStats {
        rpcs: body["rpcs"].as_u64().expect("rpcs"),
        egress_bytes: body["egress_bytes"].as_u64().expect("egress"),
        subscriptions: body["subscriptions"].as_u64().expect("subscriptions") as usize,
        subscriptions_created: body["subscriptions_created"].as_u64().expect("created"),
        change_events: body["change_events"].as_u64().expect("events"),
        held_blocking_queries: body["held_blocking_queries"].as_u64().expect("held") as usize,
        held_streamed_reads: body["held_streamed_reads"].as_u64().expect("held") as usize,
        agents: server.sim().server_stats().agents,
    }
}

/// Polls the stats until `ready` holds (the held read has reached the simulator).
async fn stats_when(server: &SimServer, ready: impl Fn(&ServerStats) -> bool) -> ServerStats {
    for _ in 0..500 {
        let stats = stats(server).await;
        if ready(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "stats never reached the expected state: {:?}",
        stats(server).await
    );
}

#[tokio::test]
async fn agents_share_the_servers_and_count_one_rpc_per_plain_read() {
    let sim = sim_with_web();
    let (a, b) = (agent(&sim, "agent-a").await, agent(&sim, "agent-b").await);
    for server in [&a, &b] {
        let body: Value = get(server, "/v1/health/service/web?stale")
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(body[0]["Node"]["Address"], "10.0.0.1");
    }
    get(&a, "/v1/catalog/services?stale").await;
    get(&a, "/v1/agent/self").await;

    let stats = sim.server_stats();
    assert_eq!(stats.rpcs, 3, "agent/self is answered by the agent itself");
    assert_eq!(stats.agents["agent-a"].rpcs, 2);
    assert_eq!(stats.agents["agent-b"].rpcs, 1);
    assert_eq!(
        stats.subscriptions, 0,
        "first fetches without ?cached are not streamed"
    );
    assert!(stats.egress_bytes > 0);
    assert_eq!(
        stats.egress_bytes,
        stats.agents["agent-a"].egress_bytes + stats.agents["agent-b"].egress_bytes
    );
    // The stats endpoint itself is the simulator's: not logged, not counted.
    assert_eq!(stats, self::stats(&a).await);
    assert_eq!(sim.request_count("/v1/sim/"), 0);
}

#[tokio::test]
async fn a_blocking_query_is_one_rpc_for_its_whole_life_and_is_held_meanwhile() {
    let sim = sim_with_web();
    sim.set_streaming(false);
    let a = agent(&sim, "agent-a").await;
    let index = index_of(&get(&a, "/v1/health/service/web").await);
    let waiter = start_blocking_get(&a, &format!("/v1/health/service/web?index={index}")).await;
    let held = stats_when(&a, |stats| stats.held_blocking_queries == 1).await;
    assert_eq!(held.rpcs, 1, "a held query is counted when it returns");
    // A change to another service wakes it without ending it; a change to web ends it.
    sim.register(Registration::new("api").node("n3", "10.0.0.3"));
    sim.set_node_address("n1", "10.0.0.9");
    let answer = blocking_answer(waiter).await;
    assert!(index_of(&answer) > index);
    let after = sim.server_stats();
    assert_eq!(after.rpcs, 2);
    assert_eq!(after.held_blocking_queries, 0);
}

#[tokio::test]
async fn streamed_reads_cost_one_subscription_per_agent_and_view_and_one_event_per_change() {
    let sim = sim_with_web();
    let (a, b) = (agent(&sim, "agent-a").await, agent(&sim, "agent-b").await);
    let index = index_of(&get(&a, "/v1/health/service/web?cached").await);
    get(&a, "/v1/health/service/web?cached&passing").await;
    get(&b, "/v1/health/service/web?cached").await;
    // A tag filter is another view, so another subscription.
    get(&b, "/v1/health/service/web?cached&tag=v1").await;
    let mut watches = Vec::new();
    for server in [&a, &a, &b] {
        watches.push(
            start_blocking_get(server, &format!("/v1/health/service/web?index={index}")).await,
        );
    }
    let held = stats_when(&a, |stats| stats.held_streamed_reads == 3).await;
    assert_eq!(
        held.rpcs, 0,
        "streamed reads never reach the servers as RPCs"
    );
    assert_eq!(held.subscriptions, 3);
    assert_eq!(held.agents["agent-a"].subscriptions, 1);
    assert_eq!(held.agents["agent-b"].subscriptions, 2);
    assert_eq!(held.held_blocking_queries, 0);
    let snapshots = held.egress_bytes;
    assert!(snapshots > 0, "each new subscription gets a snapshot");

    sim.set_node_address("n1", "10.0.0.9");
    for watch in watches {
        let answer = blocking_answer(watch).await;
        assert_eq!(answer.headers()["x-consul-query-backend"], "streaming");
    }
    let after = sim.server_stats();
    assert_eq!(after.change_events, 3, "one event per subscription of web");
    assert_eq!(after.rpcs, 0);
    assert!(after.egress_bytes > snapshots);
    // A change of another service sends nothing to web's subscriptions.
    sim.set_node_address("n2", "10.0.0.8");
    assert_eq!(sim.server_stats().change_events, 3);
    // Views outlive their readers (Consul keeps an idle view for 20 minutes) ...
    assert_eq!(sim.server_stats().subscriptions, 3);
    // ... and are stopped after the idle TTL.
    sim.set_view_idle_ttl(Duration::ZERO);
    assert_eq!(sim.server_stats().subscriptions, 0);
}

#[tokio::test]
async fn break_streams_fails_every_held_watch_once_and_resubscribes_on_the_next_read() {
    let sim = sim_with_web();
    let (a, b) = (agent(&sim, "agent-a").await, agent(&sim, "agent-b").await);
    let index = index_of(&get(&a, "/v1/health/service/web?cached").await);
    let catalog = index_of(&get(&a, "/v1/catalog/services").await);
    let blocking = start_blocking_get(&a, &format!("/v1/catalog/services?index={catalog}")).await;
    let mut watches = Vec::new();
    for server in [&a, &b, &b] {
        watches.push(
            start_blocking_get(server, &format!("/v1/health/service/web?index={index}")).await,
        );
    }
    stats_when(&a, |stats| stats.held_streamed_reads == 3).await;
    let response = client()
        .put(format!("{}/v1/sim/break-streams", a.url()))
        .send()
        .await
        .expect("break");
    assert_eq!(response.status(), 200);
    for watch in watches {
        let answer = blocking_answer(watch).await;
        assert_eq!(answer.status(), 500);
        assert!(answer.text().await.expect("body").contains("Unavailable"));
    }
    let broken = sim.server_stats();
    assert_eq!(broken.subscriptions, 0, "every stream is torn down");
    assert_eq!(broken.subscriptions_created, 2);
    assert_eq!(
        broken.held_blocking_queries, 1,
        "blocking queries are not streams"
    );
    assert!(!blocking.is_finished());

    // The next read works at once and subscribes again.
    let again = get(
        &b,
        &format!("/v1/health/service/web?cached&index={index}&wait=1ms"),
    )
    .await;
    assert_eq!(again.status(), 200);
    let after = sim.server_stats();
    assert_eq!(after.subscriptions, 1);
    assert_eq!(after.subscriptions_created, 3);
    blocking.abort();
}

#[tokio::test]
async fn restore_snapshot_returns_held_blocking_queries_at_once_with_a_lower_index() {
    let sim = sim_with_web();
    sim.set_streaming(false);
    let a = agent(&sim, "agent-a").await;
    let index = index_of(&get(&a, "/v1/health/service/web").await);
    let waiter = start_blocking_get(&a, &format!("/v1/health/service/web?index={index}")).await;
    stats_when(&a, |stats| stats.held_blocking_queries == 1).await;
    let response = client()
        .put(format!("{}/v1/sim/restore-snapshot", a.url()))
        .send()
        .await
        .expect("restore");
    assert_eq!(response.status(), 200);
    let answer = blocking_answer(waiter).await;
    let lower = index_of(&answer);
    assert!(lower < index, "restored index {lower} below {index}");
    // Blocking on the index just returned waits (the state did not change again) ...
    let waiter = start_blocking_get(&a, &format!("/v1/health/service/web?index={lower}")).await;
    // ... until the next write, which gets an index above every earlier one.
    sim.set_node_address("n1", "10.0.0.9");
    assert!(index_of(&blocking_answer(waiter).await) > index);
}

#[tokio::test]
async fn restore_snapshot_resubscribes_views_and_a_held_streamed_read_waits_for_a_higher_index() {
    let sim = sim_with_web();
    let a = agent(&sim, "agent-a").await;
    let index = index_of(&get(&a, "/v1/health/service/web?cached").await);
    let waiter =
        start_blocking_get(&a, &format!("/v1/health/service/web?index={index}&wait=1s")).await;
    stats_when(&a, |stats| stats.held_streamed_reads == 1).await;
    sim.restore_snapshot();
    let restored = sim.server_stats();
    assert_eq!(restored.subscriptions, 1);
    assert_eq!(
        restored.subscriptions_created, 2,
        "the view subscribed again"
    );
    // The view only answers an index above the one asked for: at its wait's end, with
    // the lower restored index (a 200, never an error).
    let answer = blocking_answer(waiter).await;
    assert_eq!(answer.status(), 200);
    assert!(index_of(&answer) < index);
}
