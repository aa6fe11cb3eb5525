//! Fitting a response into the transport's size limit before it is encoded,
//! so that hickory's encoder never has to cut (and never drops our OPT).
//!
//! Records that point at other names (SRV, MX and NS answers) keep the
//! Additional records of their target (its A/AAAA, TXT, and any CNAME chain
//! to them) as one group, as Consul's `trimDNSResponse` does: a group is
//! kept or dropped whole, so an SRV answer never loses its addresses while
//! its SRV records stay.

use std::collections::HashMap;

use hickory_proto::rr::{Name, RData, Record};

/// The smallest possible resource record: root owner (1), type, class, TTL, RDLENGTH.
const MIN_RECORD_LEN: usize = 11;
/// CNAME links followed from a target through Additional (Consul: 3 levels).
const MAX_CHAIN: usize = 8;

/// Drops records until `size(answers, authorities, additionals) <= limit`.
///
/// Additional records may be reordered: those of each answer's target come
/// first, answer by answer, then the unrelated ones in their order.
///
/// Order of dropping: unrelated Additional records from the end (no TC:
/// RFC 2181 §9); then every unrelated one, and answers from the end, each
/// with the Additional records only it needed; Authority only when it does
/// not fit on its own. When not even the first answer fits with its group,
/// answers are kept without their Additional records. Returns true when
/// Answer or Authority records were dropped (the caller sets TC where the
/// client can retry).
pub(crate) fn fit(
    limit: usize,
    answers: &mut Vec<Record>,
    authorities: &mut Vec<Record>,
    additionals: &mut Vec<Record>,
    mut size: impl FnMut(&[Record], &[Record], &[Record]) -> usize,
) -> bool {
    let whole = size(answers, authorities, additionals);
    if whole <= limit {
        return false;
    }
    // `ends[n]`: the related Additional records the first `n` answers need.
    let ends = group_additionals(answers, additionals);
    let related = ends.last().copied().unwrap_or(0);
    // (With nothing unrelated, that is the whole response, known not to fit.)
    if related < additionals.len() && size(answers, authorities, &additionals[..related]) <= limit {
        let unrelated = additionals.len() - related;
        let keep = largest_fitting(unrelated, 0, |n| {
            size(answers, authorities, &additionals[..related + n]) <= limit
        });
        additionals.truncate(related + keep);
        return false;
    }
    additionals.truncate(related);

    if size(&[], authorities, &[]) > limit {
        authorities.clear();
    }
    let most = answers.len().min(limit / MIN_RECORD_LEN);
    // Answers tend to be alike: the share of the whole that fits is a good
    // first guess, which saves most of a binary search's trial encodes.
    let guess = answers.len().saturating_mul(limit) / whole.max(1);
    let groups = largest_fitting(most, guess, |n| {
        size(&answers[..n], authorities, &additionals[..ends[n]]) <= limit
    });
    if groups > 0 || related == 0 {
        answers.truncate(groups);
        additionals.truncate(ends[groups]);
        return true;
    }
    additionals.clear();
    let keep = largest_fitting(most, guess, |n| {
        size(&answers[..n], authorities, &[]) <= limit
    });
    answers.truncate(keep);
    true
}

/// Consul's `udp_answer_limit`: keeps the first `limit` answers and the
/// Additional records they need (their targets' addresses, TXT and CNAME
/// chains); the other Additional records go too, as Consul's `syncExtra`
/// drops them. Returns true when answers were dropped.
pub(crate) fn cap_answers(
    limit: usize,
    answers: &mut Vec<Record>,
    additionals: &mut Vec<Record>,
) -> bool {
    if answers.len() <= limit {
        return false;
    }
    let ends = group_additionals(answers, additionals);
    answers.truncate(limit);
    additionals.truncate(ends[limit]);
    true
}

/// The name an answer points at, whose records belong with it in Additional.
fn target(record: &Record) -> Option<&Name> {
    match &record.data {
        RData::SRV(srv) => Some(&srv.target),
        RData::MX(mx) => Some(&mx.exchange),
        RData::NS(ns) => Some(&ns.0),
        _ => None,
    }
}

