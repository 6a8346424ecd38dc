//! The holder's lease, on CLOCK_BOOTTIME nanoseconds (monotonic, and counting
//! time the machine spent suspended or paused): the clock the fence
//! process shares with the agent on the same machine.

use std::time::Duration;

use crate::config::LeaseConfig;

/// Now on CLOCK_BOOTTIME, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
        // CLOCK_BOOTTIME cannot fail on Linux; 0 makes every deadline "passed".
        Err(_) => 0,
    }
}

/// When the holder must have stopped signing, given the send time of its last
/// acknowledged renew: `sent + session_ttl - fence_margin`. The server never
/// invalidates before `sent + session_ttl`, and nobody acquires before a
/// further `lock_delay`: the margin plus the delay is the safety gap.
pub fn deadline_ns(lease: &LeaseConfig, sent_ns: u64) -> u64 {
    sent_ns + nanos(lease.session_ttl) - nanos(lease.fence_margin)
}

/// Time left until `deadline_ns`, zero if passed.
pub fn remaining(deadline_ns: u64, now_ns: u64) -> Duration {
    Duration::from_nanos(deadline_ns.saturating_sub(now_ns))
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deadline is the renew's send time plus TTL minus the margin, never later.
    #[test]
    fn deadline_counts_from_the_send_time() {
        let lease = LeaseConfig::from_ttl(Duration::from_secs(6));
        assert_eq!(deadline_ns(&lease, 1_000), 1_000 + 4_000_000_000);
        assert_eq!(remaining(5_000, 6_000), Duration::ZERO);
        assert_eq!(remaining(6_000, 5_000), Duration::from_nanos(1_000));
    }

    /// The monotonic clock moves forward.
    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() > a);
    }
}
