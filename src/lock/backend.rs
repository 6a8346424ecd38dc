//! `LockBackend`: the one lock abstraction the rest of failoverd uses.
//!
//! Sessions with a TTL, acquire/release of a key with a session, renew,
//! destroy, and a blocking watch of a key, with Consul's semantics. Two
//! implementations: [`super::raft_backend::RaftBackend`] (the embedded Raft
//! group, the default) and [`super::consul_backend::ConsulBackend`] (an HTTP
//! client of a real Consul agent), chosen by `lock.backend` in the config.

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

/// What happens to the keys a session holds when it is invalidated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    /// The keys stay, unlocked (Consul's default).
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

/// A session to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// Human name (kuutamod uses the node name).
    pub name: String,
    /// The session is invalidated no sooner than this after its last renew.
    pub ttl: Duration,
    /// After an invalidation, nobody may acquire its keys for this long.
    pub lock_delay: Duration,
    /// Release or delete held keys on invalidation.
    pub behavior: Behavior,
}

/// A key as seen by a watch: its holder and its value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyState {
    /// The holding session, if the key is locked.
    pub session: Option<String>,
    /// Increments on every new acquisition: a fencing token.
    pub lock_index: u64,
    /// Index of the last change of the key.
    pub modify_index: u64,
    /// The value.
    pub value: Vec<u8>,
}

/// The result of a blocking watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    /// The index to pass to the next watch.
    pub index: u64,
    /// The key, or `None` if it does not exist.
    pub key: Option<KeyState>,
}

/// Why a lock operation failed, and whether to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LockError {
    /// The session does not exist (expired or destroyed): create a new one.
    #[error("session {0} not found")]
    SessionNotFound(String),
    /// The lock service has no leader right now.
    #[error("no cluster leader")]
    NoLeader,
    /// The lock service could not be reached or did not answer in time.
    #[error("lock service unavailable: {0}")]
    Unavailable(String),
    /// The request is invalid and will not succeed as asked.
    #[error("rejected: {0}")]
    Rejected(String),
}

impl LockError {
    /// True if the same call may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(self, LockError::NoLeader | LockError::Unavailable(_))
    }
}

/// The lock operations failoverd needs, with Consul's semantics.
///
/// Every call is bounded in time by the implementation. A renew that returns
/// `Ok` has been confirmed by a quorum of the lock service: the session will
/// not be invalidated earlier than its TTL after the renew was sent.
pub trait LockBackend: Send + Sync + 'static {
    /// Creates a session; returns its id.
    fn create_session(&self, spec: &SessionSpec) -> impl Future<Output = Result<String, LockError>> + Send;

    /// Renews a session; returns the TTL now in force.
    fn renew_session(&self, id: &str) -> impl Future<Output = Result<Duration, LockError>> + Send;

    /// Destroys a session (an invalidation: held keys get the lock-delay).
    fn destroy_session(&self, id: &str) -> impl Future<Output = Result<(), LockError>> + Send;

    /// Tries to acquire `key` for `session`, setting its value. `Ok(false)`: held
    /// by another session or within a lock-delay.
    fn acquire(&self, key: &str, session: &str, value: &[u8]) -> impl Future<Output = Result<bool, LockError>> + Send;

    /// Releases `key` if `session` holds it (no lock-delay), setting its value.
    fn release(&self, key: &str, session: &str, value: &[u8]) -> impl Future<Output = Result<bool, LockError>> + Send;

    /// Reads `key` consistently, blocking until its index passes `index` or
    /// `wait` elapses (then returns the current state).
    fn watch(&self, key: &str, index: u64, wait: Duration) -> impl Future<Output = Result<Watched, LockError>> + Send;

    /// Every key under `prefix` with its state (a consistent read).
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<(String, KeyState)>, LockError>> + Send;
}