/// Reorders `additionals`: first the records of each answer's target (and
/// of the CNAME chain from it), answer by answer, each record with the first
/// answer that needs it; then the rest in their order. Returns, for every
/// `n` from 0 to `answers.len()`, how many of the reordered records the first
/// `n` answers need.
fn group_additionals(answers: &[Record], additionals: &mut Vec<Record>) -> Vec<usize> {
    let mut ends = Vec::with_capacity(answers.len() + 1);
    ends.push(0);
    if additionals.is_empty() || answers.iter().all(|answer| target(answer).is_none()) {
        ends.resize(answers.len() + 1, 0);
        return ends;
    }
    // Names compare and hash case-insensitively.
    let mut by_owner: HashMap<&Name, Vec<usize>> = HashMap::new();
    for (index, record) in additionals.iter().enumerate() {
        by_owner.entry(&record.name).or_default().push(index);
    }
    let mut taken = vec![false; additionals.len()];
    let mut order = Vec::with_capacity(additionals.len());
    for answer in answers {
        let mut name = target(answer);
        for _ in 0..MAX_CHAIN {
            let Some(owner) = name.take() else { break };
            for &index in by_owner.get(owner).into_iter().flatten() {
                if let RData::CNAME(cname) = &additionals[index].data {
                    name = Some(&cname.0);
                }
                if !taken[index] {
                    taken[index] = true;
                    order.push(index);
                }
            }
        }
        ends.push(order.len());
    }
    order.extend((0..additionals.len()).filter(|&index| !taken[index]));
    let mut slots: Vec<Option<Record>> = additionals.drain(..).map(Some).collect();
    additionals.extend(order.into_iter().filter_map(|index| slots[index].take()));
    ends
}

