//! The response cache: keys, TTL policy (clamps, RFC 2308 negative caching) and the
//! rendering of a cached response into an [`Answer`] with counted-down TTLs.
//!
//! Freshness lives in our [`Entry`] (`inserted_at` on the tokio clock, which tests can
//! pause); an entry is kept readable for `keep_for` = TTL + the serve-stale window at
//! insert time, so expired entries stay around for serve-stale until their window
//! ends, and the store (quick_cache) bounds them by bytes and by number: each entry
//! weighs what it holds (wire data, key, bookkeeping: see [`ByBytes`]).
//!
//! A negative response that replaces a positive one remembers it (`last_positive`):
//! when every upstream fails, the last known good answer is served stale rather than
//! the later NXDOMAIN/NODATA (CoreDNS's `serve_stale_policy prefer_positive`), so a
//! name that was once positive does not get stuck on a negative during an outage.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::{Answer, Config, Source};

/// Cache key: the question (name lower-cased) and whether DNSSEC records were asked for,
/// in wire form: the name's labels, type, class and the DO bit. Bytes rather than a
/// hickory `Name`, whose hashing and comparison walk the labels (≈ 7 % of a forwarded
/// miss's CPU) and which takes 80 bytes before its heap part.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    bytes: Box<[u8]>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name())
            .field("dnssec_ok", &self.dnssec_ok())
            .finish_non_exhaustive()
    }
}

/// The question's name as routing and policy see it: lower case, absolute.
pub(crate) fn question_name(query: &Query) -> Name {
    let mut name = query.name().to_lowercase();
    // The wire form is always absolute; "example.com" and "example.com." are one key.
    name.set_fqdn(true);
    name
}

impl Key {
    /// Builds the key of one question.
    #[cfg(test)]
    pub(crate) fn new(query: &Query, dnssec_ok: bool) -> Self {
        Self::for_name(
            &question_name(query),
            query.query_type(),
            query.query_class(),
            dnssec_ok,
        )
    }

    /// The key of a question whose name is already lower case and absolute.
    pub(crate) fn for_name(
        name: &Name,
        record_type: RecordType,
        dns_class: DNSClass,
        dnssec_ok: bool,
    ) -> Self {
        let mut bytes = Vec::with_capacity(name.len() + 6);
        for label in name.iter() {
            // Labels are at most 63 bytes (hickory checks when building a Name).
            bytes.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
            bytes.extend_from_slice(label);
        }
        bytes.push(0);
        bytes.extend_from_slice(&u16::from(record_type).to_be_bytes());
        bytes.extend_from_slice(&u16::from(dns_class).to_be_bytes());
        bytes.push(u8::from(dnssec_ok));
        Self {
            bytes: bytes.into_boxed_slice(),
        }
    }

    /// Whether the question asked for DNSSEC records (DO bit).
    pub(crate) fn dnssec_ok(&self) -> bool {
        self.bytes.last() == Some(&1)
    }

    /// The question name (lower case, absolute), for diagnostics.
    pub(crate) fn name(&self) -> Name {
        let labels = &self.bytes[..self.bytes.len().saturating_sub(5)];
        Name::read(&mut BinDecoder::new(labels)).unwrap_or_else(|_| Name::root())
    }
}

/// An upstream's answer, stripped of the header and OPT.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) response_code: ResponseCode,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) additionals: Vec<Record>,
    pub(crate) authentic_data: bool,
}

impl Response {
    /// NXDOMAIN, or NOERROR without answers (NODATA).
    pub(crate) fn is_negative(&self) -> bool {
        negative(self.response_code, self.answers.len())
    }

    /// Renders the response for a client: TTLs counted down by `age`, RRsets shuffled.
    #[cfg(test)]
    pub(crate) fn to_answer(&self, age: Duration, source: Source) -> Answer {
        let mut response = self.clone();
        response.count_down(age);
        response.into_answer(source)
    }

    /// Subtracts `age` (whole seconds) from every TTL, stopping at zero.
    fn count_down(&mut self, age: Duration) {
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        for record in self.records_mut() {
            record.decrement_ttl(elapsed);
        }
    }

    fn records_mut(&mut self) -> impl Iterator<Item = &mut Record> {
        self.answers
            .iter_mut()
            .chain(self.authorities.iter_mut())
            .chain(self.additionals.iter_mut())
    }

    /// The answer for a client, with the answer RRsets shuffled.
    fn into_answer(mut self, source: Source) -> Answer {
        shuffle_rrsets(&mut self.answers);
        Answer {
            response_code: self.response_code,
            answers: self.answers,
            authorities: self.authorities,
            additionals: self.additionals,
            authentic_data: self.authentic_data,
            source,
        }
    }
}

