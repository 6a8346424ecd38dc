//! What only the Raft leader does, on its monotonic clock: session TTL timers
//! and lock-delays. Pure: every method takes `now`; `super::service` drives it.
//!
//! The rules (docs/lock-semantics.md has the argument):
//! * On taking office, every session's timer is set to `now + ttl` and every
//!   pending lock-delay to `now + delay`, whatever the previous leader had.
//! * A session seen for the first time (created) gets `now + ttl`; a renew
//!   resets it to `now + ttl` before the renew is confirmed by a quorum.
//! * A timer that fires marks the session expiring: the leader proposes its
//!   invalidation, and no renew of it succeeds any more.
//! * A lock-delay recorded by an invalidation runs from when this leader saw
//!   it applied; an acquire of that key is refused until it ends.

use std::collections::HashMap;
use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::state::LockState;

/// Timers and delays of one leader term.
#[derive(Debug)]
pub struct LeaderClock {
    /// The term this clock belongs to.
    pub term: u64,
    deadlines: HashMap<Uuid, Instant>,
    expiring: HashSet<Uuid>,
    /// Lock-delays: until when, and the index of the invalidation that set them.
    delays: HashMap<String, (Instant, u64)>,
    seen_delay_index: u64,
}

impl LeaderClock {
    /// The clock of a leader that took office in `term` at `now`.
    pub fn take_office(term: u64, state: &LockState, now: Instant) -> Self {
        let mut clock = LeaderClock {
            term,
            deadlines: HashMap::new(),
            expiring: HashSet::new(),
            delays: HashMap::new(),
            seen_delay_index: 0,
        };
        // Every pending delay counts from now, however old: the previous
        // leader's clock is unknown (conservative, as the issue allows).
        for (key, pending) in &state.pending_delays {
            clock.delays.insert(key.clone(), (now + pending.delay, pending.index));
            clock.seen_delay_index = clock.seen_delay_index.max(pending.index);
        }
        clock.observe(state, now);
        clock
    }

    /// Catches up with the applied state: arms timers of new sessions, drops
    /// those of removed ones, starts newly recorded lock-delays.
    pub fn observe(&mut self, state: &LockState, now: Instant) {
        self.deadlines.retain(|id, _| state.sessions.contains_key(id));
        self.expiring.retain(|id| state.sessions.contains_key(id));
        for (id, session) in &state.sessions {
            if let Some(ttl) = session.ttl {
                if !self.expiring.contains(id) {
                    self.deadlines.entry(*id).or_insert(now + ttl);
                }
            }
        }
        let mut newest = self.seen_delay_index;
        for (key, pending) in &state.pending_delays {
            if pending.index > self.seen_delay_index {
                self.delays.insert(key.clone(), (now + pending.delay, pending.index));
                newest = newest.max(pending.index);
            }
        }
        self.seen_delay_index = newest;
    }

