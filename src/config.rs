//! Typed agent configuration: TOML file < `FAILOVERD_*` env < flags.
//!
//! Every key of the file can be overridden by an env var
//! `FAILOVERD_<SECTION>_<KEY>` and a flag `--<section>-<key>` (see
//! [`ConfigArgs`]). [`load`] merges the three, applies the defaults in
//! [`DEFAULTS`], and [`Config::validate`] checks the rules between fields. A
//! [`ConfigError`] names the key, where its value came from, and what is wrong;
//! the agent exits with code 64 on one, before binding any port.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::raft::NodeId;
use crate::raft::Role;

/// Exit code for a bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Default values, in one place.
pub struct Defaults {
    /// `data_dir`.
    pub data_dir: &'static str,
    /// `cluster.listen`.
    pub cluster_listen: &'static str,
    /// `cluster.heartbeat_interval`.
    pub heartbeat_interval: Duration,
    /// `cluster.election_timeout`.
    pub election_timeout: Duration,
    /// `api.listen`.
    pub api_listen: &'static str,
    /// `lock.consul_url`.
    pub consul_url: &'static str,
    /// `consul_api.listen`.
    pub consul_api_listen: &'static str,
    /// `consul_api.session_ttl_min`.
    pub session_ttl_min: Duration,
    /// `lock.session_ttl`.
    pub session_ttl: Duration,
    /// `neard.stop_timeout`.
    pub neard_stop_timeout: Duration,
    /// `neard.unhealthy_limit`.
    pub neard_unhealthy_limit: Duration,
}

/// The defaults. Timings are chosen for validators in different data centres:
/// a 250 ms heartbeat and a 1 s minimum election timeout tolerate round trips of
/// up to ~100 ms plus an fsync without spurious elections, and still elect a new
/// leader in about 3-4 s after a crash (see docs/architecture.md).
pub const DEFAULTS: Defaults = Defaults {
    data_dir: "/var/lib/failoverd",
    cluster_listen: "0.0.0.0:7700",
    heartbeat_interval: Duration::from_millis(250),
    election_timeout: Duration::from_secs(1),
    api_listen: "127.0.0.1:2233",
    consul_url: "http://127.0.0.1:8500",
    consul_api_listen: "127.0.0.1:8500",
    session_ttl_min: Duration::from_secs(10),
    session_ttl: Duration::from_secs(6),
    neard_stop_timeout: Duration::from_secs(30),
    neard_unhealthy_limit: Duration::from_secs(15),
};

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key} ({origin}): {reason}")]
pub struct ConfigError {
    /// The key, in file notation (`cluster.listen`).
    pub key: String,
    /// Where the value came from: the file, an env var or a flag.
    pub origin: String,
    /// What is wrong.
    pub reason: String,
}

/// The agent's configuration after merging and defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Unique id of this node in its cluster; never reused.
    pub node_id: NodeId,
    /// Human name; defaults to the hostname.
    pub name: String,
    /// Validator or arbiter.
    pub role: Role,
    /// Where the Raft log, vote and snapshots live.
    pub data_dir: PathBuf,
    /// Peer-to-peer settings.
    pub cluster: ClusterConfig,
    /// Local HTTP API.
    pub api: ApiConfig,
    /// Which lock service to use, and the validator lease.
    pub lock: LockConfig,
    /// neard (validators only; `None` when the section is absent).
    pub neard: Option<NeardConfig>,
    /// The Consul-compatible HTTP API (raft backend only).
    pub consul_api: ConsulApiConfig,
    /// Where each key came from, for error messages.
    pub origins: Origins,
}

/// Which implementation of the lock abstraction the agent uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The embedded Raft group (default).
    #[default]
    Raft,
    /// A real Consul agent; no Raft node is started.
    Consul,
}

/// `[lock]`: the lock service.
#[derive(Debug, Clone)]
pub struct LockConfig {
    /// "raft" (default) or "consul".
    pub backend: BackendKind,
    /// Base URL of the Consul agent (consul backend).
    pub consul_url: String,
    /// File holding the Consul ACL token; re-read on SIGHUP.
    pub consul_token_file: Option<PathBuf>,
    /// The validator lock's key; `None`: `failoverd/validator/<account_id>`.
    pub key: Option<String>,
    /// The lease: session TTL, renew cadence, lock-delay, fence margin.
    pub lease: LeaseConfig,
}

/// The validator lease timings. `renew_interval`, `lock_delay` and
/// `fence_margin` default to fractions of `session_ttl` (1/6, 1/3, 1/3), so
/// setting `session_ttl` alone gives a consistent profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The session TTL: the server never invalidates earlier than this after a renew.
    pub session_ttl: Duration,
    /// How often the holder (and standbys) renew.
    pub renew_interval: Duration,
    /// After an invalidation nobody may acquire the key for this long.
    pub lock_delay: Duration,
    /// The holder kills its signer at `last renew sent + session_ttl - fence_margin`.
    pub fence_margin: Duration,
}

impl LeaseConfig {
    /// The profile for `session_ttl` with every other value at its default fraction.
    pub fn from_ttl(session_ttl: Duration) -> Self {
        LeaseConfig {
            session_ttl,
            renew_interval: session_ttl / 6,
            lock_delay: session_ttl / 3,
            fence_margin: session_ttl / 3,
        }
    }
}

