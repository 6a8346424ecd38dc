//! The on-disk home of a node: one sled database under `data_dir`.
//!
//! Layout (sled trees):
//!
//! | tree       | key                    | value (JSON)                              |
//! |------------|------------------------|-------------------------------------------|
//! | `meta`     | `format`               | layout version, currently 1               |
//! |            | `node_id`              | the node this directory belongs to        |
//! |            | `cluster_id`           | set once the node learns its cluster      |
//! |            | `vote`                 | openraft `Vote`                           |
//! |            | `committed`            | last committed `LogId`                    |
//! |            | `last_purged`          | last purged `LogId`                       |
//! | `logs`     | index as big-endian u64| openraft `Entry`                          |
//! | `snapshot` | `meta`, `data`         | last snapshot's meta and state bytes      |
//!
//! Opening checks that the directory is ours (same node id, same cluster id when
//! one is pinned) and that everything decodes, and refuses otherwise: a node must
//! never silently start over on a directory it cannot trust.

use std::path::Path;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::LogId;
use super::NodeId;
use super::TypeConfig;

/// Version of the layout above.
const FORMAT: u32 = 1;
/// sled page cache, bytes: the state is small and an arbiter runs on a cheap host.
const CACHE_CAPACITY: u64 = 32 * 1024 * 1024;

