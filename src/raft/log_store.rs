//! The Raft log and vote, stored in sled.
//!
//! Durability contract (openraft v2 storage): `save_vote` returns only after the
//! vote is fsynced, and `append` calls the `LogFlushed` callback only after the
//! entries are fsynced. openraft serialises all calls on `&mut self`, so writes
//! never interleave.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;

use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::AnyError;
use openraft::Entry;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageIOError;
use openraft::Vote;

use super::data_dir::decode;
use super::data_dir::index_key;
use super::data_dir::DataDir;
use super::data_dir::StoreError;
use super::LogId;
use super::NodeId;
use super::StorageError;
use super::TypeConfig;

/// The sled-backed log store. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    dir: DataDir,
}

impl LogStore {
    /// A log store over an opened data directory.
    pub fn new(dir: DataDir) -> Self {
        LogStore { dir }
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StoreError> {
        match self.dir.logs.last().map_err(|e| self.dir.io(e))? {
            Some((_, bytes)) => {
                let entry: Entry<TypeConfig> = decode(&bytes).map_err(|r| self.dir.corrupt("last log".into(), r))?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    /// Removes the keys of `range` in one batch.
    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.dir.logs.range(range).keys() {
            batch.remove(key.map_err(|e| self.dir.io(e))?);
        }
        self.dir.logs.apply_batch(batch).map_err(|e| self.dir.io(e))
    }
}

/// Converts a store error into openraft's, naming what was being done.
fn sto(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: StoreError) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self.dir.logs.range((start, end)) {
            let (_, bytes) = item.map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, self.dir.io(e)))?;
            let entry = decode(&bytes).map_err(|r| {
                sto(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    self.dir.corrupt("log entry".into(), r),
                )
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = |e| sto(ErrorSubject::Logs, ErrorVerb::Read, e);
        let last_purged_log_id = self.dir.get_meta::<LogId>("last_purged").map_err(read)?;
        let last_log_id = self.last_log_id().map_err(read)?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let write = |e| sto(ErrorSubject::Vote, ErrorVerb::Write, e);
        self.dir.put_meta("vote", vote).map_err(write)?;
        self.dir.flush().await.map_err(write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.dir
            .get_meta("vote")
            .map_err(|e| sto(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: a lost `committed` only means re-applying
        // from the snapshot up to what the leader re-commits.
        self.dir
            .put_meta("committed", &committed)
            .map_err(|e| sto(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self
            .dir
            .get_meta("committed")
            .map_err(|e| sto(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = |e| sto(ErrorSubject::Logs, ErrorVerb::Write, e);
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| write(self.dir.corrupt(format!("log entry {}", entry.log_id), e.to_string())))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.dir.logs.apply_batch(batch).map_err(|e| write(self.dir.io(e)))?;
        // The entries are readable now; tell openraft they are durable only
        // once they are on disk.
        let flushed = self.dir.flush().await.map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let write = |e| sto(ErrorSubject::Logs, ErrorVerb::Delete, e);
        self.remove_range(index_key(log_id.index)..).map_err(write)?;
        self.dir.flush().await.map_err(write)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let write = |e| sto(ErrorSubject::Logs, ErrorVerb::Delete, e);
        // Record the purge point first: a crash in between leaves extra
        // entries below it, which reads never ask for.
        self.dir.put_meta("last_purged", &log_id).map_err(write)?;
        self.dir.flush().await.map_err(write)?;
        self.remove_range(..=index_key(log_id.index)).map_err(write)?;
        self.dir.flush().await.map_err(write)
    }
}
