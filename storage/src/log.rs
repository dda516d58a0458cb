//! The Raft log, vote and committed index in sled.
//!
//! Write path: `append` inserts the entries in index order, then flushes
//! the database (fsync) and only then tells openraft the entries are
//! durable, so an entry a leader counts toward a majority survives a power
//! cut. The vote is flushed before `save_vote` returns (a node must never
//! vote twice in a term). Truncation flushes too. Purge records the new
//! `last_purged` and returns; a blocking thread flushes it and only then
//! removes the entries, a small batch at a time: openraft's core (which
//! sends the heartbeats) waits for `purge`, and under load a purge of
//! ~9,000 entries done inline held it long enough for elections. Reads never return an entry at or below
//! `last_purged`, so entries not yet removed (or left by a crash) are
//! invisible, and there is never a hole.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};
use serde::de::DeserializeOwned;

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::{any, dec, enc};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    /// index (u64 big-endian) → postcard(Entry)
    log: sled::Tree,
    /// vote, committed, last_purged
    meta: sled::Tree,
    /// Appends waiting for the flush that makes them durable.
    flusher: std::sync::mpsc::Sender<(sled::Db, LogFlushed<TypeConfig>)>,
    /// First index not purged (0: nothing purged); reads start there.
    first_kept: Arc<AtomicU64>,
}

