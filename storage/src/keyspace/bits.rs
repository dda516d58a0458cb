//! Bitmaps on strings: SETBIT GETBIT BITCOUNT BITPOS. Bit 0 is the most
//! significant bit of the first byte, as in Redis.

use super::*;

const BIT_OFFSET: &str = "ERR bit offset is not an integer or out of range";

/// A bit offset as Redis 7.0 reads one: 0 up to what a string of
/// proto-max-bulk-len bytes holds.
fn bit_offset(b: &[u8]) -> Result<usize, Out> {
    match string2ll(b) {
        Some(o) if o >= 0 && ((o >> 3) as usize) < STRING_BYTES_MAX => Ok(o as usize),
        _ => Err(Out::err(BIT_OFFSET)),
    }
}

fn bit_at(s: &[u8], i: usize) -> bool {
    s.get(i >> 3).is_some_and(|byte| byte & (0x80 >> (i & 7)) != 0)
}

/// The bits of byte `i` (of the span `first..=last`, in bits) that lie in
/// the span: the first and last bytes keep only their part.
fn span_mask(i: usize, first: usize, last: usize) -> u8 {
    let mut mask = 0xff;
    if i == first >> 3 {
        mask &= 0xff >> (first & 7);
    }
    if i == last >> 3 {
        mask &= 0xff << (7 - (last & 7));
    }
    mask
}

/// Set bits among positions `first..=last` of `s` (inside it), a byte at a
/// time.
fn count_bits(s: &[u8], first: usize, last: usize) -> usize {
    (first >> 3..=last >> 3).map(|i| (s[i] & span_mask(i, first, last)).count_ones() as usize).sum()
}

/// The first position in `first..=last` of `s` (inside it) whose bit is
/// `bit`, a byte at a time.
fn find_bit(s: &[u8], first: usize, last: usize, bit: bool) -> Option<usize> {
    (first >> 3..=last >> 3).find_map(|i| {
        let b = if bit { s[i] } else { !s[i] } & span_mask(i, first, last);
        (b != 0).then(|| i * 8 + b.leading_zeros() as usize)
    })
}

/// BITCOUNT / BITPOS's optional range: `[start end]` in bytes, or in bits
/// with `BIT`, negative from the end, clamped as Redis clamps it; `None`
/// when it is empty. (first, last) in bits, inclusive.
fn bit_range(len: usize, start: i64, end: i64, isbit: bool) -> Option<(usize, usize)> {
    let total = if isbit { len as i64 * 8 } else { len as i64 };
    let norm = |i: i64| if i < 0 { (total + i).max(0) } else { i };
    let (start, end) = (norm(start), norm(end).min(total - 1));
    if start > end {
        return None;
    }
    let (start, end) = (start as usize, end as usize);
    Some(if isbit { (start, end) } else { (start * 8, end * 8 + 7) })
}

/// `BYTE` / `BIT` at `argv[i]`, if given.
fn unit(argv: &[&[u8]], i: usize) -> Result<bool, Out> {
    match argv.get(i).map(|u| upper(u)) {
        None => Ok(false),
        Some(u) if u == "BIT" => Ok(true),
        Some(u) if u == "BYTE" => Ok(false),
        Some(_) => Err(Out::err(SYNTAX)),
    }
}

impl Keyspace {
    pub(super) fn bits_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "getbit" => {
                let offset = match bit_offset(argv[2]) {
                    Ok(o) => o,
                    Err(e) => return Some(e),
                };
                match self.string(db, argv[1], now_ms) {
                    Ok(s) => Out::Int(i64::from(s.is_some_and(|s| bit_at(s, offset)))),
                    Err(e) => e,
                }
            }
            "bitcount" => {
                let s = match self.string(db, argv[1], now_ms) {
                    Ok(Some(s)) => s,
                    Ok(None) => return Some(Out::Int(0)),
                    Err(e) => return Some(e),
                };
                let range = match argv.len() {
                    2 => bit_range(s.len(), 0, -1, false),
                    4 | 5 => {
                        let (Some(start), Some(end)) = (string2ll(argv[2]), string2ll(argv[3])) else {
                            return Some(Out::err(NOT_INTEGER));
                        };
                        match unit(argv, 4) {
                            Ok(isbit) => bit_range(s.len(), start, end, isbit),
                            Err(e) => return Some(e),
                        }
                    }
                    _ => return Some(Out::err(SYNTAX)),
                };
                Out::Int(range.map_or(0, |(a, b)| count_bits(s, a, b) as i64))
            }
            "bitpos" => bitpos(self.string(db, argv[1], now_ms), argv),
            _ => return None,
        })
    }

    pub(super) fn bits_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        if name != "setbit" {
            return None;
        }
        let offset = match bit_offset(argv[2]) {
            Ok(o) => o,
            Err(e) => return Some(e),
        };
        let on = match argv[3] {
            b"1" => true,
            b"0" => false,
            _ => return Some(Out::err("ERR bit is not an integer or out of range")),
        };
        let mut s = match self.string(db, argv[1], now_ms) {
            Ok(s) => s.cloned().unwrap_or_default(),
            Err(e) => return Some(e),
        };
        let was = bit_at(&s, offset);
        if s.len() <= offset >> 3 {
            s.resize((offset >> 3) + 1, 0);
        }
        let mask = 0x80 >> (offset & 7);
        if on {
            s[offset >> 3] |= mask;
        } else {
            s[offset >> 3] &= !mask;
        }
        let at = self.get(db, argv[1], now_ms).and_then(|e| e.expire_at_ms);
        self.set_str(db, argv[1], s, at);
        Some(Out::Int(i64::from(was)))
    }
}

/// BITPOS key bit [start [end [BYTE|BIT]]], as Redis 7.0 answers it: a
/// missing key is all zeros; looking for a 0 with no end given, the string
/// counts as padded with zeros on the right.
fn bitpos(s: Result<Option<&Vec<u8>>, Out>, argv: &[&[u8]]) -> Out {
    let bit = match string2ll(argv[2]) {
        Some(b @ (0 | 1)) => b == 1,
        Some(_) => return Out::err("ERR The bit argument must be 1 or 0."),
        None => return Out::err(NOT_INTEGER),
    };
    let s = match s {
        Ok(Some(s)) => s,
        Ok(None) => return Out::Int(if bit { -1 } else { 0 }),
        Err(e) => return e,
    };
    let (range, end_given) = match argv.len() {
        3 => (bit_range(s.len(), 0, -1, false), false),
        4..=6 => {
            let Some(start) = string2ll(argv[3]) else { return Out::err(NOT_INTEGER) };
            let isbit = match unit(argv, 5) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let end = match argv.get(4) {
                Some(e) => match string2ll(e) {
                    Some(e) => e,
                    None => return Out::err(NOT_INTEGER),
                },
                None => -1,
            };
            (bit_range(s.len(), start, end, isbit), argv.len() > 4)
        }
        _ => return Out::err(SYNTAX),
    };
    let Some((first, last)) = range else { return Out::Int(-1) };
    match find_bit(s, first, last, bit) {
        Some(i) => Out::Int(i as i64),
        // Past the last byte of the range.
        None if !bit && !end_given => Out::Int(((last >> 3) as i64 + 1) * 8),
        None => Out::Int(-1),
    }
}