fn negative(response_code: ResponseCode, answers: usize) -> bool {
    response_code == ResponseCode::NXDomain
        || (response_code == ResponseCode::NoError && answers == 0)
}

/// A cached response in compact form: the records of the three sections encoded back
/// to back in wire format (names compressed within the blob), decoded again on every
/// hit. A typical answer takes about 100 bytes this way; as hickory `Record`s (272
/// bytes each before any heap data) it took 800 and more.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) response_code: ResponseCode,
    authentic_data: bool,
    /// Records in the answer, authority and additional sections.
    counts: [u16; 3],
    wire: Box<[u8]>,
}

impl Stored {
    /// Encodes `response`; `None` if a record cannot be encoded (it is not cached).
    pub(crate) fn encode(response: &Response) -> Option<Self> {
        let mut wire = Vec::with_capacity(128);
        let mut encoder = BinEncoder::new(&mut wire);
        let sections = [
            &response.answers,
            &response.authorities,
            &response.additionals,
        ];
        let mut counts = [0_u16; 3];
        for (count, records) in counts.iter_mut().zip(sections) {
            *count = u16::try_from(records.len()).ok()?;
            for record in records {
                record.emit(&mut encoder).ok()?;
            }
        }
        Some(Self {
            response_code: response.response_code,
            authentic_data: response.authentic_data,
            counts,
            wire: wire.into_boxed_slice(),
        })
    }

    /// Bytes of wire data held.
    pub(crate) fn wire_len(&self) -> usize {
        self.wire.len()
    }

    /// Decodes the records again; `None` only if the stored bytes do not decode.
    pub(crate) fn decode(&self) -> Option<Response> {
        let mut decoder = BinDecoder::new(&self.wire);
        let mut read = |count: u16| -> Option<Vec<Record>> {
            (0..count)
                .map(|_| Record::read(&mut decoder).ok())
                .collect()
        };
        Some(Response {
            response_code: self.response_code,
            answers: read(self.counts[0])?,
            authorities: read(self.counts[1])?,
            additionals: read(self.counts[2])?,
            authentic_data: self.authentic_data,
        })
    }

    /// NXDOMAIN, or NOERROR without answers (NODATA).
    pub(crate) fn is_negative(&self) -> bool {
        negative(self.response_code, usize::from(self.counts[0]))
    }

    /// Renders the response for a client: TTLs counted down by `age`, RRsets shuffled.
    /// `None` if the stored bytes do not decode (never expected: treat as absent).
    pub(crate) fn to_answer(&self, age: Duration, source: Source) -> Option<Answer> {
        let mut response = self.decode()?;
        response.count_down(age);
        Some(response.into_answer(source))
    }

    /// Renders a stale copy (RFC 8767): every TTL set to `ttl`, RRsets shuffled.
    pub(crate) fn to_stale_answer(&self, ttl: Duration) -> Option<Answer> {
        let ttl = secs(ttl);
        let mut response = self.decode()?;
        for record in response.records_mut() {
            record.ttl = ttl;
        }
        Some(response.into_answer(Source::Stale))
    }
}

/// One cached response and when it stops being fresh.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) response: Stored,
    pub(crate) inserted_at: Instant,
    pub(crate) ttl: Duration,
    /// How long the entry stays readable (TTL + serve-stale window, at insert time).
    keep_for: Duration,
    /// The upstream that answered.
    pub(crate) upstream: Option<SocketAddr>,
    /// For a negative entry: the positive one it replaced, kept for serve-stale.
    pub(crate) last_positive: Option<Arc<Entry>>,
    /// After a failed refresh: stale data is served without asking upstream until then.
    retry_after: Mutex<Option<Instant>>,
    /// Bytes this entry keeps alive besides its key: its wire data, the remembered
    /// positive's, and [`ENTRY_OVERHEAD`]. Fixed at insert (a weight must not change).
    charged: u64,
}

impl Entry {
    /// How long ago the entry was stored (zero if the clock went backwards).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.inserted_at)
    }

    /// Whether the entry is fresh or within `serve_stale` past its TTL at `now`.
    pub(crate) fn within_window(&self, now: Instant, serve_stale: Duration) -> bool {
        self.age(now) < self.ttl.saturating_add(serve_stale)
    }

    /// What to serve from this expired entry when upstreams fail: the last positive
    /// response if it is still within the window, else this one if it is.
    pub(crate) fn stale_choice(&self, now: Instant, serve_stale: Duration) -> Option<&Entry> {
        if serve_stale.is_zero() {
            return None;
        }
        let positive = self
            .last_positive
            .as_deref()
            .filter(|positive| positive.within_window(now, serve_stale));
        positive.or_else(|| self.within_window(now, serve_stale).then_some(self))
    }

    /// When the next refresh may be tried after a failed one (`None`: never failed).
    pub(crate) fn retry_after(&self) -> Option<Instant> {
        *self
            .retry_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that a refresh failed: stale data is served without waiting until `at`.
    pub(crate) fn set_retry_after(&self, at: Instant) {
        *self
            .retry_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(at);
    }
}

