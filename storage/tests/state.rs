//! State machine semantics and recovery from disk.

use catga_storage::types::Entry;
use catga_storage::types::{LeaderId, LogId};
use catga_storage::{Request, Response, StorageConfig};
use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderId;
use openraft::EntryPayload;

fn entry(index: u64, req: Request) -> Entry {
    Entry { log_id: LogId::new(LeaderId::new(1, 1), index), payload: EntryPayload::Normal(req) }
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
            .apply_entries(vec![
                entry(1, q(1, "orders", "svc", 2)),
                entry(2, q(2, "orders", "svc", 1)),
                entry(3, q(1, "audit", "a", 1)),
                entry(4, Request::KvSet { key: b"k".to_vec(), value: b"v".to_vec() }),
                entry(5, Request::NodeDown { node: 1 }),
                entry(6, Request::KvDelete { key: b"missing".to_vec() }),
            ])
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
    sm.apply_entries(vec![
        entry(1, q(3, "a", "g", 1)),
        entry(2, Request::QueueReplace { node: 3, groups: vec![(b"b".to_vec(), b"h".to_vec(), 4)] }),
    ])
    .unwrap();
    let view = sm.view();
    assert_eq!(view.read().queues_of(3), vec![(b"b".to_vec(), b"h".to_vec(), 4)]);
}

fn redis(db: u32, cmds: &[&str]) -> Request {
    Request::Redis {
        db,
        now_ms: 1_700_000_000_000,
        cmds: cmds.iter().map(|c| c.split(' ').collect::<Vec<_>>()).collect(),
    }
}

