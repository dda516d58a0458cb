//! Backup files: the whole keyspace at one point of the log, written by
//! SAVE/BGSAVE and loaded back by `catga restore`.
//!
//! Format: the 8 bytes `CATGADMP`, then postcard of [`Dump`]. Versioned
//! by [`Dump::version`]; a reader refuses versions it does not know.

use serde::{Deserialize, Serialize};

use super::{Entry, Keyspace};

pub const MAGIC: &[u8; 8] = b"CATGADMP";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    pub version: u32,
    /// When it was taken (Unix ms, the saving node's clock).
    pub created_ms: u64,
    /// The log index the keyspace was at.
    pub applied_index: u64,
    /// (db, key, entry), expired entries left out.
    pub entries: Vec<(u32, Vec<u8>, Entry)>,
}

impl Dump {
    /// The live entries of `ks` at `now_ms`.
    pub fn of(ks: &Keyspace, now_ms: u64, applied_index: u64) -> Self {
        let mut entries: Vec<(u32, Vec<u8>, Entry)> =
            ks.entries().filter(|(_, _, e)| e.live(now_ms)).map(|(db, k, e)| (db, k.to_vec(), e.clone())).collect();
        // By key, so the same data makes the same file on every node.
        entries.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Dump { version: VERSION, created_ms: now_ms, applied_index, entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or("not a Catga backup file (bad magic)")?;
        let d: Dump = postcard::from_bytes(body).map_err(|e| format!("corrupt backup file: {e}"))?;
        if d.version != VERSION {
            return Err(format!("backup format version {} is not supported (this build reads {VERSION})", d.version));
        }
        Ok(d)
    }
}

impl Keyspace {
    /// Puts a restored entry in place, recording the change.
    pub fn restore(&mut self, db: u32, key: &[u8], entry: Entry) {
        self.put(db, key, entry);
    }

    /// Empties every database, recording the change.
    pub fn clear(&mut self) {
        self.dbs.clear();
        self.note(super::Change::All);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_round_trips_and_leaves_expired_keys_out() {
        let mut ks = Keyspace::default();
        let now = 1_700_000_000_000;
        for cmd in ["SET s v", "SET gone v PX 10", "RPUSH l a b", "ZADD z 1.5 m", "HSET h f v", "SADD st x"] {
            let argv: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
            ks.exec(0, now, &argv);
        }
        let d = Dump::of(&ks, now + 100, 42);
        assert_eq!(d.entries.len(), 5);
        let back = Dump::decode(&d.encode()).unwrap();
        assert_eq!(back, d);
        let mut restored = Keyspace::default();
        for (db, k, e) in back.entries {
            restored.restore(db, &k, e);
        }
        ks.exec(0, now + 100, &[b"DEL", b"gone"]);
        assert!(restored == ks);
        assert!(Dump::decode(b"nope").is_err());
        let mut bad = d.encode();
        bad.truncate(20);
        assert!(Dump::decode(&bad).unwrap_err().contains("corrupt"));
    }
}
