//! Disk formats written by openraft 0.9 (storage format 5 and earlier)
//! read back unchanged under 0.10: the bytes below are what 0.9 wrote for
//! these values (postcard), so a data dir from an older Catga opens as it
//! was, and what 0.10 writes is byte for byte the same.

use std::collections::{BTreeMap, BTreeSet};

use catga_storage::types::{Entry, LeaderId, LogId, SnapshotMeta, StoredMembership, Vote};
use catga_storage::{Member, Request};
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, Membership};

fn unhex(parts: &[&str]) -> Vec<u8> {
    let h: String = parts.concat();
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex")).collect()
}

fn member(name: &str) -> Member {
    Member {
        name: name.into(),
        cluster_addr: "127.0.0.1:6222".into(),
        nats_addr: "127.0.0.1:4222".into(),
        http_addr: "127.0.0.1:8222".into(),
        datacenter: "dc".into(),
        redis_addr: "127.0.0.1:6379".into(),
        sentinel_addr: "127.0.0.1:26379".into(),
    }
}

fn log_id() -> LogId {
    LogId::new(LeaderId::new(7, 3), 42)
}

fn membership() -> Membership<u64, Member> {
    let nodes = BTreeMap::from([(1, member("n1")), (2, member("n2")), (3, member("n1"))]);
    Membership::new(vec![BTreeSet::from([1, 2])], nodes).expect("a valid membership")
}

/// The membership's bytes as 0.9 wrote them (voters {1, 2}, learner 3).
const MEMBERSHIP: &[&str] = &[
    "010201020301026e310e3132372e302e302e313a363232320e3132372e302e302e313a343232320e3132372e302e302e",
    "313a383232320264630e3132372e302e302e313a363337390f3132372e302e302e313a323633373902026e320e313237",
    "2e302e302e313a363232320e3132372e302e302e313a343232320e3132372e302e302e313a383232320264630e313237",
    "2e302e302e313a363337390f3132372e302e302e313a323633373903026e310e3132372e302e302e313a363232320e31",
    "32372e302e302e313a343232320e3132372e302e302e313a383232320264630e3132372e302e302e313a363337390f31",
    "32372e302e302e313a3236333739",
];

/// Decodes `bytes` as `T`, checks the value, and checks that encoding it
/// again gives the same bytes.
fn same<T>(bytes: &[u8], want: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let got: T = postcard::from_bytes(bytes).expect("0.9 bytes decode");
    assert_eq!(&got, want);
    assert_eq!(postcard::to_stdvec(&got).expect("encodes"), bytes, "re-encoded differently");
}

#[test]
fn log_entries_votes_and_log_ids_of_openraft_0_9_read_back_the_same() {
    let normal = Entry {
        log_id: log_id(),
        payload: EntryPayload::Normal(Request::KvSet { key: b"k".to_vec(), value: b"v".to_vec() }),
    };
    same(&unhex(&["07032a0103016b0176"]), &normal);
    same(&unhex(&["07032a00"]), &Entry { log_id: log_id(), payload: EntryPayload::Blank });
    let mut bytes = unhex(&["07032a02"]);
    bytes.extend(unhex(MEMBERSHIP));
    same(&bytes, &Entry { log_id: log_id(), payload: EntryPayload::Membership(membership()) });
    let vote = Vote::new_committed(7, 3);
    same(&unhex(&["070301"]), &vote);
    same(&unhex(&["0107032a"]), &Some(log_id()));
}

#[test]
fn memberships_and_snapshot_metas_of_openraft_0_9_read_back() {
    let stored = StoredMembership::new(Some(log_id()), membership());
    let mut bytes = unhex(&["0107032a"]);
    bytes.extend(unhex(MEMBERSHIP));
    same(&bytes, &stored);
    // 0.9's meta ended with a snapshot id (here "7-42-100"); 0.10 reads
    // past it and writes an empty one.
    let mut bytes = unhex(&["0107032a0107032a"]);
    bytes.extend(unhex(MEMBERSHIP));
    bytes.extend(unhex(&["08372d34322d313030"]));
    let meta: SnapshotMeta = postcard::from_bytes(&bytes).expect("0.9 meta decodes");
    assert_eq!(meta, SnapshotMeta { last_log_id: Some(log_id()), last_membership: stored });
}
