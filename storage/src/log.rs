//! The Raft log: entries in segment files ([`crate::wal`]), the vote,
//! committed index and purge point in sled's `raft_meta` tree.
//!
//! Write path: `append` writes the entries at the end of the last segment
//! and returns; the flush thread syncs the segment (fdatasync) and only
//! then tells openraft the entries are durable, so an entry a leader counts
//! toward a majority survives a power cut. openraft 0.10 does not wait for
//! that: the leader sends the entries to its followers while its own sync
//! runs, and the core goes on with the next writes. One sync covers every
//! append queued before it (group commit). The vote is flushed before
//! `save_vote` returns (a node must never vote twice in a term).
//! Truncation syncs too.
//! Purge records the new `last_purged` and returns; a blocking thread
//! flushes it and only then deletes whole segments: openraft's core (which
//! sends the heartbeats) waits for `purge`. Reads never return an entry at
//! or below `last_purged`, so entries not yet deleted are invisible, and
//! there is never a hole.
//!
//! Until storage format 5 the entries were rows of sled's `raft_log` tree:
//! every sled flush was a job for sled's I/O pool, which wakes all of its
//! idle threads, and under write load that was a third of a follower's
//! CPU. Opening such a data dir moves the rows into segments first.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;

use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::wal::Wal;
use crate::{dec, enc};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
/// The segments' directory, inside the sled database's.
const WAL_DIR: &str = "catga-log";

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    /// vote, committed, last_purged
    meta: sled::Tree,
    wal: Arc<Mutex<Wal>>,
    /// Appends waiting for the sync that makes them durable.
    flusher: std::sync::mpsc::Sender<PendingSync>,
    /// First index not purged (0: nothing purged); reads start there.
    first_kept: Arc<AtomicU64>,
    /// Told how long each sync took and how many appends it covered.
    synced: Arc<std::sync::OnceLock<SyncObserver>>,
}

/// An append waiting for the flush thread: the segment to sync (none if
/// the append wrote nothing) and openraft's callback.
type PendingSync = (Option<Arc<File>>, IOFlushed<TypeConfig>);

/// See [`LogStore::sync_observer`].
pub type SyncObserver = Box<dyn Fn(std::time::Duration, usize) + Send + Sync>;

