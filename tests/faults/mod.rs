//! The nemesis: seeded fault schedules against real agents on namespaced hosts
//! (see `tests/netns/`), with a Consul-API client workload and a checker over
//! everything recorded. `tests/nemesis.rs` holds the entry points and
//! docs/testing.md explains how to run, replay and soak.
//!
//! One run:
//! 1. build the hosts (validators run fake-neard, all signing to one ledger),
//!    start the agents, wait for a leader and a signer;
//! 2. start the workload (`workload.rs`) on every host;
//! 3. for each step of the schedule (`schedule.rs`): resolve the target,
//!    inject the fault, hold it, heal everything (network, impairments, stopped
//!    or killed agents), let the cluster settle;
//! 4. after the final heal: wait for a signer, stop the workload, wait for every
//!    host to reach the same applied index and state digest, read every key back;
//! 5. check (`check.rs`) and print the report; any violation fails the run.
//!
//! Every wait is bounded; the report is printed (past the test's output
//! capture) whether the run passes or not.

pub mod check;
pub mod schedule;
pub mod workload;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use failoverd::config::LeaseConfig;
use failoverd::ledger;
use serde_json::Value;

use crate::netns::topology::say;
use crate::netns::validators::monotonic_ns;
use crate::netns::validators::ACCOUNT_ID;
use crate::netns::NetCluster;
use crate::netns::PATIENCE;
use schedule::Kind;
use schedule::Step;
use schedule::Target;
use workload::Workload;

/// After the final heal a validator must sign within session TTL, lock-delay
/// and this slack: the time for the Raft election a heal can cause (a few
/// election timeouts), a restarted agent to start and neard to come up.
pub const LIVENESS_SLACK: Duration = Duration::from_secs(10);

/// fake-neard's block interval: the ledger's resolution.
const BLOCK_MS: u64 = 50;

/// Size of every host's data disk (a tmpfs, so `disk-full` can fill it).
const DISK_MIB: u64 = 64;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// One role per host ("validator" or "arbiter").
    pub roles: Vec<&'static str>,
    pub seed: u64,
    /// Steps to run, or, with `duration`, the most to run.
    pub steps: usize,
    /// Stop starting steps after this long (a soak).
    pub duration: Option<Duration>,
    /// The validators' `lock.session_ttl`.
    pub ttl: Duration,
    /// The kinds of fault to inject (normally all).
    pub kinds: Vec<Kind>,
}

/// One injected fault.
#[derive(Debug, Clone)]
struct Injected {
    step: Step,
    host: usize,
    /// Whether `host` held the validator lock when the fault started.
    hit_holder: bool,
    start_ns: u64,
    /// When the next step started (or the final heal).
    end_ns: u64,
}

/// The outcome of a run: the report's lines and the violations found.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub violations: Vec<String>,
}

/// The running system under test.
struct Run {
    cluster: NetCluster,
    ledger: PathBuf,
    opts: Options,
    lease: LeaseConfig,
    started: Instant,
    /// `started` on the ledger's clock.
    started_ns: u64,
    /// Hosts whose agent the nemesis killed and has not started again.
    down: BTreeSet<usize>,
    /// Hosts whose agent the nemesis stopped (SIGSTOP).
    paused: BTreeSet<usize>,
    /// Agents that exited without being killed: a bug.
    crashes: Vec<String>,
    /// Length of each host's log when its agent last started.
    log_start: Vec<usize>,
}

