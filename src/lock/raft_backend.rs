//! `LockBackend` on the embedded Raft group: calls the node's `LockService`
//! directly (forwarded to the leader when needed).

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::backend::KeyState;
use super::backend::LockBackend;
use super::backend::LockError;
use super::backend::SessionSpec;
use super::backend::Watched;
use super::service::Consistency;
use super::service::LeaderRequest;
use super::service::LeaderResponse;
use super::service::LockService;
use super::service::NewSession;
use super::service::Query;
use super::service::QueryData;
use super::service::Read;
use super::service::ReadResult;
use super::state::LockCommand;
use super::state::LockResult;

/// The raft backend: in-process, no HTTP.
#[derive(Clone)]
pub struct RaftBackend {
    service: Arc<LockService>,
    node_name: String,
}

impl RaftBackend {
    /// A backend over this agent's lock service; sessions are created on `node_name`.
    pub fn new(service: Arc<LockService>, node_name: String) -> Self {
        RaftBackend { service, node_name }
    }

    async fn write(&self, cmd: LockCommand) -> Result<bool, LockError> {
        match self.service.request(LeaderRequest::Write(cmd)).await? {
            LeaderResponse::Written {
                result: LockResult::Bool(ok),
                ..
            } => Ok(ok),
            LeaderResponse::Written {
                result: LockResult::Invalid(why),
                ..
            } if why.contains("invalid session") => Err(LockError::SessionNotFound(why)),
            other => Err(LockError::Rejected(format!("unexpected answer {other:?}"))),
        }
    }
}

fn session_id(id: &str) -> Result<Uuid, LockError> {
    id.parse().map_err(|_| LockError::SessionNotFound(id.to_string()))
}

impl LockBackend for RaftBackend {
    async fn create_session(&self, spec: &SessionSpec) -> Result<String, LockError> {
        let new = NewSession {
            name: spec.name.clone(),
            node: self.node_name.clone(),
            ttl: Some(spec.ttl),
            lock_delay: spec.lock_delay,
            behavior: spec.behavior,
        };
        match self.service.request(LeaderRequest::CreateSession(new)).await? {
            LeaderResponse::Created(id) => Ok(id.to_string()),
            other => Err(LockError::Rejected(format!("unexpected answer {other:?}"))),
        }
    }

    async fn renew_session(&self, id: &str) -> Result<Duration, LockError> {
        match self.service.request(LeaderRequest::Renew(session_id(id)?)).await? {
            LeaderResponse::Renewed(session) => Ok(session.ttl.unwrap_or_default()),
            other => Err(LockError::Rejected(format!("unexpected answer {other:?}"))),
        }
    }

    async fn destroy_session(&self, id: &str) -> Result<(), LockError> {
        self.write(LockCommand::SessionDestroy { id: session_id(id)? })
            .await
            .map(|_| ())
    }

    async fn acquire(&self, key: &str, session: &str, value: &[u8]) -> Result<bool, LockError> {
        let cmd = LockCommand::KvAcquire {
            key: key.into(),
            value: value.to_vec(),
            flags: 0,
            session: session_id(session)?,
        };
        self.write(cmd).await
    }

    async fn release(&self, key: &str, session: &str, value: &[u8]) -> Result<bool, LockError> {
        let cmd = LockCommand::KvRelease {
            key: key.into(),
            value: value.to_vec(),
            flags: 0,
            session: session_id(session)?,
        };
        self.write(cmd).await
    }

    async fn watch(&self, key: &str, index: u64, wait: Duration) -> Result<Watched, LockError> {
        let read = Read {
            query: Query::Kv { key: key.into() },
            consistency: Consistency::Consistent,
            index,
            wait,
        };
        match self.service.request(LeaderRequest::Read(read)).await? {
            LeaderResponse::Read(result) => {
                let key = match result.data {
                    QueryData::Kv(entries) => entries.into_iter().next().map(|e| KeyState {
                        session: e.session.map(|s| s.to_string()),
                        lock_index: e.lock_index,
                        modify_index: e.modify_index,
                        value: e.value,
                    }),
                    _ => None,
                };
                Ok(Watched {
                    index: result.index,
                    key,
                })
            }
            other => Err(LockError::Rejected(format!("unexpected answer {other:?}"))),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, KeyState)>, LockError> {
        let read = Read {
            query: Query::KvList { prefix: prefix.into() },
            consistency: Consistency::Consistent,
            index: 0,
            wait: Duration::ZERO,
        };
        match self.service.request(LeaderRequest::Read(read)).await? {
            LeaderResponse::Read(ReadResult {
                data: QueryData::Kv(entries),
                ..
            }) => Ok(entries
                .into_iter()
                .map(|e| {
                    let state = KeyState {
                        session: e.session.map(|s| s.to_string()),
                        lock_index: e.lock_index,
                        modify_index: e.modify_index,
                        value: e.value,
                    };
                    (e.key, state)
                })
                .collect()),
            other => Err(LockError::Rejected(format!("unexpected answer {other:?}"))),
        }
    }
}