/// The largest `n <= max` with `fits(n)`, assuming `fits` is monotone (0 when
/// none fits). Searches outward from `guess` in doubling steps, then halves
/// the bracket: a guess off by a few costs a few probes.
fn largest_fitting(max: usize, guess: usize, mut fits: impl FnMut(usize) -> bool) -> usize {
    // The answer stays in `low..=high`; `low` fits (or is 0).
    let (mut low, mut high) = (0, max);
    let guess = guess.min(max);
    if guess > 0 {
        let mut step = 1;
        if fits(guess) {
            low = guess;
            while low < high {
                let probe = low.saturating_add(step).min(high);
                if !fits(probe) {
                    high = probe - 1;
                    break;
                }
                low = probe;
                step *= 2;
            }
        } else {
            high = guess - 1;
            while high > 0 {
                let probe = high.saturating_sub(step - 1).max(1);
                if fits(probe) {
                    low = probe;
                    break;
                }
                high = probe - 1;
                step *= 2;
            }
        }
    }
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if fits(middle) {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV, TXT};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("name literal")
    }

    /// `n` SRV answers, target `node-<i>.node.consul.`, and in Additional each
    /// target's A, AAAA and TXT (in section order: all A, all AAAA, all TXT).
    fn srv_with_glue(n: usize) -> (Vec<Record>, Vec<Record>) {
        let target = |i: usize| name(&format!("Node-{i}.node.consul."));
        let answers = (0..n)
            .map(|i| {
                let srv = SRV::new(1, 1, 80, target(i));
                Record::from_rdata(name("web.service.consul."), 0, RData::SRV(srv))
            })
            .collect();
        let octet = |i: usize| u8::try_from(i % 250).expect("small");
        let mut additionals: Vec<Record> = (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 0, 0, octet(i));
                Record::from_rdata(target(i).to_lowercase(), 0, RData::A(A(ip)))
            })
            .collect();
        additionals.extend((0..n).map(|i| {
            let aaaa = AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(octet(i)));
            Record::from_rdata(target(i), 0, RData::AAAA(aaaa))
        }));
        additionals.extend((0..n).map(|i| {
            let txt = TXT::new(vec![format!("rack=r{i}")]);
            Record::from_rdata(target(i), 0, RData::TXT(txt))
        }));
        (answers, additionals)
    }

    /// The owners in Additional, lower-cased, in order.
    fn owners(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|record| record.name.to_lowercase().to_ascii())
            .collect()
    }

    #[test]
    fn srv_answers_keep_their_targets_records_as_whole_groups() {
        let (mut an, mut ad) = srv_with_glue(10);
        let mut au = Vec::new();
        let first = an[0].clone();
        // 12 + 20 * (4 + 3 * 4) = 332: four groups of SRV + A + AAAA + TXT.
        assert!(fit(340, &mut an, &mut au, &mut ad, size));
        assert_eq!(an.len(), 4);
        assert_eq!(an[0], first, "groups are dropped from the end");
        let mut expected = Vec::new();
        for i in 0..4 {
            expected.extend(std::iter::repeat_n(format!("node-{i}.node.consul."), 3));
        }
        assert_eq!(owners(&ad), expected, "each SRV's records, SRV by SRV");
    }

    #[test]
    fn unrelated_additionals_go_first_without_tc() {
        let (mut an, mut ad) = srv_with_glue(3);
        ad.insert(0, records(1).remove(0));
        ad.extend(records(5));
        let mut au = Vec::new();
        // 3 groups of 4 records, and room for 2 of the 6 unrelated ones.
        let limit = 12 + 20 * (3 * 4 + 2);
        assert!(!fit(limit, &mut an, &mut au, &mut ad, size));
        assert_eq!((an.len(), ad.len()), (3, 11));
        assert_eq!(
            owners(&ad[9..]),
            [".", "."],
            "the first unrelated ones stay"
        );
    }

    #[test]
    fn shared_targets_and_cname_chains_stay_with_the_first_srv_needing_them() {
        let srv = |target: &str| {
            let srv = SRV::new(1, 1, 80, name(target));
            Record::from_rdata(name("web.service.consul."), 0, RData::SRV(srv))
        };
        let a = |owner: &str| Record::from_rdata(name(owner), 0, RData::A(A::new(10, 0, 0, 1)));
        let cname = |owner: &str, target: &str| {
            Record::from_rdata(name(owner), 0, RData::CNAME(CNAME(name(target))))
        };
        let mut an = vec![srv("a.example."), srv("b.example."), srv("a.example.")];
        let mut ad = vec![
            a("elb.aws."),
            a("a.example."),
            cname("b.example.", "elb.aws."),
        ];
        let mut au = Vec::new();
        // Everything fits but one record: the last SRV (its target is already
        // there) goes with nothing, and TC says so.
        assert!(fit(12 + 20 * 5, &mut an, &mut au, &mut ad, size));
        assert_eq!(an.len(), 2);
        assert_eq!(owners(&ad), ["a.example.", "b.example.", "elb.aws."]);
        // Room for one group: the CNAME chain goes with b.
        let (mut an, mut ad) = (an, ad);
        assert!(fit(12 + 20 * 3, &mut an, &mut au, &mut ad, size));
        assert_eq!((an.len(), owners(&ad)), (1, vec!["a.example.".to_owned()]));
    }

    #[test]
    fn srv_answers_without_room_for_a_group_keep_the_srv_records() {
        let (mut an, mut ad) = srv_with_glue(5);
        let mut au = Vec::new();
        assert!(fit(12 + 20 * 3, &mut an, &mut au, &mut ad, size));
        assert_eq!(an.len(), 3);
        assert!(ad.is_empty());
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 0, 0, u8::try_from(i % 250).expect("small"));
                Record::from_rdata(Name::root(), 0, RData::A(A(ip)))
            })
            .collect()
    }

    /// Every record costs 20 bytes, the header 12.
    fn size(a: &[Record], b: &[Record], c: &[Record]) -> usize {
        12 + 20 * (a.len() + b.len() + c.len())
    }

    #[test]
    fn fitting_response_is_untouched() {
        let (mut an, mut au, mut ad) = (records(3), records(1), records(3));
        assert!(!fit(512, &mut an, &mut au, &mut ad, size));
        assert_eq!((an.len(), au.len(), ad.len()), (3, 1, 3));
    }

    #[test]
    fn additional_is_trimmed_first_without_tc() {
        // 12 + 20 * (10 + 0 + 14) = 492 fits, 15 additionals would not.
        let (mut an, mut au, mut ad) = (records(10), Vec::new(), records(20));
        assert!(!fit(500, &mut an, &mut au, &mut ad, size));
        assert_eq!((an.len(), ad.len()), (10, 14));
    }

    #[test]
    fn answers_are_trimmed_from_the_end_with_tc() {
        let (mut an, mut au, mut ad) = (records(40), Vec::new(), records(40));
        let first = an[0].clone();
        assert!(fit(512, &mut an, &mut au, &mut ad, size));
        assert_eq!(an.len(), 25, "12 + 25 * 20 = 512");
        assert_eq!(an[0], first, "the head of the answer is kept");
        assert!(ad.is_empty());
    }

    #[test]
    fn authority_goes_last() {
        let (mut an, mut au, mut ad) = (Vec::new(), records(30), Vec::new());
        assert!(fit(512, &mut an, &mut au, &mut ad, size));
        assert!(au.is_empty());
        let (mut an, mut au, mut ad) = (records(30), records(1), Vec::new());
        assert!(fit(512, &mut an, &mut au, &mut ad, size));
        assert_eq!((an.len(), au.len()), (24, 1));
    }

    #[test]
    fn nothing_fits() {
        let (mut an, mut au, mut ad) = (records(3), Vec::new(), Vec::new());
        assert!(fit(10, &mut an, &mut au, &mut ad, size));
        assert!(an.is_empty());
    }

    #[test]
    fn largest_fitting_is_exact_whatever_the_guess() {
        for max in 0..40 {
            for threshold in 0..45 {
                let expected = if threshold > max { max } else { threshold };
                for guess in 0..45 {
                    let mut probes = 0;
                    let found = largest_fitting(max, guess, |n| {
                        probes += 1;
                        n <= threshold
                    });
                    assert_eq!(
                        found, expected,
                        "max {max} threshold {threshold} guess {guess}"
                    );
                    if guess > 0 && guess == expected && expected < max {
                        assert_eq!(probes, 2, "an exact guess costs two probes");
                    }
                }
            }
        }
    }
}
