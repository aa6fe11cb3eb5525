//! Logging setup, metrics exporters (StatsD, Prometheus) and metric descriptions.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use cadence::{BufferedUdpMetricSink, BufferedUnixMetricSink, MetricSink};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_exporter_statsd::{StatsdBuilder, StatsdRecorder};
use metrics_util::MetricKind;
use metrics_util::layers::{FanoutBuilder, Layer as _, Prefix, PrefixLayer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, LogFormat, MetricsSettings, StatsdTarget};

/// Per-query logs of hickory's server are INFO; they would drown a busy node's
/// journal and cost latency, so they are held at WARN unless asked for.
/// `dnsfront::query=info` too: the query log is switched by `log.queries`, not by the
/// level, so `level = "warn"` with `queries = true` still writes it.
const QUIET_LIBRARIES: &str =
    "hickory_server=warn,hickory_proto=warn,hickory_net=warn,dnsfront::query=info";

/// Installs the tracing subscriber on stderr. `RUST_LOG` wins over `level`.
///
/// The filter sits behind a reload layer, so [`reload_log_level`] can change
/// it on SIGHUP without restarting.
pub fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = log_filter(level).unwrap_or_else(|error| {
        eprintln!("dnsfront: {error}; using info");
        EnvFilter::new(format!("info,{QUIET_LIBRARIES}"))
    });
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match format {
        LogFormat::Text => registry.with(layer.with_ansi(false)).try_init(),
        LogFormat::Json => registry.with(layer.json()).try_init(),
    };
    // Already installed (tests build several apps in one process): keep the first.
    if result.is_ok() {
        let _ = LOG_FILTER.set(handle);
    }
}

/// The reload handle of the installed log filter (set by [`init_logging`]).
static LOG_FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// `RUST_LOG` when set, else `level` plus the quiet-libraries directives.
fn log_filter(level: &str) -> anyhow::Result<EnvFilter> {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| format!("{level},{QUIET_LIBRARIES}"));
    EnvFilter::try_new(&filter).with_context(|| format!("invalid log filter {filter:?}"))
}

/// Replaces the log filter installed by [`init_logging`] (SIGHUP reload).
///
/// Returns `Ok(false)` when nothing changed: `RUST_LOG` is set (it wins), or
/// no subscriber of ours is installed. Fails on an invalid filter.
pub fn reload_log_level(level: &str) -> anyhow::Result<bool> {
    if std::env::var("RUST_LOG").is_ok_and(|value| !value.is_empty()) {
        return Ok(false);
    }
    let filter = log_filter(level)?;
    let Some(handle) = LOG_FILTER.get() else {
        return Ok(false);
    };
    handle
        .reload(filter)
        .context("the log subscriber is gone")?;
    Ok(true)
}

/// One metric declaration: (name, kind, unit, description), as each crate's
/// `metrics::METRICS` writes it.
pub type MetricSpec = (&'static str, MetricKind, Unit, &'static str);

/// Every metric dnsfront emits: one list per crate, and ours. A crate whose
/// list is missing here has no descriptions (the tests below catch it).
pub const ALL_METRICS: &[&[MetricSpec]] = &[
    dnsfront_catalog::metrics::METRICS,
    dnsfront_consul::metrics::METRICS,
    dnsfront_dns::metrics::METRICS,
    dnsfront_forward::metrics::METRICS,
    dnsfront_hosts::metrics::METRICS,
    dnsfront_snapshot::metrics::METRICS,
    &[
        (
            BUILD_INFO,
            MetricKind::Gauge,
            Unit::Count,
            "Always 1, tagged with the running version",
        ),
        (
            EVENTS_DROPPED,
            MetricKind::Counter,
            Unit::Count,
            "DogStatsD events not sent (socket busy or agent unreachable)",
        ),
    ],
];

/// Describes every crate's metrics to the installed recorder.
pub fn describe_metrics() {
    for &(name, kind, unit, description) in ALL_METRICS.iter().copied().flatten() {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(name, unit, description),
            MetricKind::Gauge => metrics::describe_gauge!(name, unit, description),
            MetricKind::Histogram => metrics::describe_histogram!(name, unit, description),
        }
    }
}

// === Metrics ===

/// Gauge that is always 1, tagged `version` (the running build).
pub const BUILD_INFO: &str = "build_info";
/// DogStatsD events dropped by `src/events.rs`.
pub const EVENTS_DROPPED: &str = "events.dropped_total";

