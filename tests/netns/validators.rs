//! Validator hosts on the namespace network: each "validator" host runs neard
//! (fake-neard) under its agent's supervisor, set up the way
//! `failoverd::local_cluster::LocalCluster::with_neard` does it, and every
//! fake-neard appends its signatures to one ledger file. Hosts share the
//! filesystem and CLOCK_MONOTONIC (only the network is per namespace), so the
//! ledger orders the signatures of all hosts on one clock.
//!
//! ```text
//!   host1 ns: agent ─fence─► fake-neard (rpc 127.0.0.1:3030) ──┐
//!   host2 ns: agent ─fence─► fake-neard (rpc 127.0.0.1:3030) ──┼─► <dir>/ledger.jsonl
//!   host3 ns: agent (arbiter, no neard)                        │   {"t_ns","node","pid","height"}
//! ```
//!
//! Also what failover scenarios poll: each agent's supervisor state and who signs.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use failoverd::ledger;
use failoverd::ledger::Tenure;
use serde_json::Value;

use super::NetCluster;
use super::PATIENCE;

/// The fake-neard binary built with the test (or bench).
pub const FAKE_NEARD: &str = env!("CARGO_BIN_EXE_fake-neard");
/// neard's RPC, on the loopback of each validator host's own namespace.
pub const NEARD_RPC: &str = "127.0.0.1:3030";
/// neard's network address while validating.
pub const VALIDATOR_NETWORK: &str = "127.0.0.1:24567";
/// neard's network address while voting (distinct, as kuutamod does).
pub const VOTER_NETWORK: &str = "127.0.0.1:24568";
/// The pool's account, in the shared `validator_key.json`.
pub const ACCOUNT_ID: &str = "pool.netns";

/// Now on CLOCK_MONOTONIC (ns), the clock of the ledger.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// Writes `body` to `path`, readable by its owner only (as key files must be).
fn write_key(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write key file");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 0600");
}