/// `[neard]`: how to run neard (validators only).
#[derive(Debug, Clone)]
pub struct NeardConfig {
    /// Path of the neard binary, or a name looked up on PATH.
    pub binary: PathBuf,
    /// neard's home directory.
    pub home: PathBuf,
    /// The pool's validator key (same file on every validator host).
    pub validator_key: PathBuf,
    /// The node key used while validating (same on every validator host).
    pub validator_node_key: PathBuf,
    /// This host's own node key, used while voting.
    pub voter_node_key: PathBuf,
    /// `network.addr` while validating.
    pub validator_network_addr: String,
    /// `network.addr` while voting.
    pub voter_network_addr: String,
    /// If set, written to `network.public_addrs` while validating.
    pub public_address: String,
    /// Passed as `--boot-nodes` when not empty.
    pub boot_nodes: String,
    /// SIGTERM -> SIGKILL on a planned stop.
    pub stop_timeout: Duration,
    /// The holder steps down if neard stays unhealthy or syncing this long.
    pub unhealthy_limit: Duration,
}

/// `[consul_api]`: the Consul-compatible HTTP API every raft-backed agent serves.
#[derive(Debug, Clone)]
pub struct ConsulApiConfig {
    /// Address to serve on; `None` (an empty string in the file) disables it.
    pub listen: Option<SocketAddr>,
    /// Smallest session TTL accepted from API clients (Consul's default 10s).
    pub session_ttl_min: Duration,
    /// If set, every request must carry this token (`X-Consul-Token` or `?token=`).
    pub token_file: Option<PathBuf>,
}

/// `[cluster]`: the Raft group.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Address the peer gRPC server binds.
    pub listen: SocketAddr,
    /// `host:port` peers dial to reach this node.
    pub advertise: String,
    /// Members that form the cluster on first start. Empty: wait to be added
    /// with `failoverd members add`.
    pub initial_members: Vec<InitialMember>,
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// Minimum election timeout; the maximum is twice this.
    pub election_timeout: Duration,
    /// Mutual TLS between peers; `None` means plaintext.
    pub tls: Option<TlsConfig>,
    /// If set, refuse a data dir that belongs to any other cluster id.
    pub expect_id: Option<String>,
}

/// One entry of `cluster.initial_members`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialMember {
    /// The member's node id.
    pub id: NodeId,
    /// The member's advertised `host:port`.
    pub addr: String,
}

/// `[cluster.tls]`: all three files or none.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM of the CA that signs every node certificate.
    pub ca_file: PathBuf,
    /// PEM certificate of this node.
    pub cert_file: PathBuf,
    /// PEM private key of this node.
    pub key_file: PathBuf,
}

/// `[api]`: the local HTTP API (health, status, metrics, members).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
}