/// How often buffered StatsD lines are sent at the latest.
///
/// cadence's `BufferedUdpMetricSink` only sends a datagram when its buffer is
/// full (or on drop), so on a quiet node a counter could sit in memory for
/// minutes. We keep the buffer (one datagram per ~1.4 KB instead of one per
/// metric: a busy resolver emits several lines per query) and flush it this
/// long after the first line written since the last flush, which bounds the
/// delay of any line to about one second and sends nothing while nothing is
/// written.
/// Lines go straight into that buffer from the thread that records them, with
/// no queue and sender thread in front (cadence's `QueuingMetricSink`): the
/// socket is non-blocking, so the occasional datagram send (one per ~1.4 KB
/// of lines) costs a caller less than a channel send and waking another
/// thread per line did — on a forwarded miss, and on an idle resolver, where
/// that thread woke for every line.
const STATSD_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Gauges are re-sent on this period: a StatsD agent reports a gauge only for
/// the flush windows in which it received a value (DogStatsD: 10 s), so a
/// gauge set once (build info, circuit state) would otherwise vanish.
const GAUGE_REPEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Largest datagram: fits a 1500-byte MTU after IP and UDP headers (the
/// DogStatsD recommendation for UDP).
const STATSD_DATAGRAM_BYTES: usize = 1432;
/// Largest datagram over a Unix socket (the DogStatsD recommendation for UDS,
/// the agent's default `dogstatsd_buffer_size`).
const STATSD_UNIX_DATAGRAM_BYTES: usize = 8192;
/// How often the Prometheus recorder drains its histogram buffers.
const PROMETHEUS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Histogram buckets for the Prometheus endpoint (every histogram is in
/// seconds). They start at 5 µs: a wire-cache hit is answered in a few
/// microseconds, and CoreDNS's buckets (from 0.25 ms) would put every hit in
/// the first one.
const PROMETHEUS_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Buckets of `consul.request_duration_seconds`: blocking queries (watch mode,
/// the snapshot follower) are held by Consul for up to their wait time.
const PROMETHEUS_CONSUL_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 600.0,
];

/// The installed exporters. Dropping it flushes buffered StatsD lines.
#[derive(Default)]
pub struct Metrics {
    statsd_sink: Option<SharedStatsdSink>,
    /// The counters summed for StatsD, sent before the last flush.
    statsd_counters: Option<Aggregated<()>>,
    prometheus: Option<PrometheusHandle>,
    prometheus_listen: Option<SocketAddr>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("statsd", &self.statsd_sink.is_some())
            .field("prometheus_listen", &self.prometheus_listen)
            .finish()
    }
}

/// Installs the metrics exporters `settings` asks for, as the global recorder,
/// and emits `build_info`. Must run inside a tokio runtime (it spawns the
/// flush tasks). With every exporter off it does nothing: no socket, no recorder.
///
/// Fails naming `metrics.statsd_address` when the address does not resolve.
/// `metrics.prefix` applies to both exporters; the Datadog unified tags
/// (`statsd_tags`) to StatsD only.
pub fn init_metrics(settings: &MetricsSettings) -> anyhow::Result<Metrics> {
    if settings.is_disabled() {
        return Ok(Metrics::default());
    }
    let mut metrics = Metrics::default();
    metrics.prometheus_listen = settings.prometheus_listen;

    let statsd = match &settings.statsd_address {
        Some(address) => {
            let (recorder, sink, gathered) = statsd_recorder(address, settings)?;
            metrics.statsd_counters = Some(gathered.handle());
            let flushed = Arc::clone(&sink);
            tokio::spawn(async move {
                // Asleep until a line is written or the gauges are due: an idle
                // resolver wakes once per GAUGE_REPEAT_INTERVAL, not every second
                // (on the kernel's timer: tokio's would wake it three times).
                let mut repeat = dnsfront_hosts::Ticker::new(GAUGE_REPEAT_INTERVAL);
                loop {
                    let due = tokio::select! {
                        () = STATSD_WRITTEN.notify.notified() => {
                            if !STATSD_WRITTEN.pending.load(Ordering::Acquire) {
                                continue; // flushed already, with the line that notified
                            }
                            false
                        }
                        () = repeat.tick() => true,
                    };
                    if due {
                        gathered.repeat();
                    } else {
                        // Gather up to a second of lines into as few datagrams as they fill.
                        // (The repeated gauges are written at once: sent at once.)
                        tokio::time::sleep(STATSD_FLUSH_INTERVAL).await;
                    }
                    STATSD_WRITTEN.pending.store(false, Ordering::Release);
                    gathered.send_counters();
                    // Errors (agent not running: ECONNREFUSED) are not worth a log line per second.
                    let _ = flushed.flush();
                }
            });
            metrics.statsd_sink = Some(sink);
            Some(recorder)
        }
        None => None,
    };

    let prometheus = match settings.prometheus_listen {
        Some(_) => {
            let recorder = prometheus_builder(&settings.tags)?.build_recorder();
            let handle = recorder.handle();
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROMETHEUS_UPKEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
            metrics.prometheus = Some(handle);
            Some(recorder)
        }
        None => None,
    };

    let installed = match (statsd, prometheus) {
        (Some(statsd), Some(prometheus)) => {
            let prometheus = with_prefix(&settings.prefix, prometheus);
            install(
                FanoutBuilder::default()
                    .add_recorder(statsd)
                    .add_recorder(prometheus)
                    .build(),
            )
        }
        (Some(statsd), None) => install(statsd),
        (None, Some(prometheus)) => install(with_prefix(&settings.prefix, prometheus)),
        (None, None) => Ok(()),
    };
    installed?;
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    info!(
        statsd = ?settings.statsd_address,
        statsd_tags = ?settings.statsd_tags,
        prometheus = ?settings.prometheus_listen,
        prefix = %settings.prefix,
        "Metrics enabled"
    );
    if let Some(listen) = settings.prometheus_listen
        && !listen.ip().is_loopback()
    {
        warn!(listen = %listen, "The metrics endpoint listens beyond loopback and has no authentication");
    }
    Ok(metrics)
}

/// The Prometheus recorder's settings: the buckets, and `metrics.tags` as labels.
fn prometheus_builder(tags: &[(String, String)]) -> anyhow::Result<PrometheusBuilder> {
    let mut builder = PrometheusBuilder::new()
        .set_buckets(PROMETHEUS_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Suffix(dnsfront_consul::metrics::REQUEST_DURATION_SECONDS.to_owned()),
                PROMETHEUS_CONSUL_BUCKETS,
            )
        })
        .context("prometheus histogram buckets")?;
    for (key, value) in tags {
        builder = builder.add_global_label(key.clone(), value.clone());
    }
    Ok(builder)
}

