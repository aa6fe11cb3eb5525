//! The UDP fast path: a short-lived cache of encoded responses.
//!
//! After the general path answers a plain UDP query with a cacheable reply
//! (NOERROR/NXDOMAIN from fresh Consul data, the forwarder or the local hosts
//! files; no TC, no EDNS options, at most 512 bytes, every TTL above 0), the
//! encoded response is kept (how long: [`FastCache::insert`]) under the
//! question (lower-cased name, type, class), the RD and CD bits, and the client's EDNS presence,
//! payload size and DO bit. A later identical question is answered by copying
//! those bytes, patching the ID and the question name's letter case and
//! shuffling the Answer records: no task, no full decode, no allocation.
//!
//! Only requests of the plainest form are looked up (parsed by hand, strictly
//! bounds-checked): one question, opcode QUERY, no compression in the name,
//! no Answer/Authority records, and at most an OPT of version 0 without options.
//! Everything else takes the general path.
//!
//! A Consul answer is re-checked on every hit against the catalog lookup it
//! was built from ([`Basis`], through the catalog's cheap witness); a
//! forwarded answer's TTLs are counted down in each copy, and the copy is
//! dropped at 90 % of its TTL so that the forwarder sees the name again in
//! time to prefetch it; local hosts answers are kept for [`MAX_AGE`].

use std::collections::HashMap;
use std::hash::BuildHasher as _;

// foldhash, not SipHash: hashing the name was a visible share of a hit's CPU;
// foldhash keeps a random per-map seed.
use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use tokio::time::Instant;

use crate::answer::Basis;

/// How long a Consul answer is kept while its catalog data holds (it is
/// re-checked on every hit; this only bounds the memory of names gone quiet).
pub(crate) const BASIS_MAX_AGE: Duration = Duration::from_secs(60);
/// The longest a forwarded answer is served before the forwarder is asked
/// again (which also lets it prefetch names near expiry).
pub(crate) const COUNTDOWN_MAX_AGE: Duration = Duration::from_secs(60);
/// How long any other encoded response (local hosts files) is served.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);
/// Largest response kept (valid for every client buffer size).
pub(crate) const MAX_RESPONSE: usize = 512;
/// Hits are added to the counters in batches of this many (a metrics
/// exporter such as statsd formats and queues every increment), and one
/// duration sample is recorded per batch; [`FastCache::sweep`] adds the rest.
const FLUSH_EVERY: u64 = 64;
/// Entries kept at most, over all shards.
const DEFAULT_CAPACITY: usize = 8192;
/// Independent locks, to keep the sockets' loops from contending.
const SHARDS: usize = 16;
/// Header length.
const HEADER: usize = 12;
/// Longest name on the wire.
const MAX_NAME: usize = 255;
/// Key: name, type, class, flags, payload.
const MAX_KEY: usize = MAX_NAME + 7;
/// Wire type of OPT.
const TYPE_OPT: u16 = 41;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
/// A pointer to the question name (offset 12).
const QUESTION_POINTER: [u8; 2] = [0xc0, 0x0c];

/// The lookup key of a plain query, built without allocating.
pub(crate) struct Key {
    bytes: [u8; MAX_KEY],
    len: usize,
    /// Wire length of the question name (including the root label).
    pub(crate) name_len: usize,
}

