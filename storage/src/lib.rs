//! catga-storage: everything Catga keeps on disk: the Raft log in segment
//! files, the rest in sled. The only crate
//! that imports sled.
//!
//! - [`types`]: the Raft type configuration shared by storage and the Raft
//!   crate: what a log entry carries ([`Request`]) and who a member is
//!   ([`Member`]).
//! - [`log`]: [`LogStore`], openraft's `RaftLogStorage`: entries in
//!   segment files ([`wal`]), vote and purge point in sled. An append is
//!   synced (fdatasync) before openraft is told it is durable.
//! - [`sm`]: [`StateMachine`], openraft's `RaftStateMachine` over sled, and
//!   the in-memory view nodes read (queue groups).
//!
//! One sled database per node (`DATA_DIR/raft`), with the log's segments
//! in `DATA_DIR/raft/catga-log`, opened by [`open`].

pub mod keyspace;
pub mod log;
pub mod sm;
pub mod types;
pub mod wal;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use log::{LogStore, SyncObserver};
pub use sm::{ApplyObserver, EventSink, KeyspaceEvents, StateMachine, TouchedSink, View};
pub use types::{Cmds, Member, Request, Response, TypeConfig};

/// sled settings, each chosen on purpose.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// sled's page cache, for the applied state's rows (the Raft log is
    /// in segment files). With ≈950 k keys, 64 MiB made every checkpoint
    /// page tree nodes out and back in: slower, and 1.1 GiB resident
    /// against 0.67 GiB with 256 MiB (bench/RESULTS.md).
    pub cache_bytes: u64,
    /// A Raft log segment file past this size is closed and the next one
    /// started; purges delete whole segments.
    pub log_segment_bytes: u64,
    /// Applied state reaches sled write-behind (see [`sm`]): a checkpoint
    /// follows the apply that finds the pending rows this old...
    pub state_write_behind_ms: u64,
    /// ...or this large (keys and values written since the last one).
    pub state_write_behind_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 256 << 20,
            log_segment_bytes: 64 << 20,
            state_write_behind_ms: 100,
            state_write_behind_bytes: 16 << 20,
        }
    }
}

/// How long [`open`] waits for sled's lock on the directory.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens (or creates) the node's database and its log store and state
/// machine.
pub fn open(dir: &Path, cfg: &StorageConfig) -> Result<(LogStore, StateMachine), sled::Error> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cfg.cache_bytes)
        // Durability is ours to decide: the log store syncs before it
        // acknowledges; no background timer is needed for correctness.
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput);
    // A store of this process closed a moment ago can still hold sled's
    // lock on the directory: the state machine's last checkpoint, written
    // as it closes, leaves sled one buffer write to finish on its I/O pool.
    // Wait that out (bounded); another process holding the lock still gets
    // sled's error.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let db = loop {
        match config.open() {
            Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => break other?,
        }
    };
    let found = check_format(&db)?;
    let log = LogStore::open(&db, dir, cfg.log_segment_bytes)?;
    // Opening the state machine rewrites format 2's list rows as chunks.
    let sm = StateMachine::open(&db, cfg)?;
    if found != FORMAT_VERSION {
        db.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
        db.flush()?;
        tracing::info!(from = found, to = FORMAT_VERSION, "upgraded the data dir's storage format");
    }
    Ok((log, sm))
}

/// Version of what this build writes to sled (log entries, state rows,
/// snapshots). 2: Redis commands packed as [`Cmds`]. 3: list items in
/// chunk rows ([`keyspace::LIST_CHUNK`] positions a row) instead of one row
/// each; log entries may be [`Request::Once`], whose record the state
/// rows and snapshots keep (a format 2 snapshot still reads, with an
/// empty record). 4: the Lua script cache in `s` rows and in snapshots
/// (a format 3 snapshot still reads, with no scripts). 5: the Raft log's
/// entries in segment files ([`wal`]) instead of sled's `raft_log` tree
/// (moved there at open). A data dir of version 2 to 4 is upgraded at
/// open; any other version
/// is refused with a clear error instead of failing to decode entries
/// later.
pub const FORMAT_VERSION: u32 = 5;
/// The oldest format [`open`] upgrades.
const FORMAT_UPGRADABLE: u32 = 2;
const FORMAT_KEY: &[u8] = b"catga_format";

/// The data dir's format version (a new one is marked with this build's);
/// an error for one this build cannot read.
fn check_format(db: &sled::Db) -> Result<u32, sled::Error> {
    let found = match db.get(FORMAT_KEY)? {
        Some(v) => v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0),
        // Written before the marker existed (version 1), or brand new.
        None => {
            let used = ["raft_log", "raft_meta", "state"]
                .iter()
                .map(|t| db.open_tree(t).map(|t| !t.is_empty()))
                .collect::<Result<Vec<_>, _>>()?;
            if used.contains(&true) {
                1
            } else {
                db.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
                db.flush()?;
                FORMAT_VERSION
            }
        }
    };
    if !(FORMAT_UPGRADABLE..=FORMAT_VERSION).contains(&found) {
        return Err(sled::Error::Unsupported(format!(
            "this data dir holds Raft storage format {found}; this catga reads formats \
             {FORMAT_UPGRADABLE} to {FORMAT_VERSION} \
             (move the data dir away and let the node catch up from the cluster, or restore a backup)"
        )));
    }
    Ok(found)
}

/// How values are stored: postcard.
pub(crate) fn enc<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(std::io::Error::other)
}

pub(crate) fn dec<T: DeserializeOwned>(b: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(b).map_err(std::io::Error::other)
}

/// An I/O error that says what was being done: openraft's storage traits
/// return `io::Error`, which carries no subject of its own.
pub(crate) fn failed(doing: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{doing}: {e}"))
}