impl Metrics {
    /// Sends the summed counters and the buffered StatsD lines now.
    pub fn flush(&self) {
        if let Some(counters) = &self.statsd_counters {
            counters.send_counters();
        }
        if let Some(sink) = &self.statsd_sink {
            let _ = sink.flush();
        }
    }

    /// Binds `metrics.prometheus_listen` and serves `GET /metrics` (Prometheus
    /// text) and `GET /health` (200 `ok` while `ready` is set, else 503) until
    /// `shutdown`. Returns the bound address, or `None` when the endpoint is off.
    pub async fn serve_http(
        &self,
        ready: Readiness,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let (Some(listen), Some(handle)) = (self.prometheus_listen, self.prometheus.clone()) else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("metrics.prometheus_listen: binding {listen}"))?;
        let local = listener.local_addr().context("metrics endpoint address")?;
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let handle = handle.clone();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            handle.render(),
                        )
                    }
                }),
            )
            .route(
                "/health",
                axum::routing::get(move || {
                    let ready = ready.clone();
                    async move {
                        if ready.is_ready() {
                            (axum::http::StatusCode::OK, "ok\n")
                        } else {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                        }
                    }
                }),
            );
        tokio::spawn(async move {
            let server =
                axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
            if let Err(error) = server.await {
                warn!(error = %error, "Metrics endpoint stopped");
            }
        });
        info!(listen = %local, "Metrics endpoint listening (/metrics, /health)");
        Ok(Some(local))
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Whether the DNS server is serving (for `/health`). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the server as serving (true) or not (false).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// True while the server is serving.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn install<R: Recorder + Sync + 'static>(recorder: R) -> anyhow::Result<()> {
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))
}

fn with_prefix<R: Recorder>(prefix: &str, recorder: R) -> Prefixed<R> {
    if prefix.is_empty() {
        Prefixed::Plain(recorder)
    } else {
        Prefixed::With(PrefixLayer::new(prefix.to_owned()).layer(recorder))
    }
}

/// A recorder with or without [`PrefixLayer`] (the layer cannot take an empty prefix).
enum Prefixed<R> {
    Plain(R),
    With(Prefix<R>),
}

macro_rules! delegate {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self {
            Prefixed::Plain($inner) => $call,
            Prefixed::With($inner) => $call,
        }
    };
}

impl<R: Recorder> Recorder for Prefixed<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        delegate!(self, inner => inner.describe_counter(key, unit, description))
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        delegate!(self, inner => inner.describe_gauge(key, unit, description))
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        delegate!(self, inner => inner.describe_histogram(key, unit, description))
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        delegate!(self, inner => inner.register_counter(key, metadata))
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        delegate!(self, inner => inner.register_gauge(key, metadata))
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        delegate!(self, inner => inner.register_histogram(key, metadata))
    }
}

/// The buffered StatsD sink (UDP or Unix), shared by the exporter's queue
/// and our flush task.
type SharedStatsdSink = Arc<dyn MetricSink + Send + Sync + std::panic::RefUnwindSafe>;

/// Lines in the StatsD buffer not yet flushed (one exporter per process):
/// the flush task sleeps until the first one.
struct Written {
    pending: AtomicBool,
    notify: tokio::sync::Notify,
}