#[tokio::test]
async fn redis_writes_survive_reopen_and_flushes_reach_disk() {
    use catga_storage::keyspace::Out;
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
        let out = sm
            .apply_entries(vec![
                entry(1, redis(0, &["SET a 1", "INCRBY a 9", "MSET b 2 c 3", "SET t x EX 100"])),
                entry(2, redis(1, &["SET other db", "SET gone soon"])),
                entry(3, redis(0, &["DEL c", "RENAME b b2"])),
                entry(4, redis(1, &["FLUSHDB"])),
                entry(5, redis(2, &["SET survivor yes"])),
            ])
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

/// A small deterministic generator for the mixed workload below.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Hashes, lists, sets and sorted sets are stored one element per row.
/// A mixed workload (pushes and pops at both ends, trims, inserts in the
/// middle, renames over other types, deletes, flushes) applied in
/// batches, then a reopen, must give back exactly the in-memory state,
/// list positions included.
#[tokio::test]
async fn collections_stored_by_element_reopen_to_the_same_state() {
    use catga_storage::keyspace::Keyspace;
    let now = 1_700_000_000_000;
    let ops = [
        "LPUSH l{k} {v} {w}",
        "RPUSH l{k} {v}",
        "LPOP l{k}",
        "RPOP l{k} 2",
        "LTRIM l{k} 1 -2",
        "LINSERT l{k} BEFORE {v} {w}",
        "LREM l{k} 1 {v}",
        "LSET l{k} 0 {w}",
        "LMOVE l{k} l{j} LEFT RIGHT",
        "HSET h{k} f{v} {w} f{w} {v}",
        "HDEL h{k} f{v}",
        "HINCRBY h{k} n 3",
        "SADD s{k} {v} {w}",
        "SREM s{k} {v}",
        "SPOP s{k}",
        "SINTERSTORE s{k} s{j} s{k}",
        "SMOVE s{k} s{j} {v}",
        "ZADD z{k} {v} m{w}",
        "ZINCRBY z{k} 1.5 m{v}",
        "ZREM z{k} m{v}",
        "ZPOPMIN z{k}",
        "ZREMRANGEBYRANK z{k} 0 0",
        "RENAME h{k} l{j}",
        "RENAME z{k} s{j}",
        "DEL l{k} s{k}",
        "SET h{k} plain",
        "EXPIRE l{k} 1000",
        "PERSIST l{k}",
        "MOVE s{k} 1",
        "SWAPDB 0 1",
    ];
    let mut rng = Lcg(7);
    let mut cmds: Vec<String> = Vec::new();
    for i in 0..3000 {
        let op = ops[rng.below(ops.len() as u64) as usize];
        let cmd = op
            .replace("{k}", &rng.below(4).to_string())
            .replace("{j}", &rng.below(4).to_string())
            .replace("{v}", &rng.below(6).to_string())
            .replace("{w}", &rng.below(6).to_string());
        cmds.push(cmd);
        if i == 1500 {
            cmds.push("FLUSHDB".into());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut reference = Keyspace::default();
    for c in &cmds {
        let argv: Vec<&[u8]> = c.split(' ').map(str::as_bytes).collect();
        reference.exec(0, now, &argv);
    }
    {
        let (_log, mut sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
        let (mut index, mut at) = (1, 0);
        while at < cmds.len() {
            // Entries of 1 to 40 commands, applied a few entries at a time.
            let mut entries = Vec::new();
            for _ in 0..=rng.below(3) {
                let n = (1 + rng.below(40) as usize).min(cmds.len() - at);
                let chunk: Vec<&str> = cmds[at..at + n].iter().map(String::as_str).collect();
                entries.push(entry(index, redis(0, &chunk)));
                index += 1;
                at += n;
                if at == cmds.len() {
                    break;
                }
            }
            sm.apply_entries(entries).unwrap();
        }
        assert!(sm.view().read().keyspace == reference, "the applied state is the reference state");
    }
    let (_log, sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
    let view = sm.view();
    let v = view.read();
    assert!(v.keyspace == reference, "reopened state differs from what was applied");
    assert!(v.keyspace.entries().count() > 4, "the workload leaves keys behind");
}

/// The element rows (key, value) of Redis key `key` in db 0, straight from
/// the closed data dir's state tree.
fn element_rows(dir: &std::path::Path, key: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = when_unlocked(|| sled::open(dir)).expect("sled opens the data dir");
    let mut prefix = vec![b'e', 0, 0, 0, 0];
    prefix.extend_from_slice(&(key.len() as u32).to_be_bytes());
    prefix.extend_from_slice(key);
    let tree = db.open_tree("state").expect("the state tree");
    tree.scan_prefix(&prefix)
        .map(|kv| kv.map(|(k, v)| (k[prefix.len()..].to_vec(), v.to_vec())).expect("a readable row"))
        .collect()
}

fn lrange_all(sm: &catga_storage::StateMachine, key: &str) -> catga_storage::keyspace::Out {
    let view = sm.view();
    let v = view.read();
    v.keyspace.read(0, 1_700_000_000_000, &[b"LRANGE", key.as_bytes(), b"0", b"-1"]).expect("LRANGE is a read")
}

/// A list is stored in chunk rows of LIST_CHUNK positions: a long list
/// grown at both ends and trimmed takes one row per chunk it spans (not
/// one per item), and reopens to the same items in the same order.
#[tokio::test]
async fn lists_are_stored_in_chunk_rows_and_reopen_in_order() {
    use catga_storage::keyspace::LIST_CHUNK;
    let dir = tempfile::tempdir().unwrap();
    let items = |from: usize, to: usize| (from..to).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
    let before = {
        let (_log, mut sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
        let (l1, r1, l2) = (
            format!("LPUSH l {}", items(0, 500)),
            format!("RPUSH l {}", items(500, 900)),
            format!("LPUSH l {}", items(900, 1000)),
        );
        sm.apply_entries(vec![
            entry(1, redis(0, &[&l1])),
            entry(2, redis(0, &[&r1, "LPOP l 7", "RPOP l 3"])),
            entry(3, redis(0, &[&l2, "LTRIM l 5 -6", "LSET l 100 changed"])),
        ])
        .unwrap();
        lrange_all(&sm, "l")
    };
    let catga_storage::keyspace::Out::Array(ref got) = before else { panic!("{before:?}") };
    assert_eq!(got.len(), 1000 - 7 - 3 - 10);
    let rows = element_rows(dir.path(), b"l");
    let spans = (got.len() as i64 + 2 * LIST_CHUNK - 2) / LIST_CHUNK;
    assert!(
        rows.len() as i64 <= spans && rows.len() as i64 >= got.len() as i64 / LIST_CHUNK,
        "{} rows for {} items",
        rows.len(),
        got.len()
    );
    assert!(rows.iter().all(|(sub, _)| sub.len() == 9 && sub[8] == b'c'), "chunk rows only");
    let (_log, sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
    assert_eq!(lrange_all(&sm, "l"), before, "reopened list differs");
}

/// A data dir of format 2 (list items one per row, keyed by bare
/// position) is upgraded at open: the list reads back unchanged, its rows
/// are rewritten as chunks, and the dir is marked format 3.
#[tokio::test]
async fn format_2_list_rows_are_upgraded_to_chunks_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        sm.apply_entries(vec![entry(1, redis(0, &["RPUSH q a b c d", "LPUSH q z y", "HSET h f1 v1 f2 v2"]))]).unwrap();
        lrange_all(&sm, "q")
    };
    let hash_rows = element_rows(dir.path(), b"h");
    {
        // Rewrite q's rows as format 2 left them: one row per item, its
        // sub-key the item's position (i64, sign bit flipped, big-endian).
        let db = when_unlocked(|| sled::open(dir.path())).unwrap();
        let tree = db.open_tree("state").unwrap();
        let prefix = vec![b'e', 0, 0, 0, 0, 0, 0, 0, 1, b'q'];
        for k in tree.scan_prefix(&prefix).keys() {
            tree.remove(k.unwrap()).unwrap();
        }
        for (i, item) in ["y", "z", "a", "b", "c", "d"].iter().enumerate() {
            let pos = i as i64 - 2;
            let mut k = prefix.clone();
            k.extend_from_slice(&((pos as u64) ^ (1 << 63)).to_be_bytes());
            tree.insert(k, item.as_bytes()).unwrap();
        }
        db.insert(b"catga_format", &2u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    {
        let (_log, sm) = open_when_unlocked(dir.path()).unwrap();
        assert_eq!(lrange_all(&sm, "q"), before, "the format 2 list reads back");
    }
    let rows = element_rows(dir.path(), b"q");
    assert_eq!(rows.len(), 2, "positions -2..3 span two chunks: {rows:?}");
    assert!(rows.iter().all(|(sub, _)| sub.len() == 9), "{rows:?}");
    assert_eq!(element_rows(dir.path(), b"h"), hash_rows, "other keys' rows are left alone");
    let db = when_unlocked(|| sled::open(dir.path())).unwrap();
    assert_eq!(db.get(b"catga_format").unwrap().unwrap().as_ref(), &catga_storage::FORMAT_VERSION.to_be_bytes());
}

fn once(origin: u64, seq: u64, done_below: u64, sent_ms: u64, req: Request) -> Request {
    Request::Once { origin, seq, done_below, sent_ms, req: Box::new(req) }
}

fn incr_reply(n: i64) -> Response {
    Response::Redis(vec![catga_storage::keyspace::Out::Int(n)])
}

/// A `Request::Once` applies once: a repeat of (origin, seq) gets the
/// first response back and changes nothing, after a reopen and through a
/// snapshot too. What the origin is done with is forgotten, and a late
/// copy of it is not applied; an origin silent for the TTL is forgotten.
#[tokio::test]
async fn once_writes_apply_once_and_are_remembered_until_done() {
    use catga_storage::types::ONCE_ORIGIN_TTL_MS;
    use openraft::RaftSnapshotBuilder;
    let t0 = 1_700_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let incr = || redis(0, &["INCR n"]);
    let snapshot = {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        let out = sm
            .apply_entries(vec![
                entry(1, once(7, 0, 0, t0, incr())),
                entry(2, once(7, 1, 0, t0, incr())),
                entry(3, once(7, 0, 0, t0, incr())),
                entry(4, once(9, 0, 0, t0, incr())),
            ])
            .unwrap();
        assert_eq!(
            out,
            vec![incr_reply(1), incr_reply(2), incr_reply(1), incr_reply(3)],
            "the repeat of seq 0 answered as first"
        );
        let mut b = sm.get_snapshot_builder().await;
        let snap: Result<_, std::io::Error> = b.build_snapshot().await;
        snap.unwrap()
    };
    let get_n = |sm: &catga_storage::StateMachine| {
        let view = sm.view();
        let v = view.read();
        v.keyspace.read(0, t0, &[b"GET", b"n"]).unwrap()
    };
    {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        let out =
            sm.apply_entries(vec![entry(5, once(7, 1, 0, t0, incr())), entry(6, once(9, 0, 0, t0, incr()))]).unwrap();
        assert_eq!(out, vec![incr_reply(2), incr_reply(3)], "remembered across a reopen");
        assert_eq!(get_n(&sm), catga_storage::keyspace::Out::Bulk(b"3".to_vec()));
        // Origin 7 is done below seq 2: seqs 0 and 1 are forgotten, and a
        // late copy of seq 1 is not applied.
        let out =
            sm.apply_entries(vec![entry(7, once(7, 2, 2, t0, incr())), entry(8, once(7, 1, 0, t0, incr()))]).unwrap();
        assert_eq!(out, vec![incr_reply(4), Response::Ok]);
        assert_eq!(get_n(&sm), catga_storage::keyspace::Out::Bulk(b"4".to_vec()), "the late copy changed nothing");
        assert_eq!(sm.view().read().once[&7].done.keys().copied().collect::<Vec<_>>(), vec![2]);
        // Origin 9 falls silent; a write of origin 7 past the TTL forgets it.
        sm.apply_entries(vec![entry(9, once(7, 3, 3, t0 + ONCE_ORIGIN_TTL_MS + 1, incr()))]).unwrap();
        assert!(!sm.view().read().once.contains_key(&9), "a silent origin is forgotten");
    }
    {
        let (_log, sm) = open_when_unlocked(dir.path()).unwrap();
        let v = sm.view();
        let v = v.read();
        assert!(!v.once.contains_key(&9), "forgotten on disk too");
        assert_eq!(v.once[&7].done.keys().copied().collect::<Vec<_>>(), vec![3]);
    }
    // The snapshot (taken after entry 4) carries the record: a node that
    // installs it answers a repeat without applying it.
    let other = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_when_unlocked(other.path()).unwrap();
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let out = sm.apply_entries(vec![entry(5, once(7, 1, 0, t0, incr()))]).unwrap();
    assert_eq!(out, vec![incr_reply(2)]);
    assert_eq!(get_n(&sm), catga_storage::keyspace::Out::Bulk(b"3".to_vec()));
}

/// Which writes may be retried after an attempt with an unknown outcome:
/// queue and KV writes set absolute values; Redis commands (INCR, RPUSH)
/// would apply twice.
#[test]
fn only_writes_that_set_absolute_values_are_idempotent() {
    assert!(q(1, "s", "g", 2).is_idempotent());
    assert!(Request::KvSet { key: b"k".to_vec(), value: b"v".to_vec() }.is_idempotent());
    assert!(Request::NodeDown { node: 1 }.is_idempotent());
    assert!(!redis(0, &["INCR n"]).is_idempotent());
    assert!(!Request::Batch(vec![q(1, "s", "g", 1), redis(0, &["RPUSH l x"])]).is_idempotent());
    assert!(Request::Batch(vec![q(1, "s", "g", 1), Request::NodeDown { node: 2 }]).is_idempotent());
    assert!(once(1, 0, 0, 0, redis(0, &["INCR n"])).is_idempotent(), "a Once write is");
}

/// Runs `open` until it does not fail on sled's lock on the directory
/// (5 s deadline): a store dropped just before may still hold the lock
/// for a moment.
fn when_unlocked<T>(mut open: impl FnMut() -> Result<T, sled::Error>) -> Result<T, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open() {
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            other => return other,
        }
    }
}

/// `catga_storage::open` (which itself waits out the lock a store of
/// this process just closed left).
fn open_when_unlocked(
    dir: &std::path::Path,
) -> Result<(catga_storage::LogStore, catga_storage::StateMachine), sled::Error> {
    catga_storage::open(dir, &StorageConfig::default())
}

/// A data dir of another storage format is refused at open with a clear
/// error; one of this format reopens.
#[tokio::test]
async fn data_dir_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_when_unlocked(dir.path()).unwrap());
    drop(open_when_unlocked(dir.path()).unwrap());
    {
        // What a build before the marker leaves: data, no marker.
        let db = when_unlocked(|| sled::open(dir.path())).expect("sled opens the data dir");
        db.remove(b"catga_format").unwrap();
        db.open_tree("raft_meta").unwrap().insert(b"vote", b"x").unwrap();
        db.flush().unwrap();
    }
    let err = open_when_unlocked(dir.path()).err().expect("refused");
    let text = err.to_string();
    let range = format!("formats 2 to {}", catga_storage::FORMAT_VERSION);
    assert!(text.contains("format 1") && text.contains(&range), "{text}");
}

/// A format 4 data dir (entries in sled's `raft_log` tree) has its entries
/// moved into segment files at open, once. Entries at or below the purge
/// point (deleted in the background after `purge`, or left on disk by a
/// crash before that) are never read, and the log never seems to end
/// before the purge point.
#[tokio::test]
async fn entries_at_or_below_the_purge_point_are_never_read() {
    use openraft::storage::RaftLogStorage;
    use openraft::RaftLogReader;
    let dir = tempfile::tempdir().unwrap();
    drop(open_when_unlocked(dir.path()).unwrap());
    let leftovers = |purged: u64| {
        let db = when_unlocked(|| sled::open(dir.path())).expect("sled opens the data dir");
        let log = db.open_tree("raft_log").unwrap();
        for i in 1..=5u64 {
            log.insert(i.to_be_bytes(), postcard::to_stdvec(&entry(i, q(1, "s", "g", 1))).unwrap()).unwrap();
        }
        let purged = Some(LogId::new(LeaderId::new(1, 1), purged));
        db.open_tree("raft_meta").unwrap().insert(b"last_purged", postcard::to_stdvec(&purged).unwrap()).unwrap();
        db.insert(b"catga_format", &4u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
        // Format 4 kept no segment files.
        std::fs::remove_dir_all(dir.path().join("catga-log")).unwrap();
    };
    leftovers(3);
    for _reopen in 0..2 {
        let (mut log, _sm) = open_when_unlocked(dir.path()).unwrap();
        let got: Vec<u64> = log.try_get_log_entries(0..10).await.unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(got, vec![4, 5]);
        assert_eq!(log.try_get_log_entries(5..=5).await.unwrap()[0], entry(5, q(1, "s", "g", 1)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
    }
    {
        let db = when_unlocked(|| sled::open(dir.path())).unwrap();
        assert!(db.open_tree("raft_log").unwrap().is_empty(), "the moved rows left sled");
        assert_eq!(db.get(b"catga_format").unwrap().unwrap().as_ref(), &catga_storage::FORMAT_VERSION.to_be_bytes());
    }
    // Purged past every entry on disk (a snapshot installed ahead of the log).
    leftovers(7);
    let (mut log, _sm) = open_when_unlocked(dir.path()).unwrap();
    assert!(log.try_get_log_entries(0..10).await.unwrap().is_empty());
    assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(7));
}

/// Redis commands with arguments that hold spaces (scripts).
fn redis_argv(cmds: &[&[&str]]) -> Request {
    Request::Redis { db: 0, now_ms: 1_700_000_000_000, cmds: cmds.iter().map(|c| c.to_vec()).collect() }
}

/// The script cache is replicated state: what SCRIPT LOAD and EVAL put in
/// it is on disk after a reopen (EVALSHA still runs), travels in
/// snapshots, and SCRIPT FLUSH empties it on disk too; FLUSHALL leaves it.
#[tokio::test]
async fn the_script_cache_survives_reopen_travels_in_snapshots_and_flushes() {
    use catga_storage::keyspace::script::sha1_hex;
    use catga_storage::keyspace::Out;
    use openraft::RaftSnapshotBuilder;
    let loaded = "return redis.call('incr', KEYS[1])";
    let evaled = "return 'from eval'";
    let (sha_l, sha_e) = (sha1_hex(loaded.as_bytes()), sha1_hex(evaled.as_bytes()));
    let evalsha = |sha: &str| redis_argv(&[&["EVALSHA", sha, "1", "n"]]);
    let dir = tempfile::tempdir().unwrap();
    let snapshot = {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        let out = sm
            .apply_entries(vec![
                entry(1, redis_argv(&[&["SCRIPT", "LOAD", loaded], &["EVAL", evaled, "0"]])),
                entry(2, redis_argv(&[&["FLUSHALL"]])),
            ])
            .unwrap();
        assert_eq!(
            out[0],
            Response::Redis(vec![Out::Bulk(sha_l.clone().into_bytes()), Out::Bulk(b"from eval".to_vec())])
        );
        let mut b = sm.get_snapshot_builder().await;
        let snap: Result<_, std::io::Error> = b.build_snapshot().await;
        snap.unwrap()
    };
    {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        let out = sm.apply_entries(vec![entry(3, evalsha(&sha_l)), entry(4, evalsha(&sha_e))]).unwrap();
        assert_eq!(
            out,
            vec![Response::Redis(vec![Out::Int(1)]), Response::Redis(vec![Out::Bulk(b"from eval".to_vec())])]
        );
        let out = sm.apply_entries(vec![entry(5, redis_argv(&[&["SCRIPT", "FLUSH"]]))]).unwrap();
        assert_eq!(out, vec![Response::Redis(vec![Out::Simple("OK".into())])]);
    }
    {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        assert!(sm.view().read().keyspace.scripts().is_empty(), "SCRIPT FLUSH reached disk");
        let out = sm.apply_entries(vec![entry(6, evalsha(&sha_l))]).unwrap();
        assert_eq!(out, vec![Response::Redis(vec![Out::Err("NOSCRIPT No matching script. Please use EVAL.".into())])]);
    }
    // A node that installs the snapshot (taken before the flush) has both.
    let other = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open_when_unlocked(other.path()).unwrap();
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        let out = sm.apply_entries(vec![entry(3, evalsha(&sha_l))]).unwrap();
        assert_eq!(out, vec![Response::Redis(vec![Out::Int(1)])]);
    }
    let (_log, sm) = open_when_unlocked(other.path()).unwrap();
    assert_eq!(sm.view().read().keyspace.scripts().len(), 2, "the installed scripts are on disk");
}

/// One entry that changes the same keys many times, with deletes and a
/// FLUSHDB between the changes, leaves on disk what the view holds after
/// the whole entry (each row is written once per entry, as it ends up).
#[tokio::test]
async fn many_changes_to_one_key_in_one_entry_reach_disk_as_they_end() {
    use catga_storage::keyspace::Out;
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
        sm.apply_entries(vec![
            entry(1, redis(0, &["SET k a", "SET k b", "DEL k", "SET k c", "SET gone 1", "SET gone 2", "DEL gone"])),
            entry(2, redis(1, &["SET x 1", "SET x 2", "FLUSHDB", "SET x 3", "SET y 1", "FLUSHDB", "SET x 4"])),
            entry(3, redis(2, &["SET z 1", "FLUSHDB", "SET z 2", "SET z 3", "FLUSHDB"])),
        ])
        .unwrap();
    }
    let (_log, sm) = catga_storage::open(dir.path(), &StorageConfig::default()).unwrap();
    let view = sm.view();
    let v = view.read();
    let now = 1_700_000_000_000;
    let get = |db: u32, k: &str| v.keyspace.read(db, now, &[b"GET", k.as_bytes()]).unwrap();
    assert_eq!(get(0, "k"), Out::Bulk(b"c".to_vec()));
    assert_eq!(get(0, "gone"), Out::Nil);
    assert_eq!(get(1, "x"), Out::Bulk(b"4".to_vec()));
    assert_eq!(get(1, "y"), Out::Nil);
    assert_eq!(get(2, "z"), Out::Nil);
}

/// `SET k0 v0`, `SET k1 v1`, … for keys `from..to`, as one entry's
/// commands.
fn sets(from: usize, to: usize) -> Request {
    let cmds: Vec<String> = (from..to).map(|i| format!("SET k{i} v{i}")).collect();
    redis(0, &cmds.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Whether the closed data dir's state tree holds the torn-write marker.
fn torn_marker(dir: &std::path::Path) -> bool {
    let db = when_unlocked(|| sled::open(dir)).expect("sled opens the data dir");
    db.open_tree("state").expect("the state tree").contains_key(b"\0torn").expect("a readable tree")
}

fn marks_torn(dir: &std::path::Path) {
    let db = when_unlocked(|| sled::open(dir)).expect("sled opens the data dir");
    db.open_tree("state").expect("the state tree").insert(b"\0torn", &[]).expect("the marker is written");
    db.flush().expect("the marker reaches disk");
}

fn live_keys(sm: &catga_storage::StateMachine) -> usize {
    sm.view().read().keyspace.len(0, 1_700_000_000_000)
}

/// A checkpoint of more rows than one sled batch takes is written in
/// several, and reopens whole, with no marker left behind.
#[tokio::test]
async fn a_checkpoint_larger_than_one_batch_reopens_whole() {
    let n = catga_storage::sm::BATCH_ROWS * 3 + 7;
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        sm.apply_entries(vec![entry(1, sets(0, n / 2)), entry(2, sets(n / 2, n))]).unwrap();
    }
    assert!(!torn_marker(dir.path()), "the last batch removes the marker");
    let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
    assert_eq!(live_keys(&sm), n);
    assert_eq!(sm.applied_state().await.unwrap().0.map(|l| l.index), Some(2));
}

/// A tree cut in the middle of a multi-batch write (the marker still
/// there) is rebuilt from the saved snapshot at open: what was applied
/// after the snapshot is gone from the state (the log replays it), and
/// the applied id is the snapshot's. With no snapshot saved it starts
/// from nothing.
#[tokio::test]
async fn a_cut_checkpoint_is_rebuilt_from_the_snapshot_at_open() {
    use openraft::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        sm.apply_entries(vec![entry(1, sets(0, 10)), entry(2, sets(10, 20))]).unwrap();
        let mut b = sm.get_snapshot_builder().await;
        let snap: Result<_, std::io::Error> = b.build_snapshot().await;
        assert_eq!(snap.unwrap().meta.last_log_id.map(|l| l.index), Some(2));
        sm.apply_entries(vec![entry(3, sets(20, 30)), entry(4, redis(0, &["DEL k0"]))]).unwrap();
    }
    marks_torn(dir.path());
    {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0.map(|l| l.index), Some(2), "back at the snapshot");
        assert_eq!(live_keys(&sm), 20, "k0..k19 as the snapshot has them, nothing of entries 3 and 4");
        let v = sm.view();
        assert_eq!(
            v.read().keyspace.read(0, 1_700_000_000_000, &[b"GET", b"k0"]),
            Some(catga_storage::keyspace::Out::Bulk(b"v0".to_vec()))
        );
    }
    assert!(!torn_marker(dir.path()), "the rebuild removes the marker");

    let fresh = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open_when_unlocked(fresh.path()).unwrap();
        sm.apply_entries(vec![entry(1, sets(0, 10))]).unwrap();
    }
    marks_torn(fresh.path());
    let (_log, mut sm) = open_when_unlocked(fresh.path()).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, None, "no snapshot: from the start of the log");
    assert_eq!(live_keys(&sm), 0);
}

