//! The Raft log's entries in append-only segment files.
//!
//! A segment is named by the index of its first record (`{index:020}.seg`)
//! and holds records back to back, each
//! `[payload length: u32 LE][crc32 of index and payload: u32 LE][index: u64 LE][payload]`.
//! Records are contiguous: the k-th record of a segment has index
//! `first + k`, and each carries its index so a misplaced one is caught.
//!
//! - A segment is allocated whole when created ([`Wal::segment_bytes_max`],
//!   fallocate), so an append never changes the file's size and its sync
//!   (fdatasync) writes the data alone: on ext4 a sync that must also
//!   commit a size change took 214–273 µs against 153–186 µs here.
//! - Invariant: every byte of a segment after its last record is zero.
//!   The records end where the first header fails to match, so nothing
//!   stale can ever follow them.
//! - Append writes the records at the end of the last segment with one
//!   positioned write; [`Wal::sync_handle`] is what a flush (fdatasync)
//!   then makes durable. A segment that cannot take the next write is
//!   synced and closed before the next is created (a write larger than a
//!   whole segment grows it), and the directory is synced after a create,
//!   so only the last segment can ever have a torn tail.
//! - Open scans every segment. The last one's bytes after its last whole,
//!   matching record (a write a crash cut) are zeroed; anything but zeros
//!   there in an earlier segment is corruption and an error.
//! - Truncate zeroes the records from an index on (later segments
//!   deleted, synced). Purge deletes whole segments whose records are all
//!   at or below an index; the last segment always stays.
//!
//! Nothing here knows what a payload is; [`crate::log`] stores Raft
//! entries in it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HEADER: usize = 16;
const SUFFIX: &str = ".seg";
/// Largest payload a record may declare; a larger length is a torn or
/// corrupt header, never an entry (a Raft entry is bounded far below by
/// the mesh's frame limit).
const PAYLOAD_MAX: usize = 1 << 30;

pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    segment_bytes_max: u64,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Start of each record.
    offsets: Vec<u64>,
    /// End of the last record: where the next one goes.
    end: u64,
}