impl Key {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn u16_at(packet: &[u8], at: usize) -> Option<u16> {
    let bytes = packet.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Writes REFUSED for `query` (a request header at least) into `out` and
/// returns its length: the header with QR set, the opcode, RD and CD echoed,
/// and the question when there is exactly one written without compression
/// (else none). Never longer than the query, so it amplifies nothing; no
/// allocation, so a refused flood costs the UDP thread a copy per datagram.
pub(crate) fn refused(query: &[u8], out: &mut [u8; MAX_RESPONSE]) -> usize {
    let Some(header) = query.get(..HEADER) else {
        return 0;
    };
    out[..HEADER].copy_from_slice(header);
    // QR, opcode kept, AA and TC clear, RD kept; RA, Z, AD clear, CD kept, REFUSED.
    out[2] = 0x80 | (header[2] & 0x79);
    out[3] = (header[3] & 0x10) | 5;
    out[4..HEADER].fill(0);
    let question = (u16_at(header, 4) == Some(1))
        .then(|| question_end(query))
        .flatten();
    let Some(end) = question else {
        return HEADER;
    };
    out[5] = 1;
    out[HEADER..end].copy_from_slice(&query[HEADER..end]);
    end
}

/// The end of the first question (an uncompressed name of at most
/// [`MAX_NAME`] bytes, type and class); `None` when it is not one.
fn question_end(packet: &[u8]) -> Option<usize> {
    let mut at = HEADER;
    loop {
        let label = usize::from(*packet.get(at)?);
        if label > 63 {
            return None;
        }
        at += 1 + label;
        if at - HEADER > MAX_NAME {
            return None;
        }
        if label == 0 {
            break;
        }
    }
    let end = at + 4;
    (end <= packet.len()).then_some(end)
}

/// Parses a plain query; `None` when it must take the general path.
pub(crate) fn parse_query(packet: &[u8]) -> Option<Key> {
    let header = packet.get(..HEADER)?;
    // QR=0 and opcode QUERY; RCODE 0.
    if header[2] & 0xf8 != 0 || header[3] & 0x0f != 0 {
        return None;
    }
    let counts = [
        u16_at(header, 4)?,
        u16_at(header, 6)?,
        u16_at(header, 8)?,
        u16_at(header, 10)?,
    ];
    if counts[0] != 1 || counts[1] != 0 || counts[2] != 0 || counts[3] > 1 {
        return None;
    }
    let mut key = Key {
        bytes: [0; MAX_KEY],
        len: 0,
        name_len: 0,
    };
    let mut at = HEADER;
    loop {
        let label = usize::from(*packet.get(at)?);
        if label == 0 {
            key.bytes[key.len] = 0;
            key.len += 1;
            at += 1;
            break;
        }
        // No compression, no extended label types, at most 63 bytes.
        if label > 63 {
            return None;
        }
        let end = at + 1 + label;
        if end - HEADER >= MAX_NAME {
            return None;
        }
        let bytes = packet.get(at..end)?;
        key.bytes[key.len] = bytes[0];
        for (slot, byte) in key.bytes[key.len + 1..key.len + 1 + label]
            .iter_mut()
            .zip(&bytes[1..])
        {
            *slot = byte.to_ascii_lowercase();
        }
        key.len += 1 + label;
        at = end;
    }
    key.name_len = key.len;
    let fixed = packet.get(at..at + 4)?;
    key.bytes[key.len..key.len + 4].copy_from_slice(fixed);
    key.len += 4;
    at += 4;
    // Flags: RD, CD, EDNS, DO; then the advertised payload.
    let mut flags = (header[2] & 0x01) | (header[3] & 0x10);
    let mut payload = [0u8; 2];
    if counts[3] == 1 {
        // OPT: root owner, type 41, class = payload, TTL = ext-rcode, version,
        // flags; no options (cookies, ECS, … go the general way).
        let opt = packet.get(at..at + 11)?;
        if opt[0] != 0 || u16_at(opt, 1)? != TYPE_OPT || opt[5] != 0 || opt[6] != 0 {
            return None;
        }
        if u16_at(opt, 9)? != 0 {
            return None;
        }
        payload = [opt[3], opt[4]];
        flags |= 0x02;
        if opt[7] & 0x80 != 0 {
            flags |= 0x04;
        }
        at += 11;
    }
    if at != packet.len() {
        return None;
    }
    key.bytes[key.len] = flags;
    key.bytes[key.len + 1..key.len + 3].copy_from_slice(&payload);
    key.len += 3;
    Some(key)
}

/// Metric handles of one cached answer, resolved when it was stored.
pub(crate) struct Meters {
    /// `dns.requests_total` with the answer's proto, zone and type.
    pub(crate) requests: Counter,
    /// `dns.responses_total` with the answer's tags.
    pub(crate) responses: Counter,
    /// `dns.request_duration_seconds` with the answer's proto, zone and type.
    pub(crate) duration: Histogram,
    /// `dns.fast_path_hits_total`.
    pub(crate) hits: Counter,
}

/// The tags of an answer's `dns.responses_total` counter: zone, type, rcode,
/// source (proto is always udp here).
pub(crate) type MeterTags = [&'static str; 4];

/// Where an answer handed to [`FastCache::insert`] came from.
pub(crate) struct Provenance {
    /// Consul answers: the catalog data to re-check on every hit.
    pub(crate) basis: Option<Arc<Basis>>,
    /// Forwarded answers: TTLs count down while cached.
    pub(crate) ttl_counts_down: bool,
    pub(crate) tags: MeterTags,
}

struct Entry {
    response: Box<[u8]>,
    stored: Instant,
    expires: Instant,
    /// Where the TTLs are, when they count down (forwarded answers); empty otherwise.
    ttl_offsets: Box<[u16]>,
    /// Consul answers: re-checked against the catalog on every hit.
    basis: Option<Arc<Basis>>,
    answers: Layout,
    /// Shared by every entry with the same tags (a handle set is several
    /// hundred bytes with the StatsD recorder).
    meters: Arc<Meters>,
    /// Hits not yet added to the counters (see [`FLUSH_EVERY`]).
    pending: AtomicU64,
}

impl Entry {
    /// Adds the pending hits to `dns.requests_total`, `dns.responses_total`
    /// and `dns.fast_path_hits_total`; false when there were none.
    fn flush(&self) -> bool {
        let hits = self.pending.swap(0, Ordering::Relaxed);
        if hits > 0 {
            self.meters.requests.increment(hits);
            self.meters.responses.increment(hits);
            self.meters.hits.increment(hits);
        }
        hits > 0
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Lowers the TTLs copied into `out` by the whole seconds since `entry` was
/// stored (no-op for fixed-TTL entries). Never to 0: entries expire first.
fn count_down(entry: &Entry, now: Instant, out: &mut [u8; MAX_RESPONSE]) {
    if entry.ttl_offsets.is_empty() {
        return;
    }
    let elapsed = now.saturating_duration_since(entry.stored).as_secs();
    let Ok(elapsed) = u32::try_from(elapsed) else {
        return;
    };
    if elapsed == 0 {
        return;
    }
    for &offset in &*entry.ttl_offsets {
        let at = usize::from(offset);
        let Some(field) = out.get_mut(at..at + 4) else {
            continue;
        };
        let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
        field.copy_from_slice(&ttl.saturating_sub(elapsed).max(1).to_be_bytes());
    }
}

/// Where the Answer records are, to shuffle them and patch their owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Offset of the first Answer record.
    first: usize,
    /// Length of each record (all equal when `count` ≥ 2).
    size: usize,
    /// Answer records; 2 or more are shuffled per response.
    count: usize,
    /// The owners are written out as the question name (not a pointer to it),
    /// so they get the client's case too.
    literal_owner: bool,
}

/// Why a response cannot be kept (for tests and traces).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Uncacheable {
    /// Too big, truncated, odd rcode, TTL 0, malformed, or mixed Answer records.
    Shape,
    /// The cache is off (query log) or was cleared since the query started.
    Off,
    /// A forwarded or local name asked for the first time (recently): kept
    /// only when asked again, so a flood of distinct names costs no memory.
    FirstSight,
}

/// Bits of the first-sight filter (16 KiB).
const SEEN_BITS: usize = 131_072;

/// One lock's worth of entries.
type Shard = RwLock<HashMap<Box<[u8]>, Entry, RandomState>>;

/// The wire answer cache shared by every UDP socket of a router.
pub(crate) struct FastCache {
    shards: Box<[Shard]>,
    hasher: RandomState,
    per_shard: usize,
    enabled: AtomicBool,
    generation: AtomicU64,
    meter_sets: Mutex<HashMap<MeterTags, Arc<Meters>>>,
    /// One bit per key hash offered once (see [`Uncacheable::FirstSight`]). A
    /// collision only admits a key early; the bits are cleared when half are set.
    seen: Box<[AtomicU64]>,
    /// Bits set in `seen` since it was last cleared.
    seen_count: AtomicUsize,
    /// Wakes an idle sweeper when an answer is stored.
    stored: tokio::sync::Notify,
}

impl std::fmt::Debug for FastCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastCache")
            .field("enabled", &self.enabled.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl FastCache {
    /// An empty cache (`enabled` false: every lookup misses, nothing is stored).
    pub(crate) fn new(enabled: bool) -> Self {
        Self::with_capacity(enabled, DEFAULT_CAPACITY)
    }

    fn with_capacity(enabled: bool, capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(RandomState::default())))
                .collect(),
            hasher: RandomState::default(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            enabled: AtomicBool::new(enabled),
            generation: AtomicU64::new(0),
            meter_sets: Mutex::new(HashMap::new()),
            seen: (0..SEEN_BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            seen_count: AtomicUsize::new(0),
            stored: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Drops every entry and turns the cache on or off (settings changed).
    pub(crate) fn reset(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in &*self.shards {
            shard
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    /// Changes with every [`reset`](Self::reset): an answer computed under an
    /// older generation is not stored.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// True when `key` was offered before (since the filter was last cleared);
    /// records it otherwise.
    fn seen_before(&self, key: &[u8]) -> bool {
        // Bits above the shard's pick the filter bit.
        let hash = self.hasher.hash_one(key) >> 8;
        let bit = usize::try_from(hash % SEEN_BITS as u64).unwrap_or(0);
        let mask = 1u64 << (bit % 64);
        if self.seen[bit / 64].fetch_or(mask, Ordering::Relaxed) & mask != 0 {
            return true;
        }
        // Half full: a flood of distinct names; start over so that the filter
        // keeps telling first sights apart.
        if self.seen_count.fetch_add(1, Ordering::Relaxed) + 1 >= SEEN_BITS / 2 {
            self.seen_count.store(0, Ordering::Relaxed);
            for word in &*self.seen {
                word.store(0, Ordering::Relaxed);
            }
        }
        false
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.shards[index]
    }

    /// Writes the cached answer to `key` into `out` (ID and name case patched
    /// from `query`, answers shuffled) and counts it; returns its length, or
    /// `None` on a miss.
    pub(crate) fn answer(
        &self,
        key: &Key,
        query: &[u8],
        now: Instant,
        out: &mut [u8; MAX_RESPONSE],
        still_holds: impl FnOnce(&Basis) -> bool,
    ) -> Option<usize> {
        let shard = self.shard(key.as_bytes());
        let guard = shard.read().unwrap_or_else(PoisonError::into_inner);
        let entry = guard.get(key.as_bytes())?;
        if entry.expires <= now
            || entry
                .basis
                .as_deref()
                .is_some_and(|basis| !still_holds(basis))
        {
            return None;
        }
        let len = entry.response.len();
        out[..len].copy_from_slice(&entry.response);
        count_down(entry, now, out);
        let layout = entry.answers;
        let pending = entry.pending.fetch_add(1, Ordering::Relaxed) + 1;
        let sample = (pending >= FLUSH_EVERY).then(|| {
            entry.flush();
            entry.meters.duration.clone()
        });
        drop(guard);
        out[..2].copy_from_slice(&query[..2]);
        let name = HEADER..HEADER + key.name_len;
        out[name.clone()].copy_from_slice(&query[name.clone()]);
        let Layout {
            first,
            size,
            count,
            literal_owner,
        } = layout;
        if count > 1 {
            shuffle_blocks(&mut out[first..first + size * count], size);
        }
        if literal_owner {
            for block in 0..count {
                let owner = first + block * size;
                out[owner..owner + key.name_len].copy_from_slice(&query[name.clone()]);
            }
        }
        if let Some(duration) = sample {
            duration.record(now.elapsed().as_secs_f64());
        }
        Some(len)
    }

    fn meters_for(&self, tags: MeterTags, make: impl FnOnce() -> Meters) -> Arc<Meters> {
        let mut sets = self
            .meter_sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(sets.entry(tags).or_insert_with(|| Arc::new(make())))
    }

    /// Stores `response` (the general path's answer to the query with `key`).
    ///
    /// How long it is served depends on where it came from: a Consul answer
    /// (`basis`) while its catalog data holds, up to [`BASIS_MAX_AGE`] (its
    /// TTLs are fixed); a forwarded one (`ttl_counts_down`) until 90 % of its
    /// smallest TTL has passed, up to [`COUNTDOWN_MAX_AGE`], with the TTLs
    /// counted down in every copy; anything else for [`MAX_AGE`].
    pub(crate) fn insert(
        &self,
        key: &Key,
        response: &[u8],
        generation: u64,
        provenance: Provenance,
        meters: impl FnOnce() -> Meters,
    ) -> Result<(), Uncacheable> {
        let Provenance {
            basis,
            ttl_counts_down,
            tags,
        } = provenance;
        // Consul names are few and asked again; anything else must prove it.
        if basis.is_none() && !self.seen_before(key.as_bytes()) {
            return Err(Uncacheable::FirstSight);
        }
        if !self.enabled() || generation != self.generation() {
            return Err(Uncacheable::Off);
        }
        let normalized;
        let (response, (answers, min_ttl, ttl_offsets)) = match inspect(response, key.name_len) {
            Some(inspected) => (response, inspected),
            None => {
                normalized = normalize(response, key.name_len).ok_or(Uncacheable::Shape)?;
                let inspected = inspect(&normalized, key.name_len).ok_or(Uncacheable::Shape)?;
                (&normalized[..], inspected)
            }
        };
        let now = Instant::now();
        let (life, ttl_offsets) = if basis.is_some() {
            (BASIS_MAX_AGE, Box::default())
        } else if ttl_counts_down {
            let life = Duration::from_millis(u64::from(min_ttl) * 900).min(COUNTDOWN_MAX_AGE);
            (life, ttl_offsets.into_boxed_slice())
        } else {
            (MAX_AGE, Box::default())
        };
        let entry = Entry {
            response: response.into(),
            stored: now,
            expires: now + life,
            basis,
            answers,
            ttl_offsets,
            meters: self.meters_for(tags, meters),
            pending: AtomicU64::new(0),
        };
        let shard = self.shard(key.as_bytes());
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.per_shard && !map.contains_key(key.as_bytes()) {
            let now = Instant::now();
            map.retain(|_, entry| entry.expires > now);
            if map.len() >= self.per_shard {
                // Full of live entries: a flood of distinct names; start over.
                map.clear();
            }
        }
        map.insert(key.as_bytes().into(), entry);
        drop(map);
        self.stored.notify_one();
        Ok(())
    }
}

impl FastCache {
    /// Drops expired entries and adds every entry's pending hits to the
    /// counters (run every [`MAX_AGE`] while there are hits, less often on an
    /// idle server, and at shutdown). False when it found nothing to do.
    pub(crate) fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut busy = false;
        for shard in &*self.shards {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            let before = map.len();
            map.retain(|_, entry| entry.expires > now);
            busy |= map.len() != before;
            for entry in map.values() {
                busy |= entry.flush();
            }
        }
        busy
    }

    /// Completes once an answer was stored (since the last call, or later).
    pub(crate) async fn stored(&self) {
        self.stored.notified().await;
    }
}

/// Fisher-Yates over equal-sized blocks.
fn shuffle_blocks(section: &mut [u8], size: usize) {
    let count = section.len() / size;
    for i in (1..count).rev() {
        let j = rand::random_range(0..=i);
        if i != j {
            let (low, high) = section.split_at_mut(i * size);
            low[j * size..(j + 1) * size].swap_with_slice(&mut high[..size]);
        }
    }
}

/// Skips a (possibly compressed) name; returns the offset after it.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let label = *message.get(at)?;
        match label {
            0 => return Some(at + 1),
            1..=63 => at += 1 + usize::from(label),
            0xc0..=0xff => {
                // A pointer into the header (whose ID a copy patches) or
                // forward could decode differently in a copy: not cacheable.
                let target = usize::from(u16_at(message, at)? & 0x3fff);
                if !(HEADER..at).contains(&target) {
                    return None;
                }
                return Some(at + 2);
            }
            _ => return None,
        }
    }
}

/// Checks that an encoded response may be cached: returns the Answer layout
/// and the smallest TTL.
fn inspect(message: &[u8], name_len: usize) -> Option<(Layout, u32, Vec<u16>)> {
    if message.len() > MAX_RESPONSE || message.len() < HEADER + name_len + 4 {
        return None;
    }
    // QR=1, TC=0, RCODE NOERROR or NXDOMAIN.
    if message[2] & 0x82 != 0x80 || !matches!(message[3] & 0x0f, 0 | 3) {
        return None;
    }
    if u16_at(message, 4)? != 1 {
        return None;
    }
    let answers = usize::from(u16_at(message, 6)?);
    let others = usize::from(u16_at(message, 8)?) + usize::from(u16_at(message, 10)?);
    let first = HEADER + name_len + 4;
    let mut at = first;
    let mut min_ttl = u32::MAX;
    let mut size = 0;
    let mut rtype = 0;
    let mut uniform = true;
    let mut literal_owner = false;
    let mut ttl_offsets = Vec::new();
    let question = message.get(HEADER..HEADER + name_len)?;
    for index in 0..answers + others {
        let start = at;
        at = skip_name(message, at)?;
        let owner_end = at;
        let fixed = message.get(at..at + 10)?;
        let record_type = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        at += 10;
        message.get(at..at + rdlength)?;
        at += rdlength;
        if record_type == TYPE_OPT {
            // An OPT belongs in the Additional section only (RFC 6891 §6.1.1):
            // one in the Answer would break the equal-sized layout that a copy
            // shuffles. Our OPT with options (EDE) means a degraded answer.
            if index < answers + usize::from(u16_at(message, 8)?) || rdlength != 0 {
                return None;
            }
            continue;
        }
        min_ttl = min_ttl.min(ttl);
        // Below MAX_RESPONSE (checked above), so it fits.
        ttl_offsets.push(u16::try_from(owner_end + 4).ok()?);
        if index < answers {
            let owner = &message[start..owner_end];
            let literal = owner == question;
            if index == 0 {
                size = at - start;
                rtype = record_type;
                literal_owner = literal;
            }
            uniform &= (owner == QUESTION_POINTER || literal)
                && literal == literal_owner
                && matches!(record_type, TYPE_A | TYPE_AAAA)
                && record_type == rtype
                && at - start == size;
        }
    }
    if at != message.len() || min_ttl == 0 || min_ttl == u32::MAX {
        return None;
    }
    if answers > 1 && !uniform {
        return None;
    }
    let layout = Layout {
        first,
        size,
        count: answers,
        literal_owner,
    };
    Some((layout, min_ttl, ttl_offsets))
}

/// Rewrites a response whose Answer holds only A/AAAA records owned by the
/// question name (written out, or a pointer to the question or to the first
/// owner, as hickory encodes them) so that every owner is a pointer to the
/// question: equal-length records that can be shuffled. Only when nothing but
/// an OPT follows, so that no pointer can lead into the rewritten part.
fn normalize(message: &[u8], name_len: usize) -> Option<Vec<u8>> {
    let answers = usize::from(u16_at(message, 6)?);
    if answers < 2 || u16_at(message, 4)? != 1 || u16_at(message, 8)? != 0 {
        return None;
    }
    let first = HEADER + name_len + 4;
    let question = message.get(HEADER..HEADER + name_len)?;
    let to_first = [
        0xc0 | u8::try_from(first >> 8).ok()?,
        u8::try_from(first & 0xff).ok()?,
    ];
    let mut out = Vec::with_capacity(message.len());
    out.extend_from_slice(message.get(..first)?);
    let mut at = first;
    for index in 0..answers {
        let owner_end = skip_name(message, at)?;
        let owner = &message[at..owner_end];
        let known = owner == QUESTION_POINTER
            || owner == question
            || (index > 0
                && owner == to_first
                && message.get(first..first + name_len)? == question);
        let fixed = message.get(owner_end..owner_end + 10)?;
        let record_type = u16::from_be_bytes([fixed[0], fixed[1]]);
        if !known || !matches!(record_type, TYPE_A | TYPE_AAAA) {
            return None;
        }
        let end = owner_end + 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        out.extend_from_slice(&QUESTION_POINTER);
        out.extend_from_slice(message.get(owner_end..end)?);
        at = end;
    }
    let rest = message.get(at..)?;
    match u16_at(message, 10)? {
        0 if rest.is_empty() => {}
        1 if rest.len() >= 3 && rest[0] == 0 && u16_at(rest, 1)? == TYPE_OPT => {}
        _ => return None,
    }
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_offered_twice_passes_the_first_sight_filter() {
        let cache = FastCache::new(true);
        let keys: Vec<Vec<u8>> = (0..5000).map(|n| format!("h-{n}").into_bytes()).collect();
        let early = keys.iter().filter(|key| cache.seen_before(key)).count();
        assert!(early < 200, "{early} keys looked seen on first sight");
        assert!(
            keys.iter().all(|key| cache.seen_before(key)),
            "no key is kept out"
        );
        // A flood clears the filter before it is too full to tell first sights apart.
        for n in 0..SEEN_BITS {
            cache.seen_before(format!("flood-{n}").as_bytes());
        }
        let fresh = (0..1000)
            .filter(|n| cache.seen_before(format!("new-{n}").as_bytes()))
            .count();
        assert!(fresh < 600, "{fresh} of 1000 new keys looked seen");
    }

    /// `web.service.consul. A` with ID 0x1234, optionally with an OPT.
    fn query(name: &[&str], opt: Option<[u8; 11]>) -> Vec<u8> {
        let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name {
            packet.push(u8::try_from(label.len()).expect("short"));
            packet.extend_from_slice(label.as_bytes());
        }
        packet.extend_from_slice(&[0, 0, 1, 0, 1]);
        if let Some(opt) = opt {
            packet[11] = 1;
            packet.extend_from_slice(&opt);
        }
        packet
    }

    const OPT: [u8; 11] = [0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0];

    #[test]
    fn plain_queries_parse_and_fold_case() {
        let lower = parse_query(&query(&["web", "service", "consul"], None)).expect("plain");
        let upper = parse_query(&query(&["WeB", "SERVICE", "consul"], None)).expect("plain");
        assert_eq!(lower.as_bytes(), upper.as_bytes());
        assert_eq!(lower.name_len, 20);
        let edns = parse_query(&query(&["web", "service", "consul"], Some(OPT))).expect("edns");
        assert_ne!(edns.as_bytes(), lower.as_bytes(), "EDNS keyed apart");
        let mut no_do = OPT;
        no_do[7] = 0;
        let plain_edns =
            parse_query(&query(&["web", "service", "consul"], Some(no_do))).expect("edns");
        assert_ne!(edns.as_bytes(), plain_edns.as_bytes(), "DO keyed apart");
    }

    #[test]
    fn unusual_queries_take_the_general_path() {
        let base = query(&["web", "consul"], None);
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for (at, value) in [(2, 0x81), (2, 0x09), (5, 2), (7, 1), (9, 1), (3, 0x01)] {
            let mut packet = base.clone();
            packet[at] = value;
            cases.push(packet);
        }
        let mut trailing = base.clone();
        trailing.push(0);
        cases.push(trailing);
        cases.push(base[..base.len() - 1].to_vec());
        cases.push(vec![
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1,
        ]);
        let mut version = OPT;
        version[6] = 1;
        let mut options = query(&["web", "consul"], Some(OPT));
        let len = options.len();
        options[len - 1] = 4;
        options.extend_from_slice(&[0, 10, 0, 0]);
        cases.push(options);
        cases.push(query(&["web", "consul"], Some(version)));
        let long: Vec<String> = (0..5).map(|_| "a".repeat(63)).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        cases.push(query(&long, None));
        for (index, case) in cases.iter().enumerate() {
            assert!(parse_query(case).is_none(), "case {index}: {case:?}");
        }
        for cut in 0..base.len() {
            assert!(parse_query(&base[..cut]).is_none(), "cut at {cut}");
        }
    }

    fn response(answers: &[(u16, &[u8], u32)], rcode: u8) -> Vec<u8> {
        let mut message = query(&["web", "consul"], None);
        message[2] |= 0x80;
        message[3] = 0x80 | rcode;
        message[7] = u8::try_from(answers.len()).expect("few");
        for (rtype, rdata, ttl) in answers {
            message.extend_from_slice(&QUESTION_POINTER);
            message.extend_from_slice(&rtype.to_be_bytes());
            message.extend_from_slice(&[0, 1]);
            message.extend_from_slice(&ttl.to_be_bytes());
            message.extend_from_slice(&u16::try_from(rdata.len()).expect("short").to_be_bytes());
            message.extend_from_slice(rdata);
        }
        message
    }

    /// Found by fuzz/fast_path: an owner pointing into the header decoded in
    /// the response but not in a copy with the client's ID patched in.
    #[test]
    fn inspect_refuses_pointers_into_the_header_or_forward() {
        let a = [10, 0, 0, 1];
        let ok = response(&[(1, &a, 5)], 0);
        assert!(inspect(&ok, 12).is_some());
        for pointer in [[0xc0, 0x01], [0xc0, 0x0b], [0xc0, 0xff]] {
            let mut bad = ok.clone();
            bad[28..30].copy_from_slice(&pointer);
            assert!(inspect(&bad, 12).is_none(), "{pointer:?}");
        }
    }

    /// Found by fuzz/fast_path (CI): an OPT in the Answer section was skipped
    /// like the Additional one, so an A record followed by a shorter OPT gave
    /// a layout of 2 × 16 bytes over a message that ended sooner, and a copy's
    /// shuffle indexed past the 512-byte buffer (a panic on the UDP thread
    /// that one upstream reply could trigger).
    #[test]
    fn inspect_refuses_an_opt_outside_the_additional_section() {
        let a = [10, 0, 0, 1];
        let mut opt_in_answer = response(&[(1, &a, 5)], 0);
        opt_in_answer[7] = 2;
        opt_in_answer.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        assert!(inspect(&opt_in_answer, 12).is_none(), "OPT in the Answer");
        let mut opt_in_authority = response(&[(1, &a, 5)], 0);
        opt_in_authority[9] = 1;
        opt_in_authority.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        assert!(
            inspect(&opt_in_authority, 12).is_none(),
            "OPT in the Authority"
        );
        let mut opt_in_additional = response(&[(1, &a, 5)], 0);
        opt_in_additional[11] = 1;
        opt_in_additional.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        assert!(
            inspect(&opt_in_additional, 12).is_some(),
            "OPT in the Additional"
        );
    }

    #[test]
    fn inspect_accepts_uniform_answers_only() {
        let a = [10, 0, 0, 1];
        let aaaa = [0u8; 16];
        let ok = response(&[(1, &a, 5), (1, &a, 3)], 0);
        let layout = Layout {
            first: 28,
            size: 16,
            count: 2,
            literal_owner: false,
        };
        assert_eq!(
            inspect(&ok, 12).map(|(layout, ttl, _)| (layout, ttl)),
            Some((layout, 3))
        );
        assert!(inspect(&response(&[(1, &a, 5), (28, &aaaa, 5)], 0), 12).is_none());
        assert!(inspect(&response(&[(1, &a, 0)], 0), 12).is_none(), "TTL 0");
        assert!(
            inspect(&response(&[(1, &a, 5)], 2), 12).is_none(),
            "SERVFAIL"
        );
        assert!(inspect(&response(&[], 0), 12).is_none(), "no TTL at all");
        assert!(
            inspect(&response(&[(5, &a, 5)], 3), 12).is_some(),
            "one record"
        );
        let mut truncated = ok.clone();
        truncated[2] |= 0x02;
        assert!(inspect(&truncated, 12).is_none());
        assert!(inspect(&ok[..ok.len() - 1], 12).is_none());
    }

    /// The cache's byte bound is its entry count × [`MAX_RESPONSE`] (+ key and
    /// bookkeeping): an answer over 512 bytes is never stored, even after it
    /// was asked for twice, while a small one of the same name is.
    #[test]
    fn answers_over_max_response_are_never_stored() {
        let a = [10, 0, 0, 1];
        let few: Vec<(u16, &[u8], u32)> = vec![(1, &a[..], 30); 2];
        let many: Vec<(u16, &[u8], u32)> = vec![(1, &a[..], 30); 40];
        let small = response(&few, 0);
        let big = response(&many, 0);
        assert!(small.len() <= MAX_RESPONSE && big.len() > MAX_RESPONSE);
        let asked = query(&["web", "consul"], None);
        let key = parse_query(&asked).expect("plain query");
        let store = |cache: &FastCache, answer: &[u8]| {
            cache.insert(
                &key,
                answer,
                cache.generation(),
                Provenance {
                    basis: None,
                    ttl_counts_down: true,
                    tags: ["forward", "A", "NOERROR", "upstream"],
                },
                || Meters {
                    requests: Counter::noop(),
                    responses: Counter::noop(),
                    duration: Histogram::noop(),
                    hits: Counter::noop(),
                },
            )
        };
        let mut out = [0u8; MAX_RESPONSE];
        for (answer, stored) in [(&small, true), (&big, false)] {
            let cache = FastCache::new(true);
            assert_eq!(store(&cache, answer), Err(Uncacheable::FirstSight));
            let second = store(&cache, answer);
            assert_eq!(second.is_ok(), stored, "{} bytes: {second:?}", answer.len());
            if !stored {
                assert_eq!(second, Err(Uncacheable::Shape));
            }
            let hit = cache.answer(&key, &asked, Instant::now(), &mut out, |_| true);
            assert_eq!(hit, stored.then_some(small.len()), "{} bytes", answer.len());
        }
    }

    /// The sweeper slows down on an idle server: a sweep says whether it had
    /// anything to do (hits to count, entries to drop), and storing an
    /// answer wakes it.
    #[tokio::test]
    async fn a_sweep_reports_whether_it_found_work_and_a_store_wakes_the_sweeper() {
        let a = [10, 0, 0, 1];
        let answer = response(&[(1, &a[..], 30)], 0);
        let asked = query(&["web", "consul"], None);
        let key = parse_query(&asked).expect("plain query");
        let cache = FastCache::new(true);
        assert!(!cache.sweep(), "an empty cache has nothing to sweep");
        let store = || {
            cache.insert(
                &key,
                &answer,
                cache.generation(),
                Provenance {
                    basis: None,
                    ttl_counts_down: true,
                    tags: ["forward", "A", "NOERROR", "upstream"],
                },
                || Meters {
                    requests: Counter::noop(),
                    responses: Counter::noop(),
                    duration: Histogram::noop(),
                    hits: Counter::noop(),
                },
            )
        };
        assert_eq!(store(), Err(Uncacheable::FirstSight));
        store().expect("stored on second sight");
        tokio::time::timeout(Duration::from_secs(5), cache.stored())
            .await
            .expect("a store wakes the sweeper");
        assert!(
            !cache.sweep(),
            "a stored, unhit, unexpired answer is no work"
        );
        let mut out = [0u8; MAX_RESPONSE];
        let now = Instant::now();
        assert!(
            cache
                .answer(&key, &asked, now, &mut out, |_| true)
                .is_some()
        );
        assert!(cache.sweep(), "a hit to count");
        assert!(!cache.sweep(), "counted once");
    }

    /// A stored reply is copied out as it is (only ID, name case, TTLs and the
    /// order of equal-sized records are patched), so one with bytes past its
    /// counted records must never be stored.
    #[test]
    fn replies_with_bytes_past_their_records_are_never_kept() {
        let a = [10, 0, 0, 1];
        for answers in [&[(1, &a[..], 5)][..], &[(1, &a[..], 5), (1, &a[..], 5)]] {
            let mut junk = response(answers, 0);
            junk.extend_from_slice(&[3, b'w', b'e']);
            assert!(inspect(&junk, 12).is_none());
            assert!(normalize(&junk, 12).is_none());
        }
    }

    #[test]
    fn shuffling_permutes_whole_blocks() {
        let mut section: Vec<u8> = (0..8u8).flat_map(|i| [i; 4]).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            shuffle_blocks(&mut section, 4);
            let mut blocks: Vec<u8> = section.chunks(4).map(|block| block[0]).collect();
            assert!(
                section
                    .chunks(4)
                    .all(|block| block.iter().all(|b| *b == block[0]))
            );
            seen.insert(blocks.clone());
            blocks.sort_unstable();
            assert_eq!(blocks, (0..8).collect::<Vec<u8>>());
        }
        assert!(seen.len() > 1);
    }
}