/// A stream reopens with its entries, its last ID (an entry below it is
/// still refused after its entries were deleted) and its count, from its
/// rows and from a snapshot.
#[tokio::test]
async fn streams_survive_reopen_and_snapshots() {
    use catga_storage::keyspace::Out;
    use openraft::RaftSnapshotBuilder;
    let now = 1_700_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        sm.apply_entries(vec![
            entry(1, redis(0, &["XADD s 1-1 a 1 b 2", "XADD s 2-1 c 3", "XADD s * d 4", "XADD s 9-9 e 5"])),
            entry(2, redis(0, &["XDEL s 9-9 1-1", "XADD t MAXLEN 1 1-1 x 1", "XADD t MAXLEN 1 1-2 x 2"])),
        ])
        .unwrap();
        let mut b = sm.get_snapshot_builder().await;
        let snap: Result<_, std::io::Error> = b.build_snapshot().await;
        snap.unwrap()
    };
    let check = |sm: &catga_storage::StateMachine| {
        let view = sm.view();
        let v = view.read();
        let all = v.keyspace.read(0, now, &[b"XRANGE", b"s", b"-", b"+"]).unwrap();
        let id = format!("{now}-0");
        assert_eq!(
            all,
            Out::Array(vec![
                Out::Array(vec![
                    Out::Bulk(b"2-1".to_vec()),
                    Out::Array(vec![Out::Bulk(b"c".to_vec()), Out::Bulk(b"3".to_vec())])
                ]),
                Out::Array(vec![
                    Out::Bulk(id.into_bytes()),
                    Out::Array(vec![Out::Bulk(b"d".to_vec()), Out::Bulk(b"4".to_vec())])
                ]),
            ])
        );
        assert_eq!(v.keyspace.read(0, now, &[b"XLEN", b"t"]), Some(Out::Int(1)));
    };
    {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        check(&sm);
        let out = sm.apply_entries(vec![entry(3, redis(0, &["XADD s 9-9 late x"]))]).unwrap();
        assert_eq!(
            out[0],
            Response::Redis(vec![Out::Err(
                "ERR The ID specified in XADD is equal or smaller than the target stream top item".into()
            )]),
            "the last ID survives the reopen"
        );
    }
    let other = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_when_unlocked(other.path()).unwrap();
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    check(&sm);
}