    /// Lock-delays that have run out: dropped here, to be forgotten by the
    /// state through `LockDelayEnded` so no later leader re-arms them.
    pub fn take_ended_delays(&mut self, now: Instant) -> Vec<(String, u64)> {
        let ended: Vec<(String, u64)> = self
            .delays
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(k, (_, i))| (k.clone(), *i))
            .collect();
        for (key, _) in &ended {
            self.delays.remove(key);
        }
        ended
    }

    /// Resets a session's timer for a renew; `false` if the session is unknown
    /// to this leader or already expiring (the renew must fail).
    pub fn renew(&mut self, id: Uuid, ttl: Duration, now: Instant) -> bool {
        if self.expiring.contains(&id) {
            return false;
        }
        self.deadlines.insert(id, now + ttl);
        true
    }

    /// Whether a renew of `id` may still be acknowledged.
    pub fn is_live(&self, id: &Uuid) -> bool {
        !self.expiring.contains(id)
    }

    /// Sessions whose timer has fired; they are marked expiring.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Uuid> {
        let due: Vec<Uuid> = self
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.deadlines.remove(id);
            self.expiring.insert(*id);
        }
        due
    }

    /// The earliest timer or lock-delay end, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines
            .values()
            .chain(self.delays.values().map(|(until, _)| until))
            .min()
            .copied()
    }

    /// How much longer `key` is under a lock-delay, if it is.
    pub fn lock_delay_left(&self, key: &str, now: Instant) -> Option<Duration> {
        self.delays
            .get(key)
            .filter(|(until, _)| *until > now)
            .map(|(until, _)| *until - now)
    }

    /// When a session's timer fires, if armed.
    pub fn deadline(&self, id: &Uuid) -> Option<Instant> {
        self.deadlines.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::backend::Behavior;
    use crate::lock::state::LockCommand;

    fn state_with(ttl: Duration, delay: Duration) -> (LockState, Uuid) {
        let mut state = LockState::default();
        let id = Uuid::from_u128(1);
        let create = LockCommand::SessionCreate {
            id,
            name: "s".into(),
            node: "n".into(),
            ttl: Some(ttl),
            lock_delay: delay,
            behavior: Behavior::Release,
        };
        state.apply(1, &create);
        (state, id)
    }

    /// A new leader gives every session a full TTL from the moment it took office.
    #[test]
    fn taking_office_rearms_every_timer() {
        let (state, id) = state_with(Duration::from_secs(10), Duration::ZERO);
        let t0 = Instant::now();
        let clock = LeaderClock::take_office(3, &state, t0);
        assert_eq!(clock.deadline(&id), Some(t0 + Duration::from_secs(10)));
    }

    /// A renew pushes the deadline to a full TTL from the renew; the timer fires
    /// only after that, and then the session can no longer be renewed.
    #[test]
    fn renew_resets_and_expiry_is_final() {
        let ttl = Duration::from_secs(10);
        let (state, id) = state_with(ttl, Duration::ZERO);
        let t0 = Instant::now();
        let mut clock = LeaderClock::take_office(1, &state, t0);
        assert!(clock.renew(id, ttl, t0 + Duration::from_secs(8)));
        assert!(clock.take_expired(t0 + Duration::from_secs(17)).is_empty());
        assert_eq!(clock.take_expired(t0 + Duration::from_secs(18)), vec![id]);
        assert!(!clock.renew(id, ttl, t0 + Duration::from_secs(18)));
        assert!(!clock.is_live(&id));
        assert_eq!(clock.next_deadline(), None);
    }

    /// A lock-delay recorded by an invalidation blocks its key for the delay,
    /// counted from when the leader saw it; a new leader counts it from office.
    #[test]
    fn lock_delay_runs_from_observation_and_from_office() {
        let (mut state, id) = state_with(Duration::from_secs(10), Duration::from_secs(5));
        state.apply(
            2,
            &LockCommand::KvAcquire {
                key: "k".into(),
                value: vec![],
                flags: 0,
                session: id,
            },
        );
        let t0 = Instant::now();
        let mut clock = LeaderClock::take_office(1, &state, t0);
        assert_eq!(clock.lock_delay_left("k", t0), None);
        state.apply(3, &LockCommand::SessionDestroy { id });
        let t1 = t0 + Duration::from_secs(1);
        clock.observe(&state, t1);
        assert_eq!(clock.lock_delay_left("k", t1), Some(Duration::from_secs(5)));
        assert_eq!(clock.lock_delay_left("k", t1 + Duration::from_secs(5)), None);
        // A leader elected later still refuses for a full delay from its office.
        let t2 = t0 + Duration::from_secs(100);
        let next = LeaderClock::take_office(2, &state, t2);
        assert_eq!(next.lock_delay_left("k", t2), Some(Duration::from_secs(5)));
    }

    /// Sessions without a TTL never get a timer; removed sessions lose theirs.
    #[test]
    fn only_ttl_sessions_are_timed() {
        let mut state = LockState::default();
        let id = Uuid::from_u128(7);
        let create = LockCommand::SessionCreate {
            id,
            name: "s".into(),
            node: "n".into(),
            ttl: None,
            lock_delay: Duration::ZERO,
            behavior: Behavior::Release,
        };
        state.apply(1, &create);
        let clock = LeaderClock::take_office(1, &state, Instant::now());
        assert_eq!(clock.next_deadline(), None);
        let (mut state, id) = state_with(Duration::from_secs(10), Duration::ZERO);
        let now = Instant::now();
        let mut clock = LeaderClock::take_office(1, &state, now);
        state.apply(2, &LockCommand::SessionDestroy { id });
        clock.observe(&state, now);
        assert_eq!(clock.deadline(&id), None);
    }

    /// A lock-delay that ran out is reported once; recording its end in the
    /// state means a later leader does not re-arm it (but a newer one stays).
    #[test]
    fn ended_lock_delays_are_forgotten() {
        let (mut state, id) = state_with(Duration::from_secs(10), Duration::from_secs(5));
        state.apply(
            2,
            &LockCommand::KvAcquire {
                key: "k".into(),
                value: vec![],
                flags: 0,
                session: id,
            },
        );
        let t0 = Instant::now();
        let mut clock = LeaderClock::take_office(1, &state, t0);
        state.apply(3, &LockCommand::SessionDestroy { id });
        clock.observe(&state, t0);
        assert!(clock.take_ended_delays(t0 + Duration::from_secs(4)).is_empty());
        let ended = clock.take_ended_delays(t0 + Duration::from_secs(5));
        assert_eq!(ended, vec![("k".to_string(), 3)]);
        assert!(
            clock.take_ended_delays(t0 + Duration::from_secs(6)).is_empty(),
            "reported once"
        );
        // A stale end (older index) does not remove a newer delay.
        assert_eq!(
            state.apply(
                4,
                &LockCommand::LockDelayEnded {
                    key: "k".into(),
                    index: 2
                }
            ),
            crate::lock::state::LockResult::Bool(false)
        );
        state.apply(
            5,
            &LockCommand::LockDelayEnded {
                key: "k".into(),
                index: 3,
            },
        );
        let next = LeaderClock::take_office(2, &state, t0 + Duration::from_secs(100));
        assert_eq!(next.lock_delay_left("k", t0 + Duration::from_secs(100)), None);
    }
}
