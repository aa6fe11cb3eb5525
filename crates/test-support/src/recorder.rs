//! Reading what code under test recorded through the `metrics` facade, via
//! `metrics-util`'s [`DebuggingRecorder`].
//!
//! ```
//! use test_support::{DebuggingRecorder, Recorded};
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! let _guard = metrics::set_default_local_recorder(&recorder);
//! // ... exercise the code under test ...
//! metrics::counter!("dns.truncated_responses_total", "zone" => "consul").increment(1);
//! let recorded = Recorded::take(&snapshotter);
//! assert_eq!(recorded.counter("dns.truncated_responses_total", &[("zone", "consul")]), 1);
//! ```

use metrics_util::debugging::{DebugValue, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

pub use metrics_util::debugging::DebuggingRecorder;

/// Runs `f` with a fresh [`DebuggingRecorder`] as this thread's recorder and
/// returns its result with what it recorded.
pub fn capture_metrics<T>(f: impl FnOnce() -> T) -> (T, Recorded) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let result = metrics::with_local_recorder(&recorder, f);
    (result, Recorded::take(&snapshotter))
}

/// The metrics recorded so far, taken from a [`DebuggingRecorder`].
#[derive(Debug)]
pub struct Recorded {
    metrics: Vec<(CompositeKey, DebugValue)>,
}

impl Recorded {
    /// Takes a snapshot. `DebuggingRecorder` resets counters and drains
    /// histograms on every snapshot, so take one after the code has run.
    pub fn take(snapshotter: &Snapshotter) -> Self {
        let metrics = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _unit, _description, value)| (key, value))
            .collect();
        Self { metrics }
    }

    /// The counter `name` whose labels are exactly `labels` (in any order);
    /// 0 when it was never registered.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(MetricKind::Counter, name, labels)
            .map(|value| match value {
                DebugValue::Counter(count) => *count,
                other => panic!("counter {name} holds {other:?}"),
            })
            .sum()
    }

    /// The last value of the gauge `name` whose labels are exactly `labels`
    /// (in any order); `None` when it was never registered.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(MetricKind::Gauge, name, labels)
            .map(|value| match value {
                DebugValue::Gauge(value) => value.0,
                other => panic!("gauge {name} holds {other:?}"),
            })
            .last()
    }

    /// How many samples the histogram `name` with exactly `labels` (in any
    /// order) received; 0 when it was never registered.
    pub fn histogram_samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.matching(MetricKind::Histogram, name, labels)
            .map(|value| match value {
                DebugValue::Histogram(samples) => samples.len(),
                other => panic!("histogram {name} holds {other:?}"),
            })
            .sum()
    }

    fn matching<'a>(
        &'a self,
        kind: MetricKind,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a DebugValue> + 'a {
        let mut wanted: Vec<(&str, &str)> = labels.to_vec();
        wanted.sort_unstable();
        self.metrics
            .iter()
            .filter(move |(key, _)| {
                key.kind() == kind && key.key().name() == name && {
                    let mut have: Vec<(&str, &str)> = key
                        .key()
                        .labels()
                        .map(|label| (label.key(), label.value()))
                        .collect();
                    have.sort_unstable();
                    have == wanted
                }
            })
            .map(|(_, value)| value)
    }
}