/// Consumer groups reopen from their rows and install from a snapshot:
/// the last delivered ID, pending entries (consumer, deliveries) and
/// consumers; an acknowledgement removes just its row.
#[tokio::test]
async fn consumer_groups_survive_reopen_and_snapshots() {
    use catga_storage::keyspace::Out;
    use openraft::RaftSnapshotBuilder;
    let now = 1_700_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        sm.apply_entries(vec![
            entry(1, redis(0, &["XADD s 1-1 a 1", "XADD s 2-1 b 2", "XADD s 3-1 c 3", "XGROUP CREATE s g 0"])),
            entry(2, redis(0, &["XREADGROUP GROUP g alice COUNT 2 STREAMS s >", "XGROUP CREATECONSUMER s g idle"])),
            entry(3, redis(0, &["XACK s g 1-1", "XGROUP CREATE s other $"])),
        ])
        .unwrap();
        let mut b = sm.get_snapshot_builder().await;
        let snap: Result<_, std::io::Error> = b.build_snapshot().await;
        snap.unwrap()
    };
    let check = |sm: &mut catga_storage::StateMachine, index: u64| {
        let pending = sm.view().read().keyspace.read(0, now, &[b"XPENDING", b"s", b"g"]).unwrap();
        assert_eq!(
            pending,
            Out::Array(vec![
                Out::Int(1),
                Out::Bulk(b"2-1".to_vec()),
                Out::Bulk(b"2-1".to_vec()),
                Out::Array(vec![Out::Array(vec![Out::Bulk(b"alice".to_vec()), Out::Bulk(b"1".to_vec())])]),
            ])
        );
        // Only 3-1 is new to g; `other` starts after everything.
        let out = sm
            .apply_entries(vec![entry(
                index,
                redis(0, &["XREADGROUP GROUP g bob STREAMS s >", "XREADGROUP GROUP other bob STREAMS s >"]),
            )])
            .unwrap();
        let Response::Redis(replies) = &out[0] else { panic!("{out:?}") };
        let Out::PairMap(streams) = &replies[0] else { panic!("{replies:?}") };
        let Out::Array(entries) = &streams[0].1 else { panic!() };
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(replies[1], Out::NilArray);
    };
    {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        check(&mut sm, 4);
    }
    let other = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_when_unlocked(other.path()).unwrap();
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    check(&mut sm, 4);
}

