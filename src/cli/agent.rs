//! `failoverd agent`: check the config, then run one Raft voter with its peer
//! port and local API until SIGTERM/SIGINT.
//!
//! Exit codes: 0 after a clean shutdown, 64 for a bad config (before any port
//! is bound), 65 for a data dir that cannot be trusted, 1 for anything else.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api;
use crate::config;
use crate::config::Config;
use crate::config::ConfigArgs;
use crate::config::EXIT_CONFIG;
use crate::raft::data_dir::DataDir;
use crate::raft::node::RaftNode;
use crate::raft::service;
use crate::raft::tls::TlsError;
use crate::raft::tls::TlsMaterial;

/// Exit code for a data dir that cannot be used (`EX_DATAERR`).
pub const EXIT_DATA: i32 = 65;
/// How long each shutdown step may take; the whole stop stays under 5 s.
const STOP_STEP: Duration = Duration::from_millis(1500);

/// Arguments of `failoverd agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Everything checked before a port is bound.
struct Prepared {
    cfg: Config,
    dir: DataDir,
    tls: Option<TlsMaterial>,
    fresh: bool,
}

/// A failure with the exit code it maps to.
struct Exit(i32, String);

/// Runs the agent; returns the process exit code.
pub fn main(args: AgentArgs, sources: &dyn config::ArgSource) -> i32 {
    let prepared = match prepare(&args.config, sources) {
        Ok(p) => p,
        Err(Exit(code, message)) => {
            eprintln!("failoverd: {message}");
            return code;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("failoverd: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(prepared)) {
        Ok(()) => 0,
        Err(Exit(code, message)) => {
            tracing::error!("{message}");
            eprintln!("failoverd: {message}");
            code
        }
    }
}

fn prepare(args: &ConfigArgs, sources: &dyn config::ArgSource) -> Result<Prepared, Exit> {
    let config_error = |e: config::ConfigError| Exit(EXIT_CONFIG, format!("config error: {e}"));
    let cfg = config::load(args, sources).map_err(config_error)?;
    cfg.check_data_dir().map_err(config_error)?;
    let tls = match &cfg.cluster.tls {
        Some(tls) => Some(TlsMaterial::load(tls).map_err(|e| config_error(tls_error(&cfg, e)))?),
        None => None,
    };
    // Checked before the data dir is first written, so a refused first start
    // leaves nothing behind.
    if !DataDir::exists(&cfg.data_dir) {
        cfg.check_first_start().map_err(config_error)?;
    }
    let dir = DataDir::open(&cfg.data_dir, cfg.node_id, cfg.cluster.expect_id.as_deref())
        .map_err(|e| Exit(EXIT_DATA, format!("data_dir {}: {e}", cfg.data_dir.display())))?;
    let fresh = dir
        .is_fresh()
        .map_err(|e| Exit(EXIT_DATA, format!("data_dir {}: {e}", cfg.data_dir.display())))?;
    if fresh {
        cfg.check_first_start().map_err(config_error)?;
    }
    Ok(Prepared { cfg, dir, tls, fresh })
}

/// A TLS file problem as a config error naming the key and its origin.
fn tls_error(cfg: &Config, e: TlsError) -> config::ConfigError {
    match e {
        TlsError::File { key, path, reason } => cfg.error(key, format!("{}: {reason}", path.display())),
        TlsError::Config(reason) => cfg.error("cluster.tls", reason),
    }
}

async fn run(p: Prepared) -> Result<(), Exit> {
    let Prepared { cfg, dir, tls, fresh } = p;
    let bind = |key: &'static str, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Exit(1, format!("{key} {addr}: cannot bind: {e}")))
    };
    let peer_listener = bind("cluster.listen", cfg.cluster.listen).await?;
    let api_listener = bind("api.listen", cfg.api.listen).await?;

    let client_tls = tls.as_ref().map(TlsMaterial::client_config);
    let node = RaftNode::start(&cfg, dir.clone(), client_tls)
        .await
        .map_err(|e| Exit(1, e.to_string()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut peer_server = {
        let (node, stop) = (node.clone(), stopped(stop_rx.clone()));
        match &tls {
            Some(tls) => tokio::spawn(service::serve(node, tls.incoming(peer_listener), stop)),
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(peer_listener).with_nodelay(Some(true));
                tokio::spawn(service::serve(node, incoming, stop))
            }
        }
    };
    let mut api_server = {
        let app = api::router(node.clone());
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { axum::serve(api_listener, app).with_graceful_shutdown(stop).await })
    };
    let housekeeping = tokio::spawn(node.clone().housekeeping(stop_rx.clone()));

    if fresh && !cfg.cluster.initial_members.is_empty() {
        node.bootstrap(&cfg.cluster.initial_members)
            .await
            .map_err(|e| Exit(1, e.to_string()))?;
    } else if fresh {
        tracing::info!("no initial_members: waiting to be added with `failoverd members add`");
    }
    tracing::info!(
        node_id = cfg.node_id,
        name = %cfg.name,
        role = %cfg.role,
        peer = %cfg.cluster.listen,
        advertise = %cfg.cluster.advertise,
        api = %cfg.api.listen,
        tls = tls.is_some(),
        "agent started"
    );

    let outcome = tokio::select! {
        signal = crate::signal::shutdown() => {
            tracing::info!(signal, "shutting down");
            Ok(())
        }
        res = &mut peer_server => Err(Exit(1, format!("peer server stopped: {res:?}"))),
        res = &mut api_server => Err(Exit(1, format!("API server stopped: {res:?}"))),
    };
    stop(&node, &dir, stop_tx, peer_server, api_server, housekeeping).await;
    outcome
}

/// Stops accepting, stops Raft, flushes. Each step is bounded.
async fn stop<A, B>(
    node: &Arc<RaftNode>,
    dir: &DataDir,
    stop_tx: watch::Sender<bool>,
    peer_server: tokio::task::JoinHandle<A>,
    api_server: tokio::task::JoinHandle<B>,
    housekeeping: tokio::task::JoinHandle<()>,
) {
    let _ = stop_tx.send(true);
    // A server that already ended (and was awaited in `run`) must not be polled again.
    let servers = async {
        if !peer_server.is_finished() {
            let _ = peer_server.await;
        }
        if !api_server.is_finished() {
            let _ = api_server.await;
        }
    };
    if tokio::time::timeout(STOP_STEP, servers).await.is_err() {
        tracing::warn!("servers did not stop in {STOP_STEP:?}; closing them");
    }
    housekeeping.abort();
    match tokio::time::timeout(STOP_STEP, node.raft().shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
        Err(_) => tracing::warn!("raft did not stop in {STOP_STEP:?}"),
    }
    if let Err(e) = dir.flush().await {
        tracing::error!(error = %e, "final flush failed");
    }
    tracing::info!("stopped");
}
