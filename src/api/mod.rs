//! The local HTTP API: health, status, metrics, membership and a small KV.
//!
//! | route                     | what                                             |
//! |---------------------------|--------------------------------------------------|
//! | `GET /health`             | 200 `OK` when a leader is known, else 503 + why  |
//! | `GET /v1/status`          | this node's view of the cluster (JSON)           |
//! | `GET /metrics`            | Prometheus text format                           |
//! | `GET /v1/members`         | members (JSON)                                   |
//! | `POST /v1/members`        | `{"id":N,"addr":"host:port"}`: add a member      |
//! | `DELETE /v1/members/{id}` | remove a member                                  |
//! | `PUT /v1/kv/{key}`        | replicated write; `{"index":N}` once committed   |
//! | `GET /v1/kv/{key}`        | this node's applied value (may lag the leader)   |
//! | `DELETE /v1/kv/{key}`     | replicated delete                                |
//!
//! It binds to loopback by default: it is an operator's tool, not a peer port.

pub mod metrics;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::delete;
use axum::routing::get;
use axum::Json;
use axum::Router;
use serde::Deserialize;

use crate::lock::state::LockCommand;
use crate::lock::state::LockResult;
use crate::raft::node::ClusterError;
use crate::raft::node::RaftNode;
use crate::raft::Command;
use crate::raft::CommandResult;
use crate::raft::NodeId;

/// The local API of an agent with the consul backend (no Raft node): health
/// is whether the Consul agent answers and knows a leader.
pub fn consul_mode_router(cfg: &crate::config::Config) -> Router {
    let state = Arc::new(ConsulMode {
        url: cfg.lock.consul_url.trim_end_matches('/').to_string(),
        name: cfg.name.clone(),
        role: cfg.role,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .unwrap_or_default(),
    });
    Router::new()
        .route("/health", get(consul_health))
        .route("/v1/status", get(consul_status))
        .route("/metrics", get(consul_metrics))
        .with_state(state)
}

struct ConsulMode {
    url: String,
    name: String,
    role: crate::raft::Role,
    http: reqwest::Client,
}

impl ConsulMode {
    /// The Consul leader's address, or why there is none.
    async fn leader(&self) -> Result<String, String> {
        let resp = self
            .http
            .get(format!("{}/v1/status/leader", self.url))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let leader: String = resp.json().await.map_err(|e| e.to_string())?;
        if leader.is_empty() {
            Err("Consul has no leader".to_string())
        } else {
            Ok(leader)
        }
    }
}

async fn consul_health(State(c): State<Arc<ConsulMode>>) -> Response {
    match c.leader().await {
        Ok(_) => (StatusCode::OK, "OK\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("consul at {}: {why}\n", c.url)).into_response(),
    }
}

async fn consul_status(State(c): State<Arc<ConsulMode>>) -> Response {
    let leader = c.leader().await;
    Json(serde_json::json!({
        "name": c.name,
        "role": c.role,
        "lock_backend": "consul",
        "consul_url": c.url,
        "consul_leader": leader.as_ref().ok(),
        "consul_error": leader.err(),
    }))
    .into_response()
}

async fn consul_metrics(State(_): State<Arc<ConsulMode>>) -> Response {
    let body = format!(
        "# HELP failoverd_build_info Build information (always 1).\n# TYPE failoverd_build_info gauge\nfailoverd_build_info{{version=\"{}\"}} 1\n# EOF\n",
        env!("CARGO_PKG_VERSION")
    );
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// What every handler can reach.
pub struct ApiState {
    node: Arc<RaftNode>,
    metrics: metrics::AgentMetrics,
}

/// The router for `[api] listen`.
pub fn router(node: Arc<RaftNode>) -> Router {
    let state = Arc::new(ApiState {
        node,
        metrics: metrics::AgentMetrics::default(),
    });
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/members", get(members).post(add_member))
        .route("/v1/members/{id}", delete(remove_member))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .with_state(state)
}

type ApiResult = Result<Response, ApiError>;

/// An error answered as JSON `{"error": "..."}` with a fitting status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let code = match &e {
            e if e.retryable() => StatusCode::SERVICE_UNAVAILABLE,
            ClusterError::Rejected(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

async fn health(State(api): State<Arc<ApiState>>) -> Response {
    let metrics = api.node.raft().metrics().borrow().clone();
    if let Err(e) = &metrics.running_state {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("raft stopped: {e}\n")).into_response();
    }
    match metrics.current_leader {
        Some(_) => (StatusCode::OK, "OK\n").into_response(),
        None => {
            let why = format!(
                "no leader known (state {:?}, term {})\n",
                metrics.state, metrics.current_term
            );
            (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
        }
    }
}

async fn metrics(State(api): State<Arc<ApiState>>) -> Response {
    let body = api.metrics.render(&api.node.status());
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn status(State(api): State<Arc<ApiState>>) -> Response {
    Json(api.node.status()).into_response()
}

async fn members(State(api): State<Arc<ApiState>>) -> Response {
    Json(api.node.status().members).into_response()
}

#[derive(Deserialize)]
struct AddMember {
    id: NodeId,
    addr: String,
}

async fn add_member(State(api): State<Arc<ApiState>>, body: Bytes) -> ApiResult {
    let req: AddMember = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"id\": N, \"addr\": \"host:port\"}}: {e}"),
        )
    })?;
    Ok(Json(api.node.add_member(req.id, req.addr).await?).into_response())
}

async fn remove_member(State(api): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult {
    let id: NodeId = id
        .parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id")))?;
    Ok(Json(api.node.remove_member(id).await?).into_response())
}

async fn kv_get(State(api): State<Arc<ApiState>>, Path(key): Path<String>) -> ApiResult {
    let applied = api.node.state().read();
    match applied.state.lock.kv.get(&key) {
        Some(entry) => {
            let index = entry.modify_index.to_string();
            Ok(([("x-failoverd-index", index)], entry.value.clone()).into_response())
        }
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no key {key:?}"))),
    }
}

async fn kv_put(State(api): State<Arc<ApiState>>, Path(key): Path<String>, body: Bytes) -> ApiResult {
    let cmd = LockCommand::KvSet {
        key,
        value: body.to_vec(),
        flags: 0,
        cas: None,
    };
    match api.node.write(Command::Lock(cmd)).await? {
        CommandResult::Lock {
            index,
            result: LockResult::Bool(true),
        } => Ok(Json(serde_json::json!({ "index": index })).into_response()),
        other => Err(unexpected(other)),
    }
}

async fn kv_delete(State(api): State<Arc<ApiState>>, Path(key): Path<String>) -> ApiResult {
    let cmd = LockCommand::KvDelete {
        key,
        recurse: false,
        cas: None,
    };
    match api.node.write(Command::Lock(cmd)).await? {
        CommandResult::Lock {
            index,
            result: LockResult::Bool(deleted),
        } => Ok(Json(serde_json::json!({ "deleted": deleted, "index": index })).into_response()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(result: CommandResult) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected result {result:?}"),
    )
}