/// A stream's entries are stored a row per 100 (in the order added), and
/// deletions and trims rewrite or remove just the rows they touch: the
/// stream reopens the same, from few rows.
#[tokio::test]
async fn stream_entries_share_rows_and_reopen_after_deletes_and_trims() {
    let now = 1_700_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let adds: Vec<String> = (1..=250).map(|i| format!("XADD s {i}-1 n {i}")).collect();
    let range =
        |sm: &catga_storage::StateMachine| sm.view().read().keyspace.read(0, now, &[b"XRANGE", b"s", b"-", b"+"]);
    let before = {
        let (_log, mut sm) = open_when_unlocked(dir.path()).unwrap();
        sm.apply_entries(vec![
            entry(1, redis(0, &adds.iter().map(String::as_str).collect::<Vec<_>>())),
            entry(2, redis(0, &["XDEL s 150-1 1-1 101-1", "XTRIM s MAXLEN 120", "XADD s 300-1 n last"])),
        ])
        .unwrap();
        range(&sm)
    };
    let rows = {
        let db = when_unlocked(|| sled::open(dir.path())).expect("sled opens the data dir");
        let tree = db.open_tree("state").expect("the state tree");
        tree.iter().keys().filter(|k| k.as_ref().is_ok_and(|k| k.first() == Some(&b'e'))).count()
    };
    assert!(rows <= 3, "{rows} element rows for 121 entries");
    let (_log, sm) = open_when_unlocked(dir.path()).unwrap();
    assert_eq!(range(&sm), before);
    assert_eq!(sm.view().read().keyspace.read(0, now, &[b"XLEN", b"s"]), Some(catga_storage::keyspace::Out::Int(121)));
}
