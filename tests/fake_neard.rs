//! `fake-neard` behaves like neard where failoverd looks: command line, config.json addresses,
//! `/status` and JSON-RPC `status`, validating iff `validator_key.json` exists at start, the
//! signing ledger, the sync file, and the start and stop delays.

use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::json;
use serde_json::Value;
use tempfile::TempDir;

const FAKE_NEARD: &str = env!("CARGO_BIN_EXE_fake-neard");
/// Upper bound for anything to happen on a loaded CI box.
const PATIENCE: Duration = Duration::from_secs(15);
const BLOCK_MS: u64 = 20;

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

/// A neard home in a temp dir, with a ledger and sync-file path beside it.
struct Home {
    dir: TempDir,
    rpc: SocketAddr,
    network: SocketAddr,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rpc, network) = (free_addr(), free_addr());
        let config = json!({"rpc": {"addr": rpc.to_string()}, "network": {"addr": network.to_string()}});
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write config.json");
        Self { dir, rpc, network }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes `validator_key.json` a symlink to a key for `pool.test`, as failoverd does.
    fn add_validator_key(&self) {
        let key = self.path().join("keys-pool.test.json");
        let text = r#"{"account_id":"pool.test","public_key":"ed25519:x","secret_key":"ed25519:y"}"#;
        std::fs::write(&key, text).expect("write key");
        std::os::unix::fs::symlink(&key, self.path().join("validator_key.json")).expect("symlink key");
    }

    fn ledger(&self) -> PathBuf {
        self.path().join("ledger.jsonl")
    }

    fn sync_file(&self) -> PathBuf {
        self.path().join("syncing")
    }

    fn start(&self, env: &[(&str, &str)]) -> FakeNeard {
        let home = self.path().to_str().expect("utf-8 temp path");
        let mut command = Command::new(FAKE_NEARD);
        command
            .args([
                "--home",
                home,
                "run",
                "--boot-nodes",
                "ed25519:abc@127.0.0.1:1",
                "--archive",
            ])
            .env("FAKE_NEARD_BLOCK_MS", BLOCK_MS.to_string())
            .env("FAKE_NEARD_LEDGER", self.ledger())
            .env("FAKE_NEARD_SYNC_FILE", self.sync_file())
            .env("FAILOVERD_NODE_NAME", "node-a")
            .env_remove("FAKE_NEARD_START_DELAY_MS")
            .env_remove("FAKE_NEARD_STOP_DELAY_MS")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        FakeNeard {
            child: command.spawn().expect("spawn fake-neard"),
            rpc: self.rpc,
        }
    }

    /// The ledger's lines, parsed; an absent ledger is empty.
    fn ledger_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.ledger()).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).expect("ledger line is JSON"))
            .collect()
    }

    async fn wait_ledger_len(&self, at_least: usize) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let lines = self.ledger_lines();
            if lines.len() >= at_least {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "ledger has {} lines, wanted {at_least}",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running fake-neard; dropping it kills and reaps it.
struct FakeNeard {
    child: Child,
    rpc: SocketAddr,
}

impl FakeNeard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn status(&self) -> Option<Value> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let response = client.get(format!("http://{}/status", self.rpc)).send().await.ok()?;
        response.error_for_status().ok()?.json().await.ok()
    }

    async fn wait_ready(&mut self) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.status().await {
                return status;
            }
            assert!(
                self.child.try_wait().expect("try_wait").is_none(),
                "fake-neard exited before answering"
            );
            assert!(
                Instant::now() < deadline,
                "fake-neard did not answer /status within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "fake-neard did not exit within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("send signal");
    }
}

impl Drop for FakeNeard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Without validator_key.json the node is synced, names no validator, and never signs.
#[tokio::test]
async fn without_validator_key_it_is_synced_and_never_signs() {
    let home = Home::new();
    let mut neard = home.start(&[]);
    let status = neard.wait_ready().await;
    assert_eq!(status["sync_info"]["syncing"], json!(false));
    assert!(status["sync_info"]["latest_block_height"].is_u64(), "{status}");
    assert_eq!(status["validator_account_id"], Value::Null);
    assert_eq!(status["version"], json!({"version": "fake", "build": "fake"}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        home.ledger_lines().is_empty(),
        "a non-validator signed: {:?}",
        home.ledger_lines()
    );
}

/// A dangling validator_key.json symlink means not validating.
#[tokio::test]
async fn dangling_validator_key_symlink_is_not_validating() {
    let home = Home::new();
    std::os::unix::fs::symlink(home.path().join("gone.json"), home.path().join("validator_key.json")).unwrap();
    let mut neard = home.start(&[]);
    let status = neard.wait_ready().await;
    assert_eq!(status["validator_account_id"], Value::Null);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(home.ledger_lines().is_empty());
}

/// With a validator_key.json symlink it validates as the key's account and appends one well-formed
/// ledger line per block, with increasing height and time.
#[tokio::test]
async fn validator_key_symlink_makes_it_sign_ledger_lines() {
    let home = Home::new();
    home.add_validator_key();
    let mut neard = home.start(&[]);
    let status = neard.wait_ready().await;
    assert_eq!(status["validator_account_id"], json!("pool.test"));
    assert_eq!(status["sync_info"]["syncing"], json!(false));

    let lines = home.wait_ledger_len(10).await;
    for line in &lines {
        let fields: Vec<&String> = line.as_object().expect("object").keys().collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!(line["node"], json!("node-a"));
        assert_eq!(line["pid"], json!(neard.pid()));
    }
    for pair in lines.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            b["height"].as_u64().unwrap() > a["height"].as_u64().unwrap(),
            "{a} then {b}"
        );
        assert!(
            b["t_ns"].as_u64().unwrap() > a["t_ns"].as_u64().unwrap(),
            "{a} then {b}"
        );
    }
    let status = neard.status().await.expect("status");
    assert!(status["sync_info"]["latest_block_height"].as_u64().unwrap() >= lines[9]["height"].as_u64().unwrap());
}

