//! Seeded fault schedules: what to break, whom, for how long, in what order.
//! A schedule is a pure function of (seed, length, hosts, session TTL), so the
//! seed printed by a failing run replays the same faults in the same order with
//! the same durations; whom "holder" and "leader" name is decided when each
//! step starts, from the cluster as it then is.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::Rng as _;
use rand::SeedableRng as _;

/// One kind of fault. See docs/testing.md for what each models in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The host's switch port goes down: it reaches nobody, nobody reaches it.
    Isolate,
    /// The hosts split into a majority and a minority (the target and, with 5
    /// hosts, one more) that reach only their own side.
    Split,
    /// Everything the host receives is dropped; what it sends still arrives.
    DropInbound,
    /// Everything the host sends is dropped; what it receives still arrives.
    DropOutbound,
    /// Random loss on the host's link, in both directions, and a rate limit
    /// (netem delay and loss instead when the kernel has netem).
    Lossy,
    /// `kill -9` of the agent (its neard is then fenced by its lease); started
    /// again on its data dir at the heal.
    KillAgent,
    /// `kill -9` of neard only; the agent's supervisor deals with it.
    KillNeard,
    /// `kill -9` of the agent and of neard at once.
    KillBoth,
    /// SIGSTOP of the agent for longer than the session TTL, then SIGCONT.
    Pause,
    /// `kill -9` of the agent and an immediate start on the same data dir.
    Restart,
    /// The agent's data disk (a small tmpfs) filled up, freed at the heal; an
    /// agent that exited meanwhile is started again, as systemd would.
    DiskFull,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 11] = [
        Kind::Isolate,
        Kind::Split,
        Kind::DropInbound,
        Kind::DropOutbound,
        Kind::Lossy,
        Kind::KillAgent,
        Kind::KillNeard,
        Kind::KillBoth,
        Kind::Pause,
        Kind::Restart,
        Kind::DiskFull,
    ];

    /// The name used in schedules and reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Isolate => "isolate",
            Kind::Split => "split",
            Kind::DropInbound => "drop-inbound",
            Kind::DropOutbound => "drop-outbound",
            Kind::Lossy => "lossy",
            Kind::KillAgent => "kill-agent",
            Kind::KillNeard => "kill-neard",
            Kind::KillBoth => "kill-both",
            Kind::Pause => "pause",
            Kind::Restart => "restart",
            Kind::DiskFull => "disk-full",
        }
    }

    /// The kind called `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the fault needs a host that runs neard (a validator).
    pub fn needs_neard(self) -> bool {
        matches!(self, Kind::KillNeard | Kind::KillBoth)
    }
}

/// Whom a step hits, resolved when the step starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The validator holding the lock (signing).
    Holder,
    /// The Raft leader.
    Leader,
    /// Host number `n` modulo the eligible hosts (all hosts, or the validators
    /// for faults that need neard).
    Host(usize),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Holder => write!(f, "holder"),
            Target::Leader => write!(f, "leader"),
            Target::Host(n) => write!(f, "host#{n}"),
        }
    }
}

/// One step: inject `kind` on `target`, keep it for `hold`, heal, wait `settle`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: Kind,
    pub target: Target,
    pub hold: Duration,
    pub settle: Duration,
    /// Loss in percent, for `Lossy`.
    pub loss_percent: u32,
    /// A random number for choices made when the step starts (the second host
    /// of a 5-host minority).
    pub pick: u64,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} for {:.1}s",
            self.kind.name(),
            self.target,
            self.hold.as_secs_f64()
        )?;
        if self.kind == Kind::Lossy {
            write!(f, " ({}% loss)", self.loss_percent)?;
        }
        write!(f, ", settle {:.1}s", self.settle.as_secs_f64())
    }
}

/// `steps` steps for a cluster of `hosts` hosts whose sessions live `ttl`.
///
/// Kinds are dealt from shuffled decks holding every kind once, so any
/// `Kind::ALL.len()` consecutive steps of a deck cover every kind. Half the
/// steps hit the lock holder, a quarter the Raft leader, the rest a random
/// host. Network faults last from under to over the TTL (some force a
/// takeover, some must not); a pause always outlasts it.
/// Only `kinds` are dealt (normally [`Kind::ALL`]).
pub fn generate(seed: u64, steps: usize, hosts: usize, ttl: Duration, kinds: &[Kind]) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut deck: Vec<Kind> = Vec::new();
    let ttl_ms = ttl.as_millis() as u64;
    (0..steps)
        .map(|_| {
            if deck.is_empty() {
                deck = kinds.to_vec();
                deck.shuffle(&mut rng);
            }
            let kind = deck.pop().unwrap_or(Kind::Isolate);
            let target = match rng.gen_range(0..4) {
                0 | 1 => Target::Holder,
                2 => Target::Leader,
                _ => Target::Host(rng.gen_range(0..hosts)),
            };
            let hold_ms = match kind {
                Kind::Pause => ttl_ms + rng.gen_range(1_000..=ttl_ms.max(1_000)),
                Kind::Restart => 0,
                Kind::KillNeard => rng.gen_range(1_000..=3_000),
                Kind::KillAgent | Kind::KillBoth => rng.gen_range(500..=ttl_ms + 2_000),
                Kind::Lossy | Kind::DiskFull => rng.gen_range(2_000..=ttl_ms * 2),
                Kind::Isolate | Kind::Split | Kind::DropInbound | Kind::DropOutbound => {
                    rng.gen_range(ttl_ms / 2..=ttl_ms * 2)
                }
            };
            Step {
                kind,
                target,
                hold: Duration::from_millis(hold_ms),
                settle: Duration::from_millis(rng.gen_range(1_000..=4_000)),
                loss_percent: rng.gen_range(5..=40),
                pick: rng.gen(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed gives the same schedule; another seed another one.
    #[test]
    fn a_seed_replays_its_schedule() {
        let ttl = Duration::from_secs(6);
        assert_eq!(generate(7, 30, 3, ttl, &Kind::ALL), generate(7, 30, 3, ttl, &Kind::ALL));
        assert_ne!(generate(7, 30, 3, ttl, &Kind::ALL), generate(8, 30, 3, ttl, &Kind::ALL));
    }

    /// Every deck covers every kind, and pauses outlast the TTL.
    #[test]
    fn decks_cover_every_kind_and_pauses_outlast_the_ttl() {
        let ttl = Duration::from_secs(3);
        let steps = generate(1, Kind::ALL.len() * 3, 5, ttl, &Kind::ALL);
        for deck in steps.chunks(Kind::ALL.len()) {
            let mut kinds: Vec<Kind> = deck.iter().map(|s| s.kind).collect();
            kinds.sort();
            assert_eq!(kinds, Kind::ALL.to_vec());
        }
        assert!(steps.iter().filter(|s| s.kind == Kind::Pause).all(|s| s.hold > ttl));
    }
}
