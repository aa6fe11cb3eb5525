//! Test helpers: an in-memory catalog and upstream and a server on
//! 127.0.0.1:0. The DNS client and the metrics recorder come from
//! `test_support`; this module only adds a thin adapter for hand-built messages.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use dnsfront_catalog::{Freshness, InstanceStatus, Lookup, Node, ServiceInstance};
use dnsfront_dns::{
    CatalogView, Config, Listeners, Router, ServerHandle, ServerOptions, Upstream, serve,
};
use dnsfront_forward::{Answer, Source};
use dnsfront_hosts::LocalHosts;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use test_support::{Ask, udp_raw};

type ServiceKey = (String, Option<String>);

#[derive(Default)]
struct CatalogState {
    services: HashMap<ServiceKey, Lookup<Arc<[ServiceInstance]>>>,
    nodes: HashMap<ServiceKey, Lookup<Arc<Node>>>,
    asked: Vec<String>,
}

/// In-memory catalog: unknown keys are `NotFound(Fresh)`.
#[derive(Clone, Default)]
pub struct FakeCatalog {
    state: Arc<Mutex<CatalogState>>,
}

impl FakeCatalog {
    pub fn set_service(
        &self,
        name: &str,
        datacenter: Option<&str>,
        lookup: Lookup<Arc<[ServiceInstance]>>,
    ) {
        let key = (name.to_owned(), datacenter.map(str::to_owned));
        self.state
            .lock()
            .expect("lock")
            .services
            .insert(key, lookup);
    }

    pub fn set_instances(&self, name: &str, instances: Vec<ServiceInstance>, freshness: Freshness) {
        self.set_service(name, None, Lookup::Found(instances.into(), freshness));
    }

    pub fn set_node(&self, name: &str, datacenter: Option<&str>, lookup: Lookup<Arc<Node>>) {
        let key = (name.to_owned(), datacenter.map(str::to_owned));
        self.state.lock().expect("lock").nodes.insert(key, lookup);
    }

    /// Every lookup so far, as `service:<name>@<dc>` / `node:<name>@<dc>`.
    pub fn asked(&self) -> Vec<String> {
        self.state.lock().expect("lock").asked.clone()
    }
}

impl CatalogView for FakeCatalog {
    fn service(
        &self,
        service: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<[ServiceInstance]>>> + Send {
        let mut state = self.state.lock().expect("lock");
        state
            .asked
            .push(format!("service:{service}@{}", datacenter.unwrap_or("-")));
        let key = (service.to_owned(), datacenter.map(str::to_owned));
        let lookup = state
            .services
            .get(&key)
            .cloned()
            .unwrap_or(Lookup::NotFound(Freshness::Fresh));
        async move { lookup }
    }

    fn node(
        &self,
        node: &str,
        datacenter: Option<&str>,
    ) -> impl Future<Output = Lookup<Arc<Node>>> + Send {
        let mut state = self.state.lock().expect("lock");
        state
            .asked
            .push(format!("node:{node}@{}", datacenter.unwrap_or("-")));
        let key = (node.to_owned(), datacenter.map(str::to_owned));
        let lookup = state
            .nodes
            .get(&key)
            .cloned()
            .unwrap_or(Lookup::NotFound(Freshness::Fresh));
        async move { lookup }
    }
}

#[derive(Default)]
struct UpstreamState {
    answer: Option<Answer>,
    asked: Vec<(Query, bool)>,
}

/// In-memory upstream: answers with the configured `Answer`, or fails when none is set.
#[derive(Clone, Default)]
pub struct FakeUpstream {
    state: Arc<Mutex<UpstreamState>>,
}

impl FakeUpstream {
    pub fn set_answer(&self, answer: Option<Answer>) {
        self.state.lock().expect("lock").answer = answer;
    }

