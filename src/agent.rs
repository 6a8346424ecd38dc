//! An agent, wired: the checks done before any port is bound, then the Raft
//! node, its peer server, the lock service, the local and Consul-compatible
//! APIs, and their orderly stop. `cli::agent` runs one until a signal; tests
//! and the supervisor can run one in-process.
//!
//! ```text
//!  prepare(cfg) ── config, data dir, TLS checks (exit 64 / 65) ──► Prepared
//!  Agent::start(prepared) ── bind ── RaftNode ── PeerService (gRPC)
//!                                      │ └─ LockService ── clock task (leader TTLs)
//!                                      ├─ api::router        (local HTTP)
//!                                      └─ consul_api::router (Consul HTTP)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api;
use crate::api::metrics::AgentMetrics;
use crate::api::ApiParts;
use crate::config::BackendKind;
use crate::config::Config;
use crate::config::ConfigError;
use crate::config::EXIT_CONFIG;
use crate::consul_api;
use crate::lock::backend::LockBackend;
use crate::lock::consul_backend::read_token_file;
use crate::lock::consul_backend::ConsulBackend;
use crate::lock::raft_backend::RaftBackend;
use crate::lock::service::LockService;
use crate::raft::data_dir::DataDir;
use crate::raft::node::RaftNode;
use crate::raft::service;
use crate::raft::tls::TlsError;
use crate::raft::tls::TlsMaterial;
use crate::raft::Role;
use crate::supervisor::neard::NeardHome;
use crate::supervisor::run::default_key;
use crate::supervisor::run::Identity;
use crate::supervisor::run::Supervisor;
use crate::supervisor::status::SupervisorHandle;
use crate::supervisor::status::SupervisorMetrics;

/// Exit code for a data dir that cannot be used (`EX_DATAERR`).
pub const EXIT_DATA: i32 = 65;
/// How long each shutdown step may take; the whole stop stays under 5 s.
const STOP_STEP: Duration = Duration::from_millis(1500);

/// A failure with the process exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    /// 64 config, 65 data dir, 1 anything else.
    pub code: i32,
    /// What went wrong, naming the key or path.
    pub message: String,
}

fn exit(code: i32, message: impl Into<String>) -> Exit {
    Exit {
        code,
        message: message.into(),
    }
}

fn config_exit(e: ConfigError) -> Exit {
    exit(EXIT_CONFIG, format!("config error: {e}"))
}

/// Everything checked before a port is bound.
pub struct Prepared {
    cfg: Config,
    /// `None` with the consul backend: no Raft node.
    raft: Option<RaftParts>,
}

/// What a Raft node needs, checked.
struct RaftParts {
    dir: DataDir,
    tls: Option<TlsMaterial>,
    fresh: bool,
}

/// Checks the file system side of `cfg` (data dir, TLS files) and opens the
/// data dir. Binds nothing.
pub fn prepare(cfg: Config) -> Result<Prepared, Exit> {
    if cfg.lock.backend == BackendKind::Consul {
        return Ok(Prepared { cfg, raft: None });
    }
    cfg.check_data_dir().map_err(config_exit)?;
    let tls = match &cfg.cluster.tls {
        Some(tls) => Some(TlsMaterial::load(tls).map_err(|e| config_exit(tls_error(&cfg, e)))?),
        None => None,
    };
    // Checked before the data dir is first written, so a refused first start
    // leaves nothing behind.
    if !DataDir::exists(&cfg.data_dir) {
        cfg.check_first_start().map_err(config_exit)?;
    }
    let data_err = |e| exit(EXIT_DATA, format!("data_dir {}: {e}", cfg.data_dir.display()));
    let dir = DataDir::open(&cfg.data_dir, cfg.node_id, cfg.cluster.expect_id.as_deref()).map_err(data_err)?;
    let fresh = dir.is_fresh().map_err(data_err)?;
    if fresh {
        cfg.check_first_start().map_err(config_exit)?;
    }
    Ok(Prepared {
        cfg,
        raft: Some(RaftParts { dir, tls, fresh }),
    })
}

/// A TLS file problem as a config error naming the key and its origin.
fn tls_error(cfg: &Config, e: TlsError) -> ConfigError {
    match e {
        TlsError::File { key, path, reason } => cfg.error(key, format!("{}: {reason}", path.display())),
        TlsError::Config(reason) => cfg.error("cluster.tls", reason),
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, Exit> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| exit(1, format!("{key} {addr}: cannot bind: {e}")))
}