/// Why a data directory cannot be used. None of these are retryable: they need
/// an operator.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled could not open the database.
    #[error("cannot open the database in {path}: {source}")]
    Open {
        /// The sled directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// A sled read or write failed.
    #[error("database I/O failed in {path}: {source}")]
    Io {
        /// The sled directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// A stored record does not decode.
    #[error("corrupt record {what} in {path}: {reason}")]
    Corrupt {
        /// The sled directory.
        path: PathBuf,
        /// Which record.
        what: String,
        /// Decoder message.
        reason: String,
    },
    /// The directory was written by a newer or unknown failoverd.
    #[error("{path} has data layout version {found}, this failoverd understands only {FORMAT}")]
    Format {
        /// The sled directory.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The directory belongs to another node.
    #[error("{path} belongs to node {found}, but this node is configured as node_id {expected}; a data dir must never be reused by another node")]
    WrongNode {
        /// The sled directory.
        path: PathBuf,
        /// Id stored in the directory.
        found: NodeId,
        /// Id from the config.
        expected: NodeId,
    },
    /// The directory belongs to another cluster.
    #[error("{path} belongs to cluster {found}, but cluster.expect_id is {expected}")]
    WrongCluster {
        /// The sled directory.
        path: PathBuf,
        /// Cluster id stored in the directory.
        found: String,
        /// Cluster id from the config.
        expected: String,
    },
}

/// An opened, checked data directory.
#[derive(Clone)]
pub struct DataDir {
    path: PathBuf,
    db: sled::Db,
    /// Node metadata, vote and log markers.
    pub(crate) meta: sled::Tree,
    /// The Raft log.
    pub(crate) logs: sled::Tree,
    /// The last snapshot.
    pub(crate) snapshot: sled::Tree,
}

impl DataDir {
    /// Opens (creating if needed) the database under `data_dir` for `node_id`,
    /// refusing a directory that belongs to another node or cluster, or that
    /// does not decode.
    pub fn open(data_dir: &Path, node_id: NodeId, pinned_cluster: Option<&str>) -> Result<Self, StoreError> {
        let path = data_dir.join("raft");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })
        };
        let dir = DataDir {
            meta: tree("meta")?,
            logs: tree("logs")?,
            snapshot: tree("snapshot")?,
            db,
            path,
        };
        dir.check_identity(node_id, pinned_cluster)?;
        dir.check_records()?;
        Ok(dir)
    }

    /// Whether `data_dir` already holds a database (of any node).
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join("raft").exists()
    }

    /// The sled directory, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when this node has no Raft state yet: no vote and no log.
    /// Only then may it bootstrap from `initial_members`.
    pub fn is_fresh(&self) -> Result<bool, StoreError> {
        let no_vote = self.get_meta::<openraft::Vote<NodeId>>("vote")?.is_none();
        Ok(no_vote && self.logs.is_empty() && self.snapshot.is_empty())
    }

    /// The cluster id this node has learned, if any.
    pub fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        self.get_meta("cluster_id")
    }

    /// Records the cluster id (durably) the first time the node learns it.
    pub async fn set_cluster_id(&self, cluster_id: &str) -> Result<(), StoreError> {
        self.put_meta("cluster_id", &cluster_id)?;
        self.flush().await
    }

    /// fsyncs everything written so far.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|source| self.io(source))
    }

    /// Reads and decodes a `meta` record.
    pub(crate) fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.meta.get(key).map_err(|source| self.io(source))? else {
            return Ok(None);
        };
        decode(&bytes)
            .map(Some)
            .map_err(|reason| self.corrupt(format!("meta/{key}"), reason))
    }

    /// Encodes and writes a `meta` record (not yet fsynced).
    pub(crate) fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.corrupt(format!("meta/{key}"), e.to_string()))?;
        self.meta.insert(key, bytes).map_err(|source| self.io(source))?;
        Ok(())
    }

    pub(crate) fn io(&self, source: sled::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn corrupt(&self, what: String, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
            reason,
        }
    }

    fn check_identity(&self, node_id: NodeId, pinned_cluster: Option<&str>) -> Result<(), StoreError> {
        match self.get_meta::<u32>("format")? {
            Some(FORMAT) => {}
            Some(found) => {
                return Err(StoreError::Format {
                    path: self.path.clone(),
                    found,
                })
            }
            None if self.meta.is_empty() && self.logs.is_empty() => {
                self.put_meta("format", &FORMAT)?;
                self.put_meta("node_id", &node_id)?;
                self.db.flush().map_err(|source| self.io(source))?;
            }
            None => return Err(self.corrupt("meta/format".into(), "missing, but the database has data".into())),
        }
        match self.get_meta::<NodeId>("node_id")? {
            Some(found) if found != node_id => {
                return Err(StoreError::WrongNode {
                    path: self.path.clone(),
                    found,
                    expected: node_id,
                })
            }
            Some(_) => {}
            None => return Err(self.corrupt("meta/node_id".into(), "missing".into())),
        }
        if let (Some(expected), Some(found)) = (pinned_cluster, self.cluster_id()?) {
            if expected != found {
                return Err(StoreError::WrongCluster {
                    path: self.path.clone(),
                    found,
                    expected: expected.into(),
                });
            }
        }
        Ok(())
    }

    /// Decodes every record once, so corruption is reported at start-up with
    /// its location rather than as a fatal Raft error later.
    fn check_records(&self) -> Result<(), StoreError> {
        self.get_meta::<openraft::Vote<NodeId>>("vote")?;
        self.get_meta::<LogId>("committed")?;
        self.get_meta::<LogId>("last_purged")?;
        let mut expected_next: Option<u64> = None;
        for item in self.logs.iter() {
            let (key, value) = item.map_err(|source| self.io(source))?;
            let index =
                index_of(&key).ok_or_else(|| self.corrupt("logs key".into(), format!("{key:?} is not 8 bytes")))?;
            let entry: openraft::Entry<TypeConfig> =
                decode(&value).map_err(|reason| self.corrupt(format!("logs/{index}"), reason))?;
            if entry.log_id.index != index {
                return Err(self.corrupt(format!("logs/{index}"), format!("holds entry {}", entry.log_id.index)));
            }
            if let Some(next) = expected_next {
                if index != next {
                    return Err(self.corrupt(format!("logs/{next}"), "missing: the log has a hole".into()));
                }
            }
            expected_next = Some(index + 1);
        }
        if let Some(bytes) = self.snapshot.get("meta").map_err(|source| self.io(source))? {
            decode::<openraft::SnapshotMeta<NodeId, super::Member>>(&bytes)
                .map_err(|reason| self.corrupt("snapshot/meta".into(), reason))?;
        }
        Ok(())
    }
}

/// The sled key of log index `index`: big-endian, so byte order is index order.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log index of a sled key, if it is one.
pub(crate) fn index_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Decodes a JSON record, with the decoder's message on failure.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}