    pub fn asked(&self) -> Vec<(Query, bool)> {
        self.state.lock().expect("lock").asked.clone()
    }
}

impl Upstream for FakeUpstream {
    fn resolve(
        &self,
        query: &Query,
        dnssec_ok: bool,
    ) -> impl Future<Output = Result<Answer, dnsfront_forward::Error>> + Send {
        let mut state = self.state.lock().expect("lock");
        state.asked.push((query.clone(), dnssec_ok));
        let result = state
            .answer
            .clone()
            .ok_or_else(|| dnsfront_forward::Error::AllFailed {
                last: "fake upstream down".to_owned(),
            });
        async move { result }
    }
}

pub fn answer(response_code: ResponseCode, answers: Vec<Record>) -> Answer {
    Answer {
        response_code,
        answers,
        authorities: Vec::new(),
        additionals: Vec::new(),
        authentic_data: false,
        source: Source::Upstream,
    }
}

pub fn instance(
    node: &str,
    node_address: &str,
    service_address: Option<&str>,
    port: u16,
    tags: &[&str],
) -> ServiceInstance {
    ServiceInstance {
        node: node.to_owned(),
        datacenter: "dc1".to_owned(),
        node_address: Some(node_address.parse().expect("ip literal")),
        service_address: service_address.map(|a| a.parse().expect("ip literal")),
        port,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        weight: 1,
        status: InstanceStatus::Passing,
        hostname: None,
        details: None,
    }
}

pub fn node(name: &str, address: &str) -> Arc<Node> {
    Arc::new(Node {
        name: name.to_owned(),
        datacenter: "dc1".to_owned(),
        address: Some(address.parse().expect("ip")),
        hostname: None,
        details: None,
    })
}

/// A running server over fakes.
pub struct TestServer {
    pub addr: SocketAddr,
    pub catalog: FakeCatalog,
    pub upstream: FakeUpstream,
    pub handle: ServerHandle,
    /// A clone of the router being served (shares settings with it).
    pub router: Router<FakeCatalog, FakeUpstream>,
}

pub async fn start(config: Config, options: ServerOptions, with_upstream: bool) -> TestServer {
    start_with_hosts(config, options, with_upstream, None).await
}

pub async fn start_with_hosts(
    config: Config,
    options: ServerOptions,
    with_upstream: bool,
    hosts: Option<LocalHosts>,
) -> TestServer {
    let catalog = FakeCatalog::default();
    let upstream = FakeUpstream::default();
    let mut router = Router::with_backends(
        config,
        catalog.clone(),
        with_upstream.then(|| upstream.clone()),
    );
    if let Some(hosts) = hosts {
        router = router.with_local_hosts(hosts);
    }
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("literal")]).expect("bind");
    let addr = listeners.local_addrs()[0];
    let handle = serve(router.clone(), listeners, options).expect("serve");
    TestServer {
        addr,
        catalog,
        upstream,
        handle,
        router,
    }
}

pub async fn start_default() -> TestServer {
    start(Config::default(), ServerOptions::default(), true).await
}

/// A hand-editable query message built from `ask`, for cases `Ask` cannot
/// express (extra questions, other opcodes, EDNS flags or versions).
pub fn query_message(ask: &Ask) -> Message {
    Message::from_vec(&ask.to_bytes()).expect("Ask encodes a parsable query")
}

/// Sends a hand-built `message` over UDP through `test_support::udp_raw`;
/// returns the parsed reply and its size in bytes.
pub async fn udp_message(addr: SocketAddr, message: &Message) -> (Message, usize) {
    let bytes = message.to_vec().expect("encode query");
    let reply = udp_raw(addr, &bytes)
        .await
        .expect("UDP reply within timeout");
    let parsed = Message::from_vec(&reply).expect("parse reply");
    assert_eq!(parsed.metadata.id, message.metadata.id);
    (parsed, reply.len())
}

pub fn has_stale_ede(message: &Message) -> bool {
    message.edns.as_ref().is_some_and(|edns| {
        edns.options().options.iter().any(|(code, option)| {
            u16::from(*code) == 15
                && matches!(option, EdnsOption::Unknown(15, data) if data == &[0, 3])
        })
    })
}

pub fn ede_code() -> EdnsCode {
    EdnsCode::from(15)
}
