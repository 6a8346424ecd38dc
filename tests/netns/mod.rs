//! Multi-host test harness: real `failoverd agent` processes, each in its own
//! network namespace, joined by veth links to a bridge in a "switch" namespace.
//! Faults are applied to the links (cut, partition, impair) and to the processes
//! (kill -9, SIGSTOP/SIGCONT, restart).
//!
//! ```text
//!  root namespace: the test process only (no links, no addresses are added here)
//!      |  HTTP to an agent = `ip netns exec fod-P-S-hN curl http://127.0.0.1:2233/...`
//!      v
//!  +-- fod-P-S-h1 ---------+  +-- fod-P-S-h2 ---------+  +-- fod-P-S-h3 ---------+
//!  | failoverd node 1      |  | failoverd node 2      |  | failoverd node 3      |
//!  |  api  127.0.0.1:2233  |  |  api  127.0.0.1:2233  |  |  api  127.0.0.1:2233  |
//!  |  raft 10.77.R.1:7700  |  |  raft 10.77.R.2:7700  |  |  raft 10.77.R.3:7700  |
//!  |  eth0 10.77.R.1/24    |  |  eth0 10.77.R.2/24    |  |  eth0 10.77.R.3/24    |
//!  +-------||--------------+  +-------||--------------+  +-------||--------------+
//!          || veth                    || veth                    || veth
//!  +-- fod-P-S-sw ---||--------------------||--------------------||-------------+
//!  |                 p1                    p2                    p3             |
//!  |   br0 (whole network) <--- every port; `partition` moves group b to br1    |
//!  |   br1 (second side of a partition)       `isolate` takes a port down       |
//!  |                                          `netem`/`lossy`: qdisc on both    |
//!  |                                          ends of a host's veth             |
//!  +----------------------------------------------------------------------------+
//! ```
//!
//! P is the test process's pid and S a per-process sequence number, so parallel
//! tests and parallel runs never share a namespace; namespaces whose P is dead are
//! leftovers of a crashed run and are removed (with whatever runs inside) when the
//! next harness starts. R varies per cluster only to tell runs apart in logs: the
//! 10.77.R.0/24 addresses exist only inside the cluster's own namespaces.
//!
//! Why the API is on each namespace's loopback: the test can always reach every
//! agent, also while its cluster link is cut, and the cluster link is the host's
//! only path to the other hosts, so a cut is exact. Agents of different hosts use
//! the same ports because each host has its own network stack.
//!
//! Needs root, `ip`, `curl` and (for `netem`) a kernel with `sch_netem`. Without
//! root, `ip` or `curl`, [`NetCluster::new`] prints why and returns `None`, unless
//! `FAILOVERD_REQUIRE_NETNS=1`, which turns the skip into a failure. Dropping the
//! cluster kills every agent and deletes the namespaces, also when a test panics
//! (and then prints the tail of every agent's log first).
//!
//! `validators` gives validator hosts a neard (fake-neard) with a shared
//! signature ledger, and runs failover scenarios on them. Agents get the
//! variables added with [`NetCluster::set_env`]. `benches/failover.rs` includes
//! this harness too (`#[path]`).
#![allow(dead_code)]

pub mod disk;
pub mod http;
pub mod topology;
pub mod validators;

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::Value;

pub use http::Reply;
use topology::say;
use topology::Topology;

/// Path of the built `failoverd` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_failoverd");

/// Generous upper bound for anything cluster-wide to happen on a loaded CI box.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Port of the Raft peer service on every host's address.
pub const PEER_PORT: u16 = 7700;
/// Where every agent's HTTP API listens, inside its own namespace.
pub const API_ADDR: &str = "127.0.0.1:2233";

/// Set to `1` to fail instead of skip when namespaces cannot be used.
pub const REQUIRE_ENV: &str = "FAILOVERD_REQUIRE_NETNS";

/// Clusters created by this process, for unique namespace names.
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// One host: a namespace with one agent.
pub struct Host {
    pub id: u64,
    pub name: String,
    pub role: String,
    /// The host's namespace.
    pub ns: String,
    /// The host's address on the cluster network.
    pub ip: String,
    /// `ip:7700`, the Raft listen and advertised address.
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// TOML appended to the generated config (e.g. a `[consul_api]` section).
    pub extra_toml: String,
    child: Option<Child>,
}