static STATSD_WRITTEN: Written = Written {
    pending: AtomicBool::new(false),
    notify: tokio::sync::Notify::const_new(),
};

/// A cadence sink shared between the exporter and our flush task.
struct SharedSink(SharedStatsdSink);

/// Tells the flush task that something waits to be sent.
fn note_written() {
    if !STATSD_WRITTEN.pending.swap(true, Ordering::AcqRel) {
        STATSD_WRITTEN.notify.notify_one();
    }
}

impl MetricSink for SharedSink {
    fn emit(&self, metric: &str) -> std::io::Result<usize> {
        let written = self.0.emit(metric);
        note_written();
        written
    }

    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

type StatsdParts = (Aggregated<StatsdRecorder>, SharedStatsdSink, Aggregated<()>);

fn statsd_recorder(
    target: &StatsdTarget,
    settings: &MetricsSettings,
) -> anyhow::Result<StatsdParts> {
    let sink: SharedStatsdSink = match target {
        StatsdTarget::Udp(address) => {
            let target = address
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| ConfigError::Invalid {
                    key: "metrics.statsd_address".to_owned(),
                    reason: format!("{address:?} does not resolve to an address"),
                })?;
            let socket = statsd_socket(target).with_context(|| {
                format!("metrics.statsd_address: opening a UDP socket to {target}")
            })?;
            socket
                .set_nonblocking(true)
                .context("StatsD client socket")?;
            Arc::new(
                BufferedUdpMetricSink::with_capacity(target, socket, STATSD_DATAGRAM_BYTES)
                    .context("metrics.statsd_address")?,
            )
        }
        StatsdTarget::Unix(path) => {
            // Unbound: each datagram names the agent's socket, so an agent
            // that starts (or restarts) after us is reached without a reconnect.
            let socket = std::os::unix::net::UnixDatagram::unbound()
                .context("StatsD client socket (unix)")?;
            socket
                .set_nonblocking(true)
                .context("StatsD client socket (unix)")?;
            if !path.exists() {
                warn!(path = %path.display(), "The DogStatsD socket does not exist yet; metrics are dropped until it does");
            }
            Arc::new(BufferedUnixMetricSink::with_capacity(
                path,
                socket,
                STATSD_UNIX_DATAGRAM_BYTES,
            ))
        }
    };
    // Histograms are sent as DogStatsD distributions (`|d`): the Datadog
    // backend aggregates them across hosts, so fleet-wide percentiles are
    // true percentiles (agent-side `|h` histograms or `|ms` timers would give
    // per-host percentiles that cannot be combined). Values stay in seconds.
    let mut builder = StatsdBuilder::from("", 0)
        .with_sink(SharedSink(Arc::clone(&sink)))
        .histogram_is_distribution();
    for (key, value) in settings.tags.iter().chain(&settings.statsd_tags) {
        builder = builder.with_default_tag(key, value);
    }
    let recorder = builder
        .build(Some(&settings.prefix))
        .context("building the StatsD exporter")?;
    let repeating = Aggregated::new(recorder);
    let handle = repeating.handle();
    Ok((repeating, sink, handle))
}

/// The StatsD client socket, connected to `target` and never bound to a
/// wildcard address: to the loopback when the agent is on it (the default,
/// `127.0.0.1:8125`), else to the address the kernel's route to the agent
/// leaves from. Connected, it takes datagrams from the agent's address only;
/// bound to `0.0.0.0`, as before, it accepted them from anywhere on every
/// interface (it reads none, but a socket open to the world is one more
/// thing an audit has to clear).
pub(crate) fn statsd_socket(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: IpAddr = match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(ip) if ip.is_loopback() => Ipv6Addr::LOCALHOST.into(),
        _ => {
            // Asks the routing table which source address reaches the agent:
            // connecting a UDP socket sends nothing.
            let unspecified: IpAddr = if target.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            let probe = UdpSocket::bind((unspecified, 0))?;
            probe.connect(target)?;
            probe.local_addr()?.ip()
        }
    };
    let socket = UdpSocket::bind((local, 0))?;
    socket.connect(target)?;
    Ok(socket)
}

/// Wraps the StatsD recorder: remembers the last value of every gauge, so
/// that [`Aggregated::repeat`] can send them again, and sums every counter's
/// increments until [`Aggregated::send_counters`] sends one line per counter
/// that moved (client-side aggregation, as DogStatsD clients do). Without it
/// every increment was a line of its own: several per forwarded miss, each
/// formatted, buffered and sent (issue 16 goal 4). The agent sums what it
/// gets per flush window, so the totals are the same.
struct Aggregated<R> {
    inner: R,
    gauges: Arc<Mutex<HashMap<Key, Arc<RepeatedGauge>>>>,
    counters: Arc<RwLock<HashMap<Key, Arc<SummedCounter>>>>,
}