impl NetCluster {
    /// Indexes of the hosts with role "validator".
    pub fn validators(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].role == "validator")
            .collect()
    }

    /// Indexes of every host.
    pub fn all(&self) -> Vec<usize> {
        (0..self.hosts.len()).collect()
    }

    /// Gives every validator host a fake-neard home (`config.json` with its RPC on
    /// [`NEARD_RPC`] in the host's namespace), the pool's shared validator and
    /// validator node keys, its own voter node key (all mode 0600), and a `[neard]`
    /// section plus `lock_toml` appended to its config; agents get
    /// `FAKE_NEARD_LEDGER` (and `block_ms` as `FAKE_NEARD_BLOCK_MS`). Call before
    /// starting the agents; returns the ledger's path.
    pub fn with_fake_neard(&mut self, lock_toml: &str, block_ms: u64) -> PathBuf {
        let root = self.dir.path().to_path_buf();
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        let validator_key = keys.join("validator_key.json");
        write_key(
            &validator_key,
            &format!(
                r#"{{"account_id":"{ACCOUNT_ID}","public_key":"ed25519:validator","secret_key":"ed25519:secret"}}"#
            ),
        );
        let validator_node_key = keys.join("validator_node_key.json");
        write_key(
            &validator_node_key,
            r#"{"account_id":"node","public_key":"ed25519:validatornode","secret_key":"ed25519:secret"}"#,
        );
        for i in self.validators() {
            let id = self.hosts[i].id;
            let home = root.join(format!("neard{id}"));
            std::fs::create_dir_all(&home).expect("neard home");
            let config = serde_json::json!({
                "rpc": { "addr": NEARD_RPC },
                "network": { "addr": VOTER_NETWORK },
            });
            std::fs::write(
                home.join("config.json"),
                serde_json::to_vec_pretty(&config).expect("json"),
            )
            .expect("write config.json");
            let voter_key = keys.join(format!("voter_node_key_{id}.json"));
            write_key(
                &voter_key,
                &format!(r#"{{"account_id":"node","public_key":"ed25519:voter{id}","secret_key":"ed25519:secret"}}"#),
            );
            let section = format!(
                "\n[neard]\nbinary = \"{FAKE_NEARD}\"\nhome = \"{}\"\nvalidator_key = \"{}\"\nvalidator_node_key = \"{}\"\nvoter_node_key = \"{}\"\nvalidator_network_addr = \"{VALIDATOR_NETWORK}\"\nvoter_network_addr = \"{VOTER_NETWORK}\"\nstop_timeout = \"5s\"\n\n{lock_toml}\n",
                home.display(),
                validator_key.display(),
                validator_node_key.display(),
                voter_key.display(),
            );
            let toml = format!("{}{section}", self.hosts[i].extra_toml);
            self.set_extra_toml(i, &toml);
        }
        let ledger = root.join("ledger.jsonl");
        self.set_env("FAKE_NEARD_LEDGER", &ledger.display().to_string());
        self.set_env("FAKE_NEARD_BLOCK_MS", &block_ms.to_string());
        ledger
    }

    /// Host `i`'s supervisor state ("Voting", "Validating", ...), if its agent answers.
    pub async fn supervisor_state(&self, i: usize) -> Option<String> {
        let status = self.status(i).await?;
        status
            .pointer("/supervisor/state")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// Waits until host `i`'s supervisor is in `state`; panics after `PATIENCE`.
    pub async fn wait_state(&self, i: usize, state: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.supervisor_state(i).await;
            if now.as_deref() == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not {state} within {PATIENCE:?} (it is {now:?})",
                self.hosts[i].name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until one validator host other than `not` is Validating; returns it.
    pub async fn wait_validating(&self, not: Option<usize>) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for i in self.validators().into_iter().filter(|&i| Some(i) != not) {
                if self.supervisor_state(i).await.as_deref() == Some("Validating") {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no validator (other than {not:?}) took the lock within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POST /v1/handover on host `i` (to `to`, if given), retried while the holder
    /// sees no synced standby yet (a standby announces itself within a renew or two).
    pub async fn handover(&self, i: usize, to: Option<&str>) {
        let body = match to {
            Some(name) => serde_json::json!({ "to": name }).to_string(),
            None => String::new(),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reply = self
                .api(i, "POST", "/v1/handover", Some(&body), Duration::from_secs(30))
                .await;
            match reply {
                Ok(r) if r.ok() => return,
                Ok(r) if r.body.contains("no synced standby") && Instant::now() < deadline => {}
                other => panic!("handover on {} failed: {other:?}", self.hosts[i].name),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Waits until `node` has a tenure that started after `after_ns`; returns it.
pub async fn wait_signing(ledger: &Path, node: &str, after_ns: u64) -> Tenure {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(t) = ledger::tenures(ledger)
            .into_iter()
            .find(|t| t.node == node && t.first_ns > after_ns)
        {
            return t;
        }
        assert!(Instant::now() < deadline, "{node} did not sign within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` signs right now (a signature in the last 500 ms).
pub async fn wait_signing_now(ledger: &Path, node: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let recent = monotonic_ns().saturating_sub(500_000_000);
        if last_signature_before(ledger, node, u64::MAX).is_some_and(|t| t >= recent) {
            return;
        }
        assert!(Instant::now() < deadline, "{node} is not signing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `node`'s last signature before `before_ns`, if any.
pub fn last_signature_before(ledger: &Path, node: &str, before_ns: u64) -> Option<u64> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["node"].as_str() == Some(node))
        .filter_map(|v| v["t_ns"].as_u64())
        .filter(|&t| t < before_ns)
        .max()
}

/// The nodes with a signature at or after `since_ns`.
pub fn signers_since(ledger: &Path, since_ns: u64) -> Vec<String> {
    let mut nodes: Vec<String> = ledger::tenures(ledger)
        .into_iter()
        .filter(|t| t.last_ns >= since_ns)
        .map(|t| t.node)
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// One takeover after the holder was cut off, as the ledger shows it.
#[derive(Debug, Clone)]
pub struct PartitionRun {
    /// The host cut off (the holder) and the one that took over.
    pub holder: usize,
    pub standby: usize,
    /// Whether the holder was also the Raft leader when cut off.
    pub holder_led: bool,
    /// When the holder was cut off (CLOCK_MONOTONIC ns).
    pub cut_ns: u64,
    /// The holder's last signature and the standby's first after the cut.
    pub old_last_ns: u64,
    pub new_first_ns: u64,
    /// When the network was healed.
    pub heal_ns: u64,
    /// Nodes that signed from the heal until the old holder was a standby again
    /// and `settle` more had passed: should be exactly the new holder.
    pub signers_after_heal: Vec<String>,
    /// Overlapping tenures of different nodes in the whole ledger: must be empty.
    pub overlaps: usize,
    /// The Raft term on the majority side at the heal, and everywhere at the end:
    /// a change means the heal caused an election.
    pub term_at_heal: u64,
    pub term_after: u64,
}

impl PartitionRun {
    /// Silence between the old signer's last and the new signer's first
    /// signature (negative: both signed at once).
    pub fn gap_ms(&self) -> f64 {
        (self.new_first_ns as f64 - self.old_last_ns as f64) / 1e6
    }
}

impl NetCluster {
    /// The highest Raft term any of `among` reports.
    pub async fn term(&self, among: &[usize]) -> u64 {
        let mut term = 0;
        for &i in among {
            if let Some(status) = self.status(i).await {
                term = term.max(status["term"].as_u64().unwrap_or(0));
            }
        }
        term
    }

    /// Cuts the current holder off the network, waits for the standby to sign,
    /// heals, waits until the old holder is a standby again (Voting; or signing,
    /// if it took the lock back) and `settle` more, and reports what
    /// the ledger shows. Both validators must be up, one Validating and signing,
    /// the other Voting.
    pub async fn partition_the_holder(&self, ledger: &Path, settle: Duration) -> PartitionRun {
        let holder = self.wait_validating(None).await;
        let standby = self
            .validators()
            .into_iter()
            .find(|&i| i != holder)
            .expect("two validators");
        self.wait_state(standby, "Voting").await;
        let (holder_name, standby_name) = (self.hosts[holder].name.clone(), self.hosts[standby].name.clone());
        wait_signing_now(ledger, &holder_name).await;
        let leader = self.wait_leader(&self.all()).await;

        let cut_ns = monotonic_ns();
        self.isolate(holder);
        let new = wait_signing(ledger, &standby_name, cut_ns).await;

        let majority: Vec<usize> = self.all().into_iter().filter(|&i| i != holder).collect();
        let term_at_heal = self.term(&majority).await;
        let heal_ns = monotonic_ns();
        self.heal();
        // Its state may still read Validating for a while after the heal (the
        // supervisor reports it until its release attempt returns): wait for
        // Voting, or for it to sign again (it took the lock back).
        let deadline = Instant::now() + PATIENCE;
        loop {
            let state = self.supervisor_state(holder).await;
            if state.as_deref() == Some("Voting") || signers_since(ledger, heal_ns).contains(&holder_name) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{holder_name} neither a standby nor signing {PATIENCE:?} after the heal (state {state:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(settle).await;
        // Read at the end: a holder still signing after the takeover must show.
        let old_last_ns = last_signature_before(ledger, &holder_name, heal_ns).unwrap_or(0);
        PartitionRun {
            holder,
            standby,
            holder_led: leader == holder,
            cut_ns,
            old_last_ns,
            new_first_ns: new.first_ns,
            heal_ns,
            signers_after_heal: signers_since(ledger, heal_ns),
            overlaps: ledger::overlaps(&ledger::tenures(ledger)).len(),
            term_at_heal,
            term_after: self.term(&self.all()).await,
        }
    }
}

/// The longest silence (ms) between consecutive signatures, of any node, from
/// `from_ns` to `to_ns`.
pub fn longest_silence_ms(ledger: &Path, from_ns: u64, to_ns: u64) -> f64 {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut times: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["t_ns"].as_u64())
        .filter(|&t| t >= from_ns && t <= to_ns)
        .collect();
    times.sort_unstable();
    let mut edges = vec![from_ns];
    edges.extend(times);
    edges.push(to_ns);
    edges.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0) as f64 / 1e6
}

impl NetCluster {
    /// Arranges, without freezing anything, for the validator lock's holder to be
    /// (`holder_leads`) or not to be the Raft leader: a handover moves the lock to
    /// the other validator, and a kill -9 and restart of the arbiter moves Raft
    /// leadership off it. Returns (holder, leader) with the standby Voting and the
    /// holder signing; panics after a few rounds.
    pub async fn arrange(&mut self, ledger: &Path, holder_leads: bool) -> (usize, usize) {
        for _ in 0..6 {
            let holder = self.wait_validating(None).await;
            let standby = self
                .validators()
                .into_iter()
                .find(|&i| i != holder)
                .expect("two validators");
            self.wait_state(standby, "Voting").await;
            wait_signing_now(ledger, &self.hosts[holder].name).await;
            let leader = self.wait_leader(&self.all()).await;
            if (leader == holder) == holder_leads {
                return (holder, leader);
            }
            if holder_leads && leader != standby {
                println!(
                    "arrange: the arbiter {} leads; kill -9 and restart it so that a validator leads",
                    self.hosts[leader].name
                );
                let killed_ns = monotonic_ns();
                self.kill9(leader);
                self.wait_leader(&self.validators()).await;
                self.start(leader);
                self.wait_leader(&self.all()).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                println!(
                    "arrange: longest signing silence during that leader change: {:.0} ms",
                    longest_silence_ms(ledger, killed_ns, monotonic_ns())
                );
            } else {
                let to = if holder_leads { leader } else { standby };
                println!(
                    "arrange: handing the validator lock from {} to {}",
                    self.hosts[holder].name, self.hosts[to].name
                );
                let to_name = self.hosts[to].name.clone();
                self.handover(holder, Some(&to_name)).await;
                self.wait_state(to, "Validating").await;
            }
        }
        panic!("could not arrange holder_leads = {holder_leads}");
    }
}