/// Flags and env vars that override the file, one per key.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML config file.
    #[arg(long, short = 'c', env = "FAILOVERD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unique node id (u64), never reused in a cluster.
    #[arg(long, env = "FAILOVERD_NODE_ID")]
    pub node_id: Option<String>,
    /// Human name of this node (default: the hostname).
    #[arg(long, env = "FAILOVERD_NAME")]
    pub name: Option<String>,
    /// "validator" or "arbiter".
    #[arg(long, env = "FAILOVERD_ROLE")]
    pub role: Option<String>,
    /// Data directory (default /var/lib/failoverd).
    #[arg(long, env = "FAILOVERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Peer gRPC listen address (default 0.0.0.0:7700).
    #[arg(long, env = "FAILOVERD_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,
    /// host:port peers dial; required when listen is a wildcard.
    #[arg(long, env = "FAILOVERD_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Initial members as "ID=HOST:PORT,ID=HOST:PORT,...".
    #[arg(long, env = "FAILOVERD_CLUSTER_INITIAL_MEMBERS")]
    pub cluster_initial_members: Option<String>,
    /// Leader heartbeat interval, e.g. "250ms".
    #[arg(long, env = "FAILOVERD_CLUSTER_HEARTBEAT_INTERVAL")]
    pub cluster_heartbeat_interval: Option<String>,
    /// Minimum election timeout, e.g. "1s" (the maximum is twice this).
    #[arg(long, env = "FAILOVERD_CLUSTER_ELECTION_TIMEOUT")]
    pub cluster_election_timeout: Option<String>,
    /// Refuse a data dir of any cluster id but this one.
    #[arg(long, env = "FAILOVERD_CLUSTER_EXPECT_ID")]
    pub cluster_expect_id: Option<String>,
    /// PEM file of the cluster CA.
    #[arg(long, env = "FAILOVERD_CLUSTER_TLS_CA_FILE")]
    pub cluster_tls_ca_file: Option<PathBuf>,
    /// PEM certificate of this node.
    #[arg(long, env = "FAILOVERD_CLUSTER_TLS_CERT_FILE")]
    pub cluster_tls_cert_file: Option<PathBuf>,
    /// PEM private key of this node.
    #[arg(long, env = "FAILOVERD_CLUSTER_TLS_KEY_FILE")]
    pub cluster_tls_key_file: Option<PathBuf>,
    /// Local HTTP API listen address (default 127.0.0.1:2233).
    #[arg(long, env = "FAILOVERD_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Lock backend: "raft" (default) or "consul".
    #[arg(long, env = "FAILOVERD_LOCK_BACKEND")]
    pub lock_backend: Option<String>,
    /// Consul agent URL for the consul backend (default http://127.0.0.1:8500).
    #[arg(long, env = "FAILOVERD_LOCK_CONSUL_URL")]
    pub lock_consul_url: Option<String>,
    /// File with the Consul ACL token (re-read on SIGHUP).
    #[arg(long, env = "FAILOVERD_LOCK_CONSUL_TOKEN_FILE")]
    pub lock_consul_token_file: Option<PathBuf>,
    /// Consul-compatible API listen address (default 127.0.0.1:8500; "" disables).
    #[arg(long, env = "FAILOVERD_CONSUL_API_LISTEN")]
    pub consul_api_listen: Option<String>,
    /// Smallest session TTL accepted on the Consul-compatible API (default 10s).
    #[arg(long, env = "FAILOVERD_CONSUL_API_SESSION_TTL_MIN")]
    pub consul_api_session_ttl_min: Option<String>,
    /// File with the token the Consul-compatible API requires.
    #[arg(long, env = "FAILOVERD_CONSUL_API_TOKEN_FILE")]
    pub consul_api_token_file: Option<PathBuf>,
    /// The validator lock key (default failoverd/validator/<account_id>).
    #[arg(long, env = "FAILOVERD_LOCK_KEY")]
    pub lock_key: Option<String>,
    /// Validator session TTL (default 6s).
    #[arg(long, env = "FAILOVERD_LOCK_SESSION_TTL")]
    pub lock_session_ttl: Option<String>,
    /// Renew interval (default session_ttl/6).
    #[arg(long, env = "FAILOVERD_LOCK_RENEW_INTERVAL")]
    pub lock_renew_interval: Option<String>,
    /// Lock-delay (default session_ttl/3).
    #[arg(long, env = "FAILOVERD_LOCK_LOCK_DELAY")]
    pub lock_lock_delay: Option<String>,
    /// Fence margin (default session_ttl/3).
    #[arg(long, env = "FAILOVERD_LOCK_FENCE_MARGIN")]
    pub lock_fence_margin: Option<String>,
    /// neard binary (default "neard" on PATH).
    #[arg(long, env = "FAILOVERD_NEARD_BINARY")]
    pub neard_binary: Option<String>,
    /// neard home (default /var/lib/neard).
    #[arg(long, env = "FAILOVERD_NEARD_HOME")]
    pub neard_home: Option<String>,
    /// The pool's validator key file.
    #[arg(long, env = "FAILOVERD_NEARD_VALIDATOR_KEY")]
    pub neard_validator_key: Option<String>,
    /// The validator node key file.
    #[arg(long, env = "FAILOVERD_NEARD_VALIDATOR_NODE_KEY")]
    pub neard_validator_node_key: Option<String>,
    /// This host's voter node key file.
    #[arg(long, env = "FAILOVERD_NEARD_VOTER_NODE_KEY")]
    pub neard_voter_node_key: Option<String>,
    /// network.addr while validating (default 0.0.0.0:24567).
    #[arg(long, env = "FAILOVERD_NEARD_VALIDATOR_NETWORK_ADDR")]
    pub neard_validator_network_addr: Option<String>,
    /// network.addr while voting (default 0.0.0.0:24568).
    #[arg(long, env = "FAILOVERD_NEARD_VOTER_NETWORK_ADDR")]
    pub neard_voter_network_addr: Option<String>,
    /// Public IP written to network.public_addrs while validating.
    #[arg(long, env = "FAILOVERD_NEARD_PUBLIC_ADDRESS")]
    pub neard_public_address: Option<String>,
    /// neard --boot-nodes.
    #[arg(long, env = "FAILOVERD_NEARD_BOOT_NODES")]
    pub neard_boot_nodes: Option<String>,
    /// SIGTERM -> SIGKILL wait on a planned neard stop (default 30s).
    #[arg(long, env = "FAILOVERD_NEARD_STOP_TIMEOUT")]
    pub neard_stop_timeout: Option<String>,
    /// Step down after neard is unhealthy or syncing this long (default 15s).
    #[arg(long, env = "FAILOVERD_NEARD_UNHEALTHY_LIMIT")]
    pub neard_unhealthy_limit: Option<String>,
}

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<NodeId>,
    name: Option<String>,
    role: Option<Role>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    cluster: FileCluster,
    #[serde(default)]
    api: FileApi,
    #[serde(default)]
    lock: FileLock,
    #[serde(default)]
    consul_api: FileConsulApi,
    neard: Option<FileNeard>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLock {
    backend: Option<BackendKind>,
    consul_url: Option<String>,
    consul_token_file: Option<PathBuf>,
    key: Option<String>,
    session_ttl: Option<String>,
    renew_interval: Option<String>,
    lock_delay: Option<String>,
    fence_margin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNeard {
    binary: Option<PathBuf>,
    home: Option<PathBuf>,
    validator_key: Option<PathBuf>,
    validator_node_key: Option<PathBuf>,
    voter_node_key: Option<PathBuf>,
    validator_network_addr: Option<String>,
    voter_network_addr: Option<String>,
    public_address: Option<String>,
    boot_nodes: Option<String>,
    stop_timeout: Option<String>,
    unhealthy_limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConsulApi {
    listen: Option<String>,
    session_ttl_min: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    listen: Option<String>,
    advertise: Option<String>,
    initial_members: Option<Vec<InitialMember>>,
    heartbeat_interval: Option<String>,
    election_timeout: Option<String>,
    expect_id: Option<String>,
    tls: Option<FileTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    listen: Option<String>,
}

/// Where each key's value came from.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    file: Option<PathBuf>,
    overridden: Vec<(&'static str, String)>,
}

impl Origins {
    /// "flag --x", "env FAILOVERD_X", "file F" or "default" for `key`.
    pub fn of(&self, key: &str) -> String {
        if let Some((_, origin)) = self.overridden.iter().find(|(k, _)| *k == key) {
            return origin.clone();
        }
        match &self.file {
            Some(file) => format!("file {}", file.display()),
            None => "default".to_string(),
        }
    }

    fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.to_string(),
            origin: self.of(key),
            reason: reason.into(),
        }
    }
}