/// Group commit: one flush (fsync) covers every append queued before it
/// started, and their callbacks are completed in order after it. An
/// append's entries are in sled (in memory) before its callback is
/// queued, so the flush that completes it has them.
///
/// It runs on its own thread and calls sled's blocking `flush`: sled's
/// `flush_async` hands the flush to sled's I/O pool, whose every job wakes
/// all of its idle threads, and the flush itself queues one more job (the
/// buffer write); done here, a flush is that one job.
/// (The database travels with each request, so an idle loop holds no
/// handle on it and a closed store can be reopened at once. The thread
/// ends when the store and its clones are gone.)
fn flush_loop(rx: std::sync::mpsc::Receiver<(sled::Db, LogFlushed<TypeConfig>)>) {
    while let Ok((db, first)) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok((_, cb)) = rx.try_recv() {
            waiting.push(cb);
        }
        let result = db.flush().map(drop).map_err(|e| e.to_string());
        drop(db);
        if let Err(e) = &result {
            tracing::error!(cause = %e, "raft log flush failed");
        }
        for cb in waiting {
            cb.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

/// Entries removed per sled batch when purging.
const PURGE_CHUNK: usize = 128;

/// Removes the entries up to `upto` (a purge's tail work), a small batch
/// at a time with a pause between batches, so appends and their flushes
/// running meanwhile are not held up behind thousands of removals.
fn remove_purged(log: &sled::Tree, upto: [u8; 8]) {
    loop {
        let keys: Vec<_> = match log.range(..=upto).keys().take(PURGE_CHUNK).collect::<Result<_, _>>() {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(cause = %e, "reading purged log entries; they stay until the next purge");
                return;
            }
        };
        if keys.is_empty() {
            return;
        }
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        if let Err(e) = log.apply_batch(batch) {
            tracing::warn!(cause = %e, "removing purged log entries; they stay until the next purge");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let (flusher, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("catga-log-flush".into())
            .spawn(move || flush_loop(rx))
            .map_err(sled::Error::Io)?;
        let meta = db.open_tree("raft_meta")?;
        let purged: Option<LogId> = match meta.get(LAST_PURGED)? {
            Some(v) => dec::<Option<LogId>>(&v).map_err(|e| sled::Error::Unsupported(e.to_string()))?,
            None => None,
        };
        let first_kept = Arc::new(AtomicU64::new(purged.map_or(0, |l| l.index + 1)));
        Ok(Self { db: db.clone(), log: db.open_tree("raft_log")?, meta, flusher, first_kept })
    }

    async fn flush(&self) -> Result<(), AnyError> {
        self.db.flush_async().await.map(|_| ()).map_err(any)
    }

    fn read_meta<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, AnyError> {
        match self.meta.get(k).map_err(any)? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(LAST_PURGED).map_err(StorageIOError::read_logs)?.flatten())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // Entries at or below the last purged one may still be on disk
        // (removed in the background, or left by a crash): never read them.
        let first = self.first_kept.load(Ordering::Acquire);
        let start = match range.start_bound() {
            Bound::Included(i) if *i >= first => Bound::Included(key(*i)),
            Bound::Excluded(i) if *i >= first => Bound::Excluded(key(*i)),
            _ => Bound::Included(key(first)),
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, v) = kv.map_err(|e| StorageIOError::read_logs(any(e)))?;
            out.push(dec(&v).map_err(StorageIOError::read_logs)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(any(e)))? {
            Some((_, v)) => Some(dec::<Entry>(&v).map_err(StorageIOError::read_logs)?.log_id),
            None => None,
        };
        // An entry at or below the last purged one is on its way out (or
        // left by a crash): the log then ends at the purge point.
        let last_log_id = match (last, last_purged_log_id) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (l, p) => l.or(p),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let v = enc(vote).map_err(StorageIOError::write_vote)?;
        self.meta.insert(VOTE, v).map_err(|e| StorageIOError::write_vote(any(e)))?;
        self.flush().await.map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.read_meta(VOTE).map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: after a crash a lower committed index is only a
        // slower start (it is learned again from the leader).
        let v = enc(&committed).map_err(StorageIOError::write)?;
        self.meta.insert(COMMITTED, v).map_err(|e| StorageIOError::write(any(e)))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED).map_err(StorageIOError::read)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One insert per entry, in index order, not one sled batch: sled
        // seals its I/O buffer before and after every batch, and each seal
        // is a job for its I/O pool that wakes all its idle threads; a
        // batch per append was most of the pool's work under write load.
        // Atomicity is not needed here: sled 0.34's recovery replays its
        // log in LSN order and stops at the first tear (its
        // pagecache/iterator.rs), so a crash mid-append leaves a shorter
        // log, never a hole; and openraft counts none of these entries
        // before the flush below.
        for e in entries {
            let v = enc(&e).map_err(|err| StorageIOError::write_log_entry(e.log_id, err))?;
            self.log.insert(key(e.log_id.index), v).map_err(|e| StorageIOError::write_logs(any(e)))?;
        }
        // Durable before openraft counts it: the callback is completed by
        // the flush loop after a flush that covers this batch.
        if let Err(std::sync::mpsc::SendError((_, cb))) = self.flusher.send((self.db.clone(), callback)) {
            // The loop is gone (its thread panicked): flush here.
            let r = self.db.flush_async().await.map(drop).map_err(|e| std::io::Error::other(e.to_string()));
            cb.log_io_completed(r);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for k in self.log.range(key(log_id.index)..).keys() {
            batch.remove(k.map_err(|e| StorageIOError::write_logs(any(e)))?);
        }
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.flush().await.map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let v = enc(&Some(log_id)).map_err(StorageIOError::write_logs)?;
        self.meta.insert(LAST_PURGED, v).map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.first_kept.fetch_max(log_id.index + 1, Ordering::AcqRel);
        // The rest is not needed for correctness (reads skip the purged
        // entries from here on), only for space, and must not hold up
        // openraft's core: on a blocking thread, make `last_purged`
        // durable, and only then remove entries (so a crash can leave
        // extra entries, never a hole).
        let (db, log) = (self.db.clone(), self.log.clone());
        let upto = key(log_id.index);
        tokio::task::spawn_blocking(move || match db.flush() {
            Ok(_) => remove_purged(&log, upto),
            Err(e) => tracing::warn!(cause = %e, "flushing the purge point; purged entries stay until the next purge"),
        });
        Ok(())
    }
}
