//! A cluster of `failoverd agent` processes on loopback, in a temp dir: what
//! `failoverd demo` and the benchmarks run.
//!
//! Each node gets a config, a data dir and a log file under the cluster's root.
//! Dropping the cluster kills its processes and removes the root, unless
//! `keep` is set.

use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use crate::raft::node::NodeStatus;
use crate::raft::Role;

/// One agent process.
pub struct LocalNode {
    /// Node id (1-based).
    pub id: u64,
    /// Node name.
    pub name: String,
    /// Validator or arbiter.
    pub role: Role,
    /// Peer gRPC address.
    pub peer: String,
    /// Local API address.
    pub api: String,
    /// Consul-compatible API address.
    pub consul: String,
    /// Config file.
    pub config: PathBuf,
    /// Log file (stdout and stderr).
    pub log: PathBuf,
    child: Option<Child>,
    /// Environment for this agent only, after the cluster's.
    env: Vec<(String, String)>,
}

impl LocalNode {
    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Agents on loopback sharing a root directory.
pub struct LocalCluster {
    /// Root directory of configs, data and logs.
    pub root: PathBuf,
    /// Keep processes and files when dropped.
    pub keep: bool,
    /// The nodes, index = id - 1.
    pub nodes: Vec<LocalNode>,
    bin: PathBuf,
    http: reqwest::Client,
    /// Environment for every agent (and so for neard).
    env: Vec<(String, String)>,
}

impl LocalCluster {
    /// Writes configs for one node per role under a new temp root. `extra`
    /// returns TOML appended to node `id`'s config.
    pub fn create(bin: PathBuf, roles: &[Role], extra: impl Fn(u64) -> String) -> std::io::Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Clusters created in the same millisecond by one process (parallel
        // tests) must not share a root: the counter tells them apart, and
        // `create_dir` refuses a root that exists.
        static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("failoverd-{}-{}-{seq}", std::process::id(), stamp.as_millis()));
        std::fs::create_dir(&root)?;
        let mut nodes = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let id = i as u64 + 1;
            let name = match role {
                Role::Validator => format!("validator-{}", (b'a' + i as u8) as char),
                Role::Arbiter => "arbiter".to_string(),
            };
            nodes.push(LocalNode {
                id,
                name,
                role: *role,
                peer: format!("127.0.0.1:{}", free_port()?),
                api: format!("127.0.0.1:{}", free_port()?),
                consul: format!("127.0.0.1:{}", free_port()?),
                config: root.join(format!("node{id}.toml")),
                log: root.join(format!("node{id}.log")),
                child: None,
                env: Vec::new(),
            });
        }
        let members: Vec<String> = nodes
            .iter()
            .map(|n| format!("{{ id = {}, addr = \"{}\" }}", n.id, n.peer))
            .collect();
        for n in &nodes {
            let text = format!(
                "node_id = {}\nname = \"{}\"\nrole = \"{}\"\ndata_dir = \"{}\"\n\n[cluster]\nlisten = \"{}\"\ninitial_members = [ {} ]\n\n[api]\nlisten = \"{}\"\n\n[consul_api]\nlisten = \"{}\"\n{}",
                n.id,
                n.name,
                n.role,
                root.join(format!("data{}", n.id)).display(),
                n.peer,
                members.join(", "),
                n.api,
                n.consul,
                extra(n.id),
            );
            std::fs::write(&n.config, text)?;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(LocalCluster {
            root,
            keep: false,
            nodes,
            bin,
            http,
            env: Vec::new(),
        })
    }

    /// Gives every validator a neard (the `fake_neard` binary): a home with a
    /// `config.json`, the pool's shared validator and node keys, its own voter
    /// key, distinct ports, and `[neard]` plus `lock_toml` (a `[lock]` section)
    /// in its config. Signatures go to [`LocalCluster::ledger`].
    pub fn with_neard(&mut self, fake_neard: &Path, lock_toml: &str) -> std::io::Result<()> {
        self.with_neard_config(fake_neard, "", lock_toml)
    }

