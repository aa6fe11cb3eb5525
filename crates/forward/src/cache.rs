//! The response cache: keys, TTL policy (clamps, RFC 2308 negative caching) and the
//! rendering of a cached response into an [`Answer`] with counted-down TTLs.
//!
//! Freshness lives in our [`Entry`] (`inserted_at` on the tokio clock) because moka's
//! clock cannot be paused; moka's own `time_to_live` is only a memory backstop.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::{Answer, Config, Source};

/// Cache key: the question (name lower-cased) and whether DNSSEC records were asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    name: Name,
    record_type: RecordType,
    dns_class: DNSClass,
    dnssec_ok: bool,
}

impl Key {
    /// Builds the key of one question.
    pub(crate) fn new(query: &Query, dnssec_ok: bool) -> Self {
        let mut name = query.name().to_lowercase();
        // The wire form is always absolute; "example.com" and "example.com." are one key.
        name.set_fqdn(true);
        Self {
            name,
            record_type: query.query_type(),
            dns_class: query.query_class(),
            dnssec_ok,
        }
    }

    /// Whether the question asked for DNSSEC records (DO bit).
    pub(crate) fn dnssec_ok(&self) -> bool {
        self.dnssec_ok
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
    /// Renders the response for a client: TTLs counted down by `age`, RRsets shuffled.
    pub(crate) fn to_answer(&self, age: Duration, source: Source) -> Answer {
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        let count_down = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|record| {
                    let mut record = record.clone();
                    record.decrement_ttl(elapsed);
                    record
                })
                .collect()
        };
        let mut answers = count_down(&self.answers);
        shuffle_rrsets(&mut answers);
        Answer {
            response_code: self.response_code,
            answers,
            authorities: count_down(&self.authorities),
            additionals: count_down(&self.additionals),
            authentic_data: self.authentic_data,
            source,
        }
    }
}

/// One cached response and when it stops being fresh.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) response: Response,
    pub(crate) inserted_at: Instant,
    pub(crate) ttl: Duration,
}

impl Entry {
    /// How long ago the entry was stored (zero if the clock went backwards).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.inserted_at)
    }
}

/// What a cache lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A fresh entry and its age.
    Fresh(Arc<Entry>, Duration),
    /// An entry past its TTL (kept for a later serve-stale; a miss for now).
    Expired,
    /// Nothing stored.
    Absent,
}

/// Bounded response cache on moka.
#[derive(Debug, Clone)]
pub(crate) struct ResponseCache {
    /// `None` when `cache_size` is 0 (caching off).
    entries: Option<moka::sync::Cache<Key, Arc<Entry>>>,
}

impl ResponseCache {
    /// Builds a cache bounded by `config.cache_size` entries.
    pub(crate) fn new(config: &Config) -> Self {
        let backstop = config
            .max_ttl
            .max(config.negative_max_ttl)
            .max(Duration::from_secs(1));
        let entries = (config.cache_size > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.cache_size)
                .time_to_live(backstop)
                .eviction_listener(|_, _, cause| crate::metrics::cache_eviction(cause))
                .build()
        });
        Self { entries }
    }

    /// Looks `key` up and classifies the entry by its age at `now`.
    pub(crate) fn lookup(&self, key: &Key, now: Instant) -> Lookup {
        match self.entries.as_ref().and_then(|entries| entries.get(key)) {
            None => Lookup::Absent,
            Some(entry) => {
                let age = entry.age(now);
                if age >= entry.ttl {
                    Lookup::Expired
                } else {
                    Lookup::Fresh(entry, age)
                }
            }
        }
    }

    /// Stores a response for `ttl`.
    pub(crate) fn insert(&self, key: Key, response: Response, ttl: Duration, now: Instant) {
        if let Some(entries) = &self.entries {
            entries.insert(
                key,
                Arc::new(Entry {
                    response,
                    inserted_at: now,
                    ttl,
                }),
            );
            crate::metrics::cache_entries(entries.entry_count());
        }
    }

    /// Approximate number of stored entries (fresh or expired).
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries
            .as_ref()
            .map_or(0, moka::sync::Cache::entry_count)
    }
}

/// Applies the TTL policy to a fresh upstream response.
///
/// Returns the response with record TTLs adjusted as clients should see them, and how
/// long it may be cached (`None`: do not cache).
pub(crate) fn apply_ttl_policy(
    mut response: Response,
    config: &Config,
) -> (Response, Option<Duration>) {
    let min_ttl = secs(config.min_ttl);
    let max_ttl = secs(config.max_ttl);
    let negative = response.response_code == ResponseCode::NXDomain
        || (response.response_code == ResponseCode::NoError && response.answers.is_empty());

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
    (ttl_secs > 0).then(|| Duration::from_secs(u64::from(ttl_secs)))
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

    use hickory_proto::rr::rdata::{A, CNAME, SOA};

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
        assert_eq!(apply_ttl_policy(reply.clone(), &config()).1, None);
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

        // no SOA, no caching; SOA with MINIMUM 0 (Consul's default), no caching
        let bare = response(ResponseCode::NXDomain, vec![], vec![]);
        assert_eq!(apply_ttl_policy(bare, &config()).1, None);
        let consul = response(ResponseCode::NXDomain, vec![], vec![soa(0, 0)]);
        assert_eq!(apply_ttl_policy(consul, &config()).1, None);

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
        cache.insert(key.clone(), reply, Duration::from_secs(10), Instant::now());

        // lookups ignore the case of the name
        let lower = Key::new(&Query::query(name("www.example."), RecordType::A), false);
        tokio::time::advance(Duration::from_millis(3_500)).await;
        let Lookup::Fresh(entry, age) = cache.lookup(&lower, Instant::now()) else {
            panic!("entry must be fresh after 3.5 s");
        };
        let answer = entry.response.to_answer(age, Source::Cache);
        assert_eq!(answer.answers[0].ttl, 7);

        // a different DO bit is a different key
        assert!(matches!(
            cache.lookup(&Key::new(&query, true), Instant::now()),
            Lookup::Absent
        ));

        tokio::time::advance(Duration::from_millis(6_500)).await;
        assert!(matches!(
            cache.lookup(&key, Instant::now()),
            Lookup::Expired
        ));
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
