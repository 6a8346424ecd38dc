//! neard as the supervisor sees it: its home (key symlinks and `config.json`,
//! the way kuutamod switches between voter and validator), its process (always
//! under a `failoverd fence`), and its health (RPC `status`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::process::ChildStdin;
use tokio::process::Command;

use crate::config::NeardConfig;

/// A supervisor failure (all retryable by restarting neard, except `Keys`).
#[derive(Debug, thiserror::Error)]
pub enum NeardError {
    /// A file in the home or a key file cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// neard (or its fence) could not be started.
    #[error("cannot start neard: {0}")]
    Spawn(String),
}

fn file_err(path: &Path, reason: impl ToString) -> NeardError {
    NeardError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// neard's home directory and the key files.
#[derive(Debug, Clone)]
pub struct NeardHome {
    cfg: NeardConfig,
}

impl NeardHome {
    /// The home described by `[neard]`.
    pub fn new(cfg: NeardConfig) -> Self {
        NeardHome { cfg }
    }

    /// The `[neard]` settings.
    pub fn config(&self) -> &NeardConfig {
        &self.cfg
    }

    fn config_path(&self) -> PathBuf {
        self.cfg.home.join("config.json")
    }

    fn read_config(&self) -> Result<Value, NeardError> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
        serde_json::from_str(&text).map_err(|e| file_err(&path, format!("not JSON: {e}")))
    }

    fn write_config(&self, value: &Value) -> Result<(), NeardError> {
        let path = self.config_path();
        let tmp = path.with_extension("json.failoverd-tmp");
        let text = serde_json::to_string_pretty(value).map_err(|e| file_err(&path, e))?;
        std::fs::write(&tmp, text).map_err(|e| file_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| file_err(&path, e))
    }

    /// neard's RPC address from `config.json` (`rpc.addr`, default 0.0.0.0:3030),
    /// with a wildcard host replaced by loopback.
    pub fn rpc_addr(&self) -> Result<String, NeardError> {
        let config = self.read_config()?;
        let addr = config
            .pointer("/rpc/addr")
            .and_then(Value::as_str)
            .unwrap_or("0.0.0.0:3030");
        Ok(addr
            .replacen("0.0.0.0:", "127.0.0.1:", 1)
            .replacen("[::]:", "[::1]:", 1))
    }

    /// The pool's account id, from `validator_key.json`.
    pub fn account_id(&self) -> Result<String, NeardError> {
        let path = &self.cfg.validator_key;
        let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        let key: Value = serde_json::from_str(&text).map_err(|e| file_err(path, format!("not JSON: {e}")))?;
        key.get("account_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| file_err(path, "has no account_id"))
    }

    /// Key files that others can read: returned so they can be reported loudly.
    pub fn exposed_keys(&self) -> Vec<String> {
        [
            &self.cfg.validator_key,
            &self.cfg.validator_node_key,
            &self.cfg.voter_node_key,
        ]
        .into_iter()
        .filter_map(|p| {
            let mode = std::fs::metadata(p).ok()?.permissions().mode();
            (mode & 0o077 != 0).then(|| {
                format!(
                    "{} is readable by group or others (mode {:o})",
                    p.display(),
                    mode & 0o777
                )
            })
        })
        .collect()
    }

    /// Checks that the three key files and `config.json` can be read.
    pub fn check(&self) -> Result<(), NeardError> {
        for path in [
            &self.cfg.validator_key,
            &self.cfg.validator_node_key,
            &self.cfg.voter_node_key,
        ] {
            std::fs::File::open(path).map_err(|e| file_err(path, e))?;
        }
        self.read_config().map(|_| ())
    }

    /// Voter mode: no validator key in the home, this host's own node key, the
    /// voter network address, no public address.
    pub fn setup_voter(&self) -> Result<(), NeardError> {
        let key = self.cfg.home.join("validator_key.json");
        if key.symlink_metadata().is_ok() {
            std::fs::remove_file(&key).map_err(|e| file_err(&key, e))?;
        }
        self.link("node_key.json", &self.cfg.voter_node_key)?;
        let mut config = self.read_config()?;
        set(&mut config, "addr", Value::String(self.cfg.voter_network_addr.clone()));
        set(&mut config, "public_addrs", Value::Array(Vec::new()));
        self.write_config(&config)
    }

    /// Validator mode: the pool's validator key and node key, the validator
    /// network address and, if configured, the public address.
    pub fn setup_validator(&self) -> Result<(), NeardError> {
        self.link("validator_key.json", &self.cfg.validator_key)?;
        self.link("node_key.json", &self.cfg.validator_node_key)?;
        let mut config = self.read_config()?;
        set(
            &mut config,
            "addr",
            Value::String(self.cfg.validator_network_addr.clone()),
        );
        let public = if self.cfg.public_address.is_empty() {
            Vec::new()
        } else {
            let port = self
                .cfg
                .validator_network_addr
                .rsplit_once(':')
                .map_or("24567", |(_, p)| p);
            let key = self.node_public_key(&self.cfg.validator_node_key)?;
            vec![Value::String(format!("{key}@{}:{port}", self.cfg.public_address))]
        };
        set(&mut config, "public_addrs", Value::Array(public));
        self.write_config(&config)
    }

    fn node_public_key(&self, path: &Path) -> Result<String, NeardError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        let key: Value = serde_json::from_str(&text).map_err(|e| file_err(path, format!("not JSON: {e}")))?;
        key.get("public_key")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| file_err(path, "has no public_key"))
    }

    /// `<home>/<name>` -> `target` (absolute), replacing what was there.
    fn link(&self, name: &str, target: &Path) -> Result<(), NeardError> {
        let link = self.cfg.home.join(name);
        let target = std::fs::canonicalize(target).map_err(|e| file_err(target, e))?;
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).map_err(|e| file_err(&link, e))?;
        }
        std::os::unix::fs::symlink(&target, &link).map_err(|e| file_err(&link, e))
    }

    /// Whether the validator key is in the home right now.
    pub fn has_validator_key(&self) -> bool {
        self.cfg.home.join("validator_key.json").symlink_metadata().is_ok()
    }
}

