//! Fitting a response into the transport's size limit before it is encoded,
//! so that hickory's encoder never has to cut (and never drops our OPT).

use hickory_proto::rr::Record;

/// The smallest possible resource record: root owner (1), type, class, TTL, RDLENGTH.
const MIN_RECORD_LEN: usize = 11;

/// Drops records until `size(answers, authorities, additionals) <= limit`.
///
/// Order: Additional records from the end first (no TC: RFC 2181 §9), then all of
/// Additional and Answer records from the end, then Authority. Returns true when
/// Answer or Authority records were dropped, i.e. when TC must be set.
pub(crate) fn fit(
    limit: usize,
    answers: &mut Vec<Record>,
    authorities: &mut Vec<Record>,
    additionals: &mut Vec<Record>,
    mut size: impl FnMut(&[Record], &[Record], &[Record]) -> usize,
) -> bool {
    if size(answers, authorities, additionals) <= limit {
        return false;
    }
    if size(answers, authorities, &[]) <= limit {
        let keep = largest_fitting(additionals.len(), |n| {
            size(answers, authorities, &additionals[..n]) <= limit
        });
        additionals.truncate(keep);
        return false;
    }
    additionals.clear();

    let most = answers.len().min(limit / MIN_RECORD_LEN);
    if size(&[], authorities, &[]) > limit {
        authorities.clear();
    }
    let keep = largest_fitting(most, |n| size(&answers[..n], authorities, &[]) <= limit);
    answers.truncate(keep);
    true
}

/// The largest `n <= max` with `fits(n)`, assuming `fits` is monotone (0 when none fits).
fn largest_fitting(max: usize, mut fits: impl FnMut(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, max);
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

    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData};

    use super::*;

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
    fn largest_fitting_is_exact() {
        for max in 0..40 {
            for threshold in 0..45 {
                let expected = if threshold > max { max } else { threshold };
                assert_eq!(
                    largest_fitting(max, |n| n <= threshold),
                    expected,
                    "max {max} threshold {threshold}"
                );
            }
        }
    }
}
