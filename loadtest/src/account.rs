//! Delivery accounting: what every connection saw against what it should have seen.

use std::collections::BTreeMap;

use crate::conn::ConnResult;
use crate::opts::Opts;
use crate::publish::Kind;

/// Per-run delivery accounting over all connections.
#[derive(Default)]
pub struct Delivery {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub misrouted: u64,
    pub foreign: u64,
    pub resyncs: u64,
    pub other: u64,
    pub conns_with_loss: u64,
    /// Latency samples (µs) by transport: [ws, sse].
    pub lat: [Vec<u32>; 2],
    /// Handshake times of the connections that connected, µs.
    pub handshakes: Vec<u32>,
    /// Connect failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Connections that ended before the loadgen closed them, by reason.
    pub ended: BTreeMap<String, u64>,
}

pub fn account(
    o: &Opts,
    kind: Option<Kind>,
    published: u64,
    results: &mut [ConnResult],
) -> Delivery {
    let mut d = Delivery::default();
    for r in results.iter_mut() {
        match &r.connect {
            Some(Ok(t)) => d
                .handshakes
                .push(t.as_micros().min(u32::MAX as u128) as u32),
            Some(Err(e)) => {
                *d.failures.entry(e.clone()).or_default() += 1;
                continue;
            }
            None => continue,
        }
        if let Some(why) = &r.ended {
            *d.ended.entry(why.clone()).or_default() += 1;
        }
        d.foreign += r.foreign;
        d.resyncs += r.resyncs;
        d.other += r.other;
        d.delivered += r.seqs.len() as u64;
        if let Some(kind) = kind {
            check_sequence(o, kind, published, r, &mut d);
        }
        d.lat[usize::from(!r.ws)].append(&mut r.lat_us);
    }
    d
}

/// Loss, duplicates and misrouting of one connection.
fn check_sequence(o: &Opts, kind: Kind, published: u64, r: &mut ConnResult, d: &mut Delivery) {
    let expected = kind.expected_for_user(o, r.user, published);
    d.expected += expected;
    r.seqs.sort_unstable();
    let mut unique_ok = 0u64;
    let mut prev = None;
    for &s in &r.seqs {
        if prev == Some(s) {
            d.duplicated += 1;
            continue;
        }
        prev = Some(s);
        if u64::from(s) < published && kind.is_for_user(o, r.user, u64::from(s)) {
            unique_ok += 1;
        } else {
            d.misrouted += 1;
        }
    }
    let lost = expected.saturating_sub(unique_ok);
    d.lost += lost;
    d.conns_with_loss += u64::from(lost > 0);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::opts::{self, Parsed};

    fn opts(args: &str) -> Opts {
        match opts::parse(args.split_whitespace().map(String::from)) {
            Ok(Parsed::Run(o)) => *o,
            _ => panic!("bad test args"),
        }
    }

    fn conn(user: usize, seqs: &[u32]) -> ConnResult {
        ConnResult {
            user,
            ws: true,
            connect: Some(Ok(Duration::from_millis(1))),
            seqs: seqs.to_vec(),
            lat_us: vec![100; seqs.len()],
            ..ConnResult::default()
        }
    }

    #[test]
    fn accounts_loss_duplicates_and_misrouting() {
        // 4 users, 10 events: user 0 gets 0,4,8; user 1 gets 1,5,9; user 2: 2,6; user 3: 3,7.
        let o = opts("targeted --ws 4 --rate 10 --duration 1");
        let mut results = vec![
            conn(0, &[0, 4, 8]),    // complete
            conn(1, &[1, 5, 5, 9]), // one duplicate
            conn(2, &[2]),          // lost 6
            conn(3, &[3, 7, 2]),    // 2 is user 2's: misrouted
        ];
        let d = account(&o, Some(Kind::Targeted), 10, &mut results);
        assert_eq!(d.expected, 10);
        assert_eq!(d.lost, 1);
        assert_eq!(d.duplicated, 1);
        assert_eq!(d.misrouted, 1);
        assert_eq!(d.conns_with_loss, 1);
        assert_eq!(d.delivered, 11);
    }

    #[test]
    fn broadcast_expectations_follow_tenants() {
        // 2 tenants; users 0,2 in tenant 0, users 1,3 in tenant 1; 5 events: tenant 0 gets
        // 0,2,4 and tenant 1 gets 1,3.
        let o = opts("broadcast --ws 4 --tenants 2 --rate 5 --duration 1");
        assert_eq!(Kind::Broadcast.expected_for_user(&o, 2, 5), 3);
        assert_eq!(Kind::Broadcast.expected_for_user(&o, 3, 5), 2);
        let mut results = vec![
            conn(0, &[0, 2, 4]),
            conn(1, &[1, 3]),
            conn(2, &[0, 2, 4]),
            conn(3, &[1]),
        ];
        let d = account(&o, Some(Kind::Broadcast), 5, &mut results);
        assert_eq!(
            (d.expected, d.lost, d.duplicated, d.misrouted),
            (10, 1, 0, 0)
        );
    }

    #[test]
    fn unrouted_expects_only_the_closing_event_on_user_zero() {
        // 10 events: 0..=8 for absent users, 9 (the last) for user 0.
        let o = opts("unrouted --ws 3 --rate 10 --duration 1");
        assert_eq!(Kind::Unrouted.expected_for_user(&o, 0, 10), 1);
        assert_eq!(Kind::Unrouted.expected_for_user(&o, 0, 9), 0);
        assert_eq!(Kind::Unrouted.expected_for_user(&o, 1, 10), 0);
        let mut results = vec![conn(0, &[9]), conn(1, &[]), conn(2, &[4])];
        let d = account(&o, Some(Kind::Unrouted), 10, &mut results);
        assert_eq!(
            (d.expected, d.lost, d.duplicated, d.misrouted),
            (1, 0, 0, 1)
        );
    }
}
