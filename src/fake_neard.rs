//! `fake-neard`: the neard stand-in used by tests and the demo (the `fake-neard`
//! binary, and `failoverd fake-neard`).
//!
//! It takes neard's command line (`fake-neard --home <home> run [--boot-nodes <list>]`) and reads the
//! same files failoverd manages in the home, so the supervisor drives it exactly as it drives neard:
//!
//! - `config.json`: listens on `rpc.addr` (default `0.0.0.0:3030`) and `network.addr` (default
//!   `0.0.0.0:24567`). The network port accepts connections and closes them.
//! - `validator_key.json` (symlinks followed): if it exists when the process starts, the node
//!   validates as its `account_id`; a missing file or dangling symlink means it does not.
//! - `node_key.json`: optional; its `public_key` is reported in `/status`.
//!
//! RPC: `GET /status` returns neard's status object; `POST /` answers the JSON-RPC method `status`.
//!
//! Each block (`FAKE_NEARD_BLOCK_MS`) the height advances; a validator also "signs" it, appending
//! one JSON line to the ledger file, which several processes may share to prove that at most one
//! signer existed at any instant:
//!
//! ```text
//!   block ticker --height--> Node <--reads-- RPC handlers (GET /status, POST /)
//!        |
//!        +--(validating, not syncing)--> ledger: {"t_ns","node","pid","height"}, one write(2) per line
//!   main: config -> start delay -> bind -> SIGTERM/SIGINT -> stop delay (still signing) -> exit 0
//! ```
//!
//! Heights follow the shared CLOCK_MONOTONIC (`max(previous + 1, now / block)`), so processes that
//! sign at the same time sign the same heights, as two real signers of one key would. A syncing
//! node (while `FAKE_NEARD_SYNC_FILE` exists) neither advances nor signs: real neard produces no
//! blocks until it has caught up.
//!
//! Environment:
//! - `FAKE_NEARD_BLOCK_MS`: block interval in milliseconds (default 100, at least 1).
//! - `FAKE_NEARD_LEDGER`: file to append signatures to (opened `O_APPEND`, created if missing).
//! - `FAKE_NEARD_SYNC_FILE`: while this file exists the node reports `syncing: true`.
//! - `FAKE_NEARD_START_DELAY_MS`: wait before binding ports (a slow start). A signal during it
//!   exits 0 at once.
//! - `FAKE_NEARD_STOP_DELAY_MS`: after SIGTERM or SIGINT keep running (serving and signing) this
//!   long, then exit 0. Further signals do not shorten it; SIGKILL does.
//! - `FAILOVERD_NODE_NAME`: the `node` written in ledger lines (default: the hostname).
//!
//! Any startup error (unreadable or malformed file, bad variable, port in use) exits 1 with a
//! message naming the file, key, variable or address.
#![deny(unsafe_code)]

use std::fs::File;
use std::io::IsTerminal;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use clap::Parser;
use nix::time::clock_gettime;
use nix::time::ClockId;
use serde::Serialize;
use serde_json::json;
use serde_json::Value;
use tokio::net::TcpListener;
use tracing::error;
use tracing::info;

/// neard's command line, as much of it as failoverd uses.
#[derive(Parser)]
#[command(name = "fake-neard", about = "A neard stand-in for failoverd's tests and demo")]
struct Cli {
    /// neard home directory: config.json, validator_key.json, node_key.json.
    #[arg(long)]
    home: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the node.
    Run {
        /// Comma-separated boot nodes; logged and otherwise ignored.
        #[arg(long)]
        boot_nodes: Option<String>,
        /// Other neard `run` flags: accepted and ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        ignored: Vec<String>,
    },
}

/// Knobs from the environment (see the module header).
struct Settings {
    block: Duration,
    ledger: Option<PathBuf>,
    sync_file: Option<PathBuf>,
    start_delay: Duration,
    stop_delay: Duration,
    node_name: String,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let node_name = match std::env::var("FAILOVERD_NODE_NAME") {
            Ok(name) => name,
            Err(_) => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let block = millis("FAKE_NEARD_BLOCK_MS", 100)?;
        if block.is_zero() {
            bail!("FAKE_NEARD_BLOCK_MS must be at least 1");
        }
        Ok(Self {
            block,
            ledger: std::env::var_os("FAKE_NEARD_LEDGER").map(PathBuf::from),
            sync_file: std::env::var_os("FAKE_NEARD_SYNC_FILE").map(PathBuf::from),
            start_delay: millis("FAKE_NEARD_START_DELAY_MS", 0)?,
            stop_delay: millis("FAKE_NEARD_STOP_DELAY_MS", 0)?,
            node_name,
        })
    }
}

