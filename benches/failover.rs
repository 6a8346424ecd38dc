//! Validator failover benchmarks: the signing gap (the old signer's last
//! signature to the new signer's first, from fake-neard's ledger) with two
//! validator agents running fake-neard and an arbiter, release binaries:
//!
//! 1. hard crash of the holder: kill -9 of its agent and of its neard
//!    (`supervisor.neard_pid` in `/v1/status`); the agent is restarted and waited
//!    for as a standby before the next run;
//! 2. graceful handover: `POST /v1/handover` on the holder, to a standby that
//!    is not holding off; and again, handing the lock straight back to the node
//!    that just handed it over (while it still holds off after its handover);
//! 3. a Raft leader crash that is not the holder (kill -9 of the leader's agent):
//!    the holder should keep signing; the longest silence in the ledger shows
//!    whether it did;
//! 4. partitioned holder: its host cut off the network (network namespaces, see
//!    `tests/netns/`; needs root, else skipped with the reason), in odd runs a
//!    holder that also leads Raft, in even runs one that does not (arranged
//!    with a handover, or a kill -9 and restart of a leading arbiter). The cut
//!    lasts until the standby signs; after the heal the old holder must come
//!    back as a standby.
//!
//! Scenarios 1-3 run on `failoverd::local_cluster::LocalCluster` (127.0.0.1).
//! Each runs `FAILOVERD_BENCH_RUNS` times (default 10) on one cluster per
//! profile: the default (`session_ttl` 6 s) and a fast one (3 s). fake-neard
//! signs every `FAKE_NEARD_BLOCK_MS` = 50 ms, the resolution of every gap.
//! Ends with kuutamod's numbers computed from its constants, for comparison.
//!
//! Run with `cargo bench --bench failover` (as root for scenario 4). Numbers are
//! printed, not asserted, except that no two nodes may ever sign at once.

#[path = "../tests/netns/mod.rs"]
mod netns;

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use failoverd::ledger;
use failoverd::local_cluster::LocalCluster;
use failoverd::raft::Role;
use netns::validators::last_signature_before;
use netns::validators::longest_silence_ms;
use netns::validators::monotonic_ns;
use netns::validators::wait_signing;
use netns::validators::wait_signing_now;
use netns::NetCluster;
use serde_json::Value;

const ROLES: [Role; 3] = [Role::Validator, Role::Validator, Role::Arbiter];
const VALIDATORS: [usize; 2] = [0, 1];
const ALL: [usize; 3] = [0, 1, 2];
/// fake-neard's block interval, in ms.
const BLOCK_MS: u64 = 50;
/// How long anything may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(90);

/// A lease profile: a name and its `session_ttl` (the rest follows from it).
#[derive(Clone, Copy)]
struct Profile {
    name: &'static str,
    ttl_secs: u64,
}

const PROFILES: [Profile; 2] = [
    Profile {
        name: "default",
        ttl_secs: 6,
    },
    Profile {
        name: "fast",
        ttl_secs: 3,
    },
];

impl Profile {
    fn lock_toml(self) -> String {
        format!("[lock]\nsession_ttl = \"{}s\"\n", self.ttl_secs)
    }

    /// renew_interval / lock_delay / fence_margin, as `LeaseConfig::from_ttl` derives them.
    fn describe(self) -> String {
        let ttl = self.ttl_secs as f64;
        format!(
            "session_ttl {ttl}s, renew_interval {}s, lock_delay {}s, fence_margin {}s",
            ttl / 6.0,
            ttl / 3.0,
            ttl / 3.0
        )
    }
}

/// One measurement: milliseconds, and whether the holder was the Raft leader.
#[derive(Clone, Copy)]
struct Sample {
    ms: f64,
    holder_led: bool,
}

/// What was measured, per scenario and profile.
struct Results {
    rows: Vec<(String, Profile, Vec<Sample>, String)>,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

/// "median / max (n)" in seconds.
fn summary(samples: &[Sample], filter: impl Fn(&Sample) -> bool) -> String {
    let ms: Vec<f64> = samples.iter().filter(|s| filter(s)).map(|s| s.ms).collect();
    if ms.is_empty() {
        return "-".to_string();
    }
    format!("{:.2} / {:.2} s (n={})", median(&ms) / 1e3, max(&ms) / 1e3, ms.len())
}

/// A LocalCluster of two fake-neard validators and an arbiter.
struct Local {
    cluster: LocalCluster,
    ledger: PathBuf,
    http: reqwest::Client,
}

impl Local {
    fn new(profile: Profile) -> Local {
        let bin: PathBuf = env!("CARGO_BIN_EXE_failoverd").into();
        // The sibling of failoverd in the same target dir, built with it.
        let fake_neard: PathBuf = env!("CARGO_BIN_EXE_fake-neard").into();
        let mut cluster = LocalCluster::create(bin, &ROLES, |_| String::new()).expect("create cluster");
        cluster
            .with_neard(&fake_neard, &profile.lock_toml())
            .expect("fake-neard homes");
        cluster.set_env("FAKE_NEARD_BLOCK_MS", &BLOCK_MS.to_string());
        cluster.set_env("RUST_LOG", "info,openraft=warn");
        for i in ALL {
            cluster.start(i).expect("start agent");
        }
        let ledger = cluster.ledger();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Local { cluster, ledger, http }
    }