/// Sets `network.<field>` in a neard config.
fn set(config: &mut Value, field: &str, value: Value) {
    if !config.is_object() {
        *config = Value::Object(Default::default());
    }
    let network = &mut config["network"];
    if !network.is_object() {
        *network = Value::Object(Default::default());
    }
    network[field] = value;
}

/// neard running under a `failoverd fence`.
pub struct NeardProcess {
    child: Child,
    control: Option<ChildStdin>,
    /// Whether this is validator (signing) neard.
    pub validating: bool,
}

impl NeardProcess {
    /// Starts neard under a fence: with `deadline_ns` the fence SIGKILLs neard
    /// at that CLOCK_BOOTTIME time unless moved; it always kills neard if this
    /// agent dies (its control pipe closes).
    pub fn spawn(
        fence: &Path,
        home: &NeardHome,
        node_name: &str,
        deadline_ns: Option<u64>,
    ) -> Result<Self, NeardError> {
        let cfg = &home.cfg;
        let mut cmd = Command::new(fence);
        cmd.arg("fence");
        if let Some(ns) = deadline_ns {
            cmd.arg("--deadline-ns").arg(ns.to_string());
        }
        cmd.arg("--").arg(&cfg.binary).arg("--home").arg(&cfg.home).arg("run");
        if !cfg.boot_nodes.is_empty() {
            cmd.arg("--boot-nodes").arg(&cfg.boot_nodes);
        }
        cmd.env("FAILOVERD_NODE_NAME", node_name)
            .stdin(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| NeardError::Spawn(format!("{}: {e}", fence.display())))?;
        let control = child.stdin.take();
        Ok(NeardProcess {
            child,
            control,
            validating: deadline_ns.is_some(),
        })
    }

    async fn send(&mut self, line: String) {
        if let Some(control) = &mut self.control {
            let write = control.write_all(line.as_bytes());
            if !matches!(tokio::time::timeout(Duration::from_secs(1), write).await, Ok(Ok(()))) {
                tracing::warn!("fence control pipe failed; the fence will kill neard");
            }
        }
    }

    /// Moves the lease deadline the fence enforces.
    pub async fn set_deadline(&mut self, deadline_ns: u64) {
        self.send(format!("deadline {deadline_ns}\n")).await;
    }

    /// SIGKILLs neard now (and, as a fallback, the fence, whose death kills neard).
    pub async fn kill(mut self) {
        self.send("kill\n".to_string()).await;
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            self.kill_hard().await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace` (the fence never waits past the deadline).
    pub async fn stop(mut self, grace: Duration) {
        self.send(format!("stop {}\n", grace.as_millis())).await;
        if tokio::time::timeout(grace + Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            self.kill_hard().await;
        }
    }

    /// The fence did not obey: SIGKILL neard itself, then the fence (whose
    /// death would also kill neard, but asynchronously).
    async fn kill_hard(&mut self) {
        if let Some(pid) = self.neard_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill().await;
    }

    /// Resolves when the fence (and so neard) has exited.
    pub async fn exited(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// The pid of neard itself (the fence's child), if it can be found.
    pub fn neard_pid(&self) -> Option<u32> {
        let fence = self.child.id()?;
        let children = std::fs::read_to_string(format!("/proc/{fence}/task/{fence}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
}

/// What neard's `status` RPC says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// `sync_info.syncing`.
    pub syncing: bool,
    /// `sync_info.latest_block_height`.
    pub height: u64,
}

/// Asks neard's RPC `GET /status`, with a 1 s timeout.
pub async fn health(http: &reqwest::Client, rpc_addr: &str) -> Result<Health, String> {
    let resp = http
        .get(format!("http://{rpc_addr}/status"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    let syncing = body
        .pointer("/sync_info/syncing")
        .and_then(Value::as_bool)
        .ok_or("no sync_info.syncing")?;
    let height = body
        .pointer("/sync_info/latest_block_height")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(Health { syncing, height })
}