/// A duration in milliseconds from the environment variable `var`.
fn millis(var: &str, default: u64) -> anyhow::Result<Duration> {
    let ms = match std::env::var(var) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{var}={text:?} is not a number of milliseconds"))?,
        Err(_) => default,
    };
    Ok(Duration::from_millis(ms))
}

/// What the home directory says, read once at start like neard does.
struct Home {
    rpc_addr: SocketAddr,
    network_addr: SocketAddr,
    validator: Option<ValidatorKey>,
    node_public_key: Option<String>,
}

struct ValidatorKey {
    account_id: String,
    public_key: Option<String>,
}

impl Home {
    fn load(home: &Path) -> anyhow::Result<Self> {
        let path = home.join("config.json");
        let config = read_json(&path)?.with_context(|| format!("cannot read {}: no such file", path.display()))?;
        let rpc_addr = addr(&config, &path, "rpc", "0.0.0.0:3030")?;
        let network_addr = addr(&config, &path, "network", "0.0.0.0:24567")?;

        let path = home.join("validator_key.json");
        let validator = match read_json(&path)? {
            None => None,
            Some(key) => {
                let Some(account_id) = key.get("account_id").and_then(Value::as_str) else {
                    bail!("{}: account_id is missing or not a string", path.display());
                };
                let public_key = key.get("public_key").and_then(Value::as_str).map(str::to_owned);
                Some(ValidatorKey {
                    account_id: account_id.to_owned(),
                    public_key,
                })
            }
        };
        let node_public_key = read_json(&home.join("node_key.json"))?
            .and_then(|key| key.get("public_key").and_then(Value::as_str).map(str::to_owned));
        Ok(Self {
            rpc_addr,
            network_addr,
            validator,
            node_public_key,
        })
    }
}

/// The JSON in `path`, or `None` if it does not exist (a dangling symlink does not exist).
fn read_json(path: &Path) -> anyhow::Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Some(value))
}

/// `<section>.addr` from config.json, or `default` when absent.
fn addr(config: &Value, path: &Path, section: &str, default: &str) -> anyhow::Result<SocketAddr> {
    let text = match config.get(section).and_then(|s| s.get("addr")) {
        None | Some(Value::Null) => default,
        Some(Value::String(text)) => text,
        Some(other) => bail!("{}: {section}.addr must be a string, not {other}", path.display()),
    };
    text.parse()
        .with_context(|| format!("{}: {section}.addr {text:?} is not an ip:port", path.display()))
}

/// One line of the signing ledger.
#[derive(Serialize)]
struct Signature<'a> {
    t_ns: u64,
    node: &'a str,
    pid: u32,
    height: u64,
}

/// The running node's state, shared by the block ticker and the RPC handlers.
struct Node {
    started: Instant,
    height: AtomicU64,
    home: Home,
    sync_file: Option<PathBuf>,
}

impl Node {
    fn syncing(&self) -> bool {
        self.sync_file.as_deref().is_some_and(Path::exists)
    }

    /// The next height: one more than the last, and caught up with the shared clock's slot.
    fn advance(&self, block: Duration) -> u64 {
        let slot = monotonic_ns() / block.as_nanos().max(1) as u64;
        let height = (self.height.load(Ordering::Relaxed) + 1).max(slot);
        self.height.store(height, Ordering::Relaxed);
        height
    }

    /// neard's `status` result, with the fields failoverd and people look at.
    fn status(&self) -> Value {
        let validator = self.home.validator.as_ref();
        json!({
            "chain_id": "fakenet",
            "version": {"version": "fake", "build": "fake"},
            "protocol_version": 1,
            "latest_protocol_version": 1,
            "rpc_addr": self.home.rpc_addr.to_string(),
            "validators": validator.map(|v| vec![json!({"account_id": v.account_id})]).unwrap_or_default(),
            "sync_info": {
                "latest_block_height": self.height.load(Ordering::Relaxed),
                "syncing": self.syncing(),
            },
            "validator_account_id": validator.map(|v| v.account_id.as_str()),
            "validator_public_key": validator.and_then(|v| v.public_key.as_deref()),
            "node_public_key": self.home.node_public_key,
            "node_key": self.home.node_public_key,
            "uptime_sec": self.started.elapsed().as_secs(),
        })
    }
}

