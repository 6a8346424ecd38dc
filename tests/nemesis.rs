//! The nemesis suite (see `tests/faults/mod.rs` and docs/testing.md): seeded
//! schedules of network, process and pause faults against agents on separate
//! network-namespace hosts, with a Consul-API workload, checked for two
//! signers, LockIndex anomalies, lost acknowledged writes, divergence and
//! liveness after the final heal.
//!
//! `cargo test` runs short schedules with fixed seeds (a few minutes in all);
//! `FAILOVERD_NEMESIS_SEED=<n>` replays one seed instead. The soak is ignored
//! by default:
//!
//! ```text
//! FAILOVERD_NEMESIS_DURATION=30m [FAILOVERD_NEMESIS_SEED=<n>] [FAILOVERD_NEMESIS_HOSTS=5] \
//!   [FAILOVERD_NEMESIS_TTL=6s] cargo test --release --test nemesis -- --ignored --nocapture soak
//! ```
//!
//! Run as root; elsewhere each test prints why it skips, unless
//! `FAILOVERD_REQUIRE_NETNS=1`. The tests run one after the other.

mod faults;
mod netns;

use std::time::Duration;

use faults::Options;

/// Two validators and an arbiter.
const THREE: [&str; 3] = ["validator", "validator", "arbiter"];
/// Three validators and two arbiters.
const FIVE: [&str; 5] = ["validator", "validator", "validator", "arbiter", "arbiter"];
/// Steps of a short schedule.
const SHORT_STEPS: usize = 6;
/// The short schedules use the fast lock profile so that pauses (which must
/// outlast the TTL) and takeovers fit in a CI run.
const SHORT_TTL: Duration = Duration::from_secs(3);

/// The timings mean something only if runs do not share the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `FAILOVERD_NEMESIS_<name>`, if set.
fn env(name: &str) -> Option<String> {
    std::env::var(format!("FAILOVERD_NEMESIS_{name}")).ok()
}

/// The seed to replay, if one is given.
fn replay_seed() -> Option<u64> {
    env("SEED").map(|s| s.parse().expect("FAILOVERD_NEMESIS_SEED must be a number"))
}

/// The kinds in `FAILOVERD_NEMESIS_KINDS` (comma-separated), else all.
fn kinds() -> Vec<faults::schedule::Kind> {
    use faults::schedule::Kind;
    match env("KINDS") {
        None => Kind::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|name| {
                Kind::parse(name.trim()).unwrap_or_else(|| {
                    let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                    panic!("FAILOVERD_NEMESIS_KINDS: no fault kind {name:?} (known: {known:?})")
                })
            })
            .collect(),
    }
}

/// Runs `opts` and fails on any violation (the report is printed either way).
async fn check(opts: Options) {
    let Some(report) = faults::run(opts.clone()).await else {
        return;
    };
    assert!(
        report.violations.is_empty(),
        "seed {} found {} violation(s):\n{}",
        opts.seed,
        report.violations.len(),
        report.violations.join("\n")
    );
}

/// Two validators and an arbiter through short schedules of three seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_survive_short_fault_schedules() {
    let _serial = SERIAL.lock().await;
    let seeds = replay_seed().map_or(vec![1, 2, 3], |s| vec![s]);
    for seed in seeds {
        check(Options {
            roles: THREE.to_vec(),
            seed,
            steps: SHORT_STEPS,
            duration: None,
            ttl: SHORT_TTL,
            kinds: kinds(),
        })
        .await;
    }
}

/// Three validators and two arbiters through a short schedule (minorities of two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hosts_survive_a_short_fault_schedule() {
    let _serial = SERIAL.lock().await;
    check(Options {
        roles: FIVE.to_vec(),
        seed: replay_seed().unwrap_or(5),
        steps: SHORT_STEPS,
        duration: None,
        ttl: SHORT_TTL,
        kinds: kinds(),
    })
    .await;
}

/// The soak: one cluster under a schedule for `FAILOVERD_NEMESIS_DURATION`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak: set FAILOVERD_NEMESIS_DURATION and run with --ignored (docs/testing.md)"]
async fn soak() {
    let _serial = SERIAL.lock().await;
    let duration = env("DURATION").map_or(Duration::from_secs(30 * 60), |d| {
        humantime::parse_duration(&d).expect("FAILOVERD_NEMESIS_DURATION, e.g. 30m")
    });
    let ttl = env("TTL").map_or(Duration::from_secs(6), |d| {
        humantime::parse_duration(&d).expect("FAILOVERD_NEMESIS_TTL, e.g. 6s")
    });
    let roles = match env("HOSTS").as_deref() {
        None | Some("3") => THREE.to_vec(),
        Some("5") => FIVE.to_vec(),
        Some(other) => panic!("FAILOVERD_NEMESIS_HOSTS must be 3 or 5, not {other}"),
    };
    check(Options {
        roles,
        seed: replay_seed().unwrap_or_else(rand::random),
        // More than fit: the duration ends the schedule.
        steps: (duration.as_secs() as usize).max(1),
        duration: Some(duration),
        ttl,
        kinds: kinds(),
    })
    .await;
}