/// How a value given on the command line was given, for messages. The agent
/// answers this from clap's `ArgMatches`.
pub trait ArgSource {
    /// `Some("flag --x")` or `Some("env FAILOVERD_X")` if the arg `id` was given.
    fn source(&self, id: &str) -> Option<String>;
}

/// Reads the file (if any), applies `args` over it, then defaults; validates.
pub fn load(args: &ConfigArgs, sources: &dyn ArgSource) -> Result<Config, ConfigError> {
    let mut origins = Origins {
        file: args.config.clone(),
        overridden: Vec::new(),
    };
    let mut file = match &args.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    let mut note = |key: &'static str, id: &str| {
        if let Some(src) = sources.source(id) {
            origins.overridden.push((key, src));
        }
    };
    // Overrides, key by key. Parse errors are reported against the override.
    let mut node_id_text = None;
    if let Some(v) = &args.node_id {
        note("node_id", "node_id");
        node_id_text = Some(v.clone());
    }
    if let Some(v) = &args.name {
        note("name", "name");
        file.name = Some(v.clone());
    }
    let mut role_text = None;
    if let Some(v) = &args.role {
        note("role", "role");
        role_text = Some(v.clone());
    }
    if let Some(v) = &args.data_dir {
        note("data_dir", "data_dir");
        file.data_dir = Some(v.clone());
    }
    let c = &mut file.cluster;
    for (value, slot, key, id) in [
        (&args.cluster_listen, &mut c.listen, "cluster.listen", "cluster_listen"),
        (
            &args.cluster_advertise,
            &mut c.advertise,
            "cluster.advertise",
            "cluster_advertise",
        ),
        (
            &args.cluster_heartbeat_interval,
            &mut c.heartbeat_interval,
            "cluster.heartbeat_interval",
            "cluster_heartbeat_interval",
        ),
        (
            &args.cluster_election_timeout,
            &mut c.election_timeout,
            "cluster.election_timeout",
            "cluster_election_timeout",
        ),
        (
            &args.cluster_expect_id,
            &mut c.expect_id,
            "cluster.expect_id",
            "cluster_expect_id",
        ),
        (&args.api_listen, &mut file.api.listen, "api.listen", "api_listen"),
        (
            &args.lock_consul_url,
            &mut file.lock.consul_url,
            "lock.consul_url",
            "lock_consul_url",
        ),
        (
            &args.consul_api_listen,
            &mut file.consul_api.listen,
            "consul_api.listen",
            "consul_api_listen",
        ),
        (
            &args.consul_api_session_ttl_min,
            &mut file.consul_api.session_ttl_min,
            "consul_api.session_ttl_min",
            "consul_api_session_ttl_min",
        ),
    ] {
        if let Some(v) = value {
            note(key, id);
            *slot = Some(v.clone());
        }
    }
    let mut members_text = None;
    if let Some(v) = &args.cluster_initial_members {
        note("cluster.initial_members", "cluster_initial_members");
        members_text = Some(v.clone());
    }
    let tls = file.cluster.tls.get_or_insert_with(FileTls::default);
    for (value, slot, key, id) in [
        (
            &args.cluster_tls_ca_file,
            &mut tls.ca_file,
            "cluster.tls.ca_file",
            "cluster_tls_ca_file",
        ),
        (
            &args.cluster_tls_cert_file,
            &mut tls.cert_file,
            "cluster.tls.cert_file",
            "cluster_tls_cert_file",
        ),
        (
            &args.cluster_tls_key_file,
            &mut tls.key_file,
            "cluster.tls.key_file",
            "cluster_tls_key_file",
        ),
    ] {
        if let Some(v) = value {
            note(key, id);
            *slot = Some(v.clone());
        }
    }

    if let Some(text) = node_id_text {
        let id = text
            .trim()
            .parse()
            .map_err(|_| origins.error("node_id", format!("{text:?} is not a u64")))?;
        file.node_id = Some(id);
    }
    if let Some(text) = role_text {
        file.role = Some(text.parse().map_err(|e: String| origins.error("role", e))?);
    }
    if let Some(text) = members_text {
        file.cluster.initial_members =
            Some(parse_members(&text).map_err(|e| origins.error("cluster.initial_members", e))?);
    }
    if let Some(text) = &args.lock_backend {
        origins
            .overridden
            .push(("lock.backend", sources.source("lock_backend").unwrap_or_default()));
        file.lock.backend = Some(match text.as_str() {
            "raft" => BackendKind::Raft,
            "consul" => BackendKind::Consul,
            other => {
                return Err(origins.error("lock.backend", format!("{other:?} is not \"raft\" or \"consul\"")));
            }
        });
    }
    for (value, slot, key, id) in [
        (
            &args.lock_consul_token_file,
            &mut file.lock.consul_token_file,
            "lock.consul_token_file",
            "lock_consul_token_file",
        ),
        (
            &args.consul_api_token_file,
            &mut file.consul_api.token_file,
            "consul_api.token_file",
            "consul_api_token_file",
        ),
    ] {
        if let Some(v) = value {
            if let Some(src) = sources.source(id) {
                origins.overridden.push((key, src));
            }
            *slot = Some(v.clone());
        }
    }
    for (value, slot, key, id) in [
        (&args.lock_key, &mut file.lock.key, "lock.key", "lock_key"),
        (
            &args.lock_session_ttl,
            &mut file.lock.session_ttl,
            "lock.session_ttl",
            "lock_session_ttl",
        ),
        (
            &args.lock_renew_interval,
            &mut file.lock.renew_interval,
            "lock.renew_interval",
            "lock_renew_interval",
        ),
        (
            &args.lock_lock_delay,
            &mut file.lock.lock_delay,
            "lock.lock_delay",
            "lock_lock_delay",
        ),
        (
            &args.lock_fence_margin,
            &mut file.lock.fence_margin,
            "lock.fence_margin",
            "lock_fence_margin",
        ),
    ] {
        if let Some(v) = value {
            if let Some(src) = sources.source(id) {
                origins.overridden.push((key, src));
            }
            *slot = Some(v.clone());
        }
    }
    let neard_args = [
        &args.neard_binary,
        &args.neard_home,
        &args.neard_validator_key,
        &args.neard_validator_node_key,
        &args.neard_voter_node_key,
        &args.neard_validator_network_addr,
        &args.neard_voter_network_addr,
        &args.neard_public_address,
        &args.neard_boot_nodes,
        &args.neard_stop_timeout,
        &args.neard_unhealthy_limit,
    ];
    if neard_args.iter().any(|a| a.is_some()) {
        let n = file.neard.get_or_insert_with(FileNeard::default);
        let path = |v: &Option<String>| v.as_ref().map(PathBuf::from);
        let mut set = |v: &Option<String>, id: &'static str, key: &'static str| {
            if v.is_some() {
                if let Some(src) = sources.source(id) {
                    origins.overridden.push((key, src));
                }
            }
        };
        set(&args.neard_binary, "neard_binary", "neard.binary");
        set(&args.neard_home, "neard_home", "neard.home");
        set(&args.neard_validator_key, "neard_validator_key", "neard.validator_key");
        set(
            &args.neard_validator_node_key,
            "neard_validator_node_key",
            "neard.validator_node_key",
        );
        set(
            &args.neard_voter_node_key,
            "neard_voter_node_key",
            "neard.voter_node_key",
        );
        set(
            &args.neard_validator_network_addr,
            "neard_validator_network_addr",
            "neard.validator_network_addr",
        );
        set(
            &args.neard_voter_network_addr,
            "neard_voter_network_addr",
            "neard.voter_network_addr",
        );
        set(
            &args.neard_public_address,
            "neard_public_address",
            "neard.public_address",
        );
        set(&args.neard_boot_nodes, "neard_boot_nodes", "neard.boot_nodes");
        set(&args.neard_stop_timeout, "neard_stop_timeout", "neard.stop_timeout");
        set(
            &args.neard_unhealthy_limit,
            "neard_unhealthy_limit",
            "neard.unhealthy_limit",
        );
        n.binary = path(&args.neard_binary).or(n.binary.take());
        n.home = path(&args.neard_home).or(n.home.take());
        n.validator_key = path(&args.neard_validator_key).or(n.validator_key.take());
        n.validator_node_key = path(&args.neard_validator_node_key).or(n.validator_node_key.take());
        n.voter_node_key = path(&args.neard_voter_node_key).or(n.voter_node_key.take());
        n.validator_network_addr = args
            .neard_validator_network_addr
            .clone()
            .or(n.validator_network_addr.take());
        n.voter_network_addr = args.neard_voter_network_addr.clone().or(n.voter_network_addr.take());
        n.public_address = args.neard_public_address.clone().or(n.public_address.take());
        n.boot_nodes = args.neard_boot_nodes.clone().or(n.boot_nodes.take());
        n.stop_timeout = args.neard_stop_timeout.clone().or(n.stop_timeout.take());
        n.unhealthy_limit = args.neard_unhealthy_limit.clone().or(n.unhealthy_limit.take());
    }
    build(file, origins)?.validate()
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let origin = format!("file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: "--config".into(),
        origin: origin.clone(),
        reason: format!("cannot read the config file: {e}"),
    })?;
    toml::from_str(&text).map_err(|e| {
        let key = e
            .span()
            .map(|span| key_at(&text, span.start))
            .unwrap_or_else(|| "(file)".to_string());
        ConfigError {
            key,
            origin,
            reason: e.message().to_string(),
        }
    })
}