/// What a cache lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A fresh entry and its age.
    Fresh(Arc<Entry>, Duration),
    /// An entry past its TTL; it may hold something to serve stale.
    Expired(Arc<Entry>),
    /// Nothing stored.
    Absent,
}

/// Bytes an entry costs besides its wire data and key bytes: the [`Entry`] and its
/// `Arc` counters, the store's slot (key, pointer, state, index) and the bookkeeping
/// of its heap blocks, rounded up. Measured typical answers (one to four A records)
/// then weigh about 400 bytes in all.
const ENTRY_OVERHEAD: u64 =
    (size_of::<Entry>() + 2 * size_of::<usize>() + size_of::<Key>() + size_of::<Arc<Entry>>() + 64)
        as u64;

/// The largest DNS message (a TCP frame's length is 16 bits).
const MAX_MESSAGE: u64 = 65_535;

/// The heaviest possible entry: a negative one remembering a positive one, both as
/// large as a message can be, under the longest key.
const MAX_ENTRY_WEIGHT: u64 = ENTRY_OVERHEAD + 2 * MAX_MESSAGE + 262;

/// Weighs an entry by the bytes it holds, and at least `floor`.
///
/// With `floor` = `cache_max_bytes / (cache_size + 1)` one store carries both bounds:
/// the weights add up to at most `cache_max_bytes`, and since none is below the
/// floor, at most about `cache_size` entries fit. Typical answers weigh less than
/// the default floor (838 bytes), so the entry count is what bounds them; large
/// answers count by their size.
#[derive(Debug, Clone, Copy)]
struct ByBytes {
    floor: u64,
}

impl quick_cache::Weighter<Key, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &Key, entry: &Arc<Entry>) -> u64 {
        (key.bytes.len() as u64 + entry.charged).max(self.floor)
    }
}

/// Counts capacity evictions (`forward.cache_evictions_total`).
#[derive(Debug, Clone, Copy)]
struct CountEvictions;

impl quick_cache::Lifecycle<Key, Arc<Entry>> for CountEvictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut Self::RequestState, _key: Key, _entry: Arc<Entry>) {
        crate::metrics::cache_eviction();
    }
}

/// The store: bounded by weight ([`ByBytes`]); an entry older than its `keep_for` is
/// treated as absent when read and replaced or evicted in time. quick_cache rather
/// than moka: it costs tens of bytes per entry where moka's bookkeeping took about
/// 220 (benches/README.md), and freshness lives in our entries anyway.
type Store = quick_cache::sync::Cache<
    Key,
    Arc<Entry>,
    ByBytes,
    quick_cache::DefaultHashBuilder,
    CountEvictions,
>;

/// Builds the store for `max_bytes` and about `max_entries` entries.
///
/// quick_cache splits the weight into shards and refuses an entry heavier than
/// 97 % of its shard, so the shards are made few enough for each to hold four of
/// the heaviest entries (64 KiB answers stay cacheable in a 1 MiB cache), and at
/// most four per core (quick_cache's own default).
fn store(max_bytes: u64, max_entries: u64) -> Store {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let fit = usize::try_from(max_bytes / (4 * MAX_ENTRY_WEIGHT)).unwrap_or(usize::MAX);
    let shards = fit.clamp(1, cores.saturating_mul(4));
    // A power of two (quick_cache rounds up, which would make shards smaller).
    let shards = 1_usize << shards.ilog2();
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(usize::try_from(max_entries).unwrap_or(usize::MAX))
        .weight_capacity(max_bytes)
        .shards(shards)
        .build()
        .expect("every option is set");
    Store::with_options(
        options,
        ByBytes {
            floor: (max_bytes / max_entries.saturating_add(1)).max(1),
        },
        quick_cache::DefaultHashBuilder::default(),
        CountEvictions,
    )
}

/// What [`ResponseCache::insert`] stores besides the response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InsertOptions {
    /// Freshness lifetime (may be zero: stored for serve-stale only).
    pub(crate) ttl: Duration,
    /// The serve-stale window in force.
    pub(crate) serve_stale: Duration,
    /// The upstream that answered.
    pub(crate) upstream: Option<SocketAddr>,
}