/// Runs `opts`; `None` if network namespaces cannot be used here (the harness
/// printed why).
pub async fn run(opts: Options) -> Option<Report> {
    let cluster = NetCluster::new(&opts.roles)?;
    let lease = LeaseConfig::from_ttl(opts.ttl);
    let mut run = Run {
        cluster,
        ledger: PathBuf::new(),
        lease,
        started: Instant::now(),
        started_ns: monotonic_ns(),
        down: BTreeSet::new(),
        paused: BTreeSet::new(),
        crashes: Vec::new(),
        log_start: vec![0; opts.roles.len()],
        opts,
    };
    let lock_toml = format!("[lock]\nsession_ttl = \"{}ms\"\n", run.opts.ttl.as_millis());
    run.ledger = run.cluster.with_fake_neard(&lock_toml, BLOCK_MS);
    for i in run.cluster.all() {
        if let Err(e) = run.cluster.small_disk(i, DISK_MIB) {
            panic!("cannot give {} a small data disk: {e}", run.name(i));
        }
    }
    let steps = schedule::generate(
        run.opts.seed,
        run.opts.steps,
        run.opts.roles.len(),
        run.opts.ttl,
        &run.opts.kinds,
    );
    say(&format!(
        "nemesis: seed {} ({} hosts {:?}, session_ttl {:?}, {} steps{}); replay with FAILOVERD_NEMESIS_SEED={}",
        run.opts.seed,
        run.opts.roles.len(),
        run.opts.roles,
        run.opts.ttl,
        steps.len(),
        run.opts
            .duration
            .map(|d| format!(" or {}", humantime::format_duration(d)))
            .unwrap_or_default(),
        run.opts.seed,
    ));
    run.cluster.start_all();
    run.cluster.wait_leader(&run.cluster.all()).await;
    run.cluster.wait_validating(None).await;
    // Someone signs (not necessarily the first to validate: a lock can still
    // move while the cluster settles).
    let deadline = Instant::now() + PATIENCE;
    while crate::netns::validators::signers_since(&run.ledger, monotonic_ns() - 500_000_000).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no validator signs {PATIENCE:?} after the start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let hosts: Vec<(usize, String)> = run
        .cluster
        .all()
        .into_iter()
        .map(|i| (i, run.cluster.ns(i).to_string()))
        .collect();
    let work = Workload::start(&hosts, &format!("failoverd/validator/{ACCOUNT_ID}"));
    let begin_ns = monotonic_ns();
    let mut injected: Vec<Injected> = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        if run.opts.duration.is_some_and(|d| run.started.elapsed() >= d) {
            break;
        }
        let fault = run.step(n, step).await;
        if let Some(last) = injected.last_mut() {
            last.end_ns = fault.start_ns;
        }
        injected.push(fault);
        tokio::time::sleep(step.settle).await;
    }
    run.heal_all();
    let heal_ns = monotonic_ns();
    if let Some(last) = injected.last_mut() {
        last.end_ns = heal_ns;
    }
    say(&format!("nemesis: final heal at {:.1}s", run.elapsed()));
    Some(run.finish(work, injected, begin_ns, heal_ns).await)
}

impl Run {
    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn name(&self, i: usize) -> &str {
        &self.cluster.hosts[i].name
    }

    /// The validator holding the lock, as the supervisors report it.
    async fn holder(&self) -> Option<usize> {
        for i in self.cluster.validators() {
            if self.cluster.supervisor_state(i).await.as_deref() == Some("Validating") {
                return Some(i);
            }
        }
        None
    }