/// While the sync file exists the node reports syncing and stops signing; removing it resumes signing.
#[tokio::test]
async fn sync_file_reports_syncing_and_pauses_signing() {
    let home = Home::new();
    home.add_validator_key();
    let mut neard = home.start(&[]);
    neard.wait_ready().await;
    home.wait_ledger_len(3).await;

    std::fs::write(home.sync_file(), "").unwrap();
    let status = neard.status().await.expect("status");
    assert_eq!(status["sync_info"]["syncing"], json!(true));
    // The status answer was served after any block that started before the file existed.
    let paused = home.ledger_lines().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(home.ledger_lines().len(), paused, "signed while syncing");

    std::fs::remove_file(home.sync_file()).unwrap();
    let status = neard.status().await.expect("status");
    assert_eq!(status["sync_info"]["syncing"], json!(false));
    home.wait_ledger_len(paused + 3).await;
}

/// SIGTERM with a stop delay keeps signing through the delay, then exits 0 no sooner than the delay.
#[tokio::test]
async fn sigterm_exits_zero_after_stop_delay() {
    let home = Home::new();
    home.add_validator_key();
    let mut neard = home.start(&[("FAKE_NEARD_STOP_DELAY_MS", "300")]);
    neard.wait_ready().await;
    home.wait_ledger_len(1).await;

    let signed_before = home.ledger_lines().len();
    let sent = Instant::now();
    neard.signal(Signal::SIGTERM);
    let status = neard.wait_exit().await;
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(took >= Duration::from_millis(300), "exited after {took:?}");
    assert!(
        home.ledger_lines().len() > signed_before,
        "did not sign during the stop delay"
    );
}

/// SIGINT stops it like SIGTERM.
#[tokio::test]
async fn sigint_exits_zero() {
    let home = Home::new();
    let mut neard = home.start(&[]);
    neard.wait_ready().await;
    neard.signal(Signal::SIGINT);
    assert_eq!(neard.wait_exit().await.code(), Some(0));
}

/// `POST /` answers JSON-RPC `status` with the request's id, and unknown methods with an error.
#[tokio::test]
async fn json_rpc_status_over_post() {
    let home = Home::new();
    home.add_validator_key();
    let mut neard = home.start(&[]);
    neard.wait_ready().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = format!("http://{}/", home.rpc);

    let request = json!({"jsonrpc": "2.0", "id": "x", "method": "status", "params": []});
    let response: Value = client
        .post(&url)
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["jsonrpc"], json!("2.0"));
    assert_eq!(response["id"], json!("x"));
    assert_eq!(response["result"]["validator_account_id"], json!("pool.test"));
    assert_eq!(response["result"]["sync_info"]["syncing"], json!(false));

    let request = json!({"jsonrpc": "2.0", "id": 7, "method": "no_such_method", "params": []});
    let response: Value = client
        .post(&url)
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["id"], json!(7));
    assert!(response["error"]["code"].is_i64(), "{response}");
}

/// Both config.json addresses, rpc.addr and network.addr, accept TCP connections.
#[tokio::test]
async fn listens_on_rpc_and_network_addrs() {
    let home = Home::new();
    let mut neard = home.start(&[]);
    neard.wait_ready().await;
    for addr in [home.rpc, home.network] {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    }
}

/// FAKE_NEARD_START_DELAY_MS defers answering by at least the delay.
#[tokio::test]
async fn start_delay_defers_answering() {
    let home = Home::new();
    let started = Instant::now();
    let mut neard = home.start(&[("FAKE_NEARD_START_DELAY_MS", "400")]);
    neard.wait_ready().await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered after {:?}",
        started.elapsed()
    );
}

/// A home without config.json exits 1 with a message naming the file.
#[test]
fn missing_config_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(FAKE_NEARD)
        .args(["--home", dir.path().to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fake-neard");
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fake-neard without config.json still running after {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().expect("collect output");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let config = dir.path().join("config.json");
    assert!(
        stderr.contains(config.to_str().unwrap()),
        "stderr does not name {}: {stderr}",
        config.display()
    );
}
