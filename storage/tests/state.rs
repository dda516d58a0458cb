//! State machine semantics and recovery from disk.

use catga_storage::types::Entry;
use catga_storage::{Request, Response, StorageConfig};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

fn entry(index: u64, req: Request) -> Entry {
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(req) }
}

fn q(node: u64, subject: &str, group: &str, count: u32) -> Request {
    Request::QueueSet { node, subject: subject.into(), group: group.into(), count }
}

#[tokio::test]
async fn node_down_removes_all_its_queue_members_in_one_entry_and_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
        let out = sm
            .apply(vec![
                entry(1, q(1, "orders", "svc", 2)),
                entry(2, q(2, "orders", "svc", 1)),
                entry(3, q(1, "audit", "a", 1)),
                entry(4, Request::KvSet { key: b"k".to_vec(), value: b"v".to_vec() }),
                entry(5, Request::NodeDown { node: 1 }),
                entry(6, Request::KvDelete { key: b"missing".to_vec() }),
            ])
            .await
            .unwrap();
        assert_eq!(out[5], Response::Existed(false));
        let view = sm.view();
        let v = view.read();
        assert!(v.queues_of(1).is_empty(), "node 1's members are gone");
        assert_eq!(v.queues_of(2), vec![(b"orders".to_vec(), b"svc".to_vec(), 1)]);
        assert_eq!(v.applied.unwrap().index, 6);
    }
    // A fresh open (as after SIGKILL) rebuilds the same view from sled.
    let (_log, mut sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 6);
    let view = sm.view();
    let v = view.read();
    assert_eq!(v.queues_of(2), vec![(b"orders".to_vec(), b"svc".to_vec(), 1)]);
    assert!(v.queues_of(1).is_empty());
    assert_eq!(v.kv.get(&b"k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
}

#[tokio::test]
async fn queue_replace_swaps_a_nodes_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
    sm.apply(vec![
        entry(1, q(3, "a", "g", 1)),
        entry(2, Request::QueueReplace { node: 3, groups: vec![(b"b".to_vec(), b"h".to_vec(), 4)] }),
    ])
    .await
    .unwrap();
    let view = sm.view();
    assert_eq!(view.read().queues_of(3), vec![(b"b".to_vec(), b"h".to_vec(), 4)]);
}

fn redis(db: u32, cmds: &[&str]) -> Request {
    Request::Redis {
        db,
        now_ms: 1_700_000_000_000,
        cmds: cmds.iter().map(|c| c.split(' ').map(|a| a.as_bytes().to_vec()).collect()).collect(),
    }
}

#[tokio::test]
async fn redis_writes_survive_reopen_and_flushes_reach_disk() {
    use catga_storage::keyspace::Out;
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
        let out = sm
            .apply(vec![
                entry(1, redis(0, &["SET a 1", "INCRBY a 9", "MSET b 2 c 3", "SET t x EX 100"])),
                entry(2, redis(1, &["SET other db", "SET gone soon"])),
                entry(3, redis(0, &["DEL c", "RENAME b b2"])),
                entry(4, redis(1, &["FLUSHDB"])),
                entry(5, redis(2, &["SET survivor yes"])),
            ])
            .await
            .unwrap();
        assert_eq!(
            out[0],
            Response::Redis(vec![
                Out::Simple("OK".into()),
                Out::Int(10),
                Out::Simple("OK".into()),
                Out::Simple("OK".into())
            ])
        );
    }
    let (_log, sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
    let view = sm.view();
    let v = view.read();
    let now = 1_700_000_000_000;
    let get = |db: u32, k: &str| v.keyspace.read(db, now, &[b"GET", k.as_bytes()]).unwrap();
    assert_eq!(get(0, "a"), Out::Bulk(b"10".to_vec()));
    assert_eq!(get(0, "b2"), Out::Bulk(b"2".to_vec()));
    assert_eq!(get(0, "b"), Out::Nil);
    assert_eq!(get(0, "c"), Out::Nil);
    assert_eq!(get(1, "other"), Out::Nil, "FLUSHDB reached disk");
    assert_eq!(get(2, "survivor"), Out::Bulk(b"yes".to_vec()));
    assert_eq!(v.keyspace.read(0, now, &[b"TTL", b"t"]), Some(Out::Int(100)));
}
