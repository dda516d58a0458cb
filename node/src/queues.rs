//! Queue groups through Raft.
//!
//! - [`replicate`]: this node's own queue members (from the bus) are
//!   written to the replicated state as absolute counts, one write in
//!   flight at a time, so a burst of subscriptions coalesces, a failed
//!   write is simply retried, and a node that returns after being marked
//!   down (or restarts with stale entries) converges by the same path.
//! - [`route`]: whenever applied entries change the groups, the cluster
//!   rebuilds its remote queue subscriptions from the view.
//!
//! A queue subscription therefore works on its own node at once, and on
//! other nodes once its entry is committed and applied there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use catga_raft::{RaftNode, Request};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, QueueKey};

/// Pause before retrying a write that failed (no leader, minority side).
const RETRY: Duration = Duration::from_millis(100);
/// Longest wait for our own committed write to be applied here before we
/// compare again; also the period of the safety re-check.
const SETTLE: Duration = Duration::from_secs(1);

/// Starts routing by, and replicating into, Raft's queue groups.
pub fn start(cluster: Arc<Cluster>, raft: Arc<RaftNode>, stop: CancellationToken) {
    cluster.set_view(raft.view());
    tokio::spawn(route(cluster.clone(), raft.clone(), stop.clone()));
    tokio::spawn(replicate(cluster, raft, stop));
}

async fn route(cluster: Arc<Cluster>, raft: Arc<RaftNode>, stop: CancellationToken) {
    let mut changes = raft.queue_changes();
    loop {
        changes.borrow_and_update();
        cluster.sync_queues();
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// The groups `node` has in the applied view.
fn committed(raft: &RaftNode, node: u64) -> BTreeMap<QueueKey, u32> {
    raft.view().read().queues_of(node).into_iter().map(|(s, g, c)| ((s, g), c)).collect()
}

/// The one entry that turns `committed` into `want`, if they differ: a
/// single `QueueSet` for one changed group, else a `QueueReplace`.
pub fn change(node: u64, want: &BTreeMap<QueueKey, u32>, committed: &BTreeMap<QueueKey, u32>) -> Option<Request> {
    let mut changed = want
        .iter()
        .filter(|(k, c)| committed.get(*k) != Some(c))
        .map(|(k, _)| k)
        .chain(committed.keys().filter(|k| !want.contains_key(*k)));
    let first = changed.next()?;
    if changed.next().is_none() {
        let (subject, group) = first.clone();
        let count = want.get(first).copied().unwrap_or(0);
        return Some(Request::QueueSet { node, subject, group, count });
    }
    let groups = want.iter().map(|((s, g), c)| (s.clone(), g.clone(), *c)).collect();
    Some(Request::QueueReplace { node, groups })
}

async fn replicate(cluster: Arc<Cluster>, raft: Arc<RaftNode>, stop: CancellationToken) {
    let mut changes = raft.queue_changes();
    loop {
        changes.borrow_and_update();
        let want = cluster.local_queues();
        let req = if raft.is_formed() { change(raft.id, &want, &committed(&raft, raft.id)) } else { None };
        if let Some(req) = req {
            let written = tokio::select! {
                r = raft.write(req) => r,
                _ = stop.cancelled() => return,
            };
            match written {
                Ok(_) => {
                    // Wait for it to be applied here, so the next compare
                    // does not write it again.
                    let deadline = tokio::time::Instant::now() + SETTLE;
                    while committed(&raft, raft.id) != want {
                        tokio::select! {
                            r = changes.changed() => if r.is_err() { return },
                            _ = tokio::time::sleep_until(deadline) => break,
                            _ = stop.cancelled() => return,
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(cause = %e, "queue-group write failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
            continue;
        }
        tokio::select! {
            _ = cluster.queue_dirty().notified() => {}
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(SETTLE) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(entries: &[(&str, &str, u32)]) -> BTreeMap<QueueKey, u32> {
        entries.iter().map(|(s, g, c)| ((s.as_bytes().to_vec(), g.as_bytes().to_vec()), *c)).collect()
    }

    #[test]
    fn no_change_when_equal() {
        let a = groups(&[("work", "w", 2)]);
        assert_eq!(change(7, &a, &a), None);
        assert_eq!(change(7, &groups(&[]), &groups(&[])), None);
    }

    #[test]
    fn one_difference_is_one_set() {
        let want = groups(&[("work", "w", 3), ("x", "y", 1)]);
        let have = groups(&[("work", "w", 2), ("x", "y", 1)]);
        assert_eq!(
            change(7, &want, &have),
            Some(Request::QueueSet { node: 7, subject: b"work".to_vec(), group: b"w".to_vec(), count: 3 })
        );
        // A group gone is a set to zero.
        assert_eq!(
            change(7, &groups(&[]), &groups(&[("a", "b", 1)])),
            Some(Request::QueueSet { node: 7, subject: b"a".to_vec(), group: b"b".to_vec(), count: 0 })
        );
    }

    #[test]
    fn several_differences_replace_all() {
        let want = groups(&[("a", "g", 1), ("b", "g", 2)]);
        let have = groups(&[("c", "g", 1)]);
        assert_eq!(
            change(7, &want, &have),
            Some(Request::QueueReplace {
                node: 7,
                groups: vec![(b"a".to_vec(), b"g".to_vec(), 1), (b"b".to_vec(), b"g".to_vec(), 2)]
            })
        );
    }
}