/// Bounded response cache.
#[derive(Clone)]
pub(crate) struct ResponseCache {
    /// `None` when `cache_size` is 0 (caching off).
    entries: Option<Arc<Store>>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.entry_count())
            .finish()
    }
}

impl ResponseCache {
    /// Builds a cache bounded by `config.cache_max_bytes` and by about
    /// `config.cache_size` entries.
    pub(crate) fn new(config: &Config) -> Self {
        let entries = (config.cache_size > 0 && config.cache_max_bytes > 0)
            .then(|| Arc::new(store(config.cache_max_bytes, config.cache_size)));
        Self { entries }
    }

    /// Looks `key` up and classifies the entry by its age at `now`.
    pub(crate) fn lookup(&self, key: &Key, now: Instant) -> Lookup {
        match self.entries.as_ref().and_then(|entries| entries.get(key)) {
            None => Lookup::Absent,
            // Past TTL and serve-stale window: as good as gone.
            Some(entry) if entry.age(now) >= entry.keep_for => Lookup::Absent,
            Some(entry) => {
                let age = entry.age(now);
                if age >= entry.ttl {
                    Lookup::Expired(entry)
                } else {
                    Lookup::Fresh(entry, age)
                }
            }
        }
    }

    /// Encodes `response`, then [`insert_stored`](Self::insert_stored) (tests).
    #[cfg(test)]
    pub(crate) fn insert(
        &self,
        key: Key,
        response: &Response,
        options: InsertOptions,
        now: Instant,
    ) {
        if self.entries.is_none() {
            return;
        }
        let Some(response) = Stored::encode(response) else {
            tracing::debug!(name = %key.name(), "Response not cached: cannot encode it");
            return;
        };
        self.insert_stored(key, response, options, now);
    }

    /// Stores a response already in compact form; a negative one keeps the positive
    /// entry it replaces (or the one that entry kept) while that is still servable stale.
    pub(crate) fn insert_stored(
        &self,
        key: Key,
        response: Stored,
        options: InsertOptions,
        now: Instant,
    ) {
        let Some(entries) = &self.entries else {
            return;
        };
        let last_positive = if response.is_negative() && !options.serve_stale.is_zero() {
            entries.get(&key).and_then(|previous| {
                if previous.age(now) >= previous.keep_for {
                    return None;
                }
                if previous.response.is_negative() {
                    previous.last_positive.clone()
                } else {
                    Some(previous)
                }
            })
        } else {
            None
        };
        let last_positive =
            last_positive.filter(|positive| positive.within_window(now, options.serve_stale));
        let mut keep_for = options.ttl.saturating_add(options.serve_stale);
        if let Some(positive) = &last_positive {
            let positive_end = positive
                .ttl
                .saturating_add(options.serve_stale)
                .saturating_sub(positive.age(now));
            keep_for = keep_for.max(positive_end);
        }
        let charged = ENTRY_OVERHEAD
            + response.wire.len() as u64
            + last_positive
                .as_ref()
                .map_or(0, |positive| positive.response.wire.len() as u64);
        entries.insert(
            key,
            Arc::new(Entry {
                response,
                inserted_at: now,
                ttl: options.ttl,
                keep_for: keep_for.max(Duration::from_secs(1)),
                upstream: options.upstream,
                last_positive,
                retry_after: Mutex::new(None),
                charged,
            }),
        );
        crate::metrics::cache_entries(entries.len() as u64);
        crate::metrics::cache_bytes(entries.weight());
    }

    /// Approximate number of stored entries (fresh or expired).
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries
            .as_ref()
            .map_or(0, |entries| entries.len() as u64)
    }

    /// The store's weighted size: bytes charged to the stored entries.
    pub(crate) fn charged_bytes(&self) -> u64 {
        self.entries.as_ref().map_or(0, |entries| entries.weight())
    }
}