impl<R> Aggregated<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            gauges: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// A second handle on the same gauges and counters, for the flush task.
    fn handle(&self) -> Aggregated<()> {
        Aggregated {
            inner: (),
            gauges: Arc::clone(&self.gauges),
            counters: Arc::clone(&self.counters),
        }
    }

    /// Sends what every counter gathered since the last call, one line each.
    fn send_counters(&self) {
        let counters: Vec<Arc<SummedCounter>> = self
            .counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for counter in counters {
            let gathered = counter.gathered.swap(0, Ordering::Relaxed);
            if gathered > 0 {
                counter.inner.increment(gathered);
            }
        }
    }

    /// Sends the last value of every gauge that was ever set.
    fn repeat(&self) {
        let gauges: Vec<Arc<RepeatedGauge>> = self
            .gauges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for gauge in gauges {
            if gauge.was_set.load(Ordering::Relaxed) {
                gauge
                    .inner
                    .set(f64::from_bits(gauge.last.load(Ordering::Relaxed)));
            }
        }
    }
}

struct RepeatedGauge {
    inner: Gauge,
    last: AtomicU64,
    was_set: AtomicBool,
}

/// A counter whose increments are summed until the flush task sends them.
struct SummedCounter {
    inner: Counter,
    gathered: AtomicU64,
}

impl CounterFn for SummedCounter {
    fn increment(&self, value: u64) {
        if self.gathered.fetch_add(value, Ordering::Relaxed) == 0 {
            note_written();
        }
    }

    // Never used by us (StatsD counters are deltas); passed on as is.
    fn absolute(&self, value: u64) {
        self.inner.absolute(value);
    }
}

impl GaugeFn for RepeatedGauge {
    // StatsD cannot add to a gauge (house style: only `set`); forwarded as is.
    fn increment(&self, value: f64) {
        self.inner.increment(value);
    }

    fn decrement(&self, value: f64) {
        self.inner.decrement(value);
    }

    fn set(&self, value: f64) {
        self.last.store(value.to_bits(), Ordering::Relaxed);
        self.was_set.store(true, Ordering::Relaxed);
        self.inner.set(value);
    }
}