    /// [`LocalCluster::with_neard`] with `neard_toml` (more `key = value`
    /// lines) added to each `[neard]` section.
    pub fn with_neard_config(&mut self, fake_neard: &Path, neard_toml: &str, lock_toml: &str) -> std::io::Result<()> {
        let keys = self.root.join("keys");
        std::fs::create_dir_all(&keys)?;
        let key = |name: &str, body: String| -> std::io::Result<PathBuf> {
            let path = keys.join(name);
            std::fs::write(&path, body)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok(path)
        };
        let validator_key = key(
            "validator_key.json",
            r#"{"account_id":"pool.demo","public_key":"ed25519:validator","secret_key":"ed25519:secret"}"#.into(),
        )?;
        let validator_node_key = key(
            "validator_node_key.json",
            r#"{"account_id":"node","public_key":"ed25519:validatornode","secret_key":"ed25519:secret"}"#.into(),
        )?;
        for n in self.nodes.iter().filter(|n| n.role == Role::Validator) {
            let home = self.root.join(format!("neard{}", n.id));
            std::fs::create_dir_all(&home)?;
            let config = serde_json::json!({
                "rpc": { "addr": format!("127.0.0.1:{}", free_port()?) },
                "network": { "addr": "0.0.0.0:0" },
            });
            std::fs::write(home.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
            let voter_key = key(
                &format!("voter_node_key_{}.json", n.id),
                format!(
                    r#"{{"account_id":"node","public_key":"ed25519:voter{}","secret_key":"ed25519:secret"}}"#,
                    n.id
                ),
            )?;
            let section = format!(
                "\n[neard]\nbinary = \"{}\"\nhome = \"{}\"\nvalidator_key = \"{}\"\nvalidator_node_key = \"{}\"\nvoter_node_key = \"{}\"\nvalidator_network_addr = \"127.0.0.1:{}\"\nvoter_network_addr = \"127.0.0.1:{}\"\nstop_timeout = \"5s\"\n{neard_toml}\n\n{lock_toml}\n",
                fake_neard.display(),
                home.display(),
                validator_key.display(),
                validator_node_key.display(),
                voter_key.display(),
                free_port()?,
                free_port()?,
            );
            let mut text = std::fs::read_to_string(&n.config)?;
            text.push_str(&section);
            std::fs::write(&n.config, text)?;
        }
        let ledger = self.ledger();
        self.env
            .push(("FAKE_NEARD_LEDGER".into(), ledger.display().to_string()));
        Ok(())
    }

    /// The signature ledger fake-neard appends to (see `with_neard`).
    pub fn ledger(&self) -> PathBuf {
        self.root.join("ledger.jsonl")
    }

    /// Adds an environment variable for every agent started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Adds an environment variable for node `i` only (started from now on);
    /// it wins over one set with [`LocalCluster::set_env`].
    pub fn set_node_env(&mut self, i: usize, key: &str, value: &str) {
        self.nodes[i].env.push((key.to_string(), value.to_string()));
    }

    /// Starts node `i`, appending its output to its log.
    pub fn start(&mut self, i: usize) -> std::io::Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = Command::new(&self.bin)
            .envs(self.env.iter().chain(&node.env).map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("agent")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `i` and waits up to 10 s for it to exit.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Node `i`'s `/v1/status`, if it answers.
    pub async fn status(&self, i: usize) -> Option<NodeStatus> {
        let url = format!("http://{}/v1/status", self.nodes[i].api);
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    /// The index of the leader that every running node in `among` agrees on.
    pub async fn agreed_leader(&self, among: &[usize]) -> Option<usize> {
        let mut agreed = None;
        for &i in among {
            let leader = self.status(i).await?.leader_id?;
            if agreed.is_some_and(|l| l != leader) {
                return None;
            }
            agreed = Some(leader);
        }
        let leader = agreed?;
        among.iter().copied().find(|&i| self.nodes[i].id == leader)
    }

    /// Polls `agreed_leader` every 10 ms until it answers or `timeout` passes.
    pub async fn wait_leader(&self, among: &[usize], timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(i) = self.agreed_leader(among).await {
                return Some(i);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Writes `key` through node `i`; the committed index.
    pub async fn put(&self, i: usize, key: &str, value: &str) -> Result<u64, String> {
        let url = format!("http://{}/v1/kv/{key}", self.nodes[i].api);
        let resp = self
            .http
            .put(url)
            .body(value.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        match body["index"].as_u64() {
            Some(index) if ok => Ok(index),
            _ => Err(body.to_string()),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for i in 0..self.nodes.len() {
            self.terminate(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A free port on 127.0.0.1 that this process has not handed out before.
///
/// Ports come from below the kernel's ephemeral range (32768..61000 by
/// default), so a port released here cannot be taken in the meantime as the
/// source port of some outgoing connection (which made agents fail to bind
/// their API on a busy CI box). Each process starts at a random point of the
/// range and walks on, so tests of one binary never get the same port twice.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering;
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::random::<u32>() % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(format!(
        "no free port in 127.0.0.1:{LOW}..{}",
        LOW + SPAN
    )))
}