/// Agents on separate hosts of a namespace network.
pub struct NetCluster {
    pub hosts: Vec<Host>,
    pub dir: tempfile::TempDir,
    /// Extra environment of every agent started from now on (and so of its neard).
    pub env: Vec<(String, String)>,
    /// Data dirs mounted as small disks, unmounted on drop.
    mounts: Vec<PathBuf>,
    /// Dropped after `Drop for NetCluster` has killed the agents.
    topo: Topology,
}

/// Whether to skip: `None` if the harness can run, else why not.
fn missing_prerequisite() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!("network namespaces need root (effective uid {euid})"));
    }
    for (tool, arg) in [("ip", "-V"), ("curl", "--version")] {
        if let Err(e) = topology::run(tool, &[arg]) {
            return Some(format!("`{tool}` is not usable: {e}"));
        }
    }
    None
}

/// Prints why the test skips, or panics if skipping is not allowed.
fn skip(reason: &str) {
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ENV}=1 but {reason}");
    }
    say(&format!("skipping: {reason}"));
}

impl NetCluster {
    /// One host per role (ids 1..=n, all initial members), namespaces and links
    /// created, configs written, no agent started. `None` (after printing why) when
    /// this machine cannot run it.
    pub fn new(roles: &[&str]) -> Option<Self> {
        if let Some(reason) = missing_prerequisite() {
            skip(&reason);
            return None;
        }
        topology::remove_stale();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("{}{pid}-{seq}", topology::NAME_PREFIX);
        let subnet = (pid as usize + seq) % 250 + 1;
        let ips: Vec<String> = (1..=roles.len()).map(|n| format!("10.77.{subnet}.{n}")).collect();
        let topo = match Topology::create(&prefix, &ips) {
            Ok(topo) => topo,
            Err(e) => {
                skip(&format!("cannot build the test network: {e}"));
                return None;
            }
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .expect("tempdir");
        let hosts = roles
            .iter()
            .zip(&ips)
            .zip(&topo.hosts)
            .enumerate()
            .map(|(i, ((role, ip), ns))| {
                let id = i as u64 + 1;
                Host {
                    id,
                    name: format!("host{id}"),
                    role: role.to_string(),
                    ns: ns.clone(),
                    ip: ip.clone(),
                    peer_addr: format!("{ip}:{PEER_PORT}"),
                    data_dir: dir.path().join(format!("data{id}")),
                    config: dir.path().join(format!("host{id}.toml")),
                    log: dir.path().join(format!("host{id}.log")),
                    extra_toml: String::new(),
                    child: None,
                }
            })
            .collect();
        let cluster = NetCluster {
            hosts,
            dir,
            env: Vec::new(),
            mounts: Vec::new(),
            topo,
        };
        for i in 0..cluster.hosts.len() {
            cluster.write_config(i);
        }
        println!("netns cluster {prefix}: hosts {ips:?}");
        Some(cluster)
    }

    /// Host `i`'s address on the cluster network (for e.g. `[consul_api] listen`).
    pub fn ip(&self, i: usize) -> &str {
        &self.hosts[i].ip
    }

    /// Host `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i].ns
    }

    /// Sets the TOML appended to host `i`'s config and rewrites the config; takes
    /// effect at the agent's next (re)start.
    pub fn set_extra_toml(&mut self, i: usize, toml: &str) {
        self.hosts[i].extra_toml = toml.to_string();
        self.write_config(i);
    }

    /// Adds an environment variable for every agent started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// (Re)writes host `i`'s config file.
    pub fn write_config(&self, i: usize) {
        let h = &self.hosts[i];
        let members: Vec<String> = self
            .hosts
            .iter()
            .map(|m| format!("{{ id = {}, addr = \"{}\" }}", m.id, m.peer_addr))
            .collect();
        let text = format!(
            "node_id = {}\nname = \"{}\"\nrole = \"{}\"\ndata_dir = \"{}\"\n\n[cluster]\nlisten = \"{}\"\ninitial_members = [ {} ]\n\n[api]\nlisten = \"{API_ADDR}\"\n\n{}\n",
            h.id,
            h.name,
            h.role,
            h.data_dir.display(),
            h.peer_addr,
            members.join(", "),
            h.extra_toml,
        );
        std::fs::write(&h.config, text).expect("write config");
    }