    fn name(&self, i: usize) -> String {
        self.cluster.nodes[i].name.clone()
    }

    async fn status(&self, i: usize) -> Option<Value> {
        let url = format!("http://{}/v1/status", self.cluster.nodes[i].api);
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    async fn state(&self, i: usize) -> Option<String> {
        let status = self.status(i).await?;
        status
            .pointer("/supervisor/state")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    async fn wait_state(&self, i: usize, want: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.state(i).await.as_deref() != Some(want) {
            assert!(Instant::now() < deadline, "{} never reached {want}", self.name(i));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Validating validator, once there is one; the other is waited for as a
    /// Voting standby and the holder as signing.
    async fn holder_and_standby(&self) -> (usize, usize) {
        let deadline = Instant::now() + PATIENCE;
        let holder = loop {
            let mut found = None;
            for i in VALIDATORS {
                if self.state(i).await.as_deref() == Some("Validating") {
                    found = Some(i);
                }
            }
            if let Some(i) = found {
                break i;
            }
            assert!(Instant::now() < deadline, "no validator took the lock");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let standby = 1 - holder;
        self.wait_state(standby, "Voting").await;
        wait_signing_now(&self.ledger, &self.name(holder)).await;
        (holder, standby)
    }

    /// `supervisor.neard_pid` of node `i` (refreshed with each health check), within 3 s.
    async fn neard_pid(&self, i: usize) -> Option<u32> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let pid = self
                .status(i)
                .await
                .and_then(|s| s.pointer("/supervisor/neard_pid").and_then(Value::as_u64));
            if pid.is_some() || Instant::now() > deadline {
                return pid.map(|p| p as u32);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn leader(&self) -> usize {
        self.cluster
            .wait_leader(&ALL, PATIENCE)
            .await
            .expect("an agreed Raft leader")
    }

    /// POST /v1/handover on `i`, retried while it sees no synced standby yet.
    async fn handover(&self, i: usize, to: Option<&str>) {
        let url = format!("http://{}/v1/handover", self.cluster.nodes[i].api);
        let body = to.map_or(String::new(), |to| serde_json::json!({ "to": to }).to_string());
        let deadline = Instant::now() + PATIENCE;
        loop {
            let resp = self.http.post(&url).body(body.clone()).send().await.expect("handover");
            if resp.status().is_success() {
                return;
            }
            let why = resp.text().await.unwrap_or_default();
            assert!(
                why.contains("no synced standby") && Instant::now() < deadline,
                "handover refused: {why}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The gap between `old`'s last signature before `new` started and `new`'s
    /// first signature after `since_ns`.
    async fn gap_ms(&self, old: usize, new: usize, since_ns: u64) -> f64 {
        let first = wait_signing(&self.ledger, &self.name(new), since_ns).await.first_ns;
        let last = last_signature_before(&self.ledger, &self.name(old), u64::MAX).unwrap_or(0);
        (first as f64 - last as f64) / 1e6
    }

    fn overlaps(&self) -> usize {
        ledger::overlaps(&ledger::tenures(&self.ledger)).len()
    }
}

/// The pids in `/proc/<pid>/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// neard under the agent's fence (`failoverd fence -- neard ...`), found in /proc.
fn neard_from_proc(agent: u32) -> Option<u32> {
    children(agent)
        .into_iter()
        .filter(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/cmdline"))
                .is_ok_and(|cmd| cmd.split('\0').nth(1) == Some("fence"))
        })
        .find_map(|fence| children(fence).into_iter().next())
}

/// kill -9 of the holder's agent and its neard; restart the agent.
async fn hard_crash(local: &mut Local, runs: u64) -> Vec<Sample> {
    let mut samples = Vec::new();
    for run in 1..=runs {
        let (holder, standby) = local.holder_and_standby().await;
        let holder_led = local.leader().await == holder;
        let agent = local.cluster.nodes[holder].pid().expect("agent pid");
        let neard = match local.neard_pid(holder).await {
            Some(pid) => pid,
            None => {
                println!("  (no supervisor.neard_pid in /v1/status within 3 s: neard found in /proc)");
                neard_from_proc(agent).expect("the holder's neard in /proc")
            }
        };
        let t = monotonic_ns();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(neard as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        local.cluster.kill9(holder);
        let ms = local.gap_ms(holder, standby, t).await;
        println!(
            "  run {run}: kill -9 {} (agent and neard {neard}{}): {} signs after a {ms:.0} ms gap",
            local.name(holder),
            if holder_led { ", also the Raft leader" } else { "" },
            local.name(standby)
        );
        samples.push(Sample { ms, holder_led });
        local.cluster.start(holder).expect("restart agent");
        local.wait_state(holder, "Voting").await;
    }
    samples
}

/// POST /v1/handover on the holder. `spaced`: the next handover waits until
/// the old holder's hold-off after its own handover (4 x renew_interval, at
/// least 2 s) is over; otherwise it comes as soon as the old holder is a
/// standby again, so the lock is handed back to a node still holding off.
async fn graceful(local: &mut Local, runs: u64, profile: Profile, spaced: bool) -> Vec<Sample> {
    let hold_off = Duration::from_secs_f64((profile.ttl_secs as f64 / 6.0 * 4.0).max(2.0));
    let mut samples = Vec::new();
    for run in 1..=runs {
        let (holder, standby) = local.holder_and_standby().await;
        let holder_led = local.leader().await == holder;
        let t = monotonic_ns();
        let handed = Instant::now();
        local.handover(holder, None).await;
        let ms = local.gap_ms(holder, standby, t).await;
        println!(
            "  run {run}: handover from {} to {}: {ms:.0} ms gap",
            local.name(holder),
            local.name(standby)
        );
        samples.push(Sample { ms, holder_led });
        local.wait_state(holder, "Voting").await;
        if spaced {
            let wait = (handed + hold_off + Duration::from_millis(200)).saturating_duration_since(Instant::now());
            tokio::time::sleep(wait).await;
        }
    }
    samples
}

/// kill -9 of the Raft leader while it is not the holder; the longest silence
/// in the ledger from the kill until 2 s after a new leader is agreed.
async fn leader_crash(local: &mut Local, runs: u64) -> Vec<Sample> {
    let mut samples = Vec::new();
    for run in 1..=runs {
        let (mut holder, _) = local.holder_and_standby().await;
        let mut leader = local.leader().await;
        if leader == holder {
            // Move the lock off the leader first.
            local.handover(holder, None).await;
            local.wait_state(1 - holder, "Validating").await;
            (holder, _) = local.holder_and_standby().await;
            leader = local.leader().await;
        }
        if leader == holder {
            println!("  run {run}: skipped (the holder leads again)");
            continue;
        }
        let t = monotonic_ns();
        local.cluster.kill9(leader);
        let survivors: Vec<usize> = ALL.into_iter().filter(|&i| i != leader).collect();
        let new_leader = local.cluster.wait_leader(&survivors, PATIENCE).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ms = longest_silence_ms(&local.ledger, t, monotonic_ns());
        let after = local.state(holder).await.unwrap_or_default();
        println!(
            "  run {run}: kill -9 the Raft leader {} (holder {}): new leader {:?}, longest signing silence {ms:.0} ms, holder now {after}",
            local.name(leader),
            local.name(holder),
            new_leader.map(|i| local.name(i))
        );
        samples.push(Sample { ms, holder_led: false });
        local.cluster.start(leader).expect("restart agent");
        local.leader().await;
        if leader != 2 {
            local.wait_state(leader, "Voting").await;
        }
    }
    samples
}

/// Cuts the holder's host off (network namespaces).
async fn partitioned(profile: Profile, runs: u64) -> Option<(Vec<Sample>, String)> {
    let mut cluster = NetCluster::new(&["validator", "validator", "arbiter"])?;
    let ledger = cluster.with_fake_neard(&profile.lock_toml(), BLOCK_MS);
    cluster.start_all();
    let mut samples = Vec::new();
    let mut healed_badly = 0;
    for run in 1..=runs {
        // Odd runs cut off a holder that also leads Raft, even runs one that does not.
        cluster.arrange(&ledger, run % 2 == 1).await;
        let r = cluster.partition_the_holder(&ledger, Duration::from_millis(500)).await;
        let (old, new) = (&cluster.hosts[r.holder].name, &cluster.hosts[r.standby].name);
        let clean = r.signers_after_heal == vec![new.clone()];
        healed_badly += usize::from(!clean);
        println!(
            "  run {run}: cut off {old}{}: {new} signs after a {:.0} ms gap (old's last signature {:+.0} ms after the cut); \
             after the heal: signers {:?}, Raft term {} -> {}",
            if r.holder_led { " (also the Raft leader)" } else { "" },
            r.gap_ms(),
            (r.old_last_ns as f64 - r.cut_ns as f64) / 1e6,
            r.signers_after_heal,
            r.term_at_heal,
            r.term_after
        );
        assert_eq!(r.overlaps, 0, "two signers at once in {}", ledger.display());
        samples.push(Sample {
            ms: r.gap_ms(),
            holder_led: r.holder_led,
        });
    }
    let note = format!("{healed_badly} of {runs} heals were followed by another change of signer");
    Some((samples, note))
}

fn print_kuutamod() {
    println!("\nkuutamod, computed from its constants (not measured): session TTL 30 s, renew every 10 s,");
    println!("LockDelay 0, acquire polled every 1 s, step-down after 25 s without a renew, neard stop timeout 60 s;");
    println!("Consul invalidates a session between TTL and 2 x TTL after its last renew.");
    println!(
        "  hard crash (kill -9 of kuutamod and neard): the session expires 30..60 s after the last renew,\n    \
         which was 0..10 s before the crash: gap ~20..60 s, + up to 1 s poll + the new neard's restart"
    );
    println!(
        "  graceful (SIGTERM to kuutamod): old neard stopped (up to 60 s), session destroyed, acquired within 1 s,\n    \
         the new node's voter neard stopped (up to 60 s) and restarted as validator: gap ~ two neard restarts + <= 1 s"
    );
    println!(
        "  partitioned holder: it signs until 25 s without a renew, plus up to 60 s of SIGTERM grace (<= 85 s after\n    \
         its last renew), while the lock may pass 30 s after that renew (LockDelay 0), or sooner through the\n    \
         session's serfHealth check: no gap is guaranteed, ~55 s or more of two signers"
    );
}

async fn bench(runs: u64, results: &mut Results) {
    for profile in PROFILES {
        println!("\n== LocalCluster, {} profile ({})", profile.name, profile.describe());
        let mut local = Local::new(profile);
        local.holder_and_standby().await;
        let started = Instant::now();
        println!("hard crash of the holder:");
        let crash = hard_crash(&mut local, runs).await;
        println!("graceful handover (to a standby that is not holding off):");
        let handover = graceful(&mut local, runs, profile, true).await;
        println!("graceful handover back as soon as the previous holder is Voting again:");
        let back = graceful(&mut local, runs, profile, false).await;
        println!("Raft leader crash (not the holder):");
        let leader = leader_crash(&mut local, runs).await;
        let overlaps = local.overlaps();
        println!(
            "overlapping signers in {} tenures: {overlaps}; took {:.0} s",
            ledger::tenures(&local.ledger).len(),
            started.elapsed().as_secs_f64()
        );
        assert_eq!(overlaps, 0, "two signers at once: see {}", local.ledger.display());
        let interrupted = leader.iter().filter(|s| s.ms > 1000.0).count();
        results.rows.push((
            "hard crash (kill -9 agent + neard)".into(),
            profile,
            crash,
            String::new(),
        ));
        results
            .rows
            .push(("graceful handover".into(), profile, handover, String::new()));
        results.rows.push((
            "graceful handover back within the hold-off".into(),
            profile,
            back,
            "to the node that handed over last".into(),
        ));
        results.rows.push((
            "Raft leader crash, longest silence".into(),
            profile,
            leader.clone(),
            format!("{interrupted} of {} runs interrupted signing for > 1 s", leader.len()),
        ));
    }
    for profile in PROFILES {
        println!(
            "\n== network namespaces, {} profile ({})",
            profile.name,
            profile.describe()
        );
        let started = Instant::now();
        match partitioned(profile, runs).await {
            Some((samples, note)) => {
                println!("{note}; took {:.0} s", started.elapsed().as_secs_f64());
                results.rows.push(("partitioned holder".into(), profile, samples, note));
            }
            None => println!("partitioned holder: skipped (see above)"),
        }
    }
}

fn print_table(results: &Results) {
    println!("\n| scenario | profile | median / max | holder was Raft leader | holder was not | min | note |");
    println!("|---|---|---|---|---|---|---|");
    for (name, profile, samples, note) in &results.rows {
        let ms: Vec<f64> = samples.iter().map(|s| s.ms).collect();
        println!(
            "| {name} | {} (ttl {}s) | {} | {} | {} | {:.2} s | {note} |",
            profile.name,
            profile.ttl_secs,
            summary(samples, |_| true),
            summary(samples, |s| s.holder_led),
            summary(samples, |s| !s.holder_led),
            min(&ms) / 1e3,
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` run of benches passes nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = env_or("FAILOVERD_BENCH_RUNS", 10);
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut results = Results { rows: Vec::new() };
    runtime.block_on(bench(runs, &mut results));
    print_table(&results);
    print_kuutamod();
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
}