    /// The Raft leader most hosts name.
    async fn leader(&self) -> Option<usize> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for i in self.cluster.all() {
            if let Some(id) = self.cluster.status(i).await.and_then(|s| s["leader_id"].as_u64()) {
                *votes.entry(id).or_default() += 1;
            }
        }
        let (id, _) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        self.cluster.hosts.iter().position(|h| h.id == id)
    }

    /// The host `step` hits, and the current holder.
    async fn resolve(&self, step: &Step) -> (usize, Option<usize>) {
        let eligible = if step.kind.needs_neard() {
            self.cluster.validators()
        } else {
            self.cluster.all()
        };
        let holder = self.holder().await;
        let fallback = eligible[step.pick as usize % eligible.len()];
        let host = match step.target {
            Target::Holder => holder.unwrap_or(fallback),
            Target::Leader => self
                .leader()
                .await
                .filter(|l| eligible.contains(l))
                .or(holder)
                .unwrap_or(fallback),
            Target::Host(n) => eligible[n % eligible.len()],
        };
        (host, holder)
    }

    /// Runs one step up to its heal (the settle is the caller's).
    async fn step(&mut self, n: usize, step: &Step) -> Injected {
        let (host, holder) = self.resolve(step).await;
        let start_ns = monotonic_ns();
        let mut detail = String::new();
        match step.kind {
            Kind::Isolate => self.cluster.isolate(host),
            Kind::Split => {
                let mut others: Vec<usize> = self.cluster.all().into_iter().filter(|&i| i != host).collect();
                let extra = (self.cluster.hosts.len() - 1) / 2 - 1;
                let mut minority = vec![host];
                for k in 0..extra {
                    minority.push(others.remove((step.pick as usize + k) % others.len()));
                }
                let _ = write!(detail, " minority {minority:?}");
                self.cluster.partition(&others, &minority);
            }
            Kind::DropInbound | Kind::DropOutbound => {
                let outbound = step.kind == Kind::DropOutbound;
                self.cluster.cut_one_way(host, outbound).expect("one-way cut");
            }
            Kind::Lossy => {
                let p = step.loss_percent;
                if self.cluster.netem_supported().is_ok() {
                    self.cluster
                        .netem(host, &format!("delay 100ms 50ms loss {p}%"))
                        .expect("netem");
                    detail.push_str(" (netem delay 100ms±50ms)");
                } else {
                    self.cluster.lossy(host, f64::from(p), "1mbit").expect("lossy link");
                    detail.push_str(" (no netem: loss + 1mbit rate limit)");
                }
            }
            Kind::KillAgent | Kind::Restart => self.kill_agent(host),
            Kind::KillNeard => {
                let killed = self.cluster.kill9_named(host, "fake-neard");
                let _ = write!(detail, " ({killed} neard process(es) killed)");
            }
            Kind::KillBoth => {
                // neard first: killing the agent first may take its fence and
                // neard down with it before "both" were killed.
                let killed = self.cluster.kill9_named(host, "fake-neard");
                self.kill_agent(host);
                let _ = write!(detail, " ({killed} neard process(es) killed)");
            }
            Kind::Pause => {
                self.cluster.sigstop(host);
                self.paused.insert(host);
            }
            Kind::DiskFull => {
                let filled = self.cluster.fill_disk(host).expect("fill the data disk");
                let _ = write!(detail, " ({} KiB filled)", filled / 1024);
            }
        }
        let role = if Some(host) == holder { "holder" } else { "not holder" };
        say(&format!(
            "nemesis: [{:>7.1}s] step {}: {step} -> {} ({role}){detail}",
            self.elapsed(),
            n + 1,
            self.name(host)
        ));
        tokio::time::sleep(step.hold).await;
        if step.kind == Kind::DiskFull {
            self.cluster.free_disk(host);
        }
        self.heal_all();
        Injected {
            step: step.clone(),
            host,
            hit_holder: Some(host) == holder,
            start_ns,
            end_ns: 0,
        }
    }

    /// Starts host `i`'s agent, noting where its log continues.
    fn start(&mut self, i: usize) {
        self.log_start[i] = std::fs::metadata(&self.cluster.hosts[i].log).map_or(0, |m| m.len() as usize);
        self.cluster.start(i);
    }

    fn kill_agent(&mut self, i: usize) {
        self.cluster.kill9(i);
        self.down.insert(i);
    }

    /// Undoes every fault: the network whole, no impairment, every agent
    /// running. An agent that died without being killed is recorded (and
    /// started again, as systemd would).
    fn heal_all(&mut self) {
        self.cluster.heal();
        for i in self.cluster.all() {
            self.cluster.clear_netem(i);
        }
        for i in std::mem::take(&mut self.paused) {
            self.cluster.sigcont(i);
        }
        self.supervise();
    }

    /// Starts every agent that is not running, as systemd would; an agent
    /// that died without being killed, and not because its disk was full, is
    /// recorded as a crash.
    fn supervise(&mut self) {
        for i in self.cluster.all() {
            if self.cluster.running(i) {
                continue;
            }
            if !self.down.remove(&i) {
                // Stopping on a full disk is what the agent should do (sled may
                // report the error only at a later write, after the space is
                // back); it must come back when started again with space.
                let log = std::fs::read_to_string(&self.cluster.hosts[i].log).unwrap_or_default();
                let since_start = log.get(self.log_start[i]..).unwrap_or_default();
                if since_start.contains("No space left on device") {
                    say(&format!("nemesis: {} stopped after its disk filled up", self.name(i)));
                } else {
                    let line = format!("{} exited without being killed ({:.1}s)", self.name(i), self.elapsed());
                    say(&format!("nemesis: {line}"));
                    self.crashes.push(line);
                }
                self.cluster.kill9(i);
            }
            self.start(i);
        }
    }

    /// Every host's (applied index, state digest) once they agree at or past
    /// `min_index`, or what they last reported.
    async fn converge(&mut self, min_index: u64) -> Result<(u64, String), String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut seen = Vec::new();
            for i in self.cluster.all() {
                let s = self.cluster.status(i).await;
                seen.push(s.map(|s| {
                    (
                        s["applied_index"].as_u64().unwrap_or(0),
                        s["state_digest"].as_str().unwrap_or("").to_string(),
                    )
                }));
            }
            if let Some(Some(first)) = seen.first() {
                if first.0 >= min_index && seen.iter().all(|s| s.as_ref() == Some(first)) {
                    return Ok(first.clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "hosts did not converge on an index >= {min_index} within {PATIENCE:?}: {seen:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.supervise();
        }
    }

    /// The checks after the final heal, and the report.
    async fn finish(mut self, work: Workload, injected: Vec<Injected>, begin_ns: u64, heal_ns: u64) -> Report {
        let mut report = Report::default();
        let bound = self.opts.ttl + self.lease.lock_delay + LIVENESS_SLACK;

        // Liveness: someone signs after the heal, within the bound.
        let deadline = Instant::now() + bound + Duration::from_secs(20);
        let signed_after_heal = loop {
            let first = ledger::tenures(&self.ledger)
                .iter()
                .filter(|t| t.last_ns >= heal_ns)
                .map(|t| t.first_ns.max(heal_ns))
                .min();
            match first {
                Some(t) => break Some(Duration::from_nanos(t - heal_ns)),
                None if Instant::now() >= deadline => break None,
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    self.supervise();
                }
            }
        };
        match signed_after_heal {
            Some(d) if d <= bound => {}
            Some(d) => report.violations.push(format!(
                "liveness: first signature {d:?} after the final heal (bound {bound:?})"
            )),
            None => report.violations.push(format!(
                "liveness: nobody signed within {bound:?} + 20s of the final heal"
            )),
        }
        // Let the workload run a little on the healed cluster, then stop it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let history = match work.stop() {
            Ok(h) => h,
            Err(e) => {
                report.violations.push(format!("workload: {e}"));
                Default::default()
            }
        };
        let end_ns = monotonic_ns();

        let converged = self.converge(history.max_index).await;
        let fin = match workload::run_in(self.cluster.ns(0), workload::read_all).join() {
            Ok(Ok(Ok(kv))) => kv,
            Ok(Ok(Err(e))) | Ok(Err(e)) => {
                report.violations.push(format!("reading the final state: {e}"));
                Vec::new()
            }
            Err(_) => {
                report
                    .violations
                    .push("reading the final state: thread panicked".into());
                Vec::new()
            }
        };
        // Still signing at the end (after the checks' waits): liveness holds on.
        let still = crate::netns::validators::signers_since(&self.ledger, monotonic_ns() - 2_000_000_000);
        if still.is_empty() {
            report
                .violations
                .push("liveness: nobody signed in the last 2 s of the run".into());
        }

        let tenures = ledger::tenures(&self.ledger);
        let signatures = signature_times(&self.ledger);
        report.violations.extend(check::overlaps(&tenures));
        report.violations.extend(check::lock_indexes(&history.observations));
        report.violations.extend(check::acked_writes(&history.writes, &fin));
        if let Err(e) = &converged {
            report.violations.push(format!("convergence: {e}"));
        }
        report.violations.extend(self.crashes.iter().cloned());
        for h in &self.cluster.hosts {
            let log = std::fs::read_to_string(&h.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
                report.violations.push(format!("{} panicked: {line}", h.name));
            }
        }

        // The report.
        let r = &mut report.lines;
        r.push(format!(
            "seed {} | {} hosts | session_ttl {:?} | {} steps in {:.0}s",
            self.opts.seed,
            self.cluster.hosts.len(),
            self.opts.ttl,
            injected.len(),
            self.elapsed()
        ));
        let mut by_kind: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
        for f in &injected {
            let e = by_kind.entry(f.step.kind).or_default();
            e.0 += 1;
            e.1 += usize::from(f.hit_holder);
        }
        r.push(format!(
            "faults (on the holder): {}",
            Kind::ALL
                .iter()
                .map(|k| {
                    let (n, h) = by_kind.get(k).copied().unwrap_or_default();
                    format!("{} {n} ({h})", k.name())
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let (gap_from, gap_to) = check::longest_silence(&signatures, begin_ns, end_ns);
        let during: Vec<String> = injected
            .iter()
            .enumerate()
            .filter(|(_, f)| f.start_ns < gap_to && f.end_ns > gap_from)
            .map(|(n, f)| format!("{} {} {}", n + 1, f.step.kind.name(), self.name(f.host)))
            .collect();
        r.push(format!(
            "signing: {} tenures, {} promotions (signer changed nodes), overlaps {}; longest gap {:.0} ms from {:.1}s, during steps [{}]",
            tenures.len(),
            check::promotions(&tenures),
            failoverd::ledger::overlaps(&tenures).len(),
            (gap_to - gap_from) as f64 / 1e6,
            gap_from.saturating_sub(self.started_ns) as f64 / 1e9,
            during.join(", ")
        ));
        let holder_gaps: Vec<String> = injected
            .iter()
            .filter(|f| f.hit_holder)
            .map(|f| {
                format!(
                    "{} {} {:.0}",
                    f.step.kind.name(),
                    self.name(f.host),
                    check::longest_silence_ms(&signatures, f.start_ns, f.end_ns)
                )
            })
            .collect();
        r.push(format!(
            "gap (ms) after each fault on the holder: {}",
            holder_gaps.join("; ")
        ));
        let mut worst: BTreeMap<Kind, f64> = BTreeMap::new();
        for f in &injected {
            let gap = check::longest_silence_ms(&signatures, f.start_ns, f.end_ns);
            let e = worst.entry(f.step.kind).or_default();
            *e = e.max(gap);
        }
        r.push(format!(
            "longest gap (ms) during a step, by kind (any target): {}",
            worst
                .iter()
                .map(|(k, g)| format!("{} {g:.0}", k.name()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        r.push(format!(
            "after the final heal: first signature in {} (bound {bound:?})",
            signed_after_heal.map_or("never".into(), |d| format!("{d:?}"))
        ));
        let acked = history.writes.iter().filter(|w| w.acked).count();
        r.push(format!(
            "workload: {} writes, {acked} acknowledged, {} lost; {} sessions, {} acquires ({} refused); {} lock reads; {} failed requests",
            history.writes.len(),
            check::acked_writes(&history.writes, &fin).len(),
            history.sessions_created,
            history.acquired,
            history.refused,
            history.observations.len(),
            history.errors
        ));
        let lock_indexes: BTreeSet<u64> = history
            .observations
            .iter()
            .filter(|o| o.key.starts_with("failoverd/validator/"))
            .map(|o| o.lock_index)
            .collect();
        r.push(format!(
            "validator key: {} LockIndex values seen ({:?}..{:?})",
            lock_indexes.len(),
            lock_indexes.first(),
            lock_indexes.last()
        ));
        r.push(match &converged {
            Ok((index, digest)) => format!("converged: every host at applied index {index}, digest {digest}"),
            Err(e) => format!("not converged: {e}"),
        });
        r.push(format!("violations: {}", report.violations.len()));
        for line in report.lines.iter().chain(&report.violations) {
            say(&format!("nemesis: {line}"));
        }
        if !report.violations.is_empty() {
            say(&format!(
                "nemesis: FAILED with seed {}; replay with FAILOVERD_NEMESIS_SEED={}",
                self.opts.seed, self.opts.seed
            ));
            say(&self.cluster.logs());
        }
        report
    }
}

/// Every signature's time in the ledger.
fn signature_times(ledger: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(ledger)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["t_ns"].as_u64())
        .collect()
}
