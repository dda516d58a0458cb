//! A link's outbound data lane: frames are encoded straight into one
//! buffer, in send order, and the link's writer task takes everything
//! queued so far in one piece. No allocation or channel slot per frame, and
//! the payload is copied once (into the lane) before quinn takes it.
//!
//! The lane is bounded in bytes: once it holds `bytes_max`, frames are
//! refused (and counted) instead of queued, so a stuck peer costs bounded
//! memory; "behind" (over half full) tells senders to slow down first.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::frame::FrameError;

/// Capacity a fresh lane buffer starts with.
const LANE_BYTES_INITIAL: usize = 64 * 1024;

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
    buf: BytesMut,
    closed: bool,
}

impl Lane {
    pub fn new(bytes_max: usize) -> Self {
        Self {
            state: Mutex::new(State { buf: BytesMut::with_capacity(LANE_BYTES_INITIAL), closed: false }),
            ready: Notify::new(),
            bytes_max: bytes_max.max(1),
            refused: AtomicU64::new(0),
        }
    }

    /// Appends one frame written by `encode`. `Some(behind)` when queued,
    /// `behind` meaning the lane is over half full; `None` when the lane is
    /// closed, full, or the frame could not be encoded.
    pub fn push(&self, encode: impl FnOnce(&mut BytesMut) -> Result<(), FrameError>) -> Option<bool> {
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        if st.buf.len() >= self.bytes_max {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let was_empty = st.buf.is_empty();
        if let Err(e) = encode(&mut st.buf) {
            drop(st);
            tracing::error!(cause = %e, "cannot encode frame");
            return None;
        }
        let behind = st.buf.len() * 2 > self.bytes_max;
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
        (self.state.lock().buf.len(), self.bytes_max)
    }

    /// Frames refused because the lane was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Waits for queued bytes and takes all of them; `None` once closed.
    pub async fn take(&self) -> Option<Bytes> {
        loop {
            {
                let mut st = self.state.lock();
                if st.closed {
                    return None;
                }
                if !st.buf.is_empty() {
                    let out = st.buf.split().freeze();
                    if st.buf.capacity() < LANE_BYTES_INITIAL / 4 {
                        st.buf.reserve(LANE_BYTES_INITIAL);
                    }
                    return Some(out);
                }
            }
            self.ready.notified().await;
        }
    }

    /// Refuses further frames, drops what is queued and wakes the writer.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.buf = BytesMut::new();
        drop(st);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(lane: &Lane, bytes: &[u8]) -> Option<bool> {
        lane.push(|b| {
            b.extend_from_slice(bytes);
            Ok(())
        })
    }

    #[tokio::test]
    async fn frames_come_out_in_order_in_one_piece() {
        let lane = Lane::new(1024);
        assert_eq!(put(&lane, b"ab"), Some(false));
        assert_eq!(put(&lane, b"cd"), Some(false));
        assert_eq!(lane.take().await.as_deref(), Some(&b"abcd"[..]));
        assert_eq!(lane.fill(), (0, 1024));
        assert_eq!(put(&lane, b"e"), Some(false));
        assert_eq!(lane.take().await.as_deref(), Some(&b"e"[..]));
    }

    #[tokio::test]
    async fn bounded_in_bytes_behind_past_half_then_refused() {
        let lane = Lane::new(10);
        assert_eq!(put(&lane, b"12345"), Some(false));
        assert_eq!(put(&lane, b"6"), Some(true));
        assert_eq!(put(&lane, b"7890"), Some(true));
        assert_eq!(put(&lane, b"x"), None);
        assert_eq!(lane.refused(), 1);
        assert_eq!(lane.take().await.as_deref(), Some(&b"1234567890"[..]));
        assert_eq!(put(&lane, b"x"), Some(false));
    }

    #[tokio::test]
    async fn an_encode_error_queues_nothing() {
        let lane = Lane::new(10);
        assert_eq!(lane.push(|_| Err(FrameError::Empty)), None);
        assert_eq!(lane.fill().0, 0);
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push_and_by_close() {
        let lane = std::sync::Arc::new(Lane::new(100));
        let l = lane.clone();
        let writer = tokio::spawn(async move { l.take().await });
        tokio::task::yield_now().await;
        put(&lane, b"hi");
        assert_eq!(writer.await.unwrap().as_deref(), Some(&b"hi"[..]));
        let l = lane.clone();
        let writer = tokio::spawn(async move { l.take().await });
        tokio::task::yield_now().await;
        lane.close();
        assert_eq!(writer.await.unwrap(), None);
        assert_eq!(put(&lane, b"late"), None);
    }
}