/// A running agent.
pub struct Agent {
    /// Its configuration.
    pub cfg: Config,
    /// The Raft node (raft backend only).
    pub node: Option<Arc<RaftNode>>,
    /// The lock service (raft backend only).
    pub lock: Option<Arc<LockService>>,
    /// The validator supervisor (validators with `[neard]`).
    pub supervisor: Option<SupervisorHandle>,
    supervisor_task: Option<JoinHandle<()>>,
    dir: Option<DataDir>,
    stop_tx: watch::Sender<bool>,
    /// Servers whose early end is a failure.
    servers: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
    /// Background tasks, aborted on stop.
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Binds the listeners and starts everything.
    pub async fn start(p: Prepared) -> Result<Agent, Exit> {
        let Prepared { cfg, raft } = p;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut agent = Agent {
            cfg: cfg.clone(),
            node: None,
            lock: None,
            supervisor: None,
            supervisor_task: None,
            dir: None,
            stop_tx,
            servers: Vec::new(),
            tasks: Vec::new(),
        };
        let mut metrics = AgentMetrics::default();
        let api_listener = bind("api.listen", cfg.api.listen).await?;
        let Some(RaftParts { dir, tls, fresh }) = raft else {
            let token = match &cfg.lock.consul_token_file {
                Some(path) => read_token_file(path).map_err(|e| config_exit(cfg.error("lock.consul_token_file", e)))?,
                None => None,
            };
            let backend = ConsulBackend::new(&cfg.lock.consul_url, token, cfg.name.clone())
                .map_err(|e| config_exit(cfg.error("lock.consul_url", e.to_string())))?;
            if let Some(path) = cfg.lock.consul_token_file.clone() {
                agent
                    .tasks
                    .push(tokio::spawn(reload_token_on_sighup(backend.clone(), path)));
            }
            agent.start_supervisor(backend, 0, &mut metrics, stop_rx.clone())?;
            let parts = ApiParts {
                node: None,
                consul_url: Some(cfg.lock.consul_url.clone()),
                name: cfg.name.clone(),
                role: cfg.role,
                metrics,
                supervisor: agent.supervisor.clone(),
            };
            agent.serve("API", api_listener, api::router(parts), stop_rx);
            tracing::info!(name = %cfg.name, role = %cfg.role, consul = %cfg.lock.consul_url, api = %cfg.api.listen, "agent started (lock backend: consul, no Raft node)");
            return Ok(agent);
        };
        let peer_listener = bind("cluster.listen", cfg.cluster.listen).await?;
        let consul_listener = match cfg.consul_api.listen {
            Some(addr) => Some(bind("consul_api.listen", addr).await?),
            None => None,
        };

        let client_tls = tls.as_ref().map(TlsMaterial::client_config);
        let node = RaftNode::start(&cfg, dir.clone(), client_tls)
            .await
            .map_err(|e| exit(1, e.to_string()))?;
        let lock = LockService::new(node.clone(), cfg.cluster.election_timeout);
        let (n, l, stop) = (node.clone(), lock.clone(), stopped(stop_rx.clone()));
        let peer = match &tls {
            Some(tls) => tokio::spawn(flatten(service::serve(n, l, tls.incoming(peer_listener), stop))),
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(peer_listener).with_nodelay(Some(true));
                tokio::spawn(flatten(service::serve(n, l, incoming, stop)))
            }
        };
        agent.servers.push(("peer", peer));
        if let Some(listener) = consul_listener {
            let app = consul_api::router(lock.clone(), &cfg).map_err(config_exit)?;
            agent.serve("Consul API", listener, app, stop_rx.clone());
        }
        agent.tasks.push(tokio::spawn(lock.clone().run_clock(stop_rx.clone())));
        agent
            .tasks
            .push(tokio::spawn(node.clone().housekeeping(stop_rx.clone())));

