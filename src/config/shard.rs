//! Sharding by tenant (`GATEWAY_SHARD`): which tenants an instance of a shard serves.
//!
//! The shard of a tenant is this crate's own function, not the broker's: a browser on the
//! wrong shard must be told where to go, so every instance (and anything routing browsers)
//! must compute it the same way, and RabbitMQ's consistent-hash exchange cannot be
//! reproduced outside the broker (see docs/architecture.md, "Sharding by tenant").

use std::fmt;

/// Most shards a fleet may have: far more than any fleet needs, small enough that a typo
/// (`0/10000`) is caught rather than leaving every tenant refused by most instances.
pub const MAX_SHARDS: u32 = 1024;

/// One shard of a sharded fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This instance's shard, `0..count`: it serves the tenants [`shard_of`] maps here.
    pub index: u32,
    /// How many shards the fleet has; every instance must be given the same count.
    pub count: u32,
}

impl Shard {
    /// `k/S`, e.g. `0/2`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let bad = || format!("`{text}` is not k/S with 0 <= k < S <= {MAX_SHARDS}");
        let (k, s) = text.trim().split_once('/').ok_or_else(bad)?;
        let index: u32 = k.trim().parse().map_err(|_| bad())?;
        let count: u32 = s.trim().parse().map_err(|_| bad())?;
        if count == 0 || count > MAX_SHARDS || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether this shard serves `tenant`.
    pub fn owns(&self, tenant: &str) -> bool {
        shard_of(tenant, self.count) == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard of `tenant` among `count`: FNV-1a (64 bit) of its UTF-8 bytes, then a jump
/// consistent hash, so going from `S` to `S + 1` shards moves only the tenants that go to
/// the new shard (about one in `S + 1`). Pinned by tests: changing it moves tenants.
pub fn shard_of(tenant: &str, count: u32) -> u32 {
    jump(fnv1a(tenant.as_bytes()), count.max(1))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// Jump consistent hash (Lamping and Veach, 2014): a bucket in `0..buckets`.
fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut bucket, mut next) = (0i64, 0i64);
    while next < i64::from(buckets) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let gap = (1u64 << 31) as f64 / ((key >> 33) + 1) as f64;
        next = ((bucket + 1) as f64 * gap) as i64;
    }
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k_of_s() {
        assert_eq!(Shard::parse("1/4"), Ok(Shard { index: 1, count: 4 }));
        assert_eq!(
            Shard::parse(" 0 / 1 ").map(|s| s.to_string()),
            Ok("0/1".into())
        );
        for bad in ["", "1", "2/2", "0/0", "-1/2", "a/2", "0/1025"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_function_is_pinned() {
        // Every instance, version and router must agree: these values never change.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let got: Vec<u32> = ["tenant-a", "tenant-b", "tenant-c", "tenant-d", "acme"]
            .iter()
            .map(|t| shard_of(t, 8))
            .collect();
        // As first computed; the FNV values above are the published ones.
        assert_eq!(got, [6, 4, 4, 1, 7]);
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn adding_a_shard_moves_tenants_only_to_it() {
        for i in 0..2000 {
            let tenant = format!("tenant-{i}");
            let (before, after) = (shard_of(&tenant, 4), shard_of(&tenant, 5));
            assert!(
                after == before || after == 4,
                "{tenant}: {before} -> {after}"
            );
        }
    }

    #[test]
    fn tenants_spread_over_the_shards() {
        let mut per = [0u32; 4];
        for i in 0..4000 {
            per[shard_of(&format!("tenant-{i}"), 4) as usize] += 1;
        }
        assert!(per.iter().all(|n| (800..1200).contains(n)), "{per:?}");
    }

    #[test]
    fn a_shard_owns_its_tenants_only() {
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        for i in 0..100 {
            let tenant = format!("t{i}");
            assert_eq!(shards.iter().filter(|s| s.owns(&tenant)).count(), 1);
        }
    }
}