/// Applies the TTL policy to a fresh upstream response.
///
/// Returns the response with record TTLs adjusted as clients should see them, and how
/// long it is fresh (`None`: never cache; `Some(ZERO)`: not fresh at all, cached only
/// for serve-stale).
pub(crate) fn apply_ttl_policy(
    mut response: Response,
    config: &Config,
) -> (Response, Option<Duration>) {
    let min_ttl = secs(config.min_ttl);
    let max_ttl = secs(config.max_ttl);
    let negative = response.is_negative();

    if !negative {
        if response.response_code != ResponseCode::NoError {
            // SERVFAIL, REFUSED, ... are never cached.
            return (response, None);
        }
        for record in &mut response.answers {
            record.ttl = record.ttl.clamp(min_ttl, max_ttl);
        }
        for record in response
            .authorities
            .iter_mut()
            .chain(response.additionals.iter_mut())
        {
            record.ttl = record.ttl.min(max_ttl);
        }
        let ttl = response
            .answers
            .iter()
            .map(|record| record.ttl)
            .min()
            .unwrap_or(0);
        return (response, cacheable(ttl));
    }

    // RFC 2308 §5: the negative TTL is min(SOA RR TTL, SOA MINIMUM); no SOA, no caching.
    let soa_ttl = response
        .authorities
        .iter()
        .find_map(|record| match &record.data {
            RData::SOA(soa) => Some(record.ttl.min(soa.minimum)),
            _ => None,
        });
    let Some(soa_ttl) = soa_ttl else {
        return (response, None);
    };
    let ttl = soa_ttl.min(secs(config.negative_max_ttl));
    // RFC 2308 §3: the SOA handed out carries the negative TTL; nothing in the reply outlives it.
    for record in response
        .answers
        .iter_mut()
        .chain(response.authorities.iter_mut())
        .chain(response.additionals.iter_mut())
    {
        record.ttl = if record.record_type() == RecordType::SOA {
            ttl
        } else {
            record.ttl.min(ttl)
        };
    }
    (response, cacheable(ttl))
}