        if fresh && !cfg.cluster.initial_members.is_empty() {
            node.bootstrap(&cfg.cluster.initial_members)
                .await
                .map_err(|e| exit(1, e.to_string()))?;
        } else if fresh {
            tracing::info!("no initial_members: waiting to be added with `failoverd members add`");
        }
        let backend = RaftBackend::new(lock.clone(), cfg.name.clone());
        agent.start_supervisor(backend, cfg.node_id, &mut metrics, stop_rx.clone())?;
        let parts = ApiParts {
            node: Some(node.clone()),
            consul_url: None,
            name: cfg.name.clone(),
            role: cfg.role,
            metrics,
            supervisor: agent.supervisor.clone(),
        };
        agent.serve("API", api_listener, api::router(parts), stop_rx);
        tracing::info!(
            node_id = cfg.node_id,
            name = %cfg.name,
            role = %cfg.role,
            peer = %cfg.cluster.listen,
            advertise = %cfg.cluster.advertise,
            api = %cfg.api.listen,
            consul_api = ?cfg.consul_api.listen,
            supervisor = agent.supervisor.is_some(),
            tls = tls.is_some(),
            "agent started"
        );
        agent.node = Some(node);
        agent.lock = Some(lock);
        agent.dir = Some(dir);
        Ok(agent)
    }

    fn serve(&mut self, name: &'static str, listener: TcpListener, app: axum::Router, stop_rx: watch::Receiver<bool>) {
        let stop = stopped(stop_rx);
        let server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop).await });
        self.servers.push((name, server));
    }

    /// Starts the validator supervisor on validators with a `[neard]` section.
    fn start_supervisor<B: LockBackend + Clone>(
        &mut self,
        backend: B,
        node_id: u64,
        metrics: &mut AgentMetrics,
        stop_rx: watch::Receiver<bool>,
    ) -> Result<(), Exit> {
        let cfg = &self.cfg;
        let Some(neard) = cfg.neard.clone() else {
            if cfg.role == Role::Validator {
                tracing::warn!("no [neard] section: this validator runs no supervisor (Raft voter only)");
            }
            return Ok(());
        };
        if cfg.role == Role::Arbiter {
            tracing::info!("arbiter: the [neard] section is ignored; no neard, no lock session");
            return Ok(());
        }
        let home = NeardHome::new(neard);
        home.check()
            .map_err(|e| config_exit(cfg.error("neard", e.to_string())))?;
        let key = match &cfg.lock.key {
            Some(key) => key.clone(),
            None => default_key(
                &home
                    .account_id()
                    .map_err(|e| config_exit(cfg.error("neard.validator_key", e.to_string())))?,
            ),
        };
        let fence = std::env::current_exe().map_err(|e| exit(1, format!("cannot find the failoverd binary: {e}")))?;
        let (handover_tx, handover_rx) = tokio::sync::mpsc::channel(4);
        let handle = SupervisorHandle {
            status: Default::default(),
            metrics: SupervisorMetrics::register(metrics.registry_mut()),
            handover: handover_tx,
        };
        let me = Identity {
            name: cfg.name.clone(),
            node_id,
        };
        let supervisor = Supervisor::new(backend, home, cfg.lock.lease, key, me, fence, handle.clone());
        self.supervisor_task = Some(tokio::spawn(supervisor.run(stop_rx, handover_rx)));
        self.supervisor = Some(handle);
        Ok(())
    }

    /// Resolves if a server ends on its own or Raft stops on a fatal error
    /// (a storage failure such as a full disk); names it. The agent then
    /// exits non-zero, so that it is restarted on a working store rather than
    /// lingering without Raft: sled keeps failing after its first I/O error,
    /// even once space is freed.
    pub async fn failed(&mut self) -> String {
        let metrics = self.node.as_ref().map(|node| node.raft().metrics());
        let raft_stopped = async move {
            let Some(mut metrics) = metrics else {
                return std::future::pending().await;
            };
            loop {
                if let Err(e) = &metrics.borrow_and_update().running_state {
                    return format!("raft stopped: {e}");
                }
                if metrics.changed().await.is_err() {
                    return "raft stopped (its metrics ended)".to_string();
                }
            }
        };
        let servers = async {
            if self.servers.is_empty() {
                return std::future::pending().await;
            }
            let handles = self.servers.iter_mut().map(|(name, handle)| {
                let name = *name;
                Box::pin(async move { format!("{name} server stopped: {:?}", handle.await) })
            });
            let (message, _, _) = futures_select_all(handles).await;
            message
        };
        tokio::select! {
            message = raft_stopped => message,
            message = servers => message,
        }
    }

    /// Stops accepting, stops Raft, flushes. Each step is bounded.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        // The supervisor stops neard and releases the lock first: it needs the
        // lock service, so everything else waits for it (bounded).
        if let Some(task) = self.supervisor_task {
            let limit = self.cfg.neard.as_ref().map_or(Duration::ZERO, |n| n.stop_timeout) + STOP_STEP * 2;
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!("the supervisor did not stop in {limit:?}");
            }
        }
        for task in &self.tasks {
            task.abort();
        }
        // A server that already ended (and was awaited) must not be polled again.
        let servers = async {
            for (_, server) in self.servers {
                if !server.is_finished() {
                    let _ = server.await;
                }
            }
        };
        if tokio::time::timeout(STOP_STEP, servers).await.is_err() {
            tracing::warn!("servers did not stop in {STOP_STEP:?}; closing them");
        }
        if let Some(node) = &self.node {
            match tokio::time::timeout(STOP_STEP, node.raft().shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
                Err(_) => tracing::warn!("raft did not stop in {STOP_STEP:?}"),
            }
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = dir.flush().await {
                tracing::error!(error = %e, "final flush failed");
            }
        }
        tracing::info!("stopped");
    }
}

/// Resolves when the stop flag is raised.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Re-reads the Consul token file on every SIGHUP.
async fn reload_token_on_sighup(backend: ConsulBackend, path: std::path::PathBuf) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match read_token_file(&path) {
            Ok(token) => {
                backend.set_token(token);
                tracing::info!(file = %path.display(), "SIGHUP: re-read the Consul token");
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: cannot re-read the Consul token; keeping the old one"),
        }
    }
}

/// A tonic server result as an io result, so all servers share one type.
async fn flatten(fut: impl std::future::Future<Output = Result<(), tonic::transport::Error>>) -> std::io::Result<()> {
    fut.await.map_err(std::io::Error::other)
}

/// The first of several futures to finish, like `futures::select_all`.
async fn futures_select_all<F: std::future::Future + Unpin>(
    futures: impl IntoIterator<Item = F>,
) -> (F::Output, usize, Vec<F>) {
    let mut futures: Vec<F> = futures.into_iter().collect();
    std::future::poll_fn(move |cx| {
        for (i, f) in futures.iter_mut().enumerate() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready((out, i, Vec::new()));
            }
        }
        std::task::Poll::Pending
    })
    .await
}
