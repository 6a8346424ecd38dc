//! The Consul-compatible HTTP subset every raft-backed agent serves on
//! `[consul_api] listen`: sessions, KV, status and `agent/self`, so Consul
//! clients (kuutamod, `consul lock`-style tools, HA managers) work unmodified.
//!
//! A thin layer: `codec` translates Consul's wire format, `LockService` does
//! the work (on the leader, or stale reads locally). Every response carries
//! `X-Consul-Index`, `X-Consul-KnownLeader`, `X-Consul-LastContact` and
//! `X-Consul-Effective-Consistency`, 404s included.

pub mod codec;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::RawQuery;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::put;
use axum::Router;

use crate::config::Config;
use crate::config::ConfigError;
use crate::lock::backend::LockError;
use crate::lock::service::Consistency;
use crate::lock::service::LeaderRequest;
use crate::lock::service::LeaderResponse;
use crate::lock::service::LockService;
use crate::lock::service::NewSession;
use crate::lock::service::Query;
use crate::lock::service::QueryData;
use crate::lock::service::Read;
use crate::lock::service::ReadResult;
use crate::lock::state::LockCommand;
use crate::lock::state::LockResult;
use codec::CodecError;

/// Bodies up to this size are read, then refused with Consul's 413 when over
/// 512 KiB; larger ones are refused before reading, which closes the connection
/// under a client still sending.
const READ_LIMIT: usize = 4 * 1024 * 1024;
/// The datacenter name reported to clients.
pub const DATACENTER: &str = "dc1";

/// Shared by the handlers.
struct ConsulApi {
    lock: Arc<LockService>,
    node_name: String,
    ttl_min: Duration,
    token: Option<String>,
}

/// The router for `[consul_api] listen`. Reads the token file once.
pub fn router(lock: Arc<LockService>, cfg: &Config) -> Result<Router, ConfigError> {
    let token = match &cfg.consul_api.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| cfg.error("consul_api.token_file", format!("{}: {e}", path.display())))?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        }
        None => None,
    };
    let api = Arc::new(ConsulApi {
        lock,
        node_name: cfg.name.clone(),
        ttl_min: cfg.consul_api.session_ttl_min,
        token,
    });
    Ok(Router::new()
        .route("/v1/session/create", put(session_create))
        .route("/v1/session/destroy/{id}", put(session_destroy))
        .route("/v1/session/renew/{id}", put(session_renew))
        .route("/v1/session/info/{id}", get(session_info))
        .route("/v1/session/list", get(session_list))
        .route("/v1/session/node/{node}", get(session_node))
        .route("/v1/kv/", get(kv_get_root).put(kv_put_root).delete(kv_delete_root))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .route("/v1/agent/self", get(agent_self))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(api.clone(), acl))
        .layer(axum::extract::DefaultBodyLimit::max(READ_LIMIT))
        .with_state(api))
}