    /// Starts host `i`'s agent inside its namespace (appending to its log).
    ///
    /// The agent gets SIGKILL if the thread that started it exits, so agents do
    /// not outlive a killed test process: start agents from the test's own thread,
    /// not from `spawn_blocking`.
    pub fn start(&mut self, i: usize) {
        let env = self.env.clone();
        let h = &mut self.hosts[i];
        assert!(h.child.is_none(), "agent on {} already started", h.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, BIN, "agent", "--config"])
            .arg(&h.config)
            .env("RUST_LOG", "info,openraft=warn")
            // Plain logs: readable when printed on failure, and greppable.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FAILOVERD_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env);
        // SAFETY: the closure runs between fork and exec and only makes one
        // async-signal-safe syscall (prctl); `ip netns exec` then execs the agent
        // in the same process, which keeps the parent-death signal.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
        }
        h.child = Some(cmd.spawn().expect("spawn ip netns exec failoverd"));
    }

    /// Starts every agent, in host order.
    pub fn start_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.start(i);
        }
    }

    /// Whether host `i`'s agent is running.
    pub fn running(&mut self, i: usize) -> bool {
        match &mut self.hosts[i].child {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// How host `i`'s agent exited, if it has.
    pub fn exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.hosts[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Host `i`'s agent's pid, if started.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.hosts[i].child.as_ref().map(Child::id)
    }

    /// SIGKILLs host `i`'s agent and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.hosts[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills host `i`'s agent and starts it again on the same data dir.
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.start(i);
    }

    fn signal(&self, i: usize, signal: Signal) {
        let pid = self.pid(i).expect("agent not started");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("signal agent");
    }

    /// Freezes host `i`'s agent (SIGSTOP): alive, but silent.
    pub fn sigstop(&self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
    }

    /// Resumes host `i`'s agent (SIGCONT).
    pub fn sigcont(&self, i: usize) {
        self.signal(i, Signal::SIGCONT);
    }

    /// Cuts host `i` off the cluster network (its switch port goes down).
    pub fn isolate(&self, i: usize) {
        self.topo.cut(i);
    }

    /// Hosts in `a` reach only each other, hosts in `b` only each other; hosts in
    /// neither group are cut off.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        self.topo.partition(a, b);
    }

    /// Every host reaches every other again (impairments stay; see `clear_netem`).
    pub fn heal(&self) {
        self.topo.heal();
    }

    /// Whether the kernel has `sch_netem`, or why not.
    pub fn netem_supported(&self) -> Result<(), String> {
        self.topo.netem.clone()
    }

    /// Impairs both directions of host `i`'s link with netem, e.g.
    /// `"delay 50ms 10ms loss 5%"`. An error if the kernel has no netem.
    pub fn netem(&self, i: usize, spec: &str) -> Result<(), String> {
        self.topo.netem(i, spec)
    }

    /// Drops `percent`% of frames at random in both directions of host `i`'s link
    /// and limits it to `rate` (e.g. "1mbit"): the impairment possible without netem.
    pub fn lossy(&self, i: usize, percent: f64, rate: &str) -> Result<(), String> {
        self.topo.lossy(i, percent, rate)
    }

    /// Drops everything host `i` sends (`outbound`) or receives (`!outbound`)
    /// on the cluster network, and nothing the other way. Undone by `clear_netem`.
    pub fn cut_one_way(&self, i: usize, outbound: bool) -> Result<(), String> {
        self.topo.cut_one_way(i, outbound)
    }

    /// Pids of the processes in host `i`'s namespace whose program is `name`
    /// (e.g. "fake-neard").
    pub fn pids_of(&self, i: usize, name: &str) -> Vec<i32> {
        let pids = topology::run("ip", &["netns", "pids", &self.hosts[i].ns]).unwrap_or_default();
        pids.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.file_name().is_some_and(|n| n.to_string_lossy() == name))
            })
            .collect()
    }

    /// SIGKILLs every process named `name` in host `i`'s namespace; how many.
    pub fn kill9_named(&self, i: usize, name: &str) -> usize {
        let pids = self.pids_of(i, name);
        for &pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        pids.len()
    }

    /// Frames the impairment of host `i`'s link has dropped so far (both directions).
    pub fn dropped(&self, i: usize) -> u64 {
        self.topo.dropped(i)
    }

    /// Removes any netem or lossy impairment of host `i`'s link.
    pub fn clear_netem(&self, i: usize) {
        self.topo.clear(i);
    }

    /// Puts host `i`'s data dir on its own tmpfs of `mib` MiB (before its agent
    /// first starts), so that [`Self::fill_disk`] can fill it.
    pub fn small_disk(&mut self, i: usize, mib: u64) -> Result<(), String> {
        let dir = self.hosts[i].data_dir.clone();
        disk::mount_small(&dir, mib)?;
        self.mounts.push(dir);
        Ok(())
    }

    /// Fills host `i`'s small data disk; the bytes it took.
    pub fn fill_disk(&self, i: usize) -> Result<u64, String> {
        disk::fill(&self.hosts[i].data_dir)
    }

    /// Frees what [`Self::fill_disk`] took.
    pub fn free_disk(&self, i: usize) {
        disk::free(&self.hosts[i].data_dir);
    }

    /// `method url` sent from inside host `from`'s namespace, e.g. to another
    /// host's `http://<ip>:8500/...`.
    pub async fn request(
        &self,
        from: usize,
        method: &str,
        url: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply, String> {
        http::request(&self.hosts[from].ns, method, url, body, timeout).await
    }

    /// `method path` on host `i`'s local API.
    pub async fn api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply, String> {
        self.request(i, method, &format!("http://{API_ADDR}{path}"), body, timeout)
            .await
    }

    /// `/v1/status` of host `i`'s agent, if it answers.
    pub async fn status(&self, i: usize) -> Option<Value> {
        let reply = self
            .api(i, "GET", "/v1/status", None, Duration::from_secs(3))
            .await
            .ok()?;
        reply.ok().then(|| serde_json::from_str(&reply.body).ok()).flatten()
    }

    /// Waits until the agents in `among` all answer and agree on one leader that is
    /// itself among them; returns its index.
    pub async fn wait_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut leaders = Vec::new();
            for &i in among {
                leaders.push(self.status(i).await.map(|s| s["leader_id"].as_u64()));
            }
            if let Some(Some(Some(id))) = leaders.first().copied() {
                if leaders.iter().all(|l| *l == Some(Some(id))) {
                    if let Some(i) = among.iter().copied().find(|&i| self.hosts[i].id == id) {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no common leader among {among:?} within {PATIENCE:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// PUT through host `i`, answered within `timeout`: the committed log index.
    pub async fn put_within(&self, i: usize, key: &str, value: &str, timeout: Duration) -> Result<u64, String> {
        let reply = self
            .api(i, "PUT", &format!("/v1/kv/{key}"), Some(value), timeout)
            .await?;
        if !reply.ok() {
            return Err(format!("{}: {}", reply.status, reply.body));
        }
        let body: Value = serde_json::from_str(&reply.body).map_err(|e| format!("{e}: {}", reply.body))?;
        body["index"]
            .as_u64()
            .ok_or_else(|| format!("no index in {}", reply.body))
    }

    /// PUT through host `i` (20 s bound): the committed log index.
    pub async fn put(&self, i: usize, key: &str, value: &str) -> Result<u64, String> {
        self.put_within(i, key, value, Duration::from_secs(20)).await
    }

    /// PUT with retries until acknowledged; panics after `PATIENCE`.
    pub async fn put_eventually(&self, i: usize, key: &str, value: &str) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.put(i, key, value).await {
                Ok(index) => return index,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "put {key} via {} never succeeded: {e}",
                    self.hosts[i].name
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Host `i`'s applied value of `key` (`None` if absent or no answer).
    pub async fn get(&self, i: usize, key: &str) -> Option<String> {
        let reply = self
            .api(i, "GET", &format!("/v1/kv/{key}"), None, Duration::from_secs(3))
            .await
            .ok()?;
        reply.ok().then_some(reply.body)
    }

    /// Waits until every agent in `among` has the same applied index (at least
    /// `min_index`) and state digest; returns (index, digest).
    pub async fn wait_converged(&self, among: &[usize], min_index: u64) -> (u64, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut seen = Vec::new();
            for &i in among {
                if let Some(s) = self.status(i).await {
                    seen.push((
                        s["applied_index"].as_u64().unwrap_or(0),
                        s["state_digest"].as_str().unwrap_or("").to_string(),
                    ));
                }
            }
            if seen.len() == among.len() && seen[0].0 >= min_index && seen.iter().all(|s| *s == seen[0]) {
                return seen[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "hosts {among:?} did not converge on index >= {min_index} within {PATIENCE:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines of every agent's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            let text = std::fs::read_to_string(&h.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            let _ = writeln!(
                out,
                "----- {} (node {}, {}) log tail -----\n{}",
                h.name,
                h.ip,
                h.ns,
                tail.join("\n")
            );
        }
        out
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for i in 0..self.hosts.len() {
            // A stopped process dies of SIGKILL all the same.
            self.kill9(i);
        }
        for dir in &self.mounts {
            disk::unmount(dir);
        }
        // `topo` is dropped next: it kills anything left inside and deletes the namespaces.
    }
}