/// Nanoseconds on CLOCK_MONOTONIC, which every process on the machine shares (network namespaces too).
fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// Advances the chain every block and, as a validator, records each signature in the ledger.
async fn produce_blocks(node: Arc<Node>, block: Duration, ledger: Option<File>, node_name: String) {
    let mut ticks = tokio::time::interval(block);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if node.syncing() {
            continue;
        }
        let height = node.advance(block);
        if let (Some(_), Some(ledger)) = (&node.home.validator, &ledger) {
            let signature = Signature {
                t_ns: monotonic_ns(),
                node: &node_name,
                pid: std::process::id(),
                height,
            };
            let mut line = serde_json::to_vec(&signature).expect("a signature serialises");
            line.push(b'\n');
            // One write(2) on an O_APPEND file: concurrent writers never interleave within a line.
            // A ledger that silently misses signatures would hide double-signing, so fail loudly.
            match (&*ledger).write(&line) {
                Ok(n) if n == line.len() => {}
                Ok(n) => fatal(format!("short write to the ledger: {n} of {} bytes", line.len())),
                Err(e) => fatal(format!("cannot write to the ledger: {e}")),
            }
        }
    }
}

fn fatal(message: String) -> ! {
    error!("{message}");
    std::process::exit(1)
}

/// `POST /`: neard's JSON-RPC endpoint; only `status` is implemented.
async fn json_rpc(node: Arc<Node>, body: String) -> Json<Value> {
    let request: Value = match serde_json::from_str(&body) {
        Ok(request) => request,
        Err(e) => {
            let error = json!({"code": -32700, "message": "Parse error", "data": e.to_string()});
            return Json(json!({"jsonrpc": "2.0", "id": null, "error": error}));
        }
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    match request.get("method").and_then(Value::as_str) {
        Some("status") => Json(json!({"jsonrpc": "2.0", "id": id, "result": node.status()})),
        method => {
            let error = json!({"code": -32601, "message": "Method not found", "data": method});
            Json(json!({"jsonrpc": "2.0", "id": id, "error": error}))
        }
    }
}

fn rpc_router(node: Arc<Node>) -> Router {
    let status_node = node.clone();
    Router::new()
        .route("/status", get(move || async move { Json(status_node.status()) }))
        .route("/health", get(|| async {}))
        .route("/", post(move |body: String| json_rpc(node, body)))
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {key} {addr}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut shutdown = pin!(crate::signal::shutdown());
    let Command::Run { boot_nodes, ignored } = cli.command;
    let home = Home::load(&cli.home)?;
    let settings = Settings::from_env()?;
    let ledger = match &settings.ledger {
        Some(path) => Some(
            File::options()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("cannot open FAKE_NEARD_LEDGER {}", path.display()))?,
        ),
        None => None,
    };

    if !settings.start_delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(settings.start_delay) => {}
            signal = &mut shutdown => {
                info!(signal, "stopped during the start delay");
                return Ok(());
            }
        }
    }

    let rpc = bind(home.rpc_addr, "rpc.addr").await?;
    let network = bind(home.network_addr, "network.addr").await?;
    let (rpc_addr, network_addr) = (rpc.local_addr()?, network.local_addr()?);
    let account_id = home.validator.as_ref().map(|v| v.account_id.clone());
    let node = Arc::new(Node {
        started: Instant::now(),
        height: AtomicU64::new(0),
        home,
        sync_file: settings.sync_file,
    });

    tokio::spawn(async move {
        // Peers are not simulated: the port only has to be open.
        while let Ok((stream, _)) = network.accept().await {
            drop(stream);
        }
    });
    let router = rpc_router(node.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(rpc, router).await {
            fatal(format!("rpc server on {rpc_addr} failed: {e}"));
        }
    });
    tokio::spawn(produce_blocks(node, settings.block, ledger, settings.node_name.clone()));

    info!(
        home = %cli.home.display(),
        %rpc_addr,
        %network_addr,
        validating = if account_id.is_some() { "yes" } else { "no" },
        account_id = account_id.as_deref().unwrap_or("-"),
        node = settings.node_name,
        boot_nodes = boot_nodes.as_deref().unwrap_or("-"),
        ignored_flags = ?ignored,
        "fake-neard running"
    );

    let signal = shutdown.await;
    info!(
        signal,
        stop_delay_ms = settings.stop_delay.as_millis() as u64,
        "stopping"
    );
    tokio::time::sleep(settings.stop_delay).await;
    info!("stopped");
    Ok(())
}

/// Runs fake-neard with `args` (the first is the program name); returns the exit code.
pub fn run_with_args(args: Vec<String>) -> i32 {
    let cli = Cli::parse_from(args);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // The failoverd binary may have set up logging already.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("fake-neard: cannot start a runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            error!("fake-neard: {e:#}");
            1
        }
    }
}