impl Segment {
    fn next(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn encode_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(index, payload).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The whole records at the start of `bytes` that carry `first`,
/// `first + 1`, …: their offsets and the end of the last one.
fn scan(bytes: &[u8], first: u64) -> (Vec<u64>, usize) {
    let mut offsets = Vec::new();
    let mut at = 0;
    while let Some(h) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        let sum = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let want = first + offsets.len() as u64;
        let Some(payload) = (len <= PAYLOAD_MAX).then(|| bytes.get(at + HEADER..at + HEADER + len)).flatten() else {
            break;
        };
        if index != want || crc(index, payload) != sum {
            break;
        }
        offsets.push(at as u64);
        at += HEADER + len;
    }
    (offsets, at)
}

/// Writes zeros over `from..to`.
fn zero(file: &File, from: u64, to: u64) -> io::Result<()> {
    let block = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(block.len() as u64) as usize;
        file.write_all_at(&block[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Allocates `len` bytes of `file` (reading as zeros). Where the file
/// system cannot, the file is only extended: still correct, with a slower
/// sync per append.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    if let Err(e) = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        tracing::debug!(cause = %e, "fallocate refused; extending the segment instead");
        file.set_len(len)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (creating it if needed) the log in `dir`; see the module docs
    /// for what is checked and repaired.
    pub fn open(dir: &Path, segment_bytes_max: u64) -> io::Result<Self> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            // The directory's own entry must be durable before any record
            // in it is acknowledged.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut firsts = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len());
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(format!("{first:020}{SUFFIX}"));
            let file = File::options().read(true).write(true).open(&path)?;
            let bytes = std::fs::read(&path)?;
            let (offsets, end) = scan(&bytes, first);
            let last = i + 1 == firsts.len();
            if let Some(prev) = segments.last() {
                if prev.next() != first {
                    return Err(corrupt(format!(
                        "raft log segment {} starts at index {first}, but the one before it ends at {}",
                        path.display(),
                        prev.next().saturating_sub(1)
                    )));
                }
            }
            if let Some(dirty) = bytes[end..].iter().rposition(|b| *b != 0) {
                if !last {
                    return Err(corrupt(format!(
                        "raft log segment {} has unreadable bytes after index {} and is not the last segment",
                        path.display(),
                        first + offsets.len() as u64
                    )));
                }
                tracing::warn!(
                    segment = %path.display(),
                    zeroed_bytes = dirty + 1,
                    "raft log: zeroing a torn tail (a write a crash interrupted; never acknowledged)"
                );
                zero(&file, end as u64, (end + dirty + 1) as u64)?;
                file.sync_data()?;
            }
            segments.push(Segment { first, path, file: Arc::new(file), offsets, end: end as u64 });
        }
        Ok(Self { dir: dir.to_path_buf(), segments, segment_bytes_max })
    }

    /// Bytes after which a segment is closed and the next one started.
    pub fn segment_bytes_max(&self) -> u64 {
        self.segment_bytes_max
    }

    /// Index of the first record kept, if any.
    pub fn first(&self) -> Option<u64> {
        self.segments.iter().find(|s| !s.offsets.is_empty()).map(|s| s.first)
    }

    /// Index the next appended record must have: one past the last, or
    /// `None` when the log holds no segment at all (any index may start it).
    pub fn next(&self) -> Option<u64> {
        self.segments.last().map(Segment::next)
    }

    /// The last record's payload, if the log holds any.
    pub fn last(&self) -> io::Result<Option<Vec<u8>>> {
        match self.first().and(self.next()) {
            Some(next) => Ok(self.read(next - 1, next)?.pop().map(|(_, p)| p)),
            None => Ok(None),
        }
    }

    /// The segment file the last append wrote to: sync it to make every
    /// append so far durable.
    pub fn sync_handle(&self) -> Option<Arc<File>> {
        self.segments.last().map(|s| s.file.clone())
    }

    fn create_segment(&mut self, first: u64) -> io::Result<()> {
        let path = self.dir.join(format!("{first:020}{SUFFIX}"));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path)?;
        allocate(&file, self.segment_bytes_max)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment { first, path, file: Arc::new(file), offsets: Vec::new(), end: 0 });
        Ok(())
    }

    /// Appends records `first`, `first + 1`, … (not yet durable: see
    /// [`Wal::sync_handle`]). `first` must follow the last record; an
    /// empty log starts anywhere.
    pub fn append<'a>(&mut self, first: u64, payloads: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        if let Some(s) = self.segments.last().filter(|s| !s.offsets.is_empty() && s.next() != first) {
            return Err(io::Error::other(format!("raft log append at {first}, but the log ends before {}", s.next())));
        }
        let mut buf = Vec::new();
        let mut sizes = Vec::new();
        for (i, p) in payloads.into_iter().enumerate() {
            let before = buf.len();
            encode_record(&mut buf, first + i as u64, p);
            sizes.push(before as u64);
        }
        let rotate = match self.segments.last() {
            None => true,
            Some(s) if s.offsets.is_empty() => {
                // An empty segment (all cut by a truncate, or new) takes any start.
                if s.first != first {
                    std::fs::remove_file(&s.path)?;
                    self.segments.pop();
                    true
                } else {
                    false
                }
            }
            Some(s) => s.end > 0 && s.end + buf.len() as u64 > self.segment_bytes_max,
        };
        if rotate {
            if let Some(s) = self.segments.last() {
                // Only the last segment may have a torn tail.
                s.file.sync_data()?;
            }
            self.create_segment(first)?;
        }
        let seg = self.segments.last_mut().expect("a segment was just ensured");
        seg.file.write_all_at(&buf, seg.end)?;
        seg.offsets.extend(sizes.iter().map(|at| seg.end + at));
        seg.end += buf.len() as u64;
        Ok(())
    }

    /// The payloads of records `from..to` that the log holds, in order
    /// (a range starting before the first record starts at it).
    pub fn read(&self, from: u64, to: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for s in &self.segments {
            let (lo, hi) = (from.max(s.first), to.min(s.next()));
            if lo >= hi {
                continue;
            }
            let start = s.offsets[(lo - s.first) as usize];
            let end = s.offsets.get((hi - s.first) as usize).copied().unwrap_or(s.end);
            let mut bytes = vec![0; (end - start) as usize];
            s.file.read_exact_at(&mut bytes, start)?;
            let mut at = 0;
            for index in lo..hi {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
                let payload = bytes
                    .get(at + HEADER..at + HEADER + len)
                    .ok_or_else(|| corrupt(format!("raft log record {index} runs past its segment")))?;
                out.push((index, payload.to_vec()));
                at += HEADER + len;
            }
        }
        Ok(out)
    }

    /// Deletes every segment: the log is empty and the next append may
    /// start at any index.
    pub fn clear(&mut self) -> io::Result<()> {
        for s in self.segments.drain(..) {
            std::fs::remove_file(&s.path)?;
        }
        sync_dir(&self.dir)
    }

    /// Removes the records at `index` and after, durably.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        while self.segments.len() > 1 && self.segments.last().is_some_and(|s| s.first >= index) {
            let s = self.segments.pop().expect("checked");
            std::fs::remove_file(&s.path)?;
        }
        sync_dir(&self.dir)?;
        if let Some(s) = self.segments.last_mut() {
            if index < s.next() {
                let keep = index.saturating_sub(s.first) as usize;
                let cut = s.offsets.get(keep).copied().unwrap_or(s.end);
                zero(&s.file, cut, s.end)?;
                s.file.sync_data()?;
                s.end = cut;
                s.offsets.truncate(keep);
            }
        }
        Ok(())
    }

    /// Deletes the segments whose records are all at or below `index`,
    /// except the last segment.
    pub fn purge(&mut self, index: u64) -> io::Result<()> {
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].next() <= index.saturating_add(1) {
            let s = self.segments.remove(0);
            std::fs::remove_file(&s.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry {i} ").repeat((i % 7) as usize + 1).into_bytes()
    }

    fn append(w: &mut Wal, range: std::ops::Range<u64>) {
        let ps: Vec<Vec<u8>> = range.clone().map(payload).collect();
        w.append(range.start, ps.iter().map(Vec::as_slice)).unwrap();
    }

    fn all(w: &Wal) -> Vec<(u64, Vec<u8>)> {
        w.read(0, u64::MAX).unwrap()
    }

    fn expect(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, payload(i))).collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// Appends across several segments read back whole and in part, and
    /// the same after a reopen.
    #[test]
    fn appends_read_back_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 200).unwrap();
        assert_eq!((w.first(), w.next()), (None, None));
        for start in (1..60).step_by(6) {
            append(&mut w, start..start + 6);
        }
        assert!(segment_files(dir.path()).len() > 3, "small segments rotate: {:?}", segment_files(dir.path()));
        assert_eq!(all(&w), expect(1..61));
        assert_eq!(w.read(17, 33).unwrap(), expect(17..33));
        assert_eq!(w.read(60, 100).unwrap(), expect(60..61));
        assert!(w.read(61, 100).unwrap().is_empty());
        drop(w);
        let w = Wal::open(dir.path(), 200).unwrap();
        assert_eq!((w.first(), w.next()), (Some(1), Some(61)));
        assert_eq!(all(&w), expect(1..61));
    }

    /// A record a crash cut anywhere (only some of its bytes reached the
    /// disk, in any order) is dropped at open; the records before it stay,
    /// the bytes after them are zeroed on disk, and appends go on from
    /// there.
    #[test]
    fn a_torn_tail_is_cut_at_open_at_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 4096).unwrap();
        append(&mut w, 1..4);
        let path = dir.path().join(format!("{:020}{SUFFIX}", 1));
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(whole.len(), 4096, "the segment is allocated whole");
        let (last_start, end) = (w.segments[0].offsets[2] as usize, w.segments[0].end as usize);
        drop(w);
        let check = |bytes: &[u8], what: &str| {
            std::fs::write(&path, bytes).unwrap();
            let mut w = Wal::open(dir.path(), 4096).unwrap();
            assert_eq!(all(&w), expect(1..3), "{what}");
            let on_disk = std::fs::read(&path).unwrap();
            assert!(on_disk[last_start..].iter().all(|b| *b == 0), "{what}: the tail is zeroed on disk");
            append(&mut w, 3..5);
            assert_eq!(all(&w), expect(1..5), "{what}");
        };
        for cut in last_start..end {
            // The record's first bytes made it, the rest did not...
            let mut head = whole.clone();
            head[cut..end].fill(0);
            check(&head, &format!("bytes from {cut} lost"));
            // ...or its last bytes made it and its first did not.
            let mut tail = whole.clone();
            tail[last_start..=cut].fill(0);
            check(&tail, &format!("bytes up to {cut} lost"));
        }
        // A flipped bit in the last record: its checksum fails, it goes.
        let mut flipped = whole.clone();
        flipped[end - 1] ^= 1;
        check(&flipped, "a flipped bit");
    }

    /// Damage in a segment that is not the last is an error, not a cut:
    /// the records after it were acknowledged.
    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 100).unwrap();
        for i in 1..20 {
            append(&mut w, i..i + 1);
        }
        drop(w);
        let first = dir.path().join(segment_files(dir.path())[0].clone());
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[HEADER] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let err = Wal::open(dir.path(), 100).err().expect("an error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("not the last segment"), "{err}");
    }

    /// Truncate removes a suffix (across segments too), durably; appends
    /// then continue from the cut.
    #[test]
    fn truncate_removes_a_suffix_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 150).unwrap();
        for start in (1..41).step_by(4) {
            append(&mut w, start..start + 4);
        }
        w.truncate(23).unwrap();
        assert_eq!(w.next(), Some(23));
        assert_eq!(all(&w), expect(1..23));
        assert!(w.append(24, [b"x".as_slice()]).is_err(), "a gap is refused");
        append(&mut w, 23..30);
        drop(w);
        let mut w = Wal::open(dir.path(), 150).unwrap();
        assert_eq!(all(&w), expect(1..30));
        // Everything, then a fresh start elsewhere (a snapshot installed).
        w.truncate(1).unwrap();
        assert_eq!(all(&w), vec![]);
        append(&mut w, 500..503);
        drop(w);
        assert_eq!(all(&Wal::open(dir.path(), 150).unwrap()), expect(500..503));
    }

    /// Records removed by a truncate never come back, even when what is
    /// appended after the cut has the same sizes (their headers would
    /// line up again) and the log is reopened before the rest is rewritten.
    #[test]
    fn truncated_records_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 1 << 16).unwrap();
        append(&mut w, 1..10);
        w.truncate(5).unwrap();
        append(&mut w, 5..6);
        drop(w);
        let w = Wal::open(dir.path(), 1 << 16).unwrap();
        assert_eq!(all(&w), expect(1..6));
        assert_eq!(w.next(), Some(6));
    }

    /// Purge deletes only segments wholly at or below the index, and
    /// never the last one.
    #[test]
    fn purge_deletes_whole_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 100).unwrap();
        for i in 1..31 {
            append(&mut w, i..i + 1);
        }
        let before = segment_files(dir.path()).len();
        w.purge(12).unwrap();
        let first = w.first().unwrap();
        assert!(first <= 13 && first > 1, "first kept {first}");
        assert!(segment_files(dir.path()).len() < before);
        assert_eq!(all(&w), expect(first..31));
        w.purge(1000).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 1, "the last segment stays");
        assert_eq!(w.next(), Some(31));
        append(&mut w, 31..33);
        drop(w);
        let w = Wal::open(dir.path(), 100).unwrap();
        assert_eq!(w.next(), Some(33));
    }
}
