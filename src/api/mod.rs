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
use crate::supervisor::status::HandoverRequest;
use crate::supervisor::status::SupervisorHandle;

/// What every handler can reach.
pub struct ApiState {
    /// The Raft node (raft backend); `None` with the consul backend.
    node: Option<Arc<RaftNode>>,
    /// The Consul agent (consul backend).
    consul: Option<ConsulMode>,
    metrics: metrics::AgentMetrics,
    supervisor: Option<SupervisorHandle>,
}

/// What the local API serves from.
pub struct ApiParts {
    /// The Raft node, with the raft backend.
    pub node: Option<Arc<RaftNode>>,
    /// The Consul agent's URL, with the consul backend.
    pub consul_url: Option<String>,
    /// This node's name and role.
    pub name: String,
    /// This node's role.
    pub role: crate::raft::Role,
    /// The metrics (the supervisor's are registered in them).
    pub metrics: metrics::AgentMetrics,
    /// The supervisor (validators with `[neard]`).
    pub supervisor: Option<SupervisorHandle>,
}

/// The router for `[api] listen`.
pub fn router(parts: ApiParts) -> Router {
    let consul = parts.consul_url.map(|url| ConsulMode {
        url: url.trim_end_matches('/').to_string(),
        name: parts.name.clone(),
        role: parts.role,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .unwrap_or_default(),
    });
    let state = Arc::new(ApiState {
        node: parts.node,
        consul,
        metrics: parts.metrics,
        supervisor: parts.supervisor,
    });
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/members", get(members).post(add_member))
        .route("/v1/members/{id}", delete(remove_member))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/handover", axum::routing::post(handover))
        .route("/v1/active-validator", get(active_validator))
        .with_state(state)
}

/// The Consul agent behind an agent with the consul backend.
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

impl ApiState {
    fn node(&self) -> Result<&Arc<RaftNode>, ApiError> {
        self.node.as_ref().ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                "this agent uses the consul lock backend: it runs no Raft node".into(),
            )
        })
    }
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
    if let Some(consul) = &api.consul {
        return match consul.leader().await {
            Ok(_) => (StatusCode::OK, "OK\n").into_response(),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("consul at {}: {why}\n", consul.url),
            )
                .into_response(),
        };
    }
    let Some(node) = &api.node else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no lock service\n").into_response();
    };
    let metrics = node.raft().metrics().borrow().clone();
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
    if let Some(sup) = &api.supervisor {
        sup.metrics.refresh();
    }
    let status = api.node.as_ref().map(|n| n.status());
    let body = api.metrics.render(status.as_ref());
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn status(State(api): State<Arc<ApiState>>) -> Response {
    let mut value = match (&api.node, &api.consul) {
        (Some(node), _) => serde_json::to_value(node.status()).unwrap_or_default(),
        (None, Some(consul)) => {
            let leader = consul.leader().await;
            serde_json::json!({
                "name": consul.name,
                "role": consul.role,
                "lock_backend": "consul",
                "consul_url": consul.url,
                "consul_leader": leader.as_ref().ok(),
                "consul_error": leader.err(),
            })
        }
        (None, None) => serde_json::json!({}),
    };
    if let (Some(sup), Some(obj)) = (&api.supervisor, value.as_object_mut()) {
        obj.insert(
            "supervisor".into(),
            serde_json::to_value(sup.snapshot()).unwrap_or_default(),
        );
    }
    Json(value).into_response()
}

/// The holder of the validator lock: the supervisor's view, or (on an
/// arbiter) the lock state's held `failoverd/validator/<account>` key.
async fn active_validator(State(api): State<Arc<ApiState>>) -> ApiResult {
    let none = || {
        ApiError(
            StatusCode::NOT_FOUND,
            "no active validator: nobody holds the validator lock".into(),
        )
    };
    if let Some(sup) = &api.supervisor {
        let status = sup.snapshot();
        return match (status.holder, status.holder_session) {
            (Some(holder), Some(session)) => Ok(Json(serde_json::json!({
                "Name": holder.name, "Node": holder.node_id, "Hostname": holder.hostname,
                "Key": status.key, "Session": session, "LockIndex": status.lock_index,
            }))
            .into_response()),
            _ => Err(none()),
        };
    }
    let node = api.node()?;
    let applied = node.state().read();
    let held = applied
        .state
        .lock
        .list("failoverd/validator/")
        .find(|e| e.session.is_some() && !e.key.contains("/standby/"))
        .cloned();
    drop(applied);
    let entry = held.ok_or_else(none)?;
    let holder: crate::supervisor::status::Holder = serde_json::from_slice(&entry.value).unwrap_or_default();
    Ok(Json(serde_json::json!({
        "Name": holder.name, "Node": holder.node_id, "Hostname": holder.hostname,
        "Key": entry.key, "Session": entry.session.map(|s| s.to_string()), "LockIndex": entry.lock_index,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct Handover {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    force: bool,
}

async fn handover(State(api): State<Arc<ApiState>>, body: Bytes) -> ApiResult {
    let req: Handover = if body.is_empty() {
        Handover { to: None, force: false }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"to\": NAME, \"force\": bool}}: {e}"),
            )
        })?
    };
    let sup = api.supervisor.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "this node runs no supervisor (arbiter, or no [neard])".into(),
        )
    })?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = HandoverRequest {
        to: req.to,
        force: req.force,
        reply,
    };
    sup.handover
        .send(request)
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "the supervisor is not running".into()))?;
    match tokio::time::timeout(std::time::Duration::from_secs(120), answer).await {
        Ok(Ok(Ok(message))) => Ok(Json(serde_json::json!({ "result": message })).into_response()),
        Ok(Ok(Err(why))) => Err(ApiError(StatusCode::CONFLICT, why)),
        _ => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            "no answer from the supervisor".into(),
        )),
    }
}

async fn members(State(api): State<Arc<ApiState>>) -> Response {
    match api.node() {
        Ok(node) => Json(node.status().members).into_response(),
        Err(e) => e.into_response(),
    }
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
    Ok(Json(api.node()?.add_member(req.id, req.addr).await?).into_response())
}

async fn remove_member(State(api): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult {
    let id: NodeId = id
        .parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id")))?;
    Ok(Json(api.node()?.remove_member(id).await?).into_response())
}

async fn kv_get(State(api): State<Arc<ApiState>>, Path(key): Path<String>) -> ApiResult {
    let node = api.node()?;
    let applied = node.state().read();
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
    match api.node()?.write(Command::Lock(cmd)).await? {
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
    match api.node()?.write(Command::Lock(cmd)).await? {
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