impl<R: Recorder> Recorder for Aggregated<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        // Counter keys are bounded (no query names in tags), so is this map;
        // `counter!` registers on every call, so the common case only reads.
        let known = self
            .counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned();
        let counter = known.unwrap_or_else(|| {
            let mut counters = self
                .counters
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(counters.entry(key.clone()).or_insert_with(|| {
                Arc::new(SummedCounter {
                    inner: self.inner.register_counter(key, metadata),
                    gathered: AtomicU64::new(0),
                })
            }))
        });
        Counter::from_arc(counter)
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        // Gauge keys are bounded (no query names in tags), so is this map.
        let mut gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        let gauge = gauges.entry(key.clone()).or_insert_with(|| {
            Arc::new(RepeatedGauge {
                inner: self.inner.register_gauge(key, metadata),
                last: AtomicU64::new(0),
                was_set: AtomicBool::new(false),
            })
        });
        Gauge::from_arc(Arc::clone(gauge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The increments each counter key received, as (key, value) in order.
    #[derive(Default, Clone)]
    struct Increments(Arc<Mutex<Vec<(String, u64)>>>);

    struct IncrementFn {
        key: String,
        seen: Increments,
    }

    impl CounterFn for IncrementFn {
        fn increment(&self, value: u64) {
            self.seen
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((self.key.clone(), value));
        }
        fn absolute(&self, _: u64) {}
    }

    impl Recorder for Increments {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(IncrementFn {
                key: key.to_string(),
                seen: self.clone(),
            }))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Increments are summed per key (labels included) and reach the StatsD
    /// recorder as one increment per key that moved, when the flush task asks.
    #[test]
    fn counters_are_summed_until_sent() {
        let seen = Increments::default();
        let recorder = Aggregated::new(seen.clone());
        let flush = recorder.handle();
        let metadata = Metadata::new(module_path!(), metrics::Level::INFO, None);
        let key = |rcode: &'static str| {
            Key::from_parts(
                "dns.responses_total",
                vec![metrics::Label::new("rcode", rcode)],
            )
        };
        for value in [1, 2, 3] {
            recorder
                .register_counter(&key("NOERROR"), &metadata)
                .increment(value);
        }
        recorder
            .register_counter(&key("NXDOMAIN"), &metadata)
            .increment(1);
        let recorded = || {
            seen.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        assert!(recorded().is_empty(), "nothing sent before the flush");
        flush.send_counters();
        let mut sent = recorded();
        sent.sort();
        assert_eq!(
            sent,
            vec![
                (key("NOERROR").to_string(), 6),
                (key("NXDOMAIN").to_string(), 1)
            ]
        );
        flush.send_counters();
        assert_eq!(
            recorded().len(),
            2,
            "a counter that did not move sends nothing"
        );
    }

    /// Records the names given a description, and nothing else.
    #[derive(Default)]
    struct Described(Mutex<Vec<String>>);

    impl Described {
        fn push(&self, key: KeyName) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(key.as_str().to_owned());
        }
    }

    impl Recorder for Described {
        fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
            self.push(key);
        }
        fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
            self.push(key);
        }
        fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
            self.push(key);
        }
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// The README's metrics table: (name without the default prefix, type column).
    fn readme_metrics() -> Vec<(String, String)> {
        include_str!("../README.md")
            .lines()
            .filter_map(|line| line.strip_prefix("| `dnsfront."))
            .filter_map(|rest| {
                let (name, rest) = rest.split_once('`')?;
                let kind = rest.split('|').nth(1)?.trim();
                Some((name.to_owned(), kind.to_owned()))
            })
            .collect()
    }

    #[test]
    fn statsd_socket_is_connected_and_bound_to_a_specific_address() {
        let agent = UdpSocket::bind("127.0.0.1:0").expect("agent");
        let target = agent.local_addr().expect("agent addr");
        let socket = statsd_socket(target).expect("socket");
        let local = socket.local_addr().expect("local");
        assert_eq!(local.ip(), Ipv4Addr::LOCALHOST, "{local}");
        assert_ne!(local.port(), 0);
        assert_eq!(socket.peer_addr().expect("connected"), target);
        // What it sends arrives, from the address it is bound to.
        socket.send(b"dnsfront.test:1|c").expect("send");
        let mut buffer = [0_u8; 64];
        agent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let (size, from) = agent.recv_from(&mut buffer).expect("datagram");
        assert_eq!(&buffer[..size], b"dnsfront.test:1|c");
        assert_eq!(from, local);
        // A datagram from anyone but the agent is not delivered to it.
        let stranger = UdpSocket::bind("127.0.0.1:0").expect("stranger");
        stranger.send_to(b"x", local).expect("send");
        agent.send_to(b"agent", local).expect("send");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let size = socket.recv(&mut buffer).expect("from the agent");
        assert_eq!(&buffer[..size], b"agent", "only the agent's datagram");

        // A non-loopback agent: the source address of the route to it
        // (this test network's route, when there is one).
        let remote: SocketAddr = "192.0.2.1:8125".parse().expect("addr");
        if let Ok(socket) = statsd_socket(remote) {
            let local = socket.local_addr().expect("local");
            assert!(!local.ip().is_unspecified(), "{local}");
            assert_eq!(socket.peer_addr().expect("connected"), remote);
        }
    }

    fn declared() -> Vec<MetricSpec> {
        ALL_METRICS.iter().copied().flatten().copied().collect()
    }

    /// Prometheus's naming conventions hold for every declared name, so
    /// StatsD and Prometheus share one name: counters and only counters end
    /// in `_total`, a unit in seconds or bytes is the name's last word
    /// (before `_total`), and a name is `crate.words` in lowercase.
    #[test]
    fn every_declared_name_follows_the_prometheus_conventions() {
        for (name, kind, unit, _) in declared() {
            let words_ok = name.split('.').all(|word| {
                word.starts_with(|c: char| c.is_ascii_lowercase())
                    && word
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
            assert!(
                words_ok && name.split('.').count() <= 2,
                "{name}: crate.words_in_snake_case"
            );
            let is_counter = kind == MetricKind::Counter;
            assert_eq!(
                name.ends_with("_total"),
                is_counter,
                "{name}: counters, and only counters, end in _total"
            );
            let base = name.strip_suffix("_total").unwrap_or(name);
            match unit {
                Unit::Seconds => assert!(base.ends_with("_seconds"), "{name}: unit in the name"),
                Unit::Bytes => assert!(base.ends_with("_bytes"), "{name}: unit in the name"),
                Unit::Count => assert!(
                    !base.ends_with("_seconds") && !base.ends_with("_bytes"),
                    "{name}: declared as a count"
                ),
                other => panic!("{name}: unit {other:?} has no Prometheus suffix here"),
            }
        }
    }

    /// Every string under one of `keys` anywhere in `value`.
    fn strings_under<'a>(value: &'a serde_json::Value, keys: &[&str], found: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match value {
                        serde_json::Value::String(text) if keys.contains(&key.as_str()) => {
                            found.push(text);
                        }
                        other => strings_under(other, keys, found),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    strings_under(item, keys, found);
                }
            }
            _ => {}
        }
    }

    /// Maximal runs of `[a-z0-9_.]` in `text` that start with `prefix`.
    fn tokens<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        let is_name =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.';
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            let tail = &rest[at..];
            let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
            if !before.is_some_and(is_name) {
                found.push(tail[..end].trim_end_matches('.'));
            }
            rest = &tail[end.max(1)..];
        }
        found
    }

    fn dashboard(file: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/dashboards")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("dashboard file");
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{file}: {error}"))
    }

    /// The dashboards in `deploy/dashboards/` use only declared metrics,
    /// under their real names: Prometheus names (histograms through
    /// `_bucket`) in Grafana's queries, StatsD names in Datadog's (counters
    /// as rates or counts, percentiles only of distributions).
    #[test]
    fn the_dashboards_use_only_declared_metrics() {
        let declared = declared();
        let grafana = dashboard("grafana.json");
        assert!(grafana["panels"].as_array().is_some_and(|p| p.len() > 10));
        let mut queries = Vec::new();
        strings_under(&grafana, &["expr", "query", "definition"], &mut queries);
        let mut used = std::collections::BTreeSet::new();
        for query in &queries {
            for token in tokens(query, "dnsfront_") {
                let spec = declared.iter().find(|(name, kind, ..)| {
                    let exported = prometheus_name(name);
                    token == exported
                        || (*kind == MetricKind::Histogram
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|suffix| token == format!("{exported}{suffix}")))
                });
                let (name, ..) = spec.unwrap_or_else(|| {
                    panic!("grafana.json: {token} (in {query:?}) is no declared metric")
                });
                used.insert(*name);
            }
        }
        assert!(used.len() >= 20, "grafana.json uses {used:?}");

        let datadog = dashboard("datadog.json");
        assert_eq!(datadog["layout_type"], "ordered");
        let mut queries = Vec::new();
        strings_under(&datadog, &["query"], &mut queries);
        let mut used = std::collections::BTreeSet::new();
        for query in &queries {
            for token in tokens(query, "dnsfront.") {
                let (name, kind, ..) = declared
                    .iter()
                    .find(|(name, ..)| token.strip_prefix("dnsfront.") == Some(*name))
                    .unwrap_or_else(|| {
                        panic!("datadog.json: {token} (in {query:?}) is no declared metric")
                    });
                let percentile =
                    query.starts_with('p') && query[1..].starts_with(|c: char| c.is_ascii_digit());
                assert_eq!(
                    percentile,
                    *kind == MetricKind::Histogram,
                    "datadog.json: {query:?}: percentiles are for distributions only"
                );
                if *kind == MetricKind::Counter {
                    assert!(
                        query.contains(".as_rate()") || query.contains(".as_count()"),
                        "datadog.json: {query:?}: a counter is read as a rate or a count"
                    );
                }
                used.insert(*name);
            }
        }
        assert!(used.len() >= 20, "datadog.json uses {used:?}");
    }

    /// The Prometheus name of a declared metric under the default prefix.
    fn prometheus_name(name: &str) -> String {
        format!(
            "{}_{}",
            crate::config::DEFAULT_METRICS_PREFIX,
            name.replace('.', "_")
        )
    }

    /// Through the real exporter: every declared metric is rendered under
    /// its own name (nothing appended), with its type, and histograms have
    /// the microsecond buckets.
    #[test]
    fn the_prometheus_exporter_renders_each_declared_name_as_is() {
        let recorder = prometheus_builder(&[]).expect("builder").build_recorder();
        let handle = recorder.handle();
        let recorder = with_prefix(crate::config::DEFAULT_METRICS_PREFIX, recorder);
        metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            for (name, kind, ..) in declared() {
                match kind {
                    MetricKind::Counter => metrics::counter!(name, "proto" => "udp").increment(1),
                    MetricKind::Gauge => metrics::gauge!(name).set(1.0),
                    MetricKind::Histogram => metrics::histogram!(name).record(0.000_003),
                }
            }
        });
        let text = handle.render();
        let types: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .collect();
        for (name, kind, ..) in declared() {
            let expected = match kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Histogram => "histogram",
            };
            let exported = prometheus_name(name);
            assert!(
                types.contains(&(exported.as_str(), expected)),
                "{name} is not rendered as {exported} ({expected}):\n{text}"
            );
        }
        assert_eq!(types.len(), declared().len(), "{text}");
        let duration = prometheus_name(dnsfront_dns::metrics::REQUEST_DURATION_SECONDS);
        assert!(
            text.contains(&format!("{duration}_bucket{{le=\"0.000005\"}} 1")),
            "a 3 µs answer lands in the first bucket:\n{text}"
        );
        let consul = prometheus_name(dnsfront_consul::metrics::REQUEST_DURATION_SECONDS);
        assert!(
            text.contains(&format!("{consul}_bucket{{le=\"600\"}} 1"))
                && !text.contains(&format!("{duration}_bucket{{le=\"600\"}}")),
            "blocking Consul reads have buckets up to 10 min, DNS answers do not:\n{text}"
        );
    }

    #[test]
    fn every_metric_in_the_readme_is_described() {
        let recorder = Described::default();
        metrics::with_local_recorder(&recorder, describe_metrics);
        let described = recorder
            .0
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let names = readme_metrics();
        assert!(names.len() > 30, "README table found: {names:?}");
        let missing: Vec<_> = names
            .iter()
            .filter(|(name, _)| !described.contains(name))
            .collect();
        assert!(missing.is_empty(), "no description: {missing:?}");
    }

    #[test]
    fn readme_metrics_table_lists_exactly_the_declared_metrics_with_their_type() {
        let declared = declared();
        let mut names: Vec<_> = declared.iter().map(|(name, ..)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), declared.len(), "a metric is declared twice");
        let readme = readme_metrics();
        for (name, kind, ..) in &declared {
            let row = readme.iter().find(|(row, _)| row == name);
            let expected = match kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                // Sent as DogStatsD distributions.
                MetricKind::Histogram => "distribution",
            };
            assert_eq!(
                row.map(|(_, kind)| kind.as_str()),
                Some(expected),
                "README row of {name}"
            );
        }
        for (row, _) in &readme {
            assert!(
                declared.iter().any(|(name, ..)| name == row),
                "README names {row}, which no crate declares"
            );
        }
    }

    /// `pub const NAME: &str = "value";` lines of one file.
    fn str_consts(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|line| line.trim().strip_prefix("pub const "))
            .filter_map(|rest| {
                let (name, rest) = rest.split_once(": &str = \"")?;
                let (value, _) = rest.split_once('"')?;
                Some((name.to_owned(), value.to_owned()))
            })
            .collect()
    }

    fn rust_files(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, files);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }

    /// Every `counter!`/`gauge!`/`histogram!` call outside tests names a
    /// const of its crate's `metrics.rs` (or `BUILD_INFO`) that is declared
    /// with that kind; every declared metric is emitted somewhere.
    #[test]
    fn every_emitted_metric_is_declared_with_its_kind_and_every_declared_one_is_emitted() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let declared = declared();
        let mut sources = vec![root.join("src")];
        for entry in std::fs::read_dir(root.join("crates"))
            .expect("crates")
            .flatten()
        {
            let name = entry.file_name();
            // Test helpers and the simulator emit nothing dnsfront reports.
            if !matches!(name.to_str(), Some("test-support" | "consul-sim" | "bench")) {
                sources.push(entry.path().join("src"));
            }
        }
        let mut emitted = Vec::new();
        for source in sources {
            let consts_file = if source == root.join("src") {
                source.join("telemetry.rs")
            } else {
                source.join("metrics.rs")
            };
            let consts = str_consts(&std::fs::read_to_string(&consts_file).unwrap_or_default());
            let mut files = Vec::new();
            rust_files(&source, &mut files);
            for file in files {
                let text = std::fs::read_to_string(&file).expect("read source");
                // Unit tests may emit what they like.
                let text = text.split("#[cfg(test)]\nmod ").next().unwrap_or_default();
                for (macro_name, kind) in [
                    ("counter!(", MetricKind::Counter),
                    ("gauge!(", MetricKind::Gauge),
                    ("histogram!(", MetricKind::Histogram),
                ] {
                    for (at, _) in text.match_indices(macro_name) {
                        let before = text[..at].chars().next_back().unwrap_or(' ');
                        if before.is_alphanumeric() || before == '_' {
                            continue; // describe_counter!( and the like
                        }
                        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                        if text[line_start..at].trim_start().starts_with("//") {
                            continue;
                        }
                        let argument = text[at + macro_name.len()..]
                            .split([',', ')'])
                            .next()
                            .unwrap_or_default()
                            .trim();
                        let place = format!("{}: {macro_name}{argument}", file.display());
                        let const_name = argument.rsplit("::").next().unwrap_or_default();
                        let value = consts
                            .iter()
                            .find(|(name, _)| name == const_name)
                            .map(|(_, value)| value.as_str());
                        let value = value.unwrap_or_else(|| {
                            panic!("{place}: not a metric const of {}", consts_file.display())
                        });
                        let spec = declared.iter().find(|(name, ..)| *name == value);
                        assert_eq!(
                            spec.map(|(_, kind, ..)| *kind),
                            Some(kind),
                            "{place}: {value} must be declared in METRICS with this kind"
                        );
                        emitted.push(value.to_owned());
                    }
                }
            }
        }
        for (name, ..) in &declared {
            assert!(
                emitted.iter().any(|emitted| emitted == name),
                "{name} is declared but never emitted"
            );
        }
    }
}
