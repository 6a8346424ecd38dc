//! The state machine: `AppState` in memory, persisted as snapshots in sled.
//!
//! After a restart the state is the last snapshot plus the committed log, which
//! openraft re-applies (`read_committed`). Applying is pure (`AppState::apply`);
//! this module only adds bookkeeping, snapshots and change notification.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;

use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::AnyError;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::SnapshotMeta;
use openraft::StorageIOError;
use openraft::StoredMembership;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use super::command::AppState;
use super::data_dir::decode;
use super::data_dir::DataDir;
use super::data_dir::StoreError;
use super::CommandResult;
use super::LogId;
use super::Member;
use super::NodeId;
use super::StorageError;
use super::TypeConfig;

/// What a snapshot holds: everything needed to resume applying after it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The last log id applied.
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub last_membership: StoredMembership<NodeId, Member>,
    /// The application state.
    pub state: AppState,
}

/// Read access to the applied state, shared with the API and the transport.
#[derive(Clone)]
pub struct SharedState {
    inner: Arc<RwLock<Applied>>,
    applied_tx: Arc<watch::Sender<u64>>,
}

impl SharedState {
    fn new(applied: Applied) -> Self {
        let index = applied.last_applied.map_or(0, |id| id.index);
        SharedState {
            inner: Arc::new(RwLock::new(applied)),
            applied_tx: Arc::new(watch::channel(index).0),
        }
    }

    /// A read guard on the applied state. Hold it briefly: `apply` waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cluster id, once the cluster has formed.
    pub fn cluster_id(&self) -> Option<String> {
        self.read().state.cluster_id.clone()
    }

    /// Watches the last applied log index; changes after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    fn replace(&self, applied: Applied) {
        let index = applied.last_applied.map_or(0, |id| id.index);
        *self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = applied;
        self.applied_tx.send_replace(index);
    }
}

/// openraft's state machine over `AppState`.
pub struct StateMachine {
    dir: DataDir,
    shared: SharedState,
}

impl StateMachine {
    /// Loads the last snapshot from `dir` (or starts empty).
    pub fn open(dir: DataDir) -> Result<Self, StoreError> {
        let applied = match dir.snapshot.get("data").map_err(|e| dir.io(e))? {
            Some(bytes) => decode::<Applied>(&bytes).map_err(|r| dir.corrupt("snapshot/data".into(), r))?,
            None => Applied::default(),
        };
        Ok(StateMachine {
            dir,
            shared: SharedState::new(applied),
        })
    }

    /// The handle other modules read the state through.
    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    /// Remembers a newly learned cluster id in `meta`, so the transport can
    /// check it from the first RPC after a restart.
    async fn note_cluster_id(&self, before: Option<&str>) -> Result<(), StoreError> {
        let now = self.shared.cluster_id();
        if let Some(id) = now.filter(|id| Some(id.as_str()) != before) {
            self.dir.set_cluster_id(&id).await?;
        }
        Ok(())
    }
}

/// Persists a snapshot as the current one, durably.
async fn save_snapshot(dir: &DataDir, meta: &SnapshotMeta<NodeId, Member>, data: &[u8]) -> Result<(), StoreError> {
    let meta_bytes = serde_json::to_vec(meta).map_err(|e| dir.corrupt("snapshot/meta".into(), e.to_string()))?;
    let mut batch = sled::Batch::default();
    batch.insert("meta", meta_bytes);
    batch.insert("data", data);
    dir.snapshot.apply_batch(batch).map_err(|e| dir.io(e))?;
    dir.flush().await
}

fn snapshot_err(e: impl Into<StoreError>) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e.into())).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<NodeId, Member>), StorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let before = self.shared.cluster_id();
        let mut results = Vec::new();
        {
            let mut applied = self
                .shared
                .inner
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::Done,
                    EntryPayload::Normal(cmd) => applied.state.apply(entry.log_id.index, &cmd),
                    EntryPayload::Membership(membership) => {
                        applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                        CommandResult::Done
                    }
                };
                results.push(result);
            }
            let index = applied.last_applied.map_or(0, |id| id.index);
            self.shared.applied_tx.send_replace(index);
        }
        self.note_cluster_id(before.as_deref())
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_state_machine(AnyError::new(&e))))?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Cloned here, serialised with `apply`: the snapshot is a consistent view.
        SnapshotBuilder {
            applied: self.shared.read().clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let applied: Applied = decode(&data)
            .map_err(|r| snapshot_err(self.dir.corrupt(format!("received snapshot {}", meta.snapshot_id), r)))?;
        save_snapshot(&self.dir, meta, &data).await.map_err(snapshot_err)?;
        let before = self.shared.cluster_id();
        // Replace wholesale: nothing of the old state survives an install.
        self.shared.replace(applied);
        self.note_cluster_id(before.as_deref()).await.map_err(snapshot_err)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let read = |e: StoreError| StorageError::from(StorageIOError::read_snapshot(None, AnyError::new(&e)));
        let meta = self.dir.snapshot.get("meta").map_err(|e| read(self.dir.io(e)))?;
        let data = self.dir.snapshot.get("data").map_err(|e| read(self.dir.io(e)))?;
        let (Some(meta), Some(data)) = (meta, data) else {
            return Ok(None);
        };
        let meta = decode(&meta).map_err(|r| read(self.dir.corrupt("snapshot/meta".into(), r)))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }))
    }
}

/// Builds a snapshot from a state cloned at `get_snapshot_builder` time.
pub struct SnapshotBuilder {
    applied: Applied,
    dir: DataDir,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let dir = &self.dir;
        let data = serde_json::to_vec(&self.applied)
            .map_err(|e| snapshot_err(dir.corrupt("snapshot".into(), e.to_string())))?;
        let last = self.applied.last_applied;
        let snapshot_id = match last {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.applied.state.digest()),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.applied.last_membership.clone(),
            snapshot_id,
        };
        save_snapshot(dir, &meta, &data).await.map_err(snapshot_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