/// Group commit: one sync covers every append queued before it started,
/// and their callbacks are completed in order after it. An append's
/// records are written before its callback is queued, so the sync that
/// completes it has them. Each distinct segment file queued is synced
/// (an append that started a new segment synced the old one itself).
/// Runs on its own thread; it ends when the store and its clones are gone.
fn flush_loop(rx: std::sync::mpsc::Receiver<PendingSync>, synced: Arc<std::sync::OnceLock<SyncObserver>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(next) = rx.try_recv() {
            waiting.push(next);
        }
        let mut files: Vec<Arc<File>> = Vec::new();
        for f in waiting.iter().filter_map(|(f, _)| f.as_ref()) {
            if !files.iter().any(|g| Arc::ptr_eq(f, g)) {
                files.push(f.clone());
            }
        }
        let result = sync_files(&files, waiting.len(), &synced);
        drop(files);
        for (_, cb) in waiting {
            cb.io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

/// Syncs `files` (fdatasync), tells the observer how long that took for
/// how many `appends`, and logs a failure.
fn sync_files<'a>(
    files: impl IntoIterator<Item = &'a Arc<File>>,
    appends: usize,
    synced: &std::sync::OnceLock<SyncObserver>,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let result = files.into_iter().try_for_each(|f| f.sync_data()).map_err(|e| e.to_string());
    if let Some(observe) = synced.get() {
        observe(started.elapsed(), appends);
    }
    if let Err(e) = &result {
        tracing::error!(cause = %e, "raft log sync failed");
    }
    result
}

fn unsupported(e: impl std::fmt::Display) -> sled::Error {
    sled::Error::Unsupported(e.to_string())
}

/// Moves the entries of a data dir older than format 5 from sled's
/// `raft_log` tree into segments: written into a temporary directory,
/// synced, renamed into place, and only then removed from sled. A crash
/// before the rename leaves the tree as it was (the move starts over); a
/// crash after it leaves rows the next open removes.
fn move_sled_rows(db: &sled::Db, dir: &Path, wal_dir: &Path, segment_bytes: u64) -> Result<(), sled::Error> {
    let old = db.open_tree("raft_log")?;
    if old.is_empty() {
        return Ok(());
    }
    if !wal_dir.exists() {
        let tmp = dir.join(format!("{WAL_DIR}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        let mut wal = Wal::open(&tmp, segment_bytes)?;
        let mut moved = 0u64;
        for kv in old.iter() {
            let (k, v) = kv?;
            let index = <[u8; 8]>::try_from(&k[..]).map(u64::from_be_bytes).map_err(unsupported)?;
            wal.append(index, [&v[..]]).map_err(unsupported)?;
            moved += 1;
        }
        if let Some(f) = wal.sync_handle() {
            f.sync_data()?;
        }
        drop(wal);
        std::fs::rename(&tmp, wal_dir)?;
        File::open(dir)?.sync_all()?;
        tracing::info!(entries = moved, "moved the raft log from sled into segment files");
    }
    old.clear()?;
    db.flush()?;
    Ok(())
}

impl LogStore {
    /// Opens the log of the database `db` at `dir` (its segments in
    /// `dir/catga-log`), moving an older format's entries out of sled.
    pub(crate) fn open(db: &sled::Db, dir: &Path, segment_bytes: u64) -> Result<Self, sled::Error> {
        let wal_dir = dir.join(WAL_DIR);
        move_sled_rows(db, dir, &wal_dir, segment_bytes)?;
        let wal = Wal::open(&wal_dir, segment_bytes)?;
        let synced = Arc::new(std::sync::OnceLock::new());
        let (flusher, rx) = std::sync::mpsc::channel();
        let observer = synced.clone();
        std::thread::Builder::new()
            .name("catga-log-flush".into())
            .spawn(move || flush_loop(rx, observer))
            .map_err(sled::Error::Io)?;
        let meta = db.open_tree("raft_meta")?;
        let purged: Option<LogId> = match meta.get(LAST_PURGED)? {
            Some(v) => dec::<Option<LogId>>(&v).map_err(unsupported)?,
            None => None,
        };
        let first_kept = Arc::new(AtomicU64::new(purged.map_or(0, |l| l.index + 1)));
        Ok(Self { db: db.clone(), meta, wal: Arc::new(Mutex::new(wal)), flusher, first_kept, synced })
    }

    /// Where to set the observer of log syncs (once; for metrics): how
    /// long each fdatasync took and how many appends it made durable.
    pub fn sync_observer(&self) -> Arc<std::sync::OnceLock<SyncObserver>> {
        self.synced.clone()
    }

    async fn flush(&self) -> io::Result<()> {
        self.db.flush_async().await.map(|_| ()).map_err(io::Error::other)
    }

    fn read_meta<T: DeserializeOwned>(&self, k: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(k).map_err(io::Error::other)? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    fn last_purged(&self) -> io::Result<Option<LogId>> {
        Ok(self.read_meta::<Option<LogId>>(LAST_PURGED)?.flatten())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        // Entries at or below the last purged one may still be on disk
        // (deleted in the background): never read them.
        let first = self.first_kept.load(Ordering::Acquire);
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(first);
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let records = self.wal.lock().read(from, to)?;
        records.iter().map(|(_, bytes)| dec(bytes)).collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.read_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id = self.last_purged()?;
        let last = match self.wal.lock().last()? {
            Some(bytes) => Some(dec::<Entry>(&bytes)?.log_id),
            None => None,
        };
        // An entry at or below the last purged one is on its way out (or
        // not yet deleted): the log then ends at the purge point.
        let last_log_id = match (last, last_purged_log_id) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (l, p) => l.or(p),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let v = enc(vote)?;
        self.meta.insert(VOTE, v).map_err(io::Error::other)?;
        self.flush().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not flushed: after a crash a lower committed index is only a
        // slower start (it is learned again from the leader).
        let v = enc(&committed)?;
        self.meta.insert(COMMITTED, v).map_err(io::Error::other)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut payloads = Vec::new();
        let mut first = None;
        for e in entries {
            first.get_or_insert(e.log_id.index);
            payloads.push(enc(&e)?);
        }
        let file = {
            let mut wal = self.wal.lock();
            if let Some(first) = first {
                if wal.next().is_some_and(|next| first > next) && self.first_kept.load(Ordering::Acquire) >= first {
                    // A follower that installed a snapshot past its log's
                    // end: everything it holds is purged, and the log goes
                    // on after the snapshot. The purge point must be on
                    // disk before the entries go.
                    self.db.flush().map_err(io::Error::other)?;
                    wal.clear()?;
                }
                wal.append(first, payloads.iter().map(Vec::as_slice))?;
            }
            wal.sync_handle()
        };
        // Durable before openraft counts it: the callback is completed
        // after a sync that covers these records.
        let (file, callback) = match self.flusher.send((file, callback)) {
            Ok(()) => return Ok(()),
            // The loop is gone (its thread panicked): sync here.
            Err(std::sync::mpsc::SendError(back)) => back,
        };
        callback.io_completed(sync_files(&file, 1, &self.synced).map_err(io::Error::other));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        self.wal.lock().truncate(last_log_id.map_or(0, |l| l.index + 1))
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let v = enc(&Some(log_id))?;
        self.meta.insert(LAST_PURGED, v).map_err(io::Error::other)?;
        self.first_kept.fetch_max(log_id.index + 1, Ordering::AcqRel);
        // The rest is not needed for correctness (reads skip the purged
        // entries from here on), only for space, and must not hold up
        // openraft's core: on a blocking thread, make `last_purged`
        // durable, and only then delete segments (so a crash can leave
        // extra entries, never a hole).
        let (db, wal) = (self.db.clone(), self.wal.clone());
        tokio::task::spawn_blocking(move || match db.flush() {
            Ok(_) => {
                if let Err(e) = wal.lock().purge(log_id.index) {
                    tracing::warn!(cause = %e, "deleting purged log segments; they stay until the next purge");
                }
            }
            Err(e) => tracing::warn!(cause = %e, "flushing the purge point; purged entries stay until the next purge"),
        });
        Ok(())
    }
}
