//! When generations are sealed: at `offset` past each multiple of `interval` of wall-clock
//! time, so that nodes with the same settings seal at the same moments.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first seal time strictly after `now`.
pub fn next_seal(now: SystemTime, interval: Duration, offset: Duration) -> SystemTime {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let i = interval.as_nanos().max(1);
    let o = offset.as_nanos() % i;
    let t = since.as_nanos();
    // Start of the current interval, shifted by the offset.
    let mut next = (t.saturating_sub(o) / i) * i + o;
    while next <= t {
        next += i;
    }
    UNIX_EPOCH + Duration::from_nanos(next.min(u64::MAX as u128) as u64)
}

/// The round a seal at `at` belongs to: which multiple of `interval` (shifted by `offset`)
/// it falls in. Tiers with the same interval agree on it whatever their offsets, which is
/// how a parent tells whether a child has delivered the current round.
pub fn round_of(at: SystemTime, interval: Duration, offset: Duration) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let i = interval.as_nanos().max(1);
    let o = offset.as_nanos() % i;
    (since.saturating_sub(o) / i).min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn seals_at_offset_past_each_interval() {
        let (i, o) = (Duration::from_secs(60), Duration::from_secs(5));
        assert_eq!(next_seal(at(0), i, o), at(5_000));
        assert_eq!(next_seal(at(4_999), i, o), at(5_000));
        assert_eq!(next_seal(at(5_000), i, o), at(65_000), "strictly after now");
        assert_eq!(next_seal(at(64_000), i, o), at(65_000));
        assert_eq!(next_seal(at(125_001), i, o), at(185_000));
    }

    #[test]
    fn tiers_with_other_offsets_agree_on_the_round() {
        let i = Duration::from_secs(60);
        let edge = next_seal(at(61_000), i, Duration::from_secs(5));
        let proxy = next_seal(at(61_000), i, Duration::from_secs(20));
        assert_eq!(round_of(edge, i, Duration::from_secs(5)), 1);
        assert_eq!(round_of(proxy, i, Duration::from_secs(20)), 1);
        // Sealed a little late still counts for its round.
        assert_eq!(round_of(at(66_200), i, Duration::from_secs(5)), 1);
    }

    #[test]
    fn sub_second_intervals() {
        let (i, o) = (Duration::from_millis(250), Duration::from_millis(50));
        assert_eq!(next_seal(at(1_000), i, o), at(1_050));
        assert_eq!(next_seal(at(1_050), i, o), at(1_300));
    }
}