fn cacheable(ttl_secs: u32) -> Option<Duration> {
    Some(Duration::from_secs(u64::from(ttl_secs)))
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// Shuffles the records of every multi-record RRset in place, keeping the positions
/// each RRset occupies (so a CNAME chain keeps its order).
pub(crate) fn shuffle_rrsets(records: &mut [Record]) {
    if records.len() < 2 {
        return;
    }
    let mut rng = rand::rng();
    let mut done = vec![false; records.len()];
    for first in 0..records.len() {
        if done[first] {
            continue;
        }
        let positions: Vec<usize> = (first..records.len())
            .filter(|&index| {
                !done[index]
                    && records[index].record_type() == records[first].record_type()
                    && records[index].dns_class == records[first].dns_class
                    && records[index].name == records[first].name
            })
            .collect();
        for &index in &positions {
            done[index] = true;
        }
        if positions.len() < 2 {
            continue;
        }
        let mut set: Vec<Record> = positions
            .iter()
            .map(|&index| records[index].clone())
            .collect();
        set.shuffle(&mut rng);
        for (index, record) in positions.into_iter().zip(set) {
            records[index] = record;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;
    use std::str::FromStr;

    use hickory_proto::rr::rdata::{A, CNAME, SOA, TXT};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_str(text).expect("test name")
    }

    fn a(owner: &str, ttl: u32, last: u8) -> Record {
        Record::from_rdata(
            name(owner),
            ttl,
            RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
        )
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let data = SOA::new(
            name("ns.example."),
            name("host.example."),
            1,
            60,
            60,
            600,
            minimum,
        );
        Record::from_rdata(name("example."), ttl, RData::SOA(data))
    }

    fn response(code: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Response {
        Response {
            response_code: code,
            answers,
            authorities,
            additionals: Vec::new(),
            authentic_data: false,
        }
    }

    fn config() -> Config {
        Config {
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(3_600),
            negative_max_ttl: Duration::from_secs(900),
            ..Config::default()
        }
    }

    #[test]
    fn positive_ttl_is_the_smallest_answer_ttl_clamped() {
        let reply = response(
            ResponseCode::NoError,
            vec![a("www.example.", 300, 1), a("www.example.", 120, 2)],
            vec![],
        );
        let (_, ttl) = apply_ttl_policy(reply.clone(), &config());
        assert_eq!(ttl, Some(Duration::from_secs(120)));

        let floored = Config {
            min_ttl: Duration::from_secs(200),
            ..config()
        };
        let (adjusted, ttl) = apply_ttl_policy(reply.clone(), &floored);
        assert_eq!(ttl, Some(Duration::from_secs(200)));
        assert!(adjusted.answers.iter().all(|record| record.ttl >= 200));

        let capped = Config {
            max_ttl: Duration::from_secs(60),
            ..config()
        };
        let (adjusted, ttl) = apply_ttl_policy(reply, &capped);
        assert_eq!(ttl, Some(Duration::from_secs(60)));
        assert!(adjusted.answers.iter().all(|record| record.ttl == 60));
    }

    #[test]
    fn zero_ttl_is_cached_only_with_a_min_ttl() {
        let reply = response(ResponseCode::NoError, vec![a("www.example.", 0, 1)], vec![]);
        // fresh for no time at all: stored only when serve-stale is on
        assert_eq!(
            apply_ttl_policy(reply.clone(), &config()).1,
            Some(Duration::ZERO)
        );
        let floored = Config {
            min_ttl: Duration::from_secs(5),
            ..config()
        };
        let (adjusted, ttl) = apply_ttl_policy(reply, &floored);
        assert_eq!(ttl, Some(Duration::from_secs(5)));
        assert_eq!(adjusted.answers[0].ttl, 5);
    }

    #[test]
    fn negative_ttl_follows_rfc2308() {
        // min(SOA TTL, MINIMUM)
        let nxdomain = response(ResponseCode::NXDomain, vec![], vec![soa(600, 30)]);
        let (adjusted, ttl) = apply_ttl_policy(nxdomain, &config());
        assert_eq!(ttl, Some(Duration::from_secs(30)));
        assert_eq!(adjusted.authorities[0].ttl, 30);

        let nodata = response(ResponseCode::NoError, vec![], vec![soa(45, 300)]);
        assert_eq!(
            apply_ttl_policy(nodata, &config()).1,
            Some(Duration::from_secs(45))
        );

        // capped at negative_max_ttl
        let long = response(ResponseCode::NXDomain, vec![], vec![soa(86_400, 86_400)]);
        assert_eq!(
            apply_ttl_policy(long, &config()).1,
            Some(Duration::from_secs(900))
        );

        // no SOA, no caching; SOA with MINIMUM 0 (Consul's default): never fresh
        let bare = response(ResponseCode::NXDomain, vec![], vec![]);
        assert_eq!(apply_ttl_policy(bare, &config()).1, None);
        let consul = response(ResponseCode::NXDomain, vec![], vec![soa(0, 0)]);
        assert_eq!(apply_ttl_policy(consul, &config()).1, Some(Duration::ZERO));

        let servfail = response(ResponseCode::ServFail, vec![], vec![soa(600, 600)]);
        assert_eq!(apply_ttl_policy(servfail, &config()).1, None);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_count_down_and_expire_on_the_tokio_clock() {
        let cache = ResponseCache::new(&config());
        let query = Query::query(name("WWW.Example."), RecordType::A);
        let key = Key::new(&query, false);
        let reply = response(
            ResponseCode::NoError,
            vec![a("www.example.", 10, 1)],
            vec![],
        );
        cache.insert(key.clone(), &reply, options(10), Instant::now());

        // lookups ignore the case of the name
        let lower = Key::new(&Query::query(name("www.example."), RecordType::A), false);
        tokio::time::advance(Duration::from_millis(3_500)).await;
        let Lookup::Fresh(entry, age) = cache.lookup(&lower, Instant::now()) else {
            panic!("entry must be fresh after 3.5 s");
        };
        let answer = entry
            .response
            .to_answer(age, Source::Cache)
            .expect("decodes");
        assert_eq!(answer.answers[0].ttl, 7);

        // a different DO bit is a different key
        assert!(matches!(
            cache.lookup(&Key::new(&query, true), Instant::now()),
            Lookup::Absent
        ));

        tokio::time::advance(Duration::from_millis(6_500)).await;
        assert!(matches!(
            cache.lookup(&key, Instant::now()),
            Lookup::Expired(_)
        ));
    }

    fn options(ttl_secs: u64) -> InsertOptions {
        InsertOptions {
            ttl: Duration::from_secs(ttl_secs),
            serve_stale: Duration::from_secs(3_600),
            upstream: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stale_window_and_last_positive() {
        let cache = ResponseCache::new(&config());
        let key = Key::new(&Query::query(name("www.example."), RecordType::A), false);
        let positive = response(
            ResponseCode::NoError,
            vec![a("www.example.", 10, 1)],
            vec![],
        );
        let negative = response(ResponseCode::NXDomain, vec![], vec![soa(5, 5)]);
        cache.insert(key.clone(), &positive, options(10), Instant::now());
        tokio::time::advance(Duration::from_secs(11)).await;
        cache.insert(key.clone(), &negative, options(5), Instant::now());
        tokio::time::advance(Duration::from_secs(6)).await;

        let Lookup::Expired(entry) = cache.lookup(&key, Instant::now()) else {
            panic!("negative entry must be expired");
        };
        assert!(entry.response.is_negative());
        let chosen = entry
            .stale_choice(Instant::now(), Duration::from_secs(3_600))
            .expect("servable");
        assert_eq!(
            chosen.response.response_code,
            ResponseCode::NoError,
            "the last positive wins over a stale NXDOMAIN"
        );
        // a second negative keeps the remembered positive
        cache.insert(key.clone(), &negative, options(5), Instant::now());
        tokio::time::advance(Duration::from_secs(6)).await;
        let Lookup::Expired(entry) = cache.lookup(&key, Instant::now()) else {
            panic!("expired");
        };
        assert!(entry.last_positive.is_some());
        // serve-stale off: nothing to serve
        assert!(entry.stale_choice(Instant::now(), Duration::ZERO).is_none());
        // past the positive's window: the stale negative is all there is
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert!(
            entry
                .stale_choice(Instant::now(), Duration::from_secs(3_600))
                .is_none(),
            "both past the window"
        );
        // a fresh positive forgets it all
        let positive = response(
            ResponseCode::NoError,
            vec![a("www.example.", 10, 2)],
            vec![],
        );
        cache.insert(key.clone(), &positive, options(10), Instant::now());
        let Lookup::Fresh(entry, _) = cache.lookup(&key, Instant::now()) else {
            panic!("fresh");
        };
        assert!(entry.last_positive.is_none());
    }

    #[test]
    fn entries_are_kept_for_ttl_plus_the_stale_window_and_bounded_in_number() {
        // A zero-TTL entry with a stale window stays readable (expired, for serve-stale);
        // one without a window (kept for the 1 s minimum) is gone after it.
        let cache = ResponseCache::new(&config());
        let kept = Key::new(&Query::query(name("kept.example."), RecordType::A), false);
        let gone = Key::new(&Query::query(name("gone.example."), RecordType::A), false);
        let reply = response(ResponseCode::NoError, vec![a("x.example.", 0, 1)], vec![]);
        let now = Instant::now();
        cache.insert(kept.clone(), &reply, options(0), now);
        let no_window = InsertOptions {
            ttl: Duration::ZERO,
            serve_stale: Duration::ZERO,
            upstream: None,
        };
        cache.insert(gone.clone(), &reply, no_window, now);
        let later = now + Duration::from_millis(1_100);
        assert!(matches!(cache.lookup(&kept, later), Lookup::Expired(_)));
        assert!(matches!(cache.lookup(&gone, later), Lookup::Absent));

        let small = ResponseCache::new(&Config {
            cache_size: 100,
            ..config()
        });
        for n in 0..1_000 {
            let key = Key::new(
                &Query::query(name(&format!("n{n}.example.")), RecordType::A),
                false,
            );
            small.insert(key, &reply, options(60), now);
        }
        assert!(small.entry_count() <= 100, "{}", small.entry_count());
        assert!(small.entry_count() >= 50, "{}", small.entry_count());
    }

    #[test]
    fn entries_weigh_what_they_hold_and_the_store_stays_under_its_bytes() {
        let now = Instant::now();
        let key = |n: usize| {
            Key::new(
                &Query::query(name(&format!("n{n}.example.")), RecordType::A),
                false,
            )
        };
        // A typical answer is charged a few hundred bytes (the default floor is 838).
        let cache = ResponseCache::new(&config());
        let typical = response(
            ResponseCode::NoError,
            vec![a("n0.example.", 60, 1), a("n0.example.", 60, 2)],
            vec![],
        );
        cache.insert(key(0), &typical, options(60), now);
        let Lookup::Fresh(entry, _) = cache.lookup(&key(0), now) else {
            panic!("fresh");
        };
        assert!((150..600).contains(&entry.charged), "{}", entry.charged);
        assert_eq!(cache.charged_bytes(), 838, "the floor: 8 MiB / 10,001");

        // Answers of 63 KiB (240 TXT records) in a 1 MiB cache: counted by size.
        let small = ResponseCache::new(&Config {
            cache_max_bytes: 1 << 20,
            ..config()
        });
        let records: Vec<Record> = (0..240)
            .map(|n| {
                let text = format!("{n:03}{}", "x".repeat(248));
                Record::from_rdata(name("big.example."), 60, RData::TXT(TXT::new(vec![text])))
            })
            .collect();
        let large = response(ResponseCode::NoError, records, vec![]);
        for n in 0..100 {
            small.insert(key(n), &large, options(60), now);
            assert!(
                small.charged_bytes() <= 1 << 20,
                "{}",
                small.charged_bytes()
            );
        }
        let Lookup::Fresh(entry, _) = small.lookup(&key(99), now) else {
            panic!("the last one is cached");
        };
        assert!(entry.charged > 50_000, "{}", entry.charged);
        assert!(small.entry_count() <= 17, "{}", small.entry_count());
        assert!(small.entry_count() >= 8, "{}", small.entry_count());

        // A negative entry remembering a positive one is charged for both.
        let negative = response(ResponseCode::NXDomain, vec![], vec![soa(5, 5)]);
        small.insert(key(99), &negative, options(5), now);
        let Lookup::Fresh(entry, _) = small.lookup(&key(99), now) else {
            panic!("fresh negative");
        };
        assert!(entry.last_positive.is_some());
        assert!(entry.charged > 50_000, "{}", entry.charged);
    }

    #[test]
    fn keys_ignore_case_and_the_final_dot_and_keep_the_do_bit() {
        let upper = Key::new(&Query::query(name("WWW.Example.COM"), RecordType::A), false);
        let lower = Key::new(
            &Query::query(name("www.example.com."), RecordType::A),
            false,
        );
        assert_eq!(upper, lower);
        assert_eq!(upper.name(), name("www.example.com."));
        assert!(!upper.dnssec_ok());
        let signed = Key::new(&Query::query(name("www.example.com."), RecordType::A), true);
        assert_ne!(signed, lower);
        assert!(signed.dnssec_ok());
        let aaaa = Key::new(
            &Query::query(name("www.example.com."), RecordType::AAAA),
            false,
        );
        assert_ne!(aaaa, lower);
        // "a.bc" and "ab.c" have the same letters: the length bytes keep them apart.
        let one = Key::new(&Query::query(name("a.bc."), RecordType::A), false);
        let two = Key::new(&Query::query(name("ab.c."), RecordType::A), false);
        assert_ne!(one, two);
    }

    #[test]
    fn stored_responses_decode_to_the_same_records() {
        let mut reply = response(
            ResponseCode::NoError,
            vec![
                Record::from_rdata(
                    name("WWW.Example."),
                    300,
                    RData::CNAME(CNAME(name("web.example."))),
                ),
                a("web.example.", 60, 1),
                a("web.example.", 60, 2),
            ],
            vec![soa(600, 30)],
        );
        reply.additionals = vec![a("ns.example.", 120, 53)];
        reply.authentic_data = true;
        let stored = Stored::encode(&reply).expect("encodes");
        assert!(stored.wire.len() < 200, "{} bytes", stored.wire.len());
        let decoded = stored.decode().expect("decodes");
        assert_eq!(decoded.answers, reply.answers);
        assert_eq!(decoded.authorities, reply.authorities);
        assert_eq!(decoded.additionals, reply.additionals);
        assert!(decoded.authentic_data);
        assert!(!stored.is_negative());

        let answer = stored
            .to_answer(Duration::from_secs(10), Source::Cache)
            .expect("decodes");
        assert_eq!(answer.answers[0], reply.answers[0], "the CNAME stays first");
        assert_eq!(answer.answers[0].ttl, 290);
        assert_eq!(answer.authorities[0].ttl, 590);
        let stale = stored
            .to_stale_answer(Duration::from_secs(30))
            .expect("decodes");
        assert!(
            stale
                .answers
                .iter()
                .chain(&stale.authorities)
                .chain(&stale.additionals)
                .all(|record| record.ttl == 30)
        );

        let nxdomain = response(ResponseCode::NXDomain, vec![], vec![soa(60, 60)]);
        let stored = Stored::encode(&nxdomain).expect("encodes");
        assert!(stored.is_negative());
        assert_eq!(
            stored.decode().expect("decodes").authorities,
            nxdomain.authorities
        );
    }

    #[test]
    fn countdown_never_goes_below_zero() {
        let reply = response(ResponseCode::NoError, vec![a("www.example.", 2, 1)], vec![]);
        let answer = reply.to_answer(Duration::from_secs(30), Source::Cache);
        assert_eq!(answer.answers[0].ttl, 0);
    }

    #[test]
    fn shuffle_permutes_within_rrsets_and_keeps_chains_in_place() {
        let records = vec![
            Record::from_rdata(
                name("www.example."),
                60,
                RData::CNAME(CNAME(name("web.example."))),
            ),
            a("web.example.", 60, 1),
            a("web.example.", 60, 2),
            a("web.example.", 60, 3),
            a("web.example.", 60, 4),
        ];
        let mut orders = HashSet::new();
        for _ in 0..50 {
            let mut shuffled = records.clone();
            shuffle_rrsets(&mut shuffled);
            assert_eq!(shuffled[0], records[0], "the CNAME stays first");
            let set: HashSet<String> = shuffled[1..].iter().map(|r| r.data.to_string()).collect();
            assert_eq!(set.len(), 4, "no record lost or duplicated");
            orders.insert(
                shuffled
                    .iter()
                    .map(|r| r.data.to_string())
                    .collect::<Vec<_>>(),
            );
        }
        assert!(
            orders.len() > 1,
            "50 shuffles of 4 records produced one order"
        );
    }
}
