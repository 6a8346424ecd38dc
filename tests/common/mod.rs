//! Test harness: real `failoverd agent` processes on 127.0.0.1, each with its
//! own config, data dir and log file in a temp dir. Dropping the cluster kills
//! every process; if the test is failing, the tail of each log is printed.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;

/// Path of the built `failoverd` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_failoverd");

/// Generous upper bound for anything cluster-wide to happen on a loaded CI box.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A free TCP port on 127.0.0.1, outside the ephemeral range and never handed
/// out twice in one test binary (see `failoverd::local_cluster::free_port`).
pub fn free_port() -> u16 {
    failoverd::local_cluster::free_port().expect("no free port")
}

/// One agent of a test cluster.
pub struct Agent {
    pub id: u64,
    pub name: String,
    pub role: &'static str,
    pub peer_addr: String,
    pub api_addr: String,
    /// The Consul-compatible API address.
    pub consul_addr: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Extra TOML appended to the generated config (e.g. a `[cluster.tls]` section).
    pub extra_toml: String,
    /// Whether the agent lists `initial_members` (false for nodes added later).
    pub initial: bool,
    child: Option<Child>,
}

impl Agent {
    /// The API base URL.
    pub fn api(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Whether the process is (still) running.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A set of agents sharing one temp dir.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub agents: Vec<Agent>,
    pub http: reqwest::Client,
    /// Members listed in every initial config, as TOML.
    members_toml: String,
}

impl Cluster {
    /// `roles.len()` agents with ids 1..=n, all initial members; none started.
    pub fn new(roles: &[&'static str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let agents: Vec<Agent> = roles
            .iter()
            .enumerate()
            .map(|(i, role)| new_agent(dir.path(), i as u64 + 1, role, true))
            .collect();
        let members_toml = members_toml(&agents);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        let cluster = Cluster {
            dir,
            agents,
            http,
            members_toml,
        };
        for i in 0..cluster.agents.len() {
            cluster.write_config(i);
        }
        cluster
    }

    /// Adds an agent that is not an initial member (to be added with `members add`).
    pub fn add_agent(&mut self, role: &'static str) -> usize {
        let id = self.agents.iter().map(|a| a.id).max().unwrap_or(0) + 1;
        self.agents.push(new_agent(self.dir.path(), id, role, false));
        let i = self.agents.len() - 1;
        self.write_config(i);
        i
    }

    /// (Re)writes agent `i`'s config file.
    pub fn write_config(&self, i: usize) {
        let a = &self.agents[i];
        let members = if a.initial { self.members_toml.as_str() } else { "[]" };
        let text = format!(
            "node_id = {}\nname = \"{}\"\nrole = \"{}\"\ndata_dir = \"{}\"\n\n[cluster]\nlisten = \"{}\"\ninitial_members = {}\n{}\n[api]\nlisten = \"{}\"\n\n[consul_api]\nlisten = \"{}\"\n",
            a.id,
            a.name,
            a.role,
            a.data_dir.display(),
            a.peer_addr,
            members,
            a.extra_toml,
            a.api_addr,
            a.consul_addr,
        );
        std::fs::write(&a.config, text).expect("write config");
    }

    /// Starts agent `i` (appending to its log).
    pub fn start(&mut self, i: usize) {
        let a = &mut self.agents[i];
        assert!(a.child.is_none(), "agent {} already started", a.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&a.config)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn failoverd");
        a.child = Some(child);
    }

    /// Starts every agent, in the given order.
    pub fn start_in_order(&mut self, order: &[usize]) {
        for &i in order {
            self.start(i);
        }
    }

    /// SIGKILLs agent `i` and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to agent `i` and waits (up to `PATIENCE`) for it to exit.
    pub fn terminate(&mut self, i: usize) -> (ExitStatus, Duration) {
        let mut child = self.agents[i].child.take().expect("agent not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let sent = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, sent.elapsed());
            }
            assert!(sent.elapsed() < PATIENCE, "agent did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `/v1/status` of agent `i`, if it answers.
    pub async fn status(&self, i: usize) -> Option<Value> {
        let url = format!("{}/v1/status", self.agents[i].api());
        let resp = self.http.get(url).timeout(Duration::from_secs(3)).send().await.ok()?;
        resp.json().await.ok()
    }

    /// Waits until the agents in `among` that answer agree on one leader that is
    /// itself among them; returns its index.
    pub async fn wait_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut leaders = Vec::new();
            for &i in among {
                if let Some(s) = self.status(i).await {
                    leaders.push(s["leader_id"].as_u64());
                }
            }
            if leaders.len() == among.len() {
                if let Some(Some(id)) = leaders.first().copied() {
                    if leaders.iter().all(|l| *l == Some(id)) {
                        if let Some(i) = among.iter().copied().find(|&i| self.agents[i].id == id) {
                            return i;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no common leader among {among:?}: {leaders:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// PUT through agent `i`; the committed log index.
    pub async fn put(&self, i: usize, key: &str, value: &str) -> Result<u64, String> {
        let url = format!("{}/v1/kv/{key}", self.agents[i].api());
        let resp = self
            .http
            .put(url)
            .body(value.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        body["index"].as_u64().ok_or_else(|| format!("no index in {body}"))
    }

    /// PUT with retries until acknowledged (or `PATIENCE` runs out).
    pub async fn put_eventually(&self, i: usize, key: &str, value: &str) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.put(i, key, value).await {
                Ok(index) => return index,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "put {key} via {i} never succeeded: {e}\n{}",
                    self.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Agent `i`'s applied value of `key`.
    pub async fn get(&self, i: usize, key: &str) -> Option<String> {
        let url = format!("{}/v1/kv/{key}", self.agents[i].api());
        let resp = self.http.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
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
                "agents {among:?} did not converge: {seen:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every agent's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for a in &self.agents {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            let _ = writeln!(
                out,
                "----- {} (node {}) log tail -----\n{}",
                a.name,
                a.id,
                tail.join("\n")
            );
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for i in 0..self.agents.len() {
            self.kill9(i);
        }
    }
}

fn new_agent(dir: &Path, id: u64, role: &'static str, initial: bool) -> Agent {
    Agent {
        id,
        name: format!("node{id}"),
        role,
        peer_addr: format!("127.0.0.1:{}", free_port()),
        api_addr: format!("127.0.0.1:{}", free_port()),
        consul_addr: format!("127.0.0.1:{}", free_port()),
        data_dir: dir.join(format!("data{id}")),
        config: dir.join(format!("node{id}.toml")),
        log: dir.join(format!("node{id}.log")),
        extra_toml: String::new(),
        initial,
        child: None,
    }
}

fn members_toml(agents: &[Agent]) -> String {
    let items: Vec<String> = agents
        .iter()
        .map(|a| format!("{{ id = {}, addr = \"{}\" }}", a.id, a.peer_addr))
        .collect();
    format!("[ {} ]", items.join(", "))
}

/// Runs the `failoverd` binary with `args` and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run failoverd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `text` without ANSI colour sequences: tracing colours field names even when
/// writing to a file, which would split `peer=ADDR` apart.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
        } else if chars.next() == Some('[') {
            // A CSI sequence ends with a byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

impl Cluster {
    /// Agent `i`'s whole log as plain text (colour codes removed).
    pub fn log_text(&self, i: usize) -> String {
        strip_ansi(&std::fs::read_to_string(&self.agents[i].log).unwrap_or_default())
    }

    /// Waits (up to `PATIENCE`) until agent `i`'s plain log, from byte `from` of
    /// [`Cluster::log_text`] on, has at least `times` lines containing every one
    /// of `needles`; returns those lines.
    pub async fn wait_log(&self, i: usize, from: usize, needles: &[&str], times: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.log_text(i);
            let lines: Vec<String> = text
                .get(from..)
                .unwrap_or("")
                .lines()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
                .collect();
            if lines.len() >= times {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} logged {} of {times} lines with {needles:?}\n{}",
                self.agents[i].name,
                lines.len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Like [`run_cli`], with extra env vars (inherited `FAILOVERD_*` vars removed),
/// and bounded: a process still running after `PATIENCE` is killed and reported
/// with exit code -1.
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FAILOVERD_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("run failoverd");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        code,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}