/// The dotted key whose value or name sits at byte `offset` of a TOML text,
/// found from the nearest `[section]` header and `key =` before it.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..text[line_start..].find('\n').map_or(text.len(), |i| line_start + i)];
    let key = line.split('=').next().unwrap_or("").trim().to_string();
    let section = before[..line_start]
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        .map(|s| s.trim().to_string());
    match section {
        Some(section) if !key.is_empty() && !key.starts_with('[') => format!("{section}.{key}"),
        Some(section) => section,
        None if !key.is_empty() => key,
        None => "(file)".to_string(),
    }
}

/// Parses "ID=HOST:PORT,ID=HOST:PORT".
fn parse_members(text: &str) -> Result<Vec<InitialMember>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
            let id = id
                .trim()
                .parse()
                .map_err(|_| format!("{id:?} in {item:?} is not a node id (u64)"))?;
            Ok(InitialMember {
                id,
                addr: addr.trim().to_string(),
            })
        })
        .collect()
}

fn build(file: FileConfig, origins: Origins) -> Result<Config, ConfigError> {
    let backend = file.lock.backend.unwrap_or_default();
    let raft = backend == BackendKind::Raft;
    // With the consul backend there is no Raft node: node_id and [cluster] are unused.
    let node_id = match file.node_id {
        Some(id) => id,
        None if !raft => 0,
        None => return Err(origins.error("node_id", "missing: every node needs a unique node_id")),
    };
    let name = match file.name {
        Some(name) => name,
        None => nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("node-{node_id}")),
    };
    let c = file.cluster;
    let listen_text = c.listen.unwrap_or_else(|| DEFAULTS.cluster_listen.to_string());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        origins.error(
            "cluster.listen",
            format!("{listen_text:?} is not an IP:PORT socket address"),
        )
    })?;
    let advertise = match c.advertise {
        Some(addr) => addr,
        None if listen.ip().is_unspecified() && raft => {
            return Err(origins.error(
                "cluster.advertise",
                format!("missing: required when cluster.listen ({listen}) is a wildcard address"),
            ))
        }
        None => listen.to_string(),
    };
    let duration = |key: &str, text: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        match text {
            None => Ok(default),
            Some(t) => humantime::parse_duration(&t)
                .map_err(|e| origins.error(key, format!("{t:?} is not a duration like \"250ms\" or \"1s\": {e}"))),
        }
    };
    let heartbeat_interval = duration(
        "cluster.heartbeat_interval",
        c.heartbeat_interval,
        DEFAULTS.heartbeat_interval,
    )?;
    let election_timeout = duration(
        "cluster.election_timeout",
        c.election_timeout,
        DEFAULTS.election_timeout,
    )?;
    let tls = match c.tls {
        None
        | Some(FileTls {
            ca_file: None,
            cert_file: None,
            key_file: None,
        }) => None,
        Some(FileTls {
            ca_file: Some(ca_file),
            cert_file: Some(cert_file),
            key_file: Some(key_file),
        }) => Some(TlsConfig {
            ca_file,
            cert_file,
            key_file,
        }),
        Some(partial) => {
            let missing: Vec<_> = [
                ("ca_file", partial.ca_file.is_none()),
                ("cert_file", partial.cert_file.is_none()),
                ("key_file", partial.key_file.is_none()),
            ]
            .into_iter()
            .filter_map(|(k, missing)| missing.then_some(k))
            .collect();
            return Err(origins.error(
                "cluster.tls",
                format!(
                    "give all three of ca_file, cert_file, key_file or none; missing: {}",
                    missing.join(", ")
                ),
            ));
        }
    };
    let api_text = file.api.listen.unwrap_or_else(|| DEFAULTS.api_listen.to_string());
    let api_listen: SocketAddr = api_text
        .parse()
        .map_err(|_| origins.error("api.listen", format!("{api_text:?} is not an IP:PORT socket address")))?;
    let session_ttl = duration("lock.session_ttl", file.lock.session_ttl.clone(), DEFAULTS.session_ttl)?;
    let profile = LeaseConfig::from_ttl(session_ttl);
    let lease = LeaseConfig {
        session_ttl,
        renew_interval: duration(
            "lock.renew_interval",
            file.lock.renew_interval.clone(),
            profile.renew_interval,
        )?,
        lock_delay: duration("lock.lock_delay", file.lock.lock_delay.clone(), profile.lock_delay)?,
        fence_margin: duration(
            "lock.fence_margin",
            file.lock.fence_margin.clone(),
            profile.fence_margin,
        )?,
    };
    let neard = match file.neard {
        None => None,
        Some(n) => {
            let creds = |name: &str| match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => PathBuf::from(dir).join(name),
                None => PathBuf::from("/run/credentials/failoverd.service").join(name),
            };
            Some(NeardConfig {
                binary: n.binary.unwrap_or_else(|| PathBuf::from("neard")),
                home: n.home.unwrap_or_else(|| PathBuf::from("/var/lib/neard")),
                validator_key: n.validator_key.unwrap_or_else(|| creds("validator_key.json")),
                validator_node_key: n.validator_node_key.unwrap_or_else(|| creds("validator_node_key.json")),
                voter_node_key: n.voter_node_key.unwrap_or_else(|| creds("voter_node_key.json")),
                validator_network_addr: n.validator_network_addr.unwrap_or_else(|| "0.0.0.0:24567".into()),
                voter_network_addr: n.voter_network_addr.unwrap_or_else(|| "0.0.0.0:24568".into()),
                public_address: n.public_address.unwrap_or_default(),
                boot_nodes: n.boot_nodes.unwrap_or_default(),
                stop_timeout: duration("neard.stop_timeout", n.stop_timeout, DEFAULTS.neard_stop_timeout)?,
                unhealthy_limit: duration(
                    "neard.unhealthy_limit",
                    n.unhealthy_limit,
                    DEFAULTS.neard_unhealthy_limit,
                )?,
            })
        }
    };
    let consul_api_listen = match file.consul_api.listen.as_deref() {
        None => Some(DEFAULTS.consul_api_listen.to_string()),
        Some("") => None,
        Some(text) => Some(text.to_string()),
    };
    let consul_api = ConsulApiConfig {
        listen: match consul_api_listen {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                origins.error(
                    "consul_api.listen",
                    format!("{text:?} is not an IP:PORT socket address (or \"\" to disable)"),
                )
            })?),
        },
        session_ttl_min: duration(
            "consul_api.session_ttl_min",
            file.consul_api.session_ttl_min,
            DEFAULTS.session_ttl_min,
        )?,
        token_file: file.consul_api.token_file,
    };
    Ok(Config {
        node_id,
        name,
        role: file.role.unwrap_or_default(),
        data_dir: file.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULTS.data_dir)),
        cluster: ClusterConfig {
            listen,
            advertise,
            initial_members: c.initial_members.unwrap_or_default(),
            heartbeat_interval,
            election_timeout,
            tls,
            expect_id: c.expect_id,
        },
        api: ApiConfig { listen: api_listen },
        lock: LockConfig {
            backend,
            consul_url: file.lock.consul_url.unwrap_or_else(|| DEFAULTS.consul_url.to_string()),
            consul_token_file: file.lock.consul_token_file,
            key: file.lock.key,
            lease,
        },
        neard,
        consul_api,
        origins,
    })
}

