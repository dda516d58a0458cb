//! A link's outbound data lane: frames are encoded straight into fixed-size
//! blocks, in send order, and the link's writer task takes every block
//! queued so far at once. No allocation or channel slot per frame, the
//! payload is copied once (into the lane) before quinn takes it, and a full
//! block is never reallocated: blocks are small enough for malloc to reuse
//! (a growing buffer instead meant fresh pages and page faults per batch).
//!
//! The lane is bounded in bytes: once it holds `bytes_max`, frames are
//! refused (and counted) instead of queued, so a stuck peer costs bounded
//! memory; "behind" (over half full) tells senders to slow down first.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::frame::FrameError;

/// Size of a lane block (a frame larger than this gets a block of its own
/// size). Under glibc's mmap threshold, so freed blocks are reused.
const BLOCK_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub struct Lane {
    state: Mutex<State>,
    /// Wakes the writer; a permit is stored if it is not waiting yet.
    ready: Notify,
    bytes_max: usize,
    refused: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// Filled blocks, oldest first.
    full: Vec<Bytes>,
    /// The block frames are being appended to.
    cur: BytesMut,
    /// Bytes in `full` and `cur`.
    queued: usize,
    closed: bool,
}

impl Lane {
    pub fn new(bytes_max: usize) -> Self {
        Self {
            state: Mutex::new(State { full: Vec::new(), cur: BytesMut::new(), queued: 0, closed: false }),
            ready: Notify::new(),
            bytes_max: bytes_max.max(1),
            refused: AtomicU64::new(0),
        }
    }

    /// Appends one frame written by `encode`, which should need about
    /// `size_hint` bytes (more only costs a reallocation). `Some(behind)`
    /// when queued, `behind` meaning the lane is over half full; `None`
    /// when the lane is closed, full, or the frame could not be encoded.
    pub fn push(&self, size_hint: usize, encode: impl FnOnce(&mut BytesMut) -> Result<(), FrameError>) -> Option<bool> {
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        if st.queued >= self.bytes_max {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let was_empty = st.queued == 0;
        if st.cur.capacity() - st.cur.len() < size_hint {
            let block = std::mem::replace(&mut st.cur, BytesMut::with_capacity(size_hint.max(BLOCK_BYTES)));
            if !block.is_empty() {
                st.full.push(block.freeze());
            }
        }
        let before = st.cur.len();
        if let Err(e) = encode(&mut st.cur) {
            drop(st);
            tracing::error!(cause = %e, "cannot encode frame");
            return None;
        }
        st.queued += st.cur.len() - before;
        let behind = st.queued * 2 > self.bytes_max;
        drop(st);
        // The writer empties the lane whole, so it only needs waking when
        // the lane goes from empty to not.
        if was_empty {
            self.ready.notify_one();
        }
        Some(behind)
    }

    /// Bytes queued and the bound.
    pub fn fill(&self) -> (usize, usize) {
        (self.state.lock().queued, self.bytes_max)
    }

    /// Frames refused because the lane was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Waits for queued bytes and moves all of them, in order, into `out`;
    /// `false` once closed.
    pub async fn take(&self, out: &mut Vec<Bytes>) -> bool {
        loop {
            {
                let mut st = self.state.lock();
                if st.closed {
                    return false;
                }
                if st.queued > 0 {
                    out.append(&mut st.full);
                    if !st.cur.is_empty() {
                        // The rest of the block keeps taking frames.
                        let part = st.cur.split().freeze();
                        out.push(part);
                    }
                    st.queued = 0;
                    return true;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Refuses further frames, drops what is queued and wakes the writer.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.full = Vec::new();
        st.cur = BytesMut::new();
        st.queued = 0;
        drop(st);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(lane: &Lane, bytes: &[u8]) -> Option<bool> {
        lane.push(bytes.len(), |b| {
            b.extend_from_slice(bytes);
            Ok(())
        })
    }

    async fn take_all(lane: &Lane) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        lane.take(&mut out).await.then(|| out.concat())
    }

    #[tokio::test]
    async fn frames_come_out_in_order() {
        let lane = Lane::new(1 << 20);
        assert_eq!(put(&lane, b"ab"), Some(false));
        assert_eq!(put(&lane, b"cd"), Some(false));
        assert_eq!(take_all(&lane).await.as_deref(), Some(&b"abcd"[..]));
        assert_eq!(lane.fill(), (0, 1 << 20));
        assert_eq!(put(&lane, b"e"), Some(false));
        assert_eq!(take_all(&lane).await.as_deref(), Some(&b"e"[..]));
    }

    #[tokio::test]
    async fn frames_span_blocks_in_order_and_big_frames_fit_whole() {
        let lane = Lane::new(1 << 24);
        let mut want = Vec::new();
        for i in 0..3000u32 {
            let len = if i % 500 == 7 { 3 * BLOCK_BYTES } else { 1 + (i as usize * 13) % 2000 };
            let frame = vec![(i % 256) as u8; len];
            assert!(put(&lane, &frame).is_some());
            want.extend_from_slice(&frame);
        }
        let mut out = Vec::new();
        assert!(lane.take(&mut out).await);
        assert!(out.len() > 1, "several blocks");
        assert_eq!(out.concat(), want);
        assert_eq!(lane.fill().0, 0);
    }

    #[tokio::test]
    async fn bounded_in_bytes_behind_past_half_then_refused() {
        let lane = Lane::new(10);
        assert_eq!(put(&lane, b"12345"), Some(false));
        assert_eq!(put(&lane, b"6"), Some(true));
        assert_eq!(put(&lane, b"7890"), Some(true));
        assert_eq!(put(&lane, b"x"), None);
        assert_eq!(lane.refused(), 1);
        assert_eq!(take_all(&lane).await.as_deref(), Some(&b"1234567890"[..]));
        assert_eq!(put(&lane, b"x"), Some(false));
    }

    #[tokio::test]
    async fn an_encode_error_queues_nothing() {
        let lane = Lane::new(10);
        assert_eq!(lane.push(4, |_| Err(FrameError::Empty)), None);
        assert_eq!(lane.fill().0, 0);
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push_and_by_close() {
        let lane = std::sync::Arc::new(Lane::new(100));
        let l = lane.clone();
        let writer = tokio::spawn(async move { take_all(&l).await });
        tokio::task::yield_now().await;
        put(&lane, b"hi");
        assert_eq!(writer.await.unwrap().as_deref(), Some(&b"hi"[..]));
        let l = lane.clone();
        let writer = tokio::spawn(async move { take_all(&l).await });
        tokio::task::yield_now().await;
        lane.close();
        assert_eq!(writer.await.unwrap(), None);
        assert_eq!(put(&lane, b"late"), None);
    }
}