/// An answer: status, Consul headers, body.
struct Answer {
    status: StatusCode,
    meta: Option<(u64, bool, u64, Consistency)>,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Answer {
    fn json(value: &serde_json::Value) -> Self {
        Answer {
            status: StatusCode::OK,
            meta: None,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    fn text(status: StatusCode, text: impl Into<String>) -> Self {
        Answer {
            status,
            meta: None,
            content_type: "text/plain; charset=utf-8",
            body: text.into().into_bytes(),
        }
    }

    fn with_read(mut self, read: &ReadResult) -> Self {
        self.meta = Some((read.index, read.known_leader, read.last_contact_ms, read.consistency));
        self
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static(self.content_type));
        if let Some((index, known, contact, consistency)) = self.meta {
            headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
            headers.insert(
                "x-consul-knownleader",
                HeaderValue::from_static(if known { "true" } else { "false" }),
            );
            headers.insert("x-consul-lastcontact", HeaderValue::from(contact));
            headers.insert(
                "x-consul-effective-consistency",
                HeaderValue::from_static(consistency.header()),
            );
        }
        (self.status, headers, self.body).into_response()
    }
}

impl From<CodecError> for Answer {
    fn from(e: CodecError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        Answer::text(status, e.to_string())
    }
}

impl From<LockError> for Answer {
    fn from(e: LockError) -> Self {
        match e {
            LockError::NoLeader => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader"),
            LockError::SessionNotFound(id) => {
                Answer::text(StatusCode::NOT_FOUND, format!("Session id '{id}' not found"))
            }
            LockError::Unavailable(m) | LockError::Rejected(m) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

type Reply = Result<Answer, Answer>;

/// Requires the token when one is configured (Consul's 403 otherwise).
async fn acl(State(api): State<Arc<ConsulApi>>, req: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let header = req.headers().get("x-consul-token").and_then(|v| v.to_str().ok());
        let query = req
            .uri()
            .query()
            .and_then(|q| codec::parse_read_options(q).ok())
            .and_then(|o| o.token);
        if header != Some(token.as_str()) && query.as_deref() != Some(token.as_str()) {
            return Answer::text(StatusCode::FORBIDDEN, "Permission denied").into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> Answer {
    Answer::text(StatusCode::NOT_FOUND, "404 page not found")
}

impl ConsulApi {
    async fn leader(&self, req: LeaderRequest) -> Result<LeaderResponse, Answer> {
        self.lock.request(req).await.map_err(Answer::from)
    }

    async fn write(&self, cmd: LockCommand) -> Result<LockResult, Answer> {
        match self.leader(LeaderRequest::Write(cmd)).await? {
            LeaderResponse::Written { result, .. } => Ok(result),
            other => Err(Answer::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected answer {other:?}"),
            )),
        }
    }

    async fn read(&self, query: Query, raw_query: Option<&str>) -> Result<ReadResult, Answer> {
        let opts = codec::parse_read_options(raw_query.unwrap_or(""))?;
        let wait = codec::wait_with_jitter(opts.wait.unwrap_or(codec::DEFAULT_WAIT), rand::random::<f64>());
        let consistency = match opts.consistency {
            codec::Consistency::Default => Consistency::Default,
            codec::Consistency::Consistent => Consistency::Consistent,
            codec::Consistency::Stale => Consistency::Stale,
        };
        let read = Read {
            query,
            consistency,
            index: opts.index.unwrap_or(0),
            wait,
        };
        match self.leader(LeaderRequest::Read(read)).await? {
            LeaderResponse::Read(result) => Ok(result),
            other => Err(Answer::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected answer {other:?}"),
            )),
        }
    }
}

fn literal(ok: bool) -> Answer {
    Answer {
        status: StatusCode::OK,
        meta: None,
        content_type: "application/json",
        body: if ok { b"true".to_vec() } else { b"false".to_vec() },
    }
}

fn invalid(why: String) -> Answer {
    Answer::text(StatusCode::INTERNAL_SERVER_ERROR, why)
}

async fn session_create(State(api): State<Arc<ConsulApi>>, body: Bytes) -> Reply {
    let req = codec::parse_session_create(&body, &api.node_name, api.ttl_min, codec::SESSION_TTL_MAX)?;
    let new = NewSession {
        name: req.name,
        node: req.node,
        ttl: req.ttl,
        lock_delay: req.lock_delay,
        behavior: req.behavior,
    };
    match api.leader(LeaderRequest::CreateSession(new)).await? {
        LeaderResponse::Created(id) => Ok(Answer::json(&codec::session_created_json(id))),
        other => Err(Answer::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        )),
    }
}

async fn session_destroy(State(api): State<Arc<ConsulApi>>, Path(id): Path<String>) -> Reply {
    let id = codec::parse_uuid(&id)?;
    api.write(LockCommand::SessionDestroy { id }).await?;
    Ok(literal(true))
}

async fn session_renew(State(api): State<Arc<ConsulApi>>, Path(id): Path<String>) -> Reply {
    let id = codec::parse_uuid(&id)?;
    match api.leader(LeaderRequest::Renew(id)).await? {
        LeaderResponse::Renewed(session) => Ok(Answer::json(&serde_json::json!([codec::session_json(&session)]))),
        other => Err(Answer::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        )),
    }
}

async fn sessions(api: &ConsulApi, query: Query, raw: Option<String>) -> Reply {
    let read = api.read(query, raw.as_deref()).await?;
    let list: Vec<serde_json::Value> = match &read.data {
        QueryData::Sessions(sessions) => sessions.iter().map(codec::session_json).collect(),
        _ => Vec::new(),
    };
    Ok(Answer::json(&serde_json::Value::Array(list)).with_read(&read))
}

async fn session_info(State(api): State<Arc<ConsulApi>>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> Reply {
    let id = codec::parse_uuid(&id)?;
    sessions(&api, Query::Session { id }, raw).await
}

async fn session_list(State(api): State<Arc<ConsulApi>>, RawQuery(raw): RawQuery) -> Reply {
    sessions(&api, Query::Sessions, raw).await
}

async fn session_node(State(api): State<Arc<ConsulApi>>, Path(node): Path<String>, RawQuery(raw): RawQuery) -> Reply {
    sessions(&api, Query::NodeSessions { node }, raw).await
}

async fn kv_get_root(state: State<Arc<ConsulApi>>, raw: RawQuery) -> Reply {
    kv_get(state, Path(String::new()), raw).await
}

async fn kv_put_root(state: State<Arc<ConsulApi>>, raw: RawQuery, body: Bytes) -> Reply {
    kv_put(state, Path(String::new()), raw, body).await
}

async fn kv_delete_root(state: State<Arc<ConsulApi>>, raw: RawQuery) -> Reply {
    kv_delete(state, Path(String::new()), raw).await
}

async fn kv_get(State(api): State<Arc<ConsulApi>>, Path(key): Path<String>, RawQuery(raw): RawQuery) -> Reply {
    let q = codec::parse_kv_query(raw.as_deref().unwrap_or(""))?;
    let root = key.is_empty();
    if root && !q.keys && !q.recurse {
        return Err(Answer::text(StatusCode::BAD_REQUEST, "Missing key name"));
    }
    let query = if q.keys {
        Query::KvKeys {
            prefix: key,
            separator: q.separator,
        }
    } else if q.recurse {
        Query::KvList { prefix: key }
    } else {
        Query::Kv { key }
    };
    let read = api.read(query, raw.as_deref()).await?;
    let missing = Answer::text(StatusCode::NOT_FOUND, "").with_read(&read);
    match &read.data {
        QueryData::Keys(keys) if keys.is_empty() && !root => Ok(missing),
        QueryData::Keys(keys) => Ok(Answer::json(&serde_json::json!(keys)).with_read(&read)),
        QueryData::Kv(entries) if entries.is_empty() => Ok(missing),
        QueryData::Kv(entries) if q.raw && !q.recurse => {
            let mut answer = Answer::text(StatusCode::OK, "").with_read(&read);
            answer.body = entries[0].value.clone();
            Ok(answer)
        }
        QueryData::Kv(entries) => {
            let list: Vec<serde_json::Value> = entries.iter().map(codec::kv_json).collect();
            Ok(Answer::json(&serde_json::Value::Array(list)).with_read(&read))
        }
        QueryData::Sessions(_) => Ok(missing),
    }
}

async fn kv_put(
    State(api): State<Arc<ConsulApi>>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Reply {
    codec::check_value_size(body.len())?;
    let q = codec::parse_kv_query(raw.as_deref().unwrap_or(""))?;
    if key.is_empty() {
        return Err(Answer::text(StatusCode::BAD_REQUEST, "Missing key name"));
    }
    q.check_put()?;
    let (value, flags) = (body.to_vec(), q.flags.unwrap_or(0));
    let cmd = match (q.acquire, q.release) {
        (Some(_), Some(_)) => {
            return Err(Answer::text(
                StatusCode::BAD_REQUEST,
                "Conflicting flags: acquire and release",
            ))
        }
        (Some(session), None) => LockCommand::KvAcquire {
            key,
            value,
            flags,
            session,
        },
        (None, Some(session)) => LockCommand::KvRelease {
            key,
            value,
            flags,
            session,
        },
        (None, None) => LockCommand::KvSet {
            key,
            value,
            flags,
            cas: q.cas,
        },
    };
    match api.write(cmd).await? {
        LockResult::Bool(ok) => Ok(literal(ok)),
        LockResult::Invalid(why) => Err(invalid(why)),
        LockResult::Session(_) => Err(invalid("unexpected session result".into())),
    }
}

async fn kv_delete(State(api): State<Arc<ConsulApi>>, Path(key): Path<String>, RawQuery(raw): RawQuery) -> Reply {
    let q = codec::parse_kv_query(raw.as_deref().unwrap_or(""))?;
    q.check_delete()?;
    if key.is_empty() && !q.recurse {
        return Err(Answer::text(StatusCode::BAD_REQUEST, "Missing key name"));
    }
    match api
        .write(LockCommand::KvDelete {
            key,
            recurse: q.recurse,
            cas: q.cas,
        })
        .await?
    {
        LockResult::Bool(ok) => Ok(literal(ok)),
        LockResult::Invalid(why) => Err(invalid(why)),
        LockResult::Session(_) => Err(invalid("unexpected session result".into())),
    }
}

async fn status_leader(State(api): State<Arc<ConsulApi>>) -> Reply {
    let metrics = api.lock.node().raft().metrics().borrow().clone();
    let addr = metrics
        .current_leader
        .and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|m| m.addr.clone())
        })
        .unwrap_or_default();
    Ok(Answer::json(&serde_json::json!(addr)))
}

async fn status_peers(State(api): State<Arc<ConsulApi>>) -> Reply {
    let metrics = api.lock.node().raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let peers: Vec<String> = membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|m| m.addr.clone()))
        .collect();
    Ok(Answer::json(&serde_json::json!(peers)))
}

async fn agent_self(State(api): State<Arc<ConsulApi>>) -> Reply {
    let ttl_min_ns = api.ttl_min.as_nanos() as u64;
    Ok(Answer::json(&serde_json::json!({
        "Config": {
            "NodeName": api.node_name,
            "Datacenter": DATACENTER,
            "Server": true,
            "Version": concat!("failoverd-", env!("CARGO_PKG_VERSION")),
            "SessionTTLMin": ttl_min_ns,
        },
        "DebugConfig": { "SessionTTLMin": format!("{}s", api.ttl_min.as_secs()) },
        "Member": { "Name": api.node_name },
    })))
}