impl Config {
    /// Checks the rules between fields. File-system checks (data dir, TLS
    /// files) are done by the agent right after, still before binding ports.
    pub fn validate(self) -> Result<Self, ConfigError> {
        let o = &self.origins;
        if self.name.trim().is_empty() {
            return Err(o.error("name", "must not be empty"));
        }
        if self.consul_api.session_ttl_min < Duration::from_secs(1) {
            return Err(o.error("consul_api.session_ttl_min", "must be at least 1s"));
        }
        if let Some(listen) = self.consul_api.listen {
            if listen == self.api.listen || (self.lock.backend == BackendKind::Raft && listen == self.cluster.listen) {
                return Err(o.error(
                    "consul_api.listen",
                    format!("{listen} is already used by another listener"),
                ));
            }
        }
        self.validate_lease()?;
        if let Some(neard) = &self.neard {
            for (key, addr) in [
                ("neard.validator_network_addr", &neard.validator_network_addr),
                ("neard.voter_network_addr", &neard.voter_network_addr),
            ] {
                check_host_port(addr).map_err(|e| o.error(key, e))?;
            }
            if neard.validator_network_addr == neard.voter_network_addr {
                return Err(o.error(
                    "neard.voter_network_addr",
                    "must differ from neard.validator_network_addr",
                ));
            }
        }
        if self.lock.backend == BackendKind::Consul {
            let url = &self.lock.consul_url;
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                return Err(o.error("lock.consul_url", format!("{url:?} is not an http:// or https:// URL")));
            }
            // No Raft node: [cluster] is not used.
            return Ok(self);
        }
        check_host_port(&self.cluster.advertise).map_err(|e| o.error("cluster.advertise", e))?;
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for m in &self.cluster.initial_members {
            check_host_port(&m.addr)
                .map_err(|e| o.error("cluster.initial_members", format!("member {}: {e}", m.id)))?;
            if !ids.insert(m.id) {
                return Err(o.error("cluster.initial_members", format!("node id {} is listed twice", m.id)));
            }
            if !addrs.insert(m.addr.as_str()) {
                return Err(o.error("cluster.initial_members", format!("address {} is listed twice", m.addr)));
            }
            if m.id == self.node_id && m.addr != self.cluster.advertise {
                return Err(o.error(
                    "cluster.initial_members",
                    format!(
                        "this node ({}) is listed at {} but cluster.advertise is {}",
                        m.id, m.addr, self.cluster.advertise
                    ),
                ));
            }
        }
        let (hb, et) = (self.cluster.heartbeat_interval, self.cluster.election_timeout);
        if hb < Duration::from_millis(10) {
            return Err(o.error(
                "cluster.heartbeat_interval",
                format!("{hb:?} is below the 10ms minimum"),
            ));
        }
        if et < hb * 2 {
            return Err(o.error(
                "cluster.election_timeout",
                format!("{et:?} must be at least twice cluster.heartbeat_interval ({hb:?})"),
            ));
        }
        if self.cluster.listen == self.api.listen {
            return Err(o.error("api.listen", format!("{} is also cluster.listen", self.api.listen)));
        }
        Ok(self)
    }

    /// The lease rules: the holder must get at least two renew chances before
    /// its fence deadline, and the margin must leave a positive lease.
    fn validate_lease(&self) -> Result<(), ConfigError> {
        let o = &self.origins;
        let l = self.lock.lease;
        if l.session_ttl < Duration::from_secs(1) {
            return Err(o.error(
                "lock.session_ttl",
                format!("{:?} is below the 1s minimum", l.session_ttl),
            ));
        }
        if l.fence_margin.is_zero() || l.fence_margin >= l.session_ttl {
            return Err(o.error(
                "lock.fence_margin",
                format!(
                    "{:?} must be above 0 and below lock.session_ttl ({:?})",
                    l.fence_margin, l.session_ttl
                ),
            ));
        }
        let lease = l.session_ttl - l.fence_margin;
        if l.renew_interval.is_zero() || l.renew_interval * 2 > lease {
            return Err(o.error(
                "lock.renew_interval",
                format!(
                    "{:?} must leave two renews within session_ttl - fence_margin ({:?})",
                    l.renew_interval, lease
                ),
            ));
        }
        if l.lock_delay > Duration::from_secs(60) {
            return Err(o.error(
                "lock.lock_delay",
                format!("{:?} is above the 60s maximum", l.lock_delay),
            ));
        }
        Ok(())
    }

    /// Checks that `data_dir` can be created, read and written.
    pub fn check_data_dir(&self) -> Result<(), ConfigError> {
        let dir = &self.data_dir;
        let err = |what: &str, e: std::io::Error| {
            self.origins
                .error("data_dir", format!("{}: cannot {what}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| err("create it", e))?;
        std::fs::read_dir(dir).map_err(|e| err("read it", e))?;
        let probe = dir.join(".failoverd-write-probe");
        std::fs::write(&probe, b"probe").map_err(|e| err("write to it", e))?;
        std::fs::remove_file(&probe).map_err(|e| err("write to it", e))?;
        Ok(())
    }

    /// On first start this node must be one of `initial_members` (or there are
    /// none, and it waits to be added).
    pub fn check_first_start(&self) -> Result<(), ConfigError> {
        let members = &self.cluster.initial_members;
        if !members.is_empty() && !members.iter().any(|m| m.id == self.node_id) {
            let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
            return Err(self.origins.error(
                "cluster.initial_members",
                format!(
                    "this node (node_id {}) is not listed (ids: {}); on first start a node must be an initial member, or list none and be added with `failoverd members add`",
                    self.node_id,
                    ids.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// A config error about `key`, naming where its value came from.
    pub fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        self.origins.error(key, reason)
    }
}

/// Checks `host:port` with a non-empty host and a u16 port.
fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    port.parse::<u16>().map_err(|_| format!("{addr:?} has no valid port"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoArgs;
    impl ArgSource for NoArgs {
        fn source(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failoverd.toml");
        std::fs::write(&path, text).unwrap();
        load(
            &ConfigArgs {
                config: Some(path),
                ..Default::default()
            },
            &NoArgs,
        )
    }

    const GOOD: &str = r#"
node_id = 1
name = "a"
data_dir = "/tmp/x"
[cluster]
listen = "127.0.0.1:7700"
initial_members = [ { id = 1, addr = "127.0.0.1:7700" }, { id = 2, addr = "127.0.0.1:7701" } ]
"#;

    /// A minimal file gets the documented defaults.
    #[test]
    fn defaults_apply() {
        let c = from_toml(GOOD).unwrap();
        assert_eq!(c.cluster.advertise, "127.0.0.1:7700");
        assert_eq!(c.cluster.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.cluster.election_timeout, Duration::from_secs(1));
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:2233");
        assert_eq!(c.role, Role::Validator);
    }

    /// An unknown key is refused and named, with its section.
    #[test]
    fn unknown_key_is_named() {
        let err = from_toml(&format!("{GOOD}\nbogus = 1\n")).unwrap_err();
        assert_eq!(err.key, "cluster.bogus", "{err}");
        assert!(err.reason.contains("unknown field"), "{err}");
    }

    /// Each bad value names its key.
    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                GOOD.replace("127.0.0.1:7700\"\ninitial", "nope\"\ninitial"),
                "cluster.listen",
            ),
            (GOOD.replace("{ id = 2,", "{ id = 1,"), "cluster.initial_members"),
            (GOOD.replace("node_id = 1\n", ""), "node_id"),
            (
                GOOD.replace("listen = \"127.0.0.1:7700\"", "listen = \"0.0.0.0:7700\""),
                "cluster.advertise",
            ),
            (
                format!("{GOOD}election_timeout = \"100ms\"\n"),
                "cluster.election_timeout",
            ),
            (format!("{GOOD}[cluster.tls]\nca_file = \"/x\"\n"), "cluster.tls"),
        ];
        for (text, key) in cases {
            let err = from_toml(&text).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    /// Overrides beat the file, and errors in them name their origin.
    #[test]
    fn overrides_win_and_are_named() {
        struct Flag;
        impl ArgSource for Flag {
            fn source(&self, id: &str) -> Option<String> {
                Some(format!("flag --{}", id.replace('_', "-")))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, GOOD).unwrap();
        let args = ConfigArgs {
            config: Some(path.clone()),
            cluster_heartbeat_interval: Some("100ms".into()),
            ..Default::default()
        };
        let c = load(&args, &Flag).unwrap();
        assert_eq!(c.cluster.heartbeat_interval, Duration::from_millis(100));
        let args = ConfigArgs {
            config: Some(path),
            api_listen: Some("x".into()),
            ..Default::default()
        };
        let err = load(&args, &Flag).unwrap_err();
        assert_eq!(err.origin, "flag --api-listen");
    }

    /// `ID=ADDR,...` parses; junk is refused.
    #[test]
    fn members_flag_syntax() {
        let m = parse_members("1=a:1, 2=b:2").unwrap();
        assert_eq!(
            m,
            vec![
                InitialMember {
                    id: 1,
                    addr: "a:1".into()
                },
                InitialMember {
                    id: 2,
                    addr: "b:2".into()
                }
            ]
        );
        assert!(parse_members("1:a:1").is_err());
        assert!(parse_members("x=a:1").is_err());
    }
}
